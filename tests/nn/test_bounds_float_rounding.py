"""Certified bounds with the float-only outward rounding against the same bounds with exact rational rounding.

``mul_up``, ``div_up`` and ``sqrt_up`` decide their outward step from TwoProduct (rounding.py)
instead of a ``Fraction``. Forcing the exact comparison everywhere (the sign helpers answer
None, so every product, quotient and root is checked in rationals, as before) must give the
same bounds, and in particular never larger ones than the fast path (the fast K must be >= the
exact one): K, per-layer terms, the forward error and the clipping norm's errors, for the global
bound, the bound at given weights and the cached per-step bound, on dense, convolutional,
embedding, group-sort and spectral models, at weights from subnormal to large.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from opendp_hybridad.analysis import rounding as rd
from opendp_hybridad.nn import (
    MLP,
    Dense,
    Flatten,
    Identity,
    Logistic,
    MeanSquaredError,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    TemperedSigmoid,
)
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d
from opendp_hybridad.nn.parts.embedding import Embedding
from opendp_hybridad.nn.parts.groupsort import GroupSort, MaxMin
from opendp_hybridad.nn.parts.lipschitz import SpectralDense
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d


def _models() -> dict[str, object]:
    out: dict[str, object] = {
        "bench-mlp-64-128-10": MLP([Dense(64, 128, 0.05, 0.05, norm_ball=True), Dense(128, 10, 0.05, 0.05, norm_ball=True)],
                                   [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1 / 8),
        "mlp-sigmoid-mse": MLP([Dense(4, 5, 0.8, 0.5), Dense(5, 2, 0.8, 0.5)], [Sigmoid(), Identity()], MeanSquaredError(),
                               input_bound=np.array([1.5, 1.0, 0.5, 1.5])),
        "mlp-tempered-logistic": MLP([Dense(4, 5, 0.8, 0.5, norm_ball=True), Dense(5, 1, 0.8, 0.5, norm_ball=True)],
                                     [TemperedSigmoid(3.0, 0.5, 1.2), Identity()], Logistic()),
        "cnn": Sequential([Conv2d(1, 3, 3, padding=1, weight_bound=1.0, bias_bound=0.5, norm_ball=True), Tanh(), AvgPool2d(2),
                           Flatten(), Dense(12, 10, 2.0, 0.5, norm_ball=True)], SoftmaxCrossEntropy(), input_bound=1.0,
                          input_shape=(1, 4, 4)),
        "embedding-conv1d": Sequential([Embedding(7, 3, weight_bound=0.5, norm_ball=True, channels_first=True),
                                        Conv1d(3, 2, 3, padding=1, weight_bound=0.5, bias_bound=0.25), Tanh(), AvgPool1d(2),
                                        Flatten(), Dense(4, 3, 0.5, 0.25)], SoftmaxCrossEntropy(), input_bound=6.0,
                                       input_shape=(4,)),
        "groupsort": Sequential([Dense(4, 6, 1.0, 0.25, norm_ball=True), GroupSort(2), Dense(6, 6, 1.0, 0.25, norm_ball=True),
                                 MaxMin(), Flatten(), Dense(6, 3, 1.0, 0.25, norm_ball=True)], SoftmaxCrossEntropy(),
                                input_bound=1.0),
        "spectral": Sequential([SpectralDense(4, 5, 1.0, 0.25), Tanh(), SpectralDense(5, 3, 1.0, 0.25)], SoftmaxCrossEntropy(),
                               input_bound=1.0),
    }
    return out


MODELS = _models()


def _fields(bound) -> list[float]:
    return [float(bound.upper), *map(float, bound.per_layer), float(bound.rounding), float(bound.norm_relative_error),
            float(bound.norm_absolute_error)]


def _weights(model, seed: int, scale: float):
    rng = np.random.default_rng(seed)
    params = model.init(rng)
    return [tuple(np.asarray(p, dtype=np.float64) * scale for p in ps) for ps in params]


def _all_bounds(model, params_list) -> list[list[float]]:
    out = [_fields(model.certified_bound())]
    for params in params_list:
        out += [_fields(model.certified_bound(params)), _fields(model.step_bound(params)), _fields(model.rounding_bound(params))]
    return out


def _exact_rounding(monkeypatch) -> None:
    """Every product, quotient and root compared in exact rationals (the former implementation); caches emptied."""
    for name in ("_product_error_sign", "_quotient_error_sign", "_square_excess_sign"):
        monkeypatch.setattr(rd, name, lambda *args: None)
    for cached in (rd.underflow_allowance, rd.root_up, rd.gamma_factor_up, rd._float_norm_constants, rd.gamma):
        cached.cache_clear()


@pytest.mark.parametrize("name", list(MODELS))
def test_fast_bounds_equal_the_exact_rational_ones_and_are_never_below(name, monkeypatch):
    scales = [1.0, 0.3, 1e-3, 7.0, 1e-150, 2.0**-1070]
    fresh = _models()[name]  # a model of its own: the step-bound cache must be computed, not read
    params_list = [_weights(fresh, seed, s) for seed, s in enumerate(scales)]
    fast = _all_bounds(fresh, params_list)
    exact_model = _models()[name]
    with monkeypatch.context() as m:
        _exact_rounding(m)
        exact = _all_bounds(exact_model, params_list)
    for f, e in zip(fast, exact, strict=True):
        assert all(a >= b or (math.isnan(a) and math.isnan(b)) for a, b in zip(f, e, strict=True))
        assert f == e or all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(f, e, strict=True))


def test_the_exact_path_is_really_exact_in_this_test(monkeypatch):
    """The forcing above reaches the rational comparison (a product that needs a step still gets it)."""
    a = 1.0 + 2.0**-52
    with monkeypatch.context() as m:
        _exact_rounding(m)
        assert rd._product_error_sign(a, a, a * a) is None
        assert rd.mul_up(a, a) == math.nextafter(a * a, 2.0)
        assert rd.sqrt_up(3.0) == math.nextafter(math.sqrt(3.0), 2.0)
