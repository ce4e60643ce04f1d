"""Which primitives are smooth, continuous or possibly discontinuous: one table, one place.

Every decision that depends on smoothness reads :data:`OP_CLASS` (keyed by the
tape's op names; lowering refuses an op missing from it):

* the **mean-value form** ``y(c) + D(X)(X - c)`` is used for an output ``y`` on a
  box only where :func:`smooth_masks` proves ``y`` C-infinity on that box. The
  proof runs on ``y``'s own expression tree (the raw user expression for a range,
  before any simplification or differentiation), so a jump whose derivative
  cancels (``Heaviside(x, 1) + Heaviside(-x, 1)`` has derivative 0) cannot hide:
  a step is smooth on a box only where its argument is enclosed away from its
  jump, a kink only where its argument (or the gap between ``Min``/``Max``
  arguments) is away from 0, a ``Piecewise`` only where one branch is taken on
  the whole box. Elsewhere the natural extension alone encloses ``y``;
* a **Lipschitz certificate** needs ``f`` continuous on the box:
  :func:`possible_jump` finds a possibly discontinuous primitive that is not
  proven continuous (a step whose argument may cross its jump, a ``Piecewise``
  whose branches are not proven to meet on its boundary), and the caller refuses
  with :class:`~opendp_hybridad.errors.NotLipschitzError` naming it;
* the **continuity proof** of a ``Piecewise`` (:func:`piecewise_continuous`) is done
  in exact rational arithmetic: every float constant becomes the exact rational
  value of the double (the one the compiled kernel compares against), so a
  threshold below the resolution of a 53-bit float cannot make two different
  branches look equal (``where(x > 1e-20, exp(x), 1)`` jumps by about 1e-20).

Classes: ``SMOOTH`` (C-infinity on the interior of its domain; a box reaching
outside the domain is flagged by the interval evaluator, and where the derivative
blows up at the domain's edge, e.g. ``sqrt`` at 0, its enclosure fails there),
``CONTINUOUS`` (continuous everywhere, not differentiable on a kink), ``JUMP``
(possibly discontinuous). ``floor``, ``ceiling``, ``frac``, ``Mod`` are never
lowered (:class:`~opendp_hybridad.errors.UnsupportedExpressionError` at
declaration), so they cannot reach a certificate.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import sympy

from opendp_hybridad.time_limit import time_limit

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.analysis.tape import Tape

SMOOTH = "smooth"
CONTINUOUS = "continuous"
JUMP = "jump"

#: every op the tape emits, by smoothness class (the one table)
OP_CLASS: dict[str, str] = {
    # C-infinity on the interior of the domain
    "var": SMOOTH, "const": SMOOTH, "add": SMOOTH, "mul": SMOOTH, "neg": SMOOTH, "powi": SMOOTH,
    "recip": SMOOTH, "sqrt": SMOOTH, "powr": SMOOTH, "exp": SMOOTH, "log": SMOOTH, "tanh": SMOOTH,
    "sigmoid": SMOOTH, "softplus": SMOOTH,
    # continuous, with a kink where the argument is 0 (abs) or the arguments are equal (min, max)
    "abs": CONTINUOUS, "min": CONTINUOUS, "max": CONTINUOUS,
    # possibly discontinuous: steps at 0, comparisons and their logic, conditionals
    # (a Piecewise proven continuous counts as CONTINUOUS)
    "heaviside": JUMP, "sign": JUMP, "dirac": JUMP, "piecewise": JUMP,
    "lt": JUMP, "le": JUMP, "gt": JUMP, "ge": JUMP, "eq": JUMP, "ne": JUMP,
    "and": JUMP, "or": JUMP, "not": JUMP,
}

#: steps of their one argument at 0: constant where the argument is enclosed away from 0
_STEPS = ("heaviside", "sign", "dirac")
#: boolean-valued ops: constant where their enclosure is a single value
_BOOLEAN = ("lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not")

REASONS = {
    "heaviside": "a step (Heaviside) whose argument may cross 0 inside the box (a jump)",
    "sign": "a step (sign) whose argument may cross 0 inside the box (a jump)",
    "dirac": "a jump (the derivative of a discontinuity) inside the box",
    "piecewise": "a conditional whose branches could not be proven to meet on its boundary (a possible jump)",
}
_BOOLEAN_REASON = "a comparison used as a number, which jumps where it changes value"


def classify(op: str) -> str:
    return OP_CLASS[op]


def statically_smooth(tape: Tape) -> list[bool]:
    """Per node: its expression uses SMOOTH ops only (smooth on every box where it is enclosed)."""
    out: list[bool] = []
    for node in tape.nodes:
        out.append(OP_CLASS[node.op] == SMOOTH and all(out[a] for a in node.args))
    return out


def subtree(tape: Tape, roots: list[int]) -> list[int]:
    """Indices of the nodes that ``roots`` depend on, in evaluation (topological) order."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(tape.nodes[i].args)
    return sorted(seen)


