"""The float-only outward rounding of products, quotients and square roots, against exact rational arithmetic.

``mul_up``, ``div_up``, ``sqrt_up`` (and their ``_down`` forms) decide whether the IEEE result
needs one step outward from an error-free transformation (TwoProduct, Sterbenz) instead of a
``Fraction``; below the normal range they still compare exactly. Every result here is checked
against the exact value (``fractions.Fraction``): it must be the directed rounding of the exact
result, i.e. the same float as the former all-rational implementation
(``round_up(Fraction(a) * Fraction(b))`` and so on), on adversarial inputs: subnormals, the
largest floats, the edge of the range where the float-only path hands over to the exact one,
exactly representable results, and near-ties.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opendp_hybridad.analysis import rounding as rd

MAX = sys.float_info.max
TINY = 2.0**-1074
TWO_PRODUCTS = [rd.two_product_dekker] + ([rd.two_product_fma] if hasattr(math, "fma") else [])


def _ceil_float(x: Fraction) -> float:
    """The smallest float not below ``x`` (``inf`` past the largest float): the exact reference."""
    return rd.round_up(x)


def _floor_float(x: Fraction) -> float:
    return rd.round_down(x)


def _same(result: float, reference: float) -> bool:
    return result == reference or (math.isnan(result) and math.isnan(reference))


# -- strategies: every binade, subnormals, and mantissas that make ties and exact results likely --------------------
finite = st.floats(allow_nan=False, allow_infinity=False)
subnormal = st.integers(-(2**52 - 1), 2**52 - 1).map(lambda k: k * TINY)
short_mantissa = st.builds(lambda m, e: math.ldexp(m, e), st.integers(-(2**12), 2**12), st.integers(-1100, 1010))
near_one = st.builds(lambda k, e: math.ldexp(1.0 + k * 2.0**-52, e), st.integers(-8, 8), st.integers(-600, 600))
edge = st.sampled_from([2.0**-1021, math.nextafter(2.0**-1021, 0), math.nextafter(2.0**-1021, 1), 2.0**-1022, TINY, 3 * TINY,
                        MAX, math.nextafter(MAX, 0), 2.0**1023, 2.0**512, 2.0**-537, 1.0, math.nextafter(1.0, 2), 0.1, 3.0])
awkward = st.one_of(finite, subnormal, short_mantissa, near_one, edge, edge.map(lambda v: -v))


@pytest.mark.parametrize("two_product", TWO_PRODUCTS)
@settings(max_examples=1500, deadline=None)
@given(a=st.floats(0.5, 2.0), b=st.floats(0.5, 2.0), sa=st.booleans(), sb=st.booleans())
@example(a=1.0 + 2.0**-52, b=1.0 - 2.0**-53, sa=False, sb=True)
@example(a=2.0, b=2.0, sa=False, sb=False)
def test_two_product_is_error_free_on_the_mantissas_it_is_given(two_product, a, b, sa, sb):
    a, b = (-a if sa else a), (-b if sb else b)
    x, y = two_product(a, b)
    assert x == a * b
    assert Fraction(x) + Fraction(y) == Fraction(a) * Fraction(b)


@settings(max_examples=1500, deadline=None)
@given(a=awkward, b=awkward)
@example(a=2.0**-1074, b=2.0**1000)  # subnormal input, normal product
@example(a=2.0**-537, b=2.0**-485)  # the product is exactly 2^-1022: the exact path
@example(a=math.nextafter(2.0**-1021, 1), b=1.0)  # just inside the float-only path
@example(a=MAX, b=math.nextafter(1.0, 0))  # at the top of the range
@example(a=3.0, b=1.0 / 3.0)
@example(a=1.0 + 2.0**-52, b=1.0 + 2.0**-52)  # 1 + 2^-51 + 2^-104: rounds down, so one step up
def test_products_are_the_exact_product_rounded_outward(a, b):
    exact = Fraction(a) * Fraction(b)
    p = a * b
    if math.isinf(p):  # overflow: +inf above, and -max (the float above the real product) below
        assert rd.mul_up(a, b) == (p if p > 0 else -sys.float_info.max)
        return
    up, down = rd.mul_up(a, b), rd.mul_down(a, b)
    assert _same(up, _ceil_float(exact)) and Fraction(up) >= exact
    assert _same(down, _floor_float(exact)) and Fraction(down) <= exact
    sign = rd._product_error_sign(a, b, p)
    if sign is not None:
        truth = exact - Fraction(p)
        assert sign == (truth > 0) - (truth < 0)


@settings(max_examples=1500, deadline=None)
@given(a=awkward, b=awkward.filter(lambda v: v != 0))
@example(a=1.0, b=3.0)
@example(a=6.0, b=3.0)  # exact
@example(a=2.0**-1021, b=1.0)  # the quotient sits on the hand-over point
@example(a=2.0**-1020, b=2.0)
@example(a=2.0**-1074, b=2.0**-1074)
@example(a=MAX, b=math.nextafter(1.0, 2))
@example(a=1.0, b=MAX)  # the quotient is subnormal: the exact path
def test_quotients_are_the_exact_quotient_rounded_outward(a, b):
    exact = Fraction(a) / Fraction(b)
    q = a / b
    if math.isinf(q):
        assert rd.div_up(a, b) == (q if q > 0 else -sys.float_info.max)
        return
    up, down = rd.div_up(a, b), rd.div_down(a, b)
    assert _same(up, _ceil_float(exact)) and Fraction(up) >= exact
    assert _same(down, _floor_float(exact)) and Fraction(down) <= exact
    if a != 0:
        sign = rd._quotient_error_sign(a, b, q)
        if sign is not None:
            truth = exact - Fraction(q)
            assert sign == (truth > 0) - (truth < 0)


def _exact_sqrt_floor_ceil(x: float) -> tuple[float, float]:
    """The floats just below and above ``sqrt(x)`` (equal when the root is a float), by exact comparison of squares."""
    r = math.sqrt(x)
    lo = r
    while Fraction(lo) ** 2 > Fraction(x):
        lo = math.nextafter(lo, 0)
    while Fraction(math.nextafter(lo, math.inf)) ** 2 <= Fraction(x):
        lo = math.nextafter(lo, math.inf)
    hi = lo if Fraction(lo) ** 2 == Fraction(x) else math.nextafter(lo, math.inf)
    return lo, hi


@settings(max_examples=1500, deadline=None)
@given(x=awkward.map(abs))
@example(x=4.0)
@example(x=2.0)
@example(x=TINY)
@example(x=4 * TINY)  # a subnormal with an exact root (2^-536)
@example(x=MAX)
@example(x=(1.0 + 2.0**-52) ** 2)
@example(x=2.0**-1022)
def test_square_roots_are_the_exact_root_rounded_outward(x):
    lo, hi = _exact_sqrt_floor_ceil(x)
    assert rd.sqrt_up(x) == hi and Fraction(rd.sqrt_up(x)) ** 2 >= Fraction(x)
    assert rd.sqrt_down(x) == lo and Fraction(rd.sqrt_down(x)) ** 2 <= Fraction(x)
    if x > 0:
        sign = rd._square_excess_sign(x, math.sqrt(x))
        truth = Fraction(math.sqrt(x)) ** 2 - Fraction(x)
        assert sign == (truth > 0) - (truth < 0)


def test_both_outcomes_occur_so_the_checks_above_can_fail():
    """Exact results stay, inexact ones step: a decision that always stepped (or never) would fail here."""
    # fl(0.1 x 3) = 0.30000000000000004 is above the exact product of the two floats: kept
    assert rd.mul_up(3.0, 0.5) == 1.5 and rd.mul_up(0.1, 3.0) == 0.1 * 3.0 and rd.mul_down(0.1, 3.0) < 0.1 * 3.0
    assert rd.div_up(6.0, 3.0) == 2.0 and rd.div_down(1.0, 3.0) == 1.0 / 3.0 and rd.div_up(1.0, 3.0) > 1.0 / 3.0
    # the float sqrt(2) is above the real root, the float sqrt(3) below it
    assert Fraction(math.sqrt(2.0)) ** 2 > 2 and Fraction(math.sqrt(3.0)) ** 2 < 3
    assert rd.sqrt_up(9.0) == 3.0 == rd.sqrt_down(9.0)
    assert rd.sqrt_up(2.0) == math.sqrt(2.0) and rd.sqrt_down(2.0) == math.nextafter(math.sqrt(2.0), 0)
    assert rd.sqrt_down(3.0) == math.sqrt(3.0) and rd.sqrt_up(3.0) == math.nextafter(math.sqrt(3.0), 2)
    # a product that rounds up (no step) and one that rounds down (a step), both on the float-only path
    a = 1.0 + 2.0**-52
    assert rd._product_error_sign(a, a, a * a) == 1 and rd.mul_up(a, a) == math.nextafter(a * a, 2)
    assert rd._product_error_sign(a, 1.0 - 2.0**-53, a * (1.0 - 2.0**-53)) is not None


def test_the_float_only_path_is_taken_in_the_normal_range_and_left_below_it():
    assert rd._product_error_sign(3.0, 0.1, 0.30000000000000004) is not None
    assert rd._product_error_sign(2.0**-537, 2.0**-485, 2.0**-1022) is None  # below 2^-1021: exact comparison
    assert rd._quotient_error_sign(1.0, MAX, 1.0 / MAX) is None
    assert rd._quotient_error_sign(1.0, 3.0, 1.0 / 3.0) is not None


def test_infinities_nans_and_zeros_pass_through_as_before():
    assert rd.mul_up(0.0, math.inf) == 0.0 and rd.mul_up(-0.0, 5.0) == 0.0
    assert rd.mul_up(math.inf, 2.0) == math.inf and math.isnan(rd.mul_up(math.nan, 2.0))
    assert rd.div_up(0.0, 3.0) == 0.0 and rd.div_up(1.0, math.inf) == 0.0 and rd.div_up(math.inf, 2.0) == math.inf
    assert rd.sqrt_up(0.0) == 0.0 and rd.sqrt_up(math.inf) == math.inf and math.isnan(rd.sqrt_up(math.nan))
    with pytest.raises(ZeroDivisionError):
        rd.div_up(1.0, 0.0)
    with pytest.raises(ValueError):
        rd.sqrt_up(-1.0)


def test_the_cached_counts_are_the_uncached_values():
    """``gamma`` and ``underflow_allowance`` are cached now; the cache returns what the formula gives."""
    for n in (1, 2, 3, 100, 10**6):
        exact = Fraction(n, 2**53) / (1 - Fraction(n, 2**53))
        assert rd.gamma(n) == rd.round_up(exact)
    for entries, terms in ((1, 1), (10, 129), (128, 65), (4096, 4096)):
        root = rd.round_up(Fraction(math.isqrt(entries))) if math.isqrt(entries) ** 2 == entries else None
        value = rd.underflow_allowance(entries, terms)
        assert Fraction(value) >= Fraction(terms) * Fraction(TINY) * (Fraction(root) if root else Fraction(math.sqrt(entries)))
        assert value == rd.underflow_allowance.__wrapped__(entries, terms)


def test_int_operands_whose_value_is_not_a_float_are_compared_exactly():
    """``2^60 + 1`` becomes ``2^60`` as a float: the float-only path would miss the ``+3`` of the product."""
    big = 2**60 + 1
    assert rd.mul_up(big, 3.0) == rd.round_up(Fraction(big) * 3) > float(big) * 3.0
    assert rd.mul_down(-big, 3.0) == rd.round_down(Fraction(-big) * 3)
    assert rd.div_up(big, 1.0) == rd.round_up(Fraction(big)) > float(big)
    assert Fraction(rd.sqrt_up(2**106 + 1)) ** 2 >= 2**106 + 1
    assert Fraction(rd.sqrt_down(2**106 - 1)) ** 2 <= 2**106 - 1
