"""Exact-to-rounding Lipschitz bounds of quadratic functions: their gradient is affine (issue 14).

When ``f`` is a polynomial of total degree at most 2 with rational coefficients, its gradient is
affine, ``grad f(x) = A x + b`` with ``A`` (the constant Hessian) and ``b`` read exactly from the
polynomial's coefficients. Then:

* every norm ``x -> ||A x + b||_p`` is a convex function (a norm of an affine map), and a convex
  function on a box (a polytope) attains its maximum at one of its vertices (Rockafellar, *Convex
  Analysis*, 1970, Corollary 32.3.2): ``K = max_v ||A v + b||_p`` over the ``2^d`` vertices ``v``
  (``d`` the sides of positive width on which the gradient depends), so enumerating them gives
  ``K`` up to rounding;
* one component (a partial, or the inf-norm's components) is linear: ``max_x |a . x + beta|`` is
  ``max(U, -L)`` with ``U = beta + sum_k max(a_k lo_k, a_k hi_k)`` and ``L`` likewise with ``min``,
  computed in exact rational arithmetic (the box ends are doubles, hence rationals) and rounded
  up once (:func:`~.rounding.round_up`).

The vertex values are enclosed with the outward-rounded interval operations of
:mod:`.interval` (each coefficient of ``A`` and ``b`` as its tightest float interval,
:func:`~.tape.exact_interval`), and their norms rounded up by the certify module's scaled
``_norm_upper``; the witness is the vertex with the largest proven lower bound. The detection is
symbolic and exact (a polynomial of degree <= 2 has a constant Hessian), so nothing here is
assumed about ``f`` that the declaration does not prove.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import sympy

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.rounding import round_down, round_up
from opendp_hybridad.analysis.smoothness import exact
from opendp_hybridad.analysis.tape import exact_interval

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

#: at most this many sides are enumerated (2^14 = 16384 vertices, a fraction of a second); beyond it the
#: general branch and bound is used
MAX_VERTEX_SIDES = 14


@dataclass
class AffineGradient:
    """``grad f(x) = A x + b`` exactly (rationals)."""

    A: list[list[Fraction]]
    b: list[Fraction]


def _degree(e: sympy.Basic, symbols: set[sympy.Symbol], cap: int = 2) -> int | None:
    """An upper bound of the total degree of ``e`` as a polynomial in ``symbols`` (None: not a
    polynomial, or above ``cap``). A walk of the tree: nothing is expanded (``(x + y)**50`` is refused
    without building its 51 terms)."""
    if e.is_Symbol:
        return 1 if e in symbols else None
    if e.is_Number:
        return 0 if e.is_Rational or e.is_Float else None
    if isinstance(e, sympy.Add):
        out = 0
        for a in e.args:
            d = _degree(a, symbols, cap)
            if d is None:
                return None
            out = max(out, d)
        return out
    if isinstance(e, sympy.Mul):
        out = 0
        for a in e.args:
            d = _degree(a, symbols, cap)
            if d is None:
                return None
            out += d
            if out > cap:
                return None
        return out
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and int(e.exp) >= 0:
        d = _degree(e.base, symbols, cap)
        if d is None:
            return None
        out = d * int(e.exp)
        return out if out <= cap else None
    return None


def _fraction(c: sympy.Rational) -> Fraction:
    return Fraction(int(c.p), int(c.q))


def affine_gradient(fn: RecordFunction) -> AffineGradient | None:
    """``A, b`` with ``grad f = A x + b`` when ``f`` is a polynomial of degree <= 2 with rational
    coefficients (float constants taken as the exact rationals of their doubles); else None."""
    symbols = list(fn.symbols)
    if _degree(fn.expr, set(symbols)) is None:
        return None
    try:
        poly = sympy.Poly(exact(fn.expr), *symbols)
    except (sympy.PolynomialError, ValueError):
        return None
    if poly.total_degree() > 2 or not all(c.is_Rational for c in poly.coeffs()):
        return None
    n = len(symbols)
    A = [[Fraction(0)] * n for _ in range(n)]
    b = [Fraction(0)] * n
    for monom, coeff in poly.terms():
        c = _fraction(coeff)
        powers = [(k, p) for k, p in enumerate(monom) if p]
        if len(powers) == 1 and powers[0][1] == 1:  # c x_k
            b[powers[0][0]] += c
        elif len(powers) == 1 and powers[0][1] == 2:  # c x_k^2: d/dx_k = 2 c x_k
            k = powers[0][0]
            A[k][k] += 2 * c
        elif len(powers) == 2:  # c x_j x_k
            (j, _), (k, _) = powers
            A[j][k] += c
            A[k][j] += c
    return AffineGradient(A, b)


def row_maximum(a: list[Fraction], beta: Fraction, lo: np.ndarray, hi: np.ndarray) -> tuple[Fraction, np.ndarray]:
    """``max_x |a . x + beta|`` over the box, exactly, and a vertex attaining it."""
    lo_f = [Fraction(float(v)) for v in lo]
    hi_f = [Fraction(float(v)) for v in hi]
    upper = beta + sum((max(ak * a_lo, ak * a_hi) for ak, a_lo, a_hi in zip(a, lo_f, hi_f, strict=True)), Fraction(0))
    lower = beta + sum((min(ak * a_lo, ak * a_hi) for ak, a_lo, a_hi in zip(a, lo_f, hi_f, strict=True)), Fraction(0))
    if upper >= -lower:
        point = np.where([ak > 0 for ak in a], hi, lo)
        return upper, point.astype(float)
    point = np.where([ak > 0 for ak in a], lo, hi)
    return -lower, point.astype(float)


@dataclass
class VertexResult:
    upper: float
    point: np.ndarray
    value: float  # a proven lower bound of the quantity at ``point``
    vertices: int


def certify_affine(g: AffineGradient, lo: np.ndarray, hi: np.ndarray, norm: float,
                   component: int | None = None) -> VertexResult | None:
    """``sup ||A x + b||_norm`` (``component`` None) or ``sup |(A x + b)_component|`` over the box.

    None where the enumeration would need more than ``2^MAX_VERTEX_SIDES`` vertices or a value is not
    finite (the caller then uses the general path).
    """
    n = lo.size
    rows = list(range(n)) if component is None else [component]
    if len(rows) == 1 or norm == math.inf:  # linear components: exact rationals, one rounding
        best: tuple[Fraction, np.ndarray] | None = None
        for j in rows:
            value, point = row_maximum(g.A[j], g.b[j], lo, hi)
            if best is None or value > best[0]:
                best = (value, point)
        assert best is not None
        upper = round_up(best[0])
        if not math.isfinite(upper):  # beyond the float range: no finite certificate (the general path says why)
            return None
        return VertexResult(upper, best[1], round_down(best[0]), 2 * len(rows))
    # the sides on which the gradient depends (a zero column of A: that field does not move it)
    sides = [k for k in range(n) if hi[k] > lo[k] and any(g.A[j][k] != 0 for j in rows)]
    if len(sides) > MAX_VERTEX_SIDES:
        return None
    count = 1 << len(sides)
    bits = ((np.arange(count)[:, None] >> np.arange(len(sides))[None, :]) & 1).astype(bool)
    vertices = np.repeat(lo[None, :], count, axis=0)
    for s, k in enumerate(sides):
        vertices[:, k] = np.where(bits[:, s], hi[k], lo[k])
    from opendp_hybridad.analysis.certify import _norm_lower_of, _norm_upper

    ylo = np.empty((len(rows), count))
    yhi = np.empty((len(rows), count))
    with np.errstate(all="ignore"):
        for r, j in enumerate(rows):
            b_lo, b_hi = exact_interval(sympy.Rational(g.b[j].numerator, g.b[j].denominator))
            acc_lo, acc_hi = np.full(count, b_lo), np.full(count, b_hi)
            for k in range(n):
                a = g.A[j][k]
                if a == 0:
                    continue
                a_lo, a_hi = exact_interval(sympy.Rational(a.numerator, a.denominator))
                p_lo, p_hi = iv.mul(np.full(count, a_lo), np.full(count, a_hi), vertices[:, k], vertices[:, k])
                acc_lo, acc_hi = iv.add(acc_lo, acc_hi, p_lo, p_hi)
            ylo[r], yhi[r] = acc_lo, acc_hi
    if not (np.isfinite(ylo).all() and np.isfinite(yhi).all()):
        return None
    mag = np.maximum(np.abs(ylo), np.abs(yhi))
    uppers = _norm_upper(mag, norm)
    lowers = _norm_lower_of(ylo, yhi, norm)
    upper = float(uppers.max())
    if not math.isfinite(upper):
        return None
    best = int(np.argmax(lowers))
    return VertexResult(upper, vertices[best].copy(), float(lowers[best]), count)
