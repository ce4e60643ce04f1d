"""The layer protocol and registry (nn/protocol.py, nn/registry.py): records, defaults, registration rules, and
that every registered kind honours the contract's shape rules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from opendp_hybridad.analysis.rounding import add_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn import model as model_module
from opendp_hybridad.nn.protocol import NO_GRADIENT, ActivationBound, DeltaBound, GradientBound, Layer, ModelBound
from opendp_hybridad.nn.registry import layer_kind, lookup, register_layer, registered_kinds


def test_records_read_nan_as_no_bound_and_default_the_computed_magnitude():
    rec = ActivationBound((2, 3), 1.5, 0.5, 1e-10)
    assert rec.size == 6 and rec.computed_unit == add_up(0.5, 1e-10) and rec.computed_norm == add_up(1.5, 1e-10)
    assert ActivationBound((1,), math.nan, 1.0).norm == math.inf
    assert DeltaBound((1,), 1.0, math.nan).error == math.inf
    assert GradientBound(math.nan).squared == math.inf
    assert GradientBound(0.0, 0.0, 0.0, 0.0) == NO_GRADIENT
    assert model_module.ModelBound is ModelBound  # still importable where DP-SGD imports it


def test_a_parameter_free_layer_needs_only_shapes_kernels_and_bound_maps():
    part = Layer()
    assert part.param_shapes((3,)) == () and part.init(np.random.default_rng(0), (3,)) == () and part.weight_norms(None) == ()
    assert part.project_params(()) == () and part.update((), np.zeros(0), 1.0, True) == ()
    assert part.per_example_squared_norms((), np.zeros((2, 3)), None, np.zeros((2, 3))) is None
    assert part.gradient_bound(ActivationBound((3,), 1, 1), DeltaBound((3,), 1), ()) is NO_GRADIENT
    with pytest.raises(NotImplementedError):
        part.output_shape((3,))


def test_registration_sets_the_kind_and_refuses_a_taken_one():
    @register_layer("test-protocol-scale")
    @dataclass(frozen=True)
    class Scale(Layer):
        factor: float = 2.0

    assert Scale.kind == "test-protocol-scale" and lookup("test-protocol-scale") is Scale and layer_kind(Scale(3.0)) == Scale.kind
    with pytest.raises(DeclarationError, match="already registered"):
        @register_layer("test-protocol-scale")
        class Other(Layer):
            pass
    with pytest.raises(DeclarationError, match="subclasses"):
        register_layer("test-protocol-not-a-layer")(int)
    with pytest.raises(DeclarationError, match="no layer kind"):
        lookup("test-protocol-missing")
    with pytest.raises(DeclarationError, match="not a registered"):
        layer_kind(object())
    with pytest.raises(DeclarationError):
        register_layer(" spaced ")


def test_the_built_in_kinds_are_registered_and_implement_the_required_methods():
    kinds = registered_kinds()
    assert {"dense", "activation", "flatten"} <= set(kinds)
    for kind, cls in kinds.items():
        if not cls.__module__.startswith("opendp_hybridad.nn.parts."):
            continue  # registered by a test
        assert issubclass(cls, Layer) and cls.kind == kind and layer_kind(cls) == kind
        for method in ("output_shape", "forward", "backward", "forward_bound", "backward_bound"):
            assert getattr(cls, method) is not getattr(Layer, method), f"{kind} must implement {method}"
