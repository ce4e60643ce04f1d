"""Higham's gamma_n against the exact error of float64 sums and dot products."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opendp_hybridad.analysis.rounding import add_up_array, gamma


def test_gamma_is_the_closed_form_rounded_up():
    for n in (1, 2, 3, 100, 10**6, 2**40):
        exact = Fraction(n, 2**53) / (1 - Fraction(n, 2**53))
        assert Fraction(gamma(n)) >= exact
        assert Fraction(gamma(n)) <= exact * (1 + Fraction(1, 2**50))
    with pytest.raises(ValueError):
        gamma(2**52)


@pytest.mark.parametrize("n", [10, 1000, 20_000])
def test_float_dot_products_stay_within_gamma_of_the_exact_value(n):
    rng = np.random.default_rng(n)
    worst = 0.0
    for trial in range(10):
        # ill-conditioned on purpose: large terms that cancel, and terms of one sign that pile up rounding
        a = rng.standard_normal(n) * (10.0 ** rng.uniform(-8, 8, n) if trial % 2 else 1.0)
        b = rng.standard_normal(n) if trial % 3 else np.abs(rng.standard_normal(n))
        exact = sum(Fraction(x) * Fraction(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))
        magnitude = sum(abs(Fraction(x) * Fraction(y)) for x, y in zip(a.tolist(), b.tolist(), strict=True))
        for computed in (float(np.dot(a, b)), float((a * b).sum()), math.fsum((a * b).tolist())):
            error = abs(Fraction(computed) - exact)
            assert error <= Fraction(gamma(n)) * magnitude
            worst = max(worst, float(error / magnitude) / gamma(n))
    assert worst > 0  # rounding happened: the comparison was not vacuous


# -- the named rounded-up operations, against exact rational arithmetic -------------------
from opendp_hybridad.analysis import rounding as rd  # noqa: E402


def _awkward_floats(rng: np.random.Generator, n: int) -> list[float]:
    """Random floats over the whole exponent range, subnormals and near-ties included."""
    out = [0.0, 2.0**-1074, 2.0**-1022, 1.0, 1.0 + 2.0**-52, 3.0, 0.1, 1e308, 2.0**1023 * 1.5]
    mant = rng.uniform(1, 2, n)
    exps = rng.integers(-1074, 1023, n)
    out += [math.ldexp(float(m), int(e)) for m, e in zip(mant, exps, strict=True)]
    out += [1.0 + k * 2.0**-52 for k in range(1, 6)]  # products of these sit near ties
    return [x * s for x in out for s in (1.0, -1.0)]


def _check_up(result: float, exact: Fraction) -> None:
    if math.isinf(result) and result > 0:
        return
    assert Fraction(result) >= exact
    # tight: at most two ulp above the exact value
    assert Fraction(math.nextafter(math.nextafter(result, -math.inf), -math.inf)) < exact or result == float(exact)


def test_binary_operations_round_up_exactly():
    rng = np.random.default_rng(7)
    xs = _awkward_floats(rng, 60)
    ys = _awkward_floats(rng, 60)
    for a in xs[::3]:
        for b in ys[::3]:
            A, B = Fraction(a), Fraction(b)
            with np.errstate(all="ignore"):
                if math.isfinite(a + b):
                    _check_up(rd.add_up(a, b), A + B)
                    assert Fraction(rd.add_down(a, b)) <= A + B
                    _check_up(rd.sub_up(a, b), A - B)
                if math.isfinite(a * b):
                    _check_up(rd.mul_up(a, b), A * B)
                    assert Fraction(rd.mul_down(a, b)) <= A * B
                if b != 0 and math.isfinite(a / b):
                    _check_up(rd.div_up(a, b), A / B)
                    assert Fraction(rd.div_down(a, b)) <= A / B


def test_exact_results_stay_exact():
    assert rd.add_up(1.0, -1.0) == 0.0
    assert rd.mul_up(3.0, 0.5) == 1.5
    assert rd.div_up(1.0, 4.0) == 0.25
    assert rd.sqrt_up(4.0) == 2.0
    assert rd.mul_up(0.0, math.inf) == 0.0


def test_square_roots_and_norms():
    rng = np.random.default_rng(3)
    for x in _awkward_floats(rng, 200):
        x = abs(x)
        r = rd.sqrt_up(x)
        assert Fraction(r) ** 2 >= Fraction(x)
        assert Fraction(rd.sqrt_down(x)) ** 2 <= Fraction(x)
    # norms whose squares overflow or underflow
    for values in ([1e200, 1e200], [1e-200, 3e-200], [2.0**-1074] * 3, [1e308, 1e308, 1.0], [3.0, 4.0], [0.0]):
        exact_sq = sum(Fraction(v) ** 2 for v in values)
        n = rd.norm2_up(values)
        assert math.isinf(n) or Fraction(n) ** 2 >= exact_sq
        assert not math.isinf(n)
        assert Fraction(n) ** 2 <= exact_sq * Fraction(101, 100) ** 2 + Fraction(2.0**-1000)
        rows = rd.norm2_up_rows(np.array([values], dtype=float))
        assert math.isinf(rows[0]) or Fraction(float(rows[0])) ** 2 >= exact_sq
    assert rd.norm2_up([3.0, 4.0]) == 5.0


def test_norm_rows_against_exact_on_random_scales():
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((50, 17)) * 10.0 ** rng.integers(-300, 300, (50, 1))
    got = rd.norm2_up_rows(rows)
    for row, g in zip(rows, got, strict=True):
        exact_sq = sum(Fraction(float(v)) ** 2 for v in row)
        assert Fraction(float(g)) ** 2 >= exact_sq
        assert Fraction(float(g)) ** 2 <= exact_sq * (1 + Fraction(1, 10**12)) ** 2


def test_sum_up_and_round_up():
    vals = [1e16, 1.0, -1e16, 2.0**-60, 3.0]
    s = rd.sum_up(vals)
    exact = sum(map(Fraction, vals))
    assert Fraction(s) >= exact and s <= math.nextafter(float(exact), math.inf)
    third = Fraction(1, 3)
    assert Fraction(rd.round_up(third)) >= third >= Fraction(rd.round_down(third))


def test_libm_padding_covers_library_functions():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    rng = np.random.default_rng(5)
    for x in rng.uniform(-700, 700, 300).tolist():
        for f, g in ((math.exp, mpmath.exp), (math.tanh, mpmath.tanh)):
            y = f(x)
            true = g(mpmath.mpf(x))
            assert mpmath.mpf(rd.libm_down(y)) <= true <= mpmath.mpf(rd.libm_up(y))
        y = math.log(abs(x) + 1e-300)
        true = mpmath.log(mpmath.mpf(abs(x) + 1e-300))
        assert mpmath.mpf(rd.libm_down(y)) <= true <= mpmath.mpf(rd.libm_up(y))


def test_ulp_up_bounds_the_gap_and_outward_steps_stay_within_two_gaps():
    """Facts D and N of analysis/float_error.py, on exact products and quotients of awkward floats."""
    rng = np.random.default_rng(13)
    xs = _awkward_floats(rng, 40)
    for a in xs[::2]:
        for b in xs[1::2]:
            for op, exact in ((lambda p, q: p * q, Fraction(a) * Fraction(b)),
                              (lambda p, q: p / q, Fraction(a) / Fraction(b) if b else None)):
                if exact is None or abs(exact) > Fraction(1.7976931348623157e308):
                    continue
                t = abs(exact)
                gap = Fraction(rd.ulp_up(float(rd.round_up(t))))
                lo, hi = rd.round_down(exact), rd.round_up(exact)
                assert Fraction(hi) - Fraction(lo) <= gap  # the two floats around t
                with np.errstate(all="ignore"):
                    r = op(a, b)
                for end in (rd.up(r), rd.down(r)):
                    if math.isfinite(end):
                        assert abs(Fraction(end) - exact) <= 2 * gap


def test_libm_helpers_and_gradual_underflow():
    rd.check_gradual_underflow()  # this process keeps subnormals
    for y in (0.0, 2.0**-1074, 1e-310, 2.0**-976, 1.0, -3.5, 1e300):
        for v in (y, -y):
            up_, down_ = rd.libm_up(v), rd.libm_down(v)
            pad = abs(Fraction(v)) * Fraction(rd.LIBM_PAD) + Fraction(rd.TINY)
            assert Fraction(up_) >= Fraction(v) + pad and Fraction(down_) <= Fraction(v) - pad
            spread = Fraction(rd.libm_spread_up(abs(v)))
            assert Fraction(up_) - Fraction(v) <= spread and Fraction(v) - Fraction(down_) <= spread
            assert Fraction(rd.libm_error_up(abs(v))) >= pad
    assert rd.libm_up(math.inf) == math.inf and rd.ulp_up(math.inf) == math.inf
    assert 2.0**-52 <= rd.ulp_up(1.0) <= 2.0**-51


def test_norm2_up_of_a_norm_above_the_float_range_is_inf():
    """Audit (attack_lipschitz.py): math.ldexp raised OverflowError, so Sequential(input_bound=1e308) with 7 inputs
    crashed at declaration instead of getting the vacuous bound inf."""
    from opendp_hybridad.analysis.rounding import norm2_up

    assert norm2_up([1e308] * 7) == math.inf


def test_norm2_up_of_subnormal_values_is_not_below_the_exact_norm():
    """Audit (attack_tightness.py): the power-of-two scaling back rounds to nearest below the normal range, so
    norm2_up([5e-324, 5e-324]) gave 5e-324 against sqrt(2) 5e-324, and a certified K came out 29% too small."""
    from fractions import Fraction

    from opendp_hybridad.analysis.rounding import norm2_up

    for values in ([5e-324, 5e-324], [3 * 5e-324, 4 * 5e-324, 5e-324], [2.0**-1060, 2.0**-1070, 5e-324]):
        bound = Fraction(norm2_up(values))
        assert bound**2 >= sum(Fraction(v) ** 2 for v in values)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)), min_size=1, max_size=20))
def test_add_up_array_is_the_exact_sum_or_the_next_float_above(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    got = add_up_array(a, b)
    for x, y, s in zip(a, b, got, strict=True):
        if math.isinf(x) or math.isinf(y):
            assert math.isnan(s) if (math.isinf(x) and math.isinf(y) and x != y) else s == x + y
            continue
        exact = Fraction(x) + Fraction(y)
        if math.isinf(s):
            assert s > 0  # an overflowing positive sum
            continue
        assert Fraction(s) >= exact  # never below
        assert s == x + y or s == math.nextafter(x + y, math.inf)  # at most one step above the IEEE sum
        if math.isfinite(x + y) and Fraction(x + y) == exact:
            assert s == x + y  # exact sums stay exact


def test_add_up_array_on_cancellation_overflow_and_subnormals():
    tiny = 2.0**-1074
    a = np.array([1.0, 1e308, -1e308, tiny, 1.0, -1.0])
    b = np.array([2.0**-60, 1e308, -1e308, tiny, -1.0, -(2.0**-60)])
    got = add_up_array(a, b)
    assert got[0] == math.nextafter(1.0, 2.0)  # 1 + 2^-60 rounds to 1, below the exact sum
    assert got[1] == math.inf
    assert got[2] == -np.finfo(float).max  # -inf is below the exact sum; the most negative float is above it
    assert got[3] == 2 * tiny and got[4] == 0.0  # exact
    assert got[5] == -1.0  # -1 - 2^-60 rounds to -1, above the exact sum: kept


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, allow_infinity=False, allow_nan=False, allow_subnormal=True), st.sampled_from([1, 2, 16, 64]))
def test_round_up_to_slots_is_the_next_slot_exactly(value, per_octave):
    from opendp_hybridad.analysis.rounding import round_up_to_slots

    got = round_up_to_slots(value, per_octave)
    if value == 0:
        assert got == 0
        return
    if math.isinf(got):
        assert value > (2 - 1 / per_octave) * 2.0**1023  # only values in the top slot of the last octave overflow
        return
    # the slot: j / per_octave * 2^k with 2^k <= value < 2^(k+1), j whole, by exact arithmetic
    k = math.frexp(value)[1] - 1
    exact = Fraction(math.ceil(Fraction(value) / Fraction(2) ** k * per_octave), per_octave) * Fraction(2) ** k
    assert Fraction(got) == exact and got >= value
    assert Fraction(got) <= Fraction(value) * (1 + Fraction(1, per_octave))


def test_round_up_to_slots_is_the_formula_it_replaced():
    from opendp_hybridad.analysis.rounding import round_up_to_slots

    rng = np.random.default_rng(0)
    for value in np.exp(rng.uniform(-700, 700, 20000)):
        for slots in (16, 64):
            octave = math.floor(math.log2(value))
            old = math.ceil((value / 2.0**octave) * slots) / slots * 2.0**octave
            assert round_up_to_slots(float(value), slots) == old
    with pytest.raises(ValueError):
        round_up_to_slots(1.0, 3)


def test_results_past_the_largest_float_stay_on_the_right_side():
    # a per-step-K review noticed: a negative product, sum or quotient past -max rounded "up" to -inf, below the real
    # result; the float above it is -max (and the float below a positive one past max is max)
    import sys
    from fractions import Fraction

    from opendp_hybridad.analysis import rounding as r

    big = sys.float_info.max
    cases = [(r.mul_up, -big, 2.0, lambda a, b: a * b), (r.add_up, -big, -big, lambda a, b: a + b),
             (r.div_up, -big, 0.5, lambda a, b: a / b), (r.sub_up, -big, big, lambda a, b: a - b)]
    for op, a, b, exact in cases:
        got = op(a, b)
        assert got == -big and Fraction(got) >= exact(Fraction(a), Fraction(b))
    downs = [(r.mul_down, big, 2.0, lambda a, b: a * b), (r.add_down, big, big, lambda a, b: a + b),
             (r.div_down, big, 0.5, lambda a, b: a / b)]
    for op, a, b, exact in downs:
        got = op(a, b)
        assert got == big and Fraction(got) <= exact(Fraction(a), Fraction(b))
    assert r.mul_up(big, 2.0) == float("inf") and r.add_up(float("-inf"), 1.0) == float("-inf")  # unchanged


def test_int_operands_past_two_to_the_53_are_bounded_by_the_exact_result():
    # a review found mul_up(a, b) and div_up(a, b) below the exact result for ints a >= 2^53 (a is rounded to a float
    # before the product is: double rounding can fall more than the one float up() steps); sqrt_up likewise
    import random
    from fractions import Fraction

    from opendp_hybridad.analysis import rounding as r

    rng = random.Random(1)
    for _ in range(3000):
        a, b = rng.randrange(2**53, 2**60), rng.uniform(0.5, 1.0)
        assert Fraction(r.mul_up(a, b)) >= Fraction(a) * Fraction(b)
        assert Fraction(r.div_up(a, b)) >= Fraction(a) / Fraction(b)
        assert Fraction(r.mul_down(a, b)) <= Fraction(a) * Fraction(b)
        assert Fraction(r.sqrt_up(a)) ** 2 >= a
