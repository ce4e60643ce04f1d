"""Certified group-by on Dask: sums, counts and means per public key over a ``dask.dataframe``.

The pandas group-by (:mod:`opendp_hybridad.frame.groupby`) run partition by partition on the
workers, its per-group partials combined exactly on the driver, as the Dask engine
(:mod:`opendp_hybridad.frame.dask_engine`) does for the plain sum. Dask itself is imported only
when a query runs.

What runs where. Each partition is read by groupby.py's own reader (``_Grouped.read``: the
frame domain's membership check without ``size``, the fields' missing-value policies, the
key of each record matched against the public keys value by value by
:meth:`~opendp_hybridad.frame.groupby.GroupKeys.codes`, records with a missing key or a key
outside the public set dropped, the label's ``"raise"`` policy) and summed by groupby.py's
``_group_totals`` with the pandas path's ``_SumPlan`` (its kernel shipped as source,
:class:`~opendp_hybridad.frame.dask_engine._ShippedKernel`). A partition sends the driver its
row count, its kept count and, per public key, its number of records and its partial sum;
nothing else. The driver checks the totals against the domain
(:func:`~opendp_hybridad.frame.dask_engine.check_totals`: ``size_limit``, a public kept
``size``), adds each group's counts as integers and its partials exactly
(:func:`~opendp_hybridad.frame.dask_engine.exact_total`: rationals, one rounding).

A record's group is decided from that record's own key (Python's hash and ``==``, a dict
lookup), never from the other records of its partition, so the Dask group of every record is
the pandas group-by's on the *computed frame* (the records as the partitions deliver them:
``frame.compute()`` when the partitions share the metadata's dtypes, as Dask's contract says).
Counts are therefore the pandas counts exactly, and each group's sum is the pandas group sum
within the float bound below.

The float bound. ``N`` the most records a member's sum adds (the domain's kept ``size`` if
fixed, else its ``size_limit``), ``M = max(|L|, |U|)``, ``u = 2^-53``, ``k = ceil(log2 N)``,
``g = k u / (1 - k u)``, ``G`` the number of public keys, ``S_i`` the exact sum of group ``i``'s
computed (clamped) values, which are the pandas path's.

1. Partition ``j`` holds ``n_ij`` records of group ``i``; their pairwise sum passes each term
   through at most ``ceil(log2 n_ij) <= k`` roundings, so it is within ``g n_ij M`` of their exact
   sum (Higham 2002, Lemma 3.1 and section 4.2). A group spread over many partitions only adds
   terms to the sum over ``j``; since every kept record lies in at most one group and one
   partition, ``sum_i sum_j n_ij <= N``: all partials of all groups together are within
   ``g N M`` of the exact sums, in l1 (so in l2, ``||e||_2 <= ||e||_1``). This is the argument of
   the pandas group-by's relaxation (``sum_i n_i <= N``) with ``n_i`` split into ``n_ij``: the
   pandas map's :func:`~opendp_hybridad.frame.aggregate.sum_relaxation` (``2 g' N M``,
   ``u' = 2^-52``) covers it for both neighbours, whatever the partitioning.
2. Group ``i``'s partials are added exactly and rounded once to nearest: its exact combination
   ``P_i`` has ``|P_i| <= n_i M (1 + g)`` (``n_i = sum_j n_ij``), so the rounding moves it by at most
   ``u |P_i| + TINY / 2``; over all groups, in l1 (and so in l2), at most
   ``u N M (1 + g) + G TINY / 2`` per dataset.

So each dataset's computed vector is within ``g N M + u N M (1 + g) + G TINY / 2`` (l1 and l2) of
``(S_i)_i``; the pandas group-by's map bounds ``||S(D) - S(D')||`` by its ``d_in`` term and adds the
pairwise part for both neighbours; the Dask map is the pandas map (called as it is) plus
:func:`~opendp_hybridad.frame.dask_engine.reduction_relaxation` ``(N, M, roundings=G) =
2 u N M (1 + g) + G TINY``, rounded up (docs/soundness.md, "The distributed sum" and its
group-by paragraph). Counts are exact integers: the Dask map is the pandas count's map.
Declarations where ``N M`` with both relaxations is not finite are refused (``dask_engine._plan``).

Totality: the domain is :func:`~opendp_hybridad.frame.dask_engine.make_dask_frame_domain`'s with the
key column declared as a label (``labels={by: "drop"}`` or ``"raise"``). Columns, dtypes and the
key column's presence are checked on the Dask metadata before any task; the value-level
checks (``"raise"`` fields, missing keys under ``"raise"``) run in each partition in the same
pass; ``size_limit`` and a fixed ``size`` on the driver, before anything is returned. A
non-member raises the pandas path's :class:`~opendp_hybridad.errors.SchemaMismatchError` (inside
OpenDP's ``OpenDPException`` through OpenDP), before any noise; no member makes a query fail
(a key that cannot be compared is not a public key). The feature-level relation is refused,
as on the rest of the Dask engine.

Assumptions (the Dask engine's): a homogeneous cluster (every worker evaluates the kernel as the
driver would), and public keys and key values that keep their equality when pickled to a
worker (a key object equal only to itself, by identity, is a different object there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opendp_hybridad.analysis.rounding import add_up
from opendp_hybridad.frame.dask_engine import (
    DaskFrameDomain,
    _calibrate,
    _dask_spec,
    _plan,
    _shippable,
    _space,
    _user_transformation,
    check_totals,
    computed,
    exact_total,
    reduction_relaxation,
)
from opendp_hybridad.frame.domain import FrameDomain
from opendp_hybridad.frame.groupby import (
    GroupKeys,
    _checked,
    _group_keys,
    _group_totals,
    _Grouped,
    _grouped_mean,
    _grouped_space,
    make_grouped_count_of,
    make_grouped_sum_of,
)
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.symbolic.function import RecordFunction

__all__ = ["grouped_reduction_relaxation", "make_dask_grouped_count_of", "make_dask_grouped_sum_of",
           "make_private_dask_grouped_count", "make_private_dask_grouped_mean", "make_private_dask_grouped_sum",
           "then_dask_grouped_count_of", "then_dask_grouped_sum_of", "then_private_dask_grouped_count",
           "then_private_dask_grouped_mean", "then_private_dask_grouped_sum"]


class _GroupedPass:
    """One partition -> (rows, kept records, each key's record count, each key's partial sum), by groupby.py's code."""

    def __init__(self, domain: FrameDomain, groups: GroupKeys, plan: Any | None):
        self.reader = _Grouped(domain, groups)
        self.plan = None if plan is None else _shippable(plan)

    def __call__(self, partition: Any) -> tuple[int, int, list[int], list[float]]:
        # membership of this partition (dtypes, values, 'raise' fields and keys) first, then each record's key
        columns, sizes, kept = self.reader.read(partition)
        partials = [] if self.plan is None else _group_totals(self.plan, columns, sizes)
        return int(kept.shape[0]), int(kept.sum()), [int(n) for n in sizes.tolist()], partials


