"""Trace a plain Python function of named fields into a sympy expression.

The function is called once with :class:`Traced` placeholders. They support the
arithmetic operators, Python's ``abs``, numpy's ufuncs (``np.exp``, ``np.log``,
``np.sqrt``, ``np.tanh``, ``np.abs``, ``np.maximum``, ``np.minimum``,
``np.power``, ...) and ``np.where``, so one function can serve both numbers and
symbols. Python control flow on a traced value (``if x > 0``) cannot be traced;
it raises an error that points to ``where``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import sympy

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.symbolic.functions import sigmoid, to_sympy, where


def _unwrap(value: Any) -> Any:
    if isinstance(value, Traced):
        return value.expr
    if isinstance(value, TracedCondition):
        return value.cond
    # numbers, numpy scalars, sympy objects; text is refused (sympy.sympify would run it)
    return to_sympy(value, "an operand of a traced expression")


def _wrap(value: Any) -> Any:
    if isinstance(value, (sympy.logic.boolalg.Boolean, sympy.core.relational.Relational)):
        return TracedCondition(value)
    return Traced(value)


_UFUNCS: dict[Any, Callable[..., Any]] = {
    np.add: lambda a, b: a + b,
    np.subtract: lambda a, b: a - b,
    np.multiply: lambda a, b: a * b,
    np.divide: lambda a, b: a / b,
    np.true_divide: lambda a, b: a / b,
    np.power: lambda a, b: a**b,
    np.negative: lambda a: -a,
    np.positive: lambda a: a,
    np.square: lambda a: a**2,
    np.reciprocal: lambda a: 1 / a,
    np.exp: sympy.exp,
    np.log: sympy.log,
    np.sqrt: sympy.sqrt,
    np.tanh: sympy.tanh,
    np.absolute: sympy.Abs,
    np.maximum: sympy.Max,
    np.minimum: sympy.Min,
    np.fmax: sympy.Max,
    np.fmin: sympy.Min,
    np.greater: lambda a, b: a > b,
    np.greater_equal: lambda a, b: a >= b,
    np.less: lambda a, b: a < b,
    np.less_equal: lambda a, b: a <= b,
    np.logical_and: sympy.And,
    np.logical_or: sympy.Or,
    np.logical_not: sympy.Not,
}


class TracedCondition:
    """A traced comparison: usable in ``where``, not in Python's ``if``."""

    def __init__(self, cond: Any):
        self.cond = cond

    def _sympy_(self) -> Any:
        return self.cond

    def __bool__(self) -> bool:
        raise DeclarationError(
            "a traced function used Python control flow on a field (`if`, `and`, `or`, or a builtin min/max); "
            "write it with opendp_hybridad.where / np.where, np.maximum / np.minimum instead"
        )

    def __and__(self, other: Any) -> TracedCondition:
        return TracedCondition(sympy.And(self.cond, _unwrap(other)))

    def __or__(self, other: Any) -> TracedCondition:
        return TracedCondition(sympy.Or(self.cond, _unwrap(other)))

    def __invert__(self) -> TracedCondition:
        return TracedCondition(sympy.Not(self.cond))


