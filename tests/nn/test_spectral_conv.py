"""The Lipschitz convolutions (nn/parts/spectral_conv.py): W_mat in a spectral ball, kept there by the certified projection.

References independent of the code under test: ``||W_mat||_2 <= r`` as ``r^2 I - W^T W`` positive
semidefinite in exact rationals; K against an adversarial L-BFGS-B search over weights
``r U diag(s) V^T`` (``s`` in ``[0, 1]``), inputs in the box and every label; e against 50-digit
rows (helpers/conv_reference.py) under three summation orders; exact-rational layer errors.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from helpers.conv_reference import as_fractions, assert_rows_within_e, brute_conv, brute_grads, l2_diff, summation_order
from helpers.layer_checks import box_inputs, check_kernels, extreme_params, flat, spectral_at_most, unflat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import SoftmaxCrossEntropy, Tanh, TemperedCrossEntropy
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.parts.lipschitz import SpectralDense, spectral_norm_up
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d
from opendp_hybridad.nn.parts.spectral_conv import SpectralConv1d, SpectralConv2d
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.registry import lookup
from opendp_hybridad.nn.sequential import Sequential


def mat(layer, W: np.ndarray) -> np.ndarray:
    return np.asarray(W).reshape(layer.out_channels, -1)


CASES = [
    (SpectralConv1d(2, 3, 3, weight_bound=0.8, bias_bound=0.3), (2, 7)),
    (SpectralConv1d(1, 2, 4, stride=3, padding=2, weight_bound=1.5), (1, 9)),
    (SpectralConv2d(2, 3, 3, padding=1, weight_bound=2.0, bias_bound=0.5), (2, 4, 5)),
    (SpectralConv2d(3, 8, 3, stride=2, padding=1, weight_bound=0.7), (3, 4, 4)),  # the ghost norm
]


# -- the weight set ------------------------------------------------------------------------------------------
def test_declaration_and_registry():
    assert lookup("spectral_conv1d") is SpectralConv1d and lookup("spectral_conv2d") is SpectralConv2d
    assert issubclass(SpectralConv1d, Conv1d) and issubclass(SpectralConv2d, Conv2d)
    layer = SpectralConv2d(2, 3, 3, padding=1, weight_bound=1.5)
    assert layer.nd == 2 and layer.kernel_size == (3, 3) and "||W_1||_2 <= 1.5" in layer.closed_form(1)
    assert layer.describe().startswith("spectral_conv2d")
    for bad in ({"norm_ball": True}, {"squarings": 0}, {"orthogonalize": -1}, {"weight_bound": -1.0}):
        with pytest.raises(DeclarationError):
            SpectralConv1d(1, 2, 3, **bad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(1, 2, 3), (2, 3, 2), (3, 2, (2, 2)), (1, 4, (1, 3))]), st.integers(-400, 200),
       st.floats(1e-3, 10.0), st.integers(0, 3), st.sampled_from(["gauss", "rank1"]), st.integers(0, 10**6))
def test_projection_lands_inside_the_spectral_ball(spec, exponent, radius, orthogonalize, kind, seed):
    C, out, k = spec
    layer = (SpectralConv1d if isinstance(k, int) else SpectralConv2d)(C, out, k, weight_bound=radius, bias_bound=0.5,
                                                                        orthogonalize=orthogonalize)
    rng = np.random.default_rng(seed)
    shape = layer.param_shapes(())[0]
    W = rng.standard_normal(shape)
    if kind == "rank1":
        W = np.outer(rng.standard_normal(out), rng.standard_normal(layer.patch_size)).reshape(shape)
    W = np.ldexp(W, exponent)
    b = np.linspace(-2, 2, out)
    W2, b2 = layer.project_params((W, b))
    assert W2.shape == shape and spectral_at_most(mat(layer, W2), radius)
    assert np.abs(b2).max() <= 0.5
    if not orthogonalize and spectral_norm_up(mat(layer, W)) <= radius:
        np.testing.assert_array_equal(W2, W)  # inside: unchanged
    # the update's projection, and its plain step
    step = rng.standard_normal(W.size + out) * 10
    new = layer.update((W2, b2), step, 1.0, project=True)
    assert spectral_at_most(mat(layer, new[0]), radius) and np.abs(new[1]).max() <= 0.5
    raw = layer.update((W2, b2), step, 1.0, project=False)
    np.testing.assert_array_equal(raw[0], W2 - step[:W.size].reshape(shape))


def test_non_finite_weights_project_inside_and_init_witnesses():
    rng = np.random.default_rng(1)
    layer = SpectralConv2d(2, 3, 2, weight_bound=1.25, bias_bound=0.2)
    W = rng.standard_normal((3, 2, 2, 2))
    W[0, 0, 0, 0], W[1, 1, 1, 1] = math.nan, math.inf
    W2, _ = layer.project_params((W, np.zeros(3)))
    assert np.isfinite(W2).all() and spectral_at_most(mat(layer, W2), 1.25)
    Wi, bi = layer.init(rng)
    assert spectral_at_most(mat(layer, Wi), 1.25) and not bi.any()
    Ww, bw = layer.witness_params(rng)
    np.testing.assert_allclose(np.linalg.svd(mat(layer, Ww), compute_uv=False), 1.25, rtol=1e-12)  # an extreme point
    assert np.all(np.abs(bw) == 0.2)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(CASES) - 1), st.integers(-300, 300), st.integers(0, 10**6))
def test_weight_norms_bound_the_exact_norms(case, exponent, seed):
    layer, _ = CASES[case]
    rng = np.random.default_rng(seed)
    W, b = np.ldexp(rng.standard_normal(layer.param_shapes(())[0]), exponent), rng.standard_normal(layer.out_channels)
    R, b_max, F, B, S = layer.weight_norms((W, b))
    Wm = mat(layer, W)
    assert spectral_at_most(Wm, S) and S <= F
    assert Fraction(F) ** 2 >= sum(Fraction(float(v)) ** 2 for v in Wm.ravel())
    assert Fraction(R) ** 2 >= max(sum(Fraction(float(v)) ** 2 for v in row) for row in Wm) and R <= S
    assert Fraction(B) ** 2 >= sum(Fraction(float(v)) ** 2 for v in b) and b_max >= np.abs(b).max()
    assert layer.weight_norms((W, b), rows=False)[0] == S
    # over the declared set
    r = layer.weight_bound
    R, b_max, F, B, S = layer.weight_norms(None)
    assert R == S == r
    assert math.sqrt(min(layer.out_channels, layer.patch_size)) * r <= F


def test_conv_bound_maps_reduce_to_the_convolution_at_s_equal_f():
    """With S = F the spectral maps are the convolution's, bit for bit (the operator_norm hook changes nothing for Conv)."""
    rng = np.random.default_rng(2)
    for layer, shape in CASES:
        plain = (Conv1d if layer.nd == 1 else Conv2d)(layer.in_channels, layer.out_channels, layer.kernel_size,
                                                      stride=layer.stride, padding=layer.padding)
        W, b = layer.witness_params(rng)
        norms = plain.weight_norms((W * 3, b))
        inp = ActivationBound(shape, 2.5, 1.0, 1e-9)
        d = DeltaBound(plain.output_shape(shape), 1.5, 1e-10)
        spectral_norms = (*norms, norms[2])
        assert layer.forward_bound(inp, spectral_norms) == plain.forward_bound(inp, norms)
        assert layer.backward_bound(inp, d, spectral_norms) == plain.backward_bound(inp, d, norms)
        assert layer.gradient_bound(inp, d, spectral_norms) == plain.gradient_bound(inp, d, norms)
        # and a smaller S gives smaller exact terms
        smaller = (*norms, norms[2] / 2)
        assert layer.forward_bound(inp, smaller).norm < plain.forward_bound(inp, norms).norm
        assert layer.backward_bound(inp, d, smaller).norm < plain.backward_bound(inp, d, norms).norm


