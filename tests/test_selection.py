"""Batch selection from the CSPRNG: inclusion probability, uniform permutations, used by fit."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

from opendp_hybridad.dpsgd import selection
from opendp_hybridad.dpsgd.selection import BatchSelector


def test_poisson_selection_includes_each_example_with_probability_q():
    selector = BatchSelector()
    n, batch = 1000, 37
    counts = np.zeros(n)
    rounds = 400
    for _ in range(rounds):
        counts[selector.poisson(n, batch)] += 1
    total = counts.sum()
    assert stats.binomtest(int(total), n * rounds, batch / n).pvalue > 1e-4  # the rate is q
    assert stats.chisquare(counts).pvalue > 1e-4  # and the same for every example
    assert stats.binomtest(int(total), n * rounds, 1.2 * batch / n).pvalue < 1e-6  # the test can tell 20% apart
    np.testing.assert_array_equal(selector.poisson(10, 10), np.arange(10))  # q = 1: everyone


def test_the_inclusion_threshold_never_exceeds_q():
    for n, batch in ((3, 1), (7, 3), (60_000, 256), (1347, 128)):
        threshold = (batch << 64) // n
        assert threshold / 2**64 <= batch / n and batch / n - threshold / 2**64 < 2**-63


def test_permutations_are_uniform():
    selector = BatchSelector()
    seen = dict.fromkeys(itertools.permutations(range(3)), 0)
    for _ in range(6000):
        seen[tuple(selector.permutation(3).tolist())] += 1
    assert stats.chisquare(list(seen.values())).pvalue > 1e-4
    assert sorted(selector.permutation(500).tolist()) == list(range(500))


def test_fit_selects_batches_from_the_csprng_unless_seeded(monkeypatch):
    from opendp_hybridad.dpsgd import DPSGD
    from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy

    calls = []
    real = selection._random_bytes
    monkeypatch.setattr(selection, "_random_bytes", lambda k: (calls.append(k), real(k))[1])
    model = MLP([Dense(2, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    x, y = np.random.default_rng(0).uniform(-1, 1, (100, 2)), np.zeros(100, dtype=int)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=10, epochs=1, learning_rate=0.1)
    trainer.fit(x, y)
    prefixes = [k for k in calls if k == 2 * 100]
    ties = [k for k in calls if k != 2 * 100]
    # a 16-bit prefix per example per step, and 6 more bytes (in a 64-bit word) only for prefixes that tie
    assert len(prefixes) == trainer.epsilon(100)["steps"] and all(k % 8 == 0 and k <= 8 * 100 for k in ties)
    calls.clear()
    trainer.fit(x, y, seed=3)
    assert calls == []  # seeded: numpy's generator, reproducible


class _Scripted:
    """A byte source that plays back fixed bytes, recording each request (to check the selection's rule exactly)."""

    def __init__(self, data: bytes):
        self.data, self.at, self.requests = data, 0, []

    def __call__(self, k: int) -> bytes:
        self.requests.append(k)
        out = self.data[self.at:self.at + k]
        self.at += k
        assert len(out) == k
        return out


def test_the_two_part_draw_selects_exactly_where_the_whole_64_bit_word_is_below_the_threshold(monkeypatch):
    # the prefix and the tie's 48 bits are one word W = 2^48 prefix + low: the selection must be W < floor(q 2^64)
    rng = np.random.default_rng(5)
    for count, batch, n in ((4000, 37, 4000), (3000, 256, 60_000), (500, 1, 7), (2000, 1999, 2000)):
        threshold = (batch << 64) // n
        top = threshold >> 48
        prefixes = rng.integers(0, 1 << 16, count, dtype=np.uint16)
        prefixes[rng.random(count) < 0.3] = top  # many ties (about 0.002 % of draws in use): the rare path, often
        tie_positions = np.flatnonzero(prefixes == top)
        lows = rng.integers(0, 1 << 64, tie_positions.size, dtype=np.uint64, endpoint=False)
        lows[::3] = np.uint64((threshold & ((1 << 48) - 1)) << 16)  # the low bits equal to the threshold's: not below
        lows[1::7] = np.uint64(((threshold & ((1 << 48) - 1)) - 1) % (1 << 48) << 16)  # one below it
        source = _Scripted(prefixes.tobytes() + lows.tobytes())
        monkeypatch.setattr(selection, "_random_bytes", source)
        chosen = BatchSelector().poisson(count, batch, n)
        words = [int(p) << 48 for p in prefixes]  # non-ties: their low bits never decide
        for k, position in enumerate(tie_positions):
            words[position] = (int(top) << 48) | (int(lows[k]) >> 16)
        expected = [i for i, w in enumerate(words) if w < threshold]
        assert chosen.tolist() == expected, (count, batch, n)
        assert source.at == len(source.data)  # every tie drew its word, nobody else did
