"""``DPSGD.step`` without a plan keeps its GradientSum between steps only while the trainer's declaration is unchanged."""

from __future__ import annotations

import numpy as np

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh


def _trainer() -> tuple[DPSGD, MLP]:
    model = MLP([Dense(4, 3, 0.05, 0.05, norm_ball=True), Dense(3, 2, 0.05, 0.05, norm_ball=True)],
                [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=0.125)
    return DPSGD(model, noise_multiplier=1.0, batch_size=8, epochs=1, learning_rate=0.1, mode="auto", clip=3.0), model


def test_the_kept_sum_follows_every_change_of_the_declaration():
    trainer, model = _trainer()
    summer, clipping, projects, size = trainer._step_summer(8)
    assert (summer.clip_norm, summer.mode, summer.max_terms, clipping, projects, size) == (3.0, "auto", 8, False, True,
                                                                                            model.num_parameters)
    assert trainer._step_summer(8)[0] is summer  # unchanged: kept
    assert trainer._step_summer(9)[0].max_terms == 9
    trainer.clip = 1e-6  # below K: the sum must now clip
    summer, clipping, projects, _ = trainer._step_summer(9)
    assert summer.clip_norm == 1e-6 and clipping and summer.sensitivity == 1e-6
    trainer.mode = "clip"
    summer, clipping, projects, _ = trainer._step_summer(9)
    assert summer.mode == "clip" and clipping and not projects
    trainer.granularity = "step"
    assert trainer._step_summer(9)[0].granularity == "step"
    trainer.physical_batch_size = 2
    assert trainer._step_summer(9)[0].physical_batch_size == 2
    bound = trainer.bound
    trainer.bound = type(bound)(**{**bound.__dict__})  # an equal bound, another object: rebuilt from it
    assert trainer._step_summer(9)[0].bound is trainer.bound


def test_steps_with_the_kept_sum_give_the_weights_of_a_fresh_one():
    trainer, model = _trainer()
    rng = np.random.default_rng(0)
    params = model.init(rng)
    x, y = rng.uniform(-0.125, 0.125, (8, 4)), rng.integers(0, 2, 8)
    zero_noise = type("Zero", (), {"max_terms": 8, "__call__": lambda self, v, in_place=False: v})()
    first = trainer.step(params, x, y, zero_noise)
    again = trainer.step(params, x, y, zero_noise)  # the kept GradientSum
    fresh = DPSGD(model, noise_multiplier=1.0, batch_size=8, epochs=1, learning_rate=0.1, mode="auto", clip=3.0)
    for (W1, b1), (W2, b2), (W3, b3) in zip(first, again, fresh.step(params, x, y, zero_noise), strict=True):
        np.testing.assert_array_equal(W1, W2)
        np.testing.assert_array_equal(W1, W3)
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_array_equal(b1, b3)
    trainer.clip = 1e-3  # now the rows are clipped to 1e-3: a different (smaller) step
    clipped = trainer.step(params, x, y, zero_noise)
    assert not np.array_equal(clipped[0][0], first[0][0])
