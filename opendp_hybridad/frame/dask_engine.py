"""Certified frame queries on Dask: sums, counts, means and vectors of sums over a ``dask.dataframe``.

A Dask frame is many pandas partitions. Each partition is read by the pandas path's own
code: :func:`~opendp_hybridad.frame.domain.read_member` (dtypes, every value of object
columns, ``"raise"`` fields and label columns, the missing-value policies), the
``_SumPlan`` of :mod:`opendp_hybridad.frame.aggregate` (the same compiled kernel, imputed
and clamped inputs, values clamped to the certified range, summed by
:func:`~opendp_hybridad.frame.aggregate.pairwise_sum`). A partition sends the driver its
row count, its kept count and one partial sum per function, nothing else. The driver
checks the totals against the domain (``size_limit``, a public kept ``size``), adds the
partial sums exactly (as rationals) and rounds once. Counts are exact integers. Dask
itself (``pip install 'opendp-hybridad[dask]'``) is imported only when a query runs.

The float bound (docs/soundness.md, "The distributed sum"). Let ``N`` be the most
records a member's sum adds (the domain's kept ``size`` if fixed, else its
``size_limit``), ``M = max(|L|, |U|)`` the certified range's magnitude, ``u = 2^-53``,
``k = ceil(log2 N)`` and ``g = k u / (1 - k u)``. Each computed per-record value is the
pandas path's, so the exact sum ``S`` of the computed values is what the pandas path sums.

1. Partition ``j`` has ``m_j <= N`` kept records (``sum_j m_j <= N``); its pairwise sum
   passes each term through at most ``ceil(log2 m_j) <= k`` roundings, so it is within
   ``g m_j M`` of the exact partial (Higham 2002, Lemma 3.1 and section 4.2). Together: within
   ``g N M`` of ``S``. OpenDP's relaxation for a pairwise sum of ``N`` terms,
   :func:`~opendp_hybridad.frame.aggregate.sum_relaxation` (``2 g' N M`` with
   ``u' = 2^-52 >= u``), already covers this for both neighbours, whatever the partition
   sizes and the order in which Dask delivers them.
2. The partials are added exactly (``fractions.Fraction``) and rounded to nearest once
   (Python's ``int / int``, which ``Fraction.__float__`` uses, is correctly rounded; the
   same result as ``math.fsum``, Shewchuk 1997). The exact total ``P`` has
   ``|P| <= N M (1 + g)``, so the rounding moves it by at most ``u |P| + TINY / 2``
   (``TINY / 2`` below the normal range) ``<= u N M (1 + g) + TINY / 2``.

So each computed total is within ``g N M + u N M (1 + g) + TINY / 2`` of ``S``, and
two neighbours' totals differ by at most the pandas path's stability (its map, called
as it is) plus :func:`reduction_relaxation` ``= 2 u N M (1 + g) + TINY``, rounded up.
Nothing depends on the partitioning, the workers, the BLAS, the CPU or the thread
count. The constructors refuse a declaration where ``N M (1 + g) + relaxation`` is not
finite, so no partial, no intermediate sum and no total can overflow.

Assumption: every worker evaluates the kernel as the driver would (a homogeneous cluster:
the same package, numpy, numexpr/numba and C math library, CPUs with the same IEEE 754
behaviour), since a record two neighbours share may be computed on different workers.

Totality: the domain is :func:`make_dask_frame_domain`'s (the frame domain's limits,
members are Dask frames). Columns and dtypes are checked on the Dask metadata before
any task runs; the value-level checks happen per partition in the same pass that
computes the partials; the row count (``<= size_limit``) and a public kept ``size``
are checked on the driver from the per-partition counts, before anything is returned.
A non-member raises the pandas path's :class:`~opendp_hybridad.errors.SchemaMismatchError`
(inside OpenDP's ``OpenDPException`` when called through OpenDP); no member makes a
query fail. The feature-level relation is not offered on Dask yet (its values come
from certified point enclosures of the function, which are not shipped to workers).

Privacy: ``make_private_dask_*`` chain the same noise as the pandas measurements
(``measurements._calibrate``: OpenDP's Laplace or Gaussian, scale checked against
OpenDP's own map, the same accounting record).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import sys
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.analysis.rounding import TINY, UNIT_ROUNDOFF, add_up, div_up, gamma, mul_up, round_up, sum_up
from opendp_hybridad.errors import DeclarationError, SchemaMismatchError
from opendp_hybridad.frame.domain import DEFAULT_SIZE_LIMIT, FrameDomain, as_frame_domain, read_member
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.relations import REPLACE_ONE, FeatureLevel, relation_of
from opendp_hybridad.symbolic.function import RecordFunction
from opendp_hybridad.symbolic.schema import Schema

__all__ = ["DaskFrameDomain", "make_dask_count_of", "make_dask_frame_domain", "make_dask_mean_of", "make_dask_sum_of",
           "make_dask_sum_of_vector", "make_private_dask_count", "make_private_dask_mean", "make_private_dask_sum",
           "make_private_dask_sum_vector", "reduction_relaxation", "then_dask_count_of", "then_dask_mean_of",
           "then_dask_sum_of", "then_dask_sum_of_vector", "then_private_dask_count", "then_private_dask_mean",
           "then_private_dask_sum", "then_private_dask_sum_vector"]


@dataclasses.dataclass(frozen=True)
class DaskFrameDomain(FrameDomain):
    """A :class:`FrameDomain` whose members are ``dask.dataframe`` frames (same limits, same rules per partition)."""

    @property
    def identifier(self) -> str:
        return "Dask" + super().identifier

    def partition_domain(self) -> FrameDomain:
        """What each partition must be: the same schema, labels and size limit, no kept ``size`` (a total)."""
        return FrameDomain(self.schema, self.size_limit, None, self.labels)

    def check_metadata(self, frame: Any) -> None:
        """Refuse a frame that is not a Dask DataFrame, or whose metadata (columns, dtypes) a partition could not pass."""
        if not _is_dask_frame(frame):
            raise SchemaMismatchError(f"expected a dask DataFrame, got {type(frame).__name__}")
        read_member(frame._meta, self.partition_domain())  # the empty pandas frame Dask keeps: columns and dtypes

    def check(self, frame: Any) -> None:
        """:meth:`check_metadata` (the value-level checks need the partitions: they run in the query's pass)."""
        self.check_metadata(frame)

    def member(self, frame: Any) -> bool:
        """OpenDP's membership callback, from the metadata only (no task runs); never raises."""
        try:
            self.check_metadata(frame)
        except Exception:  # anything the metadata check cannot judge is outside the domain
            return False
        return True


def _is_dask_frame(frame: Any) -> bool:
    # dask is optional: a frame can only be a dask frame if dask.dataframe has been imported
    dd = sys.modules.get("dask.dataframe")
    return dd is not None and isinstance(frame, dd.DataFrame)


def make_dask_frame_domain(schema: Schema | Any, *, size_limit: int | None = None, size: int | None = None, labels: Any = None):
    """An OpenDP ``UserDomain`` of Dask frames whose partitions are members of the frame domain, with totals in its limits.

    ``schema``: a Schema (with ``size_limit`` (default 2^32), ``size``, ``labels`` as for
    :func:`~opendp_hybridad.frame.domain.make_frame_domain`), or a frame domain, whose limits
    are taken (then the keywords, if given, must repeat them). A member: a ``dask.dataframe``
    DataFrame with every declared column of an accepted dtype (checked on its metadata), every
    partition a member of the frame domain without ``size``, at most ``size_limit`` rows in all
    and, when ``size`` is set, exactly ``size`` kept records in all. Requires OpenDP's
    ``honest-but-curious`` feature. Its ``descriptor`` is a :class:`DaskFrameDomain`.
    """
    import opendp.prelude as dp

    dp.assert_features("honest-but-curious")
    if isinstance(schema, Schema):
        spec = DaskFrameDomain(schema, DEFAULT_SIZE_LIMIT if size_limit is None else size_limit, size,
                               () if labels is None else labels)
    else:
        base = as_frame_domain(schema)
        for name, given in (("size_limit", size_limit), ("size", size), ("labels", labels)):
            if given is not None and getattr(FrameDomain(base.schema, **{name: given}), name) != getattr(base, name):
                raise DeclarationError(f"{name} is part of the frame domain given: it differs from the domain's")
        spec = DaskFrameDomain(base.schema, base.size_limit, base.size, base.labels)
    return dp.user_domain(spec.identifier, member=spec.member, descriptor=spec)


def _dask_spec(input_domain: Any) -> DaskFrameDomain:
    """The domain's :class:`DaskFrameDomain`; first asserts OpenDP's ``honest-but-curious`` (user transformations)."""
    import opendp.prelude as dp

    dp.assert_features("honest-but-curious")  # asserted, never enabled: OpenDP says what to enable
    spec = as_frame_domain(input_domain)
    if not isinstance(spec, DaskFrameDomain):
        raise DeclarationError("the input domain must be a Dask frame domain from make_dask_frame_domain(schema)")
    return spec


def reduction_relaxation(terms: int, max_abs: float, roundings: int = 1) -> float:
    """What the exact combination of partial sums and its one rounding add to a sum's stability, rounded up.

    ``2 u N M (1 + g) + TINY`` with ``N = terms``, ``M = max_abs``, ``u = 2^-53``,
    ``g = gamma(ceil(log2 N))``: one final rounding of a total of magnitude at most
    ``N M (1 + g)`` per neighbouring dataset (see the module docstring). With ``roundings = G``
    (the Dask group-by, ``dask_groupby.py``): ``G`` totals whose magnitudes add up to at most
    ``N M (1 + g)``, each rounded once, in the l1 norm: ``2 u N M (1 + g) + G TINY``.
    """
    if terms < 1 or max_abs == 0:
        return 0.0
    k = (int(terms) - 1).bit_length()  # ceil(log2 N), exactly
    g = Fraction(gamma(k))
    return round_up(2 * Fraction(UNIT_ROUNDOFF) * int(terms) * Fraction(max_abs) * (1 + g) + int(roundings) * Fraction(TINY))


# -- what runs in the partitions ---------------------------------------------------------------------

#: kernels rebuilt in this (worker) process from their source, by the source's SHA-256
_WORKER_KERNELS: dict[str, Any] = {}


class _ShippedKernel:
    """A compiled kernel as it travels to a worker: its generated source and public names, rebuilt there once."""

    def __init__(self, kernel: Any):
        if kernel.source is None:  # pragma: no cover - plans compile without the cache, so the source is kept
            raise DeclarationError("the kernel's source is not available to send to the workers")
        self.names, self.backend, self.source = list(kernel.names), kernel.backend, kernel.source
        self.key = hashlib.sha256(f"{self.backend}\n{self.source}".encode()).hexdigest()

    def value_clamped(self, columns: list[np.ndarray], lower: float, upper: float) -> np.ndarray:
        kernel = _WORKER_KERNELS.get(self.key)
        if kernel is None:
            from opendp_hybridad.compile.kernel import Kernel, _exec_source

            module = _exec_source(self.source, self.key[:32])
            kernel = _WORKER_KERNELS.setdefault(self.key, Kernel(self.names, module, self.backend, "jit", None,
                                                                 self.source, 0.0))
        return kernel.value_clamped(columns, lower, upper)


def _shippable(plan: Any) -> Any:
    """A copy of a ``_SumPlan`` that pickles: the kernel as its source; no function or stability (not used to compute)."""
    shipped = copy.copy(plan)
    shipped.kernel = _ShippedKernel(plan.kernel)
    shipped.function = None  # read only under the feature-level relation, which is refused here
    shipped.stability = None
    return shipped


class _PartitionPass:
    """One partition -> one row: its rows, its kept records and each plan's partial sum (the pandas path's code)."""

    def __init__(self, domain: FrameDomain, plans: list[Any]):
        self.domain, self.plans = domain, [_shippable(p) for p in plans]

    def columns(self) -> list[str]:
        return ["rows", "kept", *(f"s{j}" for j in range(len(self.plans)))]

    def meta(self) -> pd.DataFrame:
        dtypes = {"rows": "int64", "kept": "int64", **{f"s{j}": "float64" for j in range(len(self.plans))}}
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})

    def __call__(self, partition: pd.DataFrame) -> pd.DataFrame:
        member = read_member(partition, self.domain)  # membership of this partition: dtypes, values, 'raise', labels
        row: dict[str, list[Any]] = {"rows": [member.rows], "kept": [member.kept_count]}
        if self.plans:
            columns = self.plans[0].inputs(member)  # the plans share the schema: prepared once
            for j, plan in enumerate(self.plans):
                row[f"s{j}"] = [plan.total(columns)]
        return pd.DataFrame(row, columns=self.columns()).astype(self.meta().dtypes.to_dict())