class _GroupedReduction:
    """Runs a :class:`_GroupedPass` on every partition and combines the results on the driver."""

    def __init__(self, spec: DaskFrameDomain, groups: GroupKeys, plan: Any | None):
        self.spec, self.size = spec, len(groups)
        self.partition = _GroupedPass(spec.partition_domain(), groups, plan)
        self.wanted = [*spec.schema.names, *(name for name, _ in spec.labels)]

    def __call__(self, frame: Any) -> tuple[list[int], list[float]]:
        """``([records of each key], [sum of each key])``; a non-member raises :class:`SchemaMismatchError`."""
        import dask

        self.spec.check_metadata(frame)  # columns, dtypes and the key column, before any task
        parts = computed(lambda: dask.compute(*[dask.delayed(self.partition, pure=False)(p)
                                                for p in frame[self.wanted].to_delayed()]))
        check_totals(self.spec, [p[0] for p in parts], [p[1] for p in parts])
        counts = [sum(p[2][g] for p in parts) for g in range(self.size)]  # Python integers: exact
        sums = []
        if self.partition.plan is not None:
            sums = [exact_total(np.array([p[3][g] for p in parts], dtype=np.float64)) for g in range(self.size)]
        return counts, sums


def grouped_reduction_relaxation(terms: int, max_abs: float, groups: int) -> float:
    """What the per-group exact combinations add to a grouped sum's map: ``reduction_relaxation(N, M, roundings=G)``.

    ``2 u N M (1 + g) + G TINY``, rounded up: one rounding per group per neighbour, the groups'
    magnitudes adding up to at most ``N M (1 + g)`` (module docstring, step 2).
    """
    return reduction_relaxation(terms, max_abs, roundings=groups)


