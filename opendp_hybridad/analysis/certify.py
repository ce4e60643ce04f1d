"""Certified range enclosures, Lipschitz bounds and per-field partial bounds.

Each quantity is a maximum over the declared box, found by
:func:`~opendp_hybridad.analysis.branch_and_bound.maximize`. On each box, a
vector of outputs ``y`` (f itself, or the gradient) is enclosed twice and the
two enclosures intersected:

* the natural interval extension ``Y(X)``;
* the mean-value form ``y(c) + D(X) (X - c)``, with ``c`` the box centre and
  ``D`` an enclosure of the derivative of ``y`` (the gradient or the Hessian).
  It converges quadratically as boxes shrink, which is what makes tight
  certificates cheap. It is only valid where ``y`` is continuous: outputs
  containing a ``Piecewise`` whose branches are not proven to meet on their
  boundary use the natural extension alone.

The Lipschitz bound ``K = sup ||grad f||_p`` bounds ``|f(x) - f(y)| <= K ||x - y||_q``
(1/p + 1/q = 1) for x, y in the (convex) box when f is continuous and piecewise
differentiable; a function that may jump is refused with
:class:`NotLipschitzError`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import sympy

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.branch_and_bound import BoxBounds, maximize
from opendp_hybridad.analysis.certificate import BoundCertificate, RangeCertificate, Witness
from opendp_hybridad.analysis.tape import Tape
from opendp_hybridad.compile.codegen import numpy_callable
from opendp_hybridad.errors import NotLipschitzError, UnboundedError

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction


# -- continuity -------------------------------------------------------------------
#: functions that jump; a condition built from them has a boundary we do not locate
_JUMPY = (sympy.sign, sympy.Heaviside, sympy.DiracDelta, sympy.Piecewise, sympy.floor, sympy.ceiling)


def unproven_jump(expr: sympy.Expr, fn: RecordFunction) -> sympy.Piecewise | None:
    """A ``Piecewise`` in ``expr`` that may jump on ``fn``'s box, or None when all are proven continuous.

    For each condition ``lhs < rhs`` (or <=, >, >=), with ``g = lhs - rhs``:

    * ``g`` must be continuous on the box: built without jumping functions
      (sign, Heaviside, Piecewise, ...) and with a finite interval enclosure (no pole);
    * ``g`` must be linear in some field ``v`` whose coefficient is enclosed away
      from 0 on the box, so that ``{g = 0}`` is exactly ``{v = v*(others)}``;
    * on that boundary the branch must equal every later branch
      (``sympy.simplify`` of the difference, with ``v = v*``, is 0).

    Anything else (equalities, compound conditions, other boundaries) is
    conservatively reported as a possible jump.
    """
    lo, hi = _box_arrays(fn)
    symbols = tuple(fn.symbols)
    for pw in expr.atoms(sympy.Piecewise):
        if not _piecewise_continuous(pw, symbols, tuple(lo), tuple(hi)):
            return pw
    return None


def _enclose_on_box(expr: sympy.Expr, symbols: tuple, lo: tuple, hi: tuple) -> tuple[float, float] | None:
    """Interval enclosure of ``expr`` over the box, or None if it cannot be enclosed."""
    tape = Tape(list(symbols))
    out = tape.add_output(expr)
    L, H, B = iv.IntervalEvaluator(tape).evaluate(np.array([lo], dtype=float), np.array([hi], dtype=float))
    if B[out][0] >= 0:
        return None
    return float(L[out][0]), float(H[out][0])


@lru_cache(maxsize=512)
def _piecewise_continuous(pw: sympy.Piecewise, symbols: tuple, lo: tuple, hi: tuple) -> bool:
    pairs = list(pw.args)
    for i, (branch, cond) in enumerate(pairs):
        if cond == sympy.true or cond == sympy.false:
            continue
        if not isinstance(cond, (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)):
            return False
        g = cond.lhs - cond.rhs
        if g.has(*_JUMPY) or _enclose_on_box(g, symbols, lo, hi) is None:
            return False
        boundary = None
        for v in sorted(g.free_symbols, key=str):
            slope = sympy.diff(g, v)
            if slope == 0 or v in slope.free_symbols:
                continue
            enclosure = _enclose_on_box(slope, symbols, lo, hi)
            if enclosure is not None and (enclosure[0] > 0 or enclosure[1] < 0):
                boundary = (v, sympy.simplify(v - g / slope))
                break
        if boundary is None:
            if not g.free_symbols:
                continue
            return False
        v, at = boundary
        for later, _ in pairs[i + 1:]:
            diff = sympy.simplify((branch - later).xreplace({v: at}))
            if diff != 0:
                return False
    return True


# -- objectives ---------------------------------------------------------------------
class _Enclosure:
    """Natural ∩ mean-value enclosures of outputs ``y`` over boxes.

    ``rows[j][k]`` is the derivative of ``y[j]`` with respect to field k (a sympy
    expression, possibly 0).
    """

    def __init__(self, fn: RecordFunction, outputs: list[sympy.Expr], rows: list[list[sympy.Expr]]):
        self.fn = fn
        self.n = len(fn.names)
        self.tape = Tape(list(fn.symbols))
        self.y = [self.tape.add_output(e) for e in outputs]
        self.mean_value_ok = [unproven_jump(e, fn) is None for e in outputs]
        self.d: list[list[int | None]] = []
        for row in rows:
            self.d.append([None if sympy.sympify(x) == 0 else self.tape.add_output(x) for x in row])
        self.evaluator = iv.IntervalEvaluator(self.tape)

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns ylo, yhi (outputs, boxes), bad (outputs, boxes), derivative magnitudes (outputs, boxes, n)."""
        nb = lo.shape[0]
        centre = 0.5 * (lo + hi)
        L, H, B = self.evaluator.evaluate(np.vstack([lo, centre]), np.vstack([hi, centre]))
        m = len(self.y)
        ylo = np.empty((m, nb))
        yhi = np.empty((m, nb))
        bad = np.empty((m, nb), dtype=np.int64)
        dmag = np.zeros((m, nb, self.n))
        with np.errstate(all="ignore"):
            dx_lo, dx_hi = iv.add(lo, hi, -centre, -centre)  # X - c, rounded outward
            for j, yi in enumerate(self.y):
                nat_lo, nat_hi, nat_bad = L[yi][:nb], H[yi][:nb], B[yi][:nb]
                c_lo, c_hi, c_bad = L[yi][nb:], H[yi][nb:], B[yi][nb:]
                mv_lo, mv_hi = c_lo.copy(), c_hi.copy()
                mv_ok = (c_bad < 0) & self.mean_value_ok[j]
                for k, dk in enumerate(self.d[j]):
                    if dk is None:
                        continue
                    d_lo, d_hi, d_bad = L[dk][:nb], H[dk][:nb], B[dk][:nb]
                    mv_ok &= d_bad < 0
                    dmag[j, :, k] = np.where(d_bad < 0, np.maximum(np.abs(d_lo), np.abs(d_hi)), np.inf) * (hi[:, k] - lo[:, k])
                    t_lo, t_hi = iv.mul(d_lo, d_hi, dx_lo[:, k], dx_hi[:, k])
                    mv_lo, mv_hi = iv.add(mv_lo, mv_hi, t_lo, t_hi)
                mv_ok &= np.isfinite(mv_lo) & np.isfinite(mv_hi)
                ylo[j] = np.where(mv_ok, np.maximum(nat_lo, mv_lo), nat_lo)
                yhi[j] = np.where(mv_ok, np.minimum(nat_hi, mv_hi), nat_hi)
                bad[j] = nat_bad
        return ylo, yhi, bad, dmag

    def explain(self, node: int) -> UnboundedError:
        if node < 0:
            return UnboundedError("the enclosure did not become finite within the time budget", str(self.fn.expr), self.fn.names)
        src = self.tape.nodes[node].source
        op = self.tape.nodes[node].op
        reason = iv.REASONS.get(op, iv.OVERFLOW)
        cls = NotLipschitzError if op == "dirac" else UnboundedError
        return cls(reason, str(src), self.tape.fields_of(node))


