"""Sequential (nn/sequential.py): the same numbers and gradients as the equivalent MLP, the interface DP-SGD reads,
blocks of rows, parameter updates, and declarations that are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.labels import labels_for
from helpers.layer_checks import box_inputs, check_kernels, flat, per_example_rows

from opendp_hybridad.errors import DeclarationError
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
from opendp_hybridad.nn.layers import Activation
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.protocol import Layer
from opendp_hybridad.nn.sequential import Sequential

LOSSES = [(SoftmaxCrossEntropy(), 3), (MeanSquaredError(), 2), (Logistic(), 1)]
ACTIVATIONS = [Tanh(), Sigmoid(), TemperedSigmoid(3.0, 0.5, 1.2), ReLU(), Identity()]


def _pair(act, loss, out, ball=False):
    layers = [Dense(4, 5, 0.8, 0.5, norm_ball=ball), Dense(5, 3, 0.8, 0.5, norm_ball=ball), Dense(3, out, 0.8, 0.5, norm_ball=ball)]
    mlp = MLP(layers, [act, act, Identity()], loss, input_bound=np.array([1.5, 1.0, 0.5, 1.5]), label_bound=1.0)
    seq = Sequential([layers[0], act, layers[1], act, layers[2], Identity()], loss, input_bound=np.array([1.5, 1.0, 0.5, 1.5]),
                     label_bound=1.0)
    return mlp, seq


def _numbers(bound):
    return bound.upper, bound.rounding, bound.norm_relative_error, bound.norm_absolute_error


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.name)
@pytest.mark.parametrize(("loss", "out"), LOSSES, ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("ball", [False, True])
def test_a_sequential_of_dense_and_activations_is_the_mlp(act, loss, out, ball):
    """Same K, e and norm errors (global, with weights, per step), same gradients, norms and sums, bit for bit."""
    mlp, seq = _pair(act, loss, out, ball)
    rng = np.random.default_rng(0)
    mp = [(W, rng.uniform(-0.5, 0.5, b.shape)) for W, b in mlp.init(rng)]
    sp = [mp[0], (), mp[1], (), mp[2], ()]
    assert _numbers(mlp.certified_bound()) == _numbers(seq.certified_bound())
    assert _numbers(mlp.certified_bound(mp)) == _numbers(seq.certified_bound(sp))
    assert _numbers(mlp.rounding_bound(mp)) == _numbers(seq.rounding_bound(sp))
    assert mlp.certified_bound().per_layer == seq.certified_bound().per_layer[::2]
    x, y = box_inputs(seq, rng, 40), labels_for(loss, out, rng, 40)
    np.testing.assert_array_equal(mlp.per_example_norms(mp, x, y), seq.per_example_norms(sp, x, y))
    for clip in (None, 0.3):
        np.testing.assert_array_equal(flat(mlp.gradient_sum(mp, x, y, clip=clip)), flat(seq.gradient_sum(sp, x, y, clip=clip)))
    mlp_rows = np.concatenate([g.reshape(40, -1) for pair in mlp.per_example_gradients(mp, x, y) for g in pair], axis=1)
    np.testing.assert_array_equal(mlp_rows, per_example_rows(seq, sp, x, y))
    np.testing.assert_array_equal(mlp.loss_value(mp, x, y), seq.loss_value(sp, x, y))
    assert seq.num_parameters == mlp.num_parameters
    assert (seq.input_features, seq.output_features) == (mlp.input_features, mlp.output_features) == (4, out)
    assert (seq.input_shape, seq.output_shape) == (mlp.input_shape, mlp.output_shape) == ((4,), (out,))
    # and MLP's own conversion gives the same model
    assert _numbers(mlp.to_sequential().certified_bound(sp)) == _numbers(seq.certified_bound(sp))


def test_the_mlp_bound_is_not_larger_than_the_former_recursion():
    """The former recursion (K with the products' rounding factors), recomputed here: the new K and e never exceed it."""
    from opendp_hybridad.analysis.rounding import add_up, gamma, sqrt_up, up

    for act in (Tanh(), Sigmoid(), Identity()):
        mlp, _ = _pair(act, SoftmaxCrossEntropy(), 3)
        R = [layer.weight_norms(None) for layer in mlp.layers]
        a, z = [mlp._input_norm], []
        for layer, (row, bias, op, bias_norm), ph in zip(mlp.layers, R, mlp.activations, strict=True):
            rho = add_up(1.0, gamma(layer.in_features + 1))
            r = up(add_up(up(row * a[-1]), bias) * rho)
            z.append(r)
            zn = up(add_up(up(op * a[-1]), bias_norm) * rho)
            root = sqrt_up(float(layer.out_features))
            a.append(min(up(root * ph.max_abs(r)), add_up(up(root * ph.abs_at_zero()), up(ph.max_derivative(r) * zn))))
        d = [sqrt_up(2.0)]
        for i in range(2, 0, -1):
            rho = add_up(1.0, gamma(mlp.layers[i].out_features + 1))
            d.append(up(up(up(R[i][2] * d[-1]) * mlp.activations[i - 1].max_derivative(z[i - 1])) * rho))
        d.reverse()
        total = 0.0
        for dl, al in zip(d, a[:-1], strict=True):
            total = add_up(total, up(up(dl * dl) * add_up(up(al * al), 1.0)))
        assert mlp.certified_bound().upper <= sqrt_up(total)


def test_large_batches_go_through_in_blocks():
    rng = np.random.default_rng(4)
    seq = Sequential([Dense(4, 2048, 1.0, 1.0), Tanh(), Dense(2048, 3, 1.0, 1.0)], SoftmaxCrossEntropy(), input_bound=1.0)
    params = seq.init(rng)
    x, y = rng.uniform(-1, 1, (40, 4)), rng.integers(0, 3, 40)
    rows = per_example_rows(seq, params, x, y)
    norms = np.sqrt((rows**2).sum(axis=1))
    for clip in (None, float(np.median(norms))):
        factor = np.ones(40) if clip is None else np.minimum(1, clip / norms)
        out = np.full(seq.num_parameters, np.nan)
        seq.gradient_sum(params, x, y, clip=clip, out=out)
        np.testing.assert_allclose(out, (rows * factor[:, None]).sum(axis=0), rtol=1e-10, atol=1e-12)
    out = np.full(seq.num_parameters, np.nan)
    seq.gradient_sum(params, x[:0], y[:0], out=out)
    assert not out.any()


def test_a_leading_parameter_free_part_gets_no_backward_pass():
    """Flatten first: the deltas stop at the first part with parameters (none is computed for the input)."""
    seq = Sequential([Flatten(), Dense(6, 2)], SoftmaxCrossEntropy(), input_shape=(2, 3))
    rng = np.random.default_rng(5)
    params = seq.init(rng)
    x, y = rng.uniform(-1, 1, (3, 2, 3)), rng.integers(0, 2, 3)
    _, deltas = seq.deltas(params, x, y)
    assert deltas[0] is None and deltas[1].shape == (3, 2)
    check_kernels(seq, params, x, y)


def test_updates_projection_and_init_follow_the_flat_layout():
    seq = Sequential([Dense(3, 4, 0.5, 0.25), Tanh(), Dense(4, 2, 0.5, 0.25)], SoftmaxCrossEntropy())
    rng = np.random.default_rng(6)
    params = seq.init(rng)
    assert [len(p) for p in params] == [2, 0, 2] and flat(params).size == seq.num_parameters == 26
    step = rng.standard_normal(26)
    moved = seq.apply_step(params, step, 0.01, project=False)
    np.testing.assert_array_equal(flat(moved), flat(params) - 0.01 * step)
    projected = seq.apply_step(params, step * 1e3, 1.0)
    assert all(np.abs(W).max() <= 0.5 and np.abs(b).max() <= 0.25 for W, b in (projected[0], projected[2]))
    np.testing.assert_array_equal(flat(seq.project(projected)), flat(projected))


def test_witness_is_below_k_and_the_interface_dp_sgd_reads_is_there():
    seq = Sequential([Flatten(), Dense(4, 3, 0.5, 0.5), Sigmoid(), Dense(3, 1, 0.5, 0.5)], Logistic(), input_shape=(2, 2),
                     input_bound=0.75, label_bound=2.0)
    bound = seq.witness(seq.certified_bound(), samples=256)
    assert 0 < bound.witness_value <= bound.upper
    assert seq.layers[1].in_features == 4 and seq.output_features == 1 and seq.input_features == 4
    assert [a.name for a in seq.activations] == ["sigmoid"] and seq.input_bound.shape == (2, 2)
    assert math.isfinite(bound.rounding) and bound.row_error(1.0) > bound.rounding
    text = seq.closed_form()
    assert "vec(a_0)" in text and "sigmoid(a_2)" in text and seq.loss.closed_form in text


class _Unregistered(Layer):
    def output_shape(self, input_shape):
        return input_shape


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Sequential([], SoftmaxCrossEntropy()), "at least one part"),
        (lambda: Sequential([Flatten()], SoftmaxCrossEntropy(), input_shape=(3,)), "parameters"),
        (lambda: Sequential([Dense(2, 3)], Logistic()), "one output"),
        (lambda: Sequential([Dense(2, 3)], SoftmaxCrossEntropy(), input_bound=-1.0), "input_bound"),
        (lambda: Sequential([Dense(2, 3)], SoftmaxCrossEntropy(), input_bound=[1.0, 2.0, 3.0]), "input_bound"),
        (lambda: Sequential([Dense(2, 3)], MeanSquaredError(), label_bound=math.inf), "label_bound"),
        (lambda: Sequential([Flatten(), Dense(2, 3)], SoftmaxCrossEntropy()), "input_shape"),
        (lambda: Sequential([Dense(2, 3), _Unregistered()], SoftmaxCrossEntropy()), "not a registered"),
        (lambda: Sequential([Dense(2, 3), "tanh"], SoftmaxCrossEntropy()), "not a layer"),
        (lambda: Sequential([Dense(2, 3)], "mse"), "loss"),
    ],
)
def test_declarations_that_would_break_the_bound_are_refused(build, fragment):
    with pytest.raises(DeclarationError, match=fragment) as info:
        build()
    assert "\n" not in str(info.value)


