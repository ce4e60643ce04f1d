"""Optimizers and schedules as post-processing of the released sums (issue 13 item 3), and save/load/resume with the
privacy spent (item 6): 2 + 3 epochs report the epsilon of 5."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.dpsgd import checkpoint as checkpoint_module
from opendp_hybridad.dpsgd.accounting import dp_sgd_epsilon
from opendp_hybridad.dpsgd.optim import SGD, Adam, Constant, Cosine, StepDecay
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import MLP, Dense, Flatten, Identity, MeanSquaredError, Sequential, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.conv import Conv2d
from opendp_hybridad.nn.parts.pooling import AvgPool2d


def _linear(weight_bound: float = 10.0, norm_ball: bool = False) -> MLP:
    return MLP([Dense(3, 2, weight_bound, weight_bound, norm_ball=norm_ball)], [Identity()], MeanSquaredError(), input_bound=1.0,
               label_bound=1.0)


def _identity_noise(max_terms: int):
    """No noise: the update is then checked against closed forms of the optimizers on the exact sums."""

    def noise(flat, in_place=False):
        return flat

    noise.max_terms = max_terms
    return noise


def _flat(params) -> np.ndarray:
    return np.concatenate([np.ravel(a) for part in params for a in part])


def test_schedules_follow_their_closed_forms():
    assert [Constant(0.3)(t) for t in (0, 7)] == [0.3, 0.3]
    assert [StepDecay(1.0, every=3, factor=0.5)(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cosine = Cosine(2.0, steps=4, final=0.5)
    expected = [0.5 + 1.5 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)] + [0.5, 0.5]
    assert [cosine(t) for t in range(6)] == pytest.approx(expected, rel=1e-15)
    assert Cosine(1.0).for_run(10)(5) == pytest.approx(0.5, rel=1e-15)
    with pytest.raises(DeclarationError):
        Cosine(1.0, final=2.0)


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    [(SGD(), 0.2), (SGD(momentum=0.9), StepDecay(0.2, every=2, factor=0.5)), (SGD(momentum=0.5, weight_decay=0.1), 0.1),
     (SGD(momentum=0.5, nesterov=True), 0.1), (Adam(), 0.05), (Adam(weight_decay=0.01), lambda t: 0.05 / (t + 1))],
)
def test_optimizers_apply_their_closed_forms_to_the_released_sums(optimizer, schedule):
    model = _linear()
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=4, epochs=1, learning_rate=schedule, optimizer=optimizer,
                    mode="clip", clip=1e9)
    rate = trainer.schedule
    rng = np.random.default_rng(0)
    params = model.init(rng)
    w = _flat(params)
    state = optimizer.init(w.size)
    velocity, m, v = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t in range(4):
        x, y = rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (5, 2))
        g_sum = np.empty(w.size)
        model.gradient_sum(params, x, y, clip=None, out=g_sum)
        g = g_sum / 4  # the expected (public) batch size
        if isinstance(optimizer, SGD):
            g = g + optimizer.weight_decay * w
            velocity = optimizer.momentum * velocity + g
            d = (g + optimizer.momentum * velocity if optimizer.nesterov else velocity) if optimizer.momentum else g
        else:
            m = optimizer.beta1 * m + (1 - optimizer.beta1) * g
            v = optimizer.beta2 * v + (1 - optimizer.beta2) * g * g
            d = (m / (1 - optimizer.beta1 ** (t + 1))) / (np.sqrt(v / (1 - optimizer.beta2 ** (t + 1))) + optimizer.eps)
            d = d + optimizer.weight_decay * w
        w = w - rate(t) * d
        params = trainer.step(params, x, y, _identity_noise(5), clip=False, state=state, index=t)
        np.testing.assert_allclose(_flat(params), w, rtol=1e-12, atol=1e-14)


def test_the_optimizer_sees_only_the_released_noisy_sum(monkeypatch):
    model = _linear(1.0)
    seen = []
    real = Adam.update

    def spy(self, noisy_sum, batch_size, weights, state):
        seen.append((noisy_sum.copy(), batch_size))
        return real(self, noisy_sum, batch_size, weights, state)

    monkeypatch.setattr(Adam, "update", spy)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=5, epochs=1, learning_rate=0.1, optimizer=Adam())
    rng = np.random.default_rng(3)
    trainer.fit(rng.uniform(-1, 1, (20, 3)), rng.uniform(-1, 1, (20, 2)), seed=0)
    grid = trainer.plan(20).noise.sampler(1.0, trainer.row_error()).grid
    assert len(seen) == 4
    for released, batch in seen:
        assert batch == 5 and np.array_equal(released / grid, np.round(released / grid))  # on the noise's lattice


@pytest.mark.parametrize("optimizer", [SGD(momentum=0.9, weight_decay=0.01), Adam()])
def test_bound_mode_still_projects_onto_the_certified_set_after_every_update(optimizer):
    model = MLP([Dense(3, 4, 0.3, 0.1, norm_ball=True), Dense(4, 2, 0.3, 0.1, norm_ball=True)], [Tanh(), Identity()],
                SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=0.5, batch_size=8, epochs=3, learning_rate=50.0, mode="bound", optimizer=optimizer)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (40, 3)), rng.integers(0, 2, 40)
    norms = []
    original = model.gradient_sum

    def spy(params, xb, yb, clip=None, out=None):
        norms.append(float(model.per_example_norms(params, xb, yb).max(initial=0.0)))
        for layer, (W, b) in zip(model.layers, params, strict=True):
            assert math.sqrt(math.fsum((W * W).ravel().tolist())) <= layer.weight_bound and np.abs(b).max() <= layer.bias_bound
        return original(params, xb, yb, clip=clip, out=out)

    model.gradient_sum = spy
    params, _ = trainer.fit(x, y, seed=0)
    assert max(norms) <= trainer.bound.upper and len(norms) == 15
    for layer, (W, _) in zip(model.layers, params, strict=True):
        assert math.sqrt(math.fsum((W * W).ravel().tolist())) <= layer.weight_bound


def _cnn() -> Sequential:
    return Sequential([Conv2d(1, 2, 3, padding=1, weight_bound=1.0, bias_bound=0.5, norm_ball=True), Tanh(), AvgPool2d(2),
                       Flatten(), Dense(8, 3, 1.0, 0.5, norm_ball=True)], SoftmaxCrossEntropy(), input_bound=1.0,
                      input_shape=(1, 4, 4))


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_two_then_three_epochs_report_the_epsilon_of_five(tmp_path, sampling):
    n, batch, sigma = 100, 10, 1.2  # 10 steps an epoch either way
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, (n, 1, 4, 4)), rng.integers(0, 3, n)

    def trainer(epochs):
        return DPSGD(_cnn(), noise_multiplier=sigma, batch_size=batch, epochs=epochs, learning_rate=0.5, sampling=sampling,
                     optimizer=Adam())

    first = trainer(2)
    params, history = first.fit(x, y)  # unseeded: private (a seed makes the batches predictable)
    weights, sidecar = first.save(tmp_path / "model.npz", params, history)
    record = json.loads(sidecar.read_text())["privacy"]
    assert record["steps"] == 20 and record["noise_multiplier"] == sigma and record["sampling"] == sampling
    assert record["sampling_probability"] == 0.1 and record["private"] is True
    assert record["epsilon"] == dp_sgd_epsilon(n, batch, sigma, 2, 1e-5, sampling)["epsilon"]
    loaded = DPSGD.load(weights)
    for a, b in zip(params, loaded.params, strict=True):
        assert len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert loaded.optimizer_state["t"] == 20 and np.array_equal(loaded.optimizer_state["m"], history.optimizer_state["m"])
    second = trainer(3)
    resumed, history2 = second.fit(x, y, resume=loaded, seed=1)
    five = dp_sgd_epsilon(n, batch, sigma, 5, 1e-5, sampling)
    assert history2.steps_run == five["steps"] == 50 and history2.steps_before == 20
    assert history2.epsilon == five["epsilon"] > record["epsilon"]
    assert history2.delta == trainer(5).epsilon(n)["delta"]
    assert history2.private is False and history.private is True  # the resumed run was seeded
    assert history2.plan.rdp_curve == trainer(5).plan(n).rdp_curve  # compose_epsilon sees all the steps
    _, sidecar2 = second.save(tmp_path / "resumed", resumed, history2)
    assert json.loads(sidecar2.read_text())["privacy"]["steps"] == 50
    with pytest.raises(DeclarationError, match="noise_multiplier"):
        DPSGD(_cnn(), noise_multiplier=2.0, batch_size=batch, epochs=1, learning_rate=0.5, sampling=sampling).fit(
            x, y, resume=loaded)


def test_seeded_runs_stay_not_private_when_resumed_and_the_sidecar_is_written_first(tmp_path, monkeypatch):
    trainer = DPSGD(_linear(), noise_multiplier=1.0, batch_size=5, epochs=1, learning_rate=0.1)
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-1, 1, (20, 3)), rng.uniform(-1, 1, (20, 2))
    params, history = trainer.fit(x, y, seed=0, insecure_noise_seed=4)
    weights, sidecar = trainer.save(tmp_path / "seeded.npz", params, history)
    assert json.loads(sidecar.read_text())["privacy"]["private"] is False
    resumed, history2 = trainer.fit(x, y, resume=DPSGD.load(weights), seed=1)
    assert not history2.private and not resumed.private
    monkeypatch.setattr(checkpoint_module.np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        trainer.save(tmp_path / "later.npz", params, history)
    assert (tmp_path / "later.json").exists() and not (tmp_path / "later.npz").exists()
