"""Per-example gradient kernels against finite differences and autograd; certified bounds; DP-SGD parts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers.labels import labels_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.nn import (
    MLP,
    Dense,
    Identity,
    Logistic,
    MeanSquaredError,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    TemperedSigmoid,
)

ACTIVATIONS = [Tanh(), Sigmoid(), TemperedSigmoid(3.0, 0.5, 1.2), ReLU(), Identity()]
LOSSES = [(SoftmaxCrossEntropy(), 3), (MeanSquaredError(), 2), (Logistic(), 1)]


def _model(act, loss, out):
    return MLP([Dense(4, 5, 0.8, 0.5), Dense(5, 3, 0.8, 0.5), Dense(3, out, 0.8, 0.5)], [act, act, Identity()], loss,
               input_bound=1.5, label_bound=1.0)




def _flat(params):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in params])


def _unflat(model, v):
    out, k = [], 0
    for layer in model.layers:
        W = v[k:k + layer.out_features * layer.in_features].reshape(layer.out_features, layer.in_features)
        k += W.size
        b = v[k:k + layer.out_features]
        k += layer.out_features
        out.append((W, b))
    return out


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.name)
@pytest.mark.parametrize(("loss", "out"), LOSSES, ids=lambda v: getattr(v, "name", str(v)))
def test_per_example_gradients_match_autograd_and_finite_differences(act, loss, out):
    autograd = pytest.importorskip("autograd")
    anp = autograd.numpy
    rng = np.random.default_rng(0)
    model = _model(act, loss, out)
    # non-zero biases: no pre-activation sits exactly on relu's kink, where subgradients differ
    params = [(W, rng.uniform(-0.5, 0.5, b.shape)) for W, b in model.init(rng)]
    x = rng.uniform(-1.5, 1.5, (4, 4))
    y = labels_for(loss, out, rng, 4)
    grads = model.per_example_gradients(params, x, y)

    def act_fn(z):
        name = act.name
        if name == "tanh":
            return anp.tanh(z)
        if name == "sigmoid":
            return 1 / (1 + anp.exp(-z))
        if name.startswith("tempered"):
            return 3.0 / (1 + anp.exp(-0.5 * z)) - 1.2
        if name == "relu":
            return anp.maximum(z, 0.0)
        return z

    def single_loss(v, xi, yi):
        ps = _unflat(model, v)
        a = xi
        for k, (W, b) in enumerate(ps):
            z = anp.dot(W, a) + b
            a = act_fn(z) if k < len(ps) - 1 else z
        if isinstance(loss, SoftmaxCrossEntropy):
            return anp.log(anp.sum(anp.exp(a - anp.max(a)))) + anp.max(a) - a[int(yi)]
        if isinstance(loss, Logistic):
            return anp.logaddexp(0.0, a[0]) - yi * a[0]
        return 0.5 * anp.sum((a - yi) ** 2)

    grad_fn = autograd.grad(single_loss)
    v = _flat(params)
    for i in range(4):
        ours = _flat([(gW[i], gb[i]) for gW, gb in grads])
        reference = grad_fn(v, x[i], y[i])
        np.testing.assert_allclose(ours, reference, rtol=1e-8, atol=1e-12)
        # central differences on a few coordinates
        for k in rng.choice(v.size, 6, replace=False):
            e = np.zeros_like(v)
            e[k] = 1e-6
            fd = (single_loss(v + e, x[i], y[i]) - single_loss(v - e, x[i], y[i])) / 2e-6
            assert ours[k] == pytest.approx(fd, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.name)
def test_norms_and_clipped_sums_without_materialising_equal_the_materialised_ones(act):
    rng = np.random.default_rng(1)
    model = _model(act, SoftmaxCrossEntropy(), 3)
    params = model.init(rng)
    x = rng.uniform(-1.5, 1.5, (50, 4))
    y = rng.integers(0, 3, 50)
    grads = model.per_example_gradients(params, x, y)
    materialised = np.sqrt(sum((gW**2).sum(axis=(1, 2)) + (gb**2).sum(axis=1) for gW, gb in grads))
    np.testing.assert_allclose(model.per_example_norms(params, x, y), materialised, rtol=1e-12)
    C = float(np.median(materialised))
    factor = np.minimum(1, C / materialised)
    clipped = model.gradient_sum(params, x, y, clip=C)
    for (sW, sb), (gW, gb) in zip(clipped, grads, strict=True):
        np.testing.assert_allclose(sW, (gW * factor[:, None, None]).sum(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sb, (gb * factor[:, None]).sum(axis=0), rtol=1e-10, atol=1e-12)


def test_large_batches_summed_in_blocks_equal_the_materialised_sum():
    # a 2,048-wide layer makes the block 16 rows: 50 examples go through in 4 blocks (the last one short)
    rng = np.random.default_rng(4)
    model = MLP([Dense(4, 2048, 1.0, 1.0), Dense(2048, 3, 1.0, 1.0)], [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    params = model.init(rng)
    x, y = rng.uniform(-1, 1, (50, 4)), rng.integers(0, 3, 50)
    grads = model.per_example_gradients(params, x, y)
    norms = model.per_example_norms(params, x, y)
    for clip, factor in ((None, np.ones(50)), (float(np.median(norms)), np.minimum(1, np.median(norms) / norms))):
        flat = np.full(model.num_parameters, np.nan)
        summed = model.gradient_sum(params, x, y, clip=clip, out=flat)
        assert np.shares_memory(summed[0][0], flat) and not np.isnan(flat).any()  # written in place, every coordinate
        for (sW, sb), (gW, gb) in zip(summed, grads, strict=True):
            np.testing.assert_allclose(sW, (gW * factor[:, None, None]).sum(axis=0), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(sb, (gb * factor[:, None]).sum(axis=0), rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(ACTIVATIONS) - 2), st.integers(0, len(LOSSES) - 1), st.lists(st.integers(1, 6), min_size=1, max_size=3),
       st.floats(0.05, 2.0), st.floats(0.1, 3.0), st.booleans(), st.integers(0, 1000))
def test_certified_bound_is_never_below_sampled_and_optimised_norms(a, li, widths, wbound, xbound, ball, seed):
    act = ACTIVATIONS[a]
    loss, out = LOSSES[li]
    sizes = [3, *widths, out]
    layers = [Dense(i, o, wbound, wbound / 2, norm_ball=ball) for i, o in itertools.pairwise(sizes)]
    model = MLP(layers, [act] * (len(layers) - 1) + [Identity()], loss, input_bound=xbound, label_bound=1.0)
    bound = model.certified_bound()
    model.witness(bound, samples=512, seed=seed)
    assert bound.upper >= bound.witness_value
    # and local search from the best sampled weights and inputs
    rng = np.random.default_rng(seed)
    best = 0.0
    for _ in range(20):
        params = model.project([(rng.uniform(-2, 2, (layer.out_features, layer.in_features)) * wbound,
                                 rng.uniform(-1, 1, layer.out_features)) for layer in layers])
        x = np.clip(rng.standard_normal((64, 3)) * xbound * 2, -xbound, xbound)
        y = labels_for(loss, out, rng, 64)
        best = max(best, float(model.per_example_norms(params, x, y).max()))
        per_step = model.certified_bound(params)
        assert per_step.upper >= float(model.per_example_norms(params, x, y).max())
        assert per_step.upper <= bound.upper * (1 + 1e-12) or ball is False
    assert bound.upper >= best


def test_dp_sgd_noise_matches_the_sensitivity_that_holds_in_each_mode():
    from opendp_hybridad.dpsgd import DPSGD

    tight = MLP([Dense(4, 3, 0.05, 0.05), Dense(3, 2, 0.05, 0.05)], [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    K = tight.certified_bound().upper
    for mode, clip, expected in (("clip", 0.5, 0.5), ("bound", 0.5, K), ("auto", 0.5, min(0.5, K)), ("auto", 10.0, K)):
        trainer = DPSGD(tight, noise_multiplier=1.3, batch_size=8, epochs=1, learning_rate=0.1, mode=mode, clip=clip)
        assert trainer.sensitivity == expected
        noise = trainer.noise_measurement(6 * 4)
        # zCDP of a Gaussian with std sigma * S at distance S: 1 / (2 sigma^2), OpenDP's grid rounding included
        assert noise.map(expected) <= 1 / (2 * 1.3**2)
        assert noise.map(expected) == pytest.approx(1 / (2 * 1.3**2), rel=1e-6)
        # the default table sampler: std covers the sensitivity plus the grid rounding, with noise multiplier 1.3
        sampler = trainer.noise_function(6 * 4)
        assert sampler.std >= 1.3 * (expected + math.sqrt(6 * 4) * sampler.grid)
        assert sampler.std <= 1.3 * (expected + math.sqrt(6 * 4) * sampler.grid) * (1 + 1 / 32)
    assert not DPSGD(tight, noise_multiplier=1.0, batch_size=8, epochs=1, learning_rate=0.1, mode="auto", clip=10.0).clipping_needed
    assert K <= 10.0


def test_dp_sgd_trains_and_its_measurement_reports_dp_accounting():
    from opendp_hybridad.accounting import dp_sgd_epsilon
    from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd

    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (400, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = MLP([Dense(2, 8, 1.0, 1.0), Dense(8, 2, 1.0, 1.0)], [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=0.8, batch_size=50, epochs=8, learning_rate=1.0, mode="clip", clip=1.0, noise="opendp")
    params, history = trainer.fit(x, y, seed=0)
    acts, _ = model.forward(params, x)
    assert (acts[-1].argmax(axis=1) == y).mean() > 0.8
    assert len(history.steps) == 64
    measurement = make_dp_sgd(trainer, 400)
    eps, delta = measurement.map(1)
    assert eps == pytest.approx(dp_sgd_epsilon(400, 50, 0.8, 8, 1e-5)["epsilon"], rel=1e-12) and delta == 1e-5
    curve = make_dp_sgd(trainer, 400, measure="renyi").map(1)
    assert 0 < curve(2.0) < curve(8.0) < math.inf
    # d_in = 2: group privacy (2 eps, delta (1 + e^eps)); the Renyi form refuses it
    eps2, delta2 = measurement.map(2)
    assert eps2 >= 2 * eps and delta2 >= min(1.0, delta * (1 + math.exp(eps)))
    with pytest.raises(Exception, match="group privacy"):
        make_dp_sgd(trainer, 400, measure="renyi").map(2)


@pytest.mark.parametrize(
    ("x", "y", "fragment"),
    [
        (np.full((20, 2), np.nan), np.zeros(20, dtype=int), "missing values"),
        (np.zeros((20, 2)), np.full(20, 5), "class indices"),
        (np.zeros((4, 2)), np.zeros(4, dtype=int), "larger than the data"),
    ],
)
def test_bad_training_input_is_refused_before_training(x, y, fragment):
    from opendp_hybridad.dpsgd import DPSGD

    model = MLP([Dense(2, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=8, epochs=1, learning_rate=0.1, impute=None)  # NaN refused
    with pytest.raises(Exception, match=fragment):
        trainer.fit(x, y)


def test_missing_features_follow_the_declared_imputation():
    from opendp_hybridad.dpsgd import DPSGD

    model = MLP([Dense(2, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=np.array([1.0, 2.0]))
    x = np.array([[np.nan, 0.5], [3.0, np.nan], [-np.inf, np.nan]])
    for impute, expected in ((0.0, [[0.0, 0.5], [1.0, 0.0], [-1.0, 0.0]]), ("lower", [[-1.0, 0.5], [1.0, -2.0], [-1.0, -2.0]]),
                             ([0.25, 9.0], [[0.25, 0.5], [1.0, 2.0], [-1.0, 2.0]])):
        trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, impute=impute)
        clean, _ = trainer._check(x, np.zeros(3, dtype=int))
        np.testing.assert_array_equal(clean, expected)  # imputed, then clamped to the box
        seen = []
        original = model.gradient_sum
        model.gradient_sum = (lambda params, xb, yb, clip=None, out=None, seen=seen, original=original:
                              (seen.append(xb.copy()), original(params, xb, yb, clip, out))[1])
        try:
            trainer.fit(x, np.zeros(3, dtype=int), seed=4)
        finally:
            del model.gradient_sum
        rows = {tuple(r) for batch in seen for r in batch.tolist()}
        assert rows and rows <= {tuple(r) for r in expected}  # training saw the imputed, clamped rows only


@pytest.mark.parametrize("act", [Tanh(), Sigmoid(), Identity()], ids=lambda a: a.name)
@pytest.mark.parametrize(("loss", "out", "label"), [(SoftmaxCrossEntropy(), 2, 1), (Logistic(), 1, 1.0), (MeanSquaredError(), 1, 0.5)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_scalar_expansion_agrees_with_the_per_layer_kernels_and_its_certificate_bounds_them(act, loss, out, label):
    from opendp_hybridad.nn.model import scalar_expansion

    model = MLP([Dense(2, 2, 0.7, 0.3), Dense(2, out, 0.7, 0.3)], [act, Identity()], loss, input_bound=1.0, label_bound=1.0)
    f = scalar_expansion(model, label)
    rng = np.random.default_rng(2)
    params = [(rng.uniform(-0.7, 0.7, (layer.out_features, layer.in_features)), rng.uniform(-0.3, 0.3, layer.out_features))
              for layer in model.layers]
    x = rng.uniform(-1, 1, (3, 2))
    y = np.full(3, label) if not isinstance(loss, MeanSquaredError) else np.full((3, 1), label)
    grads = model.per_example_gradients(params, x, y)
    columns = {f"x{j}": x[:, j] for j in range(2)}
    for li, (W, b) in enumerate(params, start=1):
        for o in range(W.shape[0]):
            for i in range(W.shape[1]):
                columns[f"W{li}_{o}_{i}"] = np.full(3, W[o, i])
            columns[f"b{li}_{o}"] = np.full(3, b[o])
    symbolic = f.compile(backend="numpy").gradient(columns)
    names = f.names
    for li, (gW, gb) in enumerate(grads, start=1):
        for o in range(gW.shape[1]):
            for i in range(gW.shape[2]):
                np.testing.assert_allclose(symbolic[:, names.index(f"W{li}_{o}_{i}")], gW[:, o, i], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(symbolic[:, names.index(f"b{li}_{o}")], gb[:, o], rtol=1e-9, atol=1e-12)
    # the foundation's certificate over (inputs, weights) bounds the gradient w.r.t. all fields,
    # hence the per-example parameter gradient; the per-layer bound must hold too
    cert = f.lipschitz(time_budget=0.5)
    per_layer = model.certified_bound()
    norms = model.per_example_norms(params, x, y)
    assert np.all(norms <= cert.upper) and np.all(norms <= per_layer.upper)


def test_regression_labels_outside_the_declared_box_are_clamped_so_the_bound_holds():
    from opendp_hybridad.dpsgd import DPSGD

    model = MLP([Dense(2, 1, 1.0, 0.5, norm_ball=True)], [Identity()], MeanSquaredError(), input_bound=1.0, label_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=4, epochs=1, learning_rate=0.1, mode="bound")
    x, y = trainer._check(np.ones((8, 2)) * 5, np.full((8, 1), -100.0))
    assert np.all(np.abs(x) <= 1.0) and np.all(y == -1.0)
    params = [(np.array([[1.0, 1.0]]) / np.sqrt(2), np.array([0.5]))]
    assert model.per_example_norms(params, x, y).max() <= trainer.bound.upper


def test_progress_reports_epsilon_and_public_validation_only(capsys):
    from opendp_hybridad.accounting import dp_sgd_epsilon
    from opendp_hybridad.dpsgd import DPSGD

    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (300, 2))
    y = (x[:, 0] > 0).astype(int)
    model = MLP([Dense(2, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=50, epochs=2, learning_rate=0.5, noise="discrete-gaussian")
    _, history = trainer.fit(x[:200], y[:200], progress=True, validation=(x[200:], y[200:]), seed=1)
    last = history.steps[-1]
    assert last["epsilon_rdp"] == dp_sgd_epsilon(200, 50, 1.0, 2, 1e-5)["epsilon_rdp"]  # one RDP curve, read per line
    assert 0 <= last["validation_accuracy"] <= 1 and "validation_loss" in last
    assert "epsilon (RDP)" in capsys.readouterr().err
    assert all(set(r) <= {"step", "epsilon_rdp", "validation_loss", "validation_accuracy"} for r in history.steps)


# -- regressions from the third review ----------------------------------------------------------
def test_auto_mode_keeps_weights_in_the_certified_set_so_its_global_k_holds():
    from opendp_hybridad.dpsgd import DPSGD

    model = MLP([Dense(4, 4, 0.1, 0.1), Dense(4, 2, 0.1, 0.1)], [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=8, epochs=3, learning_rate=100.0, mode="auto", clip=1e6)
    assert not trainer.clipping_needed
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (40, 4)), rng.integers(0, 2, 40)
    seen = []
    original = model.gradient_sum

    def spy(params, xb, yb, clip=None, out=None):
        seen.append(float(model.per_example_norms(params, xb, yb).max()))
        return original(params, xb, yb, clip=clip, out=out)

    model.gradient_sum = spy
    trainer.fit(x, y, seed=0)
    assert max(seen) <= trainer.bound.upper


def test_shuffled_batches_use_each_example_at_most_once_per_epoch():
    from opendp_hybridad.dpsgd import DPSGD

    model = MLP([Dense(1, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=100.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=4, epochs=2, learning_rate=0.1, sampling="shuffle")
    x = np.arange(10, dtype=float)[:, None]
    batches = []
    original = model.gradient_sum

    def spy(params, xb, yb, clip=None, out=None):
        batches.append(xb[:, 0].tolist())
        return original(params, xb, yb, clip, out)

    model.gradient_sum = spy
    trainer.fit(x, np.zeros(10, dtype=int), seed=0)
    per_epoch = 10 // 4
    assert len(batches) == 2 * per_epoch == trainer.epsilon(10)["steps"]
    for e in range(2):
        used = [v for b in batches[e * per_epoch:(e + 1) * per_epoch] for v in b]
        assert len(used) == len(set(used))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Dense(2, 1, -1.0, 1.0),
        lambda: Dense(2, 1, 1.0, float("nan")),
        lambda: MLP([Dense(2, 1)], [Identity()], MeanSquaredError(), label_bound=-3.0),
        lambda: MLP([Dense(2, 3)], [Sigmoid()], Logistic()),
        lambda: TemperedSigmoid(1.0, float("nan"), 0.0),
    ],
)
def test_declarations_that_would_break_the_bound_are_refused(build):
    with pytest.raises(ValueError):
        build()


def test_the_measurement_states_the_table_samplers_delta():
    from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd

    model = MLP([Dense(2, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=10, epochs=1, learning_rate=0.1, noise="discrete-gaussian")
    _eps, delta = make_dp_sgd(trainer, 100).map(1)
    assert delta == trainer.epsilon(100)["delta"] > trainer.delta
    with pytest.raises(Exception, match="Renyi"):
        make_dp_sgd(trainer, 100, measure="renyi")


def test_softmax_regression_bound_is_attained_for_any_weights():
    # (p - e_y) [x; 1]^T has norm <= sqrt(2) ||[x; 1]||, reached as a logit dominates on a corner input
    model = MLP([Dense(4, 3, 1e3, 1e3, norm_ball=True)], [Identity()], SoftmaxCrossEntropy(), input_bound=0.5)
    bound = model.certified_bound()
    closed_form = math.sqrt(2) * math.sqrt(4 * 0.25 + 1)
    assert closed_form <= bound.upper <= closed_form * (1 + 1e-12)
    W = np.zeros((3, 4))
    W[0] = 1e3 * np.ones(4) / 2  # class 0 dominates on the all-positive corner, the label says class 1
    x = np.full((1, 4), 0.5)
    norm = model.per_example_norms([(W, np.zeros(3))], x, np.array([1]))[0]
    assert norm == pytest.approx(closed_form, rel=1e-9) and norm <= bound.upper


def test_per_step_bounds_are_rounded_up_and_reuse_few_noise_tables():
    from opendp_hybridad.dpsgd.sgd import _round_up_16_per_octave

    values = np.geomspace(0.01, 100, 2000)
    rounded = np.array([_round_up_16_per_octave(float(v)) for v in values])
    assert np.all(rounded >= values) and np.all(rounded <= values * (1 + 1 / 16))
    assert len(set(rounded.tolist())) <= 16 * 14


@pytest.mark.parametrize("excess", [0.0, 1e-16, 1e-13, 1e-6, 3.0])
def test_projection_lands_inside_the_certified_ball_even_at_its_edge(excess):
    rng = np.random.default_rng(5)
    layer = Dense(300, 200, 0.7, 0.2, norm_ball=True)
    for _ in range(20):
        W = rng.standard_normal((200, 300))
        W *= 0.7 * (1 + excess) / math.sqrt(math.fsum((W * W).ravel().tolist()))
        b = rng.uniform(-0.5, 0.5, 200)
        P, q = layer.project(W, b)
        assert math.sqrt(math.fsum((P * P).ravel().tolist())) <= 0.7  # exact-ish: fsum of the squares
        assert np.abs(q).max() <= 0.2
        assert np.linalg.norm(P) >= 0.7 * (1 - 1e-9) or excess == 0.0  # and it does not shrink needlessly
    box = Dense(3, 2, 0.5, 0.25)
    P, q = box.project(np.array([[0.6, -0.7, 0.1], [0.0, 0.5, -0.5]]), np.array([0.3, -0.1]))
    np.testing.assert_array_equal(P, [[0.5, -0.5, 0.1], [0.0, 0.5, -0.5]])
    np.testing.assert_array_equal(q, [0.25, -0.1])


@pytest.mark.parametrize("norm_ball", [True, False])
def test_the_compiled_update_gives_the_numpy_update_and_projection(norm_ball, monkeypatch):
    pytest.importorskip("numba")
    from opendp_hybridad.nn import layers as layers_module

    rng = np.random.default_rng(8)
    model = MLP([Dense(30, 20, 0.3, 0.1, norm_ball=norm_ball), Dense(20, 4, 0.3, 0.1, norm_ball=norm_ball)],
                [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    params = [(rng.normal(0, 0.005, (o, i)), rng.normal(0, 0.005, o)) for i, o in ((30, 20), (20, 4))]  # inside both sets
    for step_size in (1e-4, 0.5, 20.0):  # projection inactive, active on some arrays, active everywhere
        step = rng.normal(0, 1, model.num_parameters)
        compiled = model.apply_step(params, step, step_size)
        monkeypatch.setattr(layers_module, "_USE_COMPILED_UPDATE", False)
        plain = model.apply_step(params, step, step_size)
        monkeypatch.setattr(layers_module, "_USE_COMPILED_UPDATE", True)
        for (cW, cb), (pW, pb), layer in zip(compiled, plain, model.layers, strict=True):
            # the same update; a ball projection's factor may differ in the last bits (the sum of
            # squares is summed in another order), each a sound upper bound on the norm
            np.testing.assert_allclose(cW, pW, rtol=1e-13, atol=0)
            np.testing.assert_array_equal(cb, pb)
            assert np.abs(cb).max() <= layer.bias_bound
            if norm_ball:
                assert math.sqrt(math.fsum((cW * cW).ravel().tolist())) <= layer.weight_bound
            else:
                assert np.abs(cW).max() <= layer.weight_bound
        unprojected = model.apply_step(params, step, step_size, project=False)
        np.testing.assert_array_equal(unprojected[0][0], params[0][0] - step_size * step[:600].reshape(20, 30))
        if step_size == 1e-4:  # nothing projected: bit for bit
            np.testing.assert_array_equal(compiled[0][0], unprojected[0][0])


def test_the_compiled_update_handles_weights_in_any_memory_layout():
    rng = np.random.default_rng(9)
    layer = Dense(30, 20, 1.0, 0.5, norm_ball=True)
    W = np.asfortranarray(rng.normal(0, 0.01, (20, 30)))  # e.g. the transpose of another framework's array
    b = rng.normal(0, 0.01, 40)[::2]  # a strided view
    step = rng.normal(0, 1, 620)
    for scale in (1e-4, 10.0):
        new_W, new_b = layer.apply_step(W, b, step[:600], step[600:], scale, project=True)
        expected_W, expected_b = layer.project(W - scale * step[:600].reshape(20, 30), b - scale * step[600:])
        np.testing.assert_allclose(new_W, expected_W, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(new_b, expected_b)
        assert math.sqrt(math.fsum((new_W * new_W).ravel().tolist())) <= 1.0


def test_a_step_refuses_a_batch_larger_than_its_noise_covers():
    from opendp_hybridad.accounting import AccountingError
    from opendp_hybridad.dpsgd import DPSGD

    model = MLP([Dense(2, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=4, epochs=1, learning_rate=0.1)
    params = model.init(np.random.default_rng(0))
    x, y = np.zeros((5, 2)), np.zeros(5, dtype=int)
    with pytest.raises(AccountingError, match="larger than the noise covers"):
        trainer.step(params, x, y, trainer.noise_function(6))
    assert len(trainer.step(params, x, y, trainer.noise_function(6, max_terms=5))) == 1
