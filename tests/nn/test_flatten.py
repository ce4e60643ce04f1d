"""The flatten part (nn/parts/flatten.py): an exact reshape, so its kernels and bounds pass everything through."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.labels import labels_for
from helpers.layer_checks import box_inputs, check_kernels, extreme_params, worst_norm
from helpers.mp_reference import computed_row, distance, exact_row
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import Logistic, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.sequential import Sequential


def _image_model(shape=(2, 3, 2), loss=None, out=3):
    n = math.prod(shape)
    return Sequential([Flatten(), Dense(n, 4, 0.7, 0.3), Tanh(), Dense(4, out, 0.7, 0.3)], loss or SoftmaxCrossEntropy(),
                      input_shape=shape, input_bound=np.linspace(0.5, 1.5, n).reshape(shape))


def test_flatten_is_a_row_major_reshape_and_its_backward_the_inverse():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3, 4))
    part = Flatten()
    y, cache = part.forward((), x)
    np.testing.assert_array_equal(y, np.stack([xi.ravel() for xi in x]))  # C order, per example
    d = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(part.backward((), x, cache, d), d.reshape(x.shape))
    assert part.output_shape((2, 3, 4)) == (24,)


@pytest.mark.parametrize("shape", [(6,), (2, 3), (2, 3, 2)])
def test_kernels_through_flatten_match_finite_differences_and_a_per_example_loop(shape):
    rng = np.random.default_rng(1)
    model = _image_model(shape)
    params = [(p[0], rng.uniform(-0.3, 0.3, p[1].shape)) if p else p for p in model.init(rng)]
    x, y = box_inputs(model, rng, 7), rng.integers(0, 3, 7)
    assert x.shape == (7, *shape)
    check_kernels(model, params, x, y)


def test_bounds_pass_through_unchanged():
    inp = ActivationBound((2, 3), 2.5, 1.25, 1e-12, 1.5)
    out = Flatten().forward_bound(inp, ())
    assert (out.shape, out.norm, out.unit, out.error, out.computed_unit) == ((6,), 2.5, 1.25, 1e-12, 1.5)
    back = Flatten().backward_bound(inp, DeltaBound((6,), 3.0, 1e-9), ())
    assert (back.shape, back.norm, back.error) == ((2, 3), 3.0, 1e-9)


def test_flatten_adds_nothing_to_k_or_e():
    """The same model with the input given flat: identical certified numbers (the reshape is exact)."""
    image = _image_model((2, 3, 2))
    rng = np.random.default_rng(2)
    flat = Sequential(image.parts[1:], image.loss, input_bound=image.input_bound.ravel())
    params = image.init(rng)
    for a, b in ((image.certified_bound(), flat.certified_bound()), (image.certified_bound(params), flat.certified_bound(params[1:]))):
        assert (a.upper, a.rounding, a.norm_relative_error, a.norm_absolute_error) == (b.upper, b.rounding, b.norm_relative_error,
                                                                                      b.norm_absolute_error)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(4,), (2, 2), (1, 2, 3)]), st.booleans(), st.integers(0, 10**6))
def test_k_through_flatten_holds_under_search(shape, logistic, seed):
    loss, out = (Logistic(), 1) if logistic else (SoftmaxCrossEntropy(), 3)
    model = _image_model(shape, loss, out)
    K = model.certified_bound().upper
    rng = np.random.default_rng(seed)
    for _ in range(10):
        params = extreme_params(model, rng, shrink=float(rng.uniform(0.3, 1.0)))
        x, y = box_inputs(model, rng, 64), labels_for(loss, out, rng, 64)
        assert worst_norm(model, params, x, y) <= K


def test_computed_rows_through_flatten_are_within_the_forward_error():
    model = _image_model((2, 3, 2))
    rng = np.random.default_rng(3)
    params = extreme_params(model, rng, shrink=0.9)
    x, y = box_inputs(model, rng, 4), rng.integers(0, 3, 4)
    bound = model.certified_bound(params)
    acts, deltas = model.deltas(params, x, y)
    worst = max(distance(computed_row(model, acts, deltas, i), exact_row(model, params, x[i], y[i])) for i in range(4))
    assert 0 < worst <= bound.rounding < 1e-6


def test_flatten_of_a_scalar_example_is_refused():
    with pytest.raises(DeclarationError, match="flatten"):
        Flatten().output_shape(())
