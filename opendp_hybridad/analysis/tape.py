"""A flat, shared DAG ("tape") of the sympy expressions to enclose.

Several outputs (a function, its gradient, its Hessian) are lowered into one
tape so that common sub-expressions are enclosed once per box. Lowering also
decides which operations the certified analysis supports: anything else raises
:class:`UnsupportedExpressionError` at declaration time. Every op it emits is
classified (smooth, continuous with a kink, or possibly discontinuous) in
:data:`opendp_hybridad.analysis.smoothness.OP_CLASS`, the one table the mean-value
form, the continuity proof and Lipschitz certificates consult.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import sympy
from sympy.core.relational import Relational

from opendp_hybridad.analysis.rounding import down, round_down, round_up, up
from opendp_hybridad.analysis.smoothness import OP_CLASS
from opendp_hybridad.errors import UnsupportedExpressionError
from opendp_hybridad.symbolic.functions import sigmoid, softplus, to_sympy


@dataclass(frozen=True)
class Node:
    op: str
    args: tuple[int, ...] = ()
    #: op-specific constant: variable index, constant interval, integer power, ...
    payload: Any = None
    #: the sympy sub-expression, for error messages
    source: Any = field(default=None, compare=False)


_MAX = 1.7976931348623157e308
_TINY = 5e-324


def exact_interval(value: sympy.Expr) -> tuple[float, float]:
    """The tightest float interval that contains the real constant ``value``.

    A constant beyond the largest double gets ``[max double, inf]`` (the evaluator
    flags it as an overflow where it matters).
    """
    if value.is_Rational:
        frac = Fraction(int(value.p), int(value.q))
        try:
            x = float(frac)
        except OverflowError:  # beyond the largest double: an enclosure that is not finite (flagged)
            return (_MAX, math.inf) if frac > 0 else (-math.inf, -_MAX)
        if Fraction(x) == frac:
            return x, x
        return round_down(frac), round_up(frac)
    if value.is_Float:
        sign, man, exp, bc = value._mpf_
        if man and exp + bc > 1100:  # beyond the double range (and too wide to build as a rational)
            return (-math.inf, -_MAX) if sign else (_MAX, math.inf)
        if man and exp + bc < -1100:  # below the smallest subnormal, not zero
            return (-_TINY, 0.0) if sign else (0.0, _TINY)
        rational = sympy.Rational(value)
        return exact_interval(rational)
    if value.is_NumberSymbol:
        # pi, E, ...: sympy evaluates one such constant to the digits asked (no cancellation), then widen
        numeric = sympy.N(value, 30)
        if not numeric.is_Number or not numeric.is_finite:
            raise UnsupportedExpressionError(f"the constant {value} has no finite real value")
        lo, hi = exact_interval(sympy.Rational(numeric))
        return down(lo), up(hi)
    return _enclosed_constant(value)


def _enclosed_constant(value: sympy.Expr) -> tuple[float, float]:
    """An outward enclosure of a constant *expression* (``2 + exp(400 + 10^-300) - exp(400)``, ``exp(-exp(40))``),
    lowered op by op and enclosed by the interval evaluator, as the tape encloses any other expression.

    Not ``sympy.N``: its evaluation loses every digit to a cancellation past its working precision and still
    returns a number (audit attack_separable.py: ``-0.e+10`` for about ``5e-127``), and building a rational
    of ``exp(-exp(40))`` does not finish. Raises where the constant cannot be enclosed (not finite).
    """
    from opendp_hybridad.analysis.interval import IntervalEvaluator  # interval imports this module

    if value.free_symbols:
        raise UnsupportedExpressionError(f"{value} is not a constant")
    tape = Tape([])
    node = tape.add_output(value)
    L, H, B = IntervalEvaluator(tape).evaluate(np.zeros((1, 0)), np.zeros((1, 0)))
    lo, hi = float(L[node][0]), float(H[node][0])
    if B[node][0] >= 0 or not (math.isfinite(lo) and math.isfinite(hi)):
        raise UnsupportedExpressionError(f"the constant {value} could not be enclosed in finite floats")
    return lo, hi


_UNARY = {
    sympy.exp: "exp",
    sympy.log: "log",
    sympy.tanh: "tanh",
    sigmoid: "sigmoid",
    softplus: "softplus",
    sympy.Abs: "abs",
    sympy.sign: "sign",
}

_RELATIONS = {
    sympy.StrictLessThan: "lt",
    sympy.LessThan: "le",
    sympy.StrictGreaterThan: "gt",
    sympy.GreaterThan: "ge",
    sympy.Equality: "eq",
    sympy.Unequality: "ne",
}


_QUARTER = sympy.Rational(1, 4)
_HALF = sympy.Rational(1, 2)


def _sigmoid_slopes(e: sympy.Mul) -> list[sympy.Expr] | None:
    """The factors of ``e`` with each ``sigmoid(u)**p * (1 - sigmoid(u))**q`` written through the slope
    ``s(u) = sigmoid(u) (1 - sigmoid(u)) = 1/4 - (sigmoid(u) - 1/2)**2`` (an algebraic identity), or None.

    ``sigmoid(u)`` then occurs once in ``s``, so its interval enclosure is the exact image of the
    enclosure of ``sigmoid(u)`` (at most 1/4), where the product of the two factors' enclosures is not
    (``sigmoid(u)`` in [0.1, 0.9] gives [0.01, 0.81] for the product): the interval dependency problem
    (Moore, Kearfott and Cloud 2009, section 5.3), which sympy's derivative ``s * (1 - s)`` of the
    logistic function creates in every gradient and Hessian of a sigmoid model.
    """
    powers: dict[sympy.Expr, sympy.Expr] = {}
    order: list[sympy.Expr] = []
    for factor in e.args:
        base, expo = factor.as_base_exp()
        if base not in powers:
            order.append(base)
            powers[base] = sympy.Integer(0)
        powers[base] += expo
    changed = False
    slopes: list[sympy.Expr] = []
    for base in list(order):
        if not isinstance(base, sigmoid):
            continue
        complement = 1 - base
        p, q = powers.get(base), powers.get(complement)
        if q is None or not (p.is_Integer and q.is_Integer and p > 0 and q > 0):
            continue
        m = min(p, q)
        powers[base] -= m
        powers[complement] -= m
        slope = _QUARTER - (base - _HALF) ** 2
        slopes.append(slope if m == 1 else sympy.Pow(slope, m, evaluate=False))
        changed = True
    if not changed:
        return None
    rest = [b if x == 1 else sympy.Pow(b, x) for b in order if (x := powers[b]) != 0]
    return rest + slopes


def _exp_sum(e: sympy.Expr) -> bool:
    """Whether ``e`` is a sum of terms ``number * exp(v)`` or numbers, with at least one exponential."""
    if not isinstance(e, sympy.Add):
        return False
    found = False
    for term in e.args:
        if term.is_Number:
            continue
        _, rest = term.as_coeff_Mul()
        if not isinstance(rest, sympy.exp):
            return False
        found = True
    return found


@functools.lru_cache(maxsize=4096)
def _times_exp(total: sympy.Expr, w: sympy.Expr) -> sympy.Expr:
    """``total * exp(-w)`` for a sum of ``number * exp(v)`` and numbers, term by term: ``sum c exp(v - w)``.

    Built without sympy's evaluation of each ``exp`` (its assumption queries cost most of a softmax
    Hessian's lowering); only ``v - w`` is evaluated, so that a field cancels. Cached: a Hessian of a
    log-sum-exp asks for the same ``(S, x_i)`` in every entry of row i.
    """
    out = []
    for term in total.args:
        if term.is_Number:
            coeff, v = term, sympy.Integer(0)
        else:
            coeff, rest = term.as_coeff_Mul()
            v = rest.args[0]
        d = v - w
        factor = sympy.Integer(1) if d == 0 else sympy.exp(d, evaluate=False)
        out.append(factor if coeff == 1 else sympy.Mul(coeff, factor, evaluate=False))
    return sympy.Add(*out, evaluate=False)


def exp_ratio_form(e: sympy.Expr) -> list[sympy.Expr] | None:
    """The factors of ``e`` (a product) with each ``exp(w) / S`` written as ``1 / sum_j c_j exp(v_j - w)``, or None.

    ``S = sum_j c_j exp(v_j)`` (plus constants, ``v = 0``) is a sum of exponentials in the denominator;
    ``exp(w) / S = 1 / (S exp(-w))`` is an identity (``S != 0`` where ``e`` is defined, ``exp(w) > 0``),
    and distributing ``exp(-w)`` over ``S`` leaves ``w`` inside each exponent, where it cancels against
    ``v_j`` (softmax: ``exp(x_i) / sum_j exp(x_j) = 1 / sum_j exp(x_j - x_i)``). The interval extension
    of the original has ``x_i`` in the numerator and the denominator, independently widened (the
    dependency problem, Moore, Kearfott and Cloud 2009, section 5.3): a softmax share on
    ``[-1, 1]^n`` encloses to ``[e^-2/n, e^2/n]``-ish products, while the rewritten form, monotone in
    each difference, is the exact image of the differences' ranges. Exponentials ``exp(k w)`` with a
    positive integer ``k`` count as ``k`` copies of ``exp(w)``; with ``m`` copies of ``S`` in the
    denominator and ``q <= m`` copies of exponentials, each copy is paired with one ``S``; with more
    copies than ``S``'s, their total ``W`` is split evenly (``exp(W) / S^m = (exp(W/m) / S)^m``).
    """
    if not isinstance(e, sympy.Mul):
        return None
    denominator = None
    exps: list[sympy.Expr] = []
    rest: list[sympy.Expr] = []
    for factor in e.args:
        base, expo = factor.as_base_exp()
        if isinstance(factor, sympy.exp):
            exps.append(factor.args[0])
        elif denominator is None and expo.is_Integer and int(expo) < 0 and _exp_sum(base):
            denominator = (base, -int(expo))
        else:
            rest.append(factor)
    if denominator is None or not exps:
        return None
    total, m = denominator
    copies: list[sympy.Expr] = []
    for w in exps:
        k, inner = w.as_coeff_Mul()
        if k.is_Integer and 0 < int(k) <= m:
            copies += [inner] * int(k)
        else:
            copies.append(w)
    # sympy's evaluation of powers and products of sums asks assumption queries that cost most of a
    # Hessian's lowering: the rewritten form is built unevaluated (the tape lowers it factor by factor)
    if len(copies) > m:
        share = sympy.Add(*exps) / m
        return [*rest, sympy.Pow(_times_exp(total, share), -m, evaluate=False)]
    counts: dict[sympy.Expr, int] = {}
    for w in copies:
        counts[w] = counts.get(w, 0) + 1
    paired = [sympy.Pow(_times_exp(total, w), -k, evaluate=False) for w, k in counts.items()]
    left = m - len(copies)
    if left:
        paired.append(sympy.Pow(total, -left, evaluate=False))
    # a list of factors, not an unevaluated Mul: Mul of one factor is that factor, whose args are not factors
    return rest + paired


def _logistic_pairs(e: sympy.Add) -> list[sympy.Expr] | None:
    """The terms of ``e`` with each pair ``c P`` and ``-c P^2`` written as ``c (1/4 - (P - 1/2)^2)``, or None.

    An identity (``P - P^2 = 1/4 - (P - 1/2)^2``) in which ``P`` occurs once, so its enclosure is the
    exact image of ``P``'s (at most ``c/4``) rather than the difference of two independent enclosures:
    the slope ``p (1 - p)`` of a softmax share in the Hessian of a log-sum-exp, as for the sigmoid.
    Terms are first put in :func:`exp_ratio_form` (so ``exp(x)/S`` and ``exp(2x)/S^2`` become ``P``
    and ``P^2`` of one ``P``).
    """
    if _exp_sum(e):  # a sum of exponentials (a softmax denominator, lowered many times): nothing to pair
        return None
    terms = []
    for t in e.args:
        r = exp_ratio_form(t)
        terms.append(t if r is None else r[0] if len(r) == 1 else sympy.Mul(*r, evaluate=False))
    split = [_coeff_and_rest(t) for t in terms]
    shapes = [p.as_base_exp() for _, p in split]
    # (coefficient, base, exponent) -> the terms of that shape, so the pairing is linear in the terms
    index: dict[tuple, list[int]] = {}
    for k, ((c, _), (b, x)) in enumerate(zip(split, shapes, strict=True)):
        index.setdefault((c, b, x), []).append(k)
    used = [False] * len(terms)
    out: list[sympy.Expr] = []
    changed = False
    for i, (ci, pi) in enumerate(split):
        if used[i] or ci == 0 or pi == 1:
            continue
        base, expo = shapes[i]
        for j in index.get((-ci, base, 2 * expo), []):
            if j != i and not used[j]:
                used[i] = used[j] = True
                centred = sympy.Pow(sympy.Add(pi, -_HALF, evaluate=False), 2, evaluate=False)
                slope = sympy.Add(_QUARTER, sympy.Mul(-1, centred, evaluate=False), evaluate=False)
                out.append(slope if ci == 1 else sympy.Mul(ci, slope, evaluate=False))
                changed = True
                break
    if not changed:
        return None
    # a list, not an unevaluated Add: Add of one term is that term, whose own args are not terms
    return out + [t for t, u in zip(terms, used, strict=True) if not u]


def _coeff_and_rest(t: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    """``(c, P)`` with ``t = c P``, ``c`` a number (unevaluated products included)."""
    if isinstance(t, sympy.Mul) and t.args and t.args[0].is_Number:
        rest = t.args[1:]
        return t.args[0], rest[0] if len(rest) == 1 else sympy.Mul(*rest, evaluate=False)
    if t.is_Number:
        return t, sympy.Integer(1)
    return sympy.Integer(1), t


class Tape:
    """Lowers sympy expressions over ``variables`` into a shared list of :class:`Node` s."""

    def __init__(self, variables: list[sympy.Symbol], rewrite: bool = False):
        self.variables = list(variables)
        #: the enclosure-tightening identities (:func:`exp_ratio_form`, :func:`_logistic_pairs`). Off by
        #: default: ``exp(v - w)`` can overflow where ``exp(v)`` and ``exp(w)`` do not (``y - x = 800``
        #: with ``y = 700``), so a rewritten tape may fail to enclose where the plain one succeeds; the
        #: certificates' objectives use it and fall back to the plain tape on such a failure
        self.rewrite = rewrite
        #: how many sub-expressions a rewrite changed (0: the tape is the plain one)
        self.rewritten = 0
        self.nodes: list[Node] = []
        self._memo: dict[Any, int] = {}
        self._index = {v: i for i, v in enumerate(self.variables)}
        self.outputs: list[int] = []

    def add_output(self, expr: sympy.Expr | int | float) -> int:
        # numbers and sympy objects only: text never reaches sympify (it would run as Python)
        idx = self._lower(to_sympy(expr, "a tape output"))
        self.outputs.append(idx)
        return idx

    # -- lowering -------------------------------------------------------------
    def _emit(self, key: Any, node: Node) -> int:
        if node.op not in OP_CLASS:  # every op is classified (smooth / continuous / jump) before it is used
            raise AssertionError(f"op {node.op!r} has no entry in analysis.smoothness.OP_CLASS")
        # ``key`` shares structurally equal nodes built from different sympy objects;
        # None means the caller's sympy expression is the only key (see ``_lower``).
        if key is not None and key in self._memo:
            return self._memo[key]
        self.nodes.append(node)
        idx = len(self.nodes) - 1
        if key is not None:
            self._memo[key] = idx
        return idx

    def _const(self, value: sympy.Expr) -> int:
        lo, hi = exact_interval(value)
        return self._emit(("const", lo, hi), Node("const", (), (lo, hi), value))

    def _lower(self, e: Any) -> int:
        if e in self._memo:
            return self._memo[e]
        idx = self._lower_new(e)
        self._memo[e] = idx
        return idx

    def _lower_new(self, e: Any) -> int:
        if e is sympy.true:
            return self._emit(("bool", 1), Node("const", (), (1.0, 1.0), e))
        if e is sympy.false:
            return self._emit(("bool", 0), Node("const", (), (0.0, 0.0), e))
        if isinstance(e, sympy.Symbol):
            if e not in self._index:
                raise UnsupportedExpressionError(f"symbol {e} is not a declared field")
            return self._emit(("var", e), Node("var", (), self._index[e], e))
        # only literal numbers become constants; a constant expression such as exp(750)
        # or softplus(1) is lowered op by op, so it is enclosed (or flagged) like any other
        if e.is_Number or e.is_NumberSymbol:
            if not (e.is_finite and e.is_real):  # nan, zoo, oo, I
                raise UnsupportedExpressionError(f"constant {e} is not a finite real number")
            return self._const(e)
        if isinstance(e, sympy.Add):
            paired = _logistic_pairs(e) if self.rewrite else None
            if paired is not None:
                self.rewritten += 1
                return self._fold_terms(e, paired)
            return self._fold("add", e)
        if isinstance(e, sympy.Mul):
            args = list(e.args)
            if args[0] == -1:
                rest = sympy.Mul(*args[1:], evaluate=False) if len(args) > 2 else args[1]
                return self._emit(None, Node("neg", (self._lower(rest),), None, e))
            ratio = exp_ratio_form(e) if self.rewrite else None
            if ratio is not None:
                self.rewritten += 1
                return self._fold_factors(e, ratio)
            rewritten = _sigmoid_slopes(e)
            if rewritten is not None:
                return self._fold_factors(e, rewritten)
            return self._fold("mul", e)
        if isinstance(e, sympy.Pow):
            return self._lower_pow(e)
        if isinstance(e, sympy.Min):
            return self._fold("min", e)
        if isinstance(e, sympy.Max):
            return self._fold("max", e)
        if isinstance(e, sympy.Heaviside):
            h0 = e.args[1] if len(e.args) > 1 else sympy.Rational(1, 2)
            return self._emit(None, Node("heaviside", (self._lower(e.args[0]),), exact_interval(h0), e))
        if isinstance(e, sympy.DiracDelta):
            return self._emit(None, Node("dirac", (self._lower(e.args[0]),), None, e))
        if isinstance(e, sympy.Piecewise):
            args: list[int] = []
            for branch, cond in e.args:
                args.append(self._lower(branch))
                args.append(self._lower(cond))
            return self._emit(None, Node("piecewise", tuple(args), None, e))
        if isinstance(e, Relational):
            op = _RELATIONS.get(type(e))
            if op is None:
                raise UnsupportedExpressionError(f"unsupported comparison {e}")
            return self._emit(None, Node(op, (self._lower(e.lhs), self._lower(e.rhs)), None, e))
        if isinstance(e, sympy.And):
            return self._fold("and", e)
        if isinstance(e, sympy.Or):
            return self._fold("or", e)
        if isinstance(e, sympy.Not):
            return self._emit(None, Node("not", (self._lower(e.args[0]),), None, e))
        for fn, op in _UNARY.items():
            if isinstance(e, fn):
                return self._emit(None, Node(op, (self._lower(e.args[0]),), None, e))
        name = getattr(getattr(e, "func", None), "__name__", type(e).__name__)
        raise UnsupportedExpressionError(
            f"`{e}` uses {name}, which the certified analysis does not support "
            "(supported: + - * / powers, sqrt, exp, log, abs, min, max, tanh, sigmoid, softplus, where/Piecewise)"
        )

    def _fold(self, op: str, e: sympy.Expr) -> int:
        ids = [self._lower(a) for a in e.args]
        acc = ids[0]
        for nxt in ids[1:]:
            acc = self._emit((op, acc, nxt), Node(op, (acc, nxt), None, e))
        return acc

    def _fold_terms(self, e: sympy.Expr, terms: list[sympy.Expr]) -> int:
        """The sum of ``terms`` (sympy expressions equal in sum to ``e``), folded left."""
        ids = [self._lower(a) for a in terms]
        acc = ids[0]
        for nxt in ids[1:]:
            acc = self._emit(("add", acc, nxt), Node("add", (acc, nxt), None, e))
        return acc

    def _fold_factors(self, e: sympy.Expr, factors: list[sympy.Expr]) -> int:
        ids = [self._lower(a) for a in factors]
        acc = ids[0]
        for nxt in ids[1:]:
            acc = self._emit(("mul", acc, nxt), Node("mul", (acc, nxt), None, e))
        return acc

    def _lower_pow(self, e: sympy.Pow) -> int:
        base, expo = e.args
        if not expo.free_symbols and expo.is_Rational:
            b = self._lower(base)
            if expo.is_Integer:
                n = int(expo)
                if n == 0:
                    return self._const(sympy.Integer(1))
                if n == 1:
                    return b
                # the source (for messages) unevaluated: sympy's evaluation of a power of a sum asks
                # assumption queries that cost most of the lowering of a softmax Hessian
                pos = b if abs(n) == 1 else self._emit(("powi", b, abs(n)),
                                                       Node("powi", (b,), abs(n), sympy.Pow(base, abs(n), evaluate=False)))
                if n > 0:
                    return pos
                return self._emit(("recip", pos), Node("recip", (pos,), None, e))
            if expo.q == 2 and abs(expo.p) == 1:
                root = self._emit(("sqrt", b), Node("sqrt", (b,), None, sympy.Pow(base, _HALF, evaluate=False)))
                if expo.p > 0:
                    return root
                return self._emit(("recip", root), Node("recip", (root,), None, e))
            lo, hi = exact_interval(expo)
            return self._emit(None, Node("powr", (b,), (lo, hi), e))
        if not expo.free_symbols:
            lo, hi = exact_interval(expo)
            return self._emit(None, Node("powr", (self._lower(base),), (lo, hi), e))
        # x**y with a symbolic exponent: exp(y*log(x)), defined for x > 0
        return self._lower(sympy.exp(expo * sympy.log(base)))

    def describe(self, idx: int) -> str:
        src = self.nodes[idx].source
        return str(src) if src is not None else self.nodes[idx].op

    def fields_of(self, idx: int) -> list[str]:
        src = self.nodes[idx].source
        if src is None or not hasattr(src, "free_symbols"):
            return []
        return sorted(str(s) for s in src.free_symbols)
