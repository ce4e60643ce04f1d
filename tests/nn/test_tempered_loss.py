"""TemperedCrossEntropy (nn/layers.py): tau CE(z / tau), its delta, the delta's norm bound from the logits' range,
its Lipschitz constant and its float error, against 50-digit mpmath and adversarial search."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from helpers.layer_checks import box_inputs, check_kernels, worst_norm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.layers import TemperedCrossEntropy
from opendp_hybridad.nn.parts.lipschitz import SpectralDense
from opendp_hybridad.nn.sequential import Sequential

mpmath.mp.dps = 50


def mp_delta(z, y, tau):
    v = [mpmath.mpf(float(a)) / mpmath.mpf(tau) for a in z]
    top = max(v)
    e = [mpmath.exp(a - top) for a in v]
    total = mpmath.fsum(e)
    d = [a / total for a in e]
    d[int(y)] -= 1
    return d


def mp_value(z, y, tau):
    t = mpmath.mpf(tau)
    return t * mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(a)) / t) for a in z)) - mpmath.mpf(float(z[int(y)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 12), st.floats(0.01, 100.0), st.floats(0.0, 60.0), st.integers(0, 10**6))
def test_delta_and_value_against_50_digits_and_the_stated_error(m, tau, M, seed):
    rng = np.random.default_rng(seed)
    loss = TemperedCrossEntropy(tau)
    z = rng.uniform(-M, M, (8, m))
    z[0] = np.where(np.arange(m) % 2, M, -M)  # a corner
    y = rng.integers(0, m, 8)
    d = loss.delta(z, y)
    err = loss.delta_error(m, M, 1.0)
    bound = loss.delta_norm_bound(m, M, 1.0)
    for i in range(8):
        exact = mp_delta(z[i], y[i], tau)
        assert float(mpmath.sqrt(mpmath.fsum((mpmath.mpf(float(a)) - b) ** 2 for a, b in zip(d[i], exact, strict=True)))) <= err
        assert float(mpmath.sqrt(mpmath.fsum(b**2 for b in exact))) <= bound
        assert abs(loss.value(z[i:i + 1], y[i:i + 1])[0] - float(mp_value(z[i], y[i], tau))) <= 1e-9 * max(1.0, M)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 12), st.floats(0.05, 20.0), st.floats(0.0, 8.0), st.integers(0, 10**6))
def test_norm_bound_covers_an_adversarial_search_and_is_near_it(m, tau, M, seed):
    """The worst delta over the logit box: y at -M and one other class at +M (the rest at -M) is the case
    the proof's two inequalities are tight for in the limit; a random search must not exceed the bound."""
    rng = np.random.default_rng(seed)
    loss = TemperedCrossEntropy(tau)
    bound = loss.delta_norm_bound(m, M, 1.0)
    z = rng.choice([-M, M], (256, m)) * np.where(rng.random((256, m)) < 0.3, rng.random((256, m)), 1.0)
    y = rng.integers(0, m, 256)
    found = float(np.linalg.norm(loss.delta(z, y), axis=1).max())
    worst = np.full((1, m), -M)
    worst[0, 1] = M
    found = max(found, float(np.linalg.norm(loss.delta(worst, np.array([0])), axis=1)[0]))
    assert found <= bound * (1 + 1e-12)
    assert bound <= math.sqrt(2) * (1 + 1e-12)
    # near-attained: the bound q^2 + q P against that corner's exact value
    assert bound <= found + 0.5 * (1 - 1 / m) + 1e-9


def test_small_logit_range_gives_nearly_the_uniform_norm():
    loss = TemperedCrossEntropy(64.0)
    assert loss.delta_norm_bound(10, 0.5, 1.0) <= math.sqrt(0.9) * 1.01
    assert TemperedCrossEntropy(1.0).delta_norm_bound(10, 1e6, 1.0) == pytest.approx(math.sqrt(2), rel=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 10), st.floats(0.05, 20.0), st.integers(0, 10**6))
def test_delta_is_lipschitz_with_the_stated_constant(m, tau, seed):
    rng = np.random.default_rng(seed)
    loss = TemperedCrossEntropy(tau)
    z1 = rng.normal(0, 3 * tau, (64, m))
    z2 = z1 + rng.normal(0, 0.1 * tau, (64, m))
    y = rng.integers(0, m, 64)
    moved = np.linalg.norm(loss.delta(z1, y) - loss.delta(z2, y), axis=1)
    assert np.all(moved <= loss.delta_lipschitz() * np.linalg.norm(z1 - z2, axis=1) * (1 + 1e-9) + 1e-14)


def test_temperature_one_is_the_softmax_cross_entropy():
    rng = np.random.default_rng(1)
    z, y = rng.normal(0, 4, (16, 5)), rng.integers(0, 5, 16)
    np.testing.assert_allclose(TemperedCrossEntropy(1.0).delta(z, y), SoftmaxCrossEntropy().delta(z, y), rtol=0, atol=1e-16)
    np.testing.assert_allclose(TemperedCrossEntropy(1.0).value(z, y), SoftmaxCrossEntropy().value(z, y), rtol=1e-14)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_temperature_is_validated(bad):
    with pytest.raises(DeclarationError):
        TemperedCrossEntropy(bad)


def test_kernels_and_k_in_a_lipschitz_model():
    rng = np.random.default_rng(2)
    model = Sequential([SpectralDense(6, 5, 2.0, 0.0, orthogonalize=1), Tanh(), SpectralDense(5, 4, 2.0, 0.0)],
                       TemperedCrossEntropy(4.0), input_norm_bound=1.0)
    params = model.init(rng)
    x, y = model.clamp_inputs(box_inputs(model, rng, 9)), rng.integers(0, 4, 9)
    check_kernels(model, params, x, y)
    K = model.certified_bound().upper
    best = 0.0
    for _ in range(20):
        ps = [tuple(p.witness_params(rng, s)) for p, s in zip(model.parts, model._shapes[:-1], strict=True)]
        xs = model.clamp_inputs(box_inputs(model, rng, 256))
        best = max(best, worst_norm(model, ps, xs, rng.integers(0, 4, 256)))
    assert best <= K <= 2.0 * best
    assert "tau = 4" in model.closed_form()
