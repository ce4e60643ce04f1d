"""Layers, activations and losses of tensor-level models, symbolic per layer (ARCHITECTURE decision 1).

Each activation knows its value, its derivative, and a sound bound on both over an
interval, which is all the certified per-example gradient-norm bound needs. Each
loss knows its output delta ``dL/dz`` and a sound bound on its l2 norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

_PAD = 2.0**-46
_USE_COMPILED_UPDATE = True  # tests switch it off to check the numpy path gives the same weights


def _up(x: float) -> float:
    """``x`` rounded up with a margin; NaN becomes inf (an unknown bound is no bound)."""
    if math.isnan(x):
        return math.inf
    return math.nextafter(x * (1 + _PAD), math.inf) if x > 0 else (math.nextafter(x, math.inf) if x < 0 else 0.0)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: ``name`` is shown in closed forms."""

    name: str

    def __call__(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def derivative(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def max_abs(self, r: float) -> float:
        """Upper bound of ``|phi(z)|`` for ``|z| <= r``."""
        raise NotImplementedError

    def max_derivative(self, r: float) -> float:
        """Upper bound of ``|phi'(z)|`` for ``|z| <= r``."""
        raise NotImplementedError

    def abs_at_zero(self) -> float:
        """Upper bound of ``|phi(0)|``: with ``max_derivative`` it gives ``|phi(z)| <= |phi(0)| + L |z|``."""
        return 0.0

    def value_and_derivative(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``phi(z)`` and ``phi'(z)`` (None: identically 1), sharing work: the backward pass needs both."""
        return self(z), self.derivative(z)


class Tanh(Activation):
    def __init__(self) -> None:
        super().__init__("tanh")

    def __call__(self, z): return np.tanh(z)
    def derivative(self, z): return 1.0 - np.tanh(z) ** 2

    def value_and_derivative(self, z):
        a = np.tanh(z)
        slope = a * a
        np.subtract(1.0, slope, out=slope)  # 1 - tanh^2 from the value: tanh is the costly part
        return a, slope
    def max_abs(self, r): return min(1.0, _up(math.tanh(r)))
    def max_derivative(self, r): return 1.0


class Sigmoid(Activation):
    def __init__(self) -> None:
        super().__init__("sigmoid")

    def __call__(self, z): return expit(z)
    def derivative(self, z):
        s = expit(z)
        return s * (1 - s)

    def value_and_derivative(self, z):
        s = expit(z)
        return s, s * (1 - s)
    def max_abs(self, r): return min(1.0, _up(float(expit(r))))
    def max_derivative(self, r): return 0.25
    def abs_at_zero(self): return 0.5


class TemperedSigmoid(Activation):
    """``scale * sigmoid(inverse_temperature * z) - offset`` (Papernot et al. 2020); tanh is (2, 2, 1)."""

    def __init__(self, scale: float = 2.0, inverse_temperature: float = 2.0, offset: float = 1.0):
        if not all(math.isfinite(v) for v in (scale, inverse_temperature, offset)):
            raise ValueError("the tempered sigmoid's parameters must be finite")
        super().__init__(f"tempered_sigmoid(s={scale:g}, T={inverse_temperature:g}, o={offset:g})")
        object.__setattr__(self, "scale", float(scale))
        object.__setattr__(self, "inverse_temperature", float(inverse_temperature))
        object.__setattr__(self, "offset", float(offset))

    def __call__(self, z): return self.scale * expit(self.inverse_temperature * z) - self.offset

    def derivative(self, z):
        s = expit(self.inverse_temperature * z)
        return self.scale * self.inverse_temperature * s * (1 - s)

    def value_and_derivative(self, z):
        s = expit(self.inverse_temperature * z)
        return self.scale * s - self.offset, self.scale * self.inverse_temperature * s * (1 - s)

    def max_abs(self, r):
        hi = self.scale * float(expit(self.inverse_temperature * r)) - self.offset
        lo = self.scale * float(expit(-self.inverse_temperature * r)) - self.offset
        return _up(max(abs(hi), abs(lo)) + 4 * 2.0**-52 * (abs(self.scale) + abs(self.offset)))

    def max_derivative(self, r): return _up(abs(self.scale * self.inverse_temperature) / 4)
    def abs_at_zero(self): return _up(abs(self.scale / 2 - self.offset))


class ReLU(Activation):
    def __init__(self) -> None:
        super().__init__("relu")

    def __call__(self, z): return np.maximum(z, 0.0)
    def derivative(self, z): return (z > 0).astype(float)
    def max_abs(self, r): return r
    def max_derivative(self, r): return 1.0


class Identity(Activation):
    def __init__(self) -> None:
        super().__init__("identity")

    def __call__(self, z): return z
    def derivative(self, z): return np.ones_like(z)
    def value_and_derivative(self, z): return z, None
    def max_abs(self, r): return r
    def max_derivative(self, r): return 1.0


@dataclass(frozen=True)
class Dense:
    """``z = W a + b`` with ``W`` of shape (out, in).

    The certified set of the weights is a box ``|W_ij| <= weight_bound`` (or, with
    ``norm_ball=True``, the Frobenius ball ``||W||_F <= weight_bound``) and
    ``|b_j| <= bias_bound``.
    """

    in_features: int
    out_features: int
    weight_bound: float = 1.0
    bias_bound: float = 1.0
    norm_ball: bool = False

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError("a dense layer needs at least one input and one output")
        for name in ("weight_bound", "bias_bound"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number")

    @property
    def operator_bound(self) -> float:
        """Upper bound on ``||W||_2`` over the certified set (Frobenius bounds spectral)."""
        if self.norm_ball:
            return self.weight_bound
        return _up(self.weight_bound * math.sqrt(self.in_features * self.out_features))

    def row_bound(self) -> float:
        """Upper bound on the l2 norm of one row of ``W``."""
        return self.weight_bound if self.norm_ball else _up(self.weight_bound * math.sqrt(self.in_features))

    def apply_step(self, W: np.ndarray, b: np.ndarray, step_W: np.ndarray, step_b: np.ndarray, scale: float,
                   project: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(W - scale step_W, b - scale step_b)``, projected back onto the certified set if ``project``.

        The same weights as :meth:`project` of the plain update, in one compiled pass per
        array where numba is installed (:mod:`.update_kernel`).
        """
        from opendp_hybridad.nn.update_kernel import compiled_subtract_scaled

        kernel = compiled_subtract_scaled() if _USE_COMPILED_UPDATE else None
        if kernel is None or not project:
            new_W, new_b = W - scale * step_W.reshape(W.shape), b - scale * step_b
            return self.project(new_W, new_b) if project else (new_W, new_b)
        # C order for the outputs whatever the inputs' layout, so reshape(-1) is a view the kernel writes through
        new_W, new_b = np.empty(W.shape), np.empty(b.shape)
        squares, largest = kernel(np.ascontiguousarray(W, dtype=np.float64).reshape(-1), np.ascontiguousarray(step_W).reshape(-1),
                                  scale, new_W.reshape(-1))
        _, largest_b = kernel(np.ascontiguousarray(b, dtype=np.float64), np.ascontiguousarray(step_b), scale, new_b)
        if self.norm_ball:
            shrink = self._ball_shrink(squares, W.size)
            if shrink < 1.0:
                new_W *= shrink
        elif not largest <= self.weight_bound:
            np.clip(new_W, -self.weight_bound, self.weight_bound, out=new_W)
        if not largest_b <= self.bias_bound:
            np.clip(new_b, -self.bias_bound, self.bias_bound, out=new_b)
        return new_W, new_b

    def _ball_shrink(self, squares: float, size: int) -> float:
        """The factor that brings ``W`` inside the Frobenius ball, from its float sum of squares (1.0: already inside).

        An upper bound on ``||W||``: a float sum of ``n`` squares in any order is within
        ``gamma_n <= 2 n u`` of the exact one (Higham 2002, 3.1), and ``_up`` pads the
        square root; the factor is shrunk by ``2^-50`` for the rounding of each product.
        """
        norm_up = _up(math.sqrt(squares * (1 + (size + 2) * 2.0**-52)))
        return (self.weight_bound / norm_up) * (1 - 2.0**-50) if norm_up > self.weight_bound else 1.0

    def project(self, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Back onto the certified set (used by the ``bound`` mode after each step)."""
        if self.norm_ball:
            flat = W.ravel()
            shrink = self._ball_shrink(float(np.dot(flat, flat)), flat.size)
            if shrink < 1.0:
                W = W * shrink
        elif np.abs(W).max(initial=0.0) > self.weight_bound:
            W = np.clip(W, -self.weight_bound, self.weight_bound)
        if np.abs(b).max(initial=0.0) > self.bias_bound:
            b = np.clip(b, -self.bias_bound, self.bias_bound)
        return W, b


class Loss:
    name = "loss"

    def value(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``dL/dz`` per example, shape like ``z``."""
        raise NotImplementedError

    def delta_norm_bound(self, out_features: int, output_abs_bound: float, label_abs_bound: float) -> float:
        raise NotImplementedError


class SoftmaxCrossEntropy(Loss):
    """``-log softmax(z)_y`` with integer labels ``y``; ``dL/dz = softmax(z) - onehot(y)``."""

    name = "softmax cross-entropy"

    def value(self, z, y):
        zmax = z.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
        return logsum - z[np.arange(z.shape[0]), y.astype(int)]

    def delta(self, z, y):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        p[np.arange(z.shape[0]), y.astype(int)] -= 1.0
        return p

    def delta_norm_bound(self, out_features, output_abs_bound, label_abs_bound):
        # ||p - e_y||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2 <= 2 (1 - p_y)^2 <= 2
        return _up(math.sqrt(2.0))


class MeanSquaredError(Loss):
    """``0.5 ||z - y||^2``; ``dL/dz = z - y``."""

    name = "mean squared error"

    def value(self, z, y):
        return 0.5 * ((z - y.reshape(z.shape)) ** 2).sum(axis=1)

    def delta(self, z, y):
        return z - y.reshape(z.shape)

    def delta_norm_bound(self, out_features, output_abs_bound, label_abs_bound):
        return _up(math.sqrt(out_features) * _up(output_abs_bound + label_abs_bound))


class Logistic(Loss):
    """Binary cross-entropy on one logit with labels in {0, 1}; ``dL/dz = sigmoid(z) - y``."""

    name = "logistic"

    def value(self, z, y):
        z = z[:, 0]
        return np.logaddexp(0.0, z) - y * z

    def delta(self, z, y):
        return (expit(z[:, 0]) - y)[:, None]

    def delta_norm_bound(self, out_features, output_abs_bound, label_abs_bound):
        return 1.0