def _away(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo > 0) | (hi < 0)


def _piecewise_taken(args: tuple[int, ...], L, H, rows) -> list[np.ndarray]:
    """Per branch, the boxes on which that branch is the value everywhere (first true condition wins)."""
    taken = []
    reachable = None
    for k in range(0, len(args), 2):
        c_lo, c_hi = L[args[k + 1]][rows], H[args[k + 1]][rows]
        sure = c_lo > 0
        never = c_hi <= 0
        taken.append(sure if reachable is None else reachable & sure)
        reachable = never if reachable is None else reachable & never
    return taken


def smooth_masks(tape: Tape, roots: list[int], L, H, rows=slice(None), static: list[bool] | None = None) -> list[np.ndarray | None]:
    """Per root: True on the boxes where its expression is C-infinity on the whole box.

    ``L``, ``H`` are the interval evaluator's node enclosures over the boxes
    (``rows`` selects them). ``None`` means smooth on every box (only SMOOTH ops).
    Each rule needs a strict decision on the box: a kink or jump merely touching
    the box's edge counts as not smooth.
    """
    static = statically_smooth(tape) if static is None else static
    mask: dict[int, np.ndarray | None] = {}

    def m(i: int) -> np.ndarray | bool:
        v = mask.get(i)
        return True if v is None else v

    for i in subtree(tape, [r for r in roots if not static[r]]):
        node = tape.nodes[i]
        op, args = node.op, node.args
        if static[i]:
            mask[i] = None
            continue
        cls = OP_CLASS[op]
        if cls == SMOOTH:
            acc: np.ndarray | bool = True
            for a in args:
                acc = acc & m(a)
            mask[i] = np.broadcast_to(acc, L[i][rows].shape).copy() if isinstance(acc, bool) else acc
        elif op == "abs":
            mask[i] = _away(L[args[0]][rows], H[args[0]][rows]) & m(args[0])
        elif op in _STEPS:
            mask[i] = _away(L[args[0]][rows], H[args[0]][rows])  # locally constant
        elif op in ("min", "max"):
            a_lo, a_hi, b_lo, b_hi = L[args[0]][rows], H[args[0]][rows], L[args[1]][rows], H[args[1]][rows]
            a_wins = a_hi < b_lo if op == "min" else a_lo > b_hi
            b_wins = b_hi < a_lo if op == "min" else b_lo > a_hi
            mask[i] = (a_wins & m(args[0])) | (b_wins & m(args[1]))
        elif op in _BOOLEAN:
            mask[i] = L[i][rows] == H[i][rows]  # constant on the box
        elif op == "piecewise":
            taken = _piecewise_taken(args, L, H, rows)
            acc = np.zeros(L[i][rows].shape, dtype=bool)
            for k, t in enumerate(taken):
                acc |= t & m(args[2 * k])
            mask[i] = acc
        else:  # pragma: no cover - OP_CLASS and these rules are kept together
            raise AssertionError(f"no smoothness rule for op {op}")
    return [mask.get(r) if not static[r] else None for r in roots]


