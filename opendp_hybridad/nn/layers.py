"""Activations and losses of tensor-level models, symbolic per layer (never expanded into scalars).

The dense layer lives in :mod:`opendp_hybridad.nn.parts.dense` and is re-exported here;
an activation becomes a part of a Sequential model through
:class:`opendp_hybridad.nn.parts.activation.Elementwise`.

Each activation knows its value, its derivative, and a sound bound on both over an
interval, which is all the certified per-example gradient-norm bound needs. Each
loss knows its output delta ``dL/dz`` and a sound bound on its l2 norm.

For the float64 forward-error bound of the per-example gradient (DP-SGD's float-sum
argument, :meth:`opendp_hybridad.nn.model.MLP.certified_bound`) each activation also
states, for pre-activations ``|z| <= r``: ``derivative_lipschitz`` (a bound on
``|phi''|``; infinite where ``phi'`` jumps, as relu's does at 0, so no forward-error bound
exists), ``value_error`` and ``slope_error`` (how far the value and the slope *as
computed here* can be from the real ones at the same float input: library functions are
faithful within :data:`~opendp_hybridad.analysis.rounding.LIBM_PAD`, basic operations
within the unit roundoff ``u``); each loss states ``delta_lipschitz`` and
``delta_error``. Defaults are infinite: an activation or loss that states nothing gets
no bound, never a wrong one. Every constant goes through
:mod:`opendp_hybridad.analysis.rounding`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.special import expit

from opendp_hybridad.analysis.rounding import (
    LIBM_PAD,
    TINY,
    UNIT_ROUNDOFF,
    add_down,
    add_up,
    div_down,
    div_up,
    gamma,
    libm_down,
    libm_up,
    mul_down,
    mul_up,
    sqrt_up,
    sub_up,
    up,
)
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.dense import Dense as Dense  # re-exported: Dense lives in parts/dense.py, MLP and users import it here

_gamma_cached = functools.lru_cache(maxsize=None)(gamma)

_USE_COMPILED_UPDATE = True  # tests switch it off to check the numpy path gives the same weights (read by parts/dense.py)

#: |computed f(x) - f(x)| <= _LIBM_ABS * |f(x)| + 2 TINY for a library function f at a float x:
#: |y - f| <= PAD |y| + TINY (the padding rule of rounding.libm_up, y the computed value) gives
#: |y| <= (|f| + TINY) / (1 - PAD), so the error is at most 2 PAD |f| + 2 TINY
_LIBM_ABS = 2.0 * LIBM_PAD


def _libm_error(magnitude: float) -> float:
    """Bound on ``|computed f - f|`` for a library function whose real value is at most ``magnitude`` in absolute value."""
    return add_up(mul_up(_LIBM_ABS, magnitude), 2.0 * TINY)


#: the library error of a function with values in [-1, 1] (tanh, sigmoid)
_UNIT_LIBM_ERROR = _libm_error(1.0)
#: tanh's slope 1 - a^2 from the computed value a (see Tanh.slope_error)
_TANH_SLOPE_ERROR = add_up(5.0 * LIBM_PAD, 5.0 * TINY)
#: sigmoid's slope s (1 - s) from the computed value s (see Sigmoid.slope_error)
_SIGMOID_SLOPE_ERROR = add_up(3.0 * LIBM_PAD, 3.0 * TINY)


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

    # -- what the forward-error bound of the per-example gradient needs (infinite: no bound) --------
    def derivative_lipschitz(self, r: float) -> float:
        """Upper bound of ``|phi''(z)|`` for ``|z| <= r`` (the slope moves by at most this times the move of z)."""
        return math.inf

    def value_error(self, r: float) -> float:
        """Upper bound of ``|computed phi(z) - phi(z)|`` at a float ``z`` with ``|z| <= r``."""
        return math.inf

    def slope_error(self, r: float) -> float:
        """Upper bound of ``|computed slope - phi'(z)|`` at a float ``|z| <= r``, the slope as :meth:`value_and_derivative` computes it."""
        return math.inf


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
    def max_abs(self, r): return 1.0 if math.isnan(r) else min(1.0, libm_up(math.tanh(r)))
    def max_derivative(self, r): return 1.0
    #: sup |tanh''| = 4 / (3 sqrt 3) = 0.7698...
    def derivative_lipschitz(self, r): return 0.77
    def value_error(self, r): return _UNIT_LIBM_ERROR

    def slope_error(self, r):
        # computed a = t + v with t = tanh(z), |v| <= w := value_error; |a^2 - t^2| <= w (2 + w);
        # a * a and 1 - a^2 each round once (at most u each: |a|, |1 - a^2| <= 1 + w):
        # 2.01 w + 2.01 u + 2 u w <= 5 PAD + 5 TINY (w = 2 PAD + 2 TINY, u = PAD / 128)
        return _TANH_SLOPE_ERROR


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
    def max_abs(self, r): return 1.0 if math.isnan(r) else min(1.0, libm_up(float(expit(r))))
    def max_derivative(self, r): return 0.25
    def abs_at_zero(self): return 0.5
    #: sup |sigmoid''| = 1 / (6 sqrt 3) = 0.0962...
    def derivative_lipschitz(self, r): return 0.1
    def value_error(self, r): return _UNIT_LIBM_ERROR

    def slope_error(self, r):
        # computed s = e + v (|v| <= w = 2 PAD + 2 TINY): |s (1 - s) - e (1 - e)| <= w (1 + w);
        # 1 - s and the product round once each (at most u (1 + w) and u): <= 1.01 w + 2.1 u <= 3 PAD + 3 TINY
        return _SIGMOID_SLOPE_ERROR


