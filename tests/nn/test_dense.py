"""The dense part (nn/parts/dense.py): kernels against finite differences and a brute-force loop; K against
adversarial search; the forward error e against 50-digit gradients, also under another summation order."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from helpers.labels import labels_for
from helpers.layer_checks import box_inputs, check_kernels, exact_norms_within, extreme_params, worst_norm
from helpers.mp_reference import computed_row, distance, exact_row, sequential_matmul
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.analysis.rounding import add_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import Identity, Logistic, MeanSquaredError, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts import dense as dense_module
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.sequential import Sequential

LOSSES = [(SoftmaxCrossEntropy(), 3), (MeanSquaredError(), 2), (Logistic(), 1)]


@pytest.mark.parametrize(("loss", "out"), LOSSES, ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("ball", [False, True])
def test_dense_kernels_match_finite_differences_and_a_per_example_loop(loss, out, ball):
    rng = np.random.default_rng(0)
    model = Sequential([Dense(4, 3, 0.9, 0.5, norm_ball=ball), Tanh(), Dense(3, out, 0.9, 0.5, norm_ball=ball)], loss,
                       input_bound=1.5)
    params = [(W, rng.uniform(-0.5, 0.5, b.shape)) for W, b in (model.init(rng)[0], model.init(rng)[2])]
    params = [params[0], (), params[1]]
    x, y = box_inputs(model, rng, 9), labels_for(loss, out, rng, 9)
    check_kernels(model, params, x, y)


def test_dense_alone_gives_the_closed_form_gradient():
    # one dense layer with MSE: g = (z - y) [x; 1]^T exactly, by hand
    rng = np.random.default_rng(1)
    model = Sequential([Dense(3, 2, 1.0, 1.0)], MeanSquaredError(), input_bound=1.0)
    W, b = rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, 2)
    x, y = rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (5, 2))
    gW, gb = model.per_example_gradients([(W, b)], x, y)[0]
    for i in range(5):
        r = W @ x[i] + b - y[i]
        np.testing.assert_allclose(gW[i], np.outer(r, x[i]), rtol=1e-13)
        np.testing.assert_allclose(gb[i], r, rtol=1e-13)


def test_weight_norms_of_given_weights_bound_the_exact_norms():
    rng = np.random.default_rng(2)
    layer = Dense(7, 5, 1.0, 1.0)
    for _ in range(20):
        W, b = rng.standard_normal((5, 7)) * 10.0 ** rng.integers(-5, 5), rng.standard_normal(5)
        R, b_max, F, B = layer.weight_norms((W, b))
        exact_F2 = sum(Fraction(float(v)) ** 2 for v in W.ravel())
        exact_B2 = sum(Fraction(float(v)) ** 2 for v in b)
        exact_R2 = max(sum(Fraction(float(v)) ** 2 for v in row) for row in W)
        assert Fraction(F) ** 2 >= exact_F2 and Fraction(B) ** 2 >= exact_B2 and Fraction(R) ** 2 >= exact_R2
        assert b_max >= np.abs(b).max()
        assert layer.weight_norms((W, b), rows=False)[0] == F  # R = F when rows are skipped
    # over the declared set: R >= any row's norm, F >= ||W||_2 (corner of the box)
    R, b_max, F, B = layer.weight_norms(None)
    corner = np.ones((5, 7))
    assert math.sqrt(7) <= R and np.linalg.norm(corner, 2) <= F and math.sqrt(5) <= B and b_max == 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.05, 3.0), st.floats(0.0, 2.0), st.floats(0.1, 3.0), st.booleans(),
       st.floats(0.0, 1.0), st.integers(0, 10**6))
def test_dense_forward_and_backward_bounds_hold_for_searched_points(n_in, n_out, wb, bb, xb, ball, shrink, seed):
    """The part's own bound maps: |z_j| <= unit, ||z|| <= norm, ||W^T d|| <= its bound, over the declared set."""
    rng = np.random.default_rng(seed)
    layer = Dense(n_in, n_out, wb, bb, norm_ball=ball)
    norms = layer.weight_norms(None)
    inp = ActivationBound((n_in,), math.sqrt(n_in) * xb * (1 + 1e-15), xb)
    out = layer.forward_bound(inp, norms)
    W, b = layer.witness_params(rng)
    W = W * shrink
    x = xb * np.sign(rng.uniform(-1, 1, (64, n_in)))
    # the float inputs are exact (error 0): the computed outputs are within the computed bounds
    z, _ = layer.forward((W, b), x)
    assert np.abs(z).max() <= out.computed_unit and exact_norms_within(z, out.computed_norm)
    d = rng.standard_normal((64, n_out))
    d /= np.linalg.norm(d, axis=1, keepdims=True) * 1.001
    back = layer.backward_bound(inp, DeltaBound((n_out,), 1.0), norms)
    assert exact_norms_within(layer.backward((W, b), x, None, d), add_up(back.norm, back.error))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(LOSSES) - 1), st.lists(st.integers(1, 5), min_size=0, max_size=2), st.floats(0.05, 2.0),
       st.floats(0.1, 3.0), st.booleans(), st.integers(0, 10**6))
