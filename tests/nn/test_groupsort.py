"""GroupSort / MaxMin against a brute-force sort per group, central differences away from ties, the exact
(permutation) bounds against hypothesis search in a small Lipschitz model, and the infinite backward error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.layer_checks import check_kernels, extreme_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import SoftmaxCrossEntropy
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.flatten import Flatten
from opendp_hybridad.nn.parts.groupsort import GroupSort, MaxMin
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound
from opendp_hybridad.nn.sequential import Sequential

CASES = [(GroupSort(2), (6,)), (GroupSort(3), (6,)), (MaxMin(), (4, 3)), (GroupSort(4), (8, 2, 2)), (GroupSort(1), (3,))]


def brute_sort(layer: GroupSort, x: np.ndarray) -> np.ndarray:
    out = x.copy()
    g = layer.group_size
    for b in range(x.shape[0]):
        for start in range(0, x.shape[1], g):
            for rest in np.ndindex(x.shape[2:]):
                values = sorted((x[(b, start + i, *rest)] for i in range(g)), reverse=layer.descending)
                for i, v in enumerate(values):
                    out[(b, start + i, *rest)] = v
    return out


@pytest.mark.parametrize(("layer", "shape"), CASES)
def test_forward_and_central_differences(layer, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, *shape))  # ties have probability 0
    out, cache = layer.forward((), x)
    assert np.array_equal(out, brute_sort(layer, x))
    r = rng.standard_normal(out.shape)
    gx = layer.backward((), x, cache, r)

    def losses(x_):
        return (layer.forward((), x_)[0] * r).reshape(3, -1).sum(axis=1)

    h = 1e-7  # well below the smallest gap between two units of a group here
    for idx in np.ndindex(shape):
        xp, xm = x.copy(), x.copy()
        xp[(slice(None), *idx)] += h
        xm[(slice(None), *idx)] -= h
        np.testing.assert_allclose(gx[(slice(None), *idx)], (losses(xp) - losses(xm)) / (2 * h), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("layer", "shape"), CASES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_permutation_bounds(layer, shape, data):
    """Norms and per-entry magnitudes are kept, and sorting is 1-Lipschitz: the forward error passes through."""
    elems = st.floats(-1e3, 1e3) | st.sampled_from([0.0, 1.0, -1.0])  # ties are likely
    x = data.draw(arrays(np.float64, (1, *shape), elements=elems))
    y = x + data.draw(arrays(np.float64, (1, *shape), elements=st.floats(-1.0, 1.0)))
    out_x, cache = layer.forward((), x)
    out_y, _ = layer.forward((), y)
    norm_x = float(np.sqrt((x ** 2).sum()))
    assert math.isclose(float(np.sqrt((out_x ** 2).sum())), norm_x, rel_tol=1e-15, abs_tol=0.0) or norm_x == 0
    assert float(np.sqrt(((out_y - out_x) ** 2).sum())) <= float(np.sqrt(((y - x) ** 2).sum())) * (1 + 1e-12)
    rec = layer.forward_bound(ActivationBound(shape, 2.0, 1.0, 0.5, 1.5), ())
    assert (rec.norm, rec.unit, rec.error, rec.computed_unit) == (2.0, 1.0, 0.5, 1.5)
    delta = data.draw(arrays(np.float64, (1, *shape), elements=st.floats(-1e3, 1e3)))
    gx = layer.backward((), x, cache, delta)
    assert sorted(gx.ravel()) == sorted(delta.ravel())  # a permutation of the delta


def test_backward_error_infinite_unless_input_exact():
    layer = GroupSort(2)
    assert layer.backward_bound(ActivationBound((4,), 1.0, 1.0, 1e-16), DeltaBound((4,), 1.0, 0.0), ()).error == math.inf
    exact = layer.backward_bound(ActivationBound((4,), 1.0, 1.0, 0.0), DeltaBound((4,), 1.0, 0.25), ())
    assert (exact.norm, exact.error) == (1.0, 0.25)


def test_rounding_across_a_tie_changes_the_delta_by_order_one():
    """Why the error is infinite: two inputs one ulp apart, on either side of a tie, give deltas far apart."""
    layer = MaxMin()
    delta = np.array([[1.0, -1.0]])
    a = np.array([[1.0, math.nextafter(1.0, 2.0)]])
    b = np.array([[math.nextafter(1.0, 2.0), 1.0]])
    ga = layer.backward((), a, layer.forward((), a)[1], delta)
    gb = layer.backward((), b, layer.forward((), b)[1], delta)
    assert np.abs(ga - gb).max() == 2.0


def lipschitz_model() -> Sequential:
    parts = [Dense(4, 6, 1.0, 0.25, norm_ball=True), GroupSort(2), Dense(6, 6, 1.0, 0.25, norm_ball=True), MaxMin(), Flatten(),
             Dense(6, 3, 1.0, 0.25, norm_ball=True)]
    return Sequential(parts, SoftmaxCrossEntropy(), input_bound=1.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_certified_K_in_a_lipschitz_model(data):
    model = lipschitz_model()
    bound = model.certified_bound()
    assert math.isfinite(bound.upper) and bound.rounding == math.inf  # no float-sum argument with sorts
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    params = [tuple(p.witness_params(rng, s)) for p, s in zip(model.parts, model._shapes[:-1], strict=True)]
    x = data.draw(arrays(np.float64, (1, 4), elements=st.floats(-1.0, 1.0) | st.sampled_from([-1.0, 1.0])))
    y = np.array([data.draw(st.integers(0, 2))])
    assert model.per_example_norms(params, x, y)[0] <= bound.upper


def test_declarations_refused():
    with pytest.raises(DeclarationError, match="groupsort: group_size"):
        GroupSort(0)
    with pytest.raises(DeclarationError, match="multiple of 4"):
        GroupSort(4).output_shape((6,))
    with pytest.raises(DeclarationError, match="maxmin"):
        MaxMin(group_size=3)


def test_shared_kernel_checks():
    """The shared checks (tests/helpers/layer_checks.py) on the Lipschitz model, at random points (no ties)."""
    model = lipschitz_model()
    rng = np.random.default_rng(2)
    params = extreme_params(model, rng, shrink=0.8)
    x = rng.uniform(-1, 1, (8, 4))
    check_kernels(model, params, x, rng.integers(0, 3, 8))
