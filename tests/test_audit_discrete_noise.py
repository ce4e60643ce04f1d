"""Audit: OpenDP's Laplace and Gaussian noise is discrete (lattice 2^k, Z for integer data) but is accounted
as dp-accounting's continuous LaplaceDpEvent / GaussianDpEvent. With few lattice units of noise the
discrete mechanism's privacy profile is larger than the continuous one (the continuous epsilon at a
delta is below the exact discrete one: bench/audits/attack_discrete_noise.py).

Fixed by the records' statistical_distance (opendp_hybridad.lattice_noise): OpenDP's mechanism is within
that total variation distance of a post-processing of the continuous mechanism, so compose_epsilon's
total delta = delta + (1 + e^eps) * distance holds at the reported epsilon. Ground truth: exact sums
over the lattice (mpmath, 50 digits) and closed forms, cross-checked with dp-accounting's discrete PLDs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mpmath as mp
import opendp.prelude as dp
import pytest

import opendp_hybridad as hd
from opendp_hybridad.accounting import accounted, accounting_of, compose_epsilon
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.measurements import make_private_sum

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "audits"))
from attack_discrete_noise import (
    UNIT,
    discrete_gaussian_delta,
    discrete_laplace_delta,
    discrete_laplace_epsilon,
    epsilon_at,
)


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("contrib", "honest-but-curious")


@pytest.fixture(scope="module")
def exact_gaussian() -> float:
    return float(epsilon_at(lambda e: discrete_gaussian_delta(6, 6, e), 1e-6))  # 4.8891876...


def _covers(report: dict, exact_delta) -> None:
    """At both reported epsilons, the reported total delta is at least the exact discrete delta there."""
    for key in ("epsilon_pld", "epsilon_rdp"):
        assert mp.mpf(report["delta"]) >= exact_delta(mp.mpf(report[key])), key


def test_accounted_integer_gaussian_is_not_understated(exact_gaussian):
    g = accounted(dp.m.make_gaussian(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=6.0), d_in=6)
    report = compose_epsilon([g], 1e-6)
    assert report["epsilon_pld"] < exact_gaussian  # the continuous epsilon alone is below the discrete one ...
    assert mp.mpf(report["statistical_distance"]) >= _gaussian_tv(6)  # ... the lattice's distance is declared
    _covers(report, lambda eps: discrete_gaussian_delta(6, 6, eps))  # ... and the total delta covers it


def test_accounted_integer_laplace_is_not_understated():
    lap = accounted(dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=0.5), d_in=2)
    report = compose_epsilon([lap], 0.1)
    assert max(report["epsilon_pld"], report["epsilon_rdp"]) < discrete_laplace_epsilon(0.5, 2, 0.1)  # 3.879488
    _covers(report, lambda eps: discrete_laplace_delta(0.5, 2, eps))
    # the lattice sum and the closed form agree
    for eps in (0.5, 2.0, 3.8):
        closed = discrete_laplace_delta(0.5, 2, mp.mpf(eps))
        assert mp.almosteq(closed, _discrete_laplace_delta_by_sum(0.5, 2, mp.mpf(eps)), rel_eps=mp.mpf(10) ** -40)


def test_frame_gaussian_at_a_subnormal_scale_is_not_understated(exact_gaussian):
    s = hd.Schema(x=hd.Field(0, 6 * UNIT))
    (x,) = s.symbols()
    m = make_private_sum(make_frame_domain(s, size_limit=1), s.function(x), rho=0.5)
    record = accounting_of(m)
    assert (record.scale / UNIT, record.sensitivity / UNIT, m.map(1)) == (6.0, 6.0, 0.5)  # sigma 6 units, sensitivity 6
    report = compose_epsilon([m], 1e-6)
    assert report["epsilon_pld"] < exact_gaussian
    _covers(report, lambda eps: discrete_gaussian_delta(6, 6, eps))


def _gaussian_tv(sigma: int) -> mp.mpf:
    """TV(N_Z(0, sigma^2), round(N(0, sigma^2))) by a lattice sum."""
    s, radius = mp.mpf(sigma), 45 * sigma + 10
    weights = [mp.e ** (-mp.mpf(j) ** 2 / (2 * s * s)) for j in range(-radius, radius + 1)]
    total = mp.fsum(weights)
    cells = [mp.ncdf((j + mp.mpf(1) / 2) / s) - mp.ncdf((j - mp.mpf(1) / 2) / s) for j in range(-radius, radius + 1)]
    return mp.fsum(abs(w / total - c) for w, c in zip(weights, cells, strict=True)) / 2


def _discrete_laplace_delta_by_sum(b: float, sensitivity: int, eps: mp.mpf) -> mp.mpf:
    """delta(eps) of the discrete Laplace exp(-|x|/b) on Z and its shift by ``sensitivity``: a lattice sum."""
    b, radius = mp.mpf(b), 400
    weight = {x: mp.e ** (-abs(x) / b) for x in range(-radius - sensitivity, radius + sensitivity + 1)}
    total = mp.fsum(weight[x] for x in range(-radius, radius + 1))
    return mp.fsum(max(mp.mpf(0), weight[x] - mp.e ** eps * weight[x - sensitivity])
                   for x in range(-radius, radius + 1)) / total


def test_the_ground_truth_matches_dp_accountings_discrete_plds(exact_gaussian):
    from dp_accounting.pld import privacy_loss_distribution as pld

    lap = pld.from_discrete_laplace_mechanism(parameter=2.0, sensitivity=2, value_discretization_interval=1e-4)
    assert math.isclose(lap.get_epsilon_for_delta(0.1), discrete_laplace_epsilon(0.5, 2, 0.1), rel_tol=1e-6)
    gauss = pld.from_discrete_gaussian_mechanism(sigma=6.0, sensitivity=6, value_discretization_interval=1e-4)
    assert exact_gaussian <= gauss.get_epsilon_for_delta(1e-6) <= exact_gaussian + 1e-4  # pessimistic, tight
