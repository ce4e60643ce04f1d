"""Sums of a certified per-record expression over a dataframe, as OpenDP transformations.

The sum is computed by :func:`pairwise_sum` (a binary tree of float additions of
depth ``ceil(log2 n)``), and its stability map adds OpenDP's relaxation for
pairwise float summation (Casacuberta et al. 2022, as in OpenDP's
``make_bounded_float_checked_sum``): each float sum of at most ``n`` terms bounded
by ``M`` is within ``error = (k u / (1 - k u)) n M`` of the real sum,
``k = ceil(log2 n)``, with OpenDP's ``u = 2^-52`` (one ulp of 1, i.e.
``2 * UNIT_ROUNDOFF``); the map adds ``2 error`` (one per neighbouring dataset).
``n`` is the frame domain's ``size_limit`` (or its exact kept ``size``): every limit
the sum relies on is part of the domain (:class:`~opendp_hybridad.frame.domain.FrameDomain`),
so no member frame makes it fail. All constants are rounded up.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from opendp_hybridad.analysis.certificate import BoundCertificate, RangeCertificate
from opendp_hybridad.analysis.rounding import UNIT_ROUNDOFF, add_up, mul_up, norm2_up, round_up, sum_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import DEFAULT_SIZE_LIMIT, FrameDomain, as_frame_domain, kernel_inputs, prepare_frame
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.relations import FeatureLevel, PerRecordBound, Relation, relation_of
from opendp_hybridad.symbolic.function import RecordFunction

__all__ = ["DEFAULT_SIZE_LIMIT", "make_sum_of", "make_sum_of_vector", "pairwise_sum", "sum_relaxation",
           "then_sum_of", "then_sum_of_vector"]

#: OpenDP's ``u`` in the pairwise-sum relaxation: one ulp of 1 (2^-52), twice the unit roundoff
_OPENDP_ULP = 2 * UNIT_ROUNDOFF


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
    k = (int(size_limit) - 1).bit_length()  # ceil(log2 n), exactly
    uk = k * Fraction(_OPENDP_ULP)
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
        if isinstance(self.relation, FeatureLevel):
            r = float(d_in)
            if not (r >= 0):
                raise DeclarationError("d_in must be a non-negative distance")
            ideal = min(add_up(mul_up(self.slope, r), self.evaluation_error), self.cap)
        else:
            d = int(d_in)
            if d < 0:
                raise DeclarationError("d_in must be non-negative")
            ideal = mul_up(self.slope, round_up(d))
        return add_up(ideal, self.relaxation)


class _SumPlan:
    """Everything fixed before data for one coordinate: kernel, certified range, stability."""

    def __init__(self, input_domain: Any, input_metric: Any, function: RecordFunction,
                 range_certificate: RangeCertificate | None, lipschitz_certificate: BoundCertificate | None,
                 backend: str = "auto"):
        self.domain: FrameDomain = as_frame_domain(input_domain)
        self.schema = self.domain.schema
        if function.schema != self.schema:
            raise DeclarationError("the function's schema differs from the input domain's schema")
        relation = relation_of(input_metric)
        rng = (range_certificate or function.range()).certifies(function)
        if lipschitz_certificate is not None:  # refused if it is not this function's, even where unused
            lipschitz_certificate.certifies(function, "gradient_norm")
        self.lower, self.upper = float(rng.lower), float(rng.upper)
        terms = self.domain.max_terms
        bound = PerRecordBound(self.lower, self.upper, drops_records=self.domain.drops_records,
                               lipschitz=lambda norm: self._lipschitz(function, lipschitz_certificate, norm))
        if not math.isfinite(mul_up(bound.max_abs, float(terms))):
            raise DeclarationError("the sum could overflow: size_limit * max|f| is not finite")
        slope, cap = bound.sensitivity(relation)
        self.feature = isinstance(relation, FeatureLevel)
        evaluation_error = 0.0
        if self.feature:
            # values come from certified point enclosures (analysis/float_error.py) of records
            # converted to float64, which can move each record by up to conversion_distance
            from opendp_hybridad.analysis.float_error import conversion_distance
            from opendp_hybridad.analysis.float_error import evaluation_error as error_of

            moved = conversion_distance(function, relation.q)
            evaluation_error = add_up(error_of(function), mul_up(mul_up(2.0, slope), moved))
        self.stability = SumStability(slope, cap, sum_relaxation(terms, bound.max_abs), relation, evaluation_error)
        self.function = function
        self.kernel = function.compile(backend=backend)

    @staticmethod
    def _lipschitz(function: RecordFunction, certificate: BoundCertificate | None, norm: float) -> float:
        cert = certificate or function.lipschitz(norm=norm)
        return float(cert.certifies(function, "gradient_norm", norm).upper)

    def inputs(self, frame: Any) -> list[np.ndarray]:
        # membership (columns, dtypes, 'raise' fields, size) is checked first, before any value;
        # the feature relation evaluates enclosures at points, which need imputed, clamped records
        if self.feature:
            return list(prepare_frame(frame, self.domain).columns.values())
        return kernel_inputs(frame, self.domain)

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


def _domain_size_limit(input_domain: Any, size_limit: int | None) -> None:
    """``size_limit`` is part of the domain: a constructor accepts it only if it repeats the domain's."""
    if size_limit is not None and size_limit != as_frame_domain(input_domain).size_limit:
        raise DeclarationError("size_limit is part of the frame domain: declare it with "
                               "make_frame_domain(schema, size_limit=...), not on the constructor")