def make_dask_grouped_sum_of(input_domain: Any, input_metric: Any, function: RecordFunction, by: str | GroupKeys,
                             keys: Any = None, norm: Any = 1, *, range_certificate: Any = None,
                             lipschitz_certificate: Any = None, backend: str = "auto"):
    """Transformation: Dask frame -> ``[sum of f over the records with key k for k in keys]`` (l1 or l2 distance).

    The pandas :func:`~opendp_hybridad.frame.groupby.make_grouped_sum_of` computed per partition
    (same reader, same key rule, same kernel and clamps) with each group's partials added
    exactly. ``input_domain``: ``make_dask_frame_domain(schema, labels={by: "drop"})`` (or
    ``"raise"``); the other parameters as for the pandas form.

    Stability: the pandas grouped sum's map (called as it is: symmetric ``M d_in + R``,
    change-one ``2M d_in + R`` in l1 and ``max(W, sqrt(2) M) d_in + R`` in l2) plus
    :func:`grouped_reduction_relaxation` ``(N, M, G) = 2 u N M (1 + g) + G TINY``, rounded up;
    proof in the module docstring (Higham 2002, Lemma 3.1 per group and partition; one correctly
    rounded exact combination per group). Refused under the feature-level relation.
    """
    spec = _dask_spec(input_domain)
    groups = _group_keys(by, keys)
    _checked(spec, groups)  # the key column is a declared label, not a field
    plan = _plan(spec, input_metric, function, range_certificate, lipschitz_certificate, backend)
    reference = make_grouped_sum_of(input_domain, input_metric, function, groups, None, norm,
                                    range_certificate=range_certificate, lipschitz_certificate=lipschitz_certificate,
                                    backend=backend)
    extra = grouped_reduction_relaxation(spec.max_terms, max(abs(plan.lower), abs(plan.upper)), len(groups))
    reduce = _GroupedReduction(spec, groups, plan)
    return _user_transformation(input_domain, input_metric, reference.output_domain, reference.output_metric,
                                lambda frame: reduce(frame)[1], lambda d_in: add_up(float(reference.map(d_in)), extra))


def make_dask_grouped_count_of(input_domain: Any, input_metric: Any, by: str | GroupKeys, keys: Any = None, norm: Any = 1):
    """Transformation: Dask frame -> ``[number of kept records with key k for k in keys]`` (floats; l1 or l2).

    Each partition's counts by groupby.py's reader, added as integers: exactly the pandas
    :func:`~opendp_hybridad.frame.groupby.make_grouped_count_of` on the computed frame, whose
    map this is (called as it is). Refused under the feature-level relation (as the pandas form).
    """
    spec = _dask_spec(input_domain)
    groups = _group_keys(by, keys)
    reference = make_grouped_count_of(input_domain, input_metric, groups, None, norm)
    reduce = _GroupedReduction(spec, groups, None)
    return _user_transformation(input_domain, input_metric, reference.output_domain, reference.output_metric,
                                lambda frame: [float(n) for n in reduce(frame)[0]], reference.map)


