"""The functions a per-record expression may use, beyond sympy's arithmetic.

Everything here is an ordinary sympy object, so closed forms print and
differentiate as usual. ``sigmoid`` is a named function (not expanded into
``1/(1+exp(-x))``) so that closed forms stay readable and interval enclosures
use its monotonicity.
"""

from __future__ import annotations

import numbers
from typing import Any

import sympy

from opendp_hybridad.errors import DeclarationError


def to_sympy(value: Any, what: str = "a value") -> sympy.Basic:
    """``value`` as a sympy object: a sympy object, a real number, or anything with ``_sympy_``; never text.

    ``sympy.sympify`` of a string (or of an object it can only turn into a string)
    runs Python, so text is refused here; text expressions go through
    :func:`opendp_hybridad.parse`, which builds them without evaluating anything.
    """
    if isinstance(value, sympy.Basic):
        return value
    if isinstance(value, (str, bytes, bytearray, memoryview)):  # str subclasses (numpy.str_ too) included
        raise DeclarationError(
            f"{what} is text ({type(value).__name__}); text is accepted only as a whole expression, "
            "by RecordFunction(text, schema) or opendp_hybridad.parse"
        )
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        raise DeclarationError(f"{what} is a complex number; expressions are real-valued")
    try:
        # strict: numbers, numpy scalars and objects with _sympy_ only, never the string fallback
        out = sympy.sympify(value, strict=True)
    except (sympy.SympifyError, TypeError, ValueError):
        raise DeclarationError(f"{what}: a {type(value).__name__} is neither a number nor a sympy expression") from None
    if not isinstance(out, sympy.Basic):
        raise DeclarationError(f"{what}: a {type(value).__name__} is neither a number nor a sympy expression")
    return out


def _args(name: str, args: tuple[Any, ...]) -> list[sympy.Basic]:
    return [to_sympy(a, f"an argument of {name}") for a in args]


def _evalf_by_rewrite(fn: sympy.Function, target: Any, prec: int) -> sympy.Expr | None:
    """sympy's numeric value of ``fn`` of a constant, through its closed form (None if not a constant)."""
    if fn.args[0].free_symbols:
        return None
    from mpmath.libmp import prec_to_dps

    value = fn.rewrite(target).evalf(prec_to_dps(prec))
    return value if value.is_Number else None


class sigmoid(sympy.Function):  # noqa: N801 - lower case like sympy's own functions
    """The logistic function ``1 / (1 + exp(-x))``."""

    nargs = 1

    def __new__(cls, *args: Any, **options: Any) -> Any:
        # sympy.Function would sympify a string argument (running it as Python)
        return super().__new__(cls, *_args(cls.__name__, args), **options)

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

    def _eval_evalf(self, prec: int) -> sympy.Expr | None:
        # numeric value of a constant argument (sympy compares and encloses constants with it)
        return _evalf_by_rewrite(self, sympy.exp, prec)

    def _latex(self, printer: Any) -> str:
        return rf"\sigma\left({printer._print(self.args[0])}\right)"


class softplus(sympy.Function):  # noqa: N801
    """``log(1 + exp(x))``, computed stably; its derivative is ``sigmoid(x)``."""

    nargs = 1

    def __new__(cls, *args: Any, **options: Any) -> Any:
        return super().__new__(cls, *_args(cls.__name__, args), **options)

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sigmoid(self.args[0])

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None

    def _eval_rewrite_as_log(self, x: sympy.Expr, **kwargs: Any) -> sympy.Expr:
        return sympy.log(1 + sympy.exp(x))

    def _eval_evalf(self, prec: int) -> sympy.Expr | None:
        return _evalf_by_rewrite(self, sympy.log, prec)

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


# The elementary functions, with their arguments converted by to_sympy: sympy's own
# would sympify a string argument. They return sympy's objects (sympy.exp, ...).
def exp(x: Any) -> sympy.Expr:
    """``e**x`` (sympy.exp)."""
    return sympy.exp(to_sympy(x, "the argument of exp"))


def log(x: Any, base: Any = None) -> sympy.Expr:
    """The natural logarithm, or the logarithm to ``base`` (sympy.log)."""
    if base is None:
        return sympy.log(to_sympy(x, "the argument of log"))
    base = to_sympy(base, "the base of log")
    # sympy folds log(x, 0) to 0 and log(x, x) to 1, though both are undefined somewhere
    if not (base.is_number and base.is_extended_real and base.is_positive and base != 1):
        raise DeclarationError("the base of log must be a positive constant other than 1")
    return sympy.log(to_sympy(x, "the argument of log"), base)


def sqrt(x: Any) -> sympy.Expr:
    """The principal square root (sympy.sqrt)."""
    return sympy.sqrt(to_sympy(x, "the argument of sqrt"))


def tanh(x: Any) -> sympy.Expr:
    """The hyperbolic tangent (sympy.tanh)."""
    return sympy.tanh(to_sympy(x, "the argument of tanh"))


def Abs(x: Any) -> sympy.Expr:
    """The absolute value (sympy.Abs)."""
    return sympy.Abs(to_sympy(x, "the argument of Abs"))


def minimum(*args: Any) -> sympy.Expr:
    """The least of the arguments (sympy.Min)."""
    return sympy.Min(*_args("minimum", args))


def maximum(*args: Any) -> sympy.Expr:
    """The greatest of the arguments (sympy.Max)."""
    return sympy.Max(*_args("maximum", args))


def where(condition: Any, if_true: Any, if_false: Any) -> sympy.Expr:
    """``if_true`` where ``condition`` holds, else ``if_false`` (a sympy Piecewise).

    A discontinuity stays a conditional in compiled code; the certified
    Lipschitz analysis accepts it only when it can prove the two branches meet
    on the boundary.
    """
    cond = to_sympy(condition, "the condition of where")
    if not isinstance(cond, sympy.logic.boolalg.Boolean):
        raise DeclarationError("the condition of where must be a comparison such as x > 0 (or True/False)")
    return sympy.Piecewise((to_sympy(if_true, "the value of where"), cond), (to_sympy(if_false, "the value of where"), True))


def clip(x: Any, lower: Any, upper: Any) -> sympy.Expr:
    """``min(max(x, lower), upper)``."""
    return sympy.Min(sympy.Max(to_sympy(x, "the argument of clip"), to_sympy(lower, "the lower bound of clip")),
                     to_sympy(upper, "the upper bound of clip"))


#: Names a textual expression (CLI, ``parse``) may use.
NAMESPACE: dict[str, Any] = {
    "exp": exp, "log": log, "sqrt": sqrt, "tanh": tanh, "abs": Abs, "Abs": Abs,
    "min": minimum, "max": maximum, "Min": minimum, "Max": maximum,
    "minimum": minimum, "maximum": maximum, "sigmoid": sigmoid, "softplus": softplus, "where": where,
    "Piecewise": sympy.Piecewise, "clip": clip, "pi": sympy.pi, "E": sympy.E,
}
