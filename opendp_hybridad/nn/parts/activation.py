"""An elementwise activation ``a = phi(z)`` (tanh, sigmoid, tempered sigmoid, relu, identity) as a registered part.

Wraps an :class:`opendp_hybridad.nn.layers.Activation`, which states the bounds on
``phi``, ``phi'``, ``phi''`` and their float evaluation errors. Per example:
``dLoss/dz = dLoss/da * phi'(z)`` (one rounded product per entry); no parameters.

**Certified bounds** over ``n`` entries with ``|z_j| <= r`` (exact) and ``|z^_j| <= r^``
(computed; the input's ``computed_unit``), ``e_z >= ||z^ - z||``:

* exact norm, two ways, the smaller taken: per entry ``sqrt(n) max|phi|(r)``, or through
  ``||z||`` with ``|phi(z_j)| <= |phi(0)| + L |z_j|``, ``L = max|phi'|(r)``;
* computed: ``e_a <= L(r^) e_z + sqrt(n) value_error(r^)`` (the slope at ``z`` against
  ``z^``, and the library's error at the float ``z^``);
* backward: ``||delta_z|| <= max|phi'|(r) ||delta_a||`` (an identity passes the delta on
  untouched, no product), and the computed ``fl(v^ * s^)`` against ``v * phi'(z)``:
  ``S^ e_v + ||v|| (L2 e_z + sigma) + u S^ (||v|| + e_v)`` with ``sigma`` the slope's
  evaluation error, ``L2 >= |phi''|`` over ``|z| <= r^`` and ``S^ = max|phi'|(r^) + sigma``.

relu's derivative jumps at 0: ``L2`` is infinite, so its backward error is ``inf`` (a
pre-activation computed on the other side of 0 changes the delta by O(1)); there is no
finite forward error for a model with relu, never a guessed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad.analysis.rounding import UNIT_ROUNDOFF, add_up, root_up, underflow_allowance, up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import Activation, Identity
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, Layer, Params, Shape
from opendp_hybridad.nn.registry import register_layer


def times_slope(act: Activation, e_in: float, in_norm: float, r_hat: float, e_z: float) -> float:
    """Error of ``fl(v^ * s^)`` against ``v * phi'(z)``: ``S^ e_v + ||v|| (L2 e_z + sigma) + u S^ (||v|| + e_v)``.

    ``in_norm`` bounds ``||v||`` (exact), ``e_in`` bounds ``||v^ - v||``; the computed slope is
    within ``L2 e_z + sigma`` of ``phi'(z)`` (``|z^_j - z_j| <= e_z``) and at most
    ``S^ = max|phi'| + sigma``. An identity has no slope product (exact): ``e_in``.
    """
    if isinstance(act, Identity):
        return e_in
    sigma = act.slope_error(r_hat)
    s_hat = add_up(act.max_derivative(r_hat), sigma)
    slope_move = add_up(up(act.derivative_lipschitz(r_hat) * e_z), sigma)
    return add_up(add_up(up(s_hat * e_in), up(in_norm * slope_move)), up(UNIT_ROUNDOFF * up(s_hat * add_up(in_norm, e_in))))


@register_layer("activation")
@dataclass(frozen=True)
class Elementwise(Layer):
    """``a = phi(z)`` entry by entry, for any per-example shape (``phi`` an :class:`~opendp_hybridad.nn.layers.Activation`)."""

    activation: Activation

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Activation):
            raise DeclarationError("an elementwise part wraps an activation (Tanh(), Sigmoid(), ...)")

    elementwise = True

    def describe(self) -> str:
        return self.activation.name

    def closed_form(self, index: int) -> str:
        return f"a_{index} = {self.activation.name}(a_{index - 1})   (entrywise)"

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    # -- kernels ----------------------------------------------------------------------------------
    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        # the slope is the cache: the backward pass needs it, and it shares work with the value
        return self.activation.value_and_derivative(x)

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        return delta if cache is None else delta * cache

    # -- certified bounds (module docstring) -----------------------------------------------------------
    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        act, r, r_hat = self.activation, inp.unit, inp.computed_unit
        root = root_up(inp.size)
        per_unit = up(root * act.max_abs(r))
        through_norm = add_up(up(root * act.abs_at_zero()), up(act.max_derivative(r) * inp.norm))
        e_a = add_up(up(act.max_derivative(r_hat) * inp.error), up(root * act.value_error(r_hat)))
        computed_unit = add_up(act.max_abs(r_hat), act.value_error(r_hat))
        return ActivationBound(inp.shape, min(per_unit, through_norm), act.max_abs(r), e_a, computed_unit)

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        act = self.activation
        norm = out.norm if isinstance(act, Identity) else up(out.norm * act.max_derivative(inp.unit))
        error = times_slope(act, out.error, out.norm, inp.computed_unit, inp.error)
        if not isinstance(act, Identity):  # the slope product of each entry: TINY / 2 under gradual underflow
            error = add_up(error, underflow_allowance(inp.size, 1))
        return DeltaBound(inp.shape, norm, error)
