"""Random labels of the kind each loss expects (shared by the nn and DP-SGD tests)."""

from __future__ import annotations

import numpy as np

from opendp_hybridad.nn import Logistic, SoftmaxCrossEntropy


def labels_for(loss: object, out: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """Class indices (softmax), 0/1 (logistic) or targets in [-1, 1] (regression)."""
    if isinstance(loss, SoftmaxCrossEntropy):
        return rng.integers(0, out, n)
    if isinstance(loss, Logistic):
        return rng.integers(0, 2, n).astype(float)
    return rng.uniform(-1, 1, (n, out))
