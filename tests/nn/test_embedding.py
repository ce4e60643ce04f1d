"""Embedding against brute-force loops (gather, scatter in exact rationals), central differences, the ghost norm
against materialised gradients, the certified bounds against hypothesis search in a small model, and the
scatter's rounding under another summation order."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from helpers.layer_checks import check_kernels, extreme_params, sqrt_fraction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.conv import Conv1d
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.embedding import Embedding
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.parts.pooling import AvgPool1d
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.sequential import Sequential


def brute_rows(idx: np.ndarray, delta: np.ndarray, num: int) -> np.ndarray:
    """Per-example ``dL/dE`` by a loop over positions, in exact rationals."""
    B, L = idx.shape
    out = [[[Fraction(0)] * delta.shape[2] for _ in range(num)] for _ in range(B)]
    for b in range(B):
        for p in range(L):
            for j in range(delta.shape[2]):
                out[b][int(idx[b, p])][j] += Fraction(float(delta[b, p, j]))
    return np.array(out, dtype=object)


def test_forward_gathers_clamped_indices():
    layer = Embedding(5, 3)
    rng = np.random.default_rng(1)
    (E,) = layer.init(rng)
    x = np.array([[0, 4, 2, 7, -3, np.nan, 2.9, np.inf]])
    out, _ = layer.forward((E,), x)
    expected = [0, 4, 2, 4, 0, 0, 2, 4]  # clamped, NaN as 0, fractions truncated
    for p, r in enumerate(expected):
        assert np.array_equal(out[0, p], E[r])
    cf = Embedding(5, 3, channels_first=True)
    assert np.array_equal(cf.forward((E,), x)[0], out.transpose(0, 2, 1))
    assert cf.output_shape((8,)) == (3, 8) and layer.output_shape((8,)) == (8, 3)


@pytest.mark.parametrize("channels_first", [False, True])
def test_gradients_norms_and_sum(channels_first):
    layer = Embedding(6, 4, channels_first=channels_first)
    rng = np.random.default_rng(2)
    (E,) = layer.init(rng)
    idx = rng.integers(0, 6, (7, 5))
    idx[0] = 3  # every position the same row
    out, cache = layer.forward((E,), idx.astype(float))
    delta = rng.standard_normal(out.shape)
    d = delta.transpose(0, 2, 1) if channels_first else delta
    (g,) = layer.per_example_gradients((E,), idx, cache, delta)
    exact = brute_rows(idx, d, 6)
    np.testing.assert_allclose(g, exact.astype(float), rtol=1e-14, atol=1e-15)
    sq = layer.per_example_squared_norms((E,), idx, cache, delta)
    np.testing.assert_allclose(sq, (g.reshape(7, -1) ** 2).sum(axis=1), rtol=1e-12)
    acc = (np.full(E.shape, np.nan),)
    layer.accumulate((E,), idx[:3], cache[:3], delta[:3], acc, first=True)
    layer.accumulate((E,), idx[3:], cache[3:], delta[3:], acc, first=False)
    np.testing.assert_allclose(acc[0], g.sum(axis=0), rtol=1e-12, atol=1e-15)


def test_gradients_against_central_differences():
    layer = Embedding(4, 3)
    rng = np.random.default_rng(3)
    (E,) = layer.init(rng)
    idx = rng.integers(0, 4, (3, 6))
    r = rng.standard_normal((3, 6, 3))

    def losses(E_):
        return (np.tanh(layer.forward((E_,), idx)[0]) * r).reshape(3, -1).sum(axis=1)

    out, cache = layer.forward((E,), idx)
    (g,) = layer.per_example_gradients((E,), idx, cache, (1 - np.tanh(out) ** 2) * r)
    h = 1e-6
    for ij in np.ndindex(E.shape):
        Ep, Em = E.copy(), E.copy()
        Ep[ij] += h
        Em[ij] -= h
        np.testing.assert_allclose(g[(slice(None), *ij)], (losses(Ep) - losses(Em)) / (2 * h), rtol=1e-6, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_gradient_bound_and_scatter_error(data):
    """``||dL/dE|| <= sqrt(L) ||delta||`` over any indices (equal ones included), and the computed rows within the
    stated error in numpy's order and in a reversed scatter."""
    L, dim, num = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    layer = Embedding(num, dim)
    idx = np.array([data.draw(st.lists(st.integers(0, num - 1), min_size=L, max_size=L))])
    delta = np.array(data.draw(st.lists(st.floats(-1e6, 1e6) | st.sampled_from([1e6, -1e6, 1.0, 1e-10]),
                                        min_size=L * dim, max_size=L * dim))).reshape(1, L, dim)
    d_norm = math.nextafter(sqrt_fraction(sum(Fraction(float(v)) ** 2 for v in delta.flat)), math.inf)
    grad = layer.gradient_bound(ActivationBound((L,), 1.0, 1.0), DeltaBound((L, dim), d_norm, 0.0), layer.weight_norms(None))
    exact = brute_rows(idx, delta, num)
    assert float(sum(v ** 2 for v in exact.flat)) <= grad.squared
    (g,) = layer.per_example_gradients((np.zeros((num, dim)),), idx, idx, delta)
    reverse = np.zeros((num, dim))
    for p in reversed(range(L)):
        reverse[idx[0, p]] += delta[0, p]
    for computed in (g[0], reverse):
        gap = sqrt_fraction(sum((Fraction(float(c)) - e) ** 2 for c, e in zip(computed.flat, exact[0].flat, strict=True)))
        assert gap <= grad.error
    s = layer.per_example_squared_norms((np.zeros((num, dim)),), idx, idx, delta)[0]
    row_sq = sum(Fraction(float(v)) ** 2 for v in g.flat)
    assert abs(Fraction(float(s)) - row_sq) <= Fraction(grad.norm_relative_error) * row_sq + Fraction(grad.norm_absolute_error)


