"""Lipschitz bounds of ``f = psi(u(x))`` through one inner expression ``u``: a 1-d problem.

When every field reaches ``f`` through one sub-expression ``u`` (``f`` is ``psi(u)`` with ``psi`` a
function of one variable), the chain rule gives ``grad f(x) = psi'(u(x)) grad u(x)``. Two shapes of
``u`` make ``||grad f||`` a function of ``u`` alone, so its supremum over the box is at most the
supremum over ``t`` in an enclosure ``U`` of ``u``'s range (a superset of ``u(box)``):

* affine ``u = w . x + b``: ``||grad f||_p = |psi'(t)| ||w||_p``, so ``K <= sup_U |psi'| * ||w||_p``,
  and ``|df/dx_j| <= sup_U |psi'| * |w_j|``;
* isotropic quadratic ``u = a sum_i (x_i - m_i)^2 + c`` (every field, one ``a``, no cross term):
  ``||grad u||_2^2 = 4 a^2 sum_i (x_i - m_i)^2 = 4 a (u - c)``, so
  ``K^2 <= sup_U 4 a (t - c) psi'(t)^2``.

The 1-d supremum is certified by the same machinery (:func:`certify_lipschitz` or
:func:`certify_range` of a one-field function on ``U``, which proves ``psi`` defined and smooth on
all of ``U``), and combined with outward rounding (:mod:`.rounding`). ``U`` is the interval
evaluator's outward-rounded enclosure of ``u`` on the box; ``f = psi(u)`` is checked structurally
(``f.xreplace({u: t})`` has no field left), and the coefficients are read exactly (float constants
as the rationals of their doubles, :func:`~.smoothness.exact`). This is the symbolic simplification
of the gradient norm before enclosure that issue 14 asks for: the interval extension of
``||grad f||`` in n fields forgets that all its terms depend on x through ``u``; the 1-d form does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sympy

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.rounding import mul_up, norm2_up, sqrt_up, sum_up
from opendp_hybridad.analysis.smoothness import exact, statically_smooth
from opendp_hybridad.analysis.tape import Tape, exact_interval

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction


@dataclass
class Bottleneck:
    inner: sympy.Expr            # u(x)
    outer: sympy.Expr            # psi(t), in the symbol ``t``
    t: sympy.Symbol
    kind: str                    # "affine" or "radial"
    #: affine: the exact coefficient of each field (0 where absent); radial: (a, c) exactly, and the centre m
    weights: list[sympy.Rational] | None = None
    a: sympy.Rational | None = None
    c: sympy.Rational | None = None
    centre: list[float] | None = None
    #: radial: the exact centre m (rationals)
    centre_exact: list[sympy.Rational] | None = None
    #: radial: whether each field occurs in u (the sum runs over those only)
    present: list[bool] | None = None


#: inner expressions with more nodes than this are not searched (the search is quadratic in the size)
_MAX_CANDIDATES = 400


def find_bottleneck(fn: RecordFunction) -> Bottleneck | None:
    """The largest sub-expression ``u`` of ``f`` through which every field enters, if it is affine or
    isotropic quadratic (and ``f`` uses smooth primitives only); None otherwise."""
    expr = fn.expr
    symbols = list(fn.symbols)
    fields = expr.free_symbols
    if not fields:
        return None
    t = sympy.Dummy("t", real=True)
    seen: set[sympy.Expr] = set()
    for count, u in enumerate(sympy.preorder_traversal(expr)):
        if count > _MAX_CANDIDATES:
            return None
        if u is expr or u in seen or not isinstance(u, sympy.Expr) or u.is_Symbol or u.free_symbols != fields:
            continue
        seen.add(u)
        # the shape first: a polynomial test is cheap next to rewriting all of f
        if not u.is_polynomial(*symbols):
            continue
        if not only_through(expr, u):
            continue
        outer = expr.xreplace({u: t})
        if outer.free_symbols - {t}:
            continue
        found = _classify(u, outer, t, symbols)
        if found is None:
            continue
        tape = Tape(symbols)
        root = tape.add_output(expr)
        # kinks and conditionals: the chain rule above needs psi and u differentiable
        return found if statically_smooth(tape)[root] else None
    return None


def only_through(expr: sympy.Basic, u: sympy.Expr) -> bool:
    """Whether every field occurrence in ``expr`` lies inside an occurrence of ``u`` (a walk, no rebuilding)."""
    if expr == u:
        return True
    if expr.is_Symbol:
        return False
    return all(only_through(a, u) for a in expr.args)


def _classify(u: sympy.Expr, outer: sympy.Expr, t: sympy.Symbol, symbols: list[sympy.Symbol]) -> Bottleneck | None:
    try:
        poly = sympy.Poly(exact(u), *symbols)
    except (sympy.PolynomialError, ValueError):
        return None
    if not all(c.is_Rational for c in poly.coeffs()):
        return None
    degree = poly.total_degree()
    if degree == 1:
        weights = [poly.coeff_monomial(s) for s in symbols]
        return Bottleneck(u, outer, t, "affine", weights=weights)
    if degree != 2:
        return None
    present = [s for s in symbols if s in u.free_symbols]
    squares = {poly.coeff_monomial(s**2) for s in present}
    if len(squares) != 1:
        return None
    a = squares.pop()
    if a == 0:
        return None
    for i, si in enumerate(present):  # no cross term
        for sj in present[i + 1:]:
            if poly.coeff_monomial(si * sj) != 0:
                return None
    linear = {s: poly.coeff_monomial(s) for s in present}
    const = poly.coeff_monomial(1)
    # u = a sum (x_i + b_i / (2a))^2 + c, c = const - sum b_i^2 / (4a)
    c = const - sum(b**2 for b in linear.values()) / (4 * a)
    exact_centre = [-linear[s] / (2 * a) if s in linear else sympy.Integer(0) for s in symbols]
    return Bottleneck(u, outer, t, "radial", a=a, c=c, centre=[float(m) for m in exact_centre], centre_exact=exact_centre,
                      present=[s in linear for s in symbols])


def inner_range(fn: RecordFunction, b: Bottleneck) -> tuple[float, float] | None:
    """Outward-rounded enclosure of ``u`` over the box (None if it cannot be enclosed)."""
    tape = Tape(list(fn.symbols))
    node = tape.add_output(b.inner)
    bounds = fn.schema.bounds()
    lo = np.array([[x[0] for x in bounds]], dtype=float)
    hi = np.array([[x[1] for x in bounds]], dtype=float)
    L, H, B = iv.IntervalEvaluator(tape).evaluate(lo, hi)
    if B[node][0] >= 0:
        return None
    return float(L[node][0]), float(H[node][0])


def _magnitude_up(w: sympy.Rational) -> float:
    """An upper bound of ``|w|`` in floats (rationals that are not doubles round outward)."""
    lo, hi = exact_interval(w)
    return max(abs(lo), abs(hi))


def weight_norm_up(weights: list[sympy.Rational], norm: float) -> float:
    """``||w||_norm`` rounded up."""
    mags = [_magnitude_up(w) for w in weights]
    if norm == math.inf:
        return max(mags, default=0.0)
    if norm == 1.0:
        return sum_up(mags)
    return norm2_up(mags)


def outer_function(fn: RecordFunction, b: Bottleneck, span: tuple[float, float], squared_radial: bool) -> RecordFunction:
    """The one-field function on ``U = span``: ``psi(t)`` (affine), or ``4 a (t - c) psi'(t)^2`` (radial)."""
    from opendp_hybridad.symbolic.schema import Schema

    schema = Schema({"t": span})
    (t,) = schema.symbols()
    psi = b.outer.xreplace({b.t: t})
    if not squared_radial:
        return schema.function(psi, name="psi")
    slope = sympy.diff(psi, t)
    return schema.function(4 * b.a * (t - b.c) * slope**2, name="radial gradient norm squared")


