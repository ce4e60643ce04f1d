"""A dense (fully connected) layer ``z = W a + b`` with a certified weight set, as a registered part.

Per example, with ``delta = dLoss/dz``: ``dLoss/dW = delta a^T``, ``dLoss/db = delta``,
``dLoss/da = W^T delta``, and ``||g||^2 = ||delta||^2 (||a||^2 + 1)`` (the Frobenius norm
of a rank-one matrix), so norms never materialise the per-example gradients and a
(clipped) batch sum is one matrix product ``Delta^T A``: each coordinate a float sum
over the batch of one product of computed factors per example, the contract of
:mod:`opendp_hybridad.nn.protocol`.

**Certified bounds** (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.
2002: a dot product of ``n`` terms in any order is within ``gamma_n |x|^T |y|``, section 3.1
and Lemma 3.1; ``|| |W| |a| ||_2 <= ||W||_F ||a||_2`` by Cauchy-Schwarz per row). With
weight norms ``(R, b_max, F, B)`` (largest row norm, largest bias, Frobenius norm which
bounds the spectral norm, bias norm) and input bounds ``A >= ||a||``, ``e_a >= ||a^ - a||``:

* exact: ``|z_j| <= R A + b_max``, ``||z|| <= F A + B``; ``||W^T delta|| <= F ||delta||``;
* computed (the product over ``n`` inputs and the bias addition):
  ``e_z <= F e_a + gamma_(n+1) (F (A + e_a) + B)``; backward, a product over the ``m``
  outputs: ``e_v <= F e_d + gamma_m F (D + e_d)``;
* the gradient block: ``||delta^ a^^T - delta a^T||_F <= e_d ||a^|| + ||delta|| e_a`` and
  ``e_d`` for the bias; its computed squared norm ``fl(||d||^2) (fl(||a||^2) + 1)`` has
  relative error ``gamma_(n + m + 2)`` (non-negative terms) and an underflow allowance of a
  few ``TINY`` per operation times the other factor.

These are the per-layer steps of :class:`opendp_hybridad.nn.model.MLP`'s recursion.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.analysis.rounding import (
    TINY,
    UNIT_ROUNDOFF,
    add_up,
    down,
    float_max_row_norm2_up,
    float_norm2_up,
    gamma,
    gamma_factor_up,
    mul_up,
    sqrt_up,
    underflow_allowance,
    up,
)
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, GradientBound, Layer, Params, Shape, as_bound
from opendp_hybridad.nn.registry import register_layer
from opendp_hybridad.nn.update_kernel import compiled_dense_update

_gamma_cached = functools.lru_cache(maxsize=None)(gamma)

#: the matrix product of the kernels; tests put another summation order in its place (as another BLAS would)
_matmul = np.matmul


_INT32_MAX = 2**31 - 1


@functools.cache
def _dgemm():
    """scipy's BLAS ``dgemm`` (imported on first use), or None where scipy cannot give it."""
    try:
        from scipy.linalg.blas import dgemm
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return dgemm


def _add_product(g: np.ndarray, delta: np.ndarray, x: np.ndarray) -> bool:
    """``g += delta^T x`` in place through BLAS gemm with ``beta = 1``; False (``g`` untouched) where it cannot.

    ``g`` (out, in) C-contiguous is ``g^T`` (in, out) Fortran-contiguous, which gemm updates in
    place: ``g^T <- 1 * x^T delta + 1 * g^T`` (``x^T`` is Fortran-contiguous when ``x`` is C-contiguous,
    and ``delta`` is passed as ``delta^T`` with ``trans_b``), so no operand is copied. Multiplying by
    ``alpha = 1`` and ``beta = 1`` is exact: each entry is the old value plus one product per row, summed
    in BLAS's order. Refused (False) unless every operand is float64 with the layout above and every
    dimension fits scipy's 32-bit BLAS integers; a result that gemm did not write in place (it would
    have copied ``g``) is copied back, so ``g`` always ends up holding the sum.
    """
    dgemm = _dgemm()
    if (dgemm is None or g.dtype != np.float64 or delta.dtype != np.float64 or x.dtype != np.float64
            or not (g.flags.c_contiguous and g.flags.writeable and delta.flags.c_contiguous and x.flags.c_contiguous)
            or g.ndim != 2 or max(g.shape + delta.shape + x.shape) > _INT32_MAX):
        return False
    result = dgemm(1.0, x.T, delta.T, beta=1.0, c=g.T, trans_b=1, overwrite_c=1)
    if not np.may_share_memory(result, g):  # bounds only: a copy would not overlap g at all
        g[...] = result.T
    return True