def make_sum_of(input_domain: Any, input_metric: Any, function: RecordFunction, *,
                size_limit: int | None = None, range_certificate: RangeCertificate | None = None,
                lipschitz_certificate: BoundCertificate | None = None, backend: str = "auto"):
    """Transformation: frame -> ``sum_i f(x_i)`` (a float), over records prepared by the frame domain.

    Each record is clamped to the box (missing values by policy), ``f`` is evaluated
    by the compiled kernel and clamped to its certified range ``[L, U]``, and the
    values are summed pairwise. The float relaxation is computed for the domain's
    ``size_limit`` (``make_frame_domain(schema, size_limit=...)``); frames with more
    records are not members and are refused before any value is computed. A
    ``size_limit`` given here must equal the domain's. ``backend`` picks the kernel
    backend (see ``RecordFunction.compile``). Certificates given here must be the
    function's own (``function.range()``, ``function.lipschitz(norm=p)``); one issued
    for another function, box, quantity or norm is refused.

    Stability (``d_in`` -> ``d_out`` in absolute distance), with ``R`` the float relaxation:

    * symmetric_distance: ``d_in * max(|L|, |U|) + R``
    * change_one_distance: ``d_in * (U - L) + R`` (``max(U - L, |L|, |U|)`` if a field drops records)
    * feature_distance(q): ``min(K * d_in + E, U - L) + R``, ``K`` = certified ``sup ||grad f||_p``,
      1/p + 1/q = 1, ``E`` the certified bound on how far computed values are from real ones
      (under this relation values are midpoints of certified point enclosures)
    """
    import opendp.prelude as dp

    _domain_size_limit(input_domain, size_limit)
    plan = _SumPlan(input_domain, input_metric, function, range_certificate, lipschitz_certificate, backend)
    return dp.t.make_user_transformation(
        input_domain, input_metric, dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
        lambda frame: plan.total(plan.inputs(frame)), plan.stability,
    )


then_sum_of = to_then(make_sum_of)


def make_sum_of_vector(input_domain: Any, input_metric: Any, functions: list[RecordFunction], norm: Any = 2, *,
                       size_limit: int | None = None, backend: str = "auto"):
    """Transformation: frame -> ``(sum_i f_1(x_i), ..., sum_i f_k(x_i))`` in the l1 or l2 distance.

    Each coordinate is computed as in :func:`make_sum_of` and changes by at most
    its own stability ``s_j(d_in)``, so the vector changes by at most
    ``||(s_j(d_in))_j||_p`` (rounded up). Under add/remove this is
    ``d_in * ||(max|f_j|)_j||_p`` plus the relaxations. ``size_limit``, if given,
    must equal the domain's.
    """
    import opendp.prelude as dp

    from opendp_hybridad.symbolic.function import normalise_norm

    p = normalise_norm(norm)
    if p not in (1.0, 2.0):
        raise DeclarationError("a vector of sums is released in the l1 (Laplace) or l2 (Gaussian) distance")
    if not functions:
        raise DeclarationError("give at least one function")
    _domain_size_limit(input_domain, size_limit)
    plans = [_SumPlan(input_domain, input_metric, f, None, None, backend) for f in functions]

    def apply(frame: Any) -> list[float]:
        columns = plans[0].inputs(frame)  # all plans share the schema: prepare once
        return [plan.total(columns) for plan in plans]

    def stability(d_in: Any) -> float:
        coordinates = [plan.stability(d_in) for plan in plans]
        return sum_up(coordinates) if p == 1.0 else norm2_up(coordinates)

    metric = dp.l1_distance(T=float) if p == 1.0 else dp.l2_distance(T=float)
    out_domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=len(plans))
    return dp.t.make_user_transformation(input_domain, input_metric, out_domain, metric, apply, stability)


then_sum_of_vector = to_then(make_sum_of_vector)
