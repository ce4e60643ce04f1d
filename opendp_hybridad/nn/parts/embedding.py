"""An embedding table ``Embedding(num_embeddings, dim)``: integer indices ``(B, L)`` to rows ``(B, L, dim)``.

Per example, with indices ``i_1..i_L`` and ``delta_p = dLoss/d out_p``:
``out_p = E[i_p]`` (a gather) and ``dLoss/dE = sum_p e_(i_p) delta_p^T`` (a scatter-add of the
deltas into the rows they came from); ``||dLoss/dE||_F^2 = sum_(p,q: i_p = i_q) delta_p . delta_q``
(the ghost norm: a masked Gram matrix of the deltas, never the ``num_embeddings x dim`` row).
``channels_first=True`` gives ``(B, dim, L)`` instead, the layout :class:`~.conv.Conv1d` reads.

**Input.** The input box is the index range ``[0, num_embeddings - 1]``: an index outside
is clamped to it, NaN is read as 0 and a fractional index is truncated (the project's rule
for bad input: clamp, never fail on a value). Indices are not differentiable: the
embedding must be the model's first part (Sequential never asks for its input's delta).

**Certified bounds.** Weight set: the box ``|E_rj| <= weight_bound`` or, with
``norm_ball=True``, the Frobenius ball ``||E||_F <= weight_bound``; either way every row has
``||E_r|| <= R`` (``weight_bound sqrt(dim)`` or ``weight_bound``) and entries at most
``weight_bound``. So ``||out|| <= sqrt(L) R``, ``|out_pj| <= weight_bound``.
The gradient: with ``S_r = {p : i_p = r}``, ``||dLoss/dE||^2 = sum_r ||sum_(p in S_r) delta_p||^2
<= sum_r |S_r| sum_(p in S_r) ||delta_p||^2 <= L ||delta||^2`` (Cauchy-Schwarz per row,
``|S_r| <= L``). This is tight: all ``L`` indices equal and all ``delta_p`` equal attain it,
and nothing about the indices rules that out, so ``sqrt(L) ||delta||`` is the tightest
bound from ``||delta||`` alone.

**Float error.** The forward pass is a gather: no rounding (``e = 0``). Each example's row
is computed first (per example, the sum of its deltas per distinct index: at most ``L``
terms, Higham 2002 section 3.1: ``gamma_(L-1) sum |terms|``; the protocol's first
option), then added over the batch, one term per example and row. In l2,
``|| (sum_(p in S_r) |delta^_p|)_r || <= sqrt(L) ||delta^||`` (as above), so
``||G^ - G|| <= sqrt(L) e_d + gamma_L sqrt(L) (D + e_d)``; with clipping's scaled deltas
(one rounding each, then the same sum) ``3 gamma_(L+1) sqrt(L) (D + e_d)`` covers both
roundings (as in :mod:`.conv`). The ghost norm is within
``squared_norm_error(M, eta, gamma_(dim + L^2 + 1))`` of ``||G^||^2`` with ``M = sqrt(L) (D + e_d)``
and ``eta = gamma_L M`` (:func:`.conv.squared_norm_error`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.analysis.rounding import TINY, UNIT_ROUNDOFF, add_up, float_max_row_norm2_up, gamma, sqrt_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.conv import _prod_up, _sum_up, squared_norm_error
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, GradientBound, Layer, Params, Shape, as_bound
from opendp_hybridad.nn.registry import register_layer

_gamma = functools.lru_cache(maxsize=None)(gamma)


@register_layer("embedding")
@dataclass(frozen=True)
class Embedding(Layer):
    """A table of ``num_embeddings`` rows of ``dim`` entries; input: one index vector of length ``L`` per example."""

    num_embeddings: int
    dim: int
    weight_bound: float = 1.0
    norm_ball: bool = False
    channels_first: bool = False

    def __post_init__(self) -> None:
        for name in ("num_embeddings", "dim"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                raise DeclarationError(f"embedding: {name} must be a positive int")
        # as a float no larger than declared (validation.set_bound)
        object.__setattr__(self, "weight_bound", validation.set_bound("embedding: weight_bound", self.weight_bound))

    def describe(self) -> str:
        return f"embedding({self.num_embeddings}x{self.dim})"

    def closed_form(self, index: int) -> str:
        return f"a_{index}[p] = E_{index}[clamp(a_{index - 1}[p])]   (E_{index}: {self.num_embeddings}x{self.dim})"

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = tuple(input_shape)
        if len(shape) != 1:
            raise self._refuse(f"takes one index vector per example, shape (L,), not {shape}")
        return (self.dim, shape[0]) if self.channels_first else (shape[0], self.dim)

    # -- parameters --------------------------------------------------------------------------------
    def _proxy(self) -> Dense:
        # Dense's certified box clip / Frobenius shrink, on the table (the bias slot is an empty array)
        return Dense(1, 1, self.weight_bound, 0.0, self.norm_ball)

    def param_shapes(self, input_shape: Shape) -> tuple[Shape, ...]:
        return ((self.num_embeddings, self.dim),)

    def init(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        E = rng.uniform(-1.0, 1.0, (self.num_embeddings, self.dim)) * min(self.weight_bound, 1.0 / math.sqrt(self.dim))
        return self.project_params((E,))

    def project_params(self, params: Params) -> Params:
        return (self._proxy().project(params[0], np.zeros(0))[0],)

    def update(self, params: Params, step: np.ndarray, scale: float, project: bool) -> Params:
        E = params[0]
        return (self._proxy().apply_step(E, np.zeros(0), step[:E.size], np.zeros(0), scale, project)[0],)

    def witness_params(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        shape = (self.num_embeddings, self.dim)
        if self.norm_ball:
            # all the mass on one row: that row at the ball's radius (the largest a row can be)
            E = np.zeros(shape)
            row = rng.standard_normal(self.dim)
            E[int(rng.integers(self.num_embeddings))] = row * (self.weight_bound / np.sqrt(row @ row))
            return (E,)
        return (self.weight_bound * np.sign(rng.standard_normal(shape)),)

    def weight_norms(self, params: Params | None, rows: bool = True) -> tuple[float, float]:
        """``(R, U)``: bounds on the largest row norm and the largest entry of the table."""
        if params is None:
            R = self.weight_bound if self.norm_ball else _prod_up(self.weight_bound, sqrt_up(float(self.dim)))
            return (R, self.weight_bound)
        E = np.asarray(params[0], dtype=np.float64)
        U = float(np.abs(E).max(initial=0.0))
        # rows: gamma and the underflow of squares (rounding.float_norm2_up); else a row of dim entries each at most U
        R = float_max_row_norm2_up(E) if rows else _prod_up(U, sqrt_up(float(self.dim)))
        return (as_bound(R), U)

    # -- kernels ------------------------------------------------------------------------------------
    def indices(self, x: np.ndarray) -> np.ndarray:
        """The clamped integer indices of a batch (NaN read as 0, fractions truncated)."""
        v = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=float(self.num_embeddings - 1), neginf=0.0)
        return np.clip(v, 0, self.num_embeddings - 1).astype(np.int64)

    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        idx = self.indices(x)
        out = params[0][idx]  # (B, L, dim)
        if self.channels_first:
            out = np.ascontiguousarray(out.transpose(0, 2, 1))
        return out, idx

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        raise self._refuse("indices are not differentiable: an embedding must be the model's first part")

    def _deltas(self, delta: np.ndarray) -> np.ndarray:
        return delta.transpose(0, 2, 1) if self.channels_first else delta  # (B, L, dim)

    def _rows(self, idx: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each example's own row, computed first: ``(example, row, sum of that example's deltas at that row)`` per distinct pair."""
        B, L = idx.shape
        D = self._deltas(delta).reshape(B * L, self.dim)
        keys = np.arange(B, dtype=np.int64).repeat(L) * self.num_embeddings + idx.reshape(-1)
        unique, inverse = np.unique(keys, return_inverse=True)
        sums = np.zeros((unique.size, self.dim))
        np.add.at(sums, inverse.reshape(-1), D)  # at most L terms per (example, row)
        return unique // self.num_embeddings, unique % self.num_embeddings, sums

    def per_example_gradients(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = cache if cache is not None else self.indices(x)
        example, row, sums = self._rows(idx, delta)
        out = np.zeros((idx.shape[0], self.num_embeddings, self.dim))
        out[example, row] = sums
        return (out,)

    def per_example_squared_norms(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        idx = cache if cache is not None else self.indices(x)
        D = self._deltas(delta)
        gram = np.matmul(D, D.transpose(0, 2, 1))  # (B, L, L)
        same = idx[:, :, None] == idx[:, None, :]
        return np.einsum("bpq,bpq->b", gram, same)

    def accumulate(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray, out: tuple[np.ndarray, ...],
                   first: bool) -> None:
        (gE,) = out
        idx = cache if cache is not None else self.indices(x)
        _, row, sums = self._rows(idx, delta)
        if first:
            gE[...] = 0.0
        np.add.at(gE, row, sums)  # one computed term per example for each row it touched

    # -- certified bounds (module docstring) ---------------------------------------------------------
    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        R, U = norms
        L = inp.shape[0] if inp.shape else 1
        norm = _prod_up(sqrt_up(float(L)), R)
        return ActivationBound(self.output_shape(inp.shape), norm, U, 0.0, U)

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        # never called (Sequential stops at the first part with parameters); an index has no delta
        return DeltaBound(inp.shape, math.inf, math.inf)

    def gradient_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> GradientBound:
        L = inp.shape[0] if inp.shape else 1
        root_l = sqrt_up(float(L))
        d, e_d = out.norm, out.error
        d_hat = add_up(d, e_d)
        squared = _prod_up(float(L), d, d)
        M = _prod_up(root_l, d_hat)
        error = add_up(_prod_up(root_l, e_d), _prod_up(3.0, _gamma(L + 1), M))
        # the ghost norm: Gram entries over dim terms, the masked sum over L^2 (Higham Lemma 3.3)
        t = squared_norm_error(M, _prod_up(_gamma(L), M), _gamma(self.dim + L * L + 1))
        # underflow: each Gram entry (dim products) and each square at most TINY, times the other factor
        t_under = _prod_up(4.0, TINY, _sum_up(_prod_up(float(self.dim * L), d_hat, d_hat), float(L * L)))
        return GradientBound(squared, error, UNIT_ROUNDOFF, _prod_up(_sum_up(t, t_under), add_up(1.0, UNIT_ROUNDOFF)))