class TemperedSigmoid(Activation):
    """``scale * sigmoid(inverse_temperature * z) - offset`` (Papernot et al. 2020); tanh is (2, 2, 1)."""

    def __init__(self, scale: float = 2.0, inverse_temperature: float = 2.0, offset: float = 1.0):
        if not all(math.isfinite(v) for v in (scale, inverse_temperature, offset)):
            raise DeclarationError("the tempered sigmoid's parameters must be finite")
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
        if math.isnan(r):
            return math.inf
        # sigmoid(T z) for |z| <= r lies in [sigmoid(-|T| r), sigmoid(|T| r)] (monotone), enclosed with
        # the library padding; scale * that - offset, rounded outward; padded by the evaluation error
        # (8 u (|s| + |o|), as before) so that it bounds computed values too
        tr = mul_up(abs(self.inverse_temperature), r)
        hi = min(1.0, libm_up(float(expit(tr))))
        lo = max(0.0, libm_down(float(expit(-tr))))
        s, o = self.scale, self.offset
        top = mul_up(s, hi) if s >= 0 else mul_up(s, lo)
        bottom = mul_down(s, lo) if s >= 0 else mul_down(s, hi)
        biggest = max(abs(sub_up(top, o)), abs(add_down(bottom, -o)))
        return add_up(biggest, mul_up(8.0 * UNIT_ROUNDOFF, add_up(abs(s), abs(o))))

    def max_derivative(self, r): return div_up(mul_up(abs(self.scale), abs(self.inverse_temperature)), 4.0)

    def abs_at_zero(self):
        return max(abs(sub_up(div_up(self.scale, 2.0), self.offset)), abs(add_down(div_down(self.scale, 2.0), -self.offset)))

    def derivative_lipschitz(self, r):
        # phi'' = s T^2 sigma''(T z), |sigma''| <= 0.1
        return mul_up(0.1, mul_up(abs(self.scale), mul_up(self.inverse_temperature, self.inverse_temperature)))

    def _expit_error(self, r: float) -> float:
        # the argument T z rounds once (|T z| u), sigmoid is 1/4-Lipschitz, then the library error
        return add_up(div_up(mul_up(mul_up(abs(self.inverse_temperature), r), UNIT_ROUNDOFF), 4.0), _libm_error(1.0))

    def value_error(self, r):
        # fl(fl(s e) - o) with |e_computed - e| <= eta: |s| eta + u |s| (1 + eta) + u (|s| (1 + eta) (1 + u) + |o|)
        eta = self._expit_error(r)
        s, o = abs(self.scale), abs(self.offset)
        return add_up(mul_up(s, eta), mul_up(3.0 * UNIT_ROUNDOFF, add_up(mul_up(s, add_up(1.0, eta)), o)))

    def slope_error(self, r):
        # ((s T) e) (1 - e) with four roundings (gamma_4) of a value at most |s T| (1/4 + eta), and
        # |e_c (1 - e_c) - e (1 - e)| <= eta (1 + eta)
        eta = self._expit_error(r)
        st = mul_up(abs(self.scale), abs(self.inverse_temperature))
        return mul_up(st, add_up(mul_up(eta, add_up(1.0, eta)), mul_up(add_up(0.25, eta), gamma(4))))


