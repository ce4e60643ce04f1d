"""The elementwise activation part (nn/parts/activation.py): kernels on vectors and image-shaped tensors, its bound
maps against searched points, the forward error against 50-digit gradients, and relu's infinite error."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from helpers.labels import labels_for
from helpers.layer_checks import box_inputs, check_kernels, exact_norms_within, extreme_params, worst_norm
from helpers.mp_reference import computed_row, distance, exact_row, mp_phi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.analysis.rounding import add_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import Identity, MeanSquaredError, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh, TemperedSigmoid
from opendp_hybridad.nn.parts.activation import Elementwise
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.sequential import Sequential

ACTIVATIONS = [Tanh(), Sigmoid(), TemperedSigmoid(3.0, 0.5, 1.2), ReLU(), Identity()]
SMOOTH = [a for a in ACTIVATIONS if a.name != "relu"]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.name)
def test_activation_kernels_match_finite_differences_and_a_per_example_loop(act):
    rng = np.random.default_rng(0)
    model = Sequential([Dense(4, 5, 0.8, 0.5), act, Dense(5, 3, 0.8, 0.5), act], SoftmaxCrossEntropy(), input_bound=1.5)
    # non-zero biases: no pre-activation sits on relu's kink, where finite differences see no derivative
    params = [(p[0], rng.uniform(-0.5, 0.5, p[1].shape)) if p else p for p in model.init(rng)]
    x, y = box_inputs(model, rng, 8), rng.integers(0, 3, 8)
    check_kernels(model, params, x, y)


@pytest.mark.parametrize("act", SMOOTH, ids=lambda a: a.name)
def test_an_activation_on_image_shaped_tensors(act):
    """Entrywise on (C, H, W): the same values and deltas as on the flattened vector."""
    rng = np.random.default_rng(1)
    model = Sequential([act, Flatten(), Dense(12, 2, 1.0, 1.0)], MeanSquaredError(), input_shape=(2, 3, 2), input_bound=2.0)
    params = model.init(rng)
    x, y = box_inputs(model, rng, 6), labels_for(MeanSquaredError(), 2, rng, 6)
    check_kernels(model, params, x, y)
    part = Elementwise(act)
    z = rng.uniform(-2, 2, (4, 2, 3, 2))
    a, slope = part.forward((), z)
    np.testing.assert_array_equal(a.reshape(4, -1), act.value_and_derivative(z.reshape(4, -1))[0])
    d = rng.standard_normal(z.shape)
    back = part.backward((), z, slope, d)
    step = 1e-6
    fd = (act(z + step) - act(z - step)) / (2 * step)
    np.testing.assert_allclose(back, d * fd, rtol=1e-6, atol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(ACTIVATIONS) - 1), st.integers(1, 6), st.floats(0.01, 5.0), st.floats(0.0, 1.0), st.integers(0, 10**6))
def test_activation_bound_maps_hold_for_searched_inputs(a, n, r, fraction, seed):
    """Inputs with |z_j| <= r and ||z|| <= fraction-scaled norm: the output's norm, entries and the input delta stay inside."""
    act = ACTIVATIONS[a]
    rng = np.random.default_rng(seed)
    norm = max(fraction * math.sqrt(n) * r, 1e-3)
    inp = ActivationBound((n,), norm, r)
    part = Elementwise(act)
    out = part.forward_bound(inp, ())
    z = rng.uniform(-r, r, (256, n))
    z[:64] = r * np.sign(z[:64])  # the corners, then scaled into the norm ball
    z *= np.minimum(1.0, norm / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-300))
    # the float inputs are exact (error 0): the computed values are within the computed bounds
    values, slope = part.forward((), z)
    assert np.abs(values).max() <= out.computed_unit and exact_norms_within(values, out.computed_norm)
    d = rng.standard_normal((256, n))
    d /= np.linalg.norm(d, axis=1, keepdims=True) * 1.001
    back = part.backward_bound(inp, DeltaBound((n,), 1.0), ())
    assert exact_norms_within(part.backward((), z, slope, d), add_up(back.norm, back.error))


