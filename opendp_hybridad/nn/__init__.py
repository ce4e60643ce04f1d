"""Tensor-level models for DP-SGD: layers, per-example gradient kernels, certified gradient-norm bounds.

Names are imported on first use (:mod:`opendp_hybridad._lazy`).
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

__all__ = ["Dense", "Identity", "Logistic", "MeanSquaredError", "ReLU", "Sigmoid", "SoftmaxCrossEntropy", "Tanh",
           "TemperedSigmoid", "MLP", "ModelBound"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".layers": ("Dense", "Identity", "Logistic", "MeanSquaredError", "ReLU", "Sigmoid", "SoftmaxCrossEntropy", "Tanh",
                    "TemperedSigmoid"),
        ".model": ("MLP", "ModelBound"),
    },
    submodules=("layers", "model"),
)
