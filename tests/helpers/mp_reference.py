"""50-digit (mpmath) per-example gradients of Sequential chains of dense, elementwise and flatten parts.

Float inputs and weights are exact in mpmath, so ``exact_row`` is the real gradient at
the same float weights (to 50 digits), the reference for the forward error ``e``;
``computed_row`` is the row the float64 kernels add up for that example (the exact product
of the computed factors, as ``accumulate``'s contract defines it).
"""

from __future__ import annotations

import mpmath
import numpy as np

from opendp_hybridad.nn import Logistic, MeanSquaredError, SoftmaxCrossEntropy
from opendp_hybridad.nn.parts.activation import Elementwise
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.flatten import Flatten

mpmath.mp.dps = 50


def _mp(v) -> mpmath.mpf:
    return mpmath.mpf(float(v))


def mp_phi(act, z):
    """Value and slope of an activation in 50 digits."""
    name = act.name
    if name == "tanh":
        t = mpmath.tanh(z)
        return t, 1 - t * t
    if name == "sigmoid":
        s = 1 / (1 + mpmath.exp(-z))
        return s, s * (1 - s)
    if name.startswith("tempered"):
        s = 1 / (1 + mpmath.exp(-_mp(act.inverse_temperature) * z))
        return _mp(act.scale) * s - _mp(act.offset), _mp(act.scale) * _mp(act.inverse_temperature) * s * (1 - s)
    if name == "relu":
        return (z if z > 0 else mpmath.mpf(0)), (mpmath.mpf(1) if z > 0 else mpmath.mpf(0))
    assert name == "identity"
    return z, mpmath.mpf(1)


def mp_loss_delta(loss, out, y):
    if isinstance(loss, SoftmaxCrossEntropy):
        top = max(out)
        e = [mpmath.exp(v - top) for v in out]
        total = mpmath.fsum(e)
        delta = [v / total for v in e]
        delta[int(y)] -= 1
        return delta
    if isinstance(loss, Logistic):
        return [1 / (1 + mpmath.exp(-out[0])) - _mp(y)]
    assert isinstance(loss, MeanSquaredError)
    target = np.atleast_1d(y)
    return [out[j] - _mp(target[j]) for j in range(len(out))]


def exact_row(model, params, x, y) -> list:
    """The exact per-example gradient (flat, the model's layout) at float weights, input and label."""
    a = [_mp(v) for v in np.asarray(x).ravel()]
    inputs, slopes = [], []
    for part, ps in zip(model.parts, params, strict=True):
        inputs.append(a)
        if isinstance(part, Dense):
            W, b = ps
            a = [mpmath.fsum(_mp(W[j, k]) * a[k] for k in range(W.shape[1])) + _mp(b[j]) for j in range(W.shape[0])]
            slopes.append(None)
        elif isinstance(part, Elementwise):
            pairs = [mp_phi(part.activation, v) for v in a]
            a = [p[0] for p in pairs]
            slopes.append([p[1] for p in pairs])
        else:
            assert isinstance(part, Flatten)
            slopes.append(None)
    delta = mp_loss_delta(model.loss, a, y)
    blocks: list[list] = [[] for _ in model.parts]
    for i in range(len(model.parts) - 1, -1, -1):
        part, ps = model.parts[i], params[i]
        if isinstance(part, Dense):
            W = ps[0]
            blocks[i] = [dj * ak for dj in delta for ak in inputs[i]] + list(delta)
            delta = [mpmath.fsum(_mp(W[j, k]) * delta[j] for j in range(W.shape[0])) for k in range(W.shape[1])]
        elif isinstance(part, Elementwise):
            delta = [d * s for d, s in zip(delta, slopes[i], strict=True)]
    return [v for block in blocks for v in block]


def computed_row(model, acts, deltas, i) -> list:
    """Example ``i``'s row as ``accumulate`` adds it: the exact products of the computed factors."""
    row = []
    for part, a, d in zip(model.parts, acts[:-1], deltas, strict=True):
        if isinstance(part, Dense):
            row += [_mp(d[i, j]) * _mp(a[i, k]) for j in range(d.shape[1]) for k in range(a.shape[1])]
            row += [_mp(v) for v in d[i]]
    return row


def distance(u, v) -> float:
    return float(mpmath.sqrt(mpmath.fsum((p - q) ** 2 for p, q in zip(u, v, strict=True))))


def sequential_matmul(reverse):
    """A matrix product summing each entry's terms one by one, backwards when ``reverse(rows)`` (another BLAS order)."""

    def matmul(A, B):
        A, B = np.asarray(A, dtype=float), np.asarray(B, dtype=float)
        acc = np.zeros((A.shape[0], B.shape[1]))
        order = range(A.shape[1] - 1, -1, -1) if reverse(A.shape[0]) else range(A.shape[1])
        for t in order:
            acc = acc + A[:, t:t + 1] * B[t:t + 1, :]
        return acc

    return matmul