then_dask_grouped_sum_of = to_then(make_dask_grouped_sum_of)
then_dask_grouped_count_of = to_then(make_dask_grouped_count_of)


def _dask_grouped_space(domain_or_schema: Any, metric: Any, size_limit: int | None, groups: GroupKeys,
                        missing_key: str | None) -> tuple[Any, Any]:
    """groupby.py's domain (the key column declared, from a Schema, or checked), then the Dask frame domain with its limits."""
    domain, metric = _grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    return _space(domain, metric, size_limit)


def make_private_dask_grouped_sum(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *,
                                  by: str | GroupKeys, keys: Any = None, missing_key: str | None = None,
                                  epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                                  size_limit: int | None = None, backend: str = "auto") -> Any:
    """Measurement: :func:`make_dask_grouped_sum_of` plus the pandas measurements' noise on every entry.

    As :func:`~opendp_hybridad.frame.groupby.make_private_grouped_sum`: Laplace in the l1
    distance for ``epsilon``, Gaussian in the l2 distance for ``rho``, calibrated by
    ``measurements._calibrate`` (the same accounting record). ``domain_or_schema``: a (Dask or
    pandas) frame domain declaring the key column, or a Schema (the domain is built with
    ``size_limit`` and the key's ``missing_key`` policy, default ``"drop"``); it becomes a Dask
    frame domain with the same limits.
    """
    groups = _group_keys(by, keys)
    domain, metric = _dask_grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    t = make_dask_grouped_sum_of(domain, metric, function, groups, None, 1 if epsilon is not None else 2, backend=backend)
    return _calibrate(t, d_in, epsilon, rho, metric)


def make_private_dask_grouped_count(domain_or_schema: Any, metric: Any = None, *, by: str | GroupKeys, keys: Any = None,
                                    missing_key: str | None = None, epsilon: float | None = None,
                                    rho: float | None = None, d_in: Any = 1, size_limit: int | None = None) -> Any:
    """Measurement: :func:`make_dask_grouped_count_of` plus OpenDP noise (Laplace l1 / Gaussian l2).

    ``domain_or_schema`` as for :func:`make_private_dask_grouped_sum`.
    """
    groups = _group_keys(by, keys)
    domain, metric = _dask_grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    t = make_dask_grouped_count_of(domain, metric, groups, None, 1 if epsilon is not None else 2)
    return _calibrate(t, d_in, epsilon, rho, metric)


def make_private_dask_grouped_mean(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *,
                                   by: str | GroupKeys, keys: Any = None, missing_key: str | None = None,
                                   epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                                   count_share: float = 0.5, size_limit: int | None = None,
                                   backend: str = "auto") -> Any:
    """Measurement: per key, a private sum over a private count, ``sum / max(count, 1)`` clamped to f's certified range.

    The pandas :func:`~opendp_hybridad.frame.groupby.make_private_grouped_mean`'s construction
    (groupby.py's ``_grouped_mean``: the budget split, ``count_share`` to the counts, both
    shares rounded down; one ``dp.c.make_composition``; the composed accounting record) over
    :func:`make_private_dask_grouped_sum` and :func:`make_private_dask_grouped_count`. There
    is no grouped mean transformation (the group sizes are private). Each part passes over
    the frame once: two passes.
    """
    groups = _group_keys(by, keys)
    domain, metric = _dask_grouped_space(domain_or_schema, metric, size_limit, groups, missing_key)
    return _grouped_mean(
        lambda **budget: make_private_dask_grouped_sum(domain, function, metric, by=groups, d_in=d_in, backend=backend,
                                                       **budget),
        lambda **budget: make_private_dask_grouped_count(domain, metric, by=groups, d_in=d_in, **budget),
        function, metric, d_in, epsilon, rho, count_share)


then_private_dask_grouped_sum = to_then(make_private_dask_grouped_sum)
then_private_dask_grouped_count = to_then(make_private_dask_grouped_count)
then_private_dask_grouped_mean = to_then(make_private_dask_grouped_mean)
