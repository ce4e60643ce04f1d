"""Scalar arithmetic rounded up: the constants of stability and privacy maps.

Every map in the package combines certified constants with these, so a rounding
step can only make a bound larger.
"""

from __future__ import annotations

import math
from fractions import Fraction


def mul_up(a: float, b: float) -> float:
    """``a * b`` rounded up (a, b >= 0); ``0 * inf`` is 0 (no change times any distance)."""
    if a == 0 or b == 0:
        return 0.0
    p = a * b
    return p if p == 0 else math.nextafter(p, math.inf)


def add_up(a: float, b: float) -> float:
    """``a + b`` rounded up (TwoSum tells whether the float sum fell short of the real one)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return math.nextafter(s, math.inf) if err > 0 else s


def div_up(a: float, b: float) -> float:
    """``a / b`` rounded up (a >= 0, b > 0), checked in exact rational arithmetic."""
    q = a / b
    return q if Fraction(q) * Fraction(b) >= Fraction(a) else math.nextafter(q, math.inf)


def round_up(x: Fraction) -> float:
    """The smallest float not below the rational ``x``."""
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


UNIT_ROUNDOFF = 2.0**-53


def gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (float64), rounded up.

    A float64 sum or dot product of ``n`` terms, in any order, is within
    ``gamma_n sum |terms|`` of the exact one (Higham 2002, section 3.1).
    """
    nu = n * UNIT_ROUNDOFF  # exact: a power of two times an integer below 2^53
    if nu >= 0.5:
        raise ValueError("too many terms for a float64 rounding bound")
    return round_up(Fraction(nu) / (1 - Fraction(nu)))
