"""Tensor-level models for DP-SGD: layers, per-example gradient kernels, certified gradient-norm bounds.

A model is :class:`MLP` (dense layers and activations) or :class:`Sequential` (registered
parts, :mod:`opendp_hybridad.nn.protocol`; one file per layer type under
:mod:`opendp_hybridad.nn.parts`). Names are imported on first use (:mod:`opendp_hybridad._lazy`).
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.nn.layers import (
        Dense,
        Identity,
        Logistic,
        MeanSquaredError,
        ReLU,
        Sigmoid,
        SoftmaxCrossEntropy,
        Tanh,
        TemperedSigmoid,
    )
    from opendp_hybridad.nn.model import MLP, ModelBound
    from opendp_hybridad.nn.parts.activation import Elementwise
    from opendp_hybridad.nn.parts.flatten import Flatten
    from opendp_hybridad.nn.protocol import Layer
    from opendp_hybridad.nn.registry import register_layer
    from opendp_hybridad.nn.sequential import Sequential

__all__ = ["Dense", "Identity", "Logistic", "MeanSquaredError", "ReLU", "Sigmoid", "SoftmaxCrossEntropy", "Tanh",
           "TemperedSigmoid", "MLP", "ModelBound", "Sequential", "Layer", "Elementwise", "Flatten", "register_layer"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".layers": ("Dense", "Identity", "Logistic", "MeanSquaredError", "ReLU", "Sigmoid", "SoftmaxCrossEntropy", "Tanh",
                    "TemperedSigmoid"),
        ".model": ("MLP", "ModelBound"),
        ".sequential": ("Sequential",),
        ".protocol": ("Layer",),
        ".registry": ("register_layer",),
        ".parts.activation": ("Elementwise",),
        ".parts.flatten": ("Flatten",),
    },
    submodules=("layers", "model", "sequential", "protocol", "registry", "parts"),
)
