"""Independent references for the convolution parts' tests: brute-force loops over any element type
(floats, Fractions, mpf), exact differences, other summation orders put into the kernels (as another
BLAS would sum), a 50-digit per-example gradient of the small 1-d CNN, and the check that computed
rows lie within the certified forward error ``e`` of it."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from fractions import Fraction

import mpmath
import numpy as np
from helpers.layer_checks import sqrt_fraction

from opendp_hybridad.nn.parts import conv as conv_module
from opendp_hybridad.nn.parts import dense as dense_module
from opendp_hybridad.nn.sequential import Sequential

mpmath.mp.dps = 50


# -- brute-force references ------------------------------------------------------------------------
def brute_conv(x, W, b, stride, padding):
    """The convolution by loops over examples, output channels and positions (any element type: floats, Fractions, mpf)."""
    nd = W.ndim - 2
    B, C = x.shape[:2]
    n_out = W.shape[0]
    kernel = W.shape[2:]
    spatial = x.shape[2:]
    grid = tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(spatial, padding, kernel, stride, strict=True))
    out = np.empty((B, n_out, *grid), dtype=object)
    for bb, o in itertools.product(range(B), range(n_out)):
        for pos in itertools.product(*(range(g) for g in grid)):
            acc = b[o]
            for c in range(C):
                for off in itertools.product(*(range(k) for k in kernel)):
                    src = tuple(p * st + t - pad for p, st, t, pad in zip(pos, stride, off, padding, strict=True))
                    if all(0 <= s < n for s, n in zip(src, spatial, strict=True)):  # else a zero of the padding
                        acc = acc + W[(o, c, *off)] * x[(bb, c, *src)]
            out[(bb, o, *pos)] = acc
    assert nd in (1, 2)
    return out


def brute_grads(x, delta, W, stride, padding):
    """Per-example ``dL/dW``, ``dL/db`` and ``dL/dx`` of ``L = <z, delta>`` by loops (the chain rule entry by entry)."""
    B, C = x.shape[:2]
    n_out = W.shape[0]
    kernel = W.shape[2:]
    spatial = x.shape[2:]
    grid = delta.shape[2:]
    gW = np.zeros((B, *W.shape), dtype=object)
    gb = np.zeros((B, n_out), dtype=object)
    gx = np.zeros(x.shape, dtype=object)
    for arr in (gW, gb, gx):
        arr.flat[:] = [x.flat[0] * 0] * arr.size
    for bb, o in itertools.product(range(B), range(n_out)):
        for pos in itertools.product(*(range(g) for g in grid)):
            d = delta[(bb, o, *pos)]
            gb[bb, o] = gb[bb, o] + d
            for c in range(C):
                for off in itertools.product(*(range(k) for k in kernel)):
                    src = tuple(p * st + t - pad for p, st, t, pad in zip(pos, stride, off, padding, strict=True))
                    if all(0 <= s < n for s, n in zip(src, spatial, strict=True)):
                        gW[(bb, o, c, *off)] = gW[(bb, o, c, *off)] + d * x[(bb, c, *src)]
                        gx[(bb, c, *src)] = gx[(bb, c, *src)] + d * W[(o, c, *off)]
    return gW, gb, gx


def as_fractions(a: np.ndarray) -> np.ndarray:
    out = np.empty(a.shape, dtype=object)
    out.flat[:] = [Fraction(float(v)) for v in a.flat]
    return out


def l2_diff(computed: np.ndarray, exact: np.ndarray) -> float:
    """``||computed - exact||`` with the difference formed exactly (Fractions), then rounded up a little."""
    total = sum(((Fraction(float(c)) - Fraction(e)) ** 2 for c, e in zip(computed.flat, exact.flat, strict=True)), Fraction(0))
    return math.nextafter(sqrt_fraction(total), math.inf)


# -- other summation orders, as another BLAS would sum ----------------------------------------------
def reverse_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` summing the inner index from last to first (numpy elementwise operations: the same on every machine)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    acc = a[..., :, -1, None] * b[..., -1, None, :]
    for j in range(a.shape[-1] - 2, -1, -1):
        acc = acc + a[..., :, j, None] * b[..., j, None, :]
    return acc


def pairwise_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` summing the inner index pairwise (a balanced tree)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def part(lo: int, hi: int) -> np.ndarray:
        if hi - lo == 1:
            return a[..., :, lo, None] * b[..., lo, None, :]
        mid = (lo + hi) // 2
        return part(lo, mid) + part(mid, hi)

    return part(0, a.shape[-1])


ORDERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "numpy": np.matmul, "reverse": reverse_matmul, "pairwise": pairwise_matmul}


@contextlib.contextmanager
def summation_order(name: str) -> Iterator[None]:
    """Put another summation order into the conv and dense kernels (and reverse col2im's offsets for non-numpy orders)."""
    saved = conv_module._matmul, dense_module._matmul, conv_module._offset_order
    conv_module._matmul = dense_module._matmul = ORDERS[name]
    if name != "numpy":
        conv_module._offset_order = lambda offsets: list(reversed(offsets))
    try:
        yield
    finally:
        conv_module._matmul, dense_module._matmul, conv_module._offset_order = saved


def exact_cnn_gradient(model: Sequential, params, x: np.ndarray, label: int) -> np.ndarray:
    """The small 1-d CNN's per-example gradient in 50-digit arithmetic, by loops (independent of the kernels)."""
    (W1, b1), _, _, _, (W2, b2) = params
    conv = model.parts[0]
    mp = np.vectorize(lambda v: mpmath.mpf(float(v)), otypes=[object])
    xm, W1m, b1m, W2m, b2m = mp(x[None]), mp(W1), mp(b1), mp(W2), mp(b2)
    z1 = brute_conv(xm, W1m, b1m, conv.stride, conv.padding)[0]  # (2, 6)
    a1 = np.vectorize(mpmath.tanh, otypes=[object])(z1)
    pooled = np.array([[(a1[c, 2 * j] + a1[c, 2 * j + 1]) / 2 for j in range(3)] for c in range(2)], dtype=object)
    flat = pooled.reshape(-1)
    logits = [mpmath.fsum(W2m[o, k] * flat[k] for k in range(6)) + b2m[o] for o in range(3)]
    top = max(logits)
    e = [mpmath.exp(v - top) for v in logits]
    p = [v / mpmath.fsum(e) for v in e]
    d2 = np.array([p[o] - (1 if o == label else 0) for o in range(3)], dtype=object)
    gW2 = np.array([[d2[o] * flat[k] for k in range(6)] for o in range(3)], dtype=object)
    d_flat = np.array([mpmath.fsum(W2m[o, k] * d2[o] for o in range(3)) for k in range(6)], dtype=object).reshape(2, 3)
    d_a1 = np.array([[d_flat[c, j // 2] / 2 for j in range(6)] for c in range(2)], dtype=object)
    d_z1 = d_a1 * np.vectorize(lambda v: 1 - mpmath.tanh(v) ** 2, otypes=[object])(z1)
    gW1, gb1, _ = brute_grads(xm, d_z1[None], W1m, conv.stride, conv.padding)
    return np.concatenate([gW1[0].ravel(), gb1[0], gW2.ravel(), d2])


def assert_rows_within_e(model: Sequential, params, x: np.ndarray, y: np.ndarray, e: float, order: str) -> None:
    """Every computed per-example row (in summation ``order``) within ``e`` of the 50-digit row of :func:`exact_cnn_gradient`."""
    with summation_order(order):
        grads = model.per_example_gradients(params, x, y)
    for i in range(x.shape[0]):
        row = np.concatenate([g[i].ravel() for part in grads for g in part])
        exact = exact_cnn_gradient(model, params, x[i], int(y[i]))
        gap = math.sqrt(sum((mpmath.mpf(float(c)) - v) ** 2 for c, v in zip(row, exact, strict=True)))
        assert gap <= e
