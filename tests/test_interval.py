"""Outward rounding: every enclosure contains the exact result (checked in exact or 60-digit arithmetic)."""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.interval import IntervalEvaluator
from opendp_hybridad.analysis.tape import Tape, exact_interval
from opendp_hybridad.symbolic.functions import sigmoid, softplus

mpmath.mp.dps = 60
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
tiny_or_big = st.one_of(finite, st.floats(-1e-300, 1e-300), st.floats(-1e150, 1e150))


def _interval(a, b):
    return (min(a, b), max(a, b))


@settings(max_examples=300, deadline=None)
@given(st.tuples(tiny_or_big, tiny_or_big), st.tuples(tiny_or_big, tiny_or_big), st.floats(0, 1), st.floats(0, 1))
def test_add_and_mul_contain_the_exact_result(x, y, s, t):
    (alo, ahi), (blo, bhi) = _interval(*x), _interval(*y)
    a = Fraction(alo) + (Fraction(ahi) - Fraction(alo)) * Fraction(s)
    b = Fraction(blo) + (Fraction(bhi) - Fraction(blo)) * Fraction(t)
    arr = lambda v: np.array([v])  # noqa: E731
    slo, shi = iv.add(arr(alo), arr(ahi), arr(blo), arr(bhi))
    plo, phi = iv.mul(arr(alo), arr(ahi), arr(blo), arr(bhi))
    assert Fraction(slo[0]) <= a + b <= Fraction(shi[0])
    assert Fraction(plo[0]) <= a * b <= Fraction(phi[0])


def test_exact_sums_are_not_widened():
    lo, hi = iv.add(np.array([1.0]), np.array([1.0]), np.array([-1.0]), np.array([-1.0]))
    assert lo[0] == 0.0 and hi[0] == 0.0
    lo, hi = iv.add(np.array([0.1]), np.array([0.1]), np.array([0.2]), np.array([0.2]))
    assert Fraction(lo[0]) <= Fraction(0.1) + Fraction(0.2) <= Fraction(hi[0])
    assert lo[0] < hi[0]  # 0.1 + 0.2 is inexact


UNARY = [
    (sp.exp, mpmath.exp, (-700, 700)),
    (sp.log, mpmath.log, (1e-300, 1e300)),
    (sp.tanh, mpmath.tanh, (-50, 50)),
    (sp.sqrt, mpmath.sqrt, (0, 1e300)),
    (sigmoid, lambda v: 1 / (1 + mpmath.exp(-v)), (-700, 700)),
    (softplus, lambda v: mpmath.log1p(mpmath.exp(v)), (-700, 700)),
    (lambda e: e**3, lambda v: v**3, (-1e100, 1e100)),
    (lambda e: e**2, lambda v: v**2, (-1e150, 1e150)),
    (lambda e: 1 / e, lambda v: 1 / v, (1e-300, 1e300)),
    (lambda e: e ** sp.Rational(1, 3), lambda v: mpmath.cbrt(v), (1e-300, 1e300)),
    (lambda e: e**0.3, lambda v: mpmath.power(v, mpmath.mpf(0.3)), (1e-3, 1e3)),  # the exponent is the double 0.3
]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(UNARY) - 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_library_functions_enclose_the_60_digit_value(which, p, q, r):
    sym_fn, mp_fn, (lo_dom, hi_dom) = UNARY[which]
    x = sp.Symbol("x", real=True)
    tape = Tape([x])
    tape.add_output(sym_fn(x))
    a = lo_dom + (hi_dom - lo_dom) * min(p, q)
    b = lo_dom + (hi_dom - lo_dom) * max(p, q)
    point = min(max(a + (b - a) * r, a), b)  # rounding may step outside [a, b]
    L, H, B = IntervalEvaluator(tape).evaluate(np.array([[a], [point]]), np.array([[b], [point]]))
    out = tape.outputs[0]
    exact = mp_fn(mpmath.mpf(point))
    for k in (0, 1):
        if B[out][k] >= 0:
            continue  # overflow flagged: no claim made
        assert mpmath.mpf(L[out][k]) <= exact <= mpmath.mpf(H[out][k])


def test_constants_are_enclosed_exactly():
    for value in (sp.pi, sp.E, sp.Rational(1, 3), sp.Float("0.1"), sp.sqrt(2)):
        lo, hi = exact_interval(value)
        exact = mpmath.mpf(sp.N(value, 60))
        assert mpmath.mpf(lo) <= exact <= mpmath.mpf(hi)
    assert exact_interval(sp.Rational(1, 4)) == (0.25, 0.25)


