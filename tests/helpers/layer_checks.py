"""Checks every part of a Sequential model must pass, against references computed without our backward pass.

Shared by the per-layer test files under tests/nn/ (one per part type):

* :func:`check_kernels`: per-example gradients against central finite differences of the
  loss (float64, relative tolerance about 1e-6) and against a brute-force loop (one
  example at a time through ``gradient_sum``, a different code path: the parts'
  ``accumulate`` instead of ``per_example_gradients``); per-example norms against the
  materialised gradients; ``gradient_sum`` with and without clipping against the explicit
  sum of the clipped materialised rows.
* :func:`worst_norm`: the largest per-example gradient norm over given weights, inputs
  and labels (for the adversarial search of the certified bound ``K``).
* :func:`extreme_params`, :func:`box_inputs`: hypothesis-driven points of the declared sets.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from opendp_hybridad.nn.sequential import Sequential


def flat(params) -> np.ndarray:
    """The flat vector (every part's arrays in order, C order), as ``gradient_sum`` writes it."""
    arrays = [np.asarray(a, dtype=float).ravel() for ps in params for a in ps]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def unflat(model: Sequential, v: np.ndarray):
    """Parameters of ``model`` from a flat vector."""
    out, k = [], 0
    for shapes in model._param_shapes:
        arrays = []
        for s in shapes:
            size = math.prod(s)
            arrays.append(v[k:k + size].reshape(s))
            k += size
        out.append(tuple(arrays))
    return out


def per_example_rows(model: Sequential, params, x, y) -> np.ndarray:
    """Materialised per-example gradients as flat rows, ``(B, num_parameters)``."""
    grads = model.per_example_gradients(params, x, y)
    return np.concatenate([g.reshape(x.shape[0], -1) for part in grads for g in part], axis=1)


def finite_difference_row(model: Sequential, params, xi, yi, h: float = 1e-6) -> np.ndarray:
    """Central differences ``(L(theta + h e_k) - L(theta - h e_k)) / 2h`` of one example's loss, every coordinate."""
    v = flat(params)
    out = np.empty(v.size)
    for k in range(v.size):
        step = np.zeros_like(v)
        step[k] = h
        up = model.loss_value(unflat(model, v + step), xi[None], yi[None])[0]
        down = model.loss_value(unflat(model, v - step), xi[None], yi[None])[0]
        out[k] = (up - down) / (2 * h)
    return out


def check_kernels(model: Sequential, params, x, y, *, fd_rows: int = 2, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """The kernel checks of the module docstring (assertions)."""
    rows = per_example_rows(model, params, x, y)
    B = x.shape[0]
    # brute force: one example at a time through gradient_sum (the accumulate path)
    for i in range(B):
        single = np.empty(model.num_parameters)
        model.gradient_sum(params, x[i:i + 1], y[i:i + 1], out=single)
        np.testing.assert_allclose(rows[i], single, rtol=1e-10, atol=1e-13)
    # central finite differences of the loss (the forward pass only)
    for i in range(min(fd_rows, B)):
        fd = finite_difference_row(model, params, x[i], y[i])
        scale = max(1.0, float(np.abs(fd).max()))
        np.testing.assert_allclose(rows[i], fd, rtol=rtol, atol=atol * scale)
    # norms without materialising
    materialised = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    np.testing.assert_allclose(model.per_example_norms(params, x, y), materialised, rtol=1e-12, atol=1e-300)
    # sums, unclipped and clipped at the median norm (so some rows are clipped, some not)
    for clip in (None, float(np.median(materialised)) or 1.0):
        factor = np.ones(B) if clip is None else np.minimum(1.0, clip / np.maximum(materialised, 1e-300))
        expected = (rows * factor[:, None]).sum(axis=0)
        out = np.full(model.num_parameters, np.nan)
        views = model.gradient_sum(params, x, y, clip=clip, out=out)
        assert not np.isnan(out).any()  # every coordinate written
        np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(rows).max())))
        np.testing.assert_array_equal(flat(views), out)  # the views are the flat vector's


def worst_norm(model: Sequential, params, x, y) -> float:
    return float(model.per_example_norms(params, x, y).max())


def box_inputs(model: Sequential, rng: np.random.Generator, n: int) -> np.ndarray:
    """Inputs in the declared box, half of them on its corners (where gradients tend to be largest)."""
    x = model.input_bound * rng.uniform(-1, 1, (n, *model.input_shape))
    corners = rng.random(n) < 0.5
    x[corners] = np.sign(x[corners]) * model.input_bound
    return x


def extreme_params(model: Sequential, rng: np.random.Generator, shrink: float = 1.0):
    """Weights in the declared set: its extreme points (``witness_params``), scaled by ``shrink`` in [0, 1]."""
    return [tuple(a * shrink for a in p.witness_params(rng, s)) for p, s in zip(model.parts, model._shapes[:-1], strict=True)]


def exact_norms_within(rows: np.ndarray, bound: float) -> bool:
    """Whether every row's exact l2 norm (squares summed in fractions: no rounding) is at most ``bound``."""
    from fractions import Fraction

    limit = Fraction(bound) ** 2 if math.isfinite(bound) else None
    flat_rows = np.asarray(rows, dtype=float).reshape(len(rows), -1)
    return limit is None or all(sum(Fraction(float(v)) ** 2 for v in row) <= limit for row in flat_rows)


def spectral_at_most(W: np.ndarray, s: float) -> bool:
    """Exact: ``||W||_2 <= s`` iff ``s^2 I - G`` is positive semidefinite (``G`` the smaller Gram matrix),
    decided by symmetric Gaussian elimination on fractions (a zero pivot needs a zero row)."""
    A = np.asarray(W, dtype=float)
    if A.shape[0] < A.shape[1]:
        A = A.T
    q = A.shape[1]
    cols = [[Fraction(float(v)) for v in A[:, j]] for j in range(q)]
    M = [[(Fraction(s) ** 2 if i == j else 0) - sum(a * b for a, b in zip(cols[i], cols[j], strict=True)) for j in range(q)]
         for i in range(q)]
    for k in range(q):
        pivot = M[k][k]
        if pivot < 0:
            return False
        if pivot == 0:
            if any(M[k][j] != 0 for j in range(k + 1, q)):
                return False
            continue
        for i in range(k + 1, q):
            f = M[i][k] / pivot
            for j in range(k, q):
                M[i][j] -= f * M[k][j]
    return True


def sqrt_fraction(q: Fraction) -> float:
    """``sqrt(q)`` of an exact rational, within an ulp at any magnitude: ``float(q)`` of a sum of squares below
    the normal range would round to a subnormal and lose digits, so ``q`` is scaled by an even power of two first."""
    if q == 0:
        return 0.0
    k = (q.numerator.bit_length() - q.denominator.bit_length()) // 2
    return math.ldexp(math.sqrt(float(q / Fraction(4) ** k)), k)
