"""Flatten: one example's tensor of shape ``(d_1, ..., d_k)`` as a vector of ``d_1 ... d_k`` entries (C order).

A reshape moves no value: the exact and computed outputs are the inputs' entries, so
every bound passes through unchanged (norms, per-entry magnitudes and errors are
those of the same entries), and the delta is reshaped back, exactly. No parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, Layer, Params, Shape
from opendp_hybridad.nn.registry import register_layer


@register_layer("flatten")
@dataclass(frozen=True)
class Flatten(Layer):
    """``(B, d_1, ..., d_k) -> (B, d_1 ... d_k)``, row-major (as ``torch.nn.Flatten`` with its default ``start_dim=1``)."""

    def describe(self) -> str:
        return "flatten"

    def closed_form(self, index: int) -> str:
        return f"a_{index} = vec(a_{index - 1})   (row-major)"

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) == 0:
            raise self._refuse("needs a per-example tensor of at least one dimension")
        return (math.prod(input_shape),)

    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        return x.reshape(x.shape[0], -1), None

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        return delta.reshape(x.shape)

    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        return ActivationBound((inp.size,), inp.norm, inp.unit, inp.error, inp.computed_unit)

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        return DeltaBound(inp.shape, out.norm, out.error)