def test_even_power_of_a_straddling_interval_starts_at_zero():
    x = sp.Symbol("x", real=True)
    tape = Tape([x])
    tape.add_output(x**2 * 1)
    L, H, _ = IntervalEvaluator(tape).evaluate(np.array([[-1.0]]), np.array([[2.0]]))
    assert L[tape.outputs[0]][0] == 0.0 and H[tape.outputs[0]][0] >= 4.0


# -- adversarial operands, every op against exact rationals or 60-digit mpmath --------------
import math  # noqa: E402

from opendp_hybridad.analysis import rounding as rd  # noqa: E402

MAX = 1.7976931348623157e308
TINY = 2.0**-1074
ADVERSARIAL = sorted({
    0.0, TINY, 3 * TINY, 2.0**-1073, 2.0**-1022, 2.0**-1022 - TINY, 2.0**-1022 + TINY, 2.0**-537, 2.0**-538,
    1e-300, 1e-160, 2.0**-53, 2.0**-53 + 2.0**-105, 2.0**-54, 0.1, 1.0 / 3.0, 0.5, 0.5 + 2.0**-53,
    1.0, 1.0 + 2.0**-52, 1.0 - 2.0**-53, 1.0 + 3 * 2.0**-52, 3.0, 2.0**52 + 1, 2.0**53, 2.0**53 + 2, 1e16,
    2.0**511, 2.0**512, 1e154, 1.3407807929942596e154, 1e300, MAX / 2, math.nextafter(MAX, 0), MAX,
})
ADVERSARIAL = sorted(set(ADVERSARIAL) | {-v for v in ADVERSARIAL})


def _arr(v):
    return np.array([v], dtype=float)


def _intervals(values):
    """Degenerate intervals at each value and intervals between neighbours (straddling 0 included)."""
    values = sorted(set(values))
    out = [(v, v) for v in values]
    out += [(values[i], values[j]) for i in range(len(values)) for j in (i + 1, i + 7) if j < len(values)]
    return out


def _corner_points(lo, hi):
    return [Fraction(lo), Fraction(hi)] + ([Fraction(0)] if lo < 0 < hi else [])


def test_add_is_a_directed_rounding_of_the_exact_sum_near_ties_subnormals_and_overflow():
    for a in ADVERSARIAL:
        for b in ADVERSARIAL:
            lo, hi = iv.add(_arr(a), _arr(a), _arr(b), _arr(b))
            exact = Fraction(a) + Fraction(b)
            if abs(exact) > Fraction(MAX):
                assert not math.isfinite(hi[0]) or not math.isfinite(lo[0])
                continue
            # TwoSum: each end is exactly the exact sum rounded in its direction
            assert (lo[0], hi[0]) == (rd.round_down(exact), rd.round_up(exact)), (a, b)


def test_add_at_the_overflow_edge_steps_even_when_twosum_overflows():
    for a, b in ((MAX, -(2.0**970)), (-MAX, 2.0**970), (MAX, -MAX), (MAX, 2.0**969), (math.nextafter(MAX, 0), 2.0**970)):
        lo, hi = iv.add(_arr(a), _arr(a), _arr(b), _arr(b))
        exact = Fraction(a) + Fraction(b)
        if math.isfinite(hi[0]):
            assert Fraction(hi[0]) >= exact
        if math.isfinite(lo[0]):
            assert Fraction(lo[0]) <= exact


def test_mul_contains_every_product_and_keeps_its_sign_at_subnormal_products():
    ints = _intervals(ADVERSARIAL[::2])
    for alo, ahi in ints[::3]:
        for blo, bhi in ints[::5]:
            plo, phi = iv.mul(_arr(alo), _arr(ahi), _arr(blo), _arr(bhi))
            for a in _corner_points(alo, ahi):
                for b in _corner_points(blo, bhi):
                    p = a * b
                    if math.isfinite(plo[0]):
                        assert Fraction(plo[0]) <= p, (alo, ahi, blo, bhi)
                    if math.isfinite(phi[0]):
                        assert p <= Fraction(phi[0]), (alo, ahi, blo, bhi)
            if alo >= 0 and blo >= 0:
                assert plo[0] >= 0
    # products at and below the subnormal range, and at ties between subnormals
    for a, b in ((2.0**-537, 2.0**-537), (2.0**-538, 2.0**-537), (3 * TINY, 0.5), (TINY, 0.5), (1e-200, 1e-200),
                 (1 + 2.0**-52, 1 + 2.0**-52), (-(2.0**-538), 2.0**-537), (2.0**512, 2.0**511)):
        plo, phi = iv.mul(_arr(a), _arr(a), _arr(b), _arr(b))
        p = Fraction(a) * Fraction(b)
        if abs(p) <= Fraction(MAX):
            assert Fraction(plo[0]) <= p <= Fraction(phi[0])
            assert (plo[0] >= 0) if p > 0 else (phi[0] <= 0)
        else:
            assert math.isinf(phi[0])