def radial_upper(range_upper: float) -> float:
    """``K`` from the certified upper end of ``K^2 = sup 4 a (t - c) psi'(t)^2`` (rounded up)."""
    return sqrt_up(max(range_upper, 0.0))


def affine_upper(slope_upper: float, weight_norm: float) -> float:
    return mul_up(slope_upper, weight_norm)


def witness_point(fn: RecordFunction, b: Bottleneck, target: float) -> np.ndarray:
    """A point of the box where ``u`` is close to ``target`` (float search; only the witness depends on it).

    ``u`` is continuous along the segment from the box point minimising it to the one maximising it
    (affine: opposite corners; radial: the point of the box nearest the centre and the farthest corner),
    so bisection on that segment reaches any value in between.
    """
    bounds = fn.schema.bounds()
    lo = np.array([x[0] for x in bounds], dtype=float)
    hi = np.array([x[1] for x in bounds], dtype=float)
    symbols = list(fn.symbols)
    if b.kind == "affine":
        w = np.array([float(x) for x in b.weights])
        start, end = np.where(w > 0, lo, hi), np.where(w > 0, hi, lo)
    else:
        m = np.array(b.centre)
        near = np.clip(m, lo, hi)
        far = np.where(np.abs(lo - m) > np.abs(hi - m), lo, hi)
        start, end = (near, far) if b.a > 0 else (far, near)
    u = sympy.lambdify(symbols, b.inner, modules=["numpy"])
    a_s, b_s = 0.0, 1.0
    with np.errstate(all="ignore"):
        for _ in range(80):
            mid = 0.5 * (a_s + b_s)
            if float(u(*np.clip(start + mid * (end - start), lo, hi))) < target:
                a_s = mid
            else:
                b_s = mid
    return np.clip(start + 0.5 * (a_s + b_s) * (end - start), lo, hi)