class _Reduction:
    """Runs a :class:`_PartitionPass` over a Dask frame and checks the totals against the domain on the driver."""

    def __init__(self, spec: DaskFrameDomain, plans: list[Any]):
        self.spec = spec
        self.partition = _PartitionPass(spec.partition_domain(), plans)
        self.wanted = [*spec.schema.names, *(name for name, _ in spec.labels)]

    def __call__(self, frame: Any) -> tuple[int, list[float]]:
        """``(kept records, [total of each plan])``; a non-member raises :class:`SchemaMismatchError`."""
        self.spec.check_metadata(frame)  # columns and dtypes, before any task
        parts = computed(frame[self.wanted].map_partitions(self.partition, meta=self.partition.meta(),
                                                           enforce_metadata=False).compute)
        kept = check_totals(self.spec, parts["rows"], parts["kept"])
        totals = [exact_total(parts[f"s{j}"].to_numpy()) for j in range(len(self.partition.plans))]
        return kept, totals


def computed(run: Any) -> Any:
    """``run()`` (a ``dask.compute`` or ``persist`` of partition tasks); a task that fails means a non-member.

    Our own per-partition checks raise :class:`SchemaMismatchError` naming a column; any other
    exception from the graph (a partition that cannot be read or converted, e.g. by Dask's
    ``dataframe.convert-string`` step, which runs inside the partition tasks) means the frame
    cannot be computed, so it is not a member of the domain: it is re-raised as
    :class:`SchemaMismatchError` with its type only, since its message may quote a private
    value (an adversarial review found ``could not convert string to float: '<the value>'``).
    """
    try:
        return run()
    except SchemaMismatchError:
        raise
    except Exception as exc:  # any failure of the user's graph: a non-member, told without its message
        raise SchemaMismatchError(f"a partition of the frame could not be computed ({type(exc).__name__}): the frame is "
                                  "not a member of the domain") from None


