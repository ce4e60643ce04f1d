"""How far a computed per-record value can be from the real one: a bound for the whole box.

A stability map under the feature-level relation (``K r``) bounds the *real*
function. A float evaluation can differ from it: near a cancellation a rounding
step can move the output by much more than ``K r`` (found by review). So where
that relation is used, each record's value is computed as the midpoint of a
certified *point enclosure* ``[lo, hi]`` of ``f(x)`` (the interval evaluator on the
degenerate box ``[x, x]``, each node intersected with its enclosure over the whole
box, :func:`point_values`), whose distance to ``f(x)`` is at most half its width,
and :func:`point_width_bound` bounds that width over the whole box, before any data.

**Claim.** For every float point ``x`` of the box and every node ``k``, the point
enclosure ``P_k(x)`` has width at most ``W_k``, both as :func:`point_values` computes
it and as the plain evaluator computes it on ``[x, x]`` (where that one succeeds).

**Induction.** Write ``r_k`` for the real value of node ``k`` at ``x`` and
``E_k = [low_k, high_k]`` for its enclosure over the whole box (so ``|r_k| <= M_k``,
its magnitude). Every point enclosure is sound, ``r_k in P_k(x)``, so if its width is
at most ``W_k`` it lies in the *extended range* ``[low_k - W_k, high_k + W_k]``:
magnitude at most ``Mx_k = M_k + W_k``, and at least ``m_k`` (the extended range's
distance from 0; 0 if it reaches 0). Each rule below assumes this of the arguments
(true for both evaluations: the intersection only shrinks) and bounds ``hi - lo`` as
(the width of the exact operation on the argument enclosures) + (the rounding of the
two ends). The rounding facts (:mod:`opendp_hybridad.analysis.rounding`):

* (D) an end rounded in its direction only (TwoSum-checked ``+``) is within one gap
  ``ulp_up(T)`` of the exact end, ``T`` a bound on the exact end's magnitude;
* (N) an end rounded to nearest then moved one float outward (``* / sqrt x*x``) is
  within ``2 ulp_up(T)`` (Higham 2002 Theorem 2.2, with gradual underflow);
* (L) a padded library end is within ``libm_error_up(Y) + libm_spread_up(Y)`` of the
  exact end, ``Y >= |library result|`` (the padding assumption; ``Y`` from ``T`` by
  ``|y| <= (T + TINY) / (1 - LIBM_PAD)``);
* intersecting with a known range or clamping at 0 only shrinks.

The rules (exact part; then two ends by D, N or L):

* ``a + b``: ``W_a + W_b``; ends by D with ``T = M + W_a + W_b``;
* ``a * b``: ``|ab - a'b'| <= |a||b - b'| + |b'||a - a'|``, so
  ``Mx_a W_b + Mx_b W_a``; ends by N with ``T = M + that``;
* ``1 / a``: ``W_a / m_a^2`` (mean value theorem), ``m_a > 0``; ends by N, ``T = 1 / m_a``;
* ``a^2``: ``2 Mx_a W_a``; ends by N, ``T = Mx_a^2``; ``a^n``, ``n >= 3``:
  ``n Mx_a^(n-1) W_a``, ends by L, ``T = Mx_a^n`` (an even power straddling 0 starts
  at 0 and is at most ``W_a^n``, below the same bound);
* ``sqrt a``: ``min(sqrt(W_a), W_a / (2 sqrt(m_a)))`` (``sqrt`` is concave:
  ``sqrt(b) - sqrt(a) <= sqrt(b - a)``); ends by N, ``T = sqrt(Mx_a)``;
* ``a^p`` (one float ``p``): ``p >= 1``: ``p Mx_a^(p-1) W_a``; ``0 < p < 1``:
  ``min(W_a^p, p m_a^(p-1) W_a)`` (Hoelder); ``p < 0``: ``|p| m_a^(p-1) W_a``; ends by L;
* ``exp``: ``exp(high_a + W_a) W_a``; ``log``: ``W_a / m_a``; ``tanh``, ``softplus``:
  ``W_a`` (slope at most 1); ``sigmoid``: ``W_a / 4``; ends by L;
* ``-a``, ``abs``: ``W_a``; ``min``, ``max``, ``and``, ``or``: ``max(W_a, W_b)``;
  ``not``: as ``1 - a``;
* a comparison: 0 where the extended ranges of its sides are disjoint (decided the same
  way at every point), else 1; ``sign``, ``Heaviside``: 0 where the extended range
  avoids 0, else the hull of the values they take; a ``Piecewise``: the largest branch
  width if every condition has width 0, else the hull of every branch's extended range.

Every bound is computed with the rounded-up scalar operations of the rounding module;
anything that cannot be bounded gives ``inf``, and callers then fall back to the range
width. Library values inside the bounds (``exp``, ``log``, ``pow``) rest on the same
padding assumption as the evaluator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis import rounding as rd
from opendp_hybridad.analysis.tape import Tape

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

_INF = math.inf
#: softplus(z) <= max(z, 0) + log 2, and log 2 < 0.7
_LOG2_UP = 0.7


def _box(fn: RecordFunction) -> tuple[Tape, int, np.ndarray, np.ndarray, list, list, list]:
    """The tape of ``f`` and every node's enclosure over the whole box (one row)."""
    tape = Tape(list(fn.symbols))
    out = tape.add_output(fn.expr)
    bounds = fn.schema.bounds()
    lo = np.array([[float(b[0]) for b in bounds]])
    hi = np.array([[float(b[1]) for b in bounds]])
    L, H, B = iv.IntervalEvaluator(tape).evaluate(lo, hi)
    return tape, out, lo, hi, L, H, B


