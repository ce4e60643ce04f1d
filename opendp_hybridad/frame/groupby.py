"""Sums, counts and means of a certified expression per group, over a PUBLIC key set.

A group-by names a key column ``by`` and a public, ordered list of ``keys``
(:class:`GroupKeys`). The output is a vector with one entry per key, in the
given order; a key absent from the data gets 0 (its sum or count).

The key column is declared in the frame domain, as a *label* outside the schema
(``make_frame_domain(schema, labels={"sex": "drop"})``): the schema's fields are
the bounded numeric inputs of ``f``, a label is read as it is (any dtype: strings,
integers, categoricals) and compared with the keys value by value by Python's hash
and ``==`` (a dict lookup, for polars frames too), never by the column's dtype, so
a record's group never depends on the other records. Its presence and its
missing-key policy are part of the domain's membership, so they are checked before any private computation, and no
member makes a group-by fail: a value that cannot be compared with the keys
(e.g. an unhashable object) is simply not a public key.

Records dropped. A record is dropped (it counts in no group) when

* its key is not one of the public keys: the key set is public, so a record
  outside it is outside the query, a data-independent rule;
* its key is missing (None, NaN, pandas NA, polars null) and the label's policy
  is ``"drop"``; under ``"raise"`` a frame with a missing key is not a member;
* a field with ``missing="drop"`` is missing (the frame domain's policy).

Per-partition sensitivity, with ``L, U`` the certified range of ``f`` (values are
clamped to it), ``M = max(|L|, |U|)``, ``W = U - L`` and ``R`` the float relaxation
of :func:`~opendp_hybridad.frame.aggregate.sum_relaxation`, per unit of ``d_in``:

* add/remove (``symmetric_distance``): a record added or removed touches one
  partition, by at most ``M``: ``l1 = l2 = M``.
* replace-one (``change_one_distance``): the replaced record may keep its key
  (one partition moves by the replace constant of ``relations.py``: ``W``, or
  ``max(W, M)`` when a field drops records) or move to another key (two
  partitions move, each by at most the add/remove constant ``M``): ``l1 =
  max(W, 2M) = 2M`` and ``l2 = max(W, sqrt(2) M)`` (``= sqrt(2) M`` when ``f`` has
  one sign; ``W`` can exceed ``sqrt(2) M`` when ``L < 0 < U``).
* feature-level (``feature_distance(q)``): the relation moves a record's declared
  fields, and the key column is not one of them, so a record keeps its key: one
  partition moves, by the sum's feature-level constant ``min(K r + E, W)``.

The relaxation ``R`` covers the float summation of every partition at once: each
partition's pairwise sum of ``n_g`` terms errs by at most ``gamma_{k_g} n_g M`` and
``sum_g n_g <= n`` (the domain's ``size_limit`` or kept ``size``), so the errors of
all partitions, in l1 and so in l2, stay within the relaxation of one sum of ``n``
terms. All constants come from :class:`~opendp_hybridad.relations.PerRecordBound`
and the sum's plan (:class:`~opendp_hybridad.frame.aggregate._SumPlan`) and are
rounded up.

Counts per group: ``l1 = l2 = 1`` per unit of ``d_in`` under add/remove; ``l1 = 2``
and ``l2 = sqrt(2)`` under replace-one (a record may move between groups); refused
under the feature-level relation (counts do not change).

Private key sets. When the keys themselves are private, use OpenDP's own
mechanism rather than this module: a ``dp.Context`` query over polars data
(``context.query().group_by("sex").agg(...)``) releases only the keys whose noisy
count passes a threshold (OpenDP picks the threshold for an approximate-DP budget);
:func:`~opendp_hybridad.frame.polars_bridge.with_certified_column` adds a certified
column to such data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np
import pandas as pd

from opendp_hybridad.accounting import Accounting, accounting_of, with_accounting
from opendp_hybridad.analysis.certificate import BoundCertificate, RangeCertificate
from opendp_hybridad.analysis.rounding import add_down, add_up, mul_down, mul_up, round_up, sqrt_up, sum_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.aggregate import _SumPlan
from opendp_hybridad.frame.domain import (
    DEFAULT_SIZE_LIMIT,
    FrameDomain,
    as_frame_domain,
    label_column,
    label_missing,
    make_frame_domain,
    materialise,
    prepare_frame,
)
from opendp_hybridad.frame.measurements import _FEATURES, _calibrate, _space
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, FeatureLevel, PerRecordBound, Relation, relation_of
from opendp_hybridad.symbolic.function import RecordFunction, normalise_norm
from opendp_hybridad.symbolic.schema import Schema

__all__ = ["GroupKeys", "make_grouped_count_of", "make_grouped_sum_of", "make_private_grouped_count",
           "make_private_grouped_mean", "make_private_grouped_sum", "then_grouped_count_of", "then_grouped_sum_of",
           "then_private_grouped_count", "then_private_grouped_mean", "then_private_grouped_sum"]


@dataclass(frozen=True)
class GroupKeys:
    """The key column ``by`` (a label of the frame domain) and the public ``keys``: distinct, none missing, in output order."""

    by: str
    keys: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.by, str) or not self.by:
            raise DeclarationError("by must name the key column")
        try:
            keys = None if isinstance(self.keys, (str, bytes)) else tuple(self.keys)
        except TypeError:
            keys = None
        if not keys:
            raise DeclarationError(f"key column {self.by!r}: give the public keys as a non-empty list")
        if any(_is_missing(k) for k in keys):
            raise DeclarationError(f"key column {self.by!r}: a public key cannot be missing (None or NaN)")
        try:
            distinct = len(dict.fromkeys(keys))  # the rule codes() matches by: Python's hash and ==
        except TypeError as exc:
            raise DeclarationError(f"key column {self.by!r}: the keys must be hashable") from exc
        if distinct != len(keys):  # e.g. 1 and True, or 0.0 and -0.0, are one key
            raise DeclarationError(f"key column {self.by!r}: the keys must be distinct")
        object.__setattr__(self, "keys", keys)

    def __len__(self) -> int:
        return len(self.keys)

    def codes(self, frame: Any) -> np.ndarray:
        """Per input row, the position of its key in ``keys``, or -1 (missing, or not a public key).

        Total on every frame that has the column: a value that cannot be compared with
        the keys (an unhashable object) is not a public key. A frame without the column
        is refused with :class:`SchemaMismatchError` naming it (the frame domain's
        membership check refuses it first).
        """
        column = label_column(frame, self.by)
        missing = label_missing(column)
        # value by value, always: whether a value is a key depends on that value alone (Python's hash
        # and ==), never on the column's dtype, which the other records decide. pandas' get_indexer did
        # not: True matched the key 1 in an object column but not in a bool one, so one added record
        # (an int key, or an unhashable value that sent the column to a fallback) moved every other.
        positions = {key: i for i, key in enumerate(self.keys)}
        values = column.tolist()
        try:
            found = positions.get
            codes = np.array([found(value, -1) for value in values], dtype=np.intp)
        except Exception:  # a value whose hash or == raises: the same dict rule, value by value, that one not a key
            codes = np.array([_position(positions, value) for value in values], dtype=np.intp)
        codes = codes.reshape(len(values))  # an empty column too
        codes[missing] = -1  # a missing value never matches a key
        return codes


def _position(positions: dict[Any, int], value: Any) -> int:
    try:
        return positions.get(value, -1)
    except Exception:  # unhashable, or a comparison that signals: not a key
        return -1


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an array-like key: not a scalar missing value
        return False


def _group_keys(by: Any, keys: Any) -> GroupKeys:
    if isinstance(by, GroupKeys):
        if keys is not None:
            raise DeclarationError("give the keys either in GroupKeys or as keys=, not both")
        return by
    return GroupKeys(by, keys)


def _checked(spec: FrameDomain, groups: GroupKeys) -> None:
    if groups.by in spec.schema.fields:
        raise DeclarationError(f"key column {groups.by!r} is a field of the schema; group by a label outside it")
    spec.label_policy(groups.by)  # the key column must be declared: its presence and policy are membership


class _Grouped:
    """Reads a member frame once: the prepared fields of the kept records and each one's key position."""

    def __init__(self, spec: FrameDomain, groups: GroupKeys):
        self.spec, self.groups = spec, groups

    def split(self, frame: Any) -> tuple[list[np.ndarray], np.ndarray]:
        """Columns of the records in some group, ordered by group (input order within one), and each group's size."""
        columns, sizes, _ = self.read(frame)
        return columns, sizes

    def read(self, frame: Any) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """:meth:`split`, and the mask of the records the fields' policies keep (one entry per input row).

        The Dask engine (``dask_groupby.py``) reads each partition with it: the mask gives the
        partition's row and kept counts, which the driver checks against the domain.
        """
        frame = materialise(frame, [*self.spec.schema.names, *(name for name, _ in self.spec.labels)])
        prepared = prepare_frame(frame, self.spec)  # membership of the fields first (size limit included)
        codes = self.groups.codes(frame)[prepared.kept]
        chosen = codes >= 0
        codes = codes[chosen]
        order = np.argsort(codes, kind="stable")
        columns = [np.ascontiguousarray(c[chosen][order]) for c in prepared.columns.values()]
        return columns, np.bincount(codes, minlength=len(self.groups)), prepared.kept


