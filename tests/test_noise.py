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
    eps = report["epsilon"]
    expected = 1e-5 + (1 + math.exp(eps)) * report["steps"] * model.num_parameters * eta
    assert report["delta"] == pytest.approx(expected, rel=1e-12) and report["delta"] > 1e-5


def test_the_alias_table_returns_each_value_with_exactly_its_mass():
    sampler = DiscreteGaussianSampler(3.3, resolution=2**6)
    r = sampler._r
    capacity = 1 << (127 - r)
    received = [0] * (1 << r)
    for j, (word, low) in enumerate(zip(sampler._packed.tolist(), sampler._threshold_low.tolist(), strict=True)):
        threshold, alias = ((word >> r) << 64) | low, word & ((1 << r) - 1)
        received[j] += threshold  # u < T_j: column j
        received[alias] += capacity - threshold  # otherwise its alias
    masses, magnitudes = sampler.masses(), sampler.magnitude_masses()
    assert sum(masses) == 2**128 and masses == masses[::-1]  # symmetric, so |Z| and a fair sign bit give Z
    zmax = sampler.zmax
    assert magnitudes == [masses[zmax] // 2, *masses[zmax + 1:]] and sum(magnitudes) == 2**127
    assert received[: len(magnitudes)] == magnitudes and not any(received[len(magnitudes):])


def test_the_table_is_within_its_stated_distance_of_the_discrete_gaussian():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    sampler = DiscreteGaussianSampler(3.3, resolution=2**6)
    s = mpmath.mpf(sampler.scale)
    z_all = range(-40 * int(sampler.scale), 40 * int(sampler.scale) + 1)
    normaliser = mpmath.fsum(mpmath.exp(-mpmath.mpf(z) ** 2 / (2 * s * s)) for z in z_all)
    masses = dict(zip(range(-sampler.zmax, sampler.zmax + 1), sampler.masses(), strict=True))
    ideal = {z: mpmath.exp(-mpmath.mpf(z) ** 2 / (2 * s * s)) / normaliser for z in z_all}
    distance = mpmath.fsum(abs(mpmath.mpf(masses.get(z, 0)) / mpmath.mpf(2) ** 128 - ideal[z]) for z in z_all) / 2
    assert distance <= sampler.statistical_distance
    assert sampler.statistical_distance <= 100 * distance + 1e-30  # and the bound is not vacuous


def test_the_lookup_follows_the_alias_rule_on_random_and_tied_bits():
    sampler = DiscreteGaussianSampler(3.3, resolution=2**6)
    r = sampler._r
    rng = np.random.default_rng(0)  # test inputs, not noise
    bits = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    low = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    # the hardest draws: the top bits of u equal a column's threshold, with low words below, at and above it
    words, lows = sampler._packed.tolist(), sampler._threshold_low.tolist()
    tied, tied_low = [], []
    for j in range(0, 1 << r, max(1, (1 << r) // 300)):
        top = words[j] >> r
        for offset in (-1, 0, 1):
            tied.append((int(rng.integers(0, 2)) << 63) | (j << (63 - r)) | top)  # either sign
            tied_low.append(min(max(lows[j] + offset, 0), 2**64 - 1))
    bits = np.concatenate([bits, np.array(tied, dtype=np.uint64)])
    low = np.concatenate([low, np.array(tied_low, dtype=np.uint64)])
    got = sampler.lookup(bits, low)
    expected = []
    for b, w in zip(bits.tolist(), low.tolist(), strict=True):
        j = (b >> (63 - r)) & ((1 << r) - 1)
        u = ((b & ((1 << (63 - r)) - 1)) << 64) | w
        threshold, alias = ((words[j] >> r) << 64) | lows[j], words[j] & ((1 << r) - 1)
        expected.append(j if u < threshold else alias)
    np.testing.assert_array_equal(got, expected)
    # ties without given low words draw them: the answer is the column or its alias
    drawn = sampler.lookup(np.array(tied, dtype=np.uint64))
    columns = (np.array(tied, dtype=np.uint64) >> np.uint64(63 - r)) & np.uint64((1 << r) - 1)
    aliases = sampler._packed[columns.astype(np.intp)] & np.uint64((1 << r) - 1)
    assert np.all((drawn == columns) | (drawn == aliases))


def _bits_with_ties(sampler: DiscreteGaussianSampler, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random words plus, for a spread of columns, words whose top bits tie the threshold (low words below, at, above)."""
    r = sampler._r
    rng = np.random.default_rng(seed)  # test inputs, not noise
    bits = rng.integers(0, 2**64, count, dtype=np.uint64)
    low = rng.integers(0, 2**64, count, dtype=np.uint64)
    words, lows = sampler._packed.tolist(), sampler._threshold_low.tolist()
    tied, tied_low = [], []
    for j in range(0, 1 << r, max(1, (1 << r) // 300)):
        for offset in (-1, 0, 1):
            tied.append((int(rng.integers(0, 2)) << 63) | (j << (63 - r)) | (words[j] >> r))
            tied_low.append(min(max(lows[j] + offset, 0), 2**64 - 1))
    return (np.concatenate([bits, np.array(tied, dtype=np.uint64)]),
            np.concatenate([low, np.array(tied_low, dtype=np.uint64)]))


@pytest.mark.parametrize("std, resolution", [(3.3, 2**6), (0.02, 2**13)])
def test_the_compiled_kernel_gives_the_numpy_output_bit_for_bit(std, resolution):
    pytest.importorskip("numba")
    compiled = DiscreteGaussianSampler(std, resolution=resolution, backend="numba")
    plain = DiscreteGaussianSampler(std, resolution=resolution, backend="numpy")
    assert (compiled.backend, plain.backend) == ("numba", "numpy")
    bits, low = _bits_with_ties(compiled, 50_000, seed=1)
    x = np.random.default_rng(2).normal(0, 40 * std, bits.size)
    x[::7] = np.rint(x[::7] / compiled.grid) * compiled.grid + compiled.grid / 2  # halfway cases of the rounding
    # about 900 ties: the kernel's buffer of 64 fills and it resumes, many times
    ours, reference = compiled.add(x, bits, low), plain.add(x, bits, low)
    np.testing.assert_array_equal(ours, reference)
    for sampler in (compiled, plain):  # in place, into the input itself
        buffer = x.copy()
        assert sampler.add(buffer, bits, low, out=buffer) is not None
        np.testing.assert_array_equal(buffer, reference)
    # and both are the alias rule applied by hand: g (round(x / g) +- index), the sign from the top bit
    index = plain.lookup(bits, low)
    negative = (bits >> np.uint64(63)).astype(bool)
    assert 0.45 < negative.mean() < 0.55
    np.testing.assert_array_equal(ours, (np.rint(x / compiled.grid) + np.where(negative, -index, index)) * compiled.grid)
    assert compiled(x[:5000].reshape(100, 50)[:, ::2]).shape == (100, 25)  # any layout in, same shape out
    # ties without given low words: 64 fresh bits settle each, to the column or its alias
    tied = bits[50_000:]
    drawn = np.abs(np.rint(compiled.add(np.zeros(tied.size), tied) / compiled.grid).astype(np.int64))
    columns = ((tied >> np.uint64(63 - compiled._r)) & np.uint64((1 << compiled._r) - 1)).astype(np.int64)
    aliases = (compiled._packed[columns] & np.uint64((1 << compiled._r) - 1)).astype(np.int64)
    assert np.all((drawn == columns) | (drawn == aliases))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_no_negative_zero_leaks_the_sign_of_a_value_rounded_to_zero(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    sampler = DiscreteGaussianSampler(1.0, resolution=2**6, backend=backend)
    tiny = np.full(4096, -sampler.grid / 4)  # rounds to -0.0
    bits = np.random.default_rng(6).integers(0, 2**64, tiny.size, dtype=np.uint64)
    bits &= np.uint64(~(((1 << sampler._r) - 1) << (63 - sampler._r)) & (2**64 - 1))  # column 0: |Z| = 0 mostly
    out = sampler.add(tiny, bits, low=np.zeros(tiny.size, dtype=np.uint64))
    zeros = out == 0
    assert zeros.sum() > 1000 and not np.signbit(out[zeros]).any()


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_values_the_grid_cannot_hold_are_refused(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    sampler = DiscreteGaussianSampler(1.0, backend=backend)
    for bad in (np.nan, np.inf, 2.0**53 * sampler.grid):
        values = np.array([0.0, 1.0, bad, 1.0])
        with pytest.raises(ValueError, match="too large"):
            sampler(values, in_place=True)
        np.testing.assert_array_equal(values[:2], [0.0, 1.0])  # nothing written before the error
    assert sampler(np.zeros(0)).shape == (0,)
