"""Statistical audit of one noisy DP-SGD step of a convolutional model (issue 13's acceptance).

The model is a 1-d convolution whose kernel spans the input (one output position), flattened,
with squared error: its weight gradient goes through the conv part's own kernels (im2col, the
per-example row computed before the batch sum) and its certified bound goes through the conv
part's recursion, where it is tight: with weights on the edge of the kernel's Frobenius ball,
aligned with a canary at the corner of the input box and the extreme label, the canary's
gradient norm attains the certified per-step K. One full-batch step releases the gradient sum
through the trainer's noise (OpenDP's sampler, and the table sampler) of std sigma * K; the
claim is 1/sigma-GDP for the canary. Run 50,000 times with and without the canary, projected
on the canary's gradient, thresholded at a point fixed in advance: the epsilon lower bound at
delta 0.1 (99.9% Clopper-Pearson) must stay below the claim, and exceed it when the mechanism is
built with K halved (so the audit can see a wrong sensitivity).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.individual import gdp_epsilon
from opendp_hybridad.nn import MeanSquaredError
from opendp_hybridad.nn.parts.conv import Conv1d
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.sequential import Sequential

RUNS, DELTA, SIGMA, LENGTH = 50_000, 0.1, 0.5, 3


def _lower_bound(with_canary, without, threshold):
    tp, fp = int((with_canary > threshold).sum()), int((without > threshold).sum())
    tpr = beta.ppf(0.0005, tp, RUNS - tp + 1) if tp else 0.0
    fpr = beta.ppf(1 - 0.0005, fp + 1, RUNS - fp)
    return math.log((tpr - DELTA) / fpr) if tpr > DELTA else 0.0


def _audit(k_factor: float, noise_kind: str) -> tuple[float, float]:
    conv = Conv1d(1, 1, LENGTH, weight_bound=1.0, bias_bound=0.5, norm_ball=True)
    model = Sequential([conv, Flatten()], MeanSquaredError(), input_bound=1.0, label_bound=1.0, input_shape=(1, LENGTH))
    corner = np.ones((1, LENGTH))
    W = (corner / np.linalg.norm(corner)).reshape(1, 1, LENGTH)  # on the edge of the ball, aligned with the canary
    params = [(W, np.array([0.5])), ()]
    rng = np.random.default_rng(11)  # the data set, not the noise
    others_x = rng.uniform(-1, 1, (20, 1, LENGTH))
    others_y = rng.uniform(-1, 1, (20, 1))
    canary_x, canary_y = corner[None, :, :], np.array([[-1.0]])
    K = model.certified_bound(params).upper
    dimension = LENGTH + 1

    def step(x, y):
        return _flat(model.gradient_sum(params, x, y))  # the conv part's batch sum, as the trainer's step takes it

    g_canary = step(canary_x, canary_y)
    assert np.linalg.norm(g_canary) >= 0.999 * K  # the canary attains the bound: the audit can see it

    trainer = DPSGD(model, noise_multiplier=SIGMA, batch_size=21, epochs=1, learning_rate=0.1, mode="bound", noise=noise_kind)
    if noise_kind == "opendp":
        measurement = trainer.noise_measurement(RUNS * dimension, sensitivity=K * k_factor)  # all runs in one vector draw

        def noise(values):
            return np.array(measurement(values.tolist()))
    else:
        noise = trainer.noise_function(dimension, sensitivity=K * k_factor)  # the table sampler

    with_canary = step(np.concatenate([others_x, canary_x]), np.vstack([others_y, canary_y]))
    without = step(others_x, others_y)
    direction = g_canary / np.linalg.norm(g_canary)
    released_with = noise(np.tile(with_canary, RUNS)).reshape(RUNS, dimension) @ direction
    released_without = noise(np.tile(without, RUNS)).reshape(RUNS, dimension) @ direction
    std = SIGMA * K * k_factor
    threshold = float(without @ direction) + 2.85 * std  # fixed before sampling
    return _lower_bound(released_with, released_without, threshold), gdp_epsilon(1 / SIGMA, DELTA)


def _flat(views) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for part in views for a in part])


@pytest.mark.parametrize("noise_kind", ["opendp", "discrete-gaussian"])
def test_one_noisy_conv_step_audits_below_its_claim(noise_kind):
    lower, claim = _audit(1.0, noise_kind)
    assert lower <= claim


@pytest.mark.parametrize("noise_kind", ["opendp", "discrete-gaussian"])
def test_the_conv_audit_catches_a_halved_sensitivity(noise_kind):
    lower, claim = _audit(0.5, noise_kind)
    assert lower > claim