def _compiled() -> tuple | None:
    """The compiled update kernels, or None where numba is missing or tests switched them off.

    The switch lives in nn.layers (tests turn it off there to compare the numpy path); the
    module is looked up once, not imported on every step (an import statement costs about half
    a microsecond even when the module is loaded).
    """
    global _layers_module
    if _layers_module is None:
        from opendp_hybridad.nn import layers

        _layers_module = layers
    return compiled_dense_update() if _layers_module._USE_COMPILED_UPDATE else None


_layers_module = None


@functools.lru_cache(maxsize=1024)
def _ball_constants(radius: float, size: int) -> tuple[float, float, float]:
    """``(n TINY, 1 + gamma_(n+2), radius - sqrt(n) TINY)`` for :meth:`Dense._ball_shrink`, each rounded outward.

    ``n TINY >= n TINY / 2`` bounds what underflowed squares hide, with room for the rounding of
    the sum; the factor is rounded up; the target radius less ``sqrt(n) TINY`` (what products
    that underflow can add back, :func:`~opendp_hybridad.analysis.rounding.underflow_allowance`)
    is rounded down, each operation one float outward.
    """
    hidden = float(size) * TINY
    reserve = up(up(math.sqrt(size)) * TINY)
    return hidden, gamma_factor_up(size + 2), down(radius - reserve)


def _finite(a: np.ndarray) -> np.ndarray:
    """``a`` with its NaN and infinite entries replaced by 0 (a copy only when there are any)."""
    a = np.asarray(a, dtype=np.float64)
    return a if np.isfinite(a).all() else np.where(np.isfinite(a), a, 0.0)