# -- pinned Conv numbers: HEAD's conv.py gave exactly these (the hook leaves Conv bit for bit identical) -----------
# (the norm-ball rows at the initial weights moved in their last bits when the ball projection's gamma factor
# moved onto the root, which the audit attack_dense_update.py asked for: init projects onto the ball)
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


PINNED = {
    (False, False): ["0x1.5f77b4ecae094p+3", "0x1.1d8d6024faccdp-38", "0x1.5dc101900628fp+2", "0x1.a13c801eb68e1p-40"],
    (False, True): ["0x1.fcc6bb1f2a8c0p+1", "0x1.e1a9a2d16cbd5p-41", "0x1.c26f4e9918482p+1", "0x1.c3aeed8700090p-41"],
    (True, False): ["0x1.650d8ae46c9e8p+4", "0x1.604f2a7537ccdp-37", "0x1.386c9275de363p+3", "0x1.875b41c5626cfp-39"],
    (True, True): ["0x1.80f419b6471e3p+2", "0x1.84853849b5969p-40", "0x1.6d3bf986ec988p+2", "0x1.74b0dba5c214ep-40"],
}


@pytest.mark.parametrize(("two_d", "norm_ball"), list(itertools.product([False, True], repeat=2)))
def test_conv_numbers_are_unchanged(two_d, norm_ball):
    model = small_cnn(two_d, norm_ball=norm_ball)
    rng = np.random.default_rng(3)
    params = model.init(rng)
    got = []
    for p in (None, params):
        bound = model.certified_bound(p)
        got += [bound.upper.hex(), bound.rounding.hex()]
    assert got == PINNED[(two_d, norm_ball)]


