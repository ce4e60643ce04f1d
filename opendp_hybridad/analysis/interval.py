"""Outward-rounded interval arithmetic, vectorised over many boxes at once.

Soundness argument (docs/soundness.md); the rounding rules and the facts
they rest on live in :mod:`opendp_hybridad.analysis.rounding`, the one home of
rounding constants:

* ``+``: IEEE 754 sums are correctly rounded and Knuth's TwoSum gives the exact error,
  so each end is rounded in its direction only when the sum was inexact (exact zeros
  stay exact: ``1 - x`` at ``x = 1``). A NaN TwoSum error (an overflow) steps anyway.
* ``* / sqrt x*x``: correctly rounded, so the next float outward (``up_array`` /
  ``down_array``) bounds the real result; a product with a zero factor is exactly 0,
  and a product whose real value has a known sign is not moved across 0 (so a product
  that underflows stays >= 0: ends never leave the set the real values can take).
* library functions (exp, log, tanh, pow, sigmoid, softplus): padded by
  ``libm_down_array`` / ``libm_up_array`` (``LIBM_PAD`` relative plus ``TINY``,
  rounded outward), then intersected with the function's known range.
* gradual underflow is required and checked (``check_gradual_underflow``).

A box whose enclosure cannot be computed (division by an interval that contains
0, log of a non-positive interval, overflow, a jump) is flagged in ``bad`` with
the index of the first node that failed, so callers can subdivide it or report
the sub-expression.
"""

from __future__ import annotations

import numpy as np

from opendp_hybridad.analysis.rounding import (
    TINY,
    check_gradual_underflow,
    down_array,
    libm_down_array,
    libm_up_array,
    up_array,
)
from opendp_hybridad.analysis.tape import Tape

#: reasons a node can fail, by op; anything non-finite is an overflow
REASONS = {
    "recip": "division by an interval that contains 0",
    "log": "log of an interval that reaches 0 or below",
    "sqrt": "sqrt of an interval that reaches below 0",
    "powr": "fractional power of an interval that reaches 0 or below",
    "dirac": "a jump (the derivative of a discontinuity) inside the box",
}
OVERFLOW = "overflow (the enclosure is not finite)"

#: the next float above / below, elementwise (the rounding module's; kept under these names for callers)
up = up_array
down = down_array


