"""Conv1d / Conv2d against independent references: brute-force loops, central finite differences,
exact rational arithmetic (fractions) and 50-digit mpmath, and the certified bounds against
adversarial search (hypothesis) and other summation orders (reverse, pairwise)."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from helpers.conv_reference import (
    as_fractions,
    assert_rows_within_e,
    brute_conv,
    brute_grads,
    exact_cnn_gradient,
    l2_diff,
    summation_order,
)
from helpers.layer_checks import box_inputs, check_kernels, extreme_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.sequential import Sequential

mpmath.mp.dps = 50


CASES = [
    (Conv1d(2, 3, 3), (2, 7)),
    (Conv1d(2, 3, 3, stride=2, padding=1), (2, 8)),
    (Conv1d(1, 2, 4, stride=3, padding=2), (1, 9)),
    (Conv2d(2, 3, 3, padding=1), (2, 4, 5)),
    (Conv2d(1, 2, (3, 2), stride=(2, 1), padding=(1, 0)), (1, 5, 4)),
    (Conv2d(3, 8, 3, stride=2, padding=1), (3, 4, 4)),  # P (out + n) < out n: the ghost norm
]


def _params(layer, rng, scale: float = 1.0):
    W, b = layer.witness_params(rng)
    return W * rng.random(W.shape) * scale, b * rng.random(b.shape)


# -- kernels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_forward_matches_brute_force(layer, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, *shape))
    W, b = _params(layer, rng)
    z, _ = layer.forward((W, b), x)
    assert z.shape == (3, *layer.output_shape(shape))
    ref = brute_conv(x, W, b, layer.stride, layer.padding).astype(float)
    np.testing.assert_allclose(z, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_gradients_exact_against_fractions(layer, shape):
    """Per-example weight, bias and input gradients of ``<z, delta>`` against loops in exact rationals."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, *shape))
    W, b = _params(layer, rng)
    z, cache = layer.forward((W, b), x)
    delta = rng.standard_normal(z.shape)
    gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
    gx = layer.backward((W, b), x, cache, delta)
    eW, eb, ex = brute_grads(as_fractions(x), as_fractions(delta), as_fractions(W), layer.stride, layer.padding)
    for computed, exact in ((gW, eW), (gb, eb), (gx, ex)):
        assert computed.shape == exact.shape
        np.testing.assert_allclose(computed, exact.astype(float), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("layer", "shape"), CASES[:2] + CASES[3:5])