# -- K: the test model ------------------------------------------------------------------------------------------
def spectral_cnn(r: float = 1.0, tau: float | None = 4.0) -> Sequential:
    loss = TemperedCrossEntropy(tau) if tau else SoftmaxCrossEntropy()
    return Sequential([SpectralConv2d(1, 3, 3, padding=1, weight_bound=r, bias_bound=0.25), Tanh(), AvgPool2d(2), Flatten(),
                       SpectralDense(12, 3, r, 0.25)], loss, input_bound=1.0, input_shape=(1, 4, 4))


def frobenius_cnn(r: float = 1.0, tau: float | None = 4.0) -> Sequential:
    loss = TemperedCrossEntropy(tau) if tau else SoftmaxCrossEntropy()
    return Sequential([Conv2d(1, 3, 3, padding=1, weight_bound=r, bias_bound=0.25, norm_ball=True), Tanh(), AvgPool2d(2),
                       Flatten(), Dense(12, 3, r, 0.25, norm_ball=True)], loss, input_bound=1.0, input_shape=(1, 4, 4))


def _orthonormal(A: np.ndarray) -> np.ndarray:
    Q, R = np.linalg.qr(A)
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def _searched_params(model: Sequential, z: np.ndarray):
    """Weights ``r U diag(s) V^T`` (U, V from QR of free matrices, ``s`` in [0, 1]) and biases in their box, projected
    by the layers' certified projection (so proven inside the declared set), from a flat search vector."""
    params, k = [], 0
    for part in model.parts:
        if not isinstance(part, (SpectralConv2d, SpectralDense)):
            params.append(())
            continue
        m = part.out_channels if isinstance(part, SpectralConv2d) else part.out_features
        n = part.patch_size if isinstance(part, SpectralConv2d) else part.in_features
        q = min(m, n)
        U = _orthonormal(z[k:k + m * q].reshape(m, q) + 1e-3 * np.eye(m, q))
        k += m * q
        V = _orthonormal(z[k:k + n * q].reshape(n, q) + 1e-3 * np.eye(n, q))
        k += n * q
        s = z[k:k + q]
        k += q
        b = z[k:k + m]
        k += m
        W = part.weight_bound * (U * s) @ V.T
        shape = part.param_shapes(model.input_shape)[0]
        params.append(tuple(part.project_params((W.reshape(shape), b))))
    return params, k


def _search_space(model: Sequential):
    bounds = []
    for part in model.parts:
        if not isinstance(part, (SpectralConv2d, SpectralDense)):
            continue
        m = part.out_channels if isinstance(part, SpectralConv2d) else part.out_features
        n = part.patch_size if isinstance(part, SpectralConv2d) else part.in_features
        q = min(m, n)
        bounds += [(None, None)] * (m * q + n * q) + [(0.0, 1.0)] * q + [(-part.bias_bound, part.bias_bound)] * m
    return bounds


