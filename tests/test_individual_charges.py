"""Issue 10 class 9 in the individual filter: every bound and charge is rounded up (checked in exact rationals)."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import opendp_hybridad as hd
from opendp_hybridad.analysis.rounding import TINY, UNIT_ROUNDOFF, gamma
from opendp_hybridad.individual import IndividualFilter, charges

positive = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "individual.md"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e150), min_size=1, max_size=6), positive, st.floats(1.0001, 256))
def test_losses_are_never_below_the_exact_real_losses(sensitivity, sigma, alpha):
    s = np.array(sensitivity)
    for kind in ("renyi", "gdp"):
        factor = charges.loss_factor(kind, alpha, sigma)
        out = charges.losses(s, factor)
        exact_factor = Fraction(alpha) / (2 * Fraction(sigma) ** 2) if kind == "renyi" else 1 / Fraction(sigma) ** 2
        assert factor == math.inf or Fraction(factor) >= exact_factor
        for c, got in zip(s, out, strict=True):
            if c == 0:
                assert got == 0.0  # nothing contributed, nothing charged
            elif math.isfinite(got):
                assert Fraction(got) >= exact_factor * Fraction(c) ** 2


def _sqrt_lower(q: Fraction) -> Fraction:
    """A rational at most sqrt(q): isqrt(p r 4^K) / (r 2^K) for q = p / r."""
    k = 200
    return Fraction(math.isqrt((q.numerator * q.denominator) << (2 * k)), q.denominator << k)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(-1e100, 1e100), min_size=3, max_size=3), min_size=1, max_size=5),
       st.lists(st.floats(0, 1e-3), min_size=3, max_size=3))
@example(sums=[[0.0, 7.835853466352558e-158, 7.835853466352558e-158]], allowance=[0.0, 0.0, 0.0])
def test_sensitivities_cover_the_exact_norm_plus_the_allowance(sums, allowance):
    out = charges.sensitivities(np.array(sums), np.array(allowance))
    extra_sq = sum(Fraction(a) ** 2 for a in allowance)
    for row, got in zip(sums, out, strict=True):
        norm_sq = sum(Fraction(v) ** 2 for v in row)
        # got >= sqrt(norm_sq) + sqrt(extra_sq)  <=>  (got - sqrt(norm_sq))^2 >= extra_sq with got >= sqrt(norm_sq)
        g = Fraction(got)
        assert g * g >= norm_sq
        # an exact lower bound on sqrt(norm_sq), within 2^-200 relative: a float sqrt of the
        # squared norm loses its digits when the square is subnormal (sums near 1e-158)
        lhs = g - _sqrt_lower(norm_sq)
        assert lhs >= 0 and lhs * lhs >= extra_sq * (1 - Fraction(1, 2**40))


@pytest.mark.parametrize("size_limit, max_rows, max_abs", [(2**32, 1024, 1.0), (1, 1, 3.5), (10**6, 1, 1e-300),
                                                           (2**40, 7, 2.5e3)])
def test_float_allowance_is_the_stated_bound_rounded_up(size_limit, max_rows, max_abs):
    got = charges.float_allowance(size_limit, max_rows, max_abs)
    exact = (2 * Fraction(UNIT_ROUNDOFF) * (1 + Fraction(gamma(max_rows))) * size_limit * Fraction(max_abs)
             + Fraction(TINY))
    assert Fraction(got) >= exact
    assert Fraction(got) <= exact * (1 + Fraction(1, 2**48)) + Fraction(TINY)


def test_the_allowance_covers_the_computed_difference_with_and_without_an_individual():
    """fsum's two roundings, with many records of the largest magnitude and an individual of many rows."""
    rng = np.random.default_rng(5)
    n, rows = 20_000, 64
    others = rng.uniform(0.9, 1.0, n) * rng.choice([1.0, 1.0, 1.0, -1.0], n)  # large, uneven, mostly one sign
    mine = np.bincount(np.zeros(rows, dtype=np.intp), weights=rng.uniform(-1, 1, rows) / 3, minlength=1)[0]
    allowance = charges.float_allowance(n + rows, rows, 1.0)
    for _ in range(20):
        order = rng.permutation(n)
        with_i = math.fsum([*others[order], mine])
        without_i = math.fsum(others[order])
        error = abs(Fraction(with_i) - Fraction(without_i) - Fraction(mine))
        assert error <= Fraction(allowance)
        others = others * (1 + rng.uniform(-1e-9, 1e-9, n))


def test_clipped_rows_stay_within_the_returned_bound_and_bad_rows_count_as_zero():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(500, 7)) * rng.uniform(0, 10, (500, 1))
    values[3] = [np.nan] + [1.0] * 6
    values[4] = [np.inf] * 7
    clipped, bound = charges.clip_rows(values, 1.5)
    assert np.all(clipped[3] == 0) and np.all(clipped[4] == 0)
    for row in clipped:
        assert sum(Fraction(v) ** 2 for v in row) <= Fraction(bound) ** 2
    small = np.linalg.norm(values, axis=1) < 1.4
    small[[3, 4]] = False
    np.testing.assert_array_equal(clipped[small], values[small])  # within the bound: unchanged


def test_the_stored_gdp_budget_and_the_zcdp_map_round_the_right_way():
    import opendp.prelude as dp

    from opendp_hybridad.frame import make_frame_domain
    from opendp_hybridad.individual.measurement import make_individual_filter

    dp.enable_features("contrib", "honest-but-curious")
    schema = hd.Schema(x=hd.Field(0, 1))
    for mu in (0.1, 1.0 / 3, 2.0, 7.123456789):
        flt = IndividualFilter(pd.DataFrame({"x": [0.5]}), schema, kind="gdp", budget=mu)
        assert Fraction(flt.stored_budget) <= Fraction(mu) ** 2  # admitted totals never pass mu^2
        rho = make_individual_filter(make_frame_domain(schema), dp.symmetric_distance(), kind="gdp", budget=mu).map(1)
        assert Fraction(rho) >= Fraction(mu) ** 2 / 2


def test_every_python_block_in_the_docs_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)  # blocks may write a ledger file
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {"__name__": "__docs__"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=60), st.integers(1, 5))
def test_first_rows_keeps_each_individuals_first_rows_in_order(codes, max_rows):
    codes = np.array(codes, dtype=np.intp)
    seen: dict[int, int] = {}
    expected = []
    for c in codes.tolist():  # brute force: a counter per individual
        expected.append(seen.get(c, 0) < max_rows)
        seen[c] = seen.get(c, 0) + 1
    got = charges.first_rows(codes, 7, max_rows)
    np.testing.assert_array_equal(got, np.array(expected, dtype=bool))
    fallback = pd.Series(codes).groupby(codes).cumcount().to_numpy() < max_rows  # the path without numba
    np.testing.assert_array_equal(got, fallback)