def test_gradients_against_central_differences(layer, shape):
    """A nonlinear per-example loss ``sum tanh(z) r``: per-example parameter and input gradients by central differences."""
    rng = np.random.default_rng(3)
    B = 2
    x = rng.standard_normal((B, *shape))
    W, b = _params(layer, rng)
    z, cache = layer.forward((W, b), x)
    r = rng.standard_normal(z.shape)

    def losses(W_, b_, x_):
        return (np.tanh(layer.forward((W_, b_), x_)[0]) * r).reshape(B, -1).sum(axis=1)

    delta = (1 - np.tanh(z) ** 2) * r
    gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
    gx = layer.backward((W, b), x, cache, delta)
    h = 1e-6
    for idx in np.ndindex(W.shape):
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += h
        Wm[idx] -= h
        fd = (losses(Wp, b, x) - losses(Wm, b, x)) / (2 * h)
        np.testing.assert_allclose(gW[(slice(None), *idx)], fd, rtol=1e-6, atol=1e-8)
    for o in range(b.size):
        bp, bm = b.copy(), b.copy()
        bp[o] += h
        bm[o] -= h
        np.testing.assert_allclose(gb[:, o], (losses(W, bp, x) - losses(W, bm, x)) / (2 * h), rtol=1e-6, atol=1e-8)
    for idx in np.ndindex(x.shape[1:]):
        xp, xm = x.copy(), x.copy()
        xp[(slice(None), *idx)] += h
        xm[(slice(None), *idx)] -= h
        np.testing.assert_allclose(gx[(slice(None), *idx)], (losses(W, b, xp) - losses(W, b, xm)) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_squared_norms_ghost_and_materialised(layer, shape):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, *shape))
    W, b = _params(layer, rng)
    z, cache = layer.forward((W, b), x)
    delta = rng.standard_normal(z.shape)
    gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
    expected = (gW.reshape(5, -1) ** 2).sum(axis=1) + (gb ** 2).sum(axis=1)
    np.testing.assert_allclose(layer.per_example_squared_norms((W, b), x, cache, delta), expected, rtol=1e-12)
    # the other path too, whatever the shapes pick
    P, n, m = cache.shape[1], cache.shape[2], layer.out_channels
    D = delta.reshape(5, m, -1)
    ghost = np.einsum("bop,boq,bpi,bqi->b", D, D, cache, cache) + (D.sum(axis=2) ** 2).sum(axis=1)
    np.testing.assert_allclose(ghost, expected, rtol=1e-12)
    assert P * n >= 1


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_accumulate_is_the_explicit_sum(layer, shape):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, *shape))
    W, b = _params(layer, rng)
    z, cache = layer.forward((W, b), x)
    delta = rng.standard_normal(z.shape)
    gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
    out = (np.full(W.shape, np.nan), np.full(b.shape, np.nan))
    layer.accumulate((W, b), x[:4], cache[:4], delta[:4], out, first=True)
    layer.accumulate((W, b), x[4:], cache[4:], delta[4:], out, first=False)
    np.testing.assert_allclose(out[0], gW.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[1], gb.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_declarations_refused():
    with pytest.raises(DeclarationError, match="conv1d: only dilation 1"):
        Conv1d(1, 1, 3, dilation=2)
    with pytest.raises(DeclarationError, match="conv2d: only groups=1"):
        Conv2d(2, 2, 3, groups=2)
    with pytest.raises(DeclarationError, match="conv2d: stride must be at least 1"):
        Conv2d(1, 1, 3, stride=0)
    with pytest.raises(DeclarationError, match="weight_bound"):
        Conv1d(1, 1, 3, weight_bound=math.inf)
    with pytest.raises(DeclarationError, match="conv1d"):
        Conv1d(2, 1, 3).output_shape((3, 10))
    with pytest.raises(DeclarationError, match="larger than the padded input"):
        Conv1d(1, 1, 5).output_shape((1, 3))


def test_projection_onto_the_declared_set():
    rng = np.random.default_rng(6)
    box = Conv2d(2, 3, 3, weight_bound=0.5, bias_bound=0.25)
    W, b = box.project_params((rng.standard_normal((3, 2, 3, 3)) * 4, rng.standard_normal(3) * 4))
    assert np.abs(W).max() <= 0.5 and np.abs(b).max() <= 0.25
    ball = Conv1d(2, 3, 3, weight_bound=0.5, norm_ball=True)
    W, b = ball.update(ball.init(rng), rng.standard_normal(21) * 10, 1.0, True)
    assert sum(Fraction(float(v)) ** 2 for v in W.flat) <= Fraction(1, 4)


# -- certified bounds --------------------------------------------------------------------------------
def small_cnn(two_d: bool, weight_bound: float = 0.5, norm_ball: bool = False) -> Sequential:
    if two_d:
        parts = [Conv2d(1, 2, 3, padding=1, weight_bound=weight_bound, bias_bound=0.25, norm_ball=norm_ball), Tanh(),
                 AvgPool2d(2), Flatten(), Dense(8, 3, weight_bound, 0.25, norm_ball)]
        shape = (1, 4, 4)
    else:
        parts = [Conv1d(1, 2, 3, padding=1, weight_bound=weight_bound, bias_bound=0.25, norm_ball=norm_ball), Tanh(),
                 AvgPool1d(2), Flatten(), Dense(6, 3, weight_bound, 0.25, norm_ball)]
        shape = (1, 6)
    return Sequential(parts, SoftmaxCrossEntropy(), input_bound=1.0, input_shape=shape)


def _draw_params(model: Sequential, data, norm_ball: bool):
    """Weights in the declared set, drawn by hypothesis (box: entries in [-w, w]; ball: scaled onto or inside it)."""
    params = []
    for part, shapes in zip(model.parts, model._param_shapes, strict=True):
        arrays = []
        for i, s in enumerate(shapes):
            bound = part.weight_bound if i == 0 else part.bias_bound
            vals = np.array(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=math.prod(s), max_size=math.prod(s))))
            arrays.append(vals.reshape(s) * bound)
        if arrays and norm_ball:
            arrays[0] = part.project_params(tuple(arrays))[0] if part.weight_bound else arrays[0]
        params.append(tuple(arrays))
    return params


