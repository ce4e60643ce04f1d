"""The Lipschitz dense part (nn/parts/lipschitz.py) and the l2-ball input declaration (Sequential(input_norm_bound=)).

References independent of the code under test: ``||W||_2 <= s`` is checked as ``s^2 I - W^T W``
positive semidefinite in exact rationals (Gaussian elimination on fractions), per-example
gradients against central differences and a one-example loop, K against adversarial search
over the spectral ball and the input ball, e against 50-digit gradients under two summation orders.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from helpers.labels import labels_for
from helpers.layer_checks import box_inputs, check_kernels, exact_norms_within, extreme_params, spectral_at_most, worst_norm
from helpers.mp_reference import computed_row, distance, exact_row, sequential_matmul
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import Dense, Identity, Logistic, MeanSquaredError, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts import dense as dense_module
from opendp_hybridad.nn.parts import lipschitz
from opendp_hybridad.nn.parts.lipschitz import SpectralDense, spectral_norm_up
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.registry import lookup
from opendp_hybridad.nn.sequential import Sequential

LOSSES = [(SoftmaxCrossEntropy(), 3), (MeanSquaredError(), 2), (Logistic(), 1)]


matrices = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(-700, 300), st.sampled_from(["gauss", "orth", "rank1"]),
                     st.integers(0, 10**6))


def make_matrix(m: int, n: int, exponent: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "orth":  # every singular value equal: the worst case of the Gram squaring's last step
        Q, _ = np.linalg.qr(rng.standard_normal((max(m, n), min(m, n))))
        W = Q if m >= n else Q.T
    elif kind == "rank1":
        W = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    else:
        W = rng.standard_normal((m, n))
    return np.ldexp(W, exponent)


# -- the certified spectral norm -------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices, st.integers(1, 14))
def test_spectral_norm_up_is_never_below_the_exact_norm(spec, squarings):
    W = make_matrix(*spec)
    s = spectral_norm_up(W, squarings)
    assert spectral_at_most(W, s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices)
def test_spectral_norm_up_holds_under_another_summation_order(spec):
    W = make_matrix(*spec)
    original = lipschitz._matmul
    try:
        for reverse in (lambda rows: False, lambda rows: True):
            lipschitz._matmul = sequential_matmul(reverse)
            assert spectral_at_most(W, spectral_norm_up(W, 8))
    finally:
        lipschitz._matmul = original


@pytest.mark.parametrize("shape", [(64, 32), (10, 32), (64, 64), (1, 7), (7, 1)])
@pytest.mark.parametrize("kind", ["gauss", "orth"])
def test_spectral_norm_up_is_within_the_stated_factor(shape, kind):
    """At most rank^(1 / 2^(k+1)) above the norm (LAPACK's SVD as the reference; a factor, so no BLAS dependence)."""
    W = make_matrix(*shape, 0, kind, 3)
    exact = float(np.linalg.svd(W, compute_uv=False)[0])
    k = lipschitz.DEFAULT_SQUARINGS
    assert spectral_norm_up(W) <= exact * min(shape) ** (1 / 2 ** (k + 1)) * (1 + 1e-9)
    assert spectral_norm_up(W) <= lipschitz.frobenius_up(W)


def test_spectral_norm_up_of_zero_and_non_finite_matrices():
    assert 0.0 <= spectral_norm_up(np.zeros((3, 4))) < 1e-150  # the underflow allowance only
    assert spectral_norm_up(np.array([[1.0, math.inf]])) == math.inf
    assert spectral_norm_up(np.full((2, 2), 1e300)) >= 2e300  # overflows the Gram: the Frobenius bound (inf)


# -- the projection --------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices, st.floats(1e-3, 10.0), st.integers(0, 3))
def test_projection_lands_inside_the_spectral_ball(spec, radius, orthogonalize):
    W = make_matrix(*spec)
    m, n = W.shape
    layer = SpectralDense(n, m, radius, 0.5, orthogonalize=orthogonalize)
    b = np.linspace(-2, 2, m)
    W2, b2 = layer.project(W, b)
    assert spectral_at_most(W2, radius)
    assert np.abs(b2).max() <= 0.5
    if not orthogonalize and spectral_norm_up(W) <= radius:
        np.testing.assert_array_equal(W2, W)  # inside: unchanged


def test_projection_is_radial_and_update_projects():
    rng = np.random.default_rng(4)
    layer = SpectralDense(6, 4, 1.0, 0.1)
    W = rng.standard_normal((4, 6)) * 5
    W2, _ = layer.project(W, np.zeros(4))
    np.testing.assert_allclose(W2 / W, (W2 / W)[0, 0], rtol=4e-16)  # one scale for every entry
    assert 0.99 < float(np.linalg.svd(W2, compute_uv=False)[0]) <= 1.0
    params = layer.init(rng)
    step = rng.standard_normal(28) * 10
    new = layer.update(params, step, 1.0, project=True)
    assert spectral_at_most(new[0], 1.0) and np.abs(new[1]).max() <= 0.1
    raw = layer.update(params, step, 1.0, project=False)
    np.testing.assert_array_equal(raw[0], params[0] - step[:24].reshape(4, 6))


def test_bjorck_steps_move_singular_values_towards_the_radius():
    rng = np.random.default_rng(5)
    layer = SpectralDense(16, 8, 2.0, 0.0, orthogonalize=15)
    W, _ = layer.project(rng.standard_normal((8, 16)) * 0.3, np.zeros(8))
    s = np.linalg.svd(W, compute_uv=False)
    assert s.min() > 1.99 and spectral_at_most(W, 2.0)


def test_init_and_witnesses_are_in_the_set_and_orthogonal():
    rng = np.random.default_rng(6)
    layer = SpectralDense(5, 3, 2.5, 0.2)
    W, b = layer.init(rng)
    assert spectral_at_most(W, 2.5) and not b.any()
    Ww, bw = layer.witness_params(rng)
    np.testing.assert_allclose(np.linalg.svd(Ww, compute_uv=False), 2.5, rtol=1e-12)  # an extreme point
    assert np.all(np.abs(bw) == 0.2)


def test_declaration_and_registry():
    assert lookup("spectral_dense") is SpectralDense
    with pytest.raises(DeclarationError):
        SpectralDense(3, 2, 1.0, 1.0, norm_ball=True)
    with pytest.raises(DeclarationError):
        SpectralDense(3, 2, 1.0, 1.0, squarings=0)
    with pytest.raises(DeclarationError):
        SpectralDense(3, 2, -1.0, 1.0)


# -- weight norms ------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices)
def test_weight_norms_of_given_weights_bound_the_exact_norms(spec):
    W = make_matrix(*spec)
    m, n = W.shape
    b = np.ldexp(np.linspace(-1, 1, m), spec[2])
    layer = SpectralDense(n, m, 1.0, 1.0)
    R, b_max, S, B, F = layer.weight_norms((W, b))
    assert spectral_at_most(W, S)
    assert Fraction(F) ** 2 >= sum(Fraction(float(v)) ** 2 for v in W.ravel())
    assert Fraction(R) ** 2 >= max(sum(Fraction(float(v)) ** 2 for v in row) for row in W)
    assert Fraction(B) ** 2 >= sum(Fraction(float(v)) ** 2 for v in b) and b_max >= np.abs(b).max()
    assert layer.weight_norms((W, b), rows=False)[0] == S


def test_declared_norms_and_the_same_k_as_a_frobenius_ball():
    """Over the set: R = S = r, F = sqrt(min(m, n)) r. K reads S only, so the spectral ball of radius r
    (which holds r times orthogonal matrices, Frobenius norm sqrt(rank) r) has the K of the Frobenius ball of radius r."""
    layer = SpectralDense(9, 4, 1.5, 0.25)
    R, b_max, S, B, F = layer.weight_norms(None)
    assert (R, b_max, S) == (1.5, 0.25, 1.5) and F >= 3.0 and B >= 0.5
    spectral = Sequential([SpectralDense(9, 4, 1.5, 0.25), Tanh(), SpectralDense(4, 3, 2.0, 0.25)], SoftmaxCrossEntropy())
    frobenius = Sequential([Dense(9, 4, 1.5, 0.25, norm_ball=True), Tanh(), Dense(4, 3, 2.0, 0.25, norm_ball=True)],
                           SoftmaxCrossEntropy())
    assert spectral.certified_bound().upper == frobenius.certified_bound().upper


# -- kernels, K and e ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("loss", "out"), LOSSES, ids=lambda v: getattr(v, "name", str(v)))
def test_kernels_match_finite_differences_and_a_per_example_loop(loss, out):
    rng = np.random.default_rng(0)
    model = Sequential([SpectralDense(4, 3, 1.2, 0.5, orthogonalize=2), Tanh(), SpectralDense(3, out, 0.9, 0.5)], loss,
                       input_norm_bound=1.5)
    params = [(W, rng.uniform(-0.5, 0.5, b.shape)) for W, b in (model.init(rng)[0], model.init(rng)[2])]
    params = [params[0], (), params[1]]
    x, y = model.clamp_inputs(box_inputs(model, rng, 9)), labels_for(loss, out, rng, 9)
    check_kernels(model, params, x, y)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.05, 3.0), st.floats(0.0, 2.0), st.floats(0.1, 3.0),
       st.floats(0.0, 1.0), st.integers(0, 10**6))
