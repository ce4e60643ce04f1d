"""Higham's gamma_n against the exact error of float64 sums and dot products."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from opendp_hybridad.analysis.rounding import gamma


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
