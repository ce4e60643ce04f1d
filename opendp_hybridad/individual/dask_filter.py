"""The individual filter over a ``dask.dataframe``: the pandas filter's answers, charges and ledger, bit for bit,
with every per-row quantity computed and grouped on the workers.

:class:`DaskIndividualFilter` is :class:`~opendp_hybridad.individual.filter.IndividualFilter`
(Rényi, Feldman and Zrnic 2021; Gaussian DP, Smith and Thakurta 2022 and Koskela, Tobaben
and Honkela 2023; add/remove of one individual only) whose frame is a Dask frame. The driver
holds per-person arrays only (hash, order, sums, charges: about 40 bytes a person); no
per-row value ever reaches it.

**The obstacle.** The filter's theorems need individual i's loss at each query to be a
function of the history and of i's own rows alone, and the released totals with and
without i to differ by i's computed sum ``s_i`` plus at most the float allowance
(:func:`~opendp_hybridad.individual.charges.float_allowance`). Partial sums of one person
formed per partition and combined afterwards would make ``s_i`` depend on where the
partition boundaries fall (a float sum depends on its grouping), hence on the other rows.

**The design: each person's rows meet in one task, in frame order.** Every named row (kept by
the missing-value policies, with an id) is keyed by the ledger's keyed 64-bit hash of its id
(:class:`~opendp_hybridad.individual.ledger.IdHasher`, computed on the worker that reads the
partition; without an id column the id is the row's position in the whole frame, as in the
pandas path). A row goes to bucket ``(hash >> 32) mod B``, a rule of its own id alone, so all
rows of one person (one hash) go to one bucket. Each partition's task splits its rows into B
pieces, in row order; bucket b's task concatenates its pieces in partition order. So a bucket
holds its people's rows in frame order (partition index, then position), and computes what the
pandas path computes on the whole frame, restricted to them:

1. set-up (once): the hashes of each partition's named rows are computed and persisted on the
   workers (``dask.persist``: later passes do not hash again); each bucket numbers its people
   by first appearance and returns their hashes and first global positions; the driver orders
   all people by first position (the pandas path's numbering);
2. each query's pass: each partition's task computes every function's clamped value of its
   named rows (the pandas path's compiled kernel, ``value_clamped``, shipped by its source as in
   :mod:`opendp_hybridad.frame.dask_engine`) and splits ``(hash, values)`` into the buckets;
   each bucket cuts each person to their first ``max_rows`` rows (``cumcount`` in frame order)
   and forms ``s_i`` with :func:`~opendp_hybridad.individual.charges.individual_sums` (one
   sequential sum per person, in frame order), returning ``(hashes, sums)``.

The driver receives per-person sums, computes the charges, commits them in the ledger (SQLite,
on the driver: every charge committed before any total exists) and forms the total with
``math.fsum`` over the admitted: the pandas path's code.

**Theorem.** For a member frame, on a homogeneous cluster (every worker evaluates the
kernel as the driver would; the assumption of the Dask engine), every query's ledger
charges, admissions and pre-noise totals are those of the pandas filter on the
concatenation of the partitions (the frame), bit for bit, whatever the partitioning and
whatever B.

*Proof.* (a) Rows. The membership check, the missing-value policies and the missing-id
rule are per-row rules (each row's verdict, kernel inputs and key depend on that row
alone; ``ids.py`` keys each value on its own, by its exact value whatever its type, and the
keyed hash of a key is a function of the key), so each named row gets the hash the pandas
path gives it. (b) People. Two rows are one person in the pandas path iff their hashes are
equal (``pd.factorize`` of the hashes); equal hashes go to one bucket, so each bucket's
factorisation of its rows' hashes finds exactly the pandas path's people among its rows,
and the driver's order by first global position is the pandas numbering by first
appearance. (c) ``max_rows``. A bucket's rows are its people's rows in frame order (the
pieces keep row order and are joined in partition order), so ``cumcount < max_rows`` per
hash marks each person's first ``max_rows`` rows in frame order: the pandas path's counted
rows, even when they straddle partitions. (d) Values and sums. Each counted row's value is
the kernel's elementwise value of that row's inputs, and ``numpy.bincount`` adds each
person's counted values sequentially in the order given (frame order) starting from 0.0,
as the pandas path does over the whole frame: the same float ``s_i``. (e) Everything
after (sensitivities, losses, the ledger's ``charge``, ``math.fsum`` over the admitted) is
the inherited pandas code on equal per-person inputs; the driver places each bucket's
people at their global numbers, so the arrays are equal, not only as sets. QED.

So the two paths' pre-noise totals differ by 0, and the pandas filter's argument
(``docs/individual.md``, ``charges.py``'s float allowance) applies unchanged: ``s_i`` is a
sequential sum of i's counted values in frame order, a function of i's rows alone.

**Totality.** Columns, dtypes and the id column are checked on the Dask metadata before
any task. Each partition is checked as a member of the frame domain without ``size``
(the pandas checks, per row); the driver checks ``size_limit`` (total rows) and a fixed
``size`` (total kept) from the counts before any charge. A non-member raises the pandas
path's :class:`~opendp_hybridad.errors.SchemaMismatchError`; no member raises, so no
dataset raises where its neighbour (one individual added or removed) would not, except
through the size limit, as in the pandas path. A frame whose partitions change between
passes (a non-deterministic graph) is refused with ``SchemaMismatchError`` before any
charge: every pass returns, per partition, its row count, kept count and a SHA-256 digest of
its counted rows (the kept rows' kernel inputs and the named rows' typed id keys in order, or
the kept positions; every part length-prefixed, so the byte stream is injective), which must
equal the set-up's; each query's read must also be the read its persisted hashes came from
(hashes recomputed after a lost worker come from a re-read); without an id column, the
lengths that placed the positions must be the hash pass's; and each bucket's people must be
the set-up's. So the filter's theorem, which assumes one dataset, applies to what is charged.

**Cost.** Per query, one read of the partitions; the pieces hold 8 (1 + k) bytes per named
row on the workers (k functions) until their bucket is summed; the persisted hashes hold 8
bytes per named row on the workers; the driver receives 8 (1 + k) bytes per person. The
ledger (SQLite) is on the driver. B is ``min(partitions, 64)``, so the graph has at most 64
pieces per partition. See docs/scale.md. Dask is imported only when a filter is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DeclarationError, SchemaMismatchError
from opendp_hybridad.frame.domain import FrameDomain
from opendp_hybridad.individual import charges as _charges
from opendp_hybridad.individual.filter import IndividualFilter, counted_inputs, named_ids
from opendp_hybridad.individual.ledger import IdHasher
from opendp_hybridad.symbolic.function import RecordFunction

__all__ = ["DaskIndividualFilter"]

MAX_BUCKETS = 64  # pieces per partition: the graph has partitions * buckets edges
_CHANGED = "the frame's partitions changed between passes: the filter needs one dataset"
_POSITION_BITS = 40  # a row's global first position: partition index << 40 | position among its named rows


def _row_digest(partition: pd.DataFrame, kept: np.ndarray, columns: list[np.ndarray], id_column: str | None) -> str:
    """SHA-256 of the partition's counted rows as the filter sees them: the kept rows' kernel inputs
    (``columns``, schema order) and each named row's typed id key (``ids.py``) in order, or the kept
    positions without an id column; every part length-prefixed, so two different row sets never give
    one byte stream. Every pass returns it, so a graph that gives other rows, other values, or the
    same rows in another order at a later pass is refused before any charge (adversarial reviews
    reordered rows between passes, changed values under the same ids, and joined keys containing
    NUL into one stream: each let a value be charged to another person or to nobody)."""
    import hashlib

    from opendp_hybridad.individual.ids import id_keys

    digest = hashlib.sha256()

    def part(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little") + data)

    for column in columns:
        part(np.ascontiguousarray(column, dtype=np.float64).tobytes())
    if id_column is None:
        part(np.flatnonzero(kept).astype(np.int64).tobytes())
        return digest.hexdigest()
    ids, _ = named_ids(partition, id_column, kept)
    values = np.asarray(ids.to_numpy()) if not isinstance(ids.dtype, pd.CategoricalDtype) else None
    if values is not None and values.dtype.kind in "iufbMm":  # fixed-width values: their bytes say which and in what order
        part(values.dtype.str.encode())
        part(np.ascontiguousarray(values).tobytes())
        return digest.hexdigest()
    keys = id_keys(pd.Series(np.asarray(ids.astype(object)), dtype=object))
    part(str(len(keys)).encode())
    for key in keys:
        part(key.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _buckets_of(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Each row's bucket: a function of its hash alone, so one person's rows share a bucket."""
    return ((hashes >> np.uint64(32)) % np.uint64(buckets)).astype(np.uint8)  # buckets <= MAX_BUCKETS < 256