def test_certified_k_is_never_below_searched_gradient_norms(li, widths, wb, xb, ball, seed):
    loss, out = LOSSES[li]
    sizes = [3, *widths, out]
    parts = []
    for i, o in itertools.pairwise(sizes):
        parts += [Dense(i, o, wb, wb / 2, norm_ball=ball), Tanh()]
    model = Sequential(parts[:-1], loss, input_bound=xb, label_bound=1.0)
    K = model.certified_bound().upper
    rng = np.random.default_rng(seed)
    best = 0.0
    for _ in range(12):
        params = extreme_params(model, rng, shrink=float(rng.choice([1.0, rng.uniform(0, 1)])))
        x, y = box_inputs(model, rng, 64), labels_for(loss, out, rng, 64)
        best = max(best, worst_norm(model, params, x, y))
        assert model.certified_bound(params).upper >= worst_norm(model, params, x, y)
    assert best <= K


@pytest.mark.parametrize(("loss", "out"), LOSSES, ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("weights", ["random", "cancelling"])
def test_computed_rows_are_within_the_forward_error_of_50_digit_gradients(loss, out, weights):
    rng = np.random.default_rng(5 + len(weights) + out)
    big = 40.0 if weights == "cancelling" else 0.9
    model = Sequential([Dense(10, 4, big, big), Tanh(), Dense(4, out, 0.9, 0.9)], loss, input_bound=1.0)
    W1 = rng.uniform(-1, 1, (4, 10)) * big
    params = [(W1, rng.uniform(-1, 1, 4) * big), (), (rng.uniform(-0.9, 0.9, (out, 4)), rng.uniform(-0.9, 0.9, out))]
    x = rng.uniform(-1, 1, (5, 10))
    if weights == "cancelling":
        # dot products that cancel to about 0: their rounding is large next to the pre-activation
        x[:] = 1.0
        W1[:, 5:] = -W1[:, :5] * (1 + rng.uniform(-1e-3, 1e-3, (4, 5)))
        params[0] = (W1, np.zeros(4))
    y = labels_for(loss, out, rng, 5)
    bound = model.certified_bound(params)
    assert 0 < bound.rounding <= model.certified_bound().rounding < math.inf
    acts, deltas = model.deltas(params, x, y)
    worst = max(distance(computed_row(model, acts, deltas, i), exact_row(model, params, x[i], y[i])) for i in range(5))
    assert 0 < worst <= bound.rounding < 1e-6


def test_another_summation_order_stays_within_the_forward_error(monkeypatch):
    """Large weights whose dot product cancels to about 0: another order moves the row, within e either way."""
    d = 64
    rng = np.random.default_rng(7)
    model = Sequential([Dense(d, 1, 1000.0, 1e6), Tanh(), Dense(1, 2, 1.0, 1.0)], SoftmaxCrossEntropy(), input_bound=1.0)
    w = 1000.0 * rng.uniform(0.5, 1.0, d)
    w[d // 2:] *= -1.0
    x = np.full((3, d), 0.5)
    b1 = -math.fsum((w * x[0]).tolist())
    params = [(w[None, :], np.array([b1])), (), (np.array([[0.7], [-0.4]]), np.zeros(2))]
    y = np.array([0, 1, 0])
    bound = model.certified_bound(params)
    exact = exact_row(model, params, x[0], y[0])
    rows = []
    for reverse in (lambda rows: False, lambda rows: True):
        monkeypatch.setattr(dense_module, "_matmul", sequential_matmul(reverse))
        acts, deltas = model.deltas(params, x, y)
        rows.append(computed_row(model, acts, deltas, 0))
        assert distance(rows[-1], exact) <= bound.rounding
    assert distance(rows[0], rows[1]) > 0  # the order did move the row
    assert distance(rows[0], rows[1]) <= 2 * bound.rounding


@pytest.mark.parametrize("shape", [(3,), (2, 4)])
def test_a_dense_part_refuses_inputs_of_another_shape(shape):
    with pytest.raises(DeclarationError, match=r"dense\(4->2\)"):
        Sequential([Dense(4, 2), Identity()], SoftmaxCrossEntropy(), input_shape=shape)


def test_update_and_projection_keep_the_declared_set():
    rng = np.random.default_rng(3)
    layer = Dense(5, 3, 0.2, 0.1, norm_ball=True)
    params = layer.init(rng)
    step = rng.standard_normal(18) * 10
    new = layer.update(params, step, 1.0, project=True)
    assert math.sqrt(math.fsum((new[0] ** 2).ravel().tolist())) <= 0.2 and np.abs(new[1]).max() <= 0.1
    raw = layer.update(params, step, 1.0, project=False)
    np.testing.assert_array_equal(raw[0], params[0] - step[:15].reshape(3, 5))
    np.testing.assert_array_equal(layer.project_params(raw)[1], np.clip(raw[1], -0.1, 0.1))


# -- gradual underflow (a product or square below the normal range rounds with an absolute error) ---------
def test_public_weight_norms_cover_weights_whose_squares_underflow():
    """Weights of 2^-600: every square underflows to 0 in float64, so the float norm is 0. The old bound
    (sqrt(fl(W . W)) (1 + gamma)) was 0 against an exact norm of 2^-600 sqrt(n)."""
    layer = Dense(8, 4, 1.0, 1.0)
    W = np.full((4, 8), 2.0**-600)
    b = np.full(4, -(2.0**-600))
    R, _, F, B = layer.weight_norms((W, b))
    exact_f = Fraction(2) ** -1200 * 32  # ||W||_F^2
    assert Fraction(F) ** 2 >= exact_f and Fraction(B) ** 2 >= Fraction(2) ** -1200 * 4
    assert Fraction(R) ** 2 >= Fraction(2) ** -1200 * 8
    assert F < 1e-150  # still tiny: sqrt(2 n TINY) is about 2^-530


def test_forward_and_backward_errors_cover_subnormal_products():
    """Products near TINY round with an absolute error up to TINY / 2 each, which gamma_n's relative bound
    alone misses: z = x W^T with every product 3/4 TINY (rounded to TINY or 0) against exact rationals."""
    n_in, n_out = 64, 3
    layer = Dense(n_in, n_out, 1.0, 1.0)
    x = np.full((1, n_in), 2.0**-537)
    W = np.full((n_out, n_in), 0.75 * 2.0**-537)  # each product 0.75 * 2^-1074: not representable
    b = np.zeros(n_out)
    z, _ = layer.forward((W, b), x)
    exact = Fraction(n_in) * Fraction(0.75) * Fraction(2) ** -1074
    worst_forward = max(abs(Fraction(float(v)) - exact) for v in z[0])
    norms = layer.weight_norms((W, b))
    inp = ActivationBound((n_in,), add_up(float(np.linalg.norm(x)) * (1 + 1e-12), 1e-300), 2.0**-537)
    out = layer.forward_bound(inp, norms)
    assert Fraction(out.error) >= worst_forward * math.sqrt(n_out)  # every entry off by the same amount
    # backward: W^T d with the same subnormal products
    d = np.full((1, n_out), 2.0**-537)
    v = layer.backward((W, b), x, None, d)
    exact_v = Fraction(n_out) * Fraction(0.75) * Fraction(2) ** -1074
    worst_backward = max(abs(Fraction(float(e)) - exact_v) for e in v[0])
    back = layer.backward_bound(inp, DeltaBound((n_out,), float(np.linalg.norm(d)) * (1 + 1e-12)), norms)
    assert Fraction(back.error) >= worst_backward * math.sqrt(n_in)


@pytest.mark.parametrize(("radius", "entry", "size"), [(3e-162, 1.5e-162, 100), (1e-300, 1e100, 4), (1e-30, 1e300, 4)])
def test_ball_projection_lands_inside_when_squares_underflow_or_overflow(radius, entry, size):
    """Audit (attack_nn_bounds.py): entries of 1.5e-162 square below TINY / 2, so the float norm was 0 and
    the weights stayed 5x outside a ball of 3e-162; a shrink factor that underflowed came out negative
    (-2 TINY) and flipped the weights, 3.4e77 radii out. Checked with exact rationals."""
    layer = Dense(size, 1, radius, 1.0, norm_ball=True)
    W = np.full((1, size), entry)
    for projected in (layer.project(W, np.zeros(1))[0],
                      layer.apply_step(W, np.zeros(1), np.zeros(size), np.zeros(1), 1.0, True)[0]):
        squares = sum(Fraction(float(v)) ** 2 for v in projected.ravel())
        assert squares <= Fraction(radius) ** 2