# -- continuity on a box (Lipschitz certificates) -----------------------------------------
def possible_jump(tape: Tape, root: int, lo: np.ndarray, hi: np.ndarray) -> tuple[int, str] | None:
    """A node of ``root``'s expression that may be discontinuous on the box, with the reason; None if continuous.

    Continuous means: no step whose argument may cross its jump, no comparison
    used as a number that may change value, and every ``Piecewise`` either takes
    one branch on the whole box or is proven (exactly) to meet its later branches
    on each boundary, with continuous branches and conditions.
    """
    from opendp_hybridad.analysis.interval import IntervalEvaluator

    static = statically_smooth(tape)
    if static[root]:
        return None
    L, H, _ = IntervalEvaluator(tape).evaluate(np.asarray(lo, dtype=float)[None, :], np.asarray(hi, dtype=float)[None, :])
    symbols = tuple(tape.variables)
    box = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
    memo: dict[int, tuple[int, str] | None] = {}

    def visit(i: int) -> tuple[int, str] | None:
        if static[i]:
            return None
        if i in memo:
            return memo[i]
        node = tape.nodes[i]
        op, args = node.op, node.args
        found: tuple[int, str] | None = None
        if op in _STEPS:
            if not _away(L[args[0]], H[args[0]])[0]:
                found = (i, REASONS[op])
        elif op in _BOOLEAN:
            if L[i][0] != H[i][0]:
                found = (i, _BOOLEAN_REASON)
        elif op == "piecewise":
            found = _piecewise_jump(i, visit, L, H, symbols, box, tape)
        else:
            for a in args:
                found = visit(a)
                if found is not None:
                    break
        memo[i] = found
        return found

    return visit(root)


def _piecewise_jump(i: int, visit, L, H, symbols: tuple, box: tuple, tape: Tape) -> tuple[int, str] | None:
    """The jump of conditional node ``i`` on the (single) box, or None: only its reachable branches count."""
    node = tape.nodes[i]
    args = node.args
    kept = []
    for k, (branch, cond) in enumerate(node.source.args):
        val_node, cond_node = args[2 * k], args[2 * k + 1]
        if H[cond_node][0] <= 0:
            continue  # never true on the box: this branch is never taken
        found = visit(val_node)
        if found is not None:
            return found
        if L[cond_node][0] > 0:  # true on the whole box: later branches are never reached
            kept.append((branch, sympy.true))
            break
        # an undecided condition: its sides must be continuous for its boundary to be {lhs = rhs}
        for side in tape.nodes[cond_node].args:
            if visit(side) is not None:
                return (i, REASONS["piecewise"])
        kept.append((branch, cond))
    if len(kept) <= 1:
        return None  # at most one branch is ever taken on the box
    if not piecewise_continuous(tuple(kept), symbols, *box):
        return (i, REASONS["piecewise"])
    return None


# -- the exact continuity proof ----------------------------------------------------------------
def exact(expr: sympy.Basic) -> sympy.Basic:
    """``expr`` with every float constant replaced by its exact rational value (that of the double).

    Raises ValueError for a float far outside the double range (its rational would not fit in memory).
    """
    floats = expr.atoms(sympy.Float)
    if not floats:
        return expr
    for f in floats:
        _, man, exp, bc = f._mpf_
        if man and not -1200 <= exp + bc <= 1200:
            # the exponent, not the value: formatting a Float with a 100-digit exponent raises itself
            raise ValueError(f"a float constant is far outside the double range (binary exponent {exp + bc})")
    return expr.xreplace({f: sympy.Rational(f) for f in floats})