class Traced:
    """A placeholder that records the operations applied to it."""

    __array_priority__ = 1000

    def __init__(self, expr: Any):
        self.expr = to_sympy(expr, "a traced value")

    def _sympy_(self) -> sympy.Expr:
        # lets sympy functions (hd.sigmoid, sympy.exp, ...) take traced values directly
        return self.expr

    # arithmetic
    def __add__(self, o: Any) -> Traced: return Traced(self.expr + _unwrap(o))
    def __radd__(self, o: Any) -> Traced: return Traced(_unwrap(o) + self.expr)
    def __sub__(self, o: Any) -> Traced: return Traced(self.expr - _unwrap(o))
    def __rsub__(self, o: Any) -> Traced: return Traced(_unwrap(o) - self.expr)
    def __mul__(self, o: Any) -> Traced: return Traced(self.expr * _unwrap(o))
    def __rmul__(self, o: Any) -> Traced: return Traced(_unwrap(o) * self.expr)
    def __truediv__(self, o: Any) -> Traced: return Traced(self.expr / _unwrap(o))
    def __rtruediv__(self, o: Any) -> Traced: return Traced(_unwrap(o) / self.expr)
    def __pow__(self, o: Any) -> Traced: return Traced(self.expr ** _unwrap(o))
    def __rpow__(self, o: Any) -> Traced: return Traced(_unwrap(o) ** self.expr)
    def __neg__(self) -> Traced: return Traced(-self.expr)
    def __pos__(self) -> Traced: return self
    def __abs__(self) -> Traced: return Traced(sympy.Abs(self.expr))

    # comparisons build conditions
    def __lt__(self, o: Any) -> TracedCondition: return TracedCondition(self.expr < _unwrap(o))
    def __le__(self, o: Any) -> TracedCondition: return TracedCondition(self.expr <= _unwrap(o))
    def __gt__(self, o: Any) -> TracedCondition: return TracedCondition(self.expr > _unwrap(o))
    def __ge__(self, o: Any) -> TracedCondition: return TracedCondition(self.expr >= _unwrap(o))

    def __bool__(self) -> bool:
        raise DeclarationError("a traced value was used as a truth value; use where(...) for conditionals")

    # numpy-style method calls (``x.exp()`` is what numpy tries on object arrays)
    def exp(self) -> Traced: return Traced(sympy.exp(self.expr))
    def log(self) -> Traced: return Traced(sympy.log(self.expr))
    def sqrt(self) -> Traced: return Traced(sympy.sqrt(self.expr))
    def tanh(self) -> Traced: return Traced(sympy.tanh(self.expr))

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" or kwargs.get("out") is not None:
            return NotImplemented
        op = _UFUNCS.get(ufunc)
        if op is None:
            raise DeclarationError(f"numpy function {ufunc.__name__!r} is not supported in a traced expression")
        return _wrap(op(*[_unwrap(i) for i in inputs]))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func is np.where:
            cond, a, b = args
            return Traced(where(_unwrap(cond), _unwrap(a), _unwrap(b)))
        if func is np.clip:
            x, lo, hi = args
            return Traced(sympy.Min(sympy.Max(_unwrap(x), _unwrap(lo)), _unwrap(hi)))
        raise DeclarationError(f"numpy function {func.__name__!r} is not supported in a traced expression")

    def __repr__(self) -> str:
        return f"Traced({self.expr})"


def traced_sigmoid(x: Any) -> Any:
    """``sigmoid`` that works on numbers, arrays and traced values alike."""
    if isinstance(x, Traced):
        return Traced(sigmoid(x.expr))
    if isinstance(x, sympy.Basic):
        return sigmoid(x)
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def trace(fn: Callable[..., Any], symbols: dict[str, sympy.Symbol]) -> sympy.Expr:
    """Call ``fn`` with one traced placeholder per parameter, matched to fields by name.

    A function with a single parameter that is not a field name receives a
    mapping from field name to placeholder (``lambda r: r["a"] * r["w"]``).
    """
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = [p.name for p in params]
    if len(names) == 1 and names[0] not in symbols:
        result = fn({n: Traced(s) for n, s in symbols.items()})
    else:
        unknown = [n for n in names if n not in symbols]
        if unknown:
            raise DeclarationError(f"the traced function takes {', '.join(unknown)}, which the schema does not declare")
        result = fn(**{n: Traced(symbols[n]) for n in names})
    if isinstance(result, (str, bytes)):
        raise DeclarationError("the traced function returned text; it must return a number-valued expression")
    expr = _unwrap(result)
    if not isinstance(expr, sympy.Expr):
        raise DeclarationError("the traced function must return a number-valued expression")
    return expr
