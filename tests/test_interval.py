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