def radial_partial_function(fn: RecordFunction, b: Bottleneck, index: int) -> RecordFunction | None:
    """The two-field function ``h(s, r) = psi'(a (s - m_j)^2 + a r + c) 2 a (s - m_j)`` on
    ``[lo_j, hi_j] x R``, ``R`` an outward-rounded enclosure of ``r = sum_(i != j) (x_i - m_i)^2`` on the box.

    ``df/dx_j = psi'(u) 2 a (x_j - m_j)`` and ``u = a (x_j - m_j)^2 + a r + c``, so every value of
    ``df/dx_j`` on the box is a value of ``h`` on that rectangle: ``sup |df/dx_j| <= sup |h|``. The
    enclosure of ``r`` is tight (each field occurs once). None where ``r`` cannot be enclosed.
    """
    from opendp_hybridad.symbolic.schema import Schema

    symbols = list(fn.symbols)
    bounds = fn.schema.bounds()
    if not b.present[index]:
        return None  # f does not depend on this field: the general path proves 0
    # the fields of u other than x_j (a field absent from u is not part of the sum)
    others = [(sym - m) ** 2 for k, (sym, m) in enumerate(zip(symbols, b.centre_exact, strict=True))
              if k != index and b.present[k]]
    if others:
        tape = Tape(symbols)
        node = tape.add_output(sympy.Add(*others))
        lo = np.array([[x[0] for x in bounds]], dtype=float)
        hi = np.array([[x[1] for x in bounds]], dtype=float)
        L, H, B = iv.IntervalEvaluator(tape).evaluate(lo, hi)
        if B[node][0] >= 0:
            return None
        r_span = (max(float(L[node][0]), 0.0), float(H[node][0]))  # a sum of squares is >= 0
    else:
        r_span = (0.0, 0.0)
    schema = Schema({"s": tuple(bounds[index]), "r": r_span})
    s_sym, r_sym = schema.symbols()
    m = b.centre_exact[index]
    slope = sympy.diff(b.outer, b.t).xreplace({b.t: b.a * (s_sym - m) ** 2 + b.a * r_sym + b.c})
    return schema.function(slope * 2 * b.a * (s_sym - m), name="radial partial")


def radial_partial_witness(fn: RecordFunction, b: Bottleneck, index: int, s_value: float, r_value: float) -> np.ndarray:
    """A point with ``x_index = s_value`` and ``sum_(i != index) (x_i - m_i)^2`` close to ``r_value`` (bisection)."""
    bounds = fn.schema.bounds()
    lo = np.array([x[0] for x in bounds], dtype=float)
    hi = np.array([x[1] for x in bounds], dtype=float)
    m = np.array(b.centre)
    near = np.clip(m, lo, hi)
    far = np.where(np.abs(lo - m) > np.abs(hi - m), lo, hi)
    mask = (np.arange(lo.size) != index) & np.array(b.present)

    def r_of(x: np.ndarray) -> float:
        return float((((x - m) ** 2)[mask]).sum())

    a_s, b_s = 0.0, 1.0
    for _ in range(80):
        mid = 0.5 * (a_s + b_s)
        if r_of(near + mid * (far - near)) < r_value:
            a_s = mid
        else:
            b_s = mid
    point = np.clip(near + 0.5 * (a_s + b_s) * (far - near), lo, hi)
    point[index] = min(max(s_value, lo[index]), hi[index])
    return point
