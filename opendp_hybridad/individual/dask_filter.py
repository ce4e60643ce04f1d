"""The individual filter over a ``dask.dataframe``: the pandas filter's answers, charges and ledger, bit for bit.

:class:`DaskIndividualFilter` is :class:`~opendp_hybridad.individual.filter.IndividualFilter`
(Rényi, Feldman and Zrnic 2021; Gaussian DP, Smith and Thakurta 2022 and Koskela, Tobaben
and Honkela 2023; add/remove of one individual only) whose frame is a Dask frame. The
partitions are read and the per-record values computed on the workers, by the pandas
path's own code; the individuals, their sums, charges, admissions and the ledger are the
pandas path's code on the driver.

**The obstacle.** The filter's theorems need individual i's loss at each query to be a
function of the history and of i's own rows alone, and the released totals with and
without i to differ by i's computed sum ``s_i`` plus at most the float allowance
(:func:`~opendp_hybridad.individual.charges.float_allowance`). Partial sums of one person
formed per partition and combined afterwards would make ``s_i`` depend on where the
partition boundaries fall (a float sum depends on its grouping), hence on the other rows.

**The design: no partial sum of a person is ever formed on a worker.** A pass over the
partitions sends the driver, per partition and in partition order (``dask.compute`` of the
partitions' delayed results returns them in that order, whatever worker ran them):

1. the load pass (once): the partition's row count, its kept count, and the ids of its
   kept rows that have one (:func:`~opendp_hybridad.individual.filter.counted_inputs`,
   :func:`~opendp_hybridad.individual.filter.named_ids`: the pandas path's membership
   check, missing-value policies and missing-id rule, applied to the partition);
2. each query's pass: the same counts and, per kept row with an id, each of the query's
   functions' clamped value (the pandas path's compiled kernel, ``value_clamped``, shipped by its
   source as in :mod:`opendp_hybridad.frame.dask_engine`).

**Theorem.** For a member frame, on a homogeneous cluster (every worker evaluates the
kernel as the driver would; the assumption of the Dask engine), every query's ledger
charges, admissions and pre-noise totals are those of the pandas filter on the
concatenation of the partitions (the frame), bit for bit, whatever the partitioning.

*Proof.* (a) Rows. The membership check, the missing-value policies and the missing-id
rule are per-row rules (each row's verdict, kernel inputs and key depend on that row
alone; ``ids.py`` keys each value on its own, by its exact value whatever its type, so
the concatenated ids have the keys the whole frame's column has; partitions of different
dtypes are joined as objects, so no value is cast on the way). So the driver's
concatenation, in partition order, is the sequence of the pandas path's named rows in
frame order: frame order is partition index, then position in the partition. (b)
``max_rows``. The driver numbers individuals and cuts with the pandas path's own
``IndividualFilter._index`` on that sequence: the same keyed hashes, the same numbering
by first appearance, the same ``cumcount < max_rows`` in global order, hence the same
counted rows of each person, even when a person's first ``max_rows`` rows straddle
partitions. (c) Values. Each counted row's value is the kernel's elementwise value of
that row's inputs (a per-record function), so the values array equals the pandas
path's. (d) Sums and everything after. ``s_i`` is ``charges.individual_sums`` (one
sequential sum per person in frame order) of the same codes and values: the same float.
Sensitivities, losses, the ledger's ``charge`` (committed before the total is formed)
and ``math.fsum`` over the admitted are the inherited pandas code on equal inputs. QED.

So the two paths' pre-noise totals differ by 0, and the pandas filter's argument
(``docs/individual.md``, ``charges.py``'s float allowance) applies unchanged: ``s_i``
is a sequential sum of i's counted values in frame order, a function of i's rows alone.
The float allowance needs nothing more, and nothing depends on the partitioning.

**Totality.** Columns, dtypes and the id column are checked on the Dask metadata before
any task. Each partition is checked as a member of the frame domain without ``size``
(the pandas checks, per row); the driver checks ``size_limit`` (total rows) and a fixed
``size`` (total kept) from the counts before any charge. A non-member raises the pandas
path's :class:`~opendp_hybridad.errors.SchemaMismatchError`; no member raises, so no
dataset raises where its neighbour (one individual added or removed) would not, except
through the size limit, as in the pandas path. A frame whose partitions change between
passes (a non-deterministic graph) is refused with ``SchemaMismatchError`` before any
charge: every pass returns a digest of each partition's counted rows (typed id keys in
order), which must match the load's; the theorem assumes the frame is one dataset (the
same rows, in the same order, at every pass).

**Cost.** Per query, the driver receives 8 bytes per counted row and function and holds
the codes (8 bytes per row) and the cut mask; the ledger (SQLite) is on the driver. See
docs/scale.md. Dask is imported only when a filter is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DeclarationError, SchemaMismatchError
from opendp_hybridad.frame.domain import FrameDomain
from opendp_hybridad.individual.filter import IndividualFilter, counted_inputs, named_ids
from opendp_hybridad.symbolic.function import RecordFunction

__all__ = ["DaskIndividualFilter"]


def _row_digest(partition: pd.DataFrame, kept: np.ndarray, id_column: str | None) -> str:
    """SHA-256 of the partition's counted rows as the filter sees them: each named row's typed id key
    (``ids.py``) in order, or the kept positions without an id column. Every pass returns it, so a
    graph that gives other rows, or the same rows in another order, at a later pass is refused
    before any charge (an adversarial review reordered rows between passes: a count check alone
    let values be charged to other people)."""
    import hashlib

    from opendp_hybridad.individual.ids import id_keys

    digest = hashlib.sha256()
    if id_column is None:
        digest.update(np.flatnonzero(kept).astype(np.int64).tobytes())
        return digest.hexdigest()
    ids, _ = named_ids(partition, id_column, kept)
    values = np.asarray(ids.to_numpy()) if not isinstance(ids.dtype, pd.CategoricalDtype) else None
    if values is not None and values.dtype.kind in "iufbMm":  # fixed-width values: their bytes say which and in what order
        digest.update(values.dtype.str.encode() + b"\0" + np.ascontiguousarray(values).tobytes())
        return digest.hexdigest()
    for key in id_keys(pd.Series(np.asarray(ids.astype(object)), dtype=object)):
        digest.update(key.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class _IdsPass:
    """One partition -> (rows, kept records, ids of the kept rows that have one (positions without an id
    column), digest of its counted rows)."""

    def __init__(self, domain: FrameDomain, id_column: str | None):
        self.domain, self.id_column = domain, id_column

    def __call__(self, partition: pd.DataFrame) -> tuple[int, int, Any, str]:
        _, kept = counted_inputs(partition, self.domain)
        digest = _row_digest(partition, kept, self.id_column)
        if self.id_column is None:
            return len(partition), int(kept.sum()), np.flatnonzero(kept), digest
        ids, _ = named_ids(partition, self.id_column, kept)
        return len(partition), int(kept.sum()), ids, digest


class _ValuesPass:
    """One partition -> (rows, kept records, each function's clamped value of each kept row that has an id)."""

    def __init__(self, domain: FrameDomain, id_column: str | None, kernels: list[Any], bounds: list[tuple[float, float]]):
        self.domain, self.id_column, self.kernels, self.bounds = domain, id_column, kernels, bounds

    def __call__(self, partition: pd.DataFrame) -> tuple[int, int, np.ndarray, str]:
        columns, kept = counted_inputs(partition, self.domain)
        digest = _row_digest(partition, kept, self.id_column)
        rows = int(kept.sum())
        if self.id_column is not None:
            _, named = named_ids(partition, self.id_column, kept)
            rows = int(named.sum())
            if not named.all():
                columns = [c[named] for c in columns]
        values = np.zeros((rows, len(self.kernels)))
        with np.errstate(all="ignore"):
            for j, (kernel, (lower, upper)) in enumerate(zip(self.kernels, self.bounds, strict=True)):
                values[:, j] = kernel.value_clamped(columns, lower, upper)
        return len(partition), int(kept.sum()), values, digest


def _concatenated(ids: list[pd.Series]) -> pd.Series:
    """The partitions' ids in order, each value as it was: every partition joined as objects.

    ``pd.concat`` of an int64 and a float64 partition would cast the integers to float64
    (``2**53 + 1`` would become ``2**53``, another person), and categoricals whose categories
    differ by partition are cast the same way although every one prints as ``category`` (an
    adversarial review merged two people so); as objects every value keeps its own exact
    value, which is what ``ids.py`` keys.
    """
    if not ids:
        return pd.Series([], dtype=object)
    return pd.concat([pd.Series(np.asarray(part.astype(object)), dtype=object) for part in ids], ignore_index=True)


class DaskIndividualFilter(IndividualFilter):
    """:class:`~opendp_hybridad.individual.filter.IndividualFilter` over a ``dask.dataframe`` (same parameters).

    Same guarantee and the same charges, admissions, ledger records and pre-noise totals
    as the pandas filter on the computed frame, for every partitioning (proven in the
    module docstring and docs/soundness.md, "The individual filter on Dask"). ``frame``
    must be a Dask DataFrame whose partitions are members of the frame domain without
    ``size``, with at most ``size_limit`` rows in all (and ``size`` kept, if fixed).
    Per-record vectors (:meth:`record_columns`, :meth:`sum_rows`) are not offered: they
    would hold every record on the driver; use the pandas filter.
    """

    def _load(self, frame: Any, id_column: str | None, max_rows: int) -> None:
        from opendp_hybridad.frame.dask_engine import DaskFrameDomain

        d = self.domain
        spec = DaskFrameDomain(d.schema, d.size_limit, d.size, d.labels)
        spec.check_metadata(frame)  # a Dask frame; columns and dtypes a partition could pass; before any task
        wanted = [*spec.schema.names, *(name for name, _ in spec.labels)]
        if id_column is not None:
            named_ids(frame._meta, id_column, np.ones(0, dtype=bool))  # the id column: present, once
            wanted = [*wanted, *([] if id_column in wanted else [id_column])]
        self._frame = frame[wanted]
        self._spec = spec
        self._partition_domain = spec.partition_domain()
        self._id_column = id_column
        parts = self._pass(_IdsPass(self._partition_domain, id_column))
        self._layout = [p[3] for p in parts]  # each partition's counted rows (digest), checked at every pass
        if id_column is None:
            offsets = np.cumsum([0, *(p[0] for p in parts[:-1])], dtype=np.int64)
            ids = pd.Series(np.concatenate([np.zeros(0, dtype=np.int64),
                                            *(o + p[2] for o, p in zip(offsets, parts, strict=True))]))
        else:
            ids = _concatenated([p[2] for p in parts])
        self._first = self._index(ids, id_column, max_rows)
        self._columns = None
        self._values: dict[tuple[int, float, float], np.ndarray] | None = None
        self._query: list[RecordFunction] = []

    def _pass(self, task: Any) -> list[tuple[int, int, Any]]:
        """``task`` on every partition (on the workers), in partition order; the totals checked against the domain."""
        import dask

        parts = list(dask.compute(*[dask.delayed(task, pure=False)(p) for p in self._frame.to_delayed()]))
        rows = sum(int(p[0]) for p in parts)
        if rows > self._spec.size_limit:
            raise SchemaMismatchError(f"the frame has more records than the domain's size limit {self._spec.size_limit}")
        kept = sum(int(p[1]) for p in parts)
        if self._spec.size is not None and kept != self._spec.size:
            raise SchemaMismatchError(f"the domain has exactly {self._spec.size} records after the missing-value policies")
        return parts

    def _contributions(self, functions: list[RecordFunction]) -> tuple[np.ndarray, np.ndarray, float]:
        """The pandas filter's, with every function's values computed in one pass over the partitions."""
        for f in functions:
            self._check_function(f)  # every function, before the one pass that computes them all
        self._values = None
        self._query = list(functions)
        try:
            return super()._contributions(functions)
        finally:
            self._values, self._query = None, []

    def _record_values(self, function: RecordFunction, lower: float, upper: float) -> np.ndarray:
        """The function's clamped value of each counted record, computed on the workers, in frame order.

        At a query's first call, one pass computes the values of all its functions (each checked
        by :meth:`_contributions` before).
        """
        if self._values is None:
            self._values = self._pass_values(self._query or [function])
        found = self._values.get((id(function), lower, upper))
        return found if found is not None else self._pass_values([function])[(id(function), lower, upper)]

    def _pass_values(self, functions: list[RecordFunction]) -> dict[tuple[int, float, float], np.ndarray]:
        from opendp_hybridad.frame.dask_engine import _ShippedKernel

        bounds = [(float(f.range().lower), float(f.range().upper)) for f in functions]  # as the pandas filter reads them
        kernels = [_ShippedKernel(f.compile()) for f in functions]
        parts = self._pass(_ValuesPass(self._partition_domain, self._id_column, kernels, bounds))
        if [p[3] for p in parts] != self._layout:
            raise SchemaMismatchError("the frame's partitions changed between passes: the filter needs one dataset")
        values = np.concatenate([np.zeros((0, len(functions))), *(p[2] for p in parts)])
        if self._first is not None:
            values = values[self._first]
        return {(id(f), lo, hi): np.ascontiguousarray(values[:, j]) for j, (f, (lo, hi)) in enumerate(zip(functions, bounds,
                                                                                                             strict=True))}

    def record_columns(self) -> list[np.ndarray]:
        raise DeclarationError("per-record columns are not offered on Dask (they would be collected on the driver): "
                               "use the pandas IndividualFilter")

    def sum_rows(self, values: np.ndarray, row_bound: float, noise_scale: float, label: str = "") -> np.ndarray:
        raise DeclarationError("sums of per-record vectors are not offered on Dask: use the pandas IndividualFilter")
