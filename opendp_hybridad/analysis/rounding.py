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
