"""Lipschitz bounds of ``f = psi(c + sum_j phi_j(x_j))``: an outer function of a separable sum.

When every field reaches ``f`` through one sum ``u = c + sum_j phi_j(x_j)`` whose terms each hold
one field (logsumexp, a generalised mean, a sum of softplus terms under a log), the chain rule gives
``df/dx_j = psi'(u) phi_j'(x_j)``, so

    ||grad f(x)||_2^2 = psi'(u)^2 v(x),    v(x) = sum_j phi_j'(x_j)^2.

The interval extension of that in n fields loses the link between ``u`` and ``v`` (both move with
every field); this module keeps it through a Lagrangian bound, one field at a time:

* ``w = u - c`` lies in ``W = [sum_j min phi_j, sum_j max phi_j]``; ``W`` is cut into pieces
  ``[a_m, b_m]`` (their union is ``W``: shared float ends);
* for ``x`` with ``w(x)`` in a piece and any real ``lambda``,
  ``v(x) = sum_j (phi_j'(x_j)^2 + lambda phi_j(x_j)) - lambda w(x)
  <= sum_j h_j(lambda) - lambda a_m`` when ``lambda >= 0`` (``- lambda b_m`` when ``lambda < 0``), with
  ``h_j(lambda) = sup_{t in X_j} (phi_j'(t)^2 + lambda phi_j(t))`` (weak duality: any ``lambda`` gives
  an upper bound, so the choice of ``lambda`` is a float search that soundness does not rest on);
* ``h_j`` is bounded above over ``T`` sub-intervals of ``X_j`` from outward-rounded enclosures of
  ``phi_j'`` and ``phi_j`` on each (:mod:`.interval`), and ``psi'(t)^2`` over each piece the same way;
* so ``K^2 <= max_m sup_{piece m} psi'^2 * min_lambda V_m(lambda)``, every operation rounded up.

Fields whose term and interval are the same (up to renaming the field) share one ``h``, counted
with their multiplicity. The bound is the maximum over the convex hull of the joint range of
``(w, v)``, so it is tight when that range's upper edge is nearly straight between pieces (for
logsumexp in 20 fields it is within 1% of the truth). It needs ``f`` smooth on the box (checked
statically, as for :mod:`.composition`) and every enclosure finite; otherwise no bound is given and
the general path answers.

A single partial is a 2-d problem: ``df/dx_j = psi'(c + phi_j(x_j) + r) phi_j'(x_j)`` with
``r = sum_(i != j) phi_i(x_i)``, and since the other terms are independent of ``x_j`` the pairs
``(x_j, r)`` fill ``X_j x R`` with ``R`` the sum of the other terms' ranges, enclosed outward
(:func:`partial_function`); the certificate takes the range of that function on the rectangle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sympy

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.composition import only_through
from opendp_hybridad.analysis.rounding import add_down, add_up, add_up_array, mul_down, mul_up, sqrt_up, up_array
from opendp_hybridad.analysis.smoothness import statically_smooth
from opendp_hybridad.analysis.tape import Tape, exact_interval
from opendp_hybridad.errors import UnsupportedExpressionError

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

#: sub-intervals per field interval (fewer where more than 4 fields differ), and pieces of W
SUB_INTERVALS = 1024
PIECES = 1024
#: the most distinct terms (classes) bounded: the cost is classes x sub-intervals x multipliers (audit
#: attack_separable.py: 0.57 s at 100 distinct terms); past it the general path answers alone
MAX_CLASSES = 48
#: inner expressions with more nodes than this are not searched (the search is quadratic in the size)
_MAX_CANDIDATES = 400


@dataclass
class SeparableSum:
    """``f = outer(t)`` at ``t = inner = constant + sum_j terms[j]``; ``terms[j]`` holds field ``j`` only."""

    inner: sympy.Expr
    outer: sympy.Expr
    t: sympy.Symbol
    constant: sympy.Expr
    #: phi_j, in field j's own symbol (None where field j is absent from f)
    terms: list[sympy.Expr | None]


@dataclass
class SeparableBound:
    upper: float          # K >= sup ||grad f||_2, rounded up
    point: np.ndarray     # a candidate witness (float search from the best piece's lambda); proven by the caller


def find_separable(fn: RecordFunction) -> SeparableSum | None:
    """The largest sub-expression of ``f`` through which every field enters, if it is a sum of one-field terms
    (two fields or more) and ``f`` uses smooth primitives only; None otherwise."""
    expr = fn.expr
    symbols = list(fn.symbols)
    fields = expr.free_symbols
    if len(fields) < 2:
        return None
    t = sympy.Dummy("t", real=True)
    for count, u in enumerate(sympy.preorder_traversal(expr)):
        if count > _MAX_CANDIDATES:
            return None
        if not isinstance(u, sympy.Add) or u.free_symbols != fields:
            continue
        by_field: dict[sympy.Symbol, list[sympy.Expr]] = {}
        constant: list[sympy.Expr] = []
        for arg in u.args:
            held = arg.free_symbols
            if len(held) > 1:
                break
            (by_field.setdefault(next(iter(held)), []) if held else constant).append(arg)
        else:
            if not only_through(expr, u):
                continue
            outer = expr.xreplace({u: t})
            if outer.free_symbols - {t} or not outer.has(t):
                continue
            if u is expr or outer == t:
                # f is the sum itself (psi' = 1): K^2 = sum_j sup phi_j'^2, which the general path's
                # enclosure of a separable gradient already gives; the Lagrangian bound adds nothing
                return None
            tape = Tape(symbols)
            root = tape.add_output(expr)
            if not statically_smooth(tape)[root]:  # the chain rule needs psi and every phi_j differentiable
                return None
            terms = [sympy.Add(*by_field[s]) if s in by_field else None for s in symbols]
            return SeparableSum(u, outer, t, sympy.Add(*constant), terms)
    return None


@dataclass
class _FieldClass:
    """Fields sharing one term (up to renaming) and one interval: their ``h`` is computed once."""

    term: sympy.Expr      # phi(s)
    interval: tuple[float, float]
    members: list[int]
    #: per sub-interval: upper bound of phi'^2, and phi's enclosure
    slope_sq: np.ndarray | None = None
    value_lo: np.ndarray | None = None
    value_hi: np.ndarray | None = None
    #: the sub-intervals' ends (for the witness)
    ends: np.ndarray | None = None


def _classes(fn: RecordFunction, s: SeparableSum, dummy: sympy.Symbol) -> list[_FieldClass]:
    bounds = fn.schema.bounds()
    classes: dict[tuple[sympy.Expr, tuple[float, float]], _FieldClass] = {}
    for j, (symbol, term) in enumerate(zip(fn.symbols, s.terms, strict=True)):
        if term is None:
            continue
        key = (term.xreplace({symbol: dummy}), (float(bounds[j][0]), float(bounds[j][1])))
        classes.setdefault(key, _FieldClass(key[0], key[1], [])).members.append(j)
    return list(classes.values())


def _enclose_terms(c: _FieldClass, dummy: sympy.Symbol, sub_intervals: int) -> bool:
    """Enclosures of ``phi`` and ``phi'`` on each sub-interval of the class's interval; False if any fails."""
    lo, hi = c.interval
    ends = np.linspace(lo, hi, sub_intervals + 1)
    ends[0], ends[-1] = lo, hi
    ends = np.maximum.accumulate(ends)  # monotone, sharing ends: the sub-intervals cover [lo, hi]
    tape = Tape([dummy])
    value = tape.add_output(c.term)
    slope = tape.add_output(sympy.diff(c.term, dummy))
    L, H, B = iv.IntervalEvaluator(tape).evaluate(ends[:-1, None], ends[1:, None])
    if (B[value] >= 0).any() or (B[slope] >= 0).any():
        return False
    _, sq_hi = iv.mul(L[slope], H[slope], L[slope], H[slope])  # the upper end: the largest corner product, rounded up
    c.slope_sq = np.maximum(sq_hi, 0.0)
    c.value_lo, c.value_hi = L[value], H[value]
    c.ends = ends
    return bool(np.isfinite(c.slope_sq).all() and np.isfinite(c.value_lo).all() and np.isfinite(c.value_hi).all())


def _constant(s: SeparableSum) -> tuple[float, float] | tuple[None, None]:
    """The sum's constant enclosed outward (op by op, :func:`~.tape.exact_interval`); (None, None) where it cannot be."""
    if s.constant == 0:
        return 0.0, 0.0
    try:
        return exact_interval(s.constant)
    except UnsupportedExpressionError:
        return None, None