def adversarial_search(model: Sequential, starts: int, seed: int, maxiter: int = 40) -> float:
    """The largest per-example gradient norm L-BFGS-B finds over weights, the input box and every label."""
    rng = np.random.default_rng(seed)
    wbounds = _search_space(model)
    box = np.broadcast_to(np.asarray(model.input_bound, dtype=float), model.input_shape).ravel()
    bounds = wbounds + [(-float(v), float(v)) for v in box]
    best = 0.0
    for _, label in itertools.product(range(starts), range(3)):
        z0 = np.array([rng.uniform(lo, hi) if lo is not None else rng.standard_normal() for lo, hi in bounds])
        y = np.array([label])

        def objective(z, y=y):
            params, k = _searched_params(model, z)
            return -float(model.per_example_norms(params, z[k:].reshape(1, *model.input_shape), y)[0])

        res = minimize(objective, z0, method="L-BFGS-B", bounds=bounds, options={"maxiter": maxiter})
        for z in (z0, res.x):
            params, k = _searched_params(model, z)
            x = np.clip(z[k:], -box, box).reshape(1, *model.input_shape)
            norm = float(model.per_example_norms(params, x, y)[0])
            assert norm <= model.certified_bound(params).upper  # the per-step bound at these public weights
            best = max(best, norm)
    return best


@pytest.mark.parametrize("tau", [4.0, None])
def test_certified_K_covers_an_adversarial_search(tau):
    model = spectral_cnn(tau=tau)
    K = model.certified_bound().upper
    found = adversarial_search(model, starts=1, seed=5, maxiter=20)
    assert 0 < found <= K
    witnessed = model.witness(model.certified_bound(), samples=256, seed=5, labels=np.arange(3)).witness_value
    assert 0 < witnessed <= K


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_certified_K_covers_drawn_points_of_the_set(data):
    """Hypothesis over singular values on the ball's boundary and inside, biases, inputs (corners too) and labels."""
    model = spectral_cnn(r=1.5, tau=2.0)
    K = model.certified_bound().upper
    space = _search_space(model)
    z = np.array([data.draw(st.floats(-3, 3)) if lo is None else data.draw(st.sampled_from([lo, hi]) | st.floats(lo, hi))
                  for lo, hi in space])
    params, _ = _searched_params(model, z)
    x = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]) | st.floats(-1.0, 1.0), min_size=16, max_size=16)))
    y = np.array([data.draw(st.integers(0, 2))])
    norm = model.per_example_norms(params, x.reshape(1, 1, 4, 4), y)[0]
    assert norm <= model.certified_bound(params).upper <= K


@pytest.mark.parametrize("tau", [4.0, None])
def test_K_against_the_frobenius_ball(tau):
    """Over the declared set K reads S = r where the Frobenius-ball convolution of the same radius reads F = r: the
    same K, for a set that holds sqrt(rank) times larger Frobenius norms (rank 3 here); the Frobenius ball that
    contains the spectral one (radius sqrt(rank) r) has a strictly larger K. At given weights of rank > 1, S < F."""
    spectral, frobenius = spectral_cnn(tau=tau), frobenius_cnn(tau=tau)
    K = spectral.certified_bound().upper
    assert frobenius.certified_bound().upper == K
    containing = Sequential([Conv2d(1, 3, 3, padding=1, weight_bound=up_sqrt(3), bias_bound=0.25, norm_ball=True), Tanh(),
                             AvgPool2d(2), Flatten(), Dense(12, 3, up_sqrt(3), 0.25, norm_ball=True)],
                            spectral.loss, input_bound=1.0, input_shape=(1, 4, 4))
    assert containing.certified_bound().upper > K
    # at given public weights (r times an orthogonal W_mat: rank 3, F = sqrt(3) r): the spectral K is the smaller
    rng = np.random.default_rng(4)
    params = extreme_params(spectral, rng)
    conv, dense = spectral.parts[0], spectral.parts[4]
    S, F = conv.weight_norms(params[0])[4], conv.weight_norms(params[0])[2]
    assert S < 1.001 and F > 1.7
    assert dense.weight_norms(params[4])[2] < 1.001
    # the Frobenius-ball model of radius 2 holds these weights (F = sqrt(3) < 2) and reads F
    assert spectral.certified_bound(params).upper < frobenius_cnn(r=2.0, tau=tau).certified_bound(params).upper


def up_sqrt(v: float) -> float:
    return math.nextafter(math.sqrt(v), math.inf)


# -- kernels and e ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [4.0, None])
def test_shared_kernel_checks(tau):
    model = spectral_cnn(tau=tau)
    rng = np.random.default_rng(11)
    params = extreme_params(model, rng, shrink=0.7)
    x = box_inputs(model, rng, 7)
    check_kernels(model, params, x, rng.integers(0, 3, 7))
    v = flat(params)
    np.testing.assert_array_equal(flat(unflat(model, v)), v)