def point_width_bound(fn: RecordFunction) -> float:
    """Upper bound on ``hi - lo`` of the point enclosure of ``f(x)``, for every x in the box."""
    tape, out, _, _, L, H, B = _box(fn)
    if any(b[0] >= 0 for b in B):
        return _INF
    widths = _Widths([float(x[0]) for x in L], [float(x[0]) for x in H])
    for idx, node in enumerate(tape.nodes):
        w = widths.rule(node, idx)
        widths.W.append(w if w >= 0 and math.isfinite(w) else _INF)
    return widths.W[out]


# -- rounding of the two ends (module notes D, N, L), each rounded up ------------------------
def _directed_ends(exact: float, T: float) -> float:
    return rd.add_up(exact, rd.mul_up(2.0, rd.ulp_up(T)))


def _nearest_ends(exact: float, T: float) -> float:
    return rd.add_up(exact, rd.mul_up(4.0, rd.ulp_up(T)))


def _library_ends(exact: float, T: float) -> float:
    if not math.isfinite(T):
        return _INF
    Y = rd.div_up(rd.add_up(abs(T), rd.TINY), 1.0 - rd.LIBM_PAD)  # |y| <= |f| + LIBM_PAD |y| + TINY
    per_end = rd.add_up(rd.libm_error_up(Y), rd.libm_spread_up(Y))
    return rd.add_up(exact, rd.mul_up(2.0, per_end))


def _libm_up(fn, *args) -> float:
    """An upper bound on a library function's real value (the padding assumption); ``inf`` on overflow."""
    try:
        return rd.libm_up(fn(*args))
    except OverflowError:
        return _INF


def _libm_down(fn, *args) -> float:
    try:
        return rd.libm_down(fn(*args))
    except OverflowError:
        return _INF