def check_totals(spec: DaskFrameDomain, rows: Any, kept: Any) -> int:
    """The frame's kept records, from the partitions' row and kept counts, after checking the domain's totals.

    A frame with more rows than ``size_limit``, or (the domain fixing one) another kept
    ``size``, is refused with :class:`SchemaMismatchError`, on the driver, before anything is returned.
    """
    total_rows = sum(int(r) for r in rows)
    if total_rows > spec.size_limit:
        raise SchemaMismatchError(f"the frame has more records than the domain's size limit {spec.size_limit}")
    total_kept = sum(int(k) for k in kept)
    if spec.size is not None and total_kept != spec.size:
        raise SchemaMismatchError(f"the domain has exactly {spec.size} records after the missing-value policies")
    return total_kept


def exact_total(partials: np.ndarray) -> float:
    """The partial sums added exactly (as rationals) and rounded to nearest once: the correctly rounded total."""
    return float(sum((Fraction(float(p)) for p in partials), Fraction(0)))


# -- transformations ------------------------------------------------------------------------------------

def _plan(spec: DaskFrameDomain, metric: Any, function: RecordFunction, range_certificate: Any, lipschitz_certificate: Any,
          backend: str) -> Any:
    """The pandas path's ``_SumPlan`` for one partition (same kernel, same clamping), refusing what Dask cannot do."""
    from opendp_hybridad.frame.aggregate import _SumPlan, sum_relaxation

    if isinstance(relation_of(metric), FeatureLevel):
        raise DeclarationError("the feature-level relation is not offered on the Dask engine yet: use the pandas path")
    plan = _SumPlan(spec.partition_domain(), metric, function, range_certificate, lipschitz_certificate, backend)
    terms, max_abs = spec.max_terms, max(abs(plan.lower), abs(plan.upper))
    # N M + both relaxations bounds every partial, intermediate and total: finite, so nothing overflows
    worst = add_up(add_up(mul_up(max_abs, float(terms)), sum_relaxation(terms, max_abs)), reduction_relaxation(terms, max_abs))
    if not np.isfinite(worst):
        raise DeclarationError("the sum could overflow: size_limit * max|f| with its rounding allowance is not finite")
    return plan


