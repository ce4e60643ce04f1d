"""Certified range enclosures, Lipschitz bounds and per-field partial bounds.

Each quantity is a maximum over the declared box, found by
:func:`~opendp_hybridad.analysis.branch_and_bound.maximize`. On each box, a
vector of outputs ``y`` (f itself, or the gradient) is enclosed twice and the
two enclosures intersected:

* the natural interval extension ``Y(X)``;
* the mean-value form ``y(c) + D(X) (X - c)``, with ``c`` the box centre and
  ``D`` an enclosure of the derivative of ``y`` (the gradient or the Hessian).
  It converges quadratically as boxes shrink, which is what makes tight
  certificates cheap. It is used for ``y`` only on the boxes where
  :func:`~opendp_hybridad.analysis.smoothness.smooth_masks` proves ``y`` smooth,
  from ``y``'s own expression (before any differentiation, so a jump whose
  derivative cancels cannot hide); elsewhere (a kink, a step or an undecided
  conditional inside the box) the natural extension alone encloses ``y``.

The Lipschitz bound ``K = sup ||grad f||_p`` bounds ``|f(x) - f(y)| <= K ||x - y||_q``
(1/p + 1/q = 1) for x, y in the (convex) box when f is continuous and piecewise
differentiable; a function that may jump (a possibly discontinuous primitive of
:data:`~opendp_hybridad.analysis.smoothness.OP_CLASS` not proven continuous) is
refused with :class:`NotLipschitzError`.

Witness values are proven *lower* bounds of the objective at the witness point
(point enclosures through the interval evaluator), so the safety net of
:func:`~opendp_hybridad.analysis.branch_and_bound.maximize` refuses a certificate
only when a point provably beats it, never because of float cancellation.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING

import numpy as np
import sympy

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.branch_and_bound import _MIN_RELATIVE_WIDTH, BoxBounds, MaxResult, centres, maximize
from opendp_hybridad.analysis.certificate import BoundCertificate, RangeCertificate, Witness
from opendp_hybridad.analysis.rounding import gamma
from opendp_hybridad.analysis.smoothness import JUMP, OP_CLASS, possible_jump, smooth_masks, statically_smooth
from opendp_hybridad.analysis.tape import Tape
from opendp_hybridad.compile.codegen import numpy_callable
from opendp_hybridad.errors import NotLipschitzError, UnboundedError
from opendp_hybridad.symbolic.functions import to_sympy

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction


# -- objectives ---------------------------------------------------------------------
class _Enclosure:
    """Natural ∩ mean-value enclosures of outputs ``y`` over boxes.

    ``rows[j][k]`` is the derivative of ``y[j]`` with respect to field k (a sympy
    expression, possibly 0). The mean-value form of ``y[j]`` is used on a box only
    where ``y[j]``'s own expression is proven smooth on that box.
    """

    def __init__(self, fn: RecordFunction, outputs: list[sympy.Expr], rows: list[list[sympy.Expr]]):
        self.fn = fn
        self.n = len(fn.names)
        self.outputs = list(outputs)
        self.tape = Tape(list(fn.symbols))
        self.y = [self.tape.add_output(e) for e in outputs]
        self.d: list[list[int | None]] = []
        for row in rows:
            self.d.append([None if to_sympy(x, "a derivative") == 0 else self.tape.add_output(x) for x in row])
        self.evaluator = iv.IntervalEvaluator(self.tape)
        self._static = statically_smooth(self.tape)
        self._points: iv.IntervalEvaluator | None = None

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
        """Returns ylo, yhi (outputs, boxes), bad (outputs, boxes), derivative magnitudes (outputs, boxes, n),
        and the point enclosures of the outputs at the box centres, clo, chi (outputs, boxes)."""
        nb = lo.shape[0]
        centre = centres(lo, hi)
        L, H, B = self.evaluator.evaluate(np.vstack([lo, centre]), np.vstack([hi, centre]))
        smooth = smooth_masks(self.tape, self.y, L, H, rows=slice(0, nb), static=self._static)
        m = len(self.y)
        ylo = np.empty((m, nb))
        yhi = np.empty((m, nb))
        clo = np.empty((m, nb))
        chi = np.empty((m, nb))
        bad = np.empty((m, nb), dtype=np.int64)
        dmag = np.zeros((m, nb, self.n))
        with np.errstate(all="ignore"):
            dx_lo, dx_hi = iv.add(lo, hi, -centre, -centre)  # X - c, rounded outward
            for j, yi in enumerate(self.y):
                nat_lo, nat_hi, nat_bad = L[yi][:nb], H[yi][:nb], B[yi][:nb]
                c_lo, c_hi, c_bad = L[yi][nb:], H[yi][nb:], B[yi][nb:]
                clo[j], chi[j] = c_lo, c_hi
                mv_lo, mv_hi = c_lo.copy(), c_hi.copy()
                mv_ok = c_bad < 0
                if smooth[j] is not None:
                    mv_ok &= smooth[j]
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
        return ylo, yhi, bad, dmag, clo, chi

    def at_points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outward-rounded enclosures (outputs, points) of the outputs at points; (-inf, inf) where none."""
        if self._points is None:
            # the outputs were lowered first, so their nodes are a prefix of the tape: evaluate only that
            prefix = copy.copy(self.tape)
            prefix.nodes = self.tape.nodes[:max(self.y) + 1]
            self._points = iv.IntervalEvaluator(prefix)
        L, H, _ = self._points.evaluate(points, points)
        return np.vstack([L[o] for o in self.y]), np.vstack([H[o] for o in self.y])

    def explain(self, node: int) -> UnboundedError:
        if node < 0:
            return UnboundedError("the enclosure did not become finite within the time budget", str(self.fn.expr), self.fn.names)
        src = self.tape.nodes[node].source
        op = self.tape.nodes[node].op
        reason = iv.REASONS.get(op, iv.OVERFLOW)
        # a possibly discontinuous primitive that cannot be enclosed (DiracDelta, from differentiating
        # a step) means a jump: no Lipschitz constant
        cls = NotLipschitzError if OP_CLASS[op] == JUMP else UnboundedError
        err = cls(reason, str(src), self.tape.fields_of(node))
        err.source_expr = src  # for callers that name the user's sub-expression instead (see _infinite_slope)
        return err


