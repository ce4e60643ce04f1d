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
    assert len(calls) == trainer.epsilon(100)["steps"] and set(calls) == {8 * 100}  # one word per example per step
    calls.clear()
    trainer.fit(x, y, seed=3)
    assert calls == []  # seeded: numpy's generator, reproducible
