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

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

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
    # irrational constants (pi, E, sqrt(2), ...): 30 correct digits then widen
    numeric = sympy.N(value, 30)
    if not numeric.is_Number or not numeric.is_finite:
        raise UnsupportedExpressionError(f"the constant {value} has no finite real value")
    approx = sympy.Rational(numeric)
    lo, hi = exact_interval(approx)
    return down(lo), up(hi)


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


class Tape:
    """Lowers sympy expressions over ``variables`` into a shared list of :class:`Node` s."""

    def __init__(self, variables: list[sympy.Symbol]):
        self.variables = list(variables)
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
            return self._fold("add", e)
        if isinstance(e, sympy.Mul):
            args = list(e.args)
            if args[0] == -1:
                rest = sympy.Mul(*args[1:], evaluate=False) if len(args) > 2 else args[1]
                return self._emit(None, Node("neg", (self._lower(rest),), None, e))
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
                pos = b if abs(n) == 1 else self._emit(("powi", b, abs(n)), Node("powi", (b,), abs(n), base ** abs(n)))
                if n > 0:
                    return pos
                return self._emit(("recip", pos), Node("recip", (pos,), None, e))
            if expo.q == 2 and abs(expo.p) == 1:
                root = self._emit(("sqrt", b), Node("sqrt", (b,), None, sympy.sqrt(base)))
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