def test_gradient_bound_is_attained():
    """All indices equal and all deltas equal: the gradient norm is sqrt(L) ||delta||, the bound (up to rounding)."""
    layer = Embedding(3, 2)
    L = 5
    delta = np.ones((1, L, 2))
    (g,) = layer.per_example_gradients((np.zeros((3, 2)),), np.zeros((1, L), dtype=int), np.zeros((1, L), dtype=int), delta)
    grad = layer.gradient_bound(ActivationBound((L,), 1.0, 1.0), DeltaBound((L, 2), math.sqrt(2 * L), 0.0), layer.weight_norms(None))
    assert (g ** 2).sum() <= grad.squared <= (g ** 2).sum() * (1 + 1e-12)


def embedding_model(norm_ball: bool) -> Sequential:
    parts = [Embedding(7, 3, weight_bound=0.5, norm_ball=norm_ball, channels_first=True), Conv1d(3, 2, 3, padding=1, weight_bound=0.5,
             bias_bound=0.25), Tanh(), AvgPool1d(2), Flatten(), Dense(4, 3, 0.5, 0.25)]
    return Sequential(parts, SoftmaxCrossEntropy(), input_bound=6.0, input_shape=(4,))


@pytest.mark.parametrize("norm_ball", [False, True])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_certified_K_in_a_model(norm_ball, data):
    model = embedding_model(norm_ball)
    bound = model.certified_bound()
    assert math.isfinite(bound.upper) and 0 < bound.rounding < math.inf
    params = []
    for part, shape in zip(model.parts, model._shapes[:-1], strict=True):
        arrays = tuple(part.witness_params(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), shape))
        params.append(tuple(a * data.draw(st.sampled_from([1.0, 0.5, -1.0])) for a in arrays))
    idx = np.array([data.draw(st.lists(st.integers(0, 6), min_size=4, max_size=4))], dtype=float)
    y = np.array([data.draw(st.integers(0, 2))])
    norm = model.per_example_norms(params, idx, y)[0]
    assert norm <= model.certified_bound(params).upper <= bound.upper * (1 + 1e-12)
    assert norm <= bound.upper


def test_declarations_refused():
    with pytest.raises(DeclarationError, match="embedding: num_embeddings"):
        Embedding(0, 3)
    with pytest.raises(DeclarationError, match="embedding: weight_bound"):
        Embedding(3, 3, weight_bound=-1.0)
    with pytest.raises(DeclarationError, match="embedding"):
        Embedding(3, 3).output_shape((2, 2))


def test_projection_onto_the_declared_set():
    rng = np.random.default_rng(4)
    box = Embedding(5, 3, weight_bound=0.5)
    (E,) = box.update(box.init(rng), rng.standard_normal(15) * 10, 1.0, True)
    assert np.abs(E).max() <= 0.5
    ball = Embedding(5, 3, weight_bound=0.5, norm_ball=True)
    (E,) = ball.project_params((rng.standard_normal((5, 3)) * 10,))
    assert sum(Fraction(float(v)) ** 2 for v in E.flat) <= Fraction(1, 4)


def test_shared_kernel_checks():
    """The shared checks (tests/helpers/layer_checks.py) on the embedding model: finite differences over every
    parameter (table rows included), the accumulate path one example at a time, norms, clipped and unclipped sums."""
    model = embedding_model(False)
    rng = np.random.default_rng(5)
    params = extreme_params(model, rng, shrink=0.6)
    x = rng.integers(0, 7, (8, 4)).astype(float)
    x[0] = 2.0  # one example with every position on the same row
    check_kernels(model, params, x, rng.integers(0, 3, 8))