def test_forward_and_backward_bounds_hold_for_searched_points(n_in, n_out, wb, bb, xb, shrink, seed):
    """|z_j| <= unit, ||z|| <= norm, ||W^T d|| <= its bound, at extreme points of the spectral ball."""
    rng = np.random.default_rng(seed)
    layer = SpectralDense(n_in, n_out, wb, bb)
    norms = layer.weight_norms(None)
    inp = ActivationBound((n_in,), xb, xb)  # inputs in the ball of radius xb
    out = layer.forward_bound(inp, norms)
    W, b = layer.witness_params(rng)
    W = W * shrink
    x = rng.standard_normal((64, n_in))
    x *= xb / (np.linalg.norm(x, axis=1, keepdims=True) * (1 + 1e-12))
    z, _ = layer.forward((W, b), x)
    assert np.abs(z).max() <= out.computed_unit and exact_norms_within(z, out.computed_norm)
    d = rng.standard_normal((64, n_out))
    d /= np.linalg.norm(d, axis=1, keepdims=True) * 1.001
    back = layer.backward_bound(inp, DeltaBound((n_out,), 1.0), norms)
    assert exact_norms_within(layer.backward((W, b), x, None, d), back.norm + back.error)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(LOSSES) - 1), st.lists(st.integers(1, 5), min_size=0, max_size=2), st.floats(0.05, 3.0),
       st.floats(0.1, 3.0), st.booleans(), st.integers(0, 10**6))