def _split(buckets: int, hashes: np.ndarray, *columns: np.ndarray) -> tuple[tuple[np.ndarray, ...], ...]:
    """Rows (given by their hashes and per-row arrays) split into ``buckets`` pieces, each in row order."""
    which = _buckets_of(hashes, buckets)
    order = np.argsort(which, kind="stable")  # stable: each piece keeps the rows' order (radix sort on uint8)
    ends = np.searchsorted(which[order], np.arange(1, buckets + 1, dtype=np.intp), side="left")
    starts = np.concatenate([[0], ends[:-1]])
    ordered = [hashes[order], *(c[order] for c in columns)]
    return tuple(tuple(a[lo:hi] for a in ordered) for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True))


class _HashPass:
    """One partition -> ((rows, kept records, digest of its counted rows), hashes of its named rows in row order)."""

    def __init__(self, domain: FrameDomain, id_column: str | None, hasher: IdHasher):
        self.domain, self.id_column, self.hasher = domain, id_column, hasher

    def __call__(self, partition: pd.DataFrame, offset: int) -> tuple[tuple[int, int, str], np.ndarray]:
        columns, kept = counted_inputs(partition, self.domain)
        digest = _row_digest(partition, kept, columns, self.id_column)
        if self.id_column is None:  # the pandas path's ids: positions in the whole frame
            ids = pd.Series(offset + np.flatnonzero(kept).astype(np.int64))
        else:
            ids, _ = named_ids(partition, self.id_column, kept)
        return (len(partition), int(kept.sum()), digest), self.hasher.ids(ids)