def test_a_loss_states_its_label_kind_and_closed_form():
    assert [loss.label_kind for loss, _ in LOSSES] == ["class", "real", "binary"]
    assert all("dL/dz" in loss.closed_form for loss, _ in LOSSES)
    assert isinstance(Tanh(), Activation)


def test_clamp_inputs_maps_nan_and_overflowing_rows_into_the_box_and_ball():
    """Audit (attack_nn_bounds.py): NaN passed through clamp_inputs, and a row whose squares overflow was scaled by
    down(0) = -TINY, landing at 4.9e-124 against a ball of 1e-150. Checked in exact rationals."""
    from fractions import Fraction

    from opendp_hybridad.nn import Dense, SoftmaxCrossEntropy

    model = Sequential([Dense(3, 2, 1.0, 1.0)], SoftmaxCrossEntropy(), input_bound=1e200, input_norm_bound=1e-150)
    x = np.array([[1e200, -1e200, 1e200], [np.nan, 1.0, np.inf], [0.0, 0.0, 0.0]])
    out = model.clamp_inputs(x)
    assert np.isfinite(out).all()
    for row in out:
        assert sum(Fraction(float(v)) ** 2 for v in row) <= Fraction(1e-150) ** 2


def test_the_declared_input_box_cannot_be_edited_in_place():
    """Audit (attack_dpsgd_trainer.py): after make_dp_sgd, `model.input_bound[...] = 100` let per-example gradients
    reach 2.9e4 against the K of 6.9 the noise was built for. The box is now a read-only array (MLP's too)."""
    from opendp_hybridad.nn import MLP, Dense, Identity, MeanSquaredError

    seq = Sequential([Dense(2, 1, 1.0, 1.0)], MeanSquaredError(), input_bound=1.0)
    mlp = MLP([Dense(2, 1, 1.0, 1.0)], [Identity()], MeanSquaredError(), input_bound=1.0)
    for model in (seq, mlp):
        with pytest.raises(ValueError, match="read-only"):
            model.input_bound[...] = 100.0


