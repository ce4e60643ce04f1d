"""Convolutions ``Conv1d`` and ``Conv2d`` (channels first, stride, zero padding) with certified bounds and a
BLAS-free forward error.

Per example, with ``a`` of shape ``(C, *S)``, the patches ``a_p`` (``p`` over the ``P``
output positions, each a vector of ``n = C k`` entries, ``k`` the kernel's positions) are
the rows of ``im2col(a)`` (``P x n``); the weight ``W`` (``out x C x kernel``) as a
matrix ``W_mat`` (``out x n``). With ``delta = dLoss/dz`` as ``D`` (``P x out``):

    z_p = W_mat a_p + b,   dLoss/dW = sum_p delta_p a_p^T = D^T im2col(a),
    dLoss/db = sum_p delta_p,   dLoss/da = col2im(D W_mat)  (the transposed convolution),
    ||dLoss/dW||_F^2 = sum_(p,q) (delta_p . delta_q)(a_p . a_q)   (the ghost norm)

The squared norm is computed without materialising per-example weight gradients where
that is cheaper (``P (out + n) < out n``: two Gram matrices), else from the materialised
ones; both are exact in real arithmetic.

**Certified bounds** (every operation rounded up through :mod:`opendp_hybridad.analysis.rounding`).
``c`` is the most patches an input entry lies in: ``prod_axes min(ceil(k_i / s_i), P_i)``
(a patch starts every ``s_i`` entries and spans ``k_i``). With weight norms
``(R, b_max, F, B)`` (largest output channel's filter norm, largest bias, ``||W||_F``,
``||b||``), ``A >= ||a||``, ``U >= max |a_j|``, ``D >= ||delta||``:

* per output entry ``|z_pj| <= ||W_j||_2 ||a_p||_2 + |b_j| <= R min(A, sqrt(n) U) + b_max``
  (Cauchy-Schwarz; a patch holds some of ``a``'s entries, the padding is zero);
* ``||im2col(a)||_F^2 = sum_j a_j^2 #(patches holding j) <= c ||a||^2``, and
  ``||im2col(a)||_F <= sqrt(P n) U``; call the smaller ``A_col``;
  ``||z|| <= ||W_mat im2col(a)^T||_F + sqrt(P) ||b|| <= F A_col + sqrt(P) B``;
* the delta at the input: the transposed operator has the same norm,
  ``||col2im(D W_mat)|| <= F sqrt(c) D``;
* the gradient: ``||D^T im2col(a)||_F <= ||D||_F ||im2col(a)||_F <= D A_col`` and
  ``||sum_p delta_p|| <= sum_p ||delta_p|| <= sqrt(P) D``; so the block's squared norm is
  at most ``D^2 (A_col^2 + P)``.

Where ``F`` above stands for ``||W_mat||_2`` in an exact norm (``||z||``, the transposed
operator, the propagated errors ``F sqrt(c) e_a`` and ``F sqrt(c) e_d``) the bound maps read
:meth:`_ConvNd.operator_norm` (``F`` here; :mod:`~opendp_hybridad.nn.parts.spectral_conv`
gives its certified spectral norm); the rounding terms below keep ``F``.

**The float-sum argument** (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd
ed. 2002, section 3.1 and Lemma 3.1, section 3.5 for matrix products: a sum of ``m`` products evaluated in any
order and any grouping is within ``gamma_m |x|^T |y|`` of the exact one; with gradual
underflow each product adds at most ``TINY / 2`` more, section 2.1, so ``m TINY`` bounds
that part generously). No assumption on how BLAS orders, blocks or threads its sums:

* forward: ``z^_pj = fl(W_j . a^_p + b_j)``, ``n + 1`` terms;
  ``e_z <= F sqrt(c) e_a + gamma_(n+1) (F A^_col + sqrt(P) B) + sqrt(out P) (n + 1) TINY``
  (``A^_col`` the same bound for the computed input, ``|| |W_mat| |im2col(a^)|^T ||_F <=
  F ||im2col(a^)||_F``);
* backward: each entry of ``col2im(D W_mat)`` is a sum of at most ``out c`` products
  (``D W_mat`` sums over ``out``, col2im then adds at most ``c`` of those);
  ``e_v <= F sqrt(c) e_d + gamma_(out c) F sqrt(c) (D + e_d) + sqrt(C S) out c TINY``;
* the gradient. **Each example's row is computed first** (the protocol's first option):
  ``G^ = fl(sum_p delta^_p a^_p^T)``, a sum over the ``P`` positions per entry, and only
  then summed over the batch (one term per example). With ``M = (D + e_d) A^_col``
  (``>= || |D^|^T |im2col(a^)| ||_F``):
  ``||G^ - G|| <= e_d A^_col + D sqrt(c) e_a + gamma_P M``. When clipping scales the
  delta first, the row is ``fl(sum_p fl(f delta^_p) a^_p^T)``; against ``f G^`` it moves
  by at most ``(gamma_(P+1) + gamma_P) M`` (``f <= 1``; the scaled entries round once, and
  the sum over positions rounds again), which is not of the rank-one form that
  :meth:`~opendp_hybridad.nn.protocol.ModelBound.row_error`'s ``u (1 + k) C`` covers
  (cancellation over positions can make ``||f G|| << f M``), so it is counted here:
  ``error = e_d A^_col + D sqrt(c) e_a + 3 gamma_(P+1) M`` (+ underflow), and the same
  for the bias with ``M_b = sqrt(P) (D + e_d)``. Sequential's clipped sum takes the other
  form (:meth:`_ConvNd.clipped_rows`, :meth:`_ConvNd.accumulate_rows`): each example's
  unscaled row ``G^`` is computed once, its squared norm read off it, and the batch sum is
  ``sum_i f_i G^_i``, one matrix product whose terms are the products ``f_i G^_i,j`` of two
  computed factors (the protocol's contract; their rounding is in DP-SGD's ``gamma_N``).
  That row is ``f G^`` exactly, within ``e_d A^_col + D sqrt(c) e_a + gamma_P M`` of ``f`` times
  the exact row, which the stated ``error`` covers, so both forms hold.

**The kernels' layout** (no effect on any bound: they copy, or add exact zeros). The patches
are stored as columns ``im2col(a)^T`` (``(B, n, P)``, :func:`patches`) so the forward product
``W_mat im2col(a)^T`` lands in the output's ``(out, P)`` layout; 2-d convolutions of stride 1
run col2im as contiguous adds (:meth:`_ConvNd._backward_rows`: zero deltas widen the grid's
rows, whose products are exact zeros).
* the computed squared norm (ghost or materialised) against ``||G^||^2``: both are
  within ``eta = gamma_P M`` (+ underflow) of the exact ``||D^^T im2col(a^)||``, so with
  ``gamma_s`` the relative error of the sum of squares (materialised: ``out n + 1``
  terms; ghost: ``out + n + P^2 + 1``, Higham Lemma 3.3 for the products of rounded Gram
  entries), ``|s^ - ||G^||^2| <= gamma_s (M + eta)^2 + 4 eta (M + eta)`` (absolute: a
  conv row's norm can cancel, so no relative bound exists), plus underflow allowances.

Dilation and groups other than 1 are refused.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.analysis.rounding import (
    TINY,
    UNIT_ROUNDOFF,
    add_up,
    float_max_row_norm2_up,
    float_norm2_up,
    gamma,
    root_up,
    underflow_allowance,
    up,
)
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, GradientBound, Layer, Params, Shape, as_bound
from opendp_hybridad.nn.registry import register_layer

_gamma = functools.lru_cache(maxsize=None)(gamma)
#: the matrix product of the kernels; tests put another summation order in its place (as another BLAS would)
_matmul = np.matmul


def _offset_order(offsets: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The order col2im adds the kernel offsets in (tests reverse it: the bound holds for any order)."""
    return offsets