def _user_transformation(input_domain: Any, input_metric: Any, output_domain: Any, output_metric: Any, apply: Any,
                         stability: Any) -> Any:
    import opendp.prelude as dp

    return dp.t.make_user_transformation(input_domain, input_metric, output_domain, output_metric, apply, stability)


def make_dask_sum_of(input_domain: Any, input_metric: Any, function: RecordFunction, *, range_certificate: Any = None,
                     lipschitz_certificate: Any = None, backend: str = "auto"):
    """Transformation: Dask frame -> ``sum_i f(x_i)`` (a float), the pandas path's sum computed per partition.

    Stability: the pandas transformation's (:func:`~opendp_hybridad.frame.aggregate.make_sum_of`,
    its map called as it is: ``d_in`` times the relation's constant plus OpenDP's pairwise
    relaxation for ``N`` terms) plus :func:`reduction_relaxation` (the exact combination's one
    rounding), rounded up; proven in the module docstring and docs/soundness.md. Symmetric and
    change-one distances; ``input_domain`` from :func:`make_dask_frame_domain`.
    """
    from opendp_hybridad.frame.aggregate import make_sum_of

    spec = _dask_spec(input_domain)
    reference = make_sum_of(input_domain, input_metric, function, range_certificate=range_certificate,
                            lipschitz_certificate=lipschitz_certificate, backend=backend)
    plan = _plan(spec, input_metric, function, range_certificate, lipschitz_certificate, backend)
    extra = reduction_relaxation(spec.max_terms, max(abs(plan.lower), abs(plan.upper)))
    reduce = _Reduction(spec, [plan])
    return _user_transformation(input_domain, input_metric, reference.output_domain, reference.output_metric,
                                lambda frame: reduce(frame)[1][0], lambda d_in: add_up(float(reference.map(d_in)), extra))


