"""The table-inversion discrete Gaussian sampler against OpenDP's Gaussian mechanism on the same grid."""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest
from scipy import stats

from opendp_hybridad.dpsgd.noise import DiscreteGaussianSampler, gaussian_noise_for

N = 60_000


def _opendp_integers(std: float, k: int, n: int) -> np.ndarray:
    dp.enable_features("contrib")
    meas = (dp.vector_domain(dp.atom_domain(T=float, nan=False), size=n), dp.l2_distance(T=float)) >> dp.m.then_gaussian(std, k=k)
    return np.rint(np.asarray(meas([0.0] * n)) / 2.0**k).astype(np.int64)


@pytest.mark.parametrize("std", [0.37, 1.7, 250.0])
def test_same_distribution_as_opendp_on_the_same_grid(std):
    sampler = DiscreteGaussianSampler(std, resolution=2**8)
    ours = sampler.integers(N)
    theirs = _opendp_integers(std, sampler.k, N)
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-4
    assert stats.levene(ours, theirs).pvalue > 1e-4
    assert np.std(ours) == pytest.approx(sampler.scale, rel=0.02)


def test_the_comparison_has_power_against_a_three_percent_error():
    right = DiscreteGaussianSampler(1.7, resolution=2**8)
    wrong = DiscreteGaussianSampler(1.7 * 1.03, resolution=2**8, k=right.k)
    theirs = _opendp_integers(1.7, right.k, N)
    assert stats.levene(wrong.integers(N), theirs).pvalue < 1e-4


def test_outputs_lie_on_the_grid_and_the_guarantee_is_stated():
    sampler = DiscreteGaussianSampler(2.5)
    x = np.array([0.1, -3.14159, 1e6, 0.0])
    y = sampler(x)
    lattice = y / sampler.grid
    assert np.all(lattice == np.rint(lattice))  # integers times a power of two: no float side channel
    assert 0 < sampler.statistical_distance < 1e-13
    assert sampler.delta_penalty(3.0, 10**6) == pytest.approx((1 + math.exp(3.0)) * 10**6 * sampler.statistical_distance)


def test_noise_for_a_sensitivity_covers_the_grid_rounding():
    sampler = gaussian_noise_for(sensitivity=2.0, noise_multiplier=1.1, dimension=10_000)
    assert sampler.std >= 1.1 * (2.0 + math.sqrt(10_000) * sampler.grid)
    assert sampler.std <= 1.1 * (2.0 + math.sqrt(10_000) * sampler.grid) * (1 + 1 / 32)


def test_dp_sgd_with_the_table_sampler_trains_and_reports_its_delta():
    from opendp_hybridad.dpsgd import DPSGD
    from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (400, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = MLP([Dense(2, 8, 1.0, 1.0), Dense(8, 2, 1.0, 1.0)], [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=0.8, batch_size=50, epochs=8, learning_rate=1.0, noise="discrete-gaussian")
    params, _ = trainer.fit(x, y, seed=0)
    acts, _ = model.forward(params, x)
    assert (acts[-1].argmax(axis=1) == y).mean() > 0.8
    report = trainer.epsilon(400)
    eta = report["sampler_statistical_distance_per_coordinate"]
    eps = max(report["epsilon_pld"], report["epsilon_rdp"])
    expected = 1e-5 + (1 + math.exp(eps)) * report["steps"] * model.num_parameters * eta
    assert report["delta"] == pytest.approx(expected, rel=1e-12) and report["delta"] > 1e-5


def test_the_guided_lookup_returns_the_exact_count_of_table_entries():
    sampler = DiscreteGaussianSampler(3.3, resolution=2**6)
    rng = np.random.default_rng(0)  # test inputs, not noise
    hi = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    lo = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    # and the hardest values: exactly on table entries, one below, the extremes
    entries = [int(c) for c in sampler._cumulative[:: max(1, len(sampler._cumulative) // 200)]]
    special = entries + [e - 1 for e in entries if e > 0] + [0, 2**128 - 1]
    hi = np.concatenate([hi, np.array([v >> 64 for v in special], dtype=object).astype(np.uint64)])
    lo = np.concatenate([lo, np.array([v & (2**64 - 1) for v in special], dtype=object).astype(np.uint64)])
    got = sampler.count_not_above(hi, lo)
    exact = [int(np.searchsorted(sampler._cumulative, (int(h) << 64) | int(w), side="right")) for h, w in zip(hi, lo, strict=True)]
    np.testing.assert_array_equal(got, exact)