def _two_sum_err(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
    bb = s - a
    return (a - (s - bb)) + (b - bb)


def add(alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[alo, ahi] + [blo, bhi]``, each end rounded in its direction only when inexact.

    TwoSum (Knuth; Higham 2002 section 4.3) gives ``a + b - fl(a + b)`` exactly when no
    operation overflows. An end is kept only when that error shows it is already on
    the right side (``>= 0`` below, ``<= 0`` above); a NaN error (an overflow somewhere)
    steps it, which is sound: an overflowed end is infinite, or the next float toward
    the finite range, past which the real sum lies.
    """
    with np.errstate(all="ignore"):
        lo = alo + blo
        hi = ahi + bhi
        lo = np.where(_two_sum_err(alo, blo, lo) >= 0, lo, down_array(lo))
        hi = np.where(_two_sum_err(ahi, bhi, hi) <= 0, hi, up_array(hi))
    return lo, hi


def mul(alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[alo, ahi] * [blo, bhi]``: the four corner products, each moved one float outward.

    The real sign of each corner product is known exactly (the signs of its factors), so
    a lower end is not moved below 0 unless the product is negative, nor an upper end
    above 0 unless it is positive: a product with a zero factor stays exactly 0, and an
    underflowing product keeps its sign.
    """
    alo, ahi, blo, bhi = np.broadcast_arrays(alo, ahi, blo, bhi)
    x = np.stack((alo, alo, ahi, ahi))
    y = np.stack((blo, bhi, blo, bhi))
    with np.errstate(all="ignore"):
        p = x * y
        sign = np.sign(x) * np.sign(y)
        lo = np.maximum(down_array(p), np.where(sign >= 0, 0.0, -np.inf))
        hi = np.minimum(up_array(p), np.where(sign <= 0, 0.0, np.inf))
    return lo.min(axis=0), hi.max(axis=0)


def _powi(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi]^n`` for an integer ``n >= 2``: ``x*x`` correctly rounded, higher powers from libm, padded."""
    if n == 2:
        plo, phi = lo * lo, hi * hi
        plo_d, phi_d = down_array(plo), down_array(phi)
        plo_u, phi_u = up_array(plo), up_array(phi)
    else:
        plo, phi = np.power(lo, n), np.power(hi, n)
        plo_d, phi_d = libm_down_array(plo), libm_down_array(phi)
        plo_u, phi_u = libm_up_array(plo), libm_up_array(phi)
    # x^n is exactly 0 at 0; it keeps the sign of x (odd n) or is >= 0 (even n)
    plo_d, phi_d = np.where(lo == 0, 0.0, plo_d), np.where(hi == 0, 0.0, phi_d)
    plo_u, phi_u = np.where(lo == 0, 0.0, plo_u), np.where(hi == 0, 0.0, phi_u)
    if n % 2 == 1:
        return np.where(lo > 0, np.maximum(plo_d, 0.0), plo_d), np.where(hi < 0, np.minimum(phi_u, 0.0), phi_u)
    rlo = np.where(lo >= 0, plo_d, np.where(hi <= 0, phi_d, 0.0))
    rhi = np.where(lo >= 0, phi_u, np.where(hi <= 0, plo_u, np.maximum(plo_u, phi_u)))
    return np.maximum(rlo, 0.0), rhi


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function with small *relative* error everywhere (0.5(1 + tanh(x/2)) loses
    all relative accuracy for very negative x, which would break the relative padding)."""
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


#: the increasing activations :func:`activation` encloses
ACTIVATION_OPS = ("tanh", "sigmoid", "softplus")


def activation(op: str, a_lo: np.ndarray, a_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enclosure of an increasing activation (tanh, sigmoid, softplus) over ``[a_lo, a_hi]``: its values at the ends,
    padded outward for the library function's error (:data:`LIBM_PAD`), and clipped to its range."""
    if op == "tanh":
        return np.maximum(libm_down_array(np.tanh(a_lo)), -1.0), np.minimum(libm_up_array(np.tanh(a_hi)), 1.0)
    if op == "sigmoid":
        s_lo, s_hi = _sigmoid(a_lo), _sigmoid(a_hi)
        return np.maximum(libm_down_array(s_lo), 0.0), np.minimum(libm_up_array(s_hi), 1.0)
    if op == "softplus":
        return np.maximum(libm_down_array(np.logaddexp(0.0, a_lo)), 0.0), libm_up_array(np.logaddexp(0.0, a_hi))
    raise ValueError(f"not an activation: {op}")


class IntervalEvaluator:
    """Evaluates every node of a :class:`Tape` over a batch of boxes."""

    def __init__(self, tape: Tape):
        self.tape = tape

    def evaluate(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        within: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Enclose every node over boxes ``[lo[i], hi[i]]`` (arrays of shape (boxes, variables)).

        Returns per-node lower ends, upper ends and ``bad`` flags: -1 where the
        node is enclosed, else the index of the first node that could not be
        (its ends are then -inf and inf).

        ``within``: per-node enclosures (arrays broadcastable to ``(boxes,)``, e.g. the
        node enclosures of a box that contains every one of these boxes, from this
        evaluator). Each node is intersected with them before it is used: both contain
        the real value, so the intersection does too, and it never crosses a domain
        boundary that the containing box respects (a point then fails only where that
        box failed). An empty intersection would mean an unsound enclosure: raised.
        """
        check_gradual_underflow()
        nboxes = lo.shape[0]
        L: list[np.ndarray] = []
        H: list[np.ndarray] = []
        B: list[np.ndarray] = []
        with np.errstate(all="ignore"):
            for idx, node in enumerate(self.tape.nodes):
                if node.op == "piecewise":
                    rlo, rhi, bad = self._piecewise(node, L, H, B, nboxes)
                else:
                    bad = np.full(nboxes, -1, dtype=np.int64)
                    for a in node.args:
                        bad = np.where(bad < 0, B[a], bad)
                    rlo, rhi, invalid = self._node(node, L, H, lo, hi, nboxes)
                    if invalid is not None:
                        bad = np.where((bad < 0) & invalid, idx, bad)
                if within is not None:
                    rlo = np.maximum(rlo, within[0][idx])
                    rhi = np.minimum(rhi, within[1][idx])
                    if np.any((bad < 0) & (rlo > rhi)):
                        raise RuntimeError(f"node {idx} ({self.tape.describe(idx)}): enclosures do not meet")
                nonfinite = ~(np.isfinite(rlo) & np.isfinite(rhi))
                bad = np.where((bad < 0) & nonfinite, idx, bad)
                L.append(np.where(bad < 0, rlo, -np.inf))
                H.append(np.where(bad < 0, rhi, np.inf))
                B.append(bad)
        return L, H, B

    def reason(self, idx: int, lo: float, hi: float) -> str:
        op = self.tape.nodes[idx].op
        if op in REASONS and (np.isfinite(lo) or op == "dirac"):
            return REASONS[op]
        return REASONS.get(op, OVERFLOW)

    def _node(self, node, L, H, lo, hi, nboxes):
        op, args = node.op, node.args
        if op == "var":
            return lo[:, node.payload].copy(), hi[:, node.payload].copy(), None
        if op == "const":
            return np.full(nboxes, node.payload[0]), np.full(nboxes, node.payload[1]), None
        a_lo, a_hi = L[args[0]], H[args[0]]
        if op == "add":
            r = add(a_lo, a_hi, L[args[1]], H[args[1]])
            return r[0], r[1], None
        if op == "mul":
            r = mul(a_lo, a_hi, L[args[1]], H[args[1]])
            return r[0], r[1], None
        if op == "neg":
            return -a_hi, -a_lo, None
        if op == "recip":
            invalid = (a_lo <= 0) & (a_hi >= 0)
            return down(1.0 / a_hi), up(1.0 / a_lo), invalid
        if op == "powi":
            r = _powi(a_lo, a_hi, node.payload)
            return r[0], r[1], None
        if op == "sqrt":
            invalid = a_lo < 0
            rlo = np.sqrt(np.maximum(a_lo, 0.0))
            return np.where(rlo == 0, 0.0, down(rlo)), up(np.sqrt(a_hi)), invalid
        if op == "powr":
            plo, phi = node.payload
            invalid = (a_lo <= 0) if plo < 0 else (a_lo < 0)
            base_lo = np.maximum(a_lo, 0.0)
            corners = [np.power(b, p) for b in (base_lo, a_hi) for p in (plo, phi)]
            rlo = libm_down_array(np.minimum.reduce(corners))
            rhi = libm_up_array(np.maximum.reduce(corners))
            return np.maximum(rlo, 0.0), rhi, invalid
        if op == "exp":
            return np.maximum(libm_down_array(np.exp(a_lo)), 0.0), libm_up_array(np.exp(a_hi)), None
        if op == "log":
            invalid = a_lo <= 0
            return libm_down_array(np.log(np.maximum(a_lo, TINY))), libm_up_array(np.log(a_hi)), invalid
        if op in ACTIVATION_OPS:
            return (*activation(op, a_lo, a_hi), None)
        if op == "abs":
            rlo = np.where(a_lo >= 0, a_lo, np.where(a_hi <= 0, -a_hi, 0.0))
            rhi = np.maximum(np.abs(a_lo), np.abs(a_hi))
            return rlo, rhi, None
        if op == "sign":
            return np.sign(a_lo), np.sign(a_hi), None
        if op == "heaviside":
            # hull of the values taken: 0 left of 0, 1 right of it, H0 (any number) at 0
            h0_lo, h0_hi = node.payload
            neg, pos, zero = a_lo < 0, a_hi > 0, (a_lo <= 0) & (a_hi >= 0)
            rlo = np.minimum.reduce([np.where(neg, 0.0, np.inf), np.where(pos, 1.0, np.inf), np.where(zero, h0_lo, np.inf)])
            rhi = np.maximum.reduce([np.where(neg, 0.0, -np.inf), np.where(pos, 1.0, -np.inf), np.where(zero, h0_hi, -np.inf)])
            return rlo, rhi, None
        if op == "dirac":
            invalid = (a_lo <= 0) & (a_hi >= 0)
            return np.zeros(nboxes), np.zeros(nboxes), invalid
        if op == "min":
            return np.minimum(a_lo, L[args[1]]), np.minimum(a_hi, H[args[1]]), None
        if op == "max":
            return np.maximum(a_lo, L[args[1]]), np.maximum(a_hi, H[args[1]]), None
        if op in ("lt", "le", "gt", "ge", "eq", "ne"):
            return self._relation(op, a_lo, a_hi, L[args[1]], H[args[1]])
        if op == "and":
            return np.minimum(a_lo, L[args[1]]), np.minimum(a_hi, H[args[1]]), None
        if op == "or":
            return np.maximum(a_lo, L[args[1]]), np.maximum(a_hi, H[args[1]]), None
        if op == "not":
            r = add(np.ones(nboxes), np.ones(nboxes), -a_hi, -a_lo)  # 1 - x, exact for x in {0, 1}
            return r[0], r[1], None
        raise AssertionError(f"unknown op {op}")

    @staticmethod
    def _relation(op, alo, ahi, blo, bhi):
        if op in ("gt", "ge"):
            alo, ahi, blo, bhi = blo, bhi, alo, ahi
            op = "lt" if op == "gt" else "le"
        if op == "lt":
            true, false = ahi < blo, alo >= bhi
        elif op == "le":
            true, false = ahi <= blo, alo > bhi
        else:
            same = (alo == ahi) & (blo == bhi) & (alo == blo)
            disjoint = (ahi < blo) | (bhi < alo)
            true, false = (same, disjoint) if op == "eq" else (disjoint, same)
        rlo = np.where(true, 1.0, 0.0)
        rhi = np.where(false, 0.0, 1.0)
        return rlo, rhi, None

    @staticmethod
    def _piecewise(node, L, H, B, nboxes):
        """Hull of the branches that some point of the box may take (first true condition wins).

        A branch or condition that cannot be enclosed only matters where it may be reached.
        """
        reachable = np.ones(nboxes, dtype=bool)
        rlo = np.full(nboxes, np.inf)
        rhi = np.full(nboxes, -np.inf)
        bad = np.full(nboxes, -1, dtype=np.int64)
        args = node.args
        for k in range(0, len(args), 2):
            val, cond = args[k], args[k + 1]
            bad = np.where((bad < 0) & reachable, B[cond], bad)
            c_lo, c_hi = L[cond], H[cond]
            may_take = reachable & (c_hi > 0)
            bad = np.where((bad < 0) & may_take, B[val], bad)
            rlo = np.where(may_take, np.minimum(rlo, L[val]), rlo)
            rhi = np.where(may_take, np.maximum(rhi, H[val]), rhi)
            reachable = reachable & ~(c_lo > 0)
        return rlo, rhi, bad