def tiny_spectral_cnn(weight_bound: float) -> Sequential:
    """The shape test_conv's 50-digit loops read: conv1d(1 -> 2, k 3, pad 1) on length 6, tanh, avgpool 2, dense 6 -> 3."""
    return Sequential([SpectralConv1d(1, 2, 3, padding=1, weight_bound=weight_bound, bias_bound=0.25), Tanh(), AvgPool1d(2),
                       Flatten(), SpectralDense(6, 3, weight_bound, 0.25)], SoftmaxCrossEntropy(), input_bound=1.0,
                      input_shape=(1, 6))


@pytest.mark.parametrize("order", ["numpy", "reverse", "pairwise"])
def test_model_forward_error_covers_mpmath_rows(order):
    """Every computed row within e of the 50-digit one, in three summation orders; large nearly cancelling taps."""
    model = tiny_spectral_cnn(40.0)
    rng = np.random.default_rng(9)
    W1 = np.array([[[1.0, -0.999999, 0.5]], [[0.3, 0.7, -0.2]]]) * 30.0
    W1 = model.parts[0].project_params((W1, np.array([0.25, -0.25])))
    params = [W1, (), (), (), tuple(model.parts[4].witness_params(rng))]
    e = model.certified_bound(params).rounding
    e_global = model.certified_bound().rounding
    assert 0 < e <= e_global < math.inf
    x = rng.uniform(-1, 1, (4, 1, 6))
    y = rng.integers(0, 3, 4)
    assert_rows_within_e(model, params, x, y, e, order)


@pytest.mark.parametrize("order", ["numpy", "reverse", "pairwise"])
@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_layer_bounds_cover_exact_rationals(order, layer, shape):
    """Extreme points of the spectral ball, exact input and delta: ||z||, ||dx|| within their norms plus errors,
    the computed output, input delta and row within the stated errors (exact rationals)."""
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (2, *shape))
    W, b = layer.witness_params(rng)
    norms = layer.weight_norms((W, b))
    xnorm = float(np.sqrt((x.reshape(2, -1) ** 2).sum(axis=1)).max()) * 1.0001
    inp = ActivationBound(shape, xnorm, 1.0, 0.0)
    with summation_order(order):
        z, cache = layer.forward((W, b), x)
        delta = rng.standard_normal(z.shape)
        gx = layer.backward((W, b), x, cache, delta)
        gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
    dnorm = float(np.sqrt((delta.reshape(2, -1) ** 2).sum(axis=1)).max()) * 1.0001
    for ns in (norms, layer.weight_norms(None)):
        out = layer.forward_bound(inp, ns)
        back = layer.backward_bound(inp, DeltaBound(z.shape[1:], dnorm, 0.0), ns)
        grad = layer.gradient_bound(inp, DeltaBound(z.shape[1:], dnorm, 0.0), ns)
        Wf, bf, xf, df = as_fractions(W), as_fractions(b), as_fractions(x), as_fractions(delta)
        ez = brute_conv(xf, Wf, bf, layer.stride, layer.padding)
        eW, eb, ex = brute_grads(xf, df, Wf, layer.stride, layer.padding)
        for i in range(2):
            assert sum(v * v for v in ez[i].ravel()) <= Fraction(out.norm) ** 2
            assert sum(v * v for v in ex[i].ravel()) <= Fraction(back.norm) ** 2
            assert l2_diff(z[i], ez[i]) <= out.error
            assert l2_diff(gx[i], ex[i]) <= back.error
            row = l2_diff(np.concatenate([gW[i].ravel(), gb[i]]), np.concatenate([eW[i].ravel(), eb[i]]))
            assert row <= grad.error
            assert np.abs(z[i]).max() <= out.computed_unit


def test_torch_bridge_builds_them_as_convolutions():
    """to_torch's registry by part kind: the spectral kinds use the Conv1d/Conv2d builder (torch itself is optional)."""
    from opendp_hybridad.nn import torch_bridge

    assert torch_bridge._TO_TORCH["spectral_conv1d"] is torch_bridge._TO_TORCH["conv1d"]
    assert torch_bridge._TO_TORCH["spectral_conv2d"] is torch_bridge._TO_TORCH["conv2d"]