def _sum_range(classes: list[_FieldClass], start: tuple[float, float], without: int | None = None
               ) -> tuple[float, float] | tuple[None, None]:
    """``start`` plus the range of the classes' terms summed over their fields (field ``without`` left out),
    from each term's sub-interval enclosures, rounded outward; (None, None) where it is not finite."""
    lo, hi = start
    for c in classes:
        k = float(len(c.members) - (without in c.members))
        if k:
            lo = add_down(lo, mul_down(k, float(c.value_lo.min())))
            hi = add_up(hi, mul_up(k, float(c.value_hi.max())))
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (None, None)


def _h_upper(c: _FieldClass, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds of ``h(lambda) = sup_t phi'(t)^2 + lambda phi(t)`` for each ``lambda``, and the argmax rows.

    On a sub-interval, ``phi'^2 <= slope_sq`` and ``lambda phi <= lambda`` times phi's upper end (``lambda >= 0``)
    or lower end; each product and sum is the correctly rounded float moved one float up, which lies above
    the real result (every input is finite: checked when the enclosures were made).
    """
    ends = np.where(lam[None, :] >= 0, c.value_hi[:, None], c.value_lo[:, None])  # lambda phi is largest at this end
    with np.errstate(over="ignore"):
        total = c.slope_sq[:, None] + up_array(lam[None, :] * ends)
    # the next float above a sum bounds it; taking it after the maximum is the same (nextafter is monotone)
    return up_array(total.max(axis=0)), total.argmax(axis=0)


def separable_bound(fn: RecordFunction, s: SeparableSum) -> SeparableBound | None:
    """``K >= sup ||grad f||_2`` by the module's Lagrangian bound (rounded up), or None where an enclosure fails."""
    dummy = sympy.Dummy("s", real=True)
    classes = _classes(fn, s, dummy)
    if len(classes) > MAX_CLASSES:
        return None
    # the cost is classes x sub-intervals x multipliers: fewer sub-intervals where many fields differ
    sub_intervals = min(SUB_INTERVALS, max(SUB_INTERVALS // max(len(classes) // 4, 1), 128))
    if not classes or not all(_enclose_terms(c, dummy, sub_intervals) for c in classes):
        return None
    # W = [sum of the least phi_j, sum of the largest], rounded outward
    w_lo, w_hi = _sum_range(classes, (0.0, 0.0))
    if w_lo is None:
        return None
    # pieces of equal ratio where W is positive and spans more than a factor 4 (psi' of a log or a root moves
    # with the ratio), else of equal width; any increasing edges from w_lo to w_hi cover W
    spacing = np.geomspace if w_lo > 0 and w_hi > 4 * w_lo else np.linspace
    edges = spacing(w_lo, w_hi, PIECES + 1)
    edges[0], edges[-1] = w_lo, w_hi
    edges = np.maximum.accumulate(edges)
    # psi'(t)^2 on t = c + w over each piece, c enclosed exactly
    c_lo, c_hi = _constant(s)
    if c_lo is None:
        return None
    t_lo, _ = iv.add(np.full(PIECES, c_lo), np.full(PIECES, c_lo), edges[:-1], edges[:-1])
    _, t_hi = iv.add(np.full(PIECES, c_hi), np.full(PIECES, c_hi), edges[1:], edges[1:])
    tape = Tape([s.t])
    slope = tape.add_output(sympy.diff(s.outer, s.t))
    L, H, B = iv.IntervalEvaluator(tape).evaluate(t_lo[:, None], t_hi[:, None])
    if (B[slope] >= 0).any():
        return None
    _, outer_sq = iv.mul(L[slope], H[slope], L[slope], H[slope])
    outer_sq = np.maximum(outer_sq, 0.0)
    if not np.isfinite(outer_sq).all():
        return None
    lam = _lambda_grid(classes)
    # V_m(lambda) = sum_classes k h(lambda) - lambda (a_m if lambda >= 0 else b_m), rounded up
    # (each product and sum: the correctly rounded float moved one float up, above the real result)
    total = np.zeros(lam.size)
    argmax_rows = []
    with np.errstate(over="ignore"):
        for c in classes:
            h, rows = _h_upper(c, lam)
            total = add_up_array(total, up_array(float(len(c.members)) * h))
            argmax_rows.append(rows)
        ends = np.where(lam[None, :] >= 0, edges[:-1, None], edges[1:, None])
        v = up_array(total[None, :] + up_array(-lam[None, :] * ends))  # (pieces, lambdas)
    best = v.argmin(axis=1)
    v_best = np.maximum(v[np.arange(PIECES), best], 0.0)  # v >= 0: a negative bound means the piece holds no point
    _, k_sq = iv.mul(outer_sq, outer_sq, v_best, v_best)
    top = int(np.argmax(k_sq))
    upper = sqrt_up(float(k_sq[top]))
    if not math.isfinite(upper):
        return None
    # a candidate witness: each field at the sub-interval where phi'^2 + lambda phi peaks, at the top piece's lambda
    point = np.array([float(lo) for lo, _ in fn.schema.bounds()])
    for c, rows in zip(classes, argmax_rows, strict=True):
        row = int(rows[best[top]])
        for j in c.members:
            point[j] = 0.5 * (c.ends[row] + c.ends[row + 1])
    return SeparableBound(upper, point)


def _lambda_grid(classes: list[_FieldClass]) -> np.ndarray:
    """Candidate multipliers (any set is sound): 0, and a linear and a geometric grid either side, scaled to
    ``max phi'^2`` over the spread of one term (where the bound's slope in lambda changes)."""
    slope_sq = max(float(c.slope_sq.max()) for c in classes)
    spread = max(max(float(c.value_hi.max() - c.value_lo.min()) for c in classes), 1e-300)
    scale = max(4.0 * slope_sq / spread, 1e-300)
    linear = scale * np.linspace(-1.0, 1.0, 1025)  # 257 values left 1.5% on logsumexp in 20 fields, 1025 0.8%
    geometric = scale * 2.0 ** -np.arange(1, 41, 0.5)
    grid = np.concatenate([linear, geometric, -geometric, [0.0]])
    grid = grid[np.isfinite(grid)]
    return np.unique(grid)


def partial_function(fn: RecordFunction, s: SeparableSum, index: int) -> RecordFunction | None:
    """``h(s, r) = psi'(c + phi_j(s) + r) phi_j'(s)`` on ``[lo_j, hi_j] x R``, ``R`` an outward enclosure of the
    other terms' sum ``r = sum_(i != j) phi_i(x_i)`` over the box (each term's range from its sub-intervals).

    Every value of ``df/dx_j`` on the box is a value of ``h`` on that rectangle, so ``sup |df/dx_j| <= sup |h|``.
    None where field ``j`` is absent (the general path proves 0) or an enclosure fails.
    """
    from opendp_hybridad.symbolic.schema import Schema

    term = s.terms[index]
    if term is None:
        return None
    dummy = sympy.Dummy("s", real=True)
    others = _classes(fn, s, dummy)
    if len(others) > MAX_CLASSES:  # each field's partial encloses every other term: quadratic in the terms
        return None
    if not all(_enclose_terms(c, dummy, 256) for c in others):
        return None
    c_lo, c_hi = _constant(s)
    if c_lo is None:
        return None
    r_lo, r_hi = _sum_range(others, (c_lo, c_hi), without=index)
    if r_lo is None:
        return None
    bounds = fn.schema.bounds()
    schema = Schema({"s": tuple(bounds[index]), "r": (r_lo, r_hi)})
    s_sym, r_sym = schema.symbols()
    field = list(fn.symbols)[index]
    phi = term.xreplace({field: s_sym})
    slope = sympy.diff(s.outer, s.t).xreplace({s.t: phi + r_sym})
    return schema.function(slope * sympy.diff(phi, s_sym), name="separable partial")


def partial_witness(fn: RecordFunction, s: SeparableSum, index: int, s_value: float, r_value: float) -> np.ndarray:
    """A point with ``x_index = s_value`` and ``c + sum_(i != index) phi_i(x_i)`` close to ``r_value`` (float search).

    Along the segment from the corner minimising each other term's end value to the one maximising it,
    ``r`` is continuous, so bisection on a bracket reaches any value in between (only the witness depends on it).
    """
    bounds = fn.schema.bounds()
    lo = np.array([b[0] for b in bounds], dtype=float)
    hi = np.array([b[1] for b in bounds], dtype=float)
    from opendp_hybridad.compile.codegen import numpy_callable  # the library's float evaluation (its own functions too)

    symbols = list(fn.symbols)
    rest = [k for k, t in enumerate(s.terms) if t is not None and k != index]
    # one compiled function for every other term, of all the fields' columns (one compilation per partial)
    terms = numpy_callable([s.terms[k] for k in rest], symbols) if rest else None

    def values(points: np.ndarray) -> np.ndarray:
        """Each other term at each point: (points, terms)."""
        out = terms(*[points[:, i] for i in range(points.shape[1])])
        return np.column_stack([np.broadcast_to(np.asarray(v, dtype=float), (points.shape[0],)) for v in out])

    def r_of(x: np.ndarray) -> float:
        return float(values(x[None, :]).sum())

    with np.errstate(all="ignore"):
        ends = values(np.vstack([lo, hi])) if rest else np.zeros((2, 0))
        start = np.array([lo[k] if ends[0, i] <= ends[1, i] else hi[k] for i, k in enumerate(rest)])
    end = np.array([hi[k] if start[i] == lo[k] else lo[k] for i, k in enumerate(rest)])
    constant = float(s.constant)
    point = lo.copy()
    a, b = 0.0, 1.0
    with np.errstate(all="ignore"):
        for _ in range(60):
            mid = 0.5 * (a + b)
            point[rest] = start + mid * (end - start)
            if constant + r_of(point) < r_value:
                a = mid
            else:
                b = mid
        point[rest] = start + 0.5 * (a + b) * (end - start)
    point[index] = min(max(s_value, lo[index]), hi[index])
    return np.clip(point, lo, hi)