def _prod_up(*values: float) -> float:
    """The product of non-negative bounds, rounded up (a correctly rounded product moved one float up)."""
    out = 1.0
    for v in values:
        out = up(out * v) if out != 0 and v != 0 else 0.0
    return out


def _sum_up(*values: float) -> float:
    total = 0.0
    for v in values:
        total = add_up(total, v)
    return total


def squared_norm_error(M: float, eta: float, gamma_s: float) -> float:
    """``gamma_s (M + eta)^2 + 4 eta (M + eta)``: the computed squared norm of a row given as a sum per example.

    ``M`` bounds the exact row of the computed factors (and the sum of the terms'
    magnitudes), ``eta`` how far each of two computed versions of the row (the one whose
    norm is computed, and the one accumulated) can be from it; ``gamma_s`` the relative
    error of the norm's own float evaluation. ``||G'||, ||G^|| <= M + eta``,
    ``||G' - G^|| <= 2 eta``: ``|fl(||G'||^2) - ||G^||^2| <= gamma_s ||G'||^2 + 2 eta 2 (M + eta)``.
    """
    m_eta = add_up(M, eta)
    return add_up(_prod_up(gamma_s, m_eta, m_eta), _prod_up(4.0, eta, m_eta))


def _pair(value: Any, nd: int, name: str, owner: str, minimum: int) -> tuple[int, ...]:
    """An int or a tuple of ``nd`` ints, each at least ``minimum`` (one-line ``DeclarationError`` otherwise)."""
    items = (value,) * nd if isinstance(value, (int, np.integer)) else tuple(value) if isinstance(value, (tuple, list)) else None
    if items is None or len(items) != nd or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise DeclarationError(f"{owner}: {name} must be an int or {nd} ints")
    if any(int(v) < minimum for v in items):
        raise DeclarationError(f"{owner}: {name} must be at least {minimum}")
    return tuple(int(v) for v in items)