def _group_totals(plan: Any, columns: list[np.ndarray], sizes: np.ndarray) -> list[float]:
    """Each group's sum of f, from :meth:`_Grouped.split`'s columns: the plan's pairwise sum over its slice."""
    totals, start = [], 0
    for size in sizes.tolist():
        totals.append(plan.total([c[start:start + size] for c in columns]))
        start += size
    return totals


def _grouped_stability(per_record_l1: float, per_record_l2: float, p: float, relaxation: float) -> Any:
    """``d_in -> per_record_p * d_in + relaxation`` (add/remove, replace-one: whole records), rounded up."""
    slope = per_record_l1 if p == 1.0 else per_record_l2

    def stability(d_in: Any) -> float:
        d = int(d_in)
        if d < 0:
            raise ValueError("d_in must be non-negative")
        return add_up(mul_up(slope, round_up(d)), relaxation)

    return stability


def _moving_constants(bound: PerRecordBound, relation: Relation) -> tuple[float, float]:
    """Per-record (l1, l2) change of a grouped sum, from the scalar constants of relations.py."""
    add_remove = bound.sensitivity(ADD_REMOVE)[0]  # one partition, one record in or out
    if relation == ADD_REMOVE:
        return add_remove, add_remove
    stay = bound.sensitivity(REPLACE_ONE)[0]  # the record keeps its key
    # or it moves: out of one partition and into another, each by at most the add/remove constant
    return max(stay, add_up(add_remove, add_remove)), max(stay, mul_up(sqrt_up(2.0), add_remove))