def _one_var(expr_fn):
    xs = sp.Symbol("x", real=True)
    tape = Tape([xs])
    tape.add_output(expr_fn(xs))
    return tape, tape.outputs[0]


def _check_unary(expr_fn, exact_fn, intervals, mp=True):
    """Every non-flagged enclosure contains the exact value at its ends (and at 0 if inside)."""
    tape, out = _one_var(expr_fn)
    lo = np.array([[a] for a, _ in intervals])
    hi = np.array([[b] for _, b in intervals])
    L, H, B = IntervalEvaluator(tape).evaluate(lo, hi)
    checked = 0
    for k, (a, b) in enumerate(intervals):
        if B[out][k] >= 0:
            continue
        for v in (a, b):
            exact = exact_fn(mpmath.mpf(v) if mp else Fraction(v))
            low, high = (mpmath.mpf(L[out][k]), mpmath.mpf(H[out][k])) if mp else (Fraction(L[out][k]), Fraction(H[out][k]))
            assert low <= exact <= high, (a, b, v, L[out][k], H[out][k])
            checked += 1
    assert checked > 0


def _near(values, steps=3):
    out = set()
    for v in values:
        w = v
        for _ in range(steps):
            out.add(w)
            w = math.nextafter(w, math.inf)
        w = v
        for _ in range(steps):
            out.add(w)
            w = math.nextafter(w, -math.inf)
    return sorted(w for w in out if math.isfinite(w))


def test_reciprocal_near_overflow_and_subnormal_results():
    vals = _near([2.0**-1024, 2.0**-1023, 5.56268464626800e-309, 2.0**-1022, 1 / MAX, 3.0, 1.0, MAX, 2.0**1022, 1e-300])
    vals = vals + [-v for v in vals]
    _check_unary(lambda e: 1 / e, lambda v: 1 / v, _intervals(vals), mp=False)


def test_square_root_of_subnormals_and_near_perfect_squares():
    vals = [*_near([0.0, TINY, 2.0**-1073, 3 * TINY, 2.0**-1022, 4.0, 9.0, 2.0**-1070, MAX, 1.0]), 16.0, 1e-310]
    vals = [v for v in vals if v >= 0]
    tape, out = _one_var(sp.sqrt)
    arr = np.array([[v] for v in vals])
    L, H, B = IntervalEvaluator(tape).evaluate(arr, arr)
    for k, v in enumerate(vals):
        assert B[out][k] < 0
        assert Fraction(L[out][k]) ** 2 <= Fraction(v) <= Fraction(H[out][k]) ** 2, v
        assert L[out][k] >= 0


def test_exp_near_overflow_and_underflow():
    vals = _near([709.782712893384, 709.78, 709.0, -708.3964185322641, -745.1332191019411, -745.13321910194122, -744.44,
                  -746.0, -1e300, 0.0, 1e-300, -1e-300, 1.0, -1.0], steps=4)
    _check_unary(sp.exp, mpmath.exp, _intervals(vals))


def test_log_near_one_and_near_subnormals():
    vals = _near([1.0, TINY, 2.0**-1022, 1e-310, 1e-300, MAX, 2.0, 0.5], steps=5)
    vals = [v for v in vals if v > 0] + [1.0 + k * 2.0**-52 for k in range(1, 8)] + [1.0 - k * 2.0**-53 for k in range(1, 8)]
    _check_unary(sp.log, mpmath.log, _intervals(sorted(set(vals))))


EXTREMES = sorted({s * v for s in (1.0, -1.0) for v in (0.0, TINY, 1e-300, 1e-8, 0.5, 19.06, 20.0, 36.7, 40.0, 709.78, 710.0,
                                                          745.0, 745.2, 746.0, 800.0, 1e300, MAX)})


def test_tanh_sigmoid_softplus_at_extremes():
    _check_unary(sp.tanh, mpmath.tanh, _intervals(EXTREMES))
    _check_unary(sigmoid, lambda v: 1 / (1 + mpmath.exp(-v)), _intervals(EXTREMES))
    _check_unary(softplus, lambda v: mpmath.log1p(mpmath.exp(v)), _intervals(EXTREMES))


