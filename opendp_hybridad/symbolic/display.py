"""Short, readable text for expressions and numbers: what reprs show, never what is computed.

Float constants are stored as their exact rationals (so sympy cannot fold them into
rounded constants, see :func:`~opendp_hybridad.symbolic.function.exact_constant`), which
sympy prints as ``3602879701896397*a/36028797018963968``. :func:`short_str` prints such
a constant as the shortest decimal that reads back as the nearest double (``0.1*a``):
exactly the double when the constant is one, its nearest double otherwise (a constant
sympy derived exactly, such as ``1/1.8**2`` after :meth:`RecordFunction.fix`), and 17
significant digits outside the range of doubles. Only the
text changes; expressions, certificates and kernels keep the exact values.
"""

from __future__ import annotations

import math

import sympy
from sympy.printing.str import StrPrinter

#: a fraction whose numerator or denominator reaches this many digits prints as a float
#: (small fractions such as 1/3 or 5/2, as a user writes them, print as fractions)
LONG_DIGITS = 7


def short_number(value: float) -> str:
    """A float as text: integers without ``.0`` (``90``), anything else by ``repr`` (shortest round trip)."""
    value = float(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _is_long(r: sympy.Rational) -> bool:
    return r.q != 1 and max(len(str(abs(r.p))), len(str(r.q))) >= LONG_DIGITS


def _as_double_text(r: sympy.Rational) -> str | None:
    """``repr`` of the double nearest ``r``, or None where that double would mislead (overflow, underflow to 0)."""
    try:
        value = float(r)
    except (OverflowError, ValueError):  # pragma: no cover - sympy returns inf rather than raising
        return None
    if not math.isfinite(value) or value == 0.0:
        return None
    return repr(value)


def _as_decimal_text(r: sympy.Rational) -> str:
    """A long fraction as a decimal: its nearest double, or 17 significant digits outside the double range."""
    return _as_double_text(r) or str(sympy.Float(r, 17))


class _ShortPrinter(StrPrinter):
    """sympy's str printer with long fractions and 53-bit floats printed as short decimals."""

    def _print_Rational(self, expr: sympy.Rational) -> str:
        if _is_long(expr):
            return _as_decimal_text(expr)
        return super()._print_Rational(expr)

    def _print_Float(self, expr: sympy.Float) -> str:
        # a float the user wrote (kept as a Float, e.g. an exponent) carries 53 bits: print its double
        if expr._prec == 53:
            value = float(expr)
            if math.isfinite(value):
                return repr(value)
        return super()._print_Float(expr)

    def _print_Mul(self, expr: sympy.Mul) -> str:
        coeff, rest = expr.as_coeff_Mul()
        if isinstance(coeff, sympy.Rational) and _is_long(coeff) and rest is not sympy.S.One:
            # the coefficient as a placeholder factor: sympy's own Mul printing then places
            # it first (digits sort before letters) and keeps denominators as a/b
            placeholder = sympy.Symbol(_as_decimal_text(abs(coeff)))
            sign = sympy.S.NegativeOne if coeff < 0 else sympy.S.One
            return super()._print_Mul(sympy.Mul(sign, placeholder, rest))
        return super()._print_Mul(expr)

    def parenthesize(self, item, level, strict=False):  # type: ignore[no-untyped-def]
        # a long fraction printed as a decimal needs no parentheses (sympy would add them to p/q)
        if isinstance(item, sympy.Rational) and _is_long(item) and item > 0:
            return self._print(item)
        return super().parenthesize(item, level, strict)


_PRINTER = _ShortPrinter()


def short_str(expr: sympy.Basic) -> str:
    """``str(expr)`` with long constants as short decimals (see the module docstring)."""
    return _PRINTER.doprint(expr)


__all__ = ["LONG_DIGITS", "short_number", "short_str"]