def make_dask_sum_of_vector(input_domain: Any, input_metric: Any, functions: list[RecordFunction], norm: Any = 2, *,
                            backend: str = "auto"):
    """Transformation: Dask frame -> ``(sum_i f_1(x_i), ..., sum_i f_k(x_i))`` in the l1 or l2 distance, one pass.

    Stability: the pandas :func:`~opendp_hybridad.frame.aggregate.make_sum_of_vector`'s map
    plus the norm of the coordinates' :func:`reduction_relaxation` (Minkowski: the norm of
    a sum is at most the sum of the norms), rounded up.
    """
    from opendp_hybridad.analysis.rounding import norm2_up
    from opendp_hybridad.frame.aggregate import make_sum_of_vector
    from opendp_hybridad.symbolic.function import normalise_norm

    spec = _dask_spec(input_domain)
    reference = make_sum_of_vector(input_domain, input_metric, functions, norm, backend=backend)
    plans = [_plan(spec, input_metric, f, None, None, backend) for f in functions]
    extras = [reduction_relaxation(spec.max_terms, max(abs(p.lower), abs(p.upper))) for p in plans]
    extra = sum_up(extras) if normalise_norm(norm) == 1.0 else norm2_up(extras)
    reduce = _Reduction(spec, plans)
    return _user_transformation(input_domain, input_metric, reference.output_domain, reference.output_metric,
                                lambda frame: reduce(frame)[1], lambda d_in: add_up(float(reference.map(d_in)), extra))


