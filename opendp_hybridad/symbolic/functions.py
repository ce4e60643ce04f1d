"""The functions a per-record expression may use, beyond sympy's arithmetic.

Everything here is an ordinary sympy object, so closed forms print and
differentiate as usual. ``sigmoid`` is a named function (not expanded into
``1/(1+exp(-x))``) so that closed forms stay readable and interval enclosures
use its monotonicity.
"""

from __future__ import annotations

from typing import Any

import sympy


class sigmoid(sympy.Function):  # noqa: N801 - lower case like sympy's own functions
    """The logistic function ``1 / (1 + exp(-x))``."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x: sympy.Expr) -> sympy.Expr | None:
        if x.is_zero:
            return sympy.Rational(1, 2)
        if x.is_Number and x.is_finite is False:
            return sympy.Integer(1) if x.is_positive else sympy.Integer(0)
        return None

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None

    def _eval_rewrite_as_exp(self, x: sympy.Expr, **kwargs: Any) -> sympy.Expr:
        return 1 / (1 + sympy.exp(-x))

    def _latex(self, printer: Any) -> str:
        return rf"\sigma\left({printer._print(self.args[0])}\right)"


class softplus(sympy.Function):  # noqa: N801
    """``log(1 + exp(x))``, computed stably; its derivative is ``sigmoid(x)``."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sigmoid(self.args[0])

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None

    def _eval_rewrite_as_log(self, x: sympy.Expr, **kwargs: Any) -> sympy.Expr:
        return sympy.log(1 + sympy.exp(x))

    def _latex(self, printer: Any) -> str:
        return rf"\operatorname{{softplus}}\left({printer._print(self.args[0])}\right)"


def canonical(expr: sympy.Expr) -> sympy.Expr:
    """Name the logistic patterns so that enclosures use their monotonicity.

    ``log(1 + exp(u))`` becomes ``softplus(u)`` and ``1/(1 + exp(u))`` becomes
    ``sigmoid(-u)``: equal functions whose interval extensions do not suffer from
    ``exp(u)`` appearing twice in a quotient.
    """
    u = sympy.Wild("u")
    expr = expr.replace(sympy.log(1 + sympy.exp(u)), softplus(u))
    return expr.replace(1 / (1 + sympy.exp(u)), sigmoid(-u))


exp = sympy.exp
log = sympy.log
sqrt = sympy.sqrt
tanh = sympy.tanh
Abs = sympy.Abs
minimum = sympy.Min
maximum = sympy.Max


def where(condition: Any, if_true: Any, if_false: Any) -> sympy.Expr:
    """``if_true`` where ``condition`` holds, else ``if_false`` (a sympy Piecewise).

    A discontinuity stays a conditional in compiled code; the certified
    Lipschitz analysis accepts it only when it can prove the two branches meet
    on the boundary.
    """
    return sympy.Piecewise((sympy.sympify(if_true), condition), (sympy.sympify(if_false), True))


def clip(x: Any, lower: Any, upper: Any) -> sympy.Expr:
    """``min(max(x, lower), upper)``."""
    return sympy.Min(sympy.Max(x, lower), upper)


#: Names a textual expression (CLI, ``parse``) may use.
NAMESPACE: dict[str, Any] = {
    "exp": exp, "log": log, "sqrt": sqrt, "tanh": tanh, "abs": Abs, "Abs": Abs,
    "min": minimum, "max": maximum, "Min": minimum, "Max": maximum,
    "minimum": minimum, "maximum": maximum, "sigmoid": sigmoid, "softplus": softplus, "where": where,
    "Piecewise": sympy.Piecewise, "clip": clip, "pi": sympy.pi, "E": sympy.E,
}