def _box_arrays(fn: RecordFunction) -> tuple[np.ndarray, np.ndarray]:
    bounds = fn.schema.bounds()
    return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])


def _columns(points: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(points[:, k]) for k in range(points.shape[1])]


class RangeObjective:
    """Maximise ``sign * f``."""

    def __init__(self, fn: RecordFunction, sign: float):
        grad = list(fn.gradient().values())
        self.sign = sign
        self.enc = _Enclosure(fn, [fn.expr], [grad])
        self._f = numpy_callable([fn.expr], list(fn.symbols))

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> BoxBounds:
        ylo, yhi, bad, dmag = self.enc.enclose(lo, hi)
        upper = yhi[0] if self.sign > 0 else -ylo[0]
        return BoxBounds(upper, bad[0], dmag[0])

    def value(self, points: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self.sign * self._f(*_columns(points))[0]

    def explain(self, node: int) -> UnboundedError:
        return self.enc.explain(node)


class GradientObjective:
    """Maximise ``||grad f||_p`` (``component`` None) or ``|df/dx_j|`` (``component`` j)."""

    def __init__(self, fn: RecordFunction, norm: float = 2.0, component: int | None = None):
        grad = list(fn.gradient().values())
        hess = [list(r) for r in fn.hessian().tolist()]
        self.norm = norm
        self.component = component
        if component is None:
            self.enc = _Enclosure(fn, grad, hess)
        else:
            self.enc = _Enclosure(fn, [grad[component]], [hess[component]])
        self._g = numpy_callable(grad if component is None else [grad[component]], list(fn.symbols))

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> BoxBounds:
        ylo, yhi, bad, dmag = self.enc.enclose(lo, hi)
        mag = np.maximum(np.abs(ylo), np.abs(yhi))  # (components, boxes)
        upper = _norm_upper(mag, self.norm)
        anybad = np.where((bad >= 0).any(axis=0), bad.max(axis=0), -1)
        # split where the bound of the largest components loosens most
        score = (mag[:, :, None] * dmag).sum(axis=0) if mag.shape[0] > 1 else dmag[0]
        return BoxBounds(upper, anybad, score)

    def value(self, points: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            g = np.abs(np.vstack(self._g(*_columns(points))))
        if self.norm == 2.0:
            return np.sqrt((g * g).sum(axis=0))
        if self.norm == 1.0:
            return g.sum(axis=0)
        return g.max(axis=0)

    def explain(self, node: int) -> UnboundedError:
        return self.enc.explain(node)


def _norm_upper(mag: np.ndarray, p: float) -> np.ndarray:
    """Upper bound (rounded up) of the p-norm of non-negative vectors given column-wise."""
    with np.errstate(all="ignore"):
        if p == math.inf:
            return mag.max(axis=0)
        acc_lo = np.zeros(mag.shape[1])
        acc_hi = np.zeros(mag.shape[1])
        for row in mag:
            if p == 1.0:
                acc_lo, acc_hi = iv.add(acc_lo, acc_hi, row, row)
            else:
                sq_lo, sq_hi = iv.mul(row, row, row, row)
                acc_lo, acc_hi = iv.add(acc_lo, acc_hi, sq_lo, sq_hi)
        if p == 1.0:
            return acc_hi
        root = np.sqrt(acc_hi)
        return np.where(root == 0, 0.0, iv.up(root))


# -- public entry points -----------------------------------------------------------------
def _box_dict(fn: RecordFunction) -> dict[str, tuple[float, float]]:
    return {n: (f.lower, f.upper) for n, f in fn.schema.fields.items()}


def _point(fn: RecordFunction, x: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(fn.names, x, strict=True)}


def certify_range(fn: RecordFunction, tolerance: float = 1e-3, time_budget: float = 2.0) -> RangeCertificate:
    """Certified ``[min f, max f]`` over the box (each end proven; witnesses at the extremes found)."""
    lo, hi = _box_arrays(fn)
    atol = 1e-12
    top = maximize(RangeObjective(fn, +1.0), lo, hi, tolerance=tolerance, atol=atol, time_budget=time_budget / 2)
    bottom = maximize(RangeObjective(fn, -1.0), lo, hi, tolerance=tolerance, atol=atol, time_budget=time_budget / 2)
    return RangeCertificate(
        lower=-bottom.upper,
        upper=top.upper,
        argmin=Witness(_point(fn, bottom.witness_point), -bottom.witness_value),
        argmax=Witness(_point(fn, top.witness_point), top.witness_value),
        box=_box_dict(fn),
        converged=top.converged and bottom.converged,
        elapsed=top.elapsed + bottom.elapsed,
    )


def _require_continuous(fn: RecordFunction) -> None:
    pw = unproven_jump(fn.expr, fn)
    if pw is not None:
        raise NotLipschitzError(
            "a conditional whose branches could not be proven to meet on its boundary (a possible jump)",
            str(pw), sorted(str(s) for s in pw.free_symbols),
        )


def certify_lipschitz(fn: RecordFunction, norm: float = 2.0, tolerance: float = 1e-3, time_budget: float = 2.0) -> BoundCertificate:
    """Certified ``K >= sup ||grad f||_norm`` over the box, with the best witness found."""
    _require_continuous(fn)
    lo, hi = _box_arrays(fn)
    res = maximize(GradientObjective(fn, norm), lo, hi, tolerance=tolerance, time_budget=time_budget)
    label = {1.0: "1", 2.0: "2", math.inf: "inf"}[norm]
    return BoundCertificate(
        quantity=f"sup ||grad {fn.name}||_{label}", upper=res.upper,
        witness=Witness(_point(fn, res.witness_point), res.witness_value), box=_box_dict(fn), norm=norm,
        converged=res.converged, boxes=res.boxes, elapsed=res.elapsed, tolerance=tolerance,
    )


def certify_partial(fn: RecordFunction, index: int, tolerance: float = 1e-3, time_budget: float = 1.0) -> BoundCertificate:
    """Certified ``sup |df/dx_index|`` over the box: the sensitivity to one field alone."""
    _require_continuous(fn)
    lo, hi = _box_arrays(fn)
    res = maximize(GradientObjective(fn, math.inf, component=index), lo, hi, tolerance=tolerance, time_budget=time_budget)
    name = fn.names[index]
    return BoundCertificate(
        quantity=f"sup |d{fn.name}/d{name}|", upper=res.upper,
        witness=Witness(_point(fn, res.witness_point), res.witness_value), box=_box_dict(fn), norm=None,
        converged=res.converged, boxes=res.boxes, elapsed=res.elapsed, tolerance=tolerance,
    )