class _Widths:
    """Node enclosures over the box and the width bounds found so far (see the module notes)."""

    def __init__(self, low: list[float], high: list[float]):
        self.low, self.high = low, high
        self.W: list[float] = []

    def mag(self, k: int) -> float:
        return max(abs(self.low[k]), abs(self.high[k]))

    def mx(self, k: int) -> float:
        """Largest magnitude of a point enclosure of node k."""
        return rd.add_up(self.mag(k), self.W[k])

    def ext(self, k: int) -> tuple[float, float]:
        """The extended range ``[low - W, high + W]``, which holds every point enclosure of node k."""
        return rd.add_down(self.low[k], -self.W[k]), rd.add_up(self.high[k], self.W[k])

    def rule(self, node, idx: int) -> float:
        op, args = node.op, node.args
        W = self.W
        M = self.mag(idx)
        if op == "var":
            return 0.0
        if op == "const":
            return rd.sub_up(node.payload[1], node.payload[0])
        a = args[0]
        Wa = W[a]
        if op == "neg" or op == "abs":
            return Wa
        if op in ("min", "max", "and", "or"):
            return max(Wa, W[args[1]])
        if op == "add":
            exact = rd.add_up(Wa, W[args[1]])
            return _directed_ends(exact, rd.add_up(M, exact))
        if op == "not":
            v_lo, v_hi = self.low[a], self.high[a]
            if Wa == 0 and ((v_lo >= 0.5 and v_hi <= 2.0) or v_lo == v_hi == 0.0):
                return 0.0  # 1 - v exact (Sterbenz) for a single v in [0.5, 2], or v = 0
            return _directed_ends(Wa, rd.add_up(M, Wa))
        if op == "mul":
            b = args[1]
            exact = rd.add_up(rd.mul_up(self.mx(a), W[b]), rd.mul_up(self.mx(b), Wa))
            return _nearest_ends(exact, rd.add_up(M, exact))
        if op == "recip":
            m = self._mig(a)
            if not m > 0:
                return _INF
            return _nearest_ends(rd.div_up(rd.div_up(Wa, m), m), rd.div_up(1.0, m))  # W_a / m^2, no underflow of m^2
        if op == "powi":
            return self._powi(a, node.payload)
        if op == "sqrt":
            return self._sqrt(a)
        if op == "powr":
            return self._powr(a, node.payload)
        if op == "exp":
            top = _libm_up(math.exp, self.ext(a)[1])
            return _library_ends(rd.mul_up(top, Wa), top)
        if op == "log":
            m, top = self.ext(a)[0], self.mx(a)
            if not m > 0 or not math.isfinite(top):
                return _INF
            T = max(abs(_libm_down(math.log, m)), abs(_libm_up(math.log, top)))
            return _library_ends(rd.div_up(Wa, m), T)
        if op == "tanh":
            return _library_ends(Wa, 1.0)
        if op == "sigmoid":
            return _library_ends(rd.mul_up(0.25, Wa), 1.0)
        if op == "softplus":
            return _library_ends(Wa, rd.add_up(max(self.ext(a)[1], 0.0), _LOG2_UP))
        if op == "sign":
            return 0.0 if self._avoids_zero(a) else 2.0
        if op == "heaviside":
            h0_lo, h0_hi = node.payload
            return 0.0 if self._avoids_zero(a) else rd.sub_up(max(1.0, h0_hi), min(0.0, h0_lo))
        if op == "dirac":
            return 0.0
        if op in ("lt", "le", "gt", "ge", "eq", "ne"):
            (alo, ahi), (blo, bhi) = self.ext(a), self.ext(args[1])
            return 0.0 if (ahi < blo or bhi < alo) else 1.0
        if op == "piecewise":
            branches = list(args[0::2])
            if all(W[c] == 0 for c in args[1::2]):
                return max(W[k] for k in branches)  # one branch at each point
            exts = [self.ext(k) for k in branches]
            return rd.sub_up(max(e[1] for e in exts), min(e[0] for e in exts))
        return _INF

    def _mig(self, k: int) -> float:
        lo, hi = self.ext(k)
        return lo if lo > 0 else (-hi if hi < 0 else 0.0)

    def _avoids_zero(self, k: int) -> bool:
        lo, hi = self.ext(k)
        return lo > 0 or hi < 0

    def _powi(self, a: int, n: int) -> float:
        Wa, top = self.W[a], self.mx(a)
        if n == 2:
            return _nearest_ends(rd.mul_up(2.0, rd.mul_up(top, Wa)), rd.mul_up(top, top))
        power = 1.0  # top^(n-1), rounded up
        for _ in range(n - 1):
            power = rd.mul_up(power, top)
        return _library_ends(rd.mul_up(float(n), rd.mul_up(power, Wa)), rd.mul_up(power, top))

    def _sqrt(self, a: int) -> float:
        Wa, m = self.W[a], self.ext(a)[0]
        exact = 0.0
        if Wa > 0:
            exact = rd.sqrt_up(Wa)
            if m > 0:
                exact = min(exact, rd.div_up(Wa, rd.mul_down(2.0, rd.sqrt_down(m))))
        return _nearest_ends(exact, rd.sqrt_up(self.mx(a)))

    def _powr(self, a: int, payload: tuple[float, float]) -> float:
        p, p_hi = payload
        if p != p_hi:
            return _INF
        Wa, top, m = self.W[a], self.mx(a), self.ext(a)[0]
        if not math.isfinite(top):
            return _INF

        def slope_times_w(base: float) -> float:
            # |p| base^(p-1) W_a = |p| W_a base^p / base, rounded up
            if Wa == 0:
                return 0.0
            return rd.mul_up(abs(p), rd.mul_up(Wa, rd.div_up(_libm_up(math.pow, base, p), base)))

        if p >= 1:
            return _library_ends(slope_times_w(top) if top > 0 else 0.0, _libm_up(math.pow, top, p))
        if p > 0:
            exact = _libm_up(math.pow, Wa, p) if Wa > 0 else 0.0
            if m > 0:
                exact = min(exact, slope_times_w(m))
            return _library_ends(exact, _libm_up(math.pow, top, p))
        if not m > 0:
            return _INF
        return _library_ends(slope_times_w(m), _libm_up(math.pow, m, p))