@register_layer("dense")
@dataclass(frozen=True)
class Dense(Layer):
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
            raise DeclarationError("a dense layer needs at least one input and one output")
        for name in ("weight_bound", "bias_bound"):  # as floats no larger than declared (validation.set_bound)
            object.__setattr__(self, name, validation.set_bound(name, getattr(self, name)))

    @property
    def operator_bound(self) -> float:
        """Upper bound on ``||W||_2`` over the certified set (Frobenius bounds spectral)."""
        if self.norm_ball:
            return self.weight_bound
        return mul_up(self.weight_bound, sqrt_up(float(self.in_features * self.out_features)))

    def row_bound(self) -> float:
        """Upper bound on the l2 norm of one row of ``W``."""
        return self.weight_bound if self.norm_ball else mul_up(self.weight_bound, sqrt_up(float(self.in_features)))

    # -- the weight set (MLP's interface, arrays W and b) ------------------------------------------
    def apply_step(self, W: np.ndarray, b: np.ndarray, step_W: np.ndarray, step_b: np.ndarray, scale: float,
                   project: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(W - scale step_W, b - scale step_b)``, projected back onto the certified set if ``project``.

        The same update as :meth:`project` of the plain update, in one compiled call per layer
        where numba is installed (:meth:`_compiled_step`); where the ball shrinks the weights,
        the factor can differ from :meth:`project`'s in the last bits (their sums of squares add
        in different orders, each within ``gamma_n`` of the exact sum), and both land inside the ball.
        """
        # float64 throughout, whatever the step's dtype (float32, longdouble, big-endian): both paths compute
        # the same float64 update (audit attack_dense_update.py)
        scale = float(scale)
        step_W = np.asarray(step_W, dtype=np.float64)
        step_b = np.asarray(step_b, dtype=np.float64)
        if not project or _compiled() is None:  # the numpy path (and the reference the compiled one is tested against)
            new_W, new_b = W - scale * step_W.reshape(W.shape), b - scale * step_b
            return self.project(new_W, new_b) if project else (new_W, new_b)
        return self._compiled_step(W, b, np.ascontiguousarray(step_W, dtype=np.float64).reshape(-1),
                                   np.ascontiguousarray(step_b, dtype=np.float64).reshape(-1), scale, _compiled())

    def apply_flat_step(self, W: np.ndarray, b: np.ndarray, step: np.ndarray, offset: int, scale: float,
                        project: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`apply_step` with this layer's step at ``step[offset:]`` (``W``'s entries, then ``b``'s) of a flat vector.

        The per-step path of :meth:`MLP.apply_step <opendp_hybridad.nn.model.MLP.apply_step>`:
        the same weights as :meth:`apply_step` on the two slices, with fewer Python calls. A
        subclass with its own :meth:`apply_step` gets it called.
        """
        end = offset + W.size
        if step.dtype != np.float64 or not step.dtype.isnative:
            step = np.asarray(step, dtype=np.float64)  # as apply_step does (the kernel takes native float64)
        kernels = _compiled() if project and type(self).apply_step is Dense.apply_step else None
        if kernels is None:
            return self.apply_step(W, b, step[offset:end], step[end:end + b.size], scale, project)
        return self._compiled_step(W, b, step[offset:end], step[end:end + b.size], float(scale), kernels)

    def _compiled_step(self, W: np.ndarray, b: np.ndarray, step_W: np.ndarray, step_b: np.ndarray, scale: float,
                       kernels: tuple) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`project` of the plain update, through the compiled kernel (flat float64 steps).

        The kernel writes ``W - scale step_W`` (numpy's arithmetic, operation for operation)
        and returns the float sums of squares; only where both are finite does it clip to the
        boxes (the bias's, and the weights' unless they have a ball), which is ``np.clip``'s
        result exactly. A NaN or infinite entry, or squares that overflow, send the plain update
        to :meth:`project`, the careful path (the same answer for every dataset). A ball shrinks
        by :meth:`_ball_shrink` of the sum, whose proof holds for any summation order, each
        product rounded as numpy's ``W * shrink``.
        """
        update, scale_in_place = kernels
        W = np.ascontiguousarray(W, dtype=np.float64)
        b = np.ascontiguousarray(b, dtype=np.float64)
        new_W, new_b = np.empty(W.shape), np.empty(b.shape)  # C order, which the kernel writes through
        ball = self.norm_ball
        squares, squares_b = update(W, b, step_W, step_b, float(scale), -1.0 if ball else float(self.weight_bound),
                                    float(self.bias_bound), new_W, new_b)
        if not (math.isfinite(squares) and math.isfinite(squares_b)):  # an entry overflowed or is NaN: the careful path
            return self.project(new_W, new_b)
        if ball:
            shrink = self._ball_shrink(squares, W.size)
            if shrink < 1.0:
                scale_in_place(new_W, shrink)
        return new_W, new_b

    def _ball_shrink(self, squares: float, size: int) -> float:
        """The factor that brings ``W`` inside the Frobenius ball, from its float sum of squares (1.0: already inside).

        An upper bound on ``||W||``: a float sum ``S^`` of ``n`` squares (each rounded) in any order
        is at least ``(1 - gamma_n)`` times the exact one (Higham 2002, 3.1), and squares that
        underflow hide at most ``n TINY / 2`` more (2.1), so ``||W|| <= sqrt(S^ + n TINY) (1 + gamma_n)``
        (``1 / sqrt(1 - g) <= 1 + g`` for ``g <= 1/2``); the root and the product are rounded up.
        The shrink factor aims at the radius less ``sqrt(n) TINY`` (what products that underflow
        can add back, :func:`~opendp_hybridad.analysis.rounding.underflow_allowance`), is rounded
        down and then shrunk by ``2^-50 = 8 u``, which covers the rounding of each product
        ``W_ij * shrink`` (at most ``u`` relative: ``(1 - 8 u)(1 + u) < 1``). Where that leaves
        no positive factor (a radius below what rounding can resolve, or squares that overflow),
        the factor is 0: zero weights are inside every ball.
        """
        # every step runs this: up / down of a correctly rounded result (one float outward) instead
        # of the exactness checks of mul_up and friends; the same bounds, a little looser. The
        # terms that depend on the layer alone are computed once (_ball_constants)
        hidden, factor, target = _ball_constants(self.weight_bound, size)
        # ||W||^2 <= (S^ + hidden) / (1 - gamma_n) (Higham's gamma bounds S^ below by (1 - gamma_n) S), so
        # ||W|| <= sqrt(S^ + hidden) (1 + gamma_n), as 1 / sqrt(1 - g) <= 1 + g for g <= 1/2: the factor
        # goes on the root (on the squares, 1 + gamma_(n+2) fell below 1 / (1 - gamma_n) past n = 2^27;
        # audit attack_dense_update.py)
        norm_up = up(up(math.sqrt(up(squares + hidden))) * factor)
        if not norm_up > self.weight_bound:
            return 1.0
        shrink = down(down(target / norm_up) * (1.0 - 8.0 * UNIT_ROUNDOFF)) if target > 0 else 0.0
        return shrink if shrink > 0 else 0.0

    def project(self, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Back onto the certified set (used by the ``bound`` mode after each step).

        A NaN or infinite entry (an update that overflowed) becomes 0 first, a point of every
        weight set: clipping keeps NaN and ``inf * 0`` is NaN, so neither would land inside.
        """
        W, b = _finite(W), _finite(b)
        if self.norm_ball:
            flat = W.ravel()
            with np.errstate(over="ignore"):  # squares that overflow give inf, which _ball_shrink maps to 0
                squares = float(np.dot(flat, flat))
            shrink = self._ball_shrink(squares, flat.size)
            if shrink < 1.0:
                W = W * shrink
        elif np.abs(W).max(initial=0.0) > self.weight_bound:
            W = np.clip(W, -self.weight_bound, self.weight_bound)
        if np.abs(b).max(initial=0.0) > self.bias_bound:
            b = np.clip(b, -self.bias_bound, self.bias_bound)
        return W, b

    # -- the Layer protocol: shapes and parameters --------------------------------------------------
    def describe(self) -> str:
        return f"dense({self.in_features}->{self.out_features})"

    def closed_form(self, index: int) -> str:
        return f"a_{index} = W_{index} a_{index - 1} + b_{index}   (W_{index}: {self.out_features}x{self.in_features})"

    def expected_input_shape(self) -> Shape:
        return (self.in_features,)

    def output_shape(self, input_shape: Shape) -> Shape:
        if tuple(input_shape) != (self.in_features,):
            raise self._refuse(f"takes inputs of shape ({self.in_features},), not {tuple(input_shape)} (flatten first)")
        return (self.out_features,)

    def param_shapes(self, input_shape: Shape) -> tuple[Shape, ...]:
        return ((self.out_features, self.in_features), (self.out_features,))

    def init(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        scale = min(self.weight_bound, 1.0 / math.sqrt(self.in_features))
        W = rng.uniform(-scale, scale, (self.out_features, self.in_features))
        return self.project(W, np.zeros(self.out_features))

    def project_params(self, params: Params) -> Params:
        return self.project(*params)

    def update(self, params: Params, step: np.ndarray, scale: float, project: bool) -> Params:
        W, b = params
        return self.apply_flat_step(W, b, step, 0, scale, project)

    def witness_params(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        if self.norm_ball:
            W = rng.standard_normal((self.out_features, self.in_features))
            W = W * (self.weight_bound / np.sqrt((W * W).sum()))
        else:
            W = self.weight_bound * np.sign(rng.standard_normal((self.out_features, self.in_features)))
        return W, self.bias_bound * np.sign(rng.standard_normal(self.out_features))

    def weight_norms(self, params: Params | None, rows: bool = True) -> tuple[float, float, float, float]:
        """``(R, b_max, F, B)``: bounds on the largest row norm of ``W``, ``max |b_j|``, ``||W||_F`` (>= ``||W||_2``), ``||b||``.

        ``params`` None: over the declared weight set. Otherwise of these (public) weights:
        float norms raised by ``gamma_(n+2)`` and by ``sqrt(2 n TINY)`` for squares that underflow
        (:func:`~opendp_hybridad.analysis.rounding.float_norm2_up`), so they bound the exact norms. ``rows=False`` takes
        ``R = F`` (one dot product per array instead of a pass per row).
        """
        if params is None:
            bias_norm = up(sqrt_up(float(self.out_features)) * self.bias_bound)
            return (self.row_bound(), self.bias_bound, self.operator_bound, bias_norm)
        W, b = params
        flat = W.reshape(-1)
        # one float dot product each, raised by gamma and by what underflowing squares can hide
        F = float_norm2_up(flat)
        B = float_norm2_up(b)
        R = float_max_row_norm2_up(W) if rows else F
        return (as_bound(R), float(np.abs(b).max(initial=0.0)), as_bound(F), as_bound(B))

    # -- kernels ------------------------------------------------------------------------------------
    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, None]:
        W, b = params
        z = _matmul(x, W.T)
        z += b
        return z, None

    def backward(self, params: Params, x: np.ndarray, cache: None, delta: np.ndarray) -> np.ndarray:
        return _matmul(delta, params[0])

    def per_example_gradients(self, params: Params, x: np.ndarray, cache: None, delta: np.ndarray) -> tuple[np.ndarray, ...]:
        return np.einsum("bo,bi->boi", delta, x), delta.copy()

    def per_example_squared_norms(self, params: Params, x: np.ndarray, cache: None, delta: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", delta, delta) * (np.einsum("ij,ij->i", x, x) + 1.0)

    def accumulate(self, params: Params, x: np.ndarray, cache: None, delta: np.ndarray, out: tuple[np.ndarray, ...],
                   first: bool) -> None:
        """``gW (+)= delta^T x`` and ``gb (+)= sum_i delta_i``, written in place (``first``: over what was there).

        Each entry stays a float sum over the block's rows of one product ``delta_ij x_ik`` per
        example (the protocol's contract), added to what the earlier blocks left: the first block
        writes the product straight into ``gW`` (no temporary, no 8 MB copy for a 1024x784 layer);
        later blocks add theirs with BLAS gemm and ``beta = 1`` (:func:`_add_product`), so ``gW`` is
        read and written once by the product instead of a temporary and a second pass. Only the
        summation order differs from ``gW + delta^T x``, and the float-sum bound holds for any order.
        A ``_matmul`` put in by tests (another summation order) is used as it is, through a temporary.
        """
        gW, gb = out
        if _matmul is not np.matmul:
            if first:
                gW[...] = _matmul(delta.T, x)
            else:
                gW += _matmul(delta.T, x)
        elif first or not _add_product(gW, delta, x):
            if first:
                np.matmul(delta.T, x, out=gW)
            else:
                gW += np.matmul(delta.T, x)
        if first:
            np.sum(delta, axis=0, out=gb)
        else:
            gb += delta.sum(axis=0)

    # -- certified bounds (module docstring) ---------------------------------------------------------
    # products of non-negative bounds are up(x * y): a correctly rounded product moved one float up is
    # not below the exact one (rounding.py); the per-step bound runs these every step
    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        R, b_max, F, B = norms
        unit = add_up(up(R * inp.norm), b_max)
        norm = add_up(up(F * inp.norm), B)
        e_a = inp.error
        e_z = add_up(up(F * e_a), up(_gamma_cached(self.in_features + 1) * add_up(up(F * add_up(inp.norm, e_a)), B)))
        # and what gradual underflow adds to each of the out_features sums of in_features + 1 terms
        e_z = add_up(e_z, underflow_allowance(self.out_features, self.in_features + 1))
        return ActivationBound((self.out_features,), norm, unit, e_z, add_up(unit, e_z))

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        F = norms[2]
        d, e_d = out.norm, out.error
        e_v = add_up(up(F * e_d), up(_gamma_cached(self.out_features) * up(F * add_up(d, e_d))))
        e_v = add_up(e_v, underflow_allowance(self.in_features, self.out_features))  # gradual underflow, as forward
        return DeltaBound((self.in_features,), up(F * d), e_v)

    def gradient_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> GradientBound:
        a, e_a, d, e_d = inp.norm, inp.error, out.norm, out.error
        squared = up(up(d * d) * add_up(up(a * a), 1.0))
        # ||d^ a^^T - d a^T|| <= e_d ||a^|| + ||d|| e_a, and the bias part e_d
        error = add_up(up(e_d * add_up(add_up(a, e_a), 1.0)), up(d * e_a))
        a_hat, d_hat = add_up(a, e_a), add_up(d, e_d)
        ops = float(self.in_features + self.out_features + 3)
        absolute = up(up(4.0 * ops * TINY) * add_up(add_up(up(a_hat * a_hat), up(d_hat * d_hat)), 2.0))
        return GradientBound(squared, error, _gamma_cached(self.in_features + self.out_features + 2), absolute)