@pytest.mark.parametrize("act", [Tanh(), ReLU()], ids=lambda a: a.name)
@pytest.mark.parametrize("ball", [False, True])
def test_the_cached_step_bound_covers_the_exact_step_bound_and_stays_close(act, ball):
    # per-step K reads step_bound: the bound at norms rounded up to 64 slots per octave, cached by those norms
    from opendp_hybridad.nn.sequential import STEP_NORM_SLOTS

    mlp, seq = _pair(act, SoftmaxCrossEntropy(), 3, ball)
    rng = np.random.default_rng(1)
    for _ in range(20):
        params = mlp.init(rng)
        params = [(W * rng.uniform(0.2, 1.0), b * rng.uniform(0.2, 1.0)) for W, b in params]
        exact, cached = mlp.certified_bound(params), mlp.step_bound(params)
        assert _numbers(cached) == _numbers(seq.step_bound(mlp._seq_params(params)))  # MLP reads Sequential's
        assert cached.upper >= exact.upper and cached.rounding >= exact.rounding
        assert cached.norm_relative_error >= exact.norm_relative_error
        assert cached.norm_absolute_error >= exact.norm_absolute_error
        # at most one slot per norm: three dense layers, each K factor at most 1 + 1/64 per norm it reads
        assert cached.upper <= exact.upper * (1 + 1 / STEP_NORM_SLOTS) ** 12
        # the same weights scaled by less than a slot land in the cache or the next slot, never below the exact bound
        nudged = [(W * (1 - 2.0**-20), b) for W, b in params]
        assert mlp.step_bound(nudged).upper >= mlp.certified_bound(nudged).upper


def test_the_declared_boxes_cannot_be_rebound():
    # adversarial review: step_bound's cache is keyed by weight norms; after `model.label_bound = 100` it kept the
    # old K while the trainer clamped labels to the new bound. Every box a bound is over is read-only now.
    mlp, seq = _pair(Tanh(), MeanSquaredError(), 2)
    for model, name in [(seq, "label_bound"), (seq, "input_bound"), (seq, "input_norm_bound"), (mlp, "label_bound"),
                        (mlp, "input_bound")]:
        with pytest.raises(AttributeError):
            setattr(model, name, 100.0)
    with pytest.raises(ValueError):
        seq.input_bound[0] = 100.0  # and the array is read-only in place
    assert seq.label_bound == mlp.label_bound == 1.0