def make_dask_count_of(input_domain: Any, input_metric: Any):
    """Transformation: Dask frame -> number of records kept by the missing-value policies (a float).

    The sum of the partitions' integer counts, exact; the stability is the pandas
    :func:`~opendp_hybridad.frame.measurements.make_count_of`'s map, called as it is.
    """
    from opendp_hybridad.frame.measurements import make_count_of

    spec = _dask_spec(input_domain)
    reference = make_count_of(input_domain, input_metric)
    reduce = _Reduction(spec, [])
    return _user_transformation(input_domain, input_metric, reference.output_domain, reference.output_metric,
                                lambda frame: float(reduce(frame)[0]), reference.map)


def make_dask_mean_of(input_domain: Any, input_metric: Any, function: RecordFunction, **kwargs: Any):
    """Transformation: Dask frame with exactly ``size`` kept records (the domain's) -> mean of f (a float).

    The distributed sum divided by ``size``. Stability: the pandas
    :func:`~opendp_hybridad.frame.measurements.make_mean_of`'s map plus
    :func:`reduction_relaxation` divided by ``size``, rounded up (the division's own rounding is
    in the pandas map: the total's magnitude stays below ``2 size M``). ``kwargs``:
    ``range_certificate``, ``lipschitz_certificate``, ``backend``.
    """
    from opendp_hybridad.frame.measurements import make_mean_of

    spec = _dask_spec(input_domain)
    reference = make_mean_of(input_domain, input_metric, function, **kwargs)  # refuses a domain without a size
    plan = _plan(spec, REPLACE_ONE.metric(), function, kwargs.get("range_certificate"), kwargs.get("lipschitz_certificate"),
                 kwargs.get("backend", "auto"))
    size = spec.size
    extra = div_up(reduction_relaxation(size, max(abs(plan.lower), abs(plan.upper))), float(size))
    reduce = _Reduction(spec, [plan])
    return _user_transformation(input_domain, input_metric, reference.output_domain, reference.output_metric,
                                lambda frame: reduce(frame)[1][0] / size, lambda d_in: add_up(float(reference.map(d_in)), extra))


then_dask_sum_of = to_then(make_dask_sum_of)
then_dask_sum_of_vector = to_then(make_dask_sum_of_vector)
then_dask_count_of = to_then(make_dask_count_of)
then_dask_mean_of = to_then(make_dask_mean_of)


# -- measurements -------------------------------------------------------------------------------------------

def _space(domain_or_schema: Any, metric: Any, size_limit: int | None = None, size: int | None = None) -> tuple[Any, Any]:
    """The pandas path's checks and defaults (``measurements._space``), then the Dask frame domain with the same limits."""
    from opendp_hybridad.frame.measurements import _space as pandas_space

    domain, metric = pandas_space(domain_or_schema, metric, size_limit, size)
    if not isinstance(as_frame_domain(domain), DaskFrameDomain):
        domain = make_dask_frame_domain(as_frame_domain(domain))
    return domain, metric


def _calibrate(transformation: Any, d_in: Any, epsilon: float | None, rho: float | None, metric: Any) -> Any:
    from opendp_hybridad.frame.measurements import _calibrate as calibrate

    return calibrate(transformation, d_in, epsilon, rho, relation_of(metric))


