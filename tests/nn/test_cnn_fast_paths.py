"""The CNN path's fast kernels against the plain ones they replace.

* conv: ``clipped_rows`` (squared norms read off the rows computed once) against
  ``per_example_squared_norms`` and ``per_example_gradients``; ``accumulate_rows`` against
  the explicit sum of scaled rows; the 2-d stride-1 backward (contiguous adds) bit for bit
  against :func:`col2im`, in both offset orders and with a summation order other than BLAS's;
* average pooling: strided adds against loops in float, the backward's zeros on a dropped remainder;
* Sequential: the clipped sum through kept rows against the scaled-delta path (``_block_deltas``
  then ``accumulate``), and BLAS's thread count restored after ``gradient_sum``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from opendp_hybridad.nn import Flatten, Sequential, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts import conv as conv_module
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d, col2im
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d

CONVS = [
    (Conv1d(2, 3, 3, stride=2, padding=1), (2, 8)),
    (Conv2d(2, 3, 3, padding=1), (2, 4, 5)),
    (Conv2d(3, 4, (2, 3), padding=(2, 1)), (3, 6, 5)),  # stride 1, uneven kernel and padding: the contiguous backward
    (Conv2d(1, 2, (3, 2), stride=(2, 1), padding=(1, 0)), (1, 5, 4)),  # stride 2: col2im
    (Conv2d(3, 8, 3, stride=2, padding=1), (3, 4, 4)),  # P (out + n) < out n: per_example_squared_norms is the ghost norm
]


def _setup(layer, shape, B, seed):
    rng = np.random.default_rng(seed)
    W, b = layer.witness_params(rng)
    W, b = W * rng.random(W.shape), b * rng.random(b.shape)
    x = rng.standard_normal((B, *shape))
    z, cache = layer.forward((W, b), x)
    delta = rng.standard_normal(z.shape)
    return rng, (W, b), x, cache, delta


@pytest.mark.parametrize(("layer", "shape"), CONVS)
def test_clipped_rows_are_the_rows_and_their_norms(layer, shape):
    _, params, x, cache, delta = _setup(layer, shape, 6, 1)
    sq, rows = layer.clipped_rows(params, x, cache, delta)
    gW, gb = layer.per_example_gradients(params, x, cache, delta)
    np.testing.assert_array_equal(rows.W.reshape(gW.shape), gW)
    np.testing.assert_array_equal(rows.b, gb)
    np.testing.assert_allclose(sq, layer.per_example_squared_norms(params, x, cache, delta), rtol=1e-12)
    expected = (gW.reshape(6, -1) ** 2).sum(axis=1) + (gb ** 2).sum(axis=1)
    np.testing.assert_allclose(sq, expected, rtol=1e-12)


@pytest.mark.parametrize(("layer", "shape"), CONVS)
def test_accumulate_rows_is_the_scaled_sum(layer, shape):
    rng, params, x, cache, delta = _setup(layer, shape, 7, 2)
    W, b = params
    gW, gb = layer.per_example_gradients(params, x, cache, delta)
    scale = np.minimum(1.0, rng.uniform(0.2, 1.5, 7))
    out = (np.full(W.shape, np.nan), np.full(b.shape, np.nan))
    _, first = layer.clipped_rows(params, x[:4], cache[:4], delta[:4])
    _, second = layer.clipped_rows(params, x[4:], cache[4:], delta[4:])
    layer.accumulate_rows(first, scale[:4], out, first=True)
    layer.accumulate_rows(second, scale[4:], out, first=False)
    np.testing.assert_allclose(out[0], np.einsum("b,b...->...", scale, gW), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out[1], scale @ gb, rtol=1e-12, atol=1e-13)
    layer.accumulate_rows(first, None, out, first=True)  # unscaled: the plain sum
    np.testing.assert_allclose(out[0], gW[:4].sum(axis=0), rtol=1e-12, atol=1e-13)
    # the scaled rows equal the rows of the scaled deltas up to rounding (the other form the bound covers)
    scaled = delta * scale.reshape(-1, *(1,) * (delta.ndim - 1))
    np.testing.assert_allclose(layer.per_example_gradients(params, x, cache, scaled)[0], gW * scale.reshape(-1, 1, 1, *(1,) * layer.nd),
                               rtol=1e-10, atol=1e-13)


def _reverse_matmul(a, b):
    acc = a[..., :, -1, None] * b[..., -1, None, :]
    for j in range(a.shape[-1] - 2, -1, -1):
        acc = acc + a[..., :, j, None] * b[..., j, None, :]
    return acc


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("layer", "shape"), [c for c in CONVS if c[0].nd == 2 and c[0].stride == (1, 1)])
def test_contiguous_backward_is_col2im_bit_for_bit(layer, shape, reverse, monkeypatch):
    if reverse:
        monkeypatch.setattr(conv_module, "_offset_order", lambda offsets: list(reversed(offsets)))
        monkeypatch.setattr(conv_module, "_matmul", _reverse_matmul)
    _, (W, b), x, cache, delta = _setup(layer, shape, 5, 3)
    got = layer.backward((W, b), x, cache, delta)
    dcols = conv_module._matmul(W.reshape(layer.out_channels, -1).T, delta.reshape(5, layer.out_channels, -1))
    expected = col2im(dcols, layer.in_channels, shape[1:], layer.kernel_size, layer.stride, layer.padding, delta.shape[2:])
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("layer", "shape"), [(AvgPool1d(3), (2, 10)), (AvgPool2d((3, 2)), (2, 7, 5)), (AvgPool2d(2), (3, 6, 6)),
                                              (AvgPool2d(1), (1, 3, 3))])
def test_pooling_against_loops(layer, shape):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, *shape))
    out, _ = layer.forward((), x)
    delta = rng.standard_normal(out.shape)
    back = layer.backward((), x, None, delta)
    K = layer.window
    expected_back = np.zeros(x.shape)
    for b, c in itertools.product(range(2), range(shape[0])):
        for pos in itertools.product(*(range(g) for g in out.shape[2:])):
            idx = [(b, c, *(p * k + o for p, k, o in zip(pos, layer.kernel_size, off, strict=True)))
                   for off in itertools.product(*(range(k) for k in layer.kernel_size))]
            acc = x[idx[0]]
            for i in idx[1:]:
                acc = acc + x[i]  # left to right in offset order: the kernel's order, so the same floats
            assert out[(b, c, *pos)] == acc / K
            for i in idx:
                expected_back[i] = delta[(b, c, *pos)] / K
    np.testing.assert_array_equal(back, expected_back)  # zeros on the dropped remainder


def _cnn() -> Sequential:
    parts = [Conv2d(1, 3, 3, weight_bound=0.5), Tanh(), AvgPool2d(2), Conv2d(3, 4, 2, padding=1, weight_bound=0.5), Tanh(),
             AvgPool2d(2), Flatten(), Dense(16, 3, 0.5, 0.25)]
    return Sequential(parts, SoftmaxCrossEntropy(), input_bound=1.0, input_shape=(1, 8, 8))


def test_sequential_clipped_sum_through_kept_rows():
    model = _cnn()
    rng = np.random.default_rng(5)
    params = model.init(rng)
    x = rng.uniform(-1, 1, (37, 1, 8, 8))  # 37 rows: several blocks and a short last one
    y = rng.integers(0, 3, 37)
    clip = float(np.median(model.per_example_norms(params, x, y)))
    got = model.gradient_sum(params, x, y, clip=clip, out=np.empty(model.num_parameters))
    flat = np.concatenate([v.ravel() for part in got for v in part])
    # the scaled-delta path: deltas scaled by the clip factors, then each part's accumulate
    acts, caches, deltas = model._block_deltas(params, x, y, clip)
    views = []
    for shapes in model._param_shapes:
        views.append(tuple(np.empty(s) for s in shapes))
    for i, (p, ps) in enumerate(zip(model.parts, params, strict=True)):
        if model._sizes[i]:
            p.accumulate(tuple(ps), acts[i], caches[i], deltas[i], views[i], True)
    expected = np.concatenate([v.ravel() for part in views for v in part])
    np.testing.assert_allclose(flat, expected, rtol=1e-12, atol=1e-14)
    assert model._block_rows() >= 16


def test_gradient_sum_restores_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    model = _cnn()
    rng = np.random.default_rng(6)
    params = model.init(rng)
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    model.gradient_sum(params, rng.uniform(-1, 1, (5, 1, 8, 8)), rng.integers(0, 3, 5), clip=1.0)
    after = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert before == after