@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize("norm_ball", [False, True])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_certified_K_covers_adversarial_gradients(two_d, norm_ball, data):
    model = small_cnn(two_d, norm_ball=norm_ball)
    K = model.certified_bound().upper
    params = _draw_params(model, data, norm_ball)
    size = model.input_features
    x = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]) | st.floats(-1.0, 1.0), min_size=size, max_size=size)))
    y = np.array([data.draw(st.integers(0, 2))])
    norm = model.per_example_norms(params, x.reshape(1, *model.input_shape), y)[0]
    assert norm <= K
    # with these weights (public), the per-step bound covers it too and is no larger
    Kp = model.certified_bound(params).upper
    assert norm <= Kp <= K


@pytest.mark.parametrize("two_d", [False, True])
def test_certified_K_against_a_search(two_d):
    """The worst gradient norm over corner weights, corner inputs and every label stays below K."""
    model = small_cnn(two_d)
    bound = model.certified_bound()
    found = model.witness(bound, samples=512, seed=7, labels=np.arange(3)).witness_value
    assert 0 < found <= bound.upper


# -- the forward error ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["numpy", "reverse", "pairwise"])
@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_layer_errors_cover_exact_rationals(order, layer, shape):
    """Exact input and delta (e = 0 in): the computed output, input delta and row within the stated errors.

    Weights whose products cancel (large positive and negative terms) make the rounding count.
    """
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, *shape)) * np.where(rng.random((2, *shape)) < 0.5, 1e3, 1e-3)
    W, b = _params(layer, rng, scale=3.0)
    W = W * np.where(rng.random(W.shape) < 0.5, 1e2, 1.0)
    norms = layer.weight_norms((W, b))
    inp = ActivationBound(shape, max(np.sqrt((x.reshape(2, -1) ** 2).sum(axis=1))) * 1.0001, np.abs(x).max(), 0.0)
    with summation_order(order):
        z, cache = layer.forward((W, b), x)
        delta = rng.standard_normal(z.shape)
        gx = layer.backward((W, b), x, cache, delta)
        gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
    out = layer.forward_bound(inp, norms)
    dnorm = max(np.sqrt((delta.reshape(2, -1) ** 2).sum(axis=1))) * 1.0001
    back = layer.backward_bound(inp, DeltaBound(z.shape[1:], dnorm, 0.0), norms)
    grad = layer.gradient_bound(inp, DeltaBound(z.shape[1:], dnorm, 0.0), norms)
    Wf, bf, xf, df = as_fractions(W), as_fractions(b), as_fractions(x), as_fractions(delta)
    ez = brute_conv(xf, Wf, bf, layer.stride, layer.padding)
    eW, eb, ex = brute_grads(xf, df, Wf, layer.stride, layer.padding)
    for i in range(2):
        assert l2_diff(z[i], ez[i]) <= out.error
        assert l2_diff(gx[i], ex[i]) <= back.error
        row = l2_diff(np.concatenate([gW[i].ravel(), gb[i]]), np.concatenate([eW[i].ravel(), eb[i]]))
        assert row <= grad.error
        assert np.abs(z[i]).max() <= out.computed_unit


@pytest.mark.parametrize("order", ["numpy", "reverse", "pairwise"])
def test_model_forward_error_covers_mpmath_rows(order):
    """conv -> tanh -> avgpool -> flatten -> dense, softmax: every computed row within e of the 50-digit one,
    in three summation orders; weights whose first-layer products cancel."""
    model = small_cnn(False, weight_bound=40.0)
    rng = np.random.default_rng(9)
    params = [tuple(model.parts[0].witness_params(rng)), (), (), (), tuple(model.parts[4].witness_params(rng))]
    W1 = params[0][0] * np.array([1.0, -0.999999, 0.5])  # large, nearly cancelling taps
    params[0] = (W1, params[0][1])
    e = model.certified_bound(params).rounding
    e_global = model.certified_bound().rounding
    assert 0 < e <= e_global < math.inf
    x = rng.uniform(-1, 1, (4, 1, 6))
    y = rng.integers(0, 3, 4)
    assert_rows_within_e(model, params, x, y, e, order)