def _meta_of(loaded: tuple[tuple[int, int, str], np.ndarray]) -> tuple[int, int, str]:
    return loaded[0]


class _PeoplePieces:
    """A partition's persisted hashes -> one piece per bucket: (hashes, global first positions), in row order."""

    def __init__(self, buckets: int):
        self.buckets = buckets

    def __call__(self, loaded: tuple[Any, np.ndarray], index: int) -> tuple[tuple[np.ndarray, ...], ...]:
        hashes = loaded[1]
        positions = (np.int64(index) << np.int64(_POSITION_BITS)) + np.arange(hashes.size, dtype=np.int64)
        return _split(self.buckets, hashes, positions)


def _people(*pieces: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A bucket's people (pieces in partition order): their hashes by first appearance, and first global positions."""
    hashes = np.concatenate([np.zeros(0, dtype=np.uint64), *(p[0] for p in pieces)])
    positions = np.concatenate([np.zeros(0, dtype=np.int64), *(p[1] for p in pieces)])
    codes, people = pd.factorize(hashes, sort=False)
    first = np.zeros(len(people), dtype=np.intp)
    if len(people):
        first = np.unique(codes, return_index=True)[1]  # codes number people by first appearance
    return np.asarray(people, dtype=np.uint64), positions[first]


class _ValuesPass:
    """One partition and its persisted hashes -> (rows, kept, digest) and one piece per bucket:
    (hashes, each function's clamped value of each named row), in row order."""

    def __init__(self, domain: FrameDomain, id_column: str | None, kernels: list[Any], bounds: list[tuple[float, float]],
                 buckets: int):
        self.domain, self.id_column, self.kernels, self.bounds = domain, id_column, kernels, bounds
        self.buckets = buckets

    def __call__(self, partition: pd.DataFrame, loaded: tuple[Any, np.ndarray]) -> tuple[Any, ...]:
        columns, kept = counted_inputs(partition, self.domain)
        meta = (len(partition), int(kept.sum()), _row_digest(partition, kept, columns, self.id_column))
        if meta != loaded[0]:  # not the read the persisted hashes came from (e.g. recomputed after a worker was lost)
            return ((*meta, "hashes of another read"),
                    *_split(self.buckets, np.zeros(0, dtype=np.uint64), np.zeros((0, len(self.kernels)))))
        if self.id_column is not None:
            _, named = named_ids(partition, self.id_column, kept)
            if not named.all():
                columns = [c[named] for c in columns]
        hashes = loaded[1]
        rows = hashes.size  # the same read as the hashes' (checked above): one hash per named row
        values = np.zeros((rows, len(self.kernels)))
        with np.errstate(all="ignore"):
            for j, (kernel, (lower, upper)) in enumerate(zip(self.kernels, self.bounds, strict=True)):
                values[:, j] = kernel.value_clamped(columns, lower, upper)
        return (meta, *_split(self.buckets, hashes, values))


class _BucketSums:
    """A bucket's pieces (in partition order) -> its people's hashes (by first appearance) and their sums (m_b, k):
    each person's first ``max_rows`` rows in frame order, summed sequentially in that order."""

    def __init__(self, max_rows: int, k: int):
        self.max_rows, self.k = max_rows, k

    def __call__(self, *pieces: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        hashes = np.concatenate([np.zeros(0, dtype=np.uint64), *(p[0] for p in pieces)])
        values = np.concatenate([np.zeros((0, self.k)), *(p[1] for p in pieces)])
        codes, people = pd.factorize(hashes, sort=False)
        codes = codes.astype(np.intp)
        m = len(people)
        if m and codes.size:
            counted = _charges.first_rows(codes, m, self.max_rows)
            if not counted.all():
                codes, values = codes[counted], values[counted]
        sums = np.zeros((m, self.k))
        for j in range(self.k):
            sums[:, j] = _charges.individual_sums(codes, m, np.ascontiguousarray(values[:, j]))
        return np.asarray(people, dtype=np.uint64), sums


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
        import dask

        from opendp_hybridad.frame.dask_engine import DaskFrameDomain, check_totals, computed

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
        self._max_rows = 1 if id_column is None else int(max_rows)
        self._codes = None  # no per-row array on the driver
        self._columns = None
        parts = self._frame.to_delayed()
        self._buckets = max(1, min(len(parts), MAX_BUCKETS))
        offsets, lengths = [0] * len(parts), ()
        if id_column is None:  # ids are positions in the whole frame: each partition's first row's position first
            lengths = computed(lambda: dask.compute(*[dask.delayed(len)(p) for p in parts]))
            offsets = np.cumsum([0, *lengths[:-1]], dtype=np.int64).tolist()
        task = _HashPass(self._partition_domain, id_column, self.ledger.hasher())
        loaded = [dask.delayed(task, pure=False)(p, o) for p, o in zip(parts, offsets, strict=True)]
        self._loaded = list(computed(lambda: dask.persist(*loaded)))  # each partition's named rows' hashes, on the workers
        split = _PeoplePieces(self._buckets)
        pieces = [dask.delayed(split, nout=self._buckets)(x, i) for i, x in enumerate(self._loaded)]
        metas, people = computed(lambda: dask.compute(
            [dask.delayed(_meta_of)(x) for x in self._loaded],
            [dask.delayed(_people)(*(p[b] for p in pieces)) for b in range(self._buckets)]))
        check_totals(self._spec, [m[0] for m in metas], [m[1] for m in metas])
        if id_column is None and [m[0] for m in metas] != list(lengths):  # positions from another read's lengths
            raise SchemaMismatchError(_CHANGED)
        self._layout = list(metas)  # each partition's rows, kept rows and digest of its counted rows, checked at every pass
        hashes = np.concatenate([np.zeros(0, dtype=np.uint64), *(h for h, _ in people)])
        first = np.concatenate([np.zeros(0, dtype=np.int64), *(f for _, f in people)])
        order = np.argsort(first, kind="stable")  # people numbered by first appearance, as in the pandas path
        number = np.empty(order.size, dtype=np.intp)
        number[order] = np.arange(order.size, dtype=np.intp)
        ends = np.cumsum([len(h) for h, _ in people])
        self._bucket_people = [h for h, _ in people]  # each bucket's people, by first appearance in the bucket
        self._bucket_numbers = np.split(number, ends[:-1])  # their global numbers
        self._hashes = hashes[order]
        self._m = int(hashes.size)

    def _individual_sums(self, functions: list[RecordFunction], bounds: list[tuple[float, float]]) -> np.ndarray:
        """The pandas filter's per-person sums, every function's in one pass over the partitions (on the workers)."""
        from opendp_hybridad.frame.dask_engine import _ShippedKernel

        kernels = [_ShippedKernel(f.compile()) for f in functions]
        return self._pass(_ValuesPass(self._partition_domain, self._id_column, kernels, bounds, self._buckets))

    def _pass(self, task: _ValuesPass) -> np.ndarray:
        """One query's pass: values on the partitions, people's sums in the buckets; (m, k) in the people's numbering."""
        import dask

        from opendp_hybridad.frame.dask_engine import check_totals, computed

        k, buckets = len(task.kernels), self._buckets
        outputs = [dask.delayed(task, nout=buckets + 1, pure=False)(p, x)
                   for p, x in zip(self._frame.to_delayed(), self._loaded, strict=True)]
        combine = _BucketSums(self._max_rows, k)
        metas, per_bucket = computed(lambda: dask.compute(
            [o[0] for o in outputs], [dask.delayed(combine)(*(o[1 + b] for o in outputs)) for b in range(buckets)]))
        check_totals(self._spec, [m[0] for m in metas], [m[1] for m in metas])
        if list(metas) != self._layout:  # every partition: the same rows, kept rows, values and ids as at set-up
            raise SchemaMismatchError(_CHANGED)
        sums = np.zeros((self._m, k))
        for (people, bucket_sums), known, numbers in zip(per_bucket, self._bucket_people, self._bucket_numbers,
                                                         strict=True):
            if not np.array_equal(people, known):
                raise SchemaMismatchError(_CHANGED)
            sums[numbers] = bucket_sums
        return sums

    def record_columns(self) -> list[np.ndarray]:
        raise DeclarationError("per-record columns are not offered on Dask (they would be collected on the driver): "
                               "use the pandas IndividualFilter")

    def sum_rows(self, values: np.ndarray, row_bound: float, noise_scale: float, label: str = "") -> np.ndarray:
        raise DeclarationError("sums of per-record vectors are not offered on Dask: use the pandas IndividualFilter")
