"""How far a computed per-record value can be from the real one: a bound for the whole box.

A stability map under the feature-level relation (``K r``) bounds the *real*
function. A float evaluation can differ from it: near a cancellation a rounding
step can move the output by much more than ``K r`` (found by review). So where
that relation is used, each record's value is computed as the midpoint of a
certified *point enclosure* ``[lo, hi]`` of ``f(x)`` (the interval evaluator on the
degenerate box ``[x, x]``), whose distance to ``f(x)`` is at most half its width,
and :func:`point_width_bound` bounds that width over the whole box, before any data.

The bound propagates, node by node, an upper bound ``W`` on the width of the point
enclosure at any point of the box, using the node enclosures over the whole box
``[lo_v, hi_v]`` (magnitude ``M``, and ``m`` the smallest magnitude) as a priori
ranges; the rules mirror :mod:`opendp_hybridad.analysis.interval` op by op:

* ``a + b``: ``W_a + W_b`` + two outward roundings (``2 ulp(M)``);
* ``a * b``: ``M_a W_b + M_b W_a`` + two roundings;
* ``1 / a``: ``W_a / m_a^2`` + two roundings (``a`` bounded away from 0);
* ``sqrt``: ``min(sqrt(W_a), W_a / (2 sqrt(m_a)))`` + two roundings;
* monotone library functions: Lipschitz bound over the node's range times ``W_a``,
  plus their padding on both ends, twice;
* ``abs``, ``min``, ``max``: ``max(W_a, W_b)``; a comparison or jump that may be
  undecided at some point of the box: the full jump.

Anything it cannot bound gives ``inf``, and callers then fall back to the range width.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.tape import Tape

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

_U = 2.0**-52
_TINY = 2.0**-1074


def _ulp(m: float) -> float:
    return m * _U + _TINY


def _pad(m: float) -> float:
    return m * iv._PAD + _TINY


def point_width_bound(fn: RecordFunction) -> float:
    """Upper bound on ``hi - lo`` of the point enclosure of ``f(x)``, for every x in the box."""
    tape = Tape(list(fn.symbols))
    out = tape.add_output(fn.expr)
    bounds = fn.schema.bounds()
    lo = np.array([[b[0] for b in bounds]])
    hi = np.array([[b[1] for b in bounds]])
    L, H, B = iv.IntervalEvaluator(tape).evaluate(lo, hi)
    if any(b[0] >= 0 for b in B):
        return math.inf
    low = [float(x[0]) for x in L]
    high = [float(x[0]) for x in H]
    mag = [max(abs(a), abs(b)) for a, b in zip(low, high, strict=True)]
    mig = [0.0 if a <= 0 <= b else min(abs(a), abs(b)) for a, b in zip(low, high, strict=True)]
    W: list[float] = []
    with np.errstate(all="ignore"):
        for idx, node in enumerate(tape.nodes):
            W.append(_node_width(node, idx, W, low, high, mag, mig))
    width = W[out]
    return width if math.isfinite(width) else math.inf


def _node_width(node, idx, W, low, high, mag, mig) -> float:
    op, args = node.op, node.args
    M = mag[idx]
    two_ulps = 2 * _ulp(M)
    lib = 4 * _pad(M)  # padded ends of a library function, each possibly off by its own error
    if op == "var":
        return 0.0
    if op == "const":
        return node.payload[1] - node.payload[0]
    a = args[0] if args else None
    Wa = W[a] if a is not None else 0.0
    if op == "add":
        return Wa + W[args[1]] + two_ulps
    if op == "neg":
        return Wa
    if op == "mul":
        return mag[a] * W[args[1]] + mag[args[1]] * Wa + two_ulps
    if op == "recip":
        m = mig[a] - Wa
        return Wa / (m * m) + two_ulps if m > 0 else math.inf
    if op == "powi":
        n = node.payload
        slope = n * (mag[a] + Wa) ** (n - 1)
        return slope * Wa + (two_ulps if n == 2 else lib)
    if op == "sqrt":
        m = mig[a] - Wa
        smooth = Wa / (2 * math.sqrt(m)) if m > 0 else math.inf
        return min(math.sqrt(Wa), smooth) + two_ulps
    if op == "powr":
        plo, phi = node.payload
        if plo != phi:
            return math.inf
        p = plo
        if 0 < p < 1:
            m = mig[a] - Wa
            smooth = p * m ** (p - 1) * Wa if m > 0 else math.inf
            return min(Wa**p, smooth) + lib
        if p >= 1:
            return p * (mag[a] + Wa) ** (p - 1) * Wa + lib
        m = mig[a] - Wa
        return (abs(p) * m ** (p - 1) * Wa + lib) if m > 0 else math.inf
    if op == "exp":
        return math.exp(high[a] + Wa) * Wa + lib
    if op == "log":
        m = mig[a] - Wa
        return Wa / m + lib if m > 0 else math.inf
    if op in ("tanh", "softplus"):
        return Wa + lib
    if op == "sigmoid":
        return 0.25 * Wa + lib
    if op == "abs":
        return Wa
    if op in ("min", "max", "and", "or"):
        return max(Wa, W[args[1]])
    if op == "not":
        return Wa
    if op == "sign":
        return 2.0 if low[a] <= 0 <= high[a] else 0.0
    if op == "heaviside":
        return (high[idx] - low[idx]) if low[a] <= 0 <= high[a] else 0.0
    if op == "dirac":
        return 0.0
    if op in ("lt", "le", "gt", "ge", "eq", "ne"):
        b = args[1]
        undecided = not (high[a] < low[b] or high[b] < low[a])
        return 1.0 if undecided else 0.0
    if op == "piecewise":
        conditions = [W[args[k + 1]] for k in range(0, len(args), 2)]
        if all(c == 0 for c in conditions):
            return max(W[args[k]] for k in range(0, len(args), 2))
        return high[idx] - low[idx]  # a point may sit on a boundary: the hull of the branches
    return math.inf


def evaluation_error(fn: RecordFunction) -> float:
    """How much two computed values can differ beyond the real ones, for a pair of records.

    Each value is a point-enclosure midpoint, within ``W/2 + 1 ulp`` of the real value
    (``W`` = :func:`point_width_bound`), so a pair of them adds at most ``W + 2 ulp(max|f|)``.
    """
    rng = fn.range()
    max_abs = max(abs(rng.lower), abs(rng.upper))
    return math.nextafter(point_width_bound(fn) + 2 * _ulp(max_abs), math.inf)


def clamped_point_values(fn: RecordFunction, columns: list[np.ndarray], lower: float, upper: float) -> np.ndarray:
    """:func:`point_values` clamped to ``[lower, upper]``, a failed enclosure becoming ``lower``."""
    values = point_values(fn, columns)
    return np.clip(np.where(np.isnan(values), lower, values), lower, upper)


def point_values(fn: RecordFunction, columns: list[np.ndarray], chunk: int = 65536) -> np.ndarray:
    """Midpoints of the certified point enclosures of ``f`` at each record (columns in schema order).

    Records must already lie in the box (imputed and clamped). A record whose
    enclosure fails (possible only where :func:`point_width_bound` is infinite)
    gets NaN, which callers map to a data-independent value.
    """
    tape = Tape(list(fn.symbols))
    out = tape.add_output(fn.expr)
    evaluator = iv.IntervalEvaluator(tape)
    n = columns[0].shape[0] if columns else 0
    result = np.empty(n)
    points = np.column_stack(columns) if columns else np.empty((0, 0))
    for start in range(0, n, chunk):
        block = points[start:start + chunk]
        L, H, B = evaluator.evaluate(block, block)
        mid = 0.5 * L[out] + 0.5 * H[out]
        result[start:start + chunk] = np.where(B[out] < 0, mid, np.nan)
    return result
