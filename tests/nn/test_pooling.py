"""AvgPool1d / AvgPool2d against brute-force loops, central differences and exact rationals; the exact norm
bounds against adversarial inputs (hypothesis), and the mean's rounding under other summation orders."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from helpers.layer_checks import sqrt_fraction
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound

CASES = [
    (AvgPool1d(2), (3, 8)),
    (AvgPool1d(3), (2, 10)),  # a remainder of 1 dropped
    (AvgPool2d(2), (2, 4, 6)),
    (AvgPool2d((3, 2)), (1, 7, 5)),  # remainders on both axes
]


def brute_pool(x: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """Window means by loops, summed in exact rationals (then one rounding to float)."""
    B, C = x.shape[:2]
    grid = tuple(s // k for s, k in zip(x.shape[2:], kernel, strict=True))
    out = np.zeros((B, C, *grid))
    K = math.prod(kernel)
    for b, c in itertools.product(range(B), range(C)):
        for pos in itertools.product(*(range(g) for g in grid)):
            total = Fraction(0)
            for off in itertools.product(*(range(k) for k in kernel)):
                total += Fraction(float(x[(b, c, *(p * k + o for p, k, o in zip(pos, kernel, off, strict=True)))]))
            out[(b, c, *pos)] = float(total / K)
    return out


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_forward_matches_brute_force(layer, shape):
    x = np.random.default_rng(1).standard_normal((3, *shape))
    out, _ = layer.forward((), x)
    assert out.shape == (3, *layer.output_shape(shape))
    np.testing.assert_allclose(out, brute_pool(x, layer.kernel_size), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_backward_against_central_differences(layer, shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, *shape))
    r = rng.standard_normal((2, *layer.output_shape(shape)))

    def losses(x_):
        return (np.sin(layer.forward((), x_)[0]) * r).reshape(2, -1).sum(axis=1)

    out, cache = layer.forward((), x)
    gx = layer.backward((), x, cache, np.cos(out) * r)
    h = 1e-6
    for idx in np.ndindex(x.shape[1:]):
        xp, xm = x.copy(), x.copy()
        xp[(slice(None), *idx)] += h
        xm[(slice(None), *idx)] -= h
        np.testing.assert_allclose(gx[(slice(None), *idx)], (losses(xp) - losses(xm)) / (2 * h), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("layer", "shape"), CASES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bounds_cover_adversarial_inputs(layer, shape, data):
    """``||out|| <= ||a|| / sqrt(K)``, ``|out_j| <= max |a|``, ``||delta_in|| = ||delta|| / sqrt(K)``, and the rounding
    of the computed mean (any order: numpy's pairwise sum here, a reversed loop below) within the stated error."""
    x = data.draw(arrays(np.float64, (1, *shape), elements=st.floats(-1e3, 1e3) | st.sampled_from([1e3, -1e3, 1e-300])))
    norm = sqrt_fraction(sum(Fraction(float(v)) ** 2 for v in x.flat))
    inp = ActivationBound(shape, math.nextafter(norm, math.inf), float(np.abs(x).max()), 0.0)
    rec = layer.forward_bound(inp, ())
    out, cache = layer.forward((), x)
    exact = brute_pool(x, layer.kernel_size)  # the exact mean, rounded once: within u |mean|
    exact_norm = sqrt_fraction(sum(Fraction(float(v)) ** 2 for v in exact.flat)) * (1 - 2**-50)
    assert exact_norm <= rec.norm
    assert np.abs(out).max() <= rec.computed_unit
    # computed against exact rational means
    gap = _gap_to_exact_means(out, x, layer.kernel_size)
    assert gap <= rec.error
    delta = data.draw(arrays(np.float64, out.shape, elements=st.floats(-1e3, 1e3)))
    d_norm = sqrt_fraction(sum(Fraction(float(v)) ** 2 for v in delta.flat))
    back = layer.backward_bound(inp, DeltaBound(out.shape[1:], math.nextafter(d_norm, math.inf), 0.0), ())
    gx = layer.backward((), x, cache, delta)
    K = layer.window
    exact_sq = sum(Fraction(float(v)) ** 2 for v in delta.flat) / K
    assert sqrt_fraction(exact_sq) * (1 - 2**-50) <= back.norm
    gx_gap = sqrt_fraction(sum((Fraction(float(g)) - Fraction(float(d)) / K) ** 2
                                 for g, d in zip(gx[(slice(None), slice(None), *_cut(layer, shape))].reshape(-1),
                                                 np.broadcast_to(delta[_expand(layer)], _windowed(layer, (1, *shape))).reshape(-1),
                                                 strict=True)))
    assert gx_gap <= back.error


def _cut(layer, shape):
    return tuple(slice(0, (s // k) * k) for s, k in zip(shape[1:], layer.kernel_size, strict=True))


def _expand(layer):
    index = (slice(None), slice(None))
    for _ in layer.kernel_size:
        index += (slice(None), None)
    return index


def _windowed(layer, shape):
    out = [shape[0], shape[1]]
    for s, k in zip(shape[2:], layer.kernel_size, strict=True):
        out += [s // k, k]
    return tuple(out)


def _gap_to_exact_means(out: np.ndarray, x: np.ndarray, kernel: tuple[int, ...]) -> float:
    """``||out - exact means||`` with the means and the differences in exact rationals."""
    B, C = x.shape[:2]
    grid = out.shape[2:]
    K = math.prod(kernel)
    total = Fraction(0)
    for b, c in itertools.product(range(B), range(C)):
        for pos in itertools.product(*(range(g) for g in grid)):
            s = sum((Fraction(float(x[(b, c, *(p * k + o for p, k, o in zip(pos, kernel, off, strict=True)))]))
                     for off in itertools.product(*(range(k) for k in kernel))), Fraction(0))
            total += (Fraction(float(out[(b, c, *pos)])) - s / K) ** 2
    return math.nextafter(sqrt_fraction(total), math.inf)


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_mean_error_in_reverse_order(layer, shape):
    """A mean summed backwards in plain float loops (another order than numpy's) stays within the stated error."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *shape)) * np.where(rng.random((2, *shape)) < 0.5, 1e8, 1.0)
    rec = layer.forward_bound(ActivationBound(shape, float(np.sqrt((x ** 2).sum(axis=tuple(range(1, x.ndim)))).max()) * 1.001,
                                              float(np.abs(x).max()), 0.0), ())
    kernel = layer.kernel_size
    grid = layer.output_shape(shape)[1:]
    out = np.zeros((2, shape[0], *grid))
    for b, c in itertools.product(range(2), range(shape[0])):
        for pos in itertools.product(*(range(g) for g in grid)):
            acc = 0.0
            for off in reversed(list(itertools.product(*(range(k) for k in kernel)))):
                acc += x[(b, c, *(p * k + o for p, k, o in zip(pos, kernel, off, strict=True)))]
            out[(b, c, *pos)] = acc / layer.window
    for i in range(2):
        assert _gap_to_exact_means(out[i:i + 1], x[i:i + 1], kernel) <= rec.error


def test_declarations_refused():
    with pytest.raises(DeclarationError, match="avgpool1d: kernel_size must be at least 1"):
        AvgPool1d(0)
    with pytest.raises(DeclarationError, match="avgpool2d"):
        AvgPool2d((2, 2, 2))
    with pytest.raises(DeclarationError, match="window is larger"):
        AvgPool2d(3).output_shape((1, 2, 5))
    with pytest.raises(DeclarationError, match="avgpool1d"):
        AvgPool1d(2).output_shape((4,))