@pytest.mark.parametrize("act", SMOOTH, ids=lambda a: a.name)
def test_computed_values_and_slopes_are_within_the_stated_errors_at_float_inputs(act):
    """The part's forward error at an exact input (e_z = 0): ||phi^(z) - phi(z)|| and the delta's error against mpmath."""
    rng = np.random.default_rng(2)
    r, n = 4.0, 5
    inp = ActivationBound((n,), math.sqrt(n) * r, r)
    part = Elementwise(act)
    out = part.forward_bound(inp, ())
    back = part.backward_bound(inp, DeltaBound((n,), 1.0, 0.0), ())
    z = rng.uniform(-r, r, (50, n))
    d = rng.standard_normal((50, n))
    d /= np.linalg.norm(d, axis=1, keepdims=True) * (1 + 1e-15)
    values, slope = part.forward((), z)
    computed = part.backward((), z, slope, d)
    for i in range(50):
        pairs = [mp_phi(act, mpmath.mpf(float(v))) for v in z[i]]
        value_error = math.sqrt(sum(float((mpmath.mpf(float(values[i, j])) - pairs[j][0]) ** 2) for j in range(n)))
        delta_error = math.sqrt(sum(float((mpmath.mpf(float(computed[i, j])) - mpmath.mpf(float(d[i, j])) * pairs[j][1]) ** 2)
                                    for j in range(n)))
        assert value_error <= out.error and delta_error <= back.error


@pytest.mark.parametrize("act", SMOOTH, ids=lambda a: a.name)
def test_computed_rows_through_activations_are_within_the_forward_error(act):
    rng = np.random.default_rng(3)
    model = Sequential([Dense(6, 4, 0.9, 0.9), act, Dense(4, 4, 0.9, 0.9), act, Dense(4, 3, 0.9, 0.9)], SoftmaxCrossEntropy(),
                       input_bound=1.0)
    params = extreme_params(model, rng, shrink=0.8)
    x, y = box_inputs(model, rng, 5), rng.integers(0, 3, 5)
    bound = model.certified_bound(params)
    acts, deltas = model.deltas(params, x, y)
    worst = max(distance(computed_row(model, acts, deltas, i), exact_row(model, params, x[i], y[i])) for i in range(5))
    assert 0 < worst <= bound.rounding < 1e-6


def test_relu_has_no_finite_forward_error():
    """relu's slope jumps at 0: a pre-activation computed on the other side of 0 moves the delta by O(1), so e = inf
    (never a finite guess), while K stays finite."""
    model = Sequential([Dense(3, 4), ReLU(), Dense(4, 2)], SoftmaxCrossEntropy(), input_bound=1.0)
    bound = model.certified_bound()
    assert math.isfinite(bound.upper) and bound.rounding == math.inf and bound.row_error(1.0) == math.inf
    # the jump itself: two floats on either side of 0, an O(1) change of the slope
    part = Elementwise(ReLU())
    _, slope = part.forward((), np.array([[-5e-324, 5e-324]]))
    assert slope[0, 1] - slope[0, 0] == 1.0


def test_an_elementwise_part_wraps_an_activation_only():
    with pytest.raises(DeclarationError, match="wraps an activation"):
        Elementwise("tanh")
    assert Elementwise(Tanh()).output_shape((2, 5)) == (2, 5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(ACTIVATIONS) - 1), st.floats(0.05, 2.0), st.floats(0.1, 3.0), st.integers(0, 10**6))
def test_k_holds_for_activation_chains_under_search(a, wb, xb, seed):
    act = ACTIVATIONS[a]
    model = Sequential([Dense(3, 4, wb, wb), act, Dense(4, 4, wb, wb), act, Dense(4, 2, wb, wb)], SoftmaxCrossEntropy(),
                       input_bound=xb)
    K = model.certified_bound().upper
    rng = np.random.default_rng(seed)
    for _ in range(10):
        params = extreme_params(model, rng, shrink=float(rng.uniform(0.5, 1.0)))
        x, y = box_inputs(model, rng, 64), rng.integers(0, 2, 64)
        assert worst_norm(model, params, x, y) <= K
