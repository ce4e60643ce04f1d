"""Tensor-level models for DP-SGD: layers, per-example gradient kernels, certified gradient-norm bounds."""

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