def _box_arrays(fn: RecordFunction) -> tuple[np.ndarray, np.ndarray]:
    bounds = fn.schema.bounds()
    return np.array([b[0] for b in bounds], dtype=float), np.array([b[1] for b in bounds], dtype=float)


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
        ylo, yhi, bad, dmag, clo, chi = self.enc.enclose(lo, hi)
        upper = yhi[0] if self.sign > 0 else -ylo[0]
        centre = clo[0] if self.sign > 0 else -chi[0]
        return BoxBounds(upper, bad[0], dmag[0], centre)

    def value(self, points: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self.sign * self._f(*_columns(points))[0]

    def lower_bound(self, points: np.ndarray) -> np.ndarray:
        lo, hi = self.enc.at_points(points)
        return lo[0] if self.sign > 0 else -hi[0]

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
        ylo, yhi, bad, dmag, clo, chi = self.enc.enclose(lo, hi)
        mag = np.maximum(np.abs(ylo), np.abs(yhi))  # (components, boxes)
        upper = _norm_upper(mag, self.norm)
        anybad = np.where((bad >= 0).any(axis=0), bad.max(axis=0), -1)
        # split where the bound of the largest components loosens most
        with np.errstate(all="ignore"):
            score = (mag[:, :, None] * dmag).sum(axis=0) if mag.shape[0] > 1 else dmag[0]
        return BoxBounds(upper, anybad, score, _norm_lower_of(clo, chi, self.norm))

    def value(self, points: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            g = np.abs(np.vstack(self._g(*_columns(points))))
            if self.norm == 2.0:
                top = g.max(axis=0)
                scale = np.where((top > 0) & np.isfinite(top), top, 1.0)
                return scale * np.sqrt(((g / scale) ** 2).sum(axis=0))
            if self.norm == 1.0:
                return g.sum(axis=0)
            return g.max(axis=0)

    def lower_bound(self, points: np.ndarray) -> np.ndarray:
        lo, hi = self.enc.at_points(points)
        return _norm_lower_of(lo, hi, self.norm)

    def explain(self, node: int) -> UnboundedError:
        return self.enc.explain(node)


def _norm_upper(mag: np.ndarray, p: float) -> np.ndarray:
    """Upper bound (rounded up) of the p-norm of non-negative vectors given column-wise.

    The 2-norm is scaled by the largest component (``m sqrt(sum (x_i/m)^2)``, every
    step rounded up), so squares neither overflow (1e300) nor underflow (1e-304).
    """
    with np.errstate(all="ignore"):
        if p == math.inf:
            return mag.max(axis=0)
        if p == 1.0:
            acc_lo = np.zeros(mag.shape[1])
            acc_hi = np.zeros(mag.shape[1])
            for row in mag:
                acc_lo, acc_hi = iv.add(acc_lo, acc_hi, row, row)
            return acc_hi
        top = mag.max(axis=0)
        scale = np.where((top > 0) & np.isfinite(top), top, 1.0)
        acc_lo = np.zeros(mag.shape[1])
        acc_hi = np.zeros(mag.shape[1])
        for row in mag:
            ratio = np.where(row == scale, 1.0, np.minimum(iv.up(row / scale), 1.0))  # true ratio <= 1
            ratio = np.where(row == 0, 0.0, ratio)
            sq_lo, sq_hi = iv.mul(ratio, ratio, ratio, ratio)
            acc_lo, acc_hi = iv.add(acc_lo, acc_hi, sq_lo, sq_hi)
        root = np.where(acc_hi == 1.0, 1.0, iv.up(np.sqrt(acc_hi)))  # 1: one non-zero component, exact
        out = np.where(root == 1.0, top, iv.up(top * root))
        return np.where(top == 0, 0.0, np.where(np.isfinite(top), out, np.inf))


def _norm_lower(mig: np.ndarray, p: float) -> np.ndarray:
    """Lower bound of the p-norm of non-negative vectors given column-wise (witness values only).

    Computed in float and lowered by Higham's ``gamma_(n+4)`` relative (the ratios,
    squares, an n-term sum, the root and the product each err by at most one
    rounding; an underflowed square errs by less than 2^-1074 against a sum >= 1),
    and never below the largest component, which is exact.
    """
    with np.errstate(all="ignore"):
        top = mig.max(axis=0)
        if p == math.inf:
            return top
        n = mig.shape[0]
        if p == 1.0:
            total = mig.sum(axis=0)
        else:
            scale = np.where((top > 0) & np.isfinite(top), top, 1.0)
            total = scale * np.sqrt(((mig / scale) ** 2).sum(axis=0))
        out = total * (1.0 - 2.0 * gamma(n + 4))
        return np.maximum(np.where(np.isfinite(out), out, 0.0), top)


def _norm_lower_of(lo: np.ndarray, hi: np.ndarray, p: float) -> np.ndarray:
    """Proven lower bound of ``||y||_p`` from enclosures ``[lo, hi]`` (components, points); -inf where one is missing."""
    mig = np.where(lo > 0, lo, np.where(hi < 0, -hi, 0.0))
    missing = ~(np.isfinite(lo) & np.isfinite(hi)).all(axis=0)
    return np.where(missing, -np.inf, _norm_lower(mig, p))


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
    """Refuse (NotLipschitzError, naming it) a possibly discontinuous primitive not proven continuous on the box."""
    tape = Tape(list(fn.symbols))
    root = tape.add_output(fn.expr)
    lo, hi = _box_arrays(fn)
    found = possible_jump(tape, root, lo, hi)
    if found is not None:
        node, reason = found
        raise NotLipschitzError(reason, tape.describe(node), tape.fields_of(node))


#: cap on the boxes kept while proving that f is defined on the whole box
_DOMAIN_MAX_BOXES = 200_000


def _require_defined(fn: RecordFunction, time_budget: float) -> None:
    """Refuse (UnboundedError naming the sub-expression) unless ``f`` is proven defined and finite on the box.

    A Lipschitz bound is a statement about ``f``: a finite gradient formula says
    nothing where ``f`` itself is undefined (``log(-1 - x)``, whose derivative
    ``1/(1 + x)`` is finite). Boxes whose enclosure of ``f`` fails are bisected
    until every one is enclosed; a failure at a box's centre *point* (or one that
    persists at 2^-40 of the root width, or past the time or box budget) refuses.
    """
    tape = Tape(list(fn.symbols))
    root = tape.add_output(fn.expr)
    evaluator = iv.IntervalEvaluator(tape)
    lo, hi = _box_arrays(fn)
    width = hi - lo
    splittable = width > 0
    start = time.perf_counter()
    blo, bhi = lo[None, :], hi[None, :]

    def refuse(node: int) -> UnboundedError:
        reason = iv.REASONS.get(tape.nodes[node].op, iv.OVERFLOW)
        return UnboundedError(f"f is not proven defined and finite on the whole box ({reason})", tape.describe(node),
                              tape.fields_of(node))

    while blo.shape[0]:
        mid = centres(blo, bhi)
        _, _, B = evaluator.evaluate(np.vstack([blo, mid]), np.vstack([bhi, mid]))
        nb = blo.shape[0]
        box_bad, point_bad = B[root][:nb], B[root][nb:]
        if (point_bad >= 0).any():
            raise refuse(int(point_bad[point_bad >= 0][0]))
        keep = box_bad >= 0
        if not keep.any():
            return
        blo, bhi, mid, nodes = blo[keep], bhi[keep], mid[keep], box_bad[keep]
        rel = np.where(splittable, (bhi - blo) / np.where(splittable, width, 1.0), 0.0)
        if (not (rel > _MIN_RELATIVE_WIDTH).any(axis=1).all() or time.perf_counter() - start > time_budget
                or 2 * blo.shape[0] > _DOMAIN_MAX_BOXES):
            raise refuse(int(nodes[0]))
        d = np.argmax(rel, axis=1)
        rows = np.arange(blo.shape[0])
        cut = mid[rows, d]
        left_hi, right_lo = bhi.copy(), blo.copy()
        left_hi[rows, d] = cut
        right_lo[rows, d] = cut
        blo, bhi = np.vstack([blo, right_lo]), np.vstack([left_hi, bhi])


def _infinite_slope(fn: RecordFunction, err: UnboundedError) -> UnboundedError | None:
    """When the derivative failed at a negative fractional power ``u**(-a)``: the user's root ``sqrt(u)``
    (or ``u**p``, 0 < p < 1) whose argument reaches 0 on the box, as the error to raise instead."""
    failed = getattr(err, "source_expr", None)
    if not isinstance(failed, sympy.Basic):
        return None
    singular = {p.base for p in failed.atoms(sympy.Pow) if p.exp.is_number and p.exp.is_negative and not p.exp.is_integer}
    if not singular:
        return None
    tape = Tape(list(fn.symbols))
    root = tape.add_output(fn.expr)
    lo, hi = _box_arrays(fn)
    L, _, _ = iv.IntervalEvaluator(tape).evaluate(lo[None, :], hi[None, :])
    for idx in range(root + 1):
        node = tape.nodes[idx]
        is_root = node.op == "sqrt" or (node.op == "powr" and node.payload[0] > 0 and node.payload[1] < 1)
        if not is_root:
            continue
        arg = node.args[0]
        if tape.nodes[arg].source in singular and L[arg][0] <= 0:
            return UnboundedError(
                "its slope is unbounded where its argument reaches 0 inside the box, so no finite Lipschitz bound "
                "exists for it (and none could be proven for the function)",
                tape.describe(idx), tape.fields_of(idx),
            )
    return None


def _maximize_gradient(fn: RecordFunction, objective: GradientObjective, **kwargs) -> MaxResult:
    lo, hi = _box_arrays(fn)
    try:
        return maximize(objective, lo, hi, **kwargs)
    except UnboundedError as err:
        better = _infinite_slope(fn, err)
        if better is None:
            raise
        raise better from err


def certify_lipschitz(fn: RecordFunction, norm: float = 2.0, tolerance: float = 1e-3, time_budget: float = 2.0) -> BoundCertificate:
    """Certified ``K >= sup ||grad f||_norm`` over the box, with the best witness found."""
    _require_continuous(fn)
    _require_defined(fn, time_budget)
    res = _maximize_gradient(fn, GradientObjective(fn, norm), tolerance=tolerance, time_budget=time_budget)
    label = {1.0: "1", 2.0: "2", math.inf: "inf"}[norm]
    return BoundCertificate(
        quantity=f"sup ||grad {fn.name}||_{label}", upper=res.upper,
        witness=Witness(_point(fn, res.witness_point), res.witness_value), box=_box_dict(fn), norm=norm,
        converged=res.converged, boxes=res.boxes, elapsed=res.elapsed, tolerance=tolerance,
    )


def certify_partial(fn: RecordFunction, index: int, tolerance: float = 1e-3, time_budget: float = 1.0) -> BoundCertificate:
    """Certified ``sup |df/dx_index|`` over the box: the sensitivity to one field alone."""
    _require_continuous(fn)
    _require_defined(fn, time_budget)
    res = _maximize_gradient(fn, GradientObjective(fn, math.inf, component=index), tolerance=tolerance,
                             time_budget=time_budget)
    name = fn.names[index]
    return BoundCertificate(
        quantity=f"sup |d{fn.name}/d{name}|", upper=res.upper,
        witness=Witness(_point(fn, res.witness_point), res.witness_value), box=_box_dict(fn), norm=None,
        converged=res.converged, boxes=res.boxes, elapsed=res.elapsed, tolerance=tolerance,
    )
