"""Statistical audit of one noisy DP-SGD step with a canary at the edge of the declared box.

A linear model with squared error, weights at the edge of their certified ball
(public), and a canary at the corner of the input box with the extreme label: its
gradient norm equals the certified per-step bound K, so the bound is tight and an
audit can see it. One full-batch step (every example in the batch) releases the
gradient sum plus discrete Gaussian noise of std sigma * K (OpenDP's sampler, and
our table sampler); the claim is
1/sigma-GDP for the canary. We run the step 50,000 times with and without the
canary, project the released vector on the canary's gradient, threshold at a
point fixed in advance, and turn the error rates into an epsilon lower bound at
delta = 0.1 (99.9% Clopper-Pearson). It must stay below the claim, and exceed the
claim when the mechanism is built with K halved.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.individual import gdp_epsilon
from opendp_hybridad.nn import MLP, Dense, Identity, MeanSquaredError

RUNS, DELTA, SIGMA = 50_000, 0.1, 0.5


def _lower_bound(with_canary, without, threshold):
    tp, fp = int((with_canary > threshold).sum()), int((without > threshold).sum())
    tpr = beta.ppf(0.0005, tp, RUNS - tp + 1) if tp else 0.0
    fpr = beta.ppf(1 - 0.0005, fp + 1, RUNS - fp)
    return math.log((tpr - DELTA) / fpr) if tpr > DELTA else 0.0


def _audit(k_factor: float, noise_kind: str) -> tuple[float, float]:
    d = 3
    model = MLP([Dense(d, 1, 1.0, 0.5, norm_ball=True)], [Identity()], MeanSquaredError(), input_bound=1.0, label_bound=1.0)
    corner = np.ones(d)
    W = (corner / np.linalg.norm(corner))[None, :] * 1.0   # on the edge of the weight ball, aligned with the canary
    params = [(W, np.array([0.5]))]
    rng = np.random.default_rng(11)  # the data set, not the noise
    others_x = rng.uniform(-1, 1, (20, d))
    others_y = rng.uniform(-1, 1, (20, 1))
    canary_x, canary_y = corner[None, :], np.array([[-1.0]])
    K = model.certified_bound(params).upper
    g = model.gradient_sum(params, canary_x, canary_y)
    g_canary = np.concatenate([g[0][0].ravel(), g[0][1]])
    assert np.linalg.norm(g_canary) >= 0.999 * K  # the canary attains the bound

    trainer = DPSGD(model, noise_multiplier=SIGMA, batch_size=21, epochs=1, learning_rate=0.1, mode="bound", noise=noise_kind)
    if noise_kind == "opendp":
        measurement = trainer.noise_measurement(RUNS * (d + 1), sensitivity=K * k_factor)  # all runs in one vector draw

        def noise(values):
            return np.array(measurement(values.tolist()))
    else:
        noise = trainer.noise_function(d + 1, sensitivity=K * k_factor)  # the table sampler, one draw per coordinate

    def step(x, y):
        s = model.gradient_sum(params, x, y)
        return np.concatenate([s[0][0].ravel(), s[0][1]])

    with_canary = step(np.vstack([others_x, canary_x]), np.vstack([others_y, canary_y]))
    without = step(others_x, others_y)
    direction = g_canary / np.linalg.norm(g_canary)
    released_with = noise(np.tile(with_canary, RUNS)).reshape(RUNS, d + 1) @ direction
    released_without = noise(np.tile(without, RUNS)).reshape(RUNS, d + 1) @ direction
    std = SIGMA * K * k_factor
    threshold = float(without @ direction) + 2.85 * std  # fixed before sampling
    return _lower_bound(released_with, released_without, threshold), gdp_epsilon(1 / SIGMA, DELTA)


@pytest.mark.parametrize("noise_kind", ["opendp", "discrete-gaussian"])
def test_one_noisy_step_audits_below_its_claim(noise_kind):
    lower, claim = _audit(1.0, noise_kind)
    assert lower <= claim


@pytest.mark.parametrize("noise_kind", ["opendp", "discrete-gaussian"])
def test_the_audit_catches_a_halved_sensitivity(noise_kind):
    lower, claim = _audit(0.5, noise_kind)
    assert lower > claim