def _enclose_on_box(expr: sympy.Expr, symbols: tuple, lo: tuple, hi: tuple) -> tuple[float, float] | None:
    """Interval enclosure of ``expr`` over the box, or None if it cannot be enclosed."""
    from opendp_hybridad.analysis.interval import IntervalEvaluator
    from opendp_hybridad.analysis.tape import Tape

    tape = Tape(list(symbols))
    out = tape.add_output(expr)
    L, H, B = IntervalEvaluator(tape).evaluate(np.array([lo], dtype=float), np.array([hi], dtype=float))
    if B[out][0] >= 0:
        return None
    return float(L[out][0]), float(H[out][0])


@lru_cache(maxsize=512)
def piecewise_continuous(pairs: tuple, symbols: tuple, lo: tuple, hi: tuple) -> bool:
    """Whether the conditional ``pairs`` ((branch, condition), ...; first true wins) is continuous on the box.

    The branches and the two sides of each condition must already be known to be
    continuous. For each condition ``lhs < rhs`` (or <=, >, >=), with ``g = lhs - rhs``:

    * ``g`` must have a finite enclosure on the box (no pole);
    * ``g`` must be linear in some field ``v`` whose coefficient is enclosed away
      from 0 on the box, so that ``{g = 0}`` is exactly ``{v = v*(others)}``;
    * on that boundary the branch must equal every later branch: the difference,
      with ``v = v*``, is exactly 0 (sympy's evaluation or ``sympy.simplify``, over
      exact rationals: float constants are first converted to the exact rationals
      they hold), and 0 lies in its outward-rounded enclosure on the box.

    Anything else (equalities, compound conditions, other boundaries) is
    conservatively reported as a possible jump.
    """
    try:
        with time_limit(PROOF_SECONDS):
            return _proof(pairs, symbols, lo, hi)
    except Exception:  # sympy refusing a step, or the proof running out of time: not proven, refuse
        return False


#: a continuity proof that takes longer is abandoned (refused): sympy's simplification and
#: exact substitution have no time bound of their own
PROOF_SECONDS = 5.0




def _proof(pairs: tuple, symbols: tuple, lo: tuple, hi: tuple) -> bool:
    pairs = [(exact(b), exact(c)) for b, c in pairs]
    for i, (branch, cond) in enumerate(pairs):
        if cond == sympy.true or cond == sympy.false:
            continue
        if not isinstance(cond, (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)):
            return False
        g = cond.lhs - cond.rhs
        if _enclose_on_box(g, symbols, lo, hi) is None:
            return False
        boundary = None
        for v in sorted(g.free_symbols, key=str):
            slope = sympy.diff(g, v)
            if slope == 0 or v in slope.free_symbols:
                continue
            enclosure = _enclose_on_box(slope, symbols, lo, hi)
            if enclosure is not None and (enclosure[0] > 0 or enclosure[1] < 0):
                boundary = (v, _simplify(v - g / slope))
                break
        if boundary is None:
            if not g.free_symbols:
                continue
            return False
        v, at = boundary
        for later, _ in pairs[i + 1:]:
            gap = (branch - later).xreplace({v: at})
            if gap == 0:  # sympy's own (exact) evaluation already cancelled it
                continue
            # a gap whose outward-rounded enclosure on the box excludes 0 is a jump; this also
            # keeps simplify away from most jumps, where it can be slow
            enclosure = _enclose_on_box(gap, symbols, lo, hi)
            if enclosure is not None and not enclosure[0] <= 0 <= enclosure[1]:
                return False
            if _simplify(gap) != 0:
                return False
    return True


#: rationals wider than this (in bits) keep sympy.simplify out: polynomial algorithms may expand
#: ``exp(p / 2**1074)`` into a polynomial of degree ``p`` and never return
_SIMPLIFY_MAX_BITS = 256


def _simplify(expr: sympy.Expr) -> sympy.Expr:
    """``sympy.simplify(expr)``, or ``expr`` itself when its rationals are too wide to simplify safely."""
    for r in expr.atoms(sympy.Rational):
        if max(abs(int(r.p)).bit_length(), int(r.q).bit_length()) > _SIMPLIFY_MAX_BITS:
            return expr
    return sympy.simplify(expr)