def test_gradient_sum_clipped_is_the_explicit_sum():
    model = small_cnn(True)
    rng = np.random.default_rng(10)
    params = model.init(rng)
    x = rng.uniform(-1, 1, (37, 1, 4, 4))
    y = rng.integers(0, 3, 37)
    grads = model.per_example_gradients(params, x, y)
    rows = np.concatenate([g.reshape(37, -1) for part in grads for g in part], axis=1)
    norms = np.sqrt((rows ** 2).sum(axis=1))
    np.testing.assert_allclose(model.per_example_norms(params, x, y), norms, rtol=1e-12)
    clip = float(np.median(norms))
    expected = (rows * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)
    got = np.concatenate([v.ravel() for part in model.gradient_sum(params, x, y, clip=clip) for v in part])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)
    unclipped = np.concatenate([v.ravel() for part in model.gradient_sum(params, x, y) for v in part])
    np.testing.assert_allclose(unclipped, rows.sum(axis=0), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("two_d", [False, True])
def test_shared_kernel_checks(two_d):
    """The shared checks (tests/helpers/layer_checks.py): finite differences of the loss over every parameter, the
    accumulate path one example at a time, norms, clipped and unclipped sums."""
    model = small_cnn(two_d)
    rng = np.random.default_rng(11)
    params = extreme_params(model, rng, shrink=0.7)
    x = box_inputs(model, rng, 9)
    check_kernels(model, params, x, rng.integers(0, 3, 9))


@pytest.mark.parametrize("order", ["numpy", "reverse", "pairwise"])
def test_clipped_rows_within_row_error(order):
    """A clipped computed row (scaled deltas, then the sum over positions) within row_error(C) of the exact projection."""
    model = small_cnn(False, weight_bound=40.0)
    rng = np.random.default_rng(12)
    params = [tuple(model.parts[0].witness_params(rng)), (), (), (), tuple(model.parts[4].witness_params(rng))]
    params[0] = (params[0][0] * np.array([1.0, -0.999999, 0.5]), params[0][1])
    bound = model.certified_bound(params)
    for i in range(3):
        x = rng.uniform(-1, 1, (1, 1, 6))
        y = rng.integers(0, 3, 1)
        exact = exact_cnn_gradient(model, params, x[0], int(y[0]))
        norm = mpmath.sqrt(mpmath.fsum(v * v for v in exact))
        clip = float(norm) * (0.5 if i < 2 else 2.0)  # clipped twice, then not
        scale = min(mpmath.mpf(1), mpmath.mpf(clip) / norm)
        with summation_order(order):
            row = model.gradient_sum(params, x, y, clip=clip)
        flat_row = np.concatenate([v.ravel() for part in row for v in part])
        gap = math.sqrt(sum((mpmath.mpf(float(c)) - scale * v) ** 2 for c, v in zip(flat_row, exact, strict=True)))
        assert gap <= bound.row_error(clip)


@pytest.mark.parametrize("order", ["numpy", "reverse", "pairwise"])
@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_squared_norm_error_covers_rationals(order, layer, shape):
    """The computed squared norm against the exact squared norm of the computed row, with cancelling inputs."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, *shape)) * np.where(rng.random((3, *shape)) < 0.5, 1e4, 1e-4)
    W, b = _params(layer, rng)
    norms = layer.weight_norms((W, b))
    with summation_order(order):
        z, cache = layer.forward((W, b), x)
        delta = rng.standard_normal(z.shape) * np.where(rng.random(z.shape) < 0.5, 1e3, 1.0)
        gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
        sq = layer.per_example_squared_norms((W, b), x, cache, delta)
    inp = ActivationBound(shape, float(np.sqrt((x.reshape(3, -1) ** 2).sum(axis=1)).max()) * 1.0001, float(np.abs(x).max()), 0.0)
    dnorm = float(np.sqrt((delta.reshape(3, -1) ** 2).sum(axis=1)).max()) * 1.0001
    grad = layer.gradient_bound(inp, DeltaBound(z.shape[1:], dnorm, 0.0), norms)
    for i in range(3):
        row_sq = sum(Fraction(float(v)) ** 2 for v in np.concatenate([gW[i].ravel(), gb[i]]))
        limit = Fraction(grad.norm_relative_error) * row_sq + Fraction(grad.norm_absolute_error)
        assert abs(Fraction(float(sq[i])) - row_sq) <= limit