def _output(p: float, size: int) -> tuple[Any, Any]:
    import opendp.prelude as dp

    metric = dp.l1_distance(T=float) if p == 1.0 else dp.l2_distance(T=float)
    return dp.vector_domain(dp.atom_domain(T=float, nan=False), size=size), metric


def _norm(norm: Any) -> float:
    p = normalise_norm(norm)
    if p not in (1.0, 2.0):
        raise DeclarationError("a vector of group sums is released in the l1 (Laplace) or l2 (Gaussian) distance")
    return p


def make_grouped_sum_of(input_domain: Any, input_metric: Any, function: RecordFunction, by: str | GroupKeys,
                        keys: Any = None, norm: Any = 1, *, range_certificate: RangeCertificate | None = None,
                        lipschitz_certificate: BoundCertificate | None = None, backend: str = "auto"):
    """Transformation: frame -> ``[sum of f over the records with key k for k in keys]`` (l1 or l2 distance).

    :param input_domain: ``make_frame_domain(schema, labels={by: "drop"})`` (or ``"raise"``):
        the key column is declared in the domain, with its missing-key policy.
    :param by: the key column, or a :class:`GroupKeys`.
    :param keys: the public keys, in output order (with ``by`` a column name).
    :param norm: 1 (``l1_distance``, for Laplace) or 2 (``l2_distance``, for Gaussian).

    Each record is prepared as in :func:`~opendp_hybridad.frame.aggregate.make_sum_of`
    (clamped to the box, missing values by policy), ``f`` is evaluated by the compiled
    kernel and clamped to its certified range, and each group's values are summed
    pairwise in input order; a group sum over all records equals ``make_sum_of``'s
    output on the frame restricted to that group, bit for bit. Records outside the
    public key set or with a missing key are dropped (module docstring).

    Stability per unit of ``d_in`` (``M = max|f|``, ``W = U - L``, ``R`` the float relaxation):

    * symmetric_distance: ``l1 = l2 = M d_in + R``
    * change_one_distance: ``l1 = 2M d_in + R``, ``l2 = max(W, sqrt(2) M) d_in + R``
    * feature_distance(q): ``min(K d_in + E, W) + R`` in both norms (the key does not move)
    """
    import opendp.prelude as dp

    spec = as_frame_domain(input_domain)
    groups = _group_keys(by, keys)
    _checked(spec, groups)
    p = _norm(norm)
    plan = _SumPlan(input_domain, input_metric, function, range_certificate, lipschitz_certificate, backend)
    relation = relation_of(input_metric)
    if isinstance(relation, FeatureLevel):
        stability = plan.stability  # one record's fields move, its key stays: one partition moves
    else:
        bound = PerRecordBound(plan.lower, plan.upper, drops_records=spec.drops_records)
        stability = _grouped_stability(*_moving_constants(bound, relation), p, plan.stability.relaxation)
    reader = _Grouped(spec, groups)

    def apply(frame: Any) -> list[float]:
        return _group_totals(plan, *reader.split(frame))

    output_domain, output_metric = _output(p, len(groups))
    return dp.t.make_user_transformation(input_domain, input_metric, output_domain, output_metric, apply, stability)


