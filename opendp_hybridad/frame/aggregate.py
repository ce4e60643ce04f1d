"""Sums of a certified per-record expression over a dataframe, as OpenDP transformations.

The sum is computed by :func:`pairwise_sum` (a binary tree of float additions of
depth ``ceil(log2 n)``), and its stability map adds OpenDP's relaxation for
pairwise float summation (Casacuberta et al. 2022, as in OpenDP's
``make_bounded_float_checked_sum``): each float sum of at most ``size_limit``
terms bounded by ``M`` is within ``error = (k u / (1 - k u)) size_limit M`` of the
real sum, ``k = ceil(log2 size_limit)``, ``u = 2^-52``; the map adds ``2 error``
(one per neighbouring dataset). All constants are rounded up.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from opendp_hybridad.analysis.certificate import BoundCertificate, RangeCertificate
from opendp_hybridad.analysis.rounding import add_up, mul_up, round_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import SchemaMismatchError, kernel_inputs, prepare_frame, schema_of
from opendp_hybridad.frame.relations import Relation, parse_relation, per_unit_sensitivity
from opendp_hybridad.symbolic.function import RecordFunction, dual_norm

#: default bound on the number of records a frame may have (a domain constraint):
#: beyond any in-memory pandas frame, and its relaxation is ~6e-5 max|f|
DEFAULT_SIZE_LIMIT = 2**32


def pairwise_sum(values: np.ndarray, overwrite: bool = False) -> float:
    """Sum with every term passing through at most ``ceil(log2 n)`` float additions.

    Each pass adds the second half onto the first, in place; an odd element is
    carried to the next pass without an addition. ``overwrite`` lets it use
    ``values`` (a float64 array) as its buffer.
    """
    buf = values if overwrite else np.array(values, dtype=np.float64, copy=True)
    n = buf.shape[0]
    if n == 0:
        return 0.0
    while n > 1:
        half = n // 2
        np.add(buf[:half], buf[half:2 * half], out=buf[:half])
        if n % 2:
            buf[half] = buf[2 * half]
            n = half + 1
        else:
            n = half
    return float(buf[0])


def sum_relaxation(size_limit: int, max_abs: float) -> float:
    """``2 * (k u / (1 - k u)) * size_limit * max_abs``, k = ceil(log2 size_limit), u = 2^-52, rounded up."""
    if size_limit <= 1 or max_abs == 0:
        return 0.0
    k = math.ceil(math.log2(size_limit))
    uk = Fraction(k, 2**52)
    return round_up(2 * uk / (1 - uk) * size_limit * Fraction(max_abs))


class SumStability:
    """The stability map of a sum under one relation, rounded up.

    Add/remove and replace: ``slope * d_in + relaxation``. Feature-level:
    ``min(slope * d_in + evaluation_error, cap) + relaxation``, where
    ``evaluation_error`` bounds how far the computed per-record values can be from
    the real ones (see :mod:`opendp_hybridad.analysis.float_error`).
    """

    def __init__(self, slope: float, cap: float, relaxation: float, relation: Relation, evaluation_error: float = 0.0):
        self.slope, self.cap, self.relaxation, self.relation = slope, cap, relaxation, relation
        self.evaluation_error = evaluation_error

    def __call__(self, d_in: Any) -> float:
        if self.relation.kind == "feature":
            r = float(d_in)
            if not (r >= 0):
                raise ValueError("d_in must be a non-negative distance")
            ideal = min(add_up(mul_up(self.slope, r), self.evaluation_error), self.cap)
        else:
            d = int(d_in)
            if d < 0:
                raise ValueError("d_in must be non-negative")
            ideal = mul_up(self.slope, float(d))
        return add_up(ideal, self.relaxation)


class _SumPlan:
    """Everything fixed before data for one coordinate: kernel, certified range, stability."""

    def __init__(self, input_domain: Any, input_metric: Any, function: RecordFunction, size_limit: int,
                 range_certificate: RangeCertificate | None, lipschitz_certificate: BoundCertificate | None,
                 backend: str = "auto"):
        self.schema = schema_of(input_domain)
        if function.schema != self.schema:
            raise DeclarationError("the function's schema differs from the input domain's schema")
        relation = parse_relation(input_metric)
        rng = range_certificate or function.range()
        self.lower, self.upper = float(rng.lower), float(rng.upper)
        max_abs = max(abs(self.lower), abs(self.upper))
        if not math.isfinite(mul_up(max_abs, float(size_limit))):
            raise DeclarationError("the sum could overflow: size_limit * max|f| is not finite")
        drops = any(f.missing == "drop" for f in self.schema.fields.values())
        lip = None
        if relation.kind == "feature":
            cert = lipschitz_certificate or function.lipschitz(norm=dual_norm(relation.q))
            if cert.norm != dual_norm(relation.q):
                raise DeclarationError("the Lipschitz certificate's norm is not dual to the feature distance's norm")
            lip = cert.upper
        slope, cap = per_unit_sensitivity(function, relation, lower=self.lower, upper=self.upper, drops_records=drops, lipschitz=lip)
        self.feature = relation.kind == "feature"
        evaluation_error = 0.0
        if self.feature:
            # values come from certified point enclosures (analysis/float_error.py)
            from opendp_hybridad.analysis.float_error import evaluation_error as error_of

            evaluation_error = error_of(function)
        self.stability = SumStability(slope, cap, sum_relaxation(size_limit, max_abs), relation, evaluation_error)
        self.size_limit = size_limit
        self.function = function
        self.kernel = function.compile(backend=backend)

    def inputs(self, frame: Any) -> list[np.ndarray]:
        # the feature relation evaluates enclosures at points, which need imputed, clamped records
        columns = list(prepare_frame(frame, self.schema).columns.values()) if self.feature else kernel_inputs(frame, self.schema)
        rows = columns[0].shape[0] if columns else 0
        if rows > self.size_limit:
            raise SchemaMismatchError(f"the frame has more records than the domain's size limit {self.size_limit}")
        return columns

    def total(self, columns: list[np.ndarray]) -> float:
        if not columns or columns[0].shape[0] == 0:
            return 0.0
        with np.errstate(all="ignore"):
            if self.feature:
                from opendp_hybridad.analysis.float_error import clamped_point_values

                values = clamped_point_values(self.function, columns, self.lower, self.upper)
            else:
                # inputs imputed and clamped to the box, outputs clamped to the certified
                # range (a float rounding can step outside it; NaN from overflow becomes L)
                values = self.kernel.value_clamped(columns, self.lower, self.upper)
        return pairwise_sum(values, overwrite=True)


def make_sum_of(input_domain: Any, input_metric: Any, function: RecordFunction, *,
                size_limit: int = DEFAULT_SIZE_LIMIT, range_certificate: RangeCertificate | None = None,
                lipschitz_certificate: BoundCertificate | None = None, backend: str = "auto"):
    """Transformation: frame -> ``sum_i f(x_i)`` (a float), over records prepared by the frame domain.

    Each record is clamped to the box (missing values by policy), ``f`` is evaluated
    by the compiled kernel and clamped to its certified range ``[L, U]``, and the
    values are summed pairwise. Frames with more than ``size_limit`` records are not
    members of the domain. ``backend`` picks the kernel backend (see ``RecordFunction.compile``).

    Stability (``d_in`` -> ``d_out`` in absolute distance), with ``R`` the float relaxation:

    * symmetric_distance: ``d_in * max(|L|, |U|) + R``
    * change_one_distance: ``d_in * (U - L) + R`` (``max(U - L, |L|, |U|)`` if a field drops records)
    * feature_distance(q): ``min(K * d_in + E, U - L) + R``, ``K`` = certified ``sup ||grad f||_p``,
      1/p + 1/q = 1, ``E`` the certified bound on how far computed values are from real ones
      (under this relation values are midpoints of certified point enclosures)
    """
    import opendp.prelude as dp

    plan = _SumPlan(input_domain, input_metric, function, size_limit, range_certificate, lipschitz_certificate, backend)
    return dp.t.make_user_transformation(
        input_domain, input_metric, dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
        lambda frame: plan.total(plan.inputs(frame)), plan.stability,
    )


def then_sum_of(function: RecordFunction, **kwargs: Any):
    """Partial form of :func:`make_sum_of`."""
    from opendp.mod import _PartialConstructor

    return _PartialConstructor(lambda d, m: make_sum_of(d, m, function, **kwargs))


def _norm_up(values: list[float], p: float) -> float:
    """Upper bound on the p-norm (p = 1 or 2) of non-negative numbers, rounded up."""
    if p == 1.0:
        return round_up(sum((Fraction(v) for v in values), Fraction(0)))
    square = round_up(sum((Fraction(v) ** 2 for v in values), Fraction(0)))
    root = math.sqrt(square)
    return root if Fraction(root) ** 2 >= Fraction(square) else math.nextafter(root, math.inf)


def make_sum_of_vector(input_domain: Any, input_metric: Any, functions: list[RecordFunction], norm: Any = 2, *,
                       size_limit: int = DEFAULT_SIZE_LIMIT):
    """Transformation: frame -> ``(sum_i f_1(x_i), ..., sum_i f_k(x_i))`` in the l1 or l2 distance.

    Each coordinate is computed as in :func:`make_sum_of` and changes by at most
    its own stability ``s_j(d_in)``, so the vector changes by at most
    ``||(s_j(d_in))_j||_p`` (rounded up). Under add/remove this is
    ``d_in * ||(max|f_j|)_j||_p`` plus the relaxations.
    """
    import opendp.prelude as dp

    from opendp_hybridad.symbolic.function import normalise_norm

    p = normalise_norm(norm)
    if p not in (1.0, 2.0):
        raise DeclarationError("a vector of sums is released in the l1 (Laplace) or l2 (Gaussian) distance")
    if not functions:
        raise DeclarationError("give at least one function")
    plans = [_SumPlan(input_domain, input_metric, f, size_limit, None, None) for f in functions]

    def apply(frame: Any) -> list[float]:
        columns = plans[0].inputs(frame)  # all plans share the schema: prepare once
        return [plan.total(columns) for plan in plans]

    def stability(d_in: Any) -> float:
        return _norm_up([plan.stability(d_in) for plan in plans], p)

    metric = dp.l1_distance(T=float) if p == 1.0 else dp.l2_distance(T=float)
    out_domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=len(plans))
    return dp.t.make_user_transformation(input_domain, input_metric, out_domain, metric, apply, stability)


def then_sum_of_vector(functions: list[RecordFunction], norm: Any = 2, **kwargs: Any):
    """Partial form of :func:`make_sum_of_vector`."""
    from opendp.mod import _PartialConstructor

    return _PartialConstructor(lambda d, m: make_sum_of_vector(d, m, functions, norm, **kwargs))
