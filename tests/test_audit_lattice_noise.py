"""Audit of the lattice-noise fix (bench/audits/attack_lattice_noise.py): each test failed on the code it audited.

Ground truth: closed forms and exact lattice sums with mpmath; dp-accounting's measured PLD size.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import dp_accounting as dpa
import mpmath as mp
import opendp.prelude as dp
import pytest

from opendp_hybridad import pld_size
from opendp_hybridad.accounting import accounted, accounting_of, compose_epsilon
from opendp_hybridad.errors import AccountingError
from opendp_hybridad.lattice_noise import gaussian_distance_bound, laplace_distance_bound

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "audits"))
from attack_lattice_noise import MEASURED_POINTS_AT_1E4, exact_laplace_tv

mp.mp.dps = 50
FLOAT = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("contrib", "honest-but-curious")


def test_a_mechanism_against_the_measure_is_refused():
    # Laplace b = 0.1 read as a Gaussian reported eps 4.25 at delta 0.85 (exact 10 + 2 ln 0.15 = 6.21);
    # a Gaussian sigma = 1 read as a Laplace reported eps 0.5 at delta 1e-6 (exact 4.89)
    with pytest.raises(AccountingError, match="ZeroConcentratedDivergence, not MaxDivergence"):
        accounted(dp.m.make_laplace(*FLOAT, scale=0.1), mechanism="gaussian", k=-1074)
    with pytest.raises(AccountingError, match="MaxDivergence, not ZeroConcentratedDivergence"):
        accounted(dp.m.make_gaussian(*FLOAT, scale=1.0), mechanism="laplace", k=-1074)
    # a zCDP conversion of a Laplace is not a Gaussian
    converted = dp.c.make_pureDP_to_zCDP(dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=10.0))
    with pytest.raises(AccountingError, match="make_pureDP_to_zCDP"):
        accounted(converted, scale=10.0, k=0, coordinates=1)


def test_a_chain_declaration_is_checked_against_its_noise():
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    chain = space >> dp.t.then_cast_default(int) >> dp.t.then_clamp((0, 10)) >> dp.t.then_sum() >> dp.m.then_laplace(0.5)
    with pytest.raises(AccountingError, match="2\\^0"):  # was accepted: statistical_distance 5e-324
        accounted(chain, scale=0.5, k=-1074, coordinates=1)
    # a larger declared scale cannot shrink the distance below the noise's own
    record = accounting_of(accounted(chain, scale=5.0, k=0, coordinates=1))
    assert record.statistical_distance >= exact_laplace_tv(0.5) > 0.129
    with pytest.raises(AccountingError, match="atom domain"):
        accounted(chain, scale=0.5, k=0, coordinates=3)
    # post-processing after the noise is still read through
    post = dp.m.make_laplace(*FLOAT, scale=1.0, k=-1) >> dp.new_function(lambda x: x, TO=float)
    with pytest.raises(AccountingError, match="2\\^-1 "):
        accounted(post, scale=1.0, k=-1074, coordinates=1)
    assert accounting_of(accounted(post, scale=1.0, k=-1, coordinates=1)).statistical_distance >= exact_laplace_tv(2.0)


def test_a_self_composed_laplace_is_sized():
    # dp-accounting held 33,786,056 points for this at 1e-4 (8x MAX_COMPOSED_POINTS); 10^5 needs > 5 GB
    event = dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(1.0), 10**4)
    interval = pld_size.composition_discretization(event)
    assert MEASURED_POINTS_AT_1E4 * 1e-4 / interval <= 1.01 * pld_size.MAX_COMPOSED_POINTS
    report = compose_epsilon([event], 1e-6)
    assert report["pld_discretization"] == interval and 4061 < report["epsilon_pld"] < 4063


def test_a_composition_nested_in_a_self_composition_is_sized_as_its_flattening():
    nested = dpa.SelfComposedDpEvent(dpa.ComposedDpEvent([dpa.LaplaceDpEvent(1.0), dpa.GaussianDpEvent(1.0)]), 10**5)
    flat = dpa.ComposedDpEvent([dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(1.0), 10**5),
                              dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 10**5)])
    assert pld_size.composition_discretization(nested) == pld_size.composition_discretization(flat) > 0.01


def test_a_sparse_step_composed_many_times_is_not_left_sparse():
    # 202 points a step at 1e-4, size ** count = 7.7e8 bits: dp-accounting's sparse self_compose never ends
    event = dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(100.0), 10**8)
    try:
        interval = pld_size.composition_discretization(event)
    except pld_size.PldTooLargeError:
        return
    points = 2 / 100 / interval + 2
    assert points > 1000 or 10**8 * math.log2(points) <= pld_size.MAX_SPARSE_POWER_BITS


# -- what held -----------------------------------------------------------------------------------
def _gaussian_tv(sigma: float) -> mp.mpf:
    s = mp.mpf(sigma)
    top = int(14 * sigma) + 12
    f = [mp.exp(-mp.mpf(j) ** 2 / (2 * s * s)) for j in range(top + 1)]
    total = f[0] + 2 * mp.fsum(f[1:])
    tails = [mp.erfc((j + mp.mpf(1) / 2) / (s * mp.sqrt(2))) for j in range(top + 1)]
    tv = abs(f[0] / total - (1 - tails[0])) + 2 * mp.fsum(abs(f[j] / total - (tails[j - 1] - tails[j]) / 2)
                                                          for j in range(1, top + 1))
    return tv / 2 + tails[top] / 2


@pytest.mark.parametrize("width", [2.0**-12, 1 / 2049, 1 / 2047, 0.01, 0.3, 1.0, 3.7, 2.0**19, 2.0**19 * 1.0001, 2.0**40])
def test_laplace_bound_is_above_the_exact_distance(width):
    bound = laplace_distance_bound(Fraction(width))
    assert mp.mpf(bound.numerator) / bound.denominator >= exact_laplace_tv(width) * (1 - mp.mpf(10) ** -40)


@pytest.mark.parametrize("sigma", [0.2501, 0.3, 0.5, 0.75, 1.0, 1.5, 2.2, 4.0, 9.3, 40.0, 150.0])
def test_gaussian_bound_is_above_the_exact_lattice_sum(sigma):
    bound = gaussian_distance_bound(Fraction(sigma))
    assert mp.mpf(bound.numerator) / bound.denominator >= _gaussian_tv(sigma)