def test_certified_k_is_never_below_searched_gradient_norms(li, widths, wb, radius, ball, seed):
    loss, out = LOSSES[li]
    sizes = [3, *widths, out]
    parts = []
    for i, o in itertools.pairwise(sizes):
        parts += [SpectralDense(i, o, wb, wb / 2), Tanh()]
    kwargs = {"input_norm_bound": radius} if ball else {"input_bound": radius}
    model = Sequential(parts[:-1], loss, label_bound=1.0, **kwargs)
    K = model.certified_bound().upper
    rng = np.random.default_rng(seed)
    best = 0.0
    for _ in range(12):
        params = extreme_params(model, rng, shrink=float(rng.choice([1.0, rng.uniform(0, 1)])))
        x, y = model.clamp_inputs(box_inputs(model, rng, 64)), labels_for(loss, out, rng, 64)
        best = max(best, worst_norm(model, params, x, y))
        assert model.certified_bound(params).upper >= worst_norm(model, params, x, y)
    assert best <= K
    bound = model.witness(model.certified_bound(), samples=256, seed=seed)
    assert 0 < bound.witness_value <= K


@pytest.mark.parametrize(("loss", "out"), LOSSES, ids=lambda v: getattr(v, "name", str(v)))
def test_computed_rows_are_within_the_forward_error_of_50_digit_gradients(loss, out):
    rng = np.random.default_rng(11 + out)
    model = Sequential([SpectralDense(10, 4, 3.0, 0.9), Tanh(), SpectralDense(4, out, 2.0, 0.9)], loss, input_norm_bound=2.0)
    params = model.init(rng)
    params = [(params[0][0], rng.uniform(-0.9, 0.9, 4)), (), (params[2][0] * 2, rng.uniform(-0.9, 0.9, out))]
    x = model.clamp_inputs(rng.uniform(-2, 2, (5, 10)))
    y = labels_for(loss, out, rng, 5)
    bound = model.certified_bound(params)
    assert 0 < bound.rounding <= model.certified_bound().rounding < math.inf
    for reverse in (None, lambda rows: False, lambda rows: True):
        original = dense_module._matmul
        try:
            if reverse is not None:
                dense_module._matmul = sequential_matmul(reverse)
            acts, deltas = model.deltas(params, x, y)
        finally:
            dense_module._matmul = original
        worst = max(distance(computed_row(model, acts, deltas, i), exact_row(model, params, x[i], y[i])) for i in range(5))
        assert worst <= bound.rounding < 1e-6