def make_private_dask_sum(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *,
                          epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                          size_limit: int | None = None, backend: str = "auto") -> Any:
    """Measurement: :func:`make_dask_sum_of` plus the pandas measurements' noise (``measurements._calibrate``).

    As :func:`~opendp_hybridad.frame.measurements.make_private_sum`: Laplace for ``epsilon``,
    Gaussian for ``rho``, scale calibrated to the certified sensitivity at ``d_in`` and
    checked against OpenDP's own map; the same accounting record. Its input domain is a
    Dask frame domain (a Schema or frame domain given is turned into one with its limits).
    """
    domain, metric = _space(domain_or_schema, metric, size_limit)
    return _calibrate(make_dask_sum_of(domain, metric, function, backend=backend), d_in, epsilon, rho, metric)


def make_private_dask_sum_vector(domain_or_schema: Any, functions: list[RecordFunction], metric: Any = None, *,
                                 epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                                 size_limit: int | None = None, backend: str = "auto") -> Any:
    """Measurement: several sums in one pass, Laplace in the l1 distance for epsilon, Gaussian in l2 for rho."""
    domain, metric = _space(domain_or_schema, metric, size_limit)
    t = make_dask_sum_of_vector(domain, metric, functions, 1 if epsilon is not None else 2, backend=backend)
    return _calibrate(t, d_in, epsilon, rho, metric)


def make_private_dask_count(domain_or_schema: Any, metric: Any = None, *, epsilon: float | None = None,
                            rho: float | None = None, d_in: Any = 1, size_limit: int | None = None) -> Any:
    """Measurement: number of kept records (exact integer sum over partitions) plus OpenDP noise."""
    domain, metric = _space(domain_or_schema, metric, size_limit)
    return _calibrate(make_dask_count_of(domain, metric), d_in, epsilon, rho, metric)


def make_private_dask_mean(domain_or_schema: Any, function: RecordFunction, metric: Any = None, *, size: int | None = None,
                           epsilon: float | None = None, rho: float | None = None, d_in: Any = 1,
                           count_share: float = 0.5, size_limit: int | None = None, backend: str = "auto") -> Any:
    """Measurement: mean of f, with a public ``size`` (one pass), or a private sum over a private count.

    As :func:`~opendp_hybridad.frame.measurements.make_private_mean`: with a public kept
    ``size`` (given, or fixed by the domain) the mean of :func:`make_dask_mean_of` with noise;
    otherwise the budget is split (``count_share`` to the count, both shares rounded down),
    :func:`make_private_dask_sum` and :func:`make_private_dask_count` are released by one
    ``dp.c.make_composition`` and post-processed to ``clip(sum / max(count, 1), L, U)``; the
    accounting record is the composed event. (Each part passes over the frame once: two passes.)
    """
    fixed = size is not None or (not isinstance(domain_or_schema, Schema) and as_frame_domain(domain_or_schema).size is not None)
    if fixed:
        domain, metric = _space(domain_or_schema, metric, size_limit, size)
        return _calibrate(make_dask_mean_of(domain, metric, function, backend=backend), d_in, epsilon, rho, metric)
    from opendp_hybridad.frame.measurements import private_mean_of, split_mean_budget

    domain, metric = _space(domain_or_schema, metric, size_limit)
    key, sum_budget, count_budget = split_mean_budget(epsilon, rho, count_share)
    total = make_private_dask_sum(domain, function, metric, d_in=d_in, backend=backend, **{key: sum_budget})
    count = make_private_dask_count(domain, metric, d_in=d_in, **{key: count_budget})
    return private_mean_of(total, count, function, metric, d_in)


then_private_dask_sum = to_then(make_private_dask_sum)
then_private_dask_sum_vector = to_then(make_private_dask_sum_vector)
then_private_dask_count = to_then(make_private_dask_count)
then_private_dask_mean = to_then(make_private_dask_mean)