def evaluation_error(fn: RecordFunction) -> float:
    """How much two computed values can differ beyond the real ones, for a pair of records.

    Each value is a point-enclosure midpoint ``fl(fl(lo/2) + fl(hi/2))``: the halvings are
    exact but for an underflow (``TINY/2`` each), the sum within ``u |mid|`` (Higham 2002
    Theorem 2.2; sums do not underflow), with ``|mid| <= max|f| + W``; so it is within
    ``W/2 + ulp_up(max|f| + W)`` of the real value, and a pair adds
    ``W + 2 ulp_up(max|f| + W)`` (``W`` = :func:`point_width_bound`), rounded up.
    """
    rng = fn.range()
    max_abs = max(abs(rng.lower), abs(rng.upper))
    width = point_width_bound(fn)
    if not math.isfinite(width):
        return _INF
    return rd.add_up(width, rd.mul_up(2.0, rd.ulp_up(rd.add_up(max_abs, width))))


def conversion_distance(fn: RecordFunction, q: float) -> float:
    """Bound on ``||fl(x) - x||_q`` for a record x in the box: what converting data to float64 can move it.

    Columns of other types (int64 above 2^53, Decimal, long double, text) are converted
    to float64 before clamping. Each conversion is at most one ulp from the value
    (correct rounding gives half of that; one ulp allows a faithful conversion), and,
    since the box's ends are doubles, clamping after the conversion equals converting
    after clamping, so the value that matters is in the box: per field
    ``c_k <= 2 u max(|lower_k|, |upper_k|) + TINY``. Two records at distance ``r``
    are then at most ``r + 2 ||c||_q`` apart after conversion (a review found records 1
    apart as int64 that are 2 apart as float64).
    """
    per_field = [rd.add_up(rd.mul_up(2 * rd.UNIT_ROUNDOFF, max(abs(lo), abs(hi))), rd.TINY) for lo, hi in fn.schema.bounds()]
    if math.isinf(q):
        return max(per_field, default=0.0)
    if q == 1.0:
        return rd.sum_up(per_field)
    return rd.norm2_up(per_field)


def clamped_point_values(fn: RecordFunction, columns: list[np.ndarray], lower: float, upper: float) -> np.ndarray:
    """:func:`point_values` clamped to ``[lower, upper]``, a failed enclosure becoming ``lower``."""
    values = point_values(fn, columns)
    return np.clip(np.where(np.isnan(values), lower, values), lower, upper)


def point_values(fn: RecordFunction, columns: list[np.ndarray], chunk: int = 65536) -> np.ndarray:
    """Midpoints of the certified point enclosures of ``f`` at each record (columns in schema order).

    Records must already lie in the box (imputed and clamped; they are clamped again
    here, which changes nothing for members). Each node's point enclosure is
    intersected with its enclosure over the whole box, so a point fails only where the
    box does, that is only where :func:`point_width_bound` is infinite; such a record
    gets NaN, which callers map to a data-independent value.
    """
    tape, out, lo, hi, L, H, _ = _box(fn)
    evaluator = iv.IntervalEvaluator(tape)
    n = columns[0].shape[0] if columns else 0
    result = np.empty(n)
    points = np.column_stack(columns).astype(np.float64) if columns else np.empty((0, 0))
    if columns:
        points = np.clip(points, lo, hi)
    for start in range(0, n, chunk):
        block = points[start:start + chunk]
        PL, PH, PB = evaluator.evaluate(block, block, within=(L, H))
        mid = 0.5 * PL[out] + 0.5 * PH[out]
        result[start:start + chunk] = np.where(PB[out] < 0, mid, np.nan)
    return result