def make_grouped_count_of(input_domain: Any, input_metric: Any, by: str | GroupKeys, keys: Any = None, norm: Any = 1):
    """Transformation: frame -> ``[number of kept records with key k for k in keys]`` (floats; l1 or l2 distance).

    Records dropped as for :func:`make_grouped_sum_of`. Stability per unit of ``d_in``:
    symmetric_distance ``l1 = l2 = d_in``; change_one_distance ``l1 = 2 d_in``,
    ``l2 = sqrt(2) d_in`` (a record may move between groups; rounded up). Counts are
    exact (integers below 2^53), so there is no float relaxation. Refused under the
    feature-level relation, where no count changes.
    """
    import opendp.prelude as dp

    spec = as_frame_domain(input_domain)
    groups = _group_keys(by, keys)
    _checked(spec, groups)
    p = _norm(norm)
    relation = relation_of(input_metric)
    if isinstance(relation, FeatureLevel):
        raise DeclarationError("group counts do not change under the feature-level relation; there is nothing to privatise")
    one = PerRecordBound(1.0, 1.0)  # a record adds 1 to its group's count
    stability = _grouped_stability(*_moving_constants(one, relation), p, 0.0)
    reader = _Grouped(spec, groups)

    def apply(frame: Any) -> list[float]:
        return [float(n) for n in reader.split(frame)[1].tolist()]

    output_domain, output_metric = _output(p, len(groups))
    return dp.t.make_user_transformation(input_domain, input_metric, output_domain, output_metric, apply, stability)


then_grouped_sum_of = to_then(make_grouped_sum_of)
then_grouped_count_of = to_then(make_grouped_count_of)


def _grouped_space(domain_or_schema: Any, metric: Any, size_limit: int | None, groups: GroupKeys,
                   missing_key: str | None) -> tuple[Any, Any]:
    """The frame domain with the key column declared (built from a Schema, or checked) and the metric."""
    import opendp.prelude as dp

    dp.assert_features(*_FEATURES)
    if isinstance(domain_or_schema, Schema):
        domain_or_schema = make_frame_domain(
            domain_or_schema, size_limit=DEFAULT_SIZE_LIMIT if size_limit is None else size_limit,
            labels={groups.by: "drop" if missing_key is None else missing_key})
    elif missing_key is not None and as_frame_domain(domain_or_schema).label_policy(groups.by) != missing_key:
        raise DeclarationError(f"key column {groups.by!r}: its missing-key policy is the domain's; "
                               "declare it with make_frame_domain(schema, labels={...}) or pass the schema")
    return _space(domain_or_schema, metric, size_limit)


def make_private_grouped_sum(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, by: str | GroupKeys,
                             keys: Any = None, missing_key: str | None = None, epsilon: float | None = None,
                             rho: float | None = None, d_in: Any = 1, size_limit: int | None = None,
                             backend: str = "auto") -> Any:
    """Measurement: the group sums of :func:`make_grouped_sum_of` plus OpenDP noise on every entry.

    Laplace in the l1 distance for ``epsilon``, Gaussian in the l2 distance for ``rho``,
    calibrated to the grouped sum's sensitivity at ``d_in`` as the package's other
    ``make_private_*`` are (``frame.measurements._calibrate``); its accounting record
    is read with :func:`~opendp_hybridad.accounting.accounting_of`.

    ``domain_or_schema``: a frame domain that declares the key column
    (``make_frame_domain(schema, labels={by: "drop"})``), or a Schema: the domain is then
    built with ``size_limit`` and the key column's ``missing_key`` policy (default ``"drop"``).
    """
    groups = _group_keys(by, keys)
    domain, metric = _grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    t = make_grouped_sum_of(domain, metric, function, groups, None, 1 if epsilon is not None else 2, backend=backend)
    return _calibrate(t, d_in, epsilon, rho, relation_of(metric))