def patches(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
            padding: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` of shape ``(B, C, *S)`` as patch columns ``(B, C * prod(kernel), P)`` (a contiguous array) and the output grid.

    Row ``(c, o)`` of an example holds entry ``o`` (a kernel offset) of channel ``c`` of every
    patch, the output positions in C order: ``im2col(a)^T``. Built by one strided copy per
    kernel offset: a copy of ``x``'s entries (and zeros from the padding), no arithmetic, so
    no rounding.
    """
    if any(padding):
        x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    grid = tuple((s - k) // st + 1 for s, k, st in zip(x.shape[2:], kernel, stride, strict=True))
    cols = np.empty((x.shape[0], x.shape[1], *kernel, *grid))
    for offset in itertools.product(*(range(k) for k in kernel)):
        source = (slice(None), slice(None), *tuple(slice(o, o + st * (g - 1) + 1, st) for o, st, g in zip(offset, stride, grid,
                                                                                                        strict=True)))
        cols[(slice(None), slice(None), *offset)] = x[source]
    return cols.reshape(x.shape[0], x.shape[1] * math.prod(kernel), math.prod(grid)), grid


def im2col(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` of shape ``(B, C, *S)`` as patches ``(B, P, C * prod(kernel))`` (output positions in C order) and the output grid.

    The transposed view of :func:`patches` (no copy beyond it, no arithmetic, so no rounding).
    """
    cols, grid = patches(x, kernel, stride, padding)
    return cols.transpose(0, 2, 1), grid


def col2im(dcols: np.ndarray, channels: int, spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
           padding: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
    """The adjoint of :func:`patches`: patch entries ``(B, C * prod(kernel), P)`` added back onto ``(B, C, *spatial)``.

    Each input entry receives at most ``c`` (see the module docstring) additions, one per
    kernel offset whose patch holds it, in the order :func:`_offset_order` gives.
    """
    B = dcols.shape[0]
    blocks = dcols.reshape(B, channels, *kernel, *grid)  # (B, C, *kernel, *grid): the channel first, like the padded input
    padded = np.zeros((B, channels, *tuple(s + 2 * p for s, p in zip(spatial, padding, strict=True))))
    for offset in _offset_order(list(itertools.product(*(range(k) for k in kernel)))):
        target = (slice(None), slice(None), *tuple(slice(o, o + s * (g - 1) + 1, s) for o, s, g in zip(offset, stride, grid, strict=True)))
        padded[target] += blocks[(slice(None), slice(None), *offset)]
    inner = (slice(None), slice(None), *tuple(slice(p, p + s) for p, s in zip(padding, spatial, strict=True)))
    return padded[inner]


class ConvRows:
    """One block's per-example rows of a convolution, computed once (:meth:`_ConvNd.clipped_rows`).

    ``W``: ``fl(D^T im2col(a))`` per example, ``(B, out, n)``; ``b``: ``fl(sum_p delta_p)``, ``(B, out)``.
    """

    __slots__ = ("W", "b")

    def __init__(self, W: np.ndarray, b: np.ndarray):
        self.W, self.b = W, b


@dataclass(frozen=True)
class _ConvNd(Layer):
    """A convolution over ``nd`` spatial axes (module docstring); ``Conv1d`` and ``Conv2d`` fix ``nd``.

    The certified weight set: a box ``|W_ij| <= weight_bound`` or, with ``norm_ball=True``,
    the Frobenius ball ``||W||_F <= weight_bound`` of the whole kernel tensor; ``|b_j| <= bias_bound``.
    Projection onto it is :class:`~opendp_hybridad.nn.parts.dense.Dense`'s (clip, or a
    rounded-down shrink of the whole tensor).
    """

    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    weight_bound: float = 1.0
    bias_bound: float = 1.0
    norm_ball: bool = False
    dilation: Any = 1
    groups: int = 1

    nd = 0

    def __post_init__(self) -> None:
        name = self.describe_kind()
        for field_name in ("in_channels", "out_channels"):
            v = getattr(self, field_name)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                raise DeclarationError(f"{name}: {field_name} must be a positive int")
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, self.nd, "kernel_size", name, 1))
        object.__setattr__(self, "stride", _pair(self.stride, self.nd, "stride", name, 1))
        object.__setattr__(self, "padding", _pair(self.padding, self.nd, "padding", name, 0))
        if _pair(self.dilation, self.nd, "dilation", name, 1) != (1,) * self.nd:
            raise DeclarationError(f"{name}: only dilation 1 is supported")
        object.__setattr__(self, "dilation", (1,) * self.nd)
        if self.groups != 1:
            raise DeclarationError(f"{name}: only groups=1 is supported")
        for field_name in ("weight_bound", "bias_bound"):  # as floats no larger than declared (validation.set_bound)
            object.__setattr__(self, field_name, validation.set_bound(f"{name}: {field_name}", getattr(self, field_name)))
        if not isinstance(self.norm_ball, bool):
            raise DeclarationError(f"{name}: norm_ball must be True or False")

    # -- geometry ---------------------------------------------------------------------------------
    def describe_kind(self) -> str:
        return f"conv{self.nd}d"

    def describe(self) -> str:
        k = "x".join(str(v) for v in self.kernel_size)
        return f"conv{self.nd}d({self.in_channels}->{self.out_channels}, k={k})"

    @property
    def patch_size(self) -> int:
        """``n = C prod(kernel)``: entries of one patch (terms of a forward dot product)."""
        return self.in_channels * math.prod(self.kernel_size)

    def _grid(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(spatial, self.padding, self.kernel_size, self.stride,
                                                                      strict=True))

    def _overlap(self, grid: tuple[int, ...]) -> int:
        """``c``: the most patches one input entry lies in, ``prod min(ceil(k_i / s_i), P_i)``."""
        return math.prod(min(-(-k // s), g) for k, s, g in zip(self.kernel_size, self.stride, grid, strict=True))

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = tuple(input_shape)
        if len(shape) != 1 + self.nd or shape[0] != self.in_channels:
            raise self._refuse(f"takes inputs of shape ({self.in_channels}, {', '.join(['size'] * self.nd)}), not {shape}")
        grid = self._grid(shape[1:])
        if any(g < 1 for g in grid):
            raise self._refuse("the kernel is larger than the padded input")
        return (self.out_channels, *grid)

    def _geometry(self, shape: Shape) -> tuple[int, int, int]:
        """``(P, c, entries of the input)`` for a per-example input shape."""
        grid = self._grid(tuple(shape[1:]))
        return math.prod(grid), self._overlap(grid), math.prod(shape)

    def closed_form(self, index: int) -> str:
        return (f"a_{index}[:, p] = W_{index} patch_p(a_{index - 1}) + b_{index}   (conv{self.nd}d, kernel {self.kernel_size}, "
                f"stride {self.stride}, zero padding {self.padding}; W_{index}: {self.out_channels}x{self.patch_size})")

    # -- parameters --------------------------------------------------------------------------------
    def _proxy(self) -> Dense:
        # Dense's box clip / Frobenius shrink act on arrays of any shape: the same certified projection
        return Dense(1, 1, self.weight_bound, self.bias_bound, self.norm_ball)

    def param_shapes(self, input_shape: Shape) -> tuple[Shape, ...]:
        return ((self.out_channels, self.in_channels, *self.kernel_size), (self.out_channels,))

    def init(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        scale = min(self.weight_bound, 1.0 / math.sqrt(self.patch_size))
        W = rng.uniform(-scale, scale, (self.out_channels, self.in_channels, *self.kernel_size))
        return self._proxy().project(W, np.zeros(self.out_channels))

    def project_params(self, params: Params) -> Params:
        return self._proxy().project(*params)

    def update(self, params: Params, step: np.ndarray, scale: float, project: bool) -> Params:
        W, b = params
        return self._proxy().apply_step(W, b, step[:W.size], step[W.size:W.size + b.size], scale, project)

    def witness_params(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        if self.norm_ball:
            W = rng.standard_normal(shape)
            W = W * (self.weight_bound / np.sqrt((W * W).sum()))
        else:
            W = self.weight_bound * np.sign(rng.standard_normal(shape))
        return W, self.bias_bound * np.sign(rng.standard_normal(self.out_channels))

    def weight_norms(self, params: Params | None, rows: bool = True) -> tuple[float, float, float, float]:
        """``(R, b_max, F, B)``: largest filter (output channel) norm, ``max |b_j|``, ``||W||_F``, ``||b||``.

        Over the declared set when ``params`` is None; of given public arrays their float
        norms raised by ``gamma_(m+2)`` (``m`` squares in any order, the squares and the
        square root rounded), as :meth:`Dense.weight_norms`.
        """
        n = self.patch_size
        if params is None:
            if self.norm_ball:
                R = F = self.weight_bound
            else:
                R = _prod_up(self.weight_bound, root_up(n))
                F = _prod_up(self.weight_bound, root_up(n * self.out_channels))
            return (R, self.bias_bound, F, _prod_up(root_up(self.out_channels), self.bias_bound))
        W, b = params
        Wm = np.asarray(W, dtype=np.float64).reshape(self.out_channels, n)
        flat = Wm.reshape(-1)
        F = float_norm2_up(flat)  # gamma and the underflow of squares (rounding.float_norm2_up)
        B = float_norm2_up(b)
        R = float_max_row_norm2_up(Wm) if rows else F
        return (as_bound(R), float(np.abs(b).max(initial=0.0)), as_bound(F), as_bound(B))

    # -- kernels ------------------------------------------------------------------------------------
    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """The output and the cache: the patches ``im2col(a)`` as the ``(B, P, n)`` view of :func:`patches`'s columns."""
        W, b = params
        cols, grid = patches(x, self.kernel_size, self.stride, self.padding)  # (B, n, P)
        z = _matmul(W.reshape(self.out_channels, -1), cols)  # (B, out, P): each entry a dot product of n terms
        z += b[:, None]  # then the bias: n + 1 terms
        return z.reshape(x.shape[0], self.out_channels, *grid), cols.transpose(0, 2, 1)

    def _cols(self, x: np.ndarray, cache: Any) -> np.ndarray:
        """The columns ``(B, n, P)`` (``im2col(a)^T``), from the cache when given."""
        if cache is not None:
            return cache.transpose(0, 2, 1)
        return patches(x, self.kernel_size, self.stride, self.padding)[0]

    def _deltas(self, delta: np.ndarray) -> np.ndarray:
        return delta.reshape(delta.shape[0], self.out_channels, -1)  # (B, out, P)

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        W = params[0]
        D = self._deltas(delta)
        grid = tuple(delta.shape[2:])
        Wt = W.reshape(self.out_channels, -1).T
        if self.nd == 2 and self.stride == (1, 1):
            return self._backward_rows(Wt, D, tuple(x.shape[2:]), grid)
        dcols = _matmul(Wt, D)  # (B, n, P): each entry a sum of out products
        return col2im(dcols, self.in_channels, tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding, grid)

    def _backward_rows(self, Wt: np.ndarray, D: np.ndarray, spatial: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
        """:func:`col2im` of ``W_mat^T D`` for 2-d, stride 1, with contiguous adds (the same values, the same order).

        Each output row of the grid is widened to the padded input's width ``w`` with zero
        deltas, so that kernel offset ``(o0, o1)`` adds one contiguous run of the flattened
        padded input, starting at ``o0 w + o1``. The added columns' products are ``W_ij 0``,
        exact zeros, and adding an exact zero changes no value: every input entry receives
        the same at most ``c`` nonzero additions, in the same order, as in :func:`col2im`
        (so its bounds stand).
        """
        B, m = D.shape[0], self.out_channels
        (g0, g1), (k0, k1), (p0, p1) = grid, self.kernel_size, self.padding
        h, w = spatial[0] + 2 * p0, spatial[1] + 2 * p1
        wide = np.zeros((B, m, g0, w))
        wide[..., :g1] = D.reshape(B, m, g0, g1)
        dcols = _matmul(Wt, wide.reshape(B, m, g0 * w)).reshape(B, self.in_channels, k0, k1, g0 * w)
        flat = np.zeros((B, self.in_channels, h * w + k1 - 1))  # the last run reaches k1 - 1 past the end
        for o0, o1 in _offset_order(list(itertools.product(range(k0), range(k1)))):
            start = o0 * w + o1
            flat[..., start:start + g0 * w] += dcols[:, :, o0, o1]
        padded = flat[..., :h * w].reshape(B, self.in_channels, h, w)
        return padded[:, :, p0:p0 + spatial[0], p1:p1 + spatial[1]]

    def _rows(self, x: np.ndarray, cache: Any, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each example's own row, computed first: ``(fl(D^T im2col(a)), fl(sum_p delta_p))``, ``(B, out, n)`` and ``(B, out)``."""
        cols = self._cols(x, cache)
        D = self._deltas(delta)
        return _matmul(D, cols.transpose(0, 2, 1)), D.sum(axis=2)

    def per_example_gradients(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> tuple[np.ndarray, ...]:
        gW, gb = self._rows(x, cache, delta)
        return gW.reshape(x.shape[0], self.out_channels, self.in_channels, *self.kernel_size), gb

    def per_example_squared_norms(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        cols = self._cols(x, cache)
        D = self._deltas(delta)
        n, P, m = cols.shape[1], cols.shape[2], self.out_channels
        bias = D.sum(axis=2)
        sq = np.einsum("ij,ij->i", bias, bias)
        if P * (m + n) < m * n:
            # ghost: <D^T D, cols cols^T>_F over position pairs, never the (out x n) row
            dd = _matmul(D.transpose(0, 2, 1), D)  # (B, P, P)
            aa = _matmul(cols.transpose(0, 2, 1), cols)
            sq += np.einsum("bpq,bpq->b", dd, aa)
        else:
            g = _matmul(D, cols.transpose(0, 2, 1))
            sq += np.einsum("bij,bij->b", g, g)
        return sq

    def clipped_rows(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> tuple[np.ndarray, ConvRows]:
        """The squared norms and the rows they are the norms of, computed once for clipping (:meth:`accumulate_rows`).

        The rows are :meth:`_rows`' (the materialised ``G^`` of the module docstring); the
        squared norm is the materialised one, ``fl(||G^_W||^2) + fl(||g^_b||^2)``.
        """
        gW, gb = self._rows(x, cache, delta)
        flat = gW.reshape(gW.shape[0], -1)
        return np.einsum("ij,ij->i", gb, gb) + np.einsum("ij,ij->i", flat, flat), ConvRows(gW, gb)

    def accumulate_rows(self, rows: ConvRows, scale: np.ndarray | None, out: tuple[np.ndarray, ...], first: bool) -> None:
        """Write (``first``) or add ``sum_i scale_i G^_i`` (``scale`` None: ``sum_i G^_i``) into ``out``.

        One term per example and coordinate, ``scale_i G^_i,j``: a product of two computed
        factors (the protocol's contract), the batch sum as one matrix product ``scale^T G^``.
        """
        gW, gb = out
        B = rows.W.shape[0]
        if scale is None:
            sum_W, sum_b = rows.W.sum(axis=0).reshape(-1), rows.b.sum(axis=0)
        else:
            f = scale.reshape(1, B)
            sum_W, sum_b = _matmul(f, rows.W.reshape(B, -1))[0], _matmul(f, rows.b)[0]
        if first:
            gW[...] = sum_W.reshape(gW.shape)
            gb[...] = sum_b
        else:
            gW += sum_W.reshape(gW.shape)
            gb += sum_b

    def accumulate(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray, out: tuple[np.ndarray, ...],
                   first: bool) -> None:
        # the batch sum: one computed term per example and coordinate (the protocol's contract)
        self.accumulate_rows(ConvRows(*self._rows(x, cache, delta)), None, out, first)

    # -- certified bounds (module docstring) ---------------------------------------------------------
    def _columns(self, inp: ActivationBound, P: int, c: int, computed: bool) -> float:
        """``A_col >= ||im2col(a)||_F`` (``computed``: of the computed input), the smaller of ``sqrt(c) ||a||`` and ``sqrt(P n) U``."""
        norm = inp.computed_norm if computed else inp.norm
        unit = inp.computed_unit if computed else inp.unit
        return min(_prod_up(root_up(c), norm), _prod_up(root_up(P * self.patch_size), unit))

    def operator_norm(self, norms: tuple[float, ...]) -> float:
        """``S >= ||W_mat||_2``, the bound the exact-norm terms use (here ``F``; a spectral subclass gives its own).

        The rounding terms always take ``F`` (``|| |W_mat| ||_2 <= ||W_mat||_F``).
        """
        return norms[2]

    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        R, b_max, F, B = norms[:4]
        S = self.operator_norm(norms)
        P, c, _ = self._geometry(inp.shape)
        n, m = self.patch_size, self.out_channels
        patch = min(inp.norm, _prod_up(root_up(n), inp.unit))
        unit = add_up(_prod_up(R, patch), b_max)
        norm = add_up(_prod_up(S, self._columns(inp, P, c, False)), _prod_up(root_up(P), B))
        e_a = inp.error
        g = _gamma(n + 1)
        rounding = _prod_up(g, add_up(_prod_up(F, self._columns(inp, P, c, True)), _prod_up(root_up(P), B)))
        e_z = _sum_up(_prod_up(S, root_up(c), e_a), rounding, underflow_allowance(m * P, n + 1))
        # per entry: the patch's error is at most e_a in l2, and one dot product's rounding
        patch_hat = min(add_up(patch, e_a), _prod_up(root_up(n), inp.computed_unit))
        entry_error = _sum_up(_prod_up(R, e_a), _prod_up(g, add_up(_prod_up(R, patch_hat), b_max)), float(n + 1) * TINY)
        computed_unit = add_up(unit, min(e_z, entry_error))
        return ActivationBound(self.output_shape(inp.shape), norm, unit, e_z, computed_unit)

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        F = norms[2]
        _, c, size = self._geometry(inp.shape)
        terms = self.out_channels * c
        d, e_d = out.norm, out.error
        op = _prod_up(self.operator_norm(norms), root_up(c))  # >= the operator norm of the convolution and of its transpose
        op_abs = _prod_up(F, root_up(c))  # >= that of |W_mat|'s (the rounding term)
        e_v = _sum_up(_prod_up(op, e_d), _prod_up(_gamma(terms), op_abs, add_up(d, e_d)), underflow_allowance(size, terms))
        return DeltaBound(inp.shape, _prod_up(op, d), e_v)

    def gradient_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> GradientBound:
        P, c, _ = self._geometry(inp.shape)
        n, m = self.patch_size, self.out_channels
        d, e_d, e_a = out.norm, out.error, inp.error
        cols, cols_hat = self._columns(inp, P, c, False), self._columns(inp, P, c, True)
        d_hat = add_up(d, e_d)
        squared = _prod_up(d, d, add_up(_prod_up(cols, cols), float(P)))
        # M >= || |D^|^T |im2col(a^)| ||_F, M_b >= || sum_p |delta^_p| ||
        M, M_b = _prod_up(d_hat, cols_hat), _prod_up(root_up(P), d_hat)
        g_p, g_p1 = _gamma(P), _gamma(P + 1)
        under_W = underflow_allowance(m * n, P)
        error_W = _sum_up(_prod_up(e_d, cols_hat), _prod_up(d, root_up(c), e_a), _prod_up(3.0, g_p1, M), _prod_up(3.0, under_W))
        error_b = _sum_up(_prod_up(e_d, root_up(P)), _prod_up(3.0, g_p1, M_b))
        # the squared norm (ghost or materialised, whichever the shapes pick: the larger gamma covers both)
        eta_W = add_up(_prod_up(g_p, M), under_W)
        gamma_s = _gamma(max(m * n + 1, m + n + P * P + 1))
        t_W = squared_norm_error(M, eta_W, gamma_s)
        t_b = squared_norm_error(M_b, _prod_up(g_p, M_b), _gamma(m + 1))
        # underflow in the norm's products: Gram entries (out or n products each, times the other factor),
        # their products and the squares, at most TINY each, twice for the (1 + gamma) carried along
        ops = _sum_up(_prod_up(float(m * P), cols_hat, cols_hat), _prod_up(float(n * P), d_hat, d_hat),
                      float(P * P + m * n + 2 * m))
        t_under = _prod_up(4.0, TINY, ops)
        # the part's squared norm is fl(s_W + s_b): one more rounding, relative u on a value <= ||G^||^2 + t
        absolute = _prod_up(_sum_up(t_W, t_b, t_under), add_up(1.0, UNIT_ROUNDOFF))
        return GradientBound(squared, add_up(error_W, error_b), UNIT_ROUNDOFF, absolute)


@register_layer("conv1d")
@dataclass(frozen=True)
class Conv1d(_ConvNd):
    """1-d convolution (cross-correlation, as ``torch.nn.Conv1d``): input ``(B, C, L)``, weight ``(out, C, k)``, bias ``(out,)``."""

    nd = 1


@register_layer("conv2d")
@dataclass(frozen=True)
class Conv2d(_ConvNd):
    """2-d convolution (as ``torch.nn.Conv2d``): input ``(B, C, H, W)``, weight ``(out, C, kh, kw)``, bias ``(out,)``."""

    nd = 2