class ReLU(Activation):
    """``max(z, 0)``. Its derivative jumps at 0, so the float error of a per-example gradient has no
    small bound (a pre-activation that rounds to either side of 0 changes the gradient by O(1)):
    DP-SGD refuses it (:class:`opendp_hybridad.dpsgd.DPSGD`)."""

    def __init__(self) -> None:
        super().__init__("relu")

    def __call__(self, z): return np.maximum(z, 0.0)
    def derivative(self, z): return (z > 0).astype(float)
    def max_abs(self, r): return r
    def max_derivative(self, r): return 1.0
    def value_error(self, r): return 0.0
    def slope_error(self, r): return 0.0


class Identity(Activation):
    def __init__(self) -> None:
        super().__init__("identity")

    def __call__(self, z): return z
    def derivative(self, z): return np.ones_like(z)
    def value_and_derivative(self, z): return z, None
    def max_abs(self, r): return r
    def max_derivative(self, r): return 1.0
    def derivative_lipschitz(self, r): return 0.0
    def value_error(self, r): return 0.0
    def slope_error(self, r): return 0.0


class Loss:
    """A per-example loss on the last output ``z`` (shape ``(B, m)``) and a label.

    ``label_kind`` says what a label is, so that callers validate and sample labels
    without knowing the loss: ``"class"`` (an integer index ``0..m-1``), ``"binary"``
    (0 or 1, with ``m = 1``) or ``"real"`` (a vector of ``m`` values in
    ``[-label_bound, label_bound]``, clamped there). ``closed_form`` states the loss and its
    delta ``dL/dz`` as text.
    """

    name = "loss"
    label_kind: ClassVar[str] = "real"
    closed_form: ClassVar[str] = "L(z, y)"

    def value(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def delta(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``dL/dz`` per example, shape like ``z``."""
        raise NotImplementedError

    def delta_norm_bound(self, out_features: int, output_abs_bound: float, label_abs_bound: float) -> float:
        raise NotImplementedError

    def delta_lipschitz(self) -> float:
        """l2 Lipschitz constant of ``z -> dL/dz (z, y)`` for any label (infinite: unknown)."""
        return math.inf

    def delta_error(self, out_features: int, output_abs_bound: float, label_abs_bound: float) -> float:
        """Bound on ``||computed delta(z, y) - delta(z, y)||_2`` at a float ``z`` with ``|z_j| <= output_abs_bound``."""
        return math.inf

    def sympy_expression(self, outputs: list, label: float | int):
        """The loss as a sympy expression of the outputs (symbols or expressions) at a fixed label (scalar expansion)."""
        raise DeclarationError(f"loss {self.name}: no scalar expansion")


class SoftmaxCrossEntropy(Loss):
    """``-log softmax(z)_y`` with integer labels ``y``; ``dL/dz = softmax(z) - onehot(y)``."""

    name = "softmax cross-entropy"
    label_kind = "class"
    closed_form = "L = log sum_j exp(z_j) - z_y;  dL/dz = softmax(z) - onehot(y)"

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
        return sqrt_up(2.0)

    def delta_lipschitz(self):
        # softmax is 1-Lipschitz in l2 (Gao and Pavel 2017, Proposition 4); the one-hot does not move
        return 1.0

    def sympy_expression(self, outputs, label):
        import sympy

        return sympy.log(sum(sympy.exp(v) for v in outputs)) - outputs[int(label)]

    def delta_error(self, out_features, output_abs_bound, label_abs_bound):
        """The computed ``p - e_y`` against the real one at the same float logits.

        ``t_j = z_j - max z`` rounds once (``|t_j| <= 2 M``), so ``exp`` sees ``t_j (1 + theta)``
        and ``exp(t_j theta)`` is within ``tau e^tau`` of 1 (``tau = 2 M u``); the library exp
        adds ``2 PAD`` relative and ``2 TINY``: ``e_j = exp(t_j) (1 + alpha_j) + eta_j``. The
        sum of ``m`` positive terms is within ``gamma_(m-1)``, and it is at least 1 (the
        largest logit gives ``exp(0)``); the division rounds once. So
        ``|p_j,computed - p_j| <= rho p_j + 3 TINY`` with ``rho = (a + b) / (1 - b)``,
        ``a = alpha + u + alpha u``, ``b = alpha + 2 m TINY + gamma_(m-1)``; subtracting 1 at
        the label rounds once more (at most ``u (1 + rho)``). In l2: ``rho + 3 sqrt(m) TINY + u (1 + rho)``.
        """
        # products and quotients of non-negative values as up(x * y): a correctly rounded
        # result moved one float up is not below the exact one (this runs every step)
        m = max(int(out_features), 1)
        u = UNIT_ROUNDOFF
        tau = up(up(2.0 * output_abs_bound) * u)
        if not tau < 0.5:
            return math.inf
        tau_e = up(tau * libm_up(math.exp(tau)))
        alpha = add_up(add_up(tau_e, _LIBM_ABS), up(_LIBM_ABS * tau_e))
        a = add_up(add_up(alpha, u), up(alpha * u))
        b = add_up(add_up(alpha, up(2.0 * m * TINY)), _gamma_cached(max(m - 1, 0)))
        if not b < 0.5:
            return math.inf
        rho = up(add_up(a, b) / add_down(1.0, -b))
        return add_up(add_up(rho, up(up(3.0 * up(math.sqrt(m))) * TINY)), up(u * add_up(1.0, rho)))


class MeanSquaredError(Loss):
    """``0.5 ||z - y||^2``; ``dL/dz = z - y``."""

    name = "mean squared error"
    label_kind = "real"
    closed_form = "L = 0.5 ||z - y||^2;  dL/dz = z - y"

    def value(self, z, y):
        return 0.5 * ((z - y.reshape(z.shape)) ** 2).sum(axis=1)

    def delta(self, z, y):
        return z - y.reshape(z.shape)

    def delta_norm_bound(self, out_features, output_abs_bound, label_abs_bound):
        return mul_up(sqrt_up(float(out_features)), add_up(output_abs_bound, label_abs_bound))

    def delta_lipschitz(self):
        return 1.0

    def sympy_expression(self, outputs, label):
        return sum((v - float(label)) ** 2 for v in outputs) / 2

    def delta_error(self, out_features, output_abs_bound, label_abs_bound):
        # z - y rounds once per entry: at most u ||z - y||
        return mul_up(UNIT_ROUNDOFF, self.delta_norm_bound(out_features, output_abs_bound, label_abs_bound))


class Logistic(Loss):
    """Binary cross-entropy on one logit with labels in {0, 1}; ``dL/dz = sigmoid(z) - y``."""

    name = "logistic"
    label_kind = "binary"
    closed_form = "L = log(1 + exp(z_1)) - y z_1;  dL/dz = sigmoid(z_1) - y"

    def value(self, z, y):
        z = z[:, 0]
        return np.logaddexp(0.0, z) - y * z

    def delta(self, z, y):
        return (expit(z[:, 0]) - y)[:, None]

    def delta_norm_bound(self, out_features, output_abs_bound, label_abs_bound):
        return 1.0

    def delta_lipschitz(self):
        return 0.25  # sup sigmoid'

    def sympy_expression(self, outputs, label):
        from opendp_hybridad.symbolic.functions import softplus

        return softplus(outputs[0]) - float(label) * outputs[0]

    def delta_error(self, out_features, output_abs_bound, label_abs_bound):
        # the library sigmoid (value at most 1), then one rounding of the difference (at most 1 + its error)
        w = _UNIT_LIBM_ERROR
        return add_up(w, mul_up(UNIT_ROUNDOFF, add_up(1.0, w)))


class TemperedCrossEntropy(Loss):
    """``tau CE(z / tau)`` with integer labels: ``L = tau log sum_j exp(z_j / tau) - z_y``; ``dL/dz = softmax(z / tau) - onehot(y)``.

    The Lipschitz loss of Béthune et al. (ICLR 2024, lip-dp's ``TauCategoricalCrossentropy``
    up to the placement of ``tau``): the delta keeps the softmax's norm bound whatever
    ``tau``, while a large ``tau`` keeps the softmax soft, so the per-example gradients do
    not vanish on well-classified examples and sit near the certified bound.

    **The delta's norm from the logits' range** (:meth:`delta_norm_bound`): with ``|z_j| <= M``
    and ``t = M / tau``, every softmax entry is ``e^(v_j) / sum``, ``|v_j| <= t``, so
    ``1 - p_y <= q = (m-1) e^(2t) / (1 + (m-1) e^(2t))`` and every ``p_j <= P = 1 / (1 + (m-1) e^(-2t))``;
    ``||p - e_y||^2 = (1 - p_y)^2 + sum_(j != y) p_j^2 <= q^2 + q P`` (the second sum is at most
    ``(1 - p_y) max_j p_j``). The smaller of that and ``sqrt 2`` (the general bound) is taken:
    for small ``t`` it approaches ``sqrt((m-1)/m)``, the norm at uniform probabilities.
    """

    name = "tempered cross-entropy"
    label_kind = "class"

    def __init__(self, temperature: float = 1.0):
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise DeclarationError("the temperature must be a finite positive number")
        self.temperature = float(temperature)
        self.closed_form = (f"L = tau log sum_j exp(z_j / tau) - z_y (tau = {self.temperature:g});  "
                            "dL/dz = softmax(z / tau) - onehot(y)")

    def _scaled(self, z: np.ndarray) -> np.ndarray:
        return z / self.temperature

    def value(self, z, y):
        v = self._scaled(z)
        vmax = v.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(v - vmax).sum(axis=1)) + vmax[:, 0]
        return self.temperature * logsum - z[np.arange(z.shape[0]), y.astype(int)]

    def delta(self, z, y):
        v = self._scaled(z)
        e = np.exp(v - v.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        p[np.arange(z.shape[0]), y.astype(int)] -= 1.0
        return p

    def delta_norm_bound(self, out_features, output_abs_bound, label_abs_bound):
        general = sqrt_up(2.0)
        t = div_up(output_abs_bound, self.temperature)
        if not t <= 300.0:  # exp(2t) would overflow: the general bound
            return general
        k = float(max(int(out_features), 1) - 1)
        grow = libm_up(math.exp(mul_up(2.0, t)))  # >= e^(2t)
        # q = k E / (1 + k E) increases with E; P = 1 / (1 + k / E) increases with E too
        q = min(1.0, div_up(mul_up(k, grow), add_down(1.0, mul_down(k, grow))))
        p_max = min(1.0, div_up(1.0, add_down(1.0, div_down(k, grow))))
        return min(general, sqrt_up(add_up(mul_up(q, q), mul_up(q, p_max))))

    def delta_lipschitz(self):
        # softmax is 1-Lipschitz in l2 (Gao and Pavel 2017, Proposition 4), composed with z -> z / tau
        return div_up(1.0, self.temperature)

    def sympy_expression(self, outputs, label):
        import sympy

        tau = sympy.Float(self.temperature)
        return tau * sympy.log(sum(sympy.exp(v / tau) for v in outputs)) - outputs[int(label)]

    def delta_error(self, out_features, output_abs_bound, label_abs_bound):
        """The computed delta against ``softmax(z / tau) - e_y`` at the same float logits ``|z_j| <= M``.

        ``fl(z_j / tau)`` is within ``u |z_j| / tau`` (plus ``TINY`` where it underflows) of
        ``z_j / tau``, so the exact softmax moves by at most ``u sqrt(m) M / tau + sqrt(m) TINY``
        (1-Lipschitz); the rest is :meth:`SoftmaxCrossEntropy.delta_error` at scaled logits
        of magnitude at most ``(M / tau)(1 + u)``.
        """
        m = max(int(out_features), 1)
        scaled = div_up(output_abs_bound, self.temperature)
        root = sqrt_up(float(m))
        move = add_up(mul_up(UNIT_ROUNDOFF, mul_up(root, scaled)), mul_up(root, TINY))
        widened = mul_up(scaled, add_up(1.0, UNIT_ROUNDOFF))
        return add_up(SoftmaxCrossEntropy().delta_error(m, widened, label_abs_bound), move)