def make_private_grouped_count(domain_or_schema: Any, metric: Any = None, *, by: str | GroupKeys, keys: Any = None,
                               missing_key: str | None = None, epsilon: float | None = None, rho: float | None = None,
                               d_in: Any = 1, size_limit: int | None = None) -> Any:
    """Measurement: the group counts of :func:`make_grouped_count_of` plus OpenDP noise (Laplace l1 / Gaussian l2).

    ``domain_or_schema`` as for :func:`make_private_grouped_sum`.
    """
    groups = _group_keys(by, keys)
    domain, metric = _grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    t = make_grouped_count_of(domain, metric, groups, None, 1 if epsilon is not None else 2)
    return _calibrate(t, d_in, epsilon, rho, relation_of(metric))


def make_private_grouped_mean(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, by: str | GroupKeys,
                              keys: Any = None, missing_key: str | None = None, epsilon: float | None = None,
                              rho: float | None = None, d_in: Any = 1, count_share: float = 0.5,
                              size_limit: int | None = None, backend: str = "auto") -> Any:
    """Measurement: per key, a private sum over a private count, ``sum / max(count, 1)`` clamped to f's certified range.

    The group sizes are private, so the mean is post-processing of a private grouped
    sum and a private grouped count released together by ``dp.c.make_composition``,
    the budget split ``count_share`` to the counts (shares rounded down, so they add up
    to at most the budget). The accounting record is the composed event, with the
    sum's and the count's records in its ``parts`` (their statistical distances summed).
    ``domain_or_schema`` as for :func:`make_private_grouped_sum`.
    """
    groups = _group_keys(by, keys)
    domain, metric = _grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    return _grouped_mean(
        lambda **budget: make_private_grouped_sum(domain, function, metric, by=groups, d_in=d_in, backend=backend, **budget),
        lambda **budget: make_private_grouped_count(domain, metric, by=groups, d_in=d_in, **budget),
        function, metric, d_in, epsilon, rho, count_share)


def _grouped_mean(sum_of: Any, count_of: Any, function: RecordFunction, metric: Any, d_in: Any, epsilon: float | None,
                  rho: float | None, count_share: float) -> Any:
    """:func:`make_private_grouped_mean` from the two measurements' builders (the pandas and Dask group-bys share it).

    ``sum_of(epsilon=...)`` (or ``rho=...``) builds the private grouped sum, ``count_of`` the
    private grouped count, each with its share of the budget.
    """
    import opendp.prelude as dp

    if (epsilon is None) == (rho is None):
        raise DeclarationError("give exactly one of epsilon (Laplace, pure DP) or rho (Gaussian, zCDP)")
    if not 0 < count_share < 1:
        raise DeclarationError("count_share must lie strictly between 0 and 1")
    budget = float(epsilon if epsilon is not None else rho)
    count_budget = mul_down(budget, count_share)
    sum_budget = add_down(budget, -count_budget)
    key = "epsilon" if epsilon is not None else "rho"
    total = sum_of(**{key: sum_budget})
    count = count_of(**{key: count_budget})
    rng = function.range().certifies(function)
    lower, upper = float(rng.lower), float(rng.upper)

    def means(pair: Any) -> list[float]:
        sums, counts = pair
        return [float(np.clip(s / max(c, 1.0), lower, upper)) for s, c in zip(sums, counts, strict=True)]

    parts = (accounting_of(total), accounting_of(count))
    record = Accounting(dp_accounting.ComposedDpEvent([p.dp_event() for p in parts]), relation_of(metric), d_in,
                        "composition", statistical_distance=sum_up([p.statistical_distance for p in parts]), parts=parts)
    composed = dp.c.make_composition([total, count])
    # post-processing the composed release never increases its loss: the composed record holds for the means
    return with_accounting(composed >> dp.new_function(means, TO="Vec<f64>"), record)


then_private_grouped_sum = to_then(make_private_grouped_sum)
then_private_grouped_count = to_then(make_private_grouped_count)
then_private_grouped_mean = to_then(make_private_grouped_mean)