def test_a_spectral_k_is_close_to_the_worst_found():
    """The point of the layer: K over a spectral ball with inputs in an l2 ball, against the worst found."""
    model = Sequential([SpectralDense(8, 6, 1.0, 0.0), Tanh(), SpectralDense(6, 3, 1.0, 0.0)], SoftmaxCrossEntropy(),
                       input_norm_bound=1.0)
    bound = model.witness(model.certified_bound(), samples=2048, seed=1)
    assert bound.witness_value <= bound.upper <= 2.0 * bound.witness_value


# -- the l2-ball input declaration -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 40), st.floats(1e-6, 1e3), st.integers(-600, 300), st.integers(0, 10**6))
def test_clamp_inputs_lands_in_the_ball_and_the_box(d, radius, exponent, seed):
    rng = np.random.default_rng(seed)
    model = Sequential([Dense(d, 2, 1.0, 1.0), Identity()], SoftmaxCrossEntropy(), input_norm_bound=radius,
                       input_bound=2 * radius)
    x = np.ldexp(rng.standard_normal((16, d)), exponent)
    x[0] = math.inf
    clamped = model.clamp_inputs(x)
    assert np.all(np.abs(clamped) <= 2 * radius)
    assert exact_norms_within(clamped, radius)
    box = np.clip(x, -2 * radius, 2 * radius)
    inside = np.linalg.norm(box, axis=1) < radius * (1 - 1e-9)
    np.testing.assert_array_equal(clamped[inside], box[inside])  # rows inside the ball are untouched
    assert not np.shares_memory(clamped, x)


def test_ball_without_a_box_and_the_input_record():
    model = Sequential([Dense(16, 2, 1.0, 1.0), Identity()], SoftmaxCrossEntropy(), input_norm_bound=0.5)
    assert np.all(model.input_bound == 0.5)  # the box [-R, R] holds the ball
    assert model._input_record.norm == 0.5 and model._input_record.unit == 0.5
    boxed = Sequential([Dense(16, 2, 1.0, 1.0), Identity()], SoftmaxCrossEntropy(), input_bound=0.5)
    assert boxed._input_record.norm == 2.0  # the box's diagonal
    assert model.certified_bound().upper < boxed.certified_bound().upper
    assert "||x||_2 <= 0.5" in model.closed_form()
    plain = Sequential([Dense(16, 2, 1.0, 1.0), Identity()], SoftmaxCrossEntropy())
    assert np.all(plain.input_bound == 1.0) and plain.input_norm_bound is None  # the default box is unchanged
    x = np.linspace(-3, 3, 32).reshape(2, 16)
    np.testing.assert_array_equal(plain.clamp_inputs(x), np.clip(x, -1, 1))


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "1"])
def test_input_norm_bound_is_validated(bad):
    with pytest.raises(DeclarationError, match="input_norm_bound"):
        Sequential([Dense(3, 2), Identity()], SoftmaxCrossEntropy(), input_norm_bound=bad)


def test_projection_of_non_finite_entries_lands_inside_the_spectral_ball():
    """NaN passed the old test (a NaN spectral bound is not above r) and stayed; inf times a zero factor is NaN."""

    layer = SpectralDense(3, 2, 1.0, 0.5)
    W = np.array([[np.nan, np.inf, 1.0], [2.0, -np.inf, 0.5]])
    b = np.array([np.nan, np.inf])
    PW, Pb = layer.project(W, b)
    assert np.isfinite(PW).all() and np.isfinite(Pb).all() and np.abs(Pb).max() <= 0.5
    assert spectral_at_most(PW, 1.0)  # exactly, in rationals
