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
from opendp_hybridad.analysis.network import SlopeVertices
from opendp_hybridad.analysis.rounding import gamma
from opendp_hybridad.analysis.smoothness import JUMP, OP_CLASS, possible_jump, smooth_masks, statically_smooth
from opendp_hybridad.analysis.symmetry import symmetric_groups
from opendp_hybridad.analysis.tape import Tape
from opendp_hybridad.compile.codegen import numpy_callable
from opendp_hybridad.errors import DeclarationError, NotLipschitzError, SoundnessError, UnboundedError
from opendp_hybridad.symbolic.functions import sigmoid, softplus, to_sympy

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction


# -- objectives ---------------------------------------------------------------------
class _Enclosure:
    """Natural ∩ mean-value enclosures of outputs ``y`` over boxes.

    ``rows[j][k]`` is the derivative of ``y[j]`` with respect to field k (a sympy
    expression, possibly 0). The mean-value form of ``y[j]`` is used on a box only
    where ``y[j]``'s own expression is proven smooth on that box.
    """

    def __init__(self, fn: RecordFunction, outputs: list[sympy.Expr], rows: list[list[sympy.Expr]],
                 built: tuple[Tape, list[int], list[list[int | None]]] | None = None, rewrite: bool = True):
        self.fn = fn
        self.n = len(fn.names)
        if built is not None:  # the outputs and their derivatives already on a tape (:mod:`.derivatives`)
            self.tape, self.y, self.d = built
        else:
            self.tape = Tape(list(fn.symbols), rewrite=rewrite)
            self.y = [self.tape.add_output(e) for e in outputs]
            self.d = []
            for row in rows:
                self.d.append([None if to_sympy(x, "a derivative") == 0 else self.tape.add_output(x) for x in row])
        self.evaluator = iv.IntervalEvaluator(self.tape)
        self._static = statically_smooth(self.tape)
        self._points: iv.IntervalEvaluator | None = None
        #: the node enclosures (box rows) of the last ``enclose``, for the slope-vertex bound (:mod:`.network`)
        self.boxes_L: list[np.ndarray] = []
        self.boxes_H: list[np.ndarray] = []

    def enclose(self, lo: np.ndarray, hi: np.ndarray, derivatives: bool = False) -> tuple[np.ndarray, ...]:
        """Returns ylo, yhi (outputs, boxes), bad (outputs, boxes), derivative magnitudes (outputs, boxes, n),
        and the point enclosures of the outputs at the box centres, clo, chi (outputs, boxes).

        With ``derivatives``: also the derivative enclosures dlo, dhi (outputs, boxes, n; [0, 0] where the
        derivative is identically 0) and ``smooth`` (outputs, boxes): True where the output is proven
        C-infinity on the box and every derivative enclosure is finite (where the mean-value theorem applies).
        """
        nb = lo.shape[0]
        centre = centres(lo, hi)
        L, H, B = self.evaluator.evaluate(np.vstack([lo, centre]), np.vstack([hi, centre]))
        self.boxes_L = [x[:nb] for x in L]
        self.boxes_H = [x[:nb] for x in H]
        smooth = smooth_masks(self.tape, self.y, L, H, rows=slice(0, nb), static=self._static)
        m = len(self.y)
        ylo = np.empty((m, nb))
        yhi = np.empty((m, nb))
        clo = np.empty((m, nb))
        chi = np.empty((m, nb))
        bad = np.empty((m, nb), dtype=np.int64)
        dmag = np.zeros((m, nb, self.n))
        if derivatives:
            dlo_all = np.zeros((m, nb, self.n))
            dhi_all = np.zeros((m, nb, self.n))
            ok_all = np.zeros((m, nb), dtype=bool)
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
                    if derivatives:
                        dlo_all[j, :, k], dhi_all[j, :, k] = d_lo, d_hi
                    dmag[j, :, k] = np.where(d_bad < 0, np.maximum(np.abs(d_lo), np.abs(d_hi)), np.inf) * (hi[:, k] - lo[:, k])
                    t_lo, t_hi = iv.mul(d_lo, d_hi, dx_lo[:, k], dx_hi[:, k])
                    mv_lo, mv_hi = iv.add(mv_lo, mv_hi, t_lo, t_hi)
                mv_ok &= np.isfinite(mv_lo) & np.isfinite(mv_hi)
                ylo[j] = np.where(mv_ok, np.maximum(nat_lo, mv_lo), nat_lo)
                yhi[j] = np.where(mv_ok, np.minimum(nat_hi, mv_hi), nat_hi)
                bad[j] = nat_bad
                if derivatives:
                    ok_all[j] = mv_ok & (nat_bad < 0)
        if derivatives:
            return ylo, yhi, bad, dmag, clo, chi, dlo_all, dhi_all, ok_all
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

    def __init__(self, fn: RecordFunction, sign: float, rewrite: bool = True):
        grad = list(fn.gradient().values())
        self.sign = sign
        self.enc = _Enclosure(fn, [fn.expr], [grad], rewrite=rewrite)
        self._f = numpy_callable([fn.expr], list(fn.symbols))

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> BoxBounds:
        ylo, yhi, bad, dmag, clo, chi, dlo, dhi, ok = self.enc.enclose(lo, hi, derivatives=True)
        upper = yhi[0] if self.sign > 0 else -ylo[0]
        centre = clo[0] if self.sign > 0 else -chi[0]
        # the slope of sign * f is sign * D: monotone directions collapse the box to a face
        s_lo, s_hi = (dlo[0], dhi[0]) if self.sign > 0 else (-dhi[0], -dlo[0])
        shrink = _monotone_directions(lo, hi, s_lo, s_hi, ok[0] & (bad[0] < 0))
        return BoxBounds(upper, bad[0], dmag[0], centre, shrink)

    def value(self, points: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self.sign * self._f(*_columns(points))[0]

    def lower_bound(self, points: np.ndarray) -> np.ndarray:
        lo, hi = self.enc.at_points(points)
        return lo[0] if self.sign > 0 else -hi[0]

    def explain(self, node: int) -> UnboundedError:
        return self.enc.explain(node)


#: networks (an activation op, and a tape of at least this many nodes) get their derivatives on the tape
#: (:mod:`.derivatives`): sympy's tree derivatives repeat every hidden unit's slope in each of the n^2
#: Hessian entries, and cost most of the two seconds (1.8 s for the 6-4-3-1 network's Hessian). Other
#: functions keep sympy's: cheap there, simplified (cancelled terms, collected factors), and lowered
#: through the tape's rewrites (softmax ratios), which the chain rule on the tape does not produce
TAPE_DERIVATIVES_MIN_NODES = 40
_ACTIVATIONS = iv.ACTIVATION_OPS


def _derivative_tape(fn: RecordFunction, component: int | None):
    from opendp_hybridad.analysis.derivatives import derivative_tape

    probe = Tape(list(fn.symbols))
    root = probe.add_output(fn.expr)
    if root + 1 < TAPE_DERIVATIVES_MIN_NODES or not any(probe.nodes[i].op in _ACTIVATIONS for i in range(root + 1)):
        return None
    return derivative_tape(fn, component)


class GradientObjective:
    """Maximise ``||grad f||_p`` (``component`` None) or ``|df/dx_j|`` (``component`` j)."""

    def __init__(self, fn: RecordFunction, norm: float = 2.0, component: int | None = None, tape_derivatives: bool = True,
                 rewrite: bool = True):
        self.norm = norm
        self.component = component
        self.rewrite = rewrite
        built = _derivative_tape(fn, component) if tape_derivatives else None
        if built is not None:
            from opendp_hybridad.analysis.derivatives import FloatTape

            self.enc = _Enclosure(fn, [], [], built=built)
            self._g = FloatTape(built[0], built[1])
            self.vertices = SlopeVertices.detect(self.enc.tape, self.enc.tape.outputs[0])
            return
        self.vertices = None
        grad = list(fn.gradient().values())
        hess = [list(r) for r in fn.hessian().tolist()]
        if component is None:
            self.enc = _Enclosure(fn, grad, hess, rewrite=rewrite)
        else:
            self.enc = _Enclosure(fn, [grad[component]], [hess[component]], rewrite=rewrite)
        self._g = numpy_callable(grad if component is None else [grad[component]], list(fn.symbols))

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> BoxBounds:
        squared = self.norm == 2.0 or self.component is not None  # the objective is sqrt of a smooth g
        if squared:
            ylo, yhi, bad, dmag, clo, chi, dlo, dhi, ok = self.enc.enclose(lo, hi, derivatives=True)
        else:
            ylo, yhi, bad, dmag, clo, chi = self.enc.enclose(lo, hi)
        mag = np.maximum(np.abs(ylo), np.abs(yhi))  # (components, boxes)
        upper = _norm_upper(mag, self.norm)
        if self.vertices is not None:
            # the gradient is multilinear in the units' slopes: its norm's sup over the box of slopes is at a vertex
            s_lo, s_hi = self.vertices.slopes(self.enc.boxes_L, self.enc.boxes_H)
            vm = self.vertices.magnitudes(s_lo, s_hi)  # (boxes, vertices, n)
            if self.component is not None:
                vm = vm[:, :, [self.component]]
            nbx, nv, _ = vm.shape
            comps = vm.reshape(nbx * nv, -1).T
            vertex_upper = _norm_upper(comps, self.norm).reshape(nbx, nv).max(axis=1)
            upper = np.minimum(upper, vertex_upper)
        anybad = np.where((bad >= 0).any(axis=0), bad.max(axis=0), -1)
        # split where the bound of the largest components loosens most
        with np.errstate(all="ignore"):
            score = (mag[:, :, None] * dmag).sum(axis=0) if mag.shape[0] > 1 else dmag[0]
        shrink = None
        if squared:
            g_upper, slope_lo, slope_hi, contribution, valid = _squared_norm_mean_value(
                lo, hi, ylo, yhi, clo, chi, dlo, dhi, ok & (anybad < 0)[None, :])
            with np.errstate(all="ignore"):
                root = np.where(g_upper > 0, iv.up(np.sqrt(np.maximum(g_upper, 0.0))), 0.0)
            upper = np.where(valid, np.minimum(upper, root), upper)
            shrink = _monotone_directions(lo, hi, slope_lo, slope_hi, valid)
            score = np.where(valid[:, None], contribution, score)
        return BoxBounds(upper, anybad, score, _norm_lower_of(clo, chi, self.norm), shrink)

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


def _squared_norm_mean_value(lo: np.ndarray, hi: np.ndarray, ylo: np.ndarray, yhi: np.ndarray, clo: np.ndarray,
                             chi: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean-value form of ``g = sum_j y_j^2`` (``y`` the gradient, or one component of it) on each box.

    On a box where every ``y_j`` is proven C-infinity with finite derivative enclosures ``D_jk``
    (``ok``), ``g`` is C^1 with ``dg/dx_k = 2 sum_j y_j dy_j/dx_k``, so by the mean-value theorem on
    the segment from the centre ``c`` (the box is convex) ``g(x) <= g(c) + sum_k S_k (x_k - c_k)`` with
    ``S_k = 2 sum_j Y_j D_jk`` an interval enclosure of ``dg/dx_k`` over the box (Moore, Kearfott and
    Cloud, *Introduction to Interval Analysis*, 2009, section 6.4, the mean-value form). Every
    operation is outward-rounded (``interval.add`` / ``interval.mul``).

    Returns the upper bound of ``g`` (boxes), the slope enclosures ``S`` (boxes, n), each direction's
    share of the bound ``sup S_k (X_k - c_k)`` (the split score) and where all of it is valid.
    """
    m, nb = ylo.shape
    centre = centres(lo, hi)
    with np.errstate(all="ignore"):
        cmag = np.maximum(np.abs(clo), np.abs(chi))  # |y_j(c)| <= cmag
        g_lo = np.zeros(nb)
        g_hi = np.zeros(nb)
        for j in range(m):
            sq_lo, sq_hi = iv.mul(cmag[j], cmag[j], cmag[j], cmag[j])
            g_lo, g_hi = iv.add(g_lo, g_hi, sq_lo, sq_hi)
        s_lo = np.zeros((nb, lo.shape[1]))
        s_hi = np.zeros((nb, lo.shape[1]))
        for j in range(m):
            p_lo, p_hi = iv.mul(ylo[j][:, None], yhi[j][:, None], dlo[j], dhi[j])
            s_lo, s_hi = iv.add(s_lo, s_hi, p_lo, p_hi)
        s_lo, s_hi = 2.0 * s_lo, 2.0 * s_hi  # exact (a power of two; an overflow is inf, not valid below)
        dx_lo, dx_hi = iv.add(lo, hi, -centre, -centre)
        t_lo, t_hi = iv.mul(s_lo, s_hi, dx_lo, dx_hi)
        acc_lo, acc_hi = g_lo, g_hi
        for k in range(lo.shape[1]):
            acc_lo, acc_hi = iv.add(acc_lo, acc_hi, t_lo[:, k], t_hi[:, k])
        valid = ok.all(axis=0) & np.isfinite(acc_hi) & np.isfinite(s_lo).all(axis=1) & np.isfinite(s_hi).all(axis=1)
    return acc_hi, s_lo, s_hi, np.where(np.isfinite(t_hi), np.maximum(t_hi, 0.0), np.inf), valid


def _monotone_directions(lo: np.ndarray, hi: np.ndarray, s_lo: np.ndarray, s_hi: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per box and direction: +1 where ``g`` is proven non-decreasing in ``x_k`` on the box, -1 non-increasing, else 0.

    Where the enclosure ``S_k`` of ``dg/dx_k`` over the (C^1, ``valid``) box is ``>= 0``, for every x in the
    box ``g(x) <= g(x with x_k = hi_k)`` (mean-value theorem on the segment, which stays in the box), so
    the supremum over the box is the supremum over that face: the box collapses to it (a monotonicity
    test, Hansen and Walster, *Global Optimization Using Interval Analysis*, 2004, section 12.4).
    """
    width = hi > lo
    up_ = valid[:, None] & width & (s_lo >= 0)
    down_ = valid[:, None] & width & (s_hi <= 0) & ~up_
    return up_.astype(np.int8) - down_.astype(np.int8)


# -- public entry points -----------------------------------------------------------------
def _box_dict(fn: RecordFunction) -> dict[str, tuple[float, float]]:
    return {n: (f.lower, f.upper) for n, f in fn.schema.fields.items()}


def _point(fn: RecordFunction, x: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(fn.names, x, strict=True)}


def certify_range(fn: RecordFunction, tolerance: float = 1e-3, time_budget: float = 2.0) -> RangeCertificate:
    """Certified ``[min f, max f]`` over the box (each end proven; witnesses at the extremes found)."""
    lo, hi = _box_arrays(fn)
    atol = 1e-12
    groups = _symmetry(fn)
    top = _with_plain_fallback(lambda rewrite: RangeObjective(fn, +1.0, rewrite=rewrite), lo, hi, tolerance=tolerance,
                               atol=atol, time_budget=time_budget / 2, symmetric=groups)
    bottom = _with_plain_fallback(lambda rewrite: RangeObjective(fn, -1.0, rewrite=rewrite), lo, hi, tolerance=tolerance,
                                  atol=atol, time_budget=time_budget / 2, symmetric=groups)
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


def _with_plain_fallback(make, lo: np.ndarray, hi: np.ndarray, **kwargs) -> MaxResult:
    """``maximize(make(rewrite=True))``, and where that cannot enclose (an ``exp(v - w)`` of the tape's
    softmax rewrite overflowing where ``exp(v)`` does not), the same on the plain tape: a rewrite may
    tighten a certificate, never refuse one the plain tape gives."""
    objective = make(True)
    try:
        return maximize(objective, lo, hi, **kwargs)
    except UnboundedError:
        if not objective.enc.tape.rewritten:  # the plain tape already: the same failure again
            raise
        return maximize(make(False), lo, hi, **kwargs)


def _symmetry(fn: RecordFunction, fixed: int | None = None) -> list[list[int]]:
    """The field groups ``f`` is proven symmetric in (:mod:`.symmetry`), none containing ``fixed``."""
    return symmetric_groups(fn.expr, list(fn.symbols), [fn.schema.fields[n] for n in fn.names], fixed)


def _maximize_gradient(fn: RecordFunction, objective: GradientObjective, **kwargs) -> MaxResult:
    lo, hi = _box_arrays(fn)
    # ||grad f||_p is invariant where f is; |df/dx_j| where the permutation fixes j
    if "symmetric" not in kwargs:
        start = time.perf_counter()
        kwargs["symmetric"] = _symmetry(fn, objective.component)
        if "time_budget" in kwargs:  # the check is part of the certificate's budget
            kwargs["time_budget"] = max(kwargs["time_budget"] - (time.perf_counter() - start), 0.0)
    try:
        if not objective.rewrite:
            return maximize(objective, lo, hi, **kwargs)
        return _with_plain_fallback(lambda rewrite: objective if rewrite else GradientObjective(
            fn, objective.norm, objective.component, rewrite=False), lo, hi, **kwargs)
    except UnboundedError as err:
        better = _infinite_slope(fn, err)
        if better is None:
            raise
        raise better from err


def _composed(fn: RecordFunction, norm: float | None, component: int | None, tolerance: float,
              time_budget: float) -> tuple[float, np.ndarray, float, bool, int] | None:
    """K (or ``sup |df/dx_component|``) through an affine or isotropic-quadratic inner expression
    (:mod:`.composition`): the proven upper bound, a witness point with its proven lower bound, whether
    they meet the tolerance, and the boxes used; None where ``f`` has no such form or the 1-d bound fails."""
    from opendp_hybridad.analysis import composition as comp

    b = comp.find_bottleneck(fn)
    if b is None or (b.kind == "radial" and component is None and norm != 2.0):
        return None
    if b.kind == "radial" and component is not None:
        return _radial_partial(fn, b, component, tolerance, time_budget)
    span = comp.inner_range(fn, b)
    if span is None:
        return None
    # the 1-d problem converges quickly: a tighter tolerance than the caller's keeps the product tight
    sub_tol = tolerance / 8
    try:
        if b.kind == "affine":
            weights = b.weights if component is None else [b.weights[component]]
            scale = comp.weight_norm_up(weights, math.inf if component is not None else norm)
            if scale == 0.0:
                return None  # f does not depend on this field: the general path proves 0
            outer = comp.outer_function(fn, b, span, squared_radial=False)
            sub = _lipschitz(outer, 2.0, sub_tol, time_budget, compose=False)
            upper = comp.affine_upper(sub.upper, scale)
            target = sub.witness.point["t"]
            boxes, converged = sub.boxes, sub.converged
        else:
            outer = comp.outer_function(fn, b, span, squared_radial=True)
            lo, hi = _box_arrays(outer)
            res = maximize(RangeObjective(outer, +1.0), lo, hi, tolerance=sub_tol, atol=1e-300, time_budget=time_budget)
            upper = comp.radial_upper(res.upper)
            target = float(res.witness_point[0])
            boxes, converged = res.boxes, res.converged
    except (UnboundedError, DeclarationError):  # no 1-d bound (U not declarable, psi not enclosable): the general path
        return None
    if not math.isfinite(upper):
        return None
    point = comp.witness_point(fn, b, target)
    grad = list(fn.gradient().values())
    outputs = grad if component is None else [grad[component]]
    enc = _Enclosure(fn, outputs, [[0] * len(fn.names) for _ in outputs])
    wlo, whi = enc.at_points(point[None, :])
    value = float(_norm_lower_of(wlo, whi, math.inf if component is not None else norm)[0])
    if value > upper:
        raise SoundnessError(
            f"internal check failed: a witness ({value!r}) exceeds the certified bound ({upper!r}); "
            "the certificate is refused (please report this expression)"
        )
    converged = converged and upper - value <= max(tolerance * abs(value), 1e-12)
    return upper, point, value, converged, boxes


def _separable(fn: RecordFunction):
    """The bound of :mod:`.separable` (``K`` in the 2-norm, and a candidate witness) where ``f`` is an outer
    function of a sum of one-field terms; None otherwise."""
    from opendp_hybridad.analysis import separable

    found = separable.find_separable(fn)
    return None if found is None else separable.separable_bound(fn, found)


def _radial_partial(fn: RecordFunction, b, index: int, tolerance: float,
                    time_budget: float) -> tuple[float, np.ndarray, float, bool, int] | None:
    """``sup |df/dx_index|`` for ``f = psi(a sum (x_i - m_i)^2 + c)``: a 2-d range (see
    :func:`.composition.radial_partial_function`), both ends, since ``|h| = max(h, -h)``."""
    from opendp_hybridad.analysis import composition as comp

    return _partial_through(fn, index, tolerance, time_budget, lambda: comp.radial_partial_function(fn, b, index),
                            lambda s_value, r_value: comp.radial_partial_witness(fn, b, index, s_value, r_value))


def _separable_partial(fn: RecordFunction, index: int, tolerance: float,
                       time_budget: float) -> tuple[float, np.ndarray, float, bool, int] | None:
    """``sup |df/dx_index|`` for ``f = psi(c + sum_j phi_j(x_j))``: a 2-d range (see
    :func:`.separable.partial_function`), both ends; None for any other ``f``."""
    from opendp_hybridad.analysis import separable

    found = separable.find_separable(fn)
    if found is None:
        return None
    return _partial_through(fn, index, tolerance, time_budget, lambda: separable.partial_function(fn, found, index),
                            lambda s_value, r_value: separable.partial_witness(fn, found, index, s_value, r_value))


def _partial_through(fn: RecordFunction, index: int, tolerance: float, time_budget: float, make_h, witness_of
                     ) -> tuple[float, np.ndarray, float, bool, int] | None:
    """``sup |df/dx_index| <= sup |h|`` for a 2-d ``h(s, r)`` whose values include every value of the partial
    (``make_h()``; None where there is none): both ends of h's certified range, and a witness point of
    ``f``'s box (``witness_of(s, r)``) valued by its point enclosure."""
    try:
        h = make_h()
        if h is None:
            return None
        lo, hi = _box_arrays(h)
        sub_tol = tolerance / 8
        top = maximize(RangeObjective(h, +1.0), lo, hi, tolerance=sub_tol, atol=1e-300, time_budget=time_budget / 2)
        # sup |h| = max(sup h, sup -h): the second end needs only to be settled to within the tolerance of the
        # first's witness (an absolute tolerance; its own relative one can be out of reach near 0)
        bottom = maximize(RangeObjective(h, -1.0), lo, hi, tolerance=sub_tol, atol=max(sub_tol * abs(top.witness_value), 1e-300),
                          time_budget=time_budget / 2)
    except (UnboundedError, DeclarationError):  # no 1-d bound (U not declarable, psi not enclosable): the general path
        return None
    upper = max(top.upper, bottom.upper)
    if not math.isfinite(upper):
        return None
    best = top if top.witness_value >= bottom.witness_value else bottom
    point = witness_of(float(best.witness_point[0]), float(best.witness_point[1]))
    grad = list(fn.gradient().values())
    enc = _Enclosure(fn, [grad[index]], [[0] * len(fn.names)])
    wlo, whi = enc.at_points(point[None, :])
    value = float(_norm_lower_of(wlo, whi, math.inf)[0])
    if value > upper:
        raise SoundnessError(
            f"internal check failed: a witness ({value!r}) exceeds the certified bound ({upper!r}); "
            "the certificate is refused (please report this expression)"
        )
    converged = upper - value <= max(tolerance * abs(value), 1e-12)  # the bound meets the witness: nothing to refine
    return upper, point, value, converged, top.boxes + bottom.boxes


def _quadratic(fn: RecordFunction, norm: float, component: int | None) -> tuple[float, np.ndarray, float, bool, int] | None:
    """K (or ``sup |df/dx_component|``) of a polynomial of degree <= 2 (affine gradient): the maximum
    of a convex function over the box's vertices (:mod:`.vertex`); None for any other ``f``."""
    from opendp_hybridad.analysis import vertex

    g = vertex.affine_gradient(fn)
    if g is None:
        return None
    lo, hi = _box_arrays(fn)
    res = vertex.certify_affine(g, lo, hi, norm, component)
    if res is None:
        return None
    if res.value > res.upper:
        raise SoundnessError(
            f"internal check failed: a witness ({res.value!r}) exceeds the certified bound ({res.upper!r}); "
            "the certificate is refused (please report this expression)"
        )
    return res.upper, res.point, res.value, True, res.vertices


#: the share of a certificate's remaining budget given to the search over a network's first-layer arguments
#: (:mod:`.network_zspace`); the search over the fields gets the rest, with its bound as a cap, and finds the witness
FIRST_LAYER_SHARE = 0.6


def _first_layer_cap(fn: RecordFunction, objective: GradientObjective, tolerance: float,
                     time_budget: float) -> tuple[float, int] | None:
    """A proven bound on ``sup ||grad f||_2`` from branch and bound over the first layer's arguments, and its box
    count (:mod:`.network_zspace`); None where ``f`` is no network narrowing at its first layer."""
    from opendp_hybridad.analysis.network_zspace import FirstLayerObjective

    lo, hi = _box_arrays(fn)
    vertices = getattr(objective, "vertices", None)
    if vertices is None:  # (a small network keeps sympy's derivatives, without the vertex bound: its structure here)
        if not fn.expr.has(sympy.tanh, sigmoid, softplus):
            return None
        tape = Tape(list(fn.symbols))
        vertices = SlopeVertices.detect(tape, tape.add_output(fn.expr))
    z = FirstLayerObjective.detect(vertices, lo, hi)
    if z is None or time_budget <= 0:
        return None
    # a witness's proven value, so the search over z can stop once its bound is within the tolerance of it
    points = lo + np.random.default_rng(0).random((256, len(lo))) * (hi - lo)
    with np.errstate(all="ignore"):
        values = np.where(np.isfinite(v := objective.value(points)), v, -np.inf)
    known = float(objective.lower_bound(points[[int(np.argmax(values))]])[0])
    try:
        res = maximize(z, z.root_lo, z.root_hi, tolerance=tolerance, time_budget=time_budget, polish=False,
                       known_lower=known if math.isfinite(known) else -math.inf)
    except UnboundedError:
        return None
    return (res.upper, res.boxes) if math.isfinite(res.upper) else None


#: kept from a certificate's budget for what follows the search (the last compass step of the witness polish,
#: the polished witness's proof, the certificate itself): 10-25 ms on the issue's networks
FINISH_SECONDS = 0.04


def _lipschitz(fn: RecordFunction, norm: float, tolerance: float, time_budget: float, compose: bool = True) -> BoundCertificate:
    start = time.perf_counter()
    # the fingerprint stamped on the certificate (a srepr of f: 0.05-0.1 s for a network) is computed inside
    # the budget, so that the search leaves time for it
    getattr(fn, "fingerprint", None)
    _require_continuous(fn)
    _require_defined(fn, time_budget)
    label = {1.0: "1", 2.0: "2", math.inf: "inf"}[norm]
    quadratic = _quadratic(fn, norm, None)
    if quadratic is not None:  # exact up to rounding: no branch and bound
        upper, point, value, converged, boxes = quadratic
        return BoundCertificate(
            quantity=f"sup ||grad {fn.name}||_{label}", upper=upper,
            witness=Witness(_point(fn, point), value), box=_box_dict(fn), norm=norm,
            converged=converged, boxes=boxes, elapsed=time.perf_counter() - start, tolerance=tolerance,
        )
    composed = _composed(fn, norm, None, tolerance, time_budget / 4) if compose else None
    if composed is not None and composed[3]:
        upper, point, value, converged, boxes = composed
    else:
        # a separable sum under an outer function: a proven cap for the search, and a start for its witness
        separable = _separable(fn) if compose and norm == 2.0 else None
        extra = {} if separable is None else {"cap": separable.upper, "points": separable.point[None, :]}
        objective = GradientObjective(fn, norm)
        first_boxes = 0
        if compose and norm == 2.0:  # a network narrowing at its first layer: a proven cap from the search over z
            left = max(time_budget - (time.perf_counter() - start) - FINISH_SECONDS, 0.0)
            first = _first_layer_cap(fn, objective, tolerance, FIRST_LAYER_SHARE * left)
            if first is not None:
                extra["cap"] = min(extra.get("cap", math.inf), first[0])
                first_boxes = first[1]
        res = _maximize_gradient(fn, objective, tolerance=tolerance,
                                 time_budget=max(time_budget - (time.perf_counter() - start) - FINISH_SECONDS, 0.0), **extra)
        upper, point, value, converged, boxes = res.upper, res.witness_point, res.witness_value, res.converged, res.boxes
        boxes += first_boxes
        if composed is not None:  # both are proven bounds: keep the smaller, and the larger witness
            upper = min(upper, composed[0])
            if composed[2] > value:
                point, value = composed[1], composed[2]
            boxes += composed[4]
            converged = converged or upper - value <= max(tolerance * abs(value), 1e-12)
    return BoundCertificate(
        quantity=f"sup ||grad {fn.name}||_{label}", upper=upper,
        witness=Witness(_point(fn, point), value), box=_box_dict(fn), norm=norm,
        converged=converged, boxes=boxes, elapsed=time.perf_counter() - start, tolerance=tolerance,
    )


def certify_lipschitz(fn: RecordFunction, norm: float = 2.0, tolerance: float = 1e-3, time_budget: float = 2.0) -> BoundCertificate:
    """Certified ``K >= sup ||grad f||_norm`` over the box, with the best witness found.

    Where every field enters ``f`` through one affine or isotropic quadratic expression, K is first
    bounded through that 1-d form (:mod:`.composition`); otherwise, or where that bound is not within
    the tolerance, by branch and bound over the box (and the smaller of the two proven bounds is kept).
    """
    return _lipschitz(fn, norm, tolerance, time_budget)


def certify_partial(fn: RecordFunction, index: int, tolerance: float = 1e-3, time_budget: float = 1.0) -> BoundCertificate:
    """Certified ``sup |df/dx_index|`` over the box: the sensitivity to one field alone."""
    start = time.perf_counter()
    _require_continuous(fn)
    _require_defined(fn, time_budget)
    composed = _quadratic(fn, math.inf, index)
    if composed is None:
        composed = _composed(fn, None, index, tolerance, time_budget / 4)
    if composed is None:
        composed = _separable_partial(fn, index, tolerance, time_budget / 4)
    if composed is not None and composed[3]:
        upper, point, value, converged, boxes = composed
    else:
        res = _maximize_gradient(fn, GradientObjective(fn, math.inf, component=index), tolerance=tolerance,
                                 time_budget=max(time_budget - (time.perf_counter() - start) - FINISH_SECONDS, 0.0))
        upper, point, value, converged, boxes = res.upper, res.witness_point, res.witness_value, res.converged, res.boxes
        if composed is not None:
            upper = min(upper, composed[0])
            if composed[2] > value:
                point, value = composed[1], composed[2]
            boxes += composed[4]
            converged = converged or upper - value <= max(tolerance * abs(value), 1e-12)
    name = fn.names[index]
    return BoundCertificate(
        quantity=f"sup |d{fn.name}/d{name}|", upper=upper,
        witness=Witness(_point(fn, point), value), box=_box_dict(fn), norm=None,
        converged=converged, boxes=boxes, elapsed=time.perf_counter() - start, tolerance=tolerance,
    )
