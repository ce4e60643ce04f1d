"""The table-inversion discrete Gaussian sampler against OpenDP's Gaussian mechanism on the same grid."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import opendp.prelude as dp
import pytest
from scipy import stats

from opendp_hybridad.dpsgd.noise import DiscreteGaussianSampler, gaussian_noise_for
from opendp_hybridad.errors import DeclarationError

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


def _threshold(aligned: int, capacity_bits: int) -> int:
    """``T`` from its left-aligned 128-bit form (``2^128 - 1`` stands for a full column, ``T = 2^capacity_bits``)."""
    return 1 << capacity_bits if aligned == (1 << 128) - 1 else aligned >> (128 - capacity_bits)


def _alias_received(aligned: list[int], alias: list[int], capacity_bits: int) -> list[int]:
    """The mass each outcome gets from an alias table: ``T_j`` from column ``j``, the rest of its capacity from its alias."""
    received = [0] * len(aligned)
    for j, (t, a) in enumerate(zip(aligned, alias, strict=True)):
        threshold = _threshold(t, capacity_bits)
        assert (t & ((1 << (128 - capacity_bits)) - 1) == 0) or t == (1 << 128) - 1  # a T' has no bits below the capacity's
        received[j] += threshold
        received[a] += (1 << capacity_bits) - threshold
    return received


def _magnitude_masses_of_the_tables(sampler: DiscreteGaussianSampler) -> list[Fraction]:
    """``P(|Z| = k)`` recomputed from the tables' integers alone (the module docstring's proof, step by step)."""
    t = sampler._tables
    top_aligned = [int(h) << 64 | int(lo) for h, lo in zip(t.top_hi.tolist(), t.top_lo.tolist(), strict=True)]
    top_alias = [w & ((1 << t.c) - 1) for w in t.top.tolist()]
    # the packed words hold the top q bits of each T' and its alias
    assert [w >> t.c for w in t.top.tolist()] == [a >> (128 - t.q) for a in top_aligned]
    top_bits = 127 - t.m - t.c  # the top table's masses sum to 2^(127 - m)
    outcome = _alias_received(top_aligned, top_alias, top_bits)
    assert sum(outcome) == 1 << (127 - t.m) and not any(outcome[t.bins + 1:])
    probability = [Fraction(0)] * max(t.bins << t.m, t.residual.shape[0])
    for b in range(t.bins):  # a bin: uniform over its 2^m values
        for k in range(b << t.m, (b + 1) << t.m):
            probability[k] += Fraction(outcome[b], 1 << 127)
    if outcome[t.bins]:  # the residual outcome: its mass is a power of two, 2^(rho - m)
        rho = outcome[t.bins].bit_length() - 1 + t.m
        assert outcome[t.bins] == 1 << (rho - t.m)
        records = t.residual.tolist()
        residual = _alias_received([h << 64 | lo for h, lo, _ in records], [a for _, _, a in records], rho - t.r)
        assert sum(residual) == 1 << rho
        for k, mass in enumerate(residual):
            probability[k] += Fraction(outcome[t.bins], 1 << (127 - t.m)) * Fraction(mass, 1 << rho)
    return probability


@pytest.mark.parametrize("std, resolution", [(3.3, 2**6), (3.0, 2**13), (0.02, 2**13), (1.0, 2**6)])
def test_the_tables_return_each_value_with_exactly_its_mass(std, resolution):
    sampler = DiscreteGaussianSampler(std, resolution=resolution)
    masses, magnitudes = sampler.masses(), sampler.magnitude_masses()
    assert sum(masses) == 2**128 and masses == masses[::-1]  # symmetric, so |Z| and a fair sign bit give Z
    zmax = sampler.zmax
    assert magnitudes == [masses[zmax] // 2, *masses[zmax + 1:]] and sum(magnitudes) == 2**127
    probability = _magnitude_masses_of_the_tables(sampler)
    assert probability[: zmax + 1] == [Fraction(h, 2**127) for h in magnitudes] and not any(probability[zmax + 1:])
    if resolution == 2**13:  # the default grid: bins of several values, a residual table, and ties (q bits) that are rare
        t = sampler._tables
        assert t.m >= 1 and t.residual.shape[0] == 1 << t.r and t.q >= 8 and t.top.nbytes <= 32 * 1024


def test_the_mass_check_fails_on_a_table_off_by_one():
    """The exact check has power: one residual threshold one unit lower (mass moved to its alias) is caught."""
    sampler = DiscreteGaussianSampler(3.0)
    t = sampler._tables
    expected = [Fraction(h, 2**127) for h in sampler.magnitude_masses()]
    assert _magnitude_masses_of_the_tables(sampler)[: sampler.zmax + 1] == expected
    top_aligned = [int(h) << 64 | int(lo) for h, lo in zip(t.top_hi.tolist(), t.top_lo.tolist(), strict=True)]
    residual_outcome = _alias_received(top_aligned, [w & ((1 << t.c) - 1) for w in t.top.tolist()], 127 - t.m - t.c)[t.bins]
    rho = residual_outcome.bit_length() - 1 + t.m
    unit = 1 << (128 - (rho - t.r))  # one unit of a residual threshold, left-aligned
    j = next(j for j in range(t.residual.shape[0]) if int(t.residual[j, 0]) > 0 and int(t.residual[j, 2]) != j)
    broken = t.residual.copy()
    aligned = (int(broken[j, 0]) << 64 | int(broken[j, 1])) - unit
    broken[j, 0], broken[j, 1] = aligned >> 64, aligned & (2**64 - 1)
    sampler._tables = dataclasses.replace(t, residual=broken)
    assert _magnitude_masses_of_the_tables(sampler)[: sampler.zmax + 1] != expected


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


def _reference(sampler: DiscreteGaussianSampler, word: int, extra: list[int], at: int) -> tuple[int, int]:
    """``|Z|`` for a 32-bit word by the rule of the module docstring, with whole 128-bit comparisons: ``(|Z|, next word)``.

    Written from the rule, apart from the library's code: ``u`` is the word's low ``q`` bits
    followed by 64 - q bits of one extra word and all of the next, compared as one number with the
    column's 128-bit threshold; a residual draw reads a column and a 128-bit ``U`` from three words.
    """
    t = sampler._tables
    column = (word >> (31 - t.c)) % (1 << t.c)
    offset = (word >> t.q) % (1 << t.m)
    u_top = word % (1 << t.q)
    threshold = int(t.top_hi[column]) << 64 | int(t.top_lo[column])
    alias = int(t.top[column]) % (1 << t.c)
    if u_top != threshold >> (128 - t.q):
        outcome = column if u_top < threshold >> (128 - t.q) else alias
    else:
        e1, e2 = extra[at], extra[at + 1]
        at += 2
        u = u_top << (128 - t.q) | (e1 >> t.q) << 64 | e2
        outcome = column if u < threshold else alias
    if outcome != t.bins:
        return outcome << t.m | offset, at
    e1, e2, e3 = extra[at:at + 3]
    j = e1 >> (64 - t.r)
    hi, lo, residual_alias = t.residual[j].tolist()
    return (j if (e2 << 64 | e3) < (hi << 64 | lo) else residual_alias), at + 3


def _words_with_ties(sampler: DiscreteGaussianSampler, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Random 32-bit words and their extra words, plus the hardest cases: words whose top bits tie a column's
    threshold, and draws that reach the residual table, each with extra words just below, at and above the
    threshold they are compared with. Returns ``(words, extra, counts)``: the extra words in the order they are taken."""
    t = sampler._tables
    rng = np.random.default_rng(seed)  # test inputs, not noise
    words, extra = [], []
    counts = {"tie": 0, "residual": 0, "residual tie": 0}

    def rand64() -> int:
        return int(rng.integers(0, 2**64, dtype=np.uint64))

    def near(value: int, bits: int) -> int:  # value - 1, value or value + 1, kept within bits
        return min(max(value + int(rng.integers(-1, 2)), 0), (1 << bits) - 1)

    def residual_words() -> list[int]:
        j = int(rng.integers(0, t.residual.shape[0]))
        hi, lo, _ = t.residual[j].tolist()
        u = near(hi << 64 | lo, 128) if rng.random() < 0.7 else rand64() << 64 | rand64()
        return [j << (64 - t.r) | int(rng.integers(0, 1 << (64 - t.r))), u >> 64, u & (2**64 - 1)]

    columns = list(range(0, 1 << t.c, max(1, (1 << t.c) // 400)))
    # columns whose keep or alias is the residual outcome
    to_residual = [j for j in range(1 << t.c) if j == t.bins or int(t.top[j]) % (1 << t.c) == t.bins]
    for i in range(count + 3 * len(columns) + 12 * len(to_residual)):
        sign, offset = int(rng.integers(0, 2)), int(rng.integers(0, 1 << t.m))
        if i < count:
            word = int(rng.integers(0, 2**32))
        elif i < count + 3 * len(columns):  # a tie in a spread of columns
            j = columns[(i - count) // 3]
            word = sign << 31 | j << (31 - t.c) | offset << t.q | int(t.top[j]) >> t.c
        else:  # a draw that reaches the residual outcome: a tie, or a u on the residual's side
            j = to_residual[(i - count - 3 * len(columns)) // 12]
            threshold = int(t.top[j]) >> t.c
            kept_is_residual = j == t.bins
            choice = int(rng.integers(0, 3))
            if choice == 0 or (kept_is_residual and threshold == 0) or (not kept_is_residual and threshold == (1 << t.q) - 1):
                u_top = threshold
            elif kept_is_residual:
                u_top = int(rng.integers(0, threshold))
            else:
                u_top = int(rng.integers(threshold + 1, 1 << t.q))
            word = sign << 31 | j << (31 - t.c) | offset << t.q | u_top
        words.append(word)
        column = (word >> (31 - t.c)) % (1 << t.c)
        tie = word % (1 << t.q) == int(t.top[column]) >> t.c
        if tie:
            counts["tie"] += 1
            aligned = int(t.top_hi[column]) << 64 | int(t.top_lo[column])
            rest = near(aligned % (1 << (128 - t.q)), 128 - t.q) if i >= count else rand64() >> t.q << 64 | rand64()
            extra += [(rest >> 64) << t.q | int(rng.integers(0, 1 << t.q)), rest & (2**64 - 1)]
        _, at = _reference(sampler, word, [*extra, 0, 0, 0], len(extra) - 2 * tie)
        if at - (len(extra) - 2 * tie) - 2 * tie == 3:  # the residual table
            counts["residual"] += 1
            counts["residual tie"] += tie
            extra += residual_words()
    return np.array(words, dtype=np.uint32), np.array(extra, dtype=np.uint64), counts


def _expected(sampler: DiscreteGaussianSampler, words: np.ndarray, extra: np.ndarray) -> np.ndarray:
    out, at, stream = [], 0, extra.tolist()
    for w in words.tolist():
        value, at = _reference(sampler, w, stream, at)
        out.append(value)
    assert at == len(stream)  # every extra word taken, in order
    return np.array(out)


@pytest.mark.parametrize("std, resolution", [(3.0, 2**13), (3.3, 2**6)])
def test_the_lookup_follows_the_rule_on_random_and_tied_words(std, resolution):
    sampler = DiscreteGaussianSampler(std, resolution=resolution, backend="numpy")
    words, extra, counts = _words_with_ties(sampler, 20_000, seed=0)
    assert counts["tie"] > 1000
    if sampler._tables.m:
        assert counts["residual"] > 200 and counts["residual tie"] > 20
    np.testing.assert_array_equal(sampler.lookup(words, extra), _expected(sampler, words, extra))


def test_the_reference_rule_catches_a_wrong_tie_comparison():
    """The lookup test has power: a lookup that settles ties one unit off (<= for <) disagrees with the reference."""
    sampler = DiscreteGaussianSampler(3.0, backend="numpy")
    words, extra, _ = _words_with_ties(sampler, 2_000, seed=3)
    expected = _expected(sampler, words, extra)
    t = sampler._tables
    top_lo = t.top_lo.copy()
    top_lo += np.uint64(1)  # every tie's threshold one above: U = T' is now kept
    top_lo[top_lo == 0] -= np.uint64(1)
    sampler._tables = dataclasses.replace(t, top_lo=top_lo)
    assert not np.array_equal(sampler.lookup(words, extra), expected)


@pytest.mark.parametrize("std, resolution", [(3.0, 2**13), (3.3, 2**6), (0.02, 2**13)])
def test_the_compiled_kernel_gives_the_numpy_output_bit_for_bit(std, resolution):
    pytest.importorskip("numba")
    compiled = DiscreteGaussianSampler(std, resolution=resolution, backend="numba")
    plain = DiscreteGaussianSampler(std, resolution=resolution, backend="numpy")
    assert (compiled.backend, plain.backend) == ("numba", "numpy")
    words, extra, counts = _words_with_ties(compiled, 50_000, seed=1)
    assert counts["tie"] > 1000
    x = np.random.default_rng(2).normal(0, 40 * std, words.size)
    x[::7] = np.rint(x[::7] / compiled.grid) * compiled.grid + compiled.grid / 2  # halfway cases of the rounding
    # thousands of ties and residual draws: the kernel runs out of extra words for them and resumes, many times
    ours, reference = compiled.add(x, words, extra), plain.add(x, words, extra)
    np.testing.assert_array_equal(ours, reference)
    for sampler in (compiled, plain):  # in place, into the input itself
        buffer = x.copy()
        assert sampler.add(buffer, words, extra, out=buffer) is not None
        np.testing.assert_array_equal(buffer, reference)
    # and both are the rule applied by hand: g (round(x / g) +- |Z|), the sign from the top bit
    index = _expected(compiled, words, extra)
    negative = (words >> np.uint32(31)).astype(bool)
    assert 0.45 < negative.mean() < 0.55
    np.testing.assert_array_equal(ours, (np.rint(x / compiled.grid) + np.where(negative, -index, index)) * compiled.grid)
    assert compiled(x[:5000].reshape(100, 50)[:, ::2]).shape == (100, 25)  # any layout in, same shape out
    # 64-bit words: their top 32 bits are the word
    wide = (words.astype(np.uint64) << np.uint64(32)) | np.uint64(12345)
    np.testing.assert_array_equal(compiled.add(x, wide, extra), reference)
    # a given stream that runs short continues deterministically (seeded runs), alike in both backends
    short = extra[:7]
    first = compiled.add(x, words, short)
    np.testing.assert_array_equal(first, compiled.add(x, words, short))
    np.testing.assert_array_equal(first, plain.add(x, words, short))
    # without given extra words, fresh ones settle the ties: |Z| is then one the column, its alias or the residual allows
    tied = words[50_000:]
    drawn = np.abs(np.rint(compiled.add(np.zeros(tied.size), tied) / compiled.grid).astype(np.int64))
    assert np.all(drawn <= compiled.zmax)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_no_negative_zero_leaks_the_sign_of_a_value_rounded_to_zero(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    sampler = DiscreteGaussianSampler(1.0, resolution=2**6, backend=backend)
    tiny = np.full(4096, -sampler.grid / 4)  # rounds to -0.0
    t = sampler._tables
    assert t.m == 0  # column 0 is the bin of 0 alone
    bits = np.random.default_rng(6).integers(0, 2**32, tiny.size, dtype=np.uint32)
    bits &= np.uint32(~(((1 << t.c) - 1) << (31 - t.c)) & (2**32 - 1))  # column 0: |Z| = 0 mostly
    out = sampler.add(tiny, bits, low=np.zeros(5 * tiny.size, dtype=np.uint64))
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


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fresh_noise_refills_its_extra_words_from_the_csprng(backend, monkeypatch):
    """Short of extra words, the private paths draw more from the CSPRNG, never from a seeded generator."""
    if backend == "numba":
        pytest.importorskip("numba")
    import opendp_hybridad.dpsgd.noise as noise_module

    sampler = DiscreteGaussianSampler(3.0, backend=backend)
    fresh = DiscreteGaussianSampler._fresh
    monkeypatch.setattr(DiscreteGaussianSampler, "_fresh", staticmethod(lambda count: (fresh(count)[0], fresh(0)[1][:1])))
    seeded = []
    monkeypatch.setattr(noise_module.np.random, "default_rng", lambda *a, **k: seeded.append(a) or np.random.Generator(np.random.PCG64(0)))
    drawn = []
    real = noise_module._random_bytes
    monkeypatch.setattr(noise_module, "_random_bytes", lambda n: drawn.append(n) or real(n))
    z = sampler.integers(20_000)
    y = sampler(np.zeros(20_000))
    assert not seeded and len(drawn) > 4  # refills came from the CSPRNG
    assert np.all(np.abs(z) <= sampler.zmax) and np.all(np.abs(y / sampler.grid) <= sampler.zmax)


def test_huge_grid_settled_draws_add_like_the_main_loop():
    # audit attack_noise_tables.py: at a grid near 2^1023 the kernel added a tie's or residual draw's z
    # as rint(x/g) g + z g, which overflows where numpy's (rint(x/g) + z) g does not
    numba_sampler = DiscreteGaussianSampler(1.7e308, backend="auto")
    if numba_sampler.backend != "numba":
        pytest.skip("numba is not installed")
    numpy_sampler = DiscreteGaussianSampler(1.7e308, backend="numpy")
    assert numba_sampler.k >= 1007
    rng = np.random.default_rng(11)
    n = 50_000  # about 0.4 % residual draws: some 200, most with |z| above 2^13
    values = np.full(n, -(2.0**1023))
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    low = rng.integers(0, 2**63, 4 * n, dtype=np.uint64)
    a = numba_sampler.add(values, bits, low=low)
    b = numpy_sampler.add(values, bits, low=low)
    assert np.array_equal(a, b)
    assert np.isfinite(b).sum() > n // 4  # the comparison covers finite outputs, not only overflows


def test_a_grid_below_the_normal_range_is_refused_and_the_smallest_one_works():
    # audit attack_noise_tables.py: below 2^-1022 the inverse of the grid is inf and every output was a sign
    with pytest.raises(DeclarationError, match="too small"):
        DiscreteGaussianSampler(1e-306)
    with pytest.raises(DeclarationError):
        DiscreteGaussianSampler(1.0, k=-1023)
    smallest = DiscreteGaussianSampler(2.0**-1009)  # k = -1022
    assert smallest.k == -1022
    values = np.array([0.0, 1e-300, -1e-300, -0.0, 5e-324])
    out = smallest(values)
    assert np.all(np.isfinite(out))
    # integers times the grid, within a few std of the values
    assert np.all(np.abs(out - values) < 20 * smallest.std)
    assert np.all(out / smallest.grid == np.rint(out / smallest.grid))


def test_csprng_requests_are_split_below_the_one_call_limit(monkeypatch):
    # audit attack_noise_tables.py: RAND_bytes takes a C int, so one call for more than ~5e8 coordinates
    # raised; the sampler now asks in chunks (a small chunk here, the same rule)
    from opendp_hybridad.dpsgd import noise

    calls: list[int] = []
    source = np.random.default_rng(5)

    def recording(n: int) -> bytes:
        calls.append(n)
        return source.bytes(n)

    monkeypatch.setattr(noise, "_random_bytes", recording)
    monkeypatch.setattr(noise, "_CSPRNG_CHUNK", 1000)
    data = noise._csprng_bytes(3500)
    assert len(data) == 3500 and calls == [1000, 1000, 1000, 500]
    assert data == np.random.default_rng(5).bytes(3500)  # in order, nothing dropped or repeated
    calls.clear()
    sampler = DiscreteGaussianSampler(3.0)
    out = sampler(np.zeros(700))  # 4 bytes a coordinate and the extra words: more than one chunk
    assert len(calls) > 1 and max(calls) <= 1000 and np.all(np.isfinite(out))
