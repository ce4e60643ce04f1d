"""The plan holds the run's parts as objects (issue 13 item 2), target_epsilon (item 4), physical batches (item 5),
seeded noise as an explicit non-private opt-in (item 7) and the tqdm progress bar (item 8)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import opendp.prelude as dp
import pytest

from opendp_hybridad.accounting import compose_epsilon
from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd
from opendp_hybridad.dpsgd.accounting import DpSgdRdpCurve, dp_sgd_calibration, dp_sgd_epsilon
from opendp_hybridad.dpsgd.plan import GaussianNoise, GradientSum, PoissonSelection, ProvenAccounting, ShuffledSelection
from opendp_hybridad.dpsgd.selection import BatchSelector
from opendp_hybridad.dpsgd.sgd import computed_sum_sensitivity
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import MLP, Dense, Flatten, Identity, Sequential, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.conv import Conv2d
from opendp_hybridad.nn.parts.pooling import AvgPool2d
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE


def _mlp() -> MLP:
    return MLP([Dense(3, 4, 1.0, 0.5, norm_ball=True), Dense(4, 2, 1.0, 0.5, norm_ball=True)], [Tanh(), Identity()],
               SoftmaxCrossEntropy(), input_bound=1.0)


def _cnn() -> Sequential:
    return Sequential([Conv2d(1, 2, 3, padding=1, weight_bound=1.0, bias_bound=0.5, norm_ball=True), Tanh(), AvgPool2d(2),
                       Flatten(), Dense(8, 3, 1.0, 0.5, norm_ball=True)], SoftmaxCrossEntropy(), input_bound=1.0,
                      input_shape=(1, 4, 4))


def _data(model, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.2, 1.2, (count, *model.input_shape)), rng.integers(0, model.output_features, count)


def test_the_plan_holds_objects_that_act():
    trainer = DPSGD(_mlp(), noise_multiplier=1.3, batch_size=10, epochs=2, learning_rate=0.1, mode="auto", clip=0.5)
    plan = trainer.plan(100, 120)
    selection, summer, noise, accounting = plan.batch_selection, plan.gradient_sum, plan.noise, plan.accounting
    assert isinstance(selection, PoissonSelection) and selection.max_terms == 120 and selection.relation is ADD_REMOVE
    assert isinstance(summer, GradientSum) and summer.max_terms == 120 and summer.sensitivity == min(0.5, trainer.bound.upper)
    assert summer.sum_sensitivity == computed_sum_sensitivity(summer.sensitivity, trainer.row_error(), 120)
    assert isinstance(noise, GaussianNoise) and noise.noise_multiplier == 1.3 and noise.sum_sensitivity == summer.sum_sensitivity
    sampler = noise.sampler(summer.sensitivity, trainer.row_error())
    assert sampler.std == noise.std >= 1.3 * summer.sum_sensitivity and sampler.max_terms == 120
    assert isinstance(accounting, ProvenAccounting) and isinstance(accounting.curve, DpSgdRdpCurve)
    assert accounting.steps == plan.steps == dp_sgd_epsilon(100, 10, 1.3, 2, 1e-5)["steps"] == 20
    assert plan.rdp_curve == tuple(float(v) for v in DpSgdRdpCurve(100, 10, 1.3).rdp(20))
    assert plan.epsilon()["epsilon"] == dp_sgd_epsilon(100, 10, 1.3, 2, 1e-5)["epsilon"]
    # the selection draws the run's batches, at the public rate
    batches = list(selection.batches(100, 5, BatchSelector(3)))
    assert len(batches) == 5 and all(b.dtype.kind == "i" and np.all(np.diff(b) > 0) for b in batches)
    # the gradient-sum part is the model's sum (one chunk)
    x, y = _data(trainer.model, 30)
    x = np.clip(x, -1, 1)
    params = trainer.model.init(np.random.default_rng(0))
    flat = np.empty(trainer.model.num_parameters)
    summer(params, x, y, True, flat)
    expected = np.empty_like(flat)
    trainer.model.gradient_sum(params, x, y, clip=0.5, out=expected)
    np.testing.assert_array_equal(flat, expected)
    # one readable line per part, and compose_epsilon reads the plan
    lines = str(plan).splitlines()
    assert len(lines) == 9 and [line.split(":")[0].strip() for line in lines] == [
        "batch selection", "gradient sum", "noise", "accounting", "relation", "public size", "max size", "missing values",
        "optimizer"]
    composed = compose_epsilon([plan], 1e-5)
    assert composed["epsilon_rdp"] == plan.epsilon()["epsilon"] and composed["delta"] == plan.epsilon()["delta"]
    shuffled = DPSGD(_mlp(), noise_multiplier=1.3, batch_size=10, epochs=2, learning_rate=0.1, sampling="shuffle").plan(100)
    assert isinstance(shuffled.batch_selection, ShuffledSelection) and shuffled.relation is REPLACE_ONE
    assert shuffled.gradient_sum.max_terms == 10


def test_the_measurement_runs_the_plan_its_map_reads(monkeypatch):
    dp.enable_features("contrib", "honest-but-curious")
    trainer = DPSGD(_cnn(), noise_multiplier=1.1, batch_size=4, epochs=1, learning_rate=0.1)
    ran = []
    real = DPSGD.run

    def spy(self, plan, *args, **kwargs):
        ran.append(plan)
        return real(self, plan, *args, **kwargs)

    monkeypatch.setattr(DPSGD, "run", spy)
    m = make_dp_sgd(trainer, 12)
    m(_data(trainer.model, 12))
    assert len(ran) == 1 and m.map(1) == (ran[0].epsilon()["epsilon"], ran[0].epsilon()["delta"])
    with pytest.raises(DeclarationError, match="seeded"):
        make_dp_sgd(trainer, 12, insecure_noise_seed=5)


def test_target_epsilon_is_calibrated_never_above_the_target_and_recorded_in_the_plan():
    dp.enable_features("contrib", "honest-but-curious")
    trainer = DPSGD(_mlp(), target_epsilon=2.0, batch_size=10, epochs=3, learning_rate=0.1)
    plan = trainer.plan(200)
    expected = dp_sgd_calibration(2.0, 1e-5, 200, 10, 3)
    assert plan.noise_multiplier == expected["noise_multiplier"] == plan.accounting.noise_multiplier
    assert plan.epsilon()["epsilon"] <= 2.0 and plan.accounting.target_epsilon == 2.0 and "target 2" in str(plan)
    assert dp_sgd_epsilon(200, 10, plan.noise_multiplier, 3, 1e-5)["epsilon"] <= 2.0
    assert make_dp_sgd(trainer, 200).map(1)[0] <= 2.0
    _, history = trainer.fit(*_data(trainer.model, 200), seed=1)
    assert history.epsilon <= 2.0 and history.plan.noise_multiplier == plan.noise_multiplier
    for kwargs in ({}, {"noise_multiplier": 1.0, "target_epsilon": 1.0}):
        with pytest.raises(DeclarationError, match="exactly one"):
            DPSGD(_mlp(), batch_size=10, epochs=3, learning_rate=0.1, **kwargs)


@pytest.mark.parametrize("build", [_mlp, _cnn])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_physical_batches_sum_the_same_rows_within_the_float_sum_allowance(build, chunk):
    model = build()
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=50, epochs=1, learning_rate=0.1, clip=0.3,
                    physical_batch_size=chunk)
    x, y = _data(model, 50, seed=chunk)
    x = np.clip(x, -1, 1)
    params = model.init(np.random.default_rng(1))  # inside the declared set: its e holds
    chunked = np.empty(model.num_parameters)
    trainer.plan(50).gradient_sum(params, x, y, True, chunked)
    whole = np.empty(model.num_parameters)
    model.gradient_sum(params, x, y, clip=0.3, out=whole)
    e = trainer.row_error()
    allowance = Fraction(computed_sum_sensitivity(0.3, e, 50)) - Fraction(0.3)  # 2 N e + 2 N gamma_N (S + e), rounded up
    assert Fraction(float(np.linalg.norm(chunked - whole))) <= allowance
    # and against an independent sum: per-example gradients materialised, clipped, added exactly per coordinate
    rows = np.concatenate([g.reshape(50, -1) for part in model.per_example_gradients(params, x, y) for g in part], axis=1)
    rows *= np.minimum(1.0, 0.3 / np.linalg.norm(rows, axis=1))[:, None]
    exact = np.array([math.fsum(column) for column in rows.T])
    assert np.linalg.norm(chunked - exact) <= 2 * float(allowance)  # both within the allowance of the exact rows' sum
    assert np.linalg.norm(exact) > 100 * float(allowance)  # a dropped row would show


def test_a_fit_with_physical_batches_trains():
    trainer = DPSGD(_cnn(), noise_multiplier=1.0, batch_size=20, epochs=2, learning_rate=0.5, physical_batch_size=3)
    params, history = trainer.fit(*_data(trainer.model, 60), seed=0)
    assert history.steps_run == 6 and all(np.all(np.isfinite(a)) for part in params for a in part)


def test_seeded_noise_is_reproducible_and_marked_not_private():
    model = _mlp()
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=10, epochs=1, learning_rate=0.1)
    x, y = _data(model, 40)
    first, h1 = trainer.fit(x, y, seed=2, insecure_noise_seed=123)
    second, h2 = trainer.fit(x, y, seed=2, insecure_noise_seed=123)
    for a, b in zip(first, second, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
    assert not first.private and not h1.private and not h2.private
    other, _ = trainer.fit(x, y, seed=2, insecure_noise_seed=124)
    assert not np.array_equal(other[0][0], first[0][0])
    seeded_batches, h3 = trainer.fit(x, y, seed=2)
    assert not seeded_batches.private and not h3.private  # a known seed makes the batches predictable
    secure, h4 = trainer.fit(x, y)
    assert secure.private and h4.private
    with pytest.raises(DeclarationError, match="table sampler"):
        DPSGD(model, noise_multiplier=1.0, batch_size=10, epochs=1, learning_rate=0.1, noise="opendp").fit(
            x, y, insecure_noise_seed=1)


def test_progress_is_a_tqdm_bar_with_the_proven_epsilon_and_no_training_loss(capsys):
    trainer = DPSGD(_mlp(), noise_multiplier=1.0, batch_size=10, epochs=2, learning_rate=0.1)
    x, y = _data(trainer.model, 50)
    _, history = trainer.fit(x, y, progress=True, seed=0, validation=(x[:10], y[:10]))
    err = capsys.readouterr().err
    assert "DP-SGD" in err and "100%" in err and "10/10" in err  # tqdm's bar
    printed = [float(v) for v in re.findall(r"epsilon \(RDP\) ([0-9.]+)", err)]
    assert printed[-1] == float(f"{trainer.epsilon(50)['epsilon']:.3f}") == float(f"{history.epsilon:.3f}")
    assert "loss" not in err.replace("validation loss", "")


def test_progress_bar_ends_at_the_last_step_when_it_moves_in_strides(capsys):
    # 405 steps: the bar moves every 2 steps (1/200 of the run), and must still end at 405/405
    trainer = DPSGD(_mlp(), noise_multiplier=1.0, batch_size=10, epochs=81, learning_rate=0.1)
    x, y = _data(trainer.model, 50)
    _, history = trainer.fit(x, y, progress=True, seed=0)
    err = capsys.readouterr().err
    assert history.steps_run == 405
    assert "405/405" in err and "100%" in err
    # a line every 405 // 10 = 40 steps, and one at the last step
    assert len(re.findall(r"epsilon \(RDP\)", err)) == 405 // 40 + 1