def test_powers_near_overflow_and_subnormal_results():
    big3 = 5.643803094122362e102  # about the cube root of the largest float
    vals = _near([big3, 1e-108, 1e-103, 2.0**-358, 1.0, 3.0, 0.1, 1e-80, 1e77], steps=3)
    vals = sorted(set(vals) | {-v for v in vals} | {0.0})
    _check_unary(lambda e: e**3, lambda v: v**3, _intervals(vals))
    _check_unary(lambda e: e**4, lambda v: v**4, _intervals(vals))
    _check_unary(lambda e: e**2, lambda v: v**2, _intervals(vals), mp=False)
    _check_unary(lambda e: e**-2, lambda v: v**-2, _intervals([v for v in vals if v > 0]))
    pos = sorted({v for v in vals if v > 0} | {TINY, 2.0**-1022, MAX, 1e308})
    _check_unary(lambda e: e ** sp.Rational(1, 3), mpmath.cbrt, _intervals(pos))
    _check_unary(lambda e: e**0.3, lambda v: mpmath.power(v, mpmath.mpf(0.3)), _intervals(pos))
    _check_unary(lambda e: e ** sp.Rational(-1, 2), lambda v: 1 / mpmath.sqrt(v), _intervals(pos))
    _check_unary(lambda e: e ** sp.Rational(5, 2), lambda v: mpmath.power(v, 2.5), _intervals(pos))


def test_exact_and_discrete_ops():
    """neg, abs, min, max, sign, Heaviside, comparisons, and / or / not are exact on any operands."""
    xs, ys = sp.symbols("x y", real=True)
    exprs = [-xs, sp.Abs(xs), sp.Min(xs, ys), sp.Max(xs, ys), sp.sign(xs), sp.Heaviside(xs),
             sp.Piecewise((xs, xs < ys), (ys, True)), sp.Piecewise((1, sp.And(xs <= ys, sp.Not(xs > 0))), (0, True))]
    tape = Tape([xs, ys])
    for e in exprs:
        tape.add_output(e)
    vals = ADVERSARIAL[::3]
    pts = np.array([(a, b) for a in vals for b in vals])
    L, H, B = IntervalEvaluator(tape).evaluate(pts, pts)
    for out, e in zip(tape.outputs, exprs, strict=True):
        f = sp.lambdify([xs, ys], e, modules=[{"Heaviside": lambda v, h0=0.5: 1.0 if v > 0 else (0.0 if v < 0 else h0)}, "math"])
        for k, (a, b) in enumerate(pts):
            assert B[out][k] < 0
            real = f(float(a), float(b))
            assert L[out][k] == H[out][k] == real, (e, a, b)


def test_point_enclosures_within_the_box_enclosure():
    """``within`` intersects node by node: a sqrt whose point argument dips below 0 does not fail."""
    xs = sp.Symbol("x", real=True)
    tape = Tape([xs])
    tape.add_output(sp.sqrt(xs - sp.Rational(1, 10) * 10 + 1))  # 1/10 is rounded: x - 1*(~1) + 1 near 0
    box_lo, box_hi = np.array([[0.0]]), np.array([[1.0]])
    BL, BH, _ = IntervalEvaluator(tape).evaluate(box_lo, box_hi)
    pts = np.array([[0.0], [TINY], [1.0]])
    L, H, B = IntervalEvaluator(tape).evaluate(pts, pts, within=(BL, BH))
    out = tape.outputs[0]
    for k in range(3):
        if BL[out][0] > -np.inf:
            assert B[out][k] < 0 and BL[out][0] <= L[out][k] <= H[out][k] <= BH[out][0]


def test_libm_padding_is_rounded_outward():
    for y in ADVERSARIAL:
        up_, down_ = rd.libm_up(y), rd.libm_down(y)
        pad = abs(Fraction(y)) * Fraction(rd.LIBM_PAD) + Fraction(TINY)
        if math.isfinite(up_):
            assert Fraction(up_) >= Fraction(y) + pad
            assert Fraction(up_) - Fraction(y) <= Fraction(rd.libm_spread_up(abs(y)))
        if math.isfinite(down_):
            assert Fraction(down_) <= Fraction(y) - pad
        arr = np.array([y])
        assert rd.libm_up_array(arr)[0] == up_ and rd.libm_down_array(arr)[0] == down_
