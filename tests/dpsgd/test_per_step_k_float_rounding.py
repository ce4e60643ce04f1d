"""Per-step K with the float-only outward rounding against exact rational rounding, through the trainer.

The per-step bound (``granularity="step"``) recomputes the certified chain whenever a rounded
weight norm changes slot; its products, quotients and roots now decide their outward step by
TwoProduct instead of a ``Fraction`` (rounding.py). With every such decision forced back to the
exact rational comparison, the plan's per-step bounds along a training trajectory and a whole
seeded run must come out the same: the same sensitivity and forward error each step (so never a
smaller one), the same noise scale, the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from opendp_hybridad.analysis import rounding as rd
from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.nn import MLP, Dense, Flatten, Identity, Sequential, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.conv import Conv2d
from opendp_hybridad.nn.parts.pooling import AvgPool2d


def _mlp() -> MLP:
    return MLP([Dense(6, 8, 0.05, 0.05, norm_ball=True), Dense(8, 3, 0.05, 0.05, norm_ball=True)], [Tanh(), Identity()],
               SoftmaxCrossEntropy(), input_bound=0.5)


def _cnn() -> Sequential:
    return Sequential([Conv2d(1, 2, 3, padding=1, weight_bound=1.0, bias_bound=0.5, norm_ball=True), Tanh(), AvgPool2d(2),
                       Flatten(), Dense(8, 3, 2.0, 0.5, norm_ball=True)], SoftmaxCrossEntropy(), input_bound=1.0,
                      input_shape=(1, 4, 4))


def _data(model, n: int = 240):
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.5, 0.5, (n, *model.input_shape))
    y = rng.integers(0, 3, n)
    return x, y


def _exact_rounding(monkeypatch) -> None:
    for name in ("_product_error_sign", "_quotient_error_sign", "_square_excess_sign"):
        monkeypatch.setattr(rd, name, lambda *args: None)
    for cached in (rd.underflow_allowance, rd.root_up, rd.gamma_factor_up, rd._float_norm_constants, rd.gamma):
        cached.cache_clear()


def _run(build, mode: str):
    model = build()
    x, y = _data(model)
    # a large learning rate: the weights leave the declared set fast, so the per-step bound moves every step; in auto
    # mode the first steps' K_t is below C = 20 and later ones above it (a clipping step's e is from the coarse bound)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=24, epochs=2, learning_rate=2.0, mode=mode, clip=20.0,
                    granularity="step")
    plan = trainer.plan(len(x))
    seen = []
    at = plan.gradient_sum.at

    def recording_at(params):
        bounds = at(params)
        sampler = plan.noise.sampler(bounds.sensitivity, bounds.error)
        seen.append((bounds, sampler.sum_sensitivity, sampler.std))
        return bounds

    object.__setattr__(plan.gradient_sum, "at", recording_at)
    params, history = trainer.run(plan, x, y, seed=5, insecure_noise_seed=6)
    return seen, params, history


@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("mode", ["auto", "bound"])
def test_a_seeded_per_step_run_is_the_same_with_exact_rational_rounding(build, mode, monkeypatch):
    fast_seen, fast_params, fast_history = _run(build, mode)
    with monkeypatch.context() as m:
        _exact_rounding(m)
        exact_seen, exact_params, exact_history = _run(build, mode)
    assert len(fast_seen) == len(exact_seen) > 10
    # the bound moved during the run (so the chain was recomputed, not read from one cache entry)
    assert len({b for b, _, _ in fast_seen}) > 1
    if mode == "auto":  # both kinds of step: computed from the chain (K_t <= C) and clipping ones
        assert {b.clip for b, _, _ in fast_seen} == {False, True}
    for (fb, fs, fstd), (eb, es, estd) in zip(fast_seen, exact_seen, strict=True):
        assert fb.sensitivity >= eb.sensitivity and fb.error >= eb.error and fs >= es and fstd >= estd
        assert (fb, fs, fstd) == (eb, es, estd)
    fast_arrays = [np.asarray(a) for part in fast_params for a in part]
    exact_arrays = [np.asarray(a) for part in exact_params for a in part]
    assert len(fast_arrays) == len(exact_arrays) > 0
    for f, e in zip(fast_arrays, exact_arrays, strict=True):
        np.testing.assert_array_equal(f, e)
    assert fast_history.epsilon == exact_history.epsilon and fast_history.steps_run == exact_history.steps_run
