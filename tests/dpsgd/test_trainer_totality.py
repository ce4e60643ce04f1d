"""Neighbouring datasets cannot be told apart by an exception or a data-dependent stop (audit: attack_dpsgd_trainer.py).

D holds one example and D' none: add/remove neighbours. Before the fix, an overflowing update in bound mode was
"projected" to NaN weights (inf * 0), after which only non-empty batches raised in the noise sampler; NaN initial
weights did the same; a checkpoint of another model failed on a matmul only when a batch was non-empty; and a
shuffled run that stopped mid-epoch let a resumed run's fresh permutation share the epoch in the accounting.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pytest

from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import MLP, Dense, Identity, MeanSquaredError

EMPTY = (np.zeros((0, 2)), np.zeros(0))
ONE = (np.ones((1, 2)), np.ones(1))


def _model(d: int = 2, ball: bool = False) -> MLP:
    return MLP([Dense(d, 1, 1.0, 1.0, norm_ball=ball)], [Identity()], MeanSquaredError(), input_bound=1.0, label_bound=1.0)


@pytest.mark.parametrize("ball", [True, False])
def test_an_overflowing_update_stops_both_neighbours_alike(ball):
    dp.enable_features("contrib", "honest-but-curious")
    trainer = DPSGD(_model(ball=ball), noise_multiplier=1.0, batch_size=1, epochs=5, learning_rate=1e308, mode="bound")
    m = make_dp_sgd(trainer, 5, max_size=5)
    for data in (ONE, EMPTY):
        for _ in range(3):
            params = m(data)  # never raises
            assert all(np.isfinite(a).all() for part in params for a in part)
            W = params[0][0]
            if ball:
                assert math.fsum((W * W).ravel().tolist()) <= 1.0
            else:
                assert np.abs(W).max() <= 1.0


def test_nan_initial_weights_are_projected_into_the_set():
    trainer = DPSGD(_model(), noise_multiplier=1.0, batch_size=1, epochs=3, learning_rate=0.1, mode="bound")
    nan_params = [(np.full((1, 2), np.nan), np.zeros(1))]
    for data in (ONE, EMPTY):
        params, history = trainer.fit(*data, params=nan_params, n=4, max_size=4)
        assert np.isfinite(params[0][0]).all() and history.stopped is None


def test_projection_of_non_finite_entries_lands_inside():
    for ball in (False, True):
        layer = Dense(3, 2, 1.0, 0.5, norm_ball=ball)
        W = np.array([[np.nan, np.inf, -np.inf], [1e308, -2.0, 0.5]])
        b = np.array([np.nan, np.inf])
        for PW, Pb in (layer.project(W, b), layer.apply_step(W, b, np.zeros(6), np.zeros(2), 1.0, True)):
            assert np.isfinite(PW).all() and np.isfinite(Pb).all() and np.abs(Pb).max() <= 0.5
            assert (math.fsum((PW * PW).ravel().tolist()) <= 1.0) if ball else (np.abs(PW).max() <= 1.0)


def test_a_checkpoint_of_another_model_is_refused_before_any_data(tmp_path):
    first = DPSGD(_model(3), noise_multiplier=1.0, batch_size=1, epochs=3, learning_rate=0.1, clip=1.0)
    params, history = first.fit(np.zeros((4, 3)), np.zeros(4), n=4)
    first.save(tmp_path / "ck", params, history)
    checkpoint = DPSGD.load(tmp_path / "ck")
    other = DPSGD(_model(2), noise_multiplier=1.0, batch_size=1, epochs=3, learning_rate=0.1, clip=1.0)
    for data in (ONE, EMPTY):
        with pytest.raises(DeclarationError, match="do not fit this model"):
            other.fit(*data, n=4, max_size=4, resume=checkpoint)


def test_a_shuffled_run_stopped_mid_epoch_counts_the_epoch_whole(monkeypatch):
    from opendp_hybridad.dpsgd import sgd

    n, batch = 10, 2  # 5 steps an epoch
    trainer = DPSGD(_model(), noise_multiplier=1.0, batch_size=batch, epochs=1, learning_rate=0.1, sampling="shuffle")
    x, y = np.ones((n, 2)), np.ones(n)
    calls = iter([True, False])  # the weights "stop being finite" after one step (a public, released-weight decision)
    monkeypatch.setattr(sgd, "_all_finite", lambda params: next(calls, False))
    _, history = trainer.fit(x, y, n=n)
    assert history.stopped is not None and len(history.steps) == 1
    # the epoch it began counts whole: a resumed run draws a fresh permutation, so its steps start a new epoch
    assert history.steps_run == 5 and history.epsilon == trainer.epsilon(n)["epsilon"]
