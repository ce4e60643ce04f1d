"""Lipschitz dense layers: weights in an operator-norm ball ``||W||_2 <= r``, kept there by a certified projection.

The anchor is Béthune et al., *DP-SGD Without Clipping: The Lipschitz Neural Network Way*
(ICLR 2024): when every layer is Lipschitz with a known constant, the per-example
gradient norm is bounded by products of those constants, so a bound computed from
spectral norms (not Frobenius norms, which exceed them by up to ``sqrt(rank)``) sits
close to the norms that occur.

**The certified spectral norm** (:func:`spectral_norm_up`). For any real matrix ``A``,
``||A||_2^2 = ||A^T A||_2`` (singular values). Let ``A_0`` be ``W`` (or ``W^T``, whichever
has the smaller Gram matrix), ``G_j = fl(A_j^T A_j)`` and ``A_(j+1) = 2^(-s_j) G_j`` (a
power-of-two scaling, exact except where an entry underflows). Higham (2002, section 3.5)
gives ``|G_j - A_j^T A_j| <= gamma_p |A_j|^T |A_j|`` entrywise for ``p``-term dot products
in any summation order, and ``|| |A|^T |A| ||_F <= ||A||_F^2``; gradual underflow adds at
most :func:`~opendp_hybridad.analysis.rounding.underflow_allowance`. By the triangle
inequality and ``||.||_2 <= ||.||_F``::

    ||A_j||_2^2 <= 2^(s_j) (||A_(j+1)||_2 + q TINY) + gamma_p ||A_j||_F^2 + underflow,
    ||A_k||_2   <= ||A_k||_F,

so from ``b_k`` (a rounded-up Frobenius norm) the recursion ``b_j = sqrt(...)`` rounded up
gives ``||W||_2 <= b_0``. The last step loses at most a factor ``rank^(1 / 2^(k+1))``
(``1.0005`` for rank 64 and the default ``k = 12`` squarings), the rounding terms ``~1e-14`` relative.
The result is also capped by the Frobenius norm, itself a proven bound.

**The projection** (:meth:`SpectralDense.project`): if the certified ``S >= ||W||_2``
exceeds ``r``, ``W`` is multiplied by ``c = down(r / (S + u F))`` with ``F >= ||W||_F``:
each product rounds by at most ``u c |W_ij|`` (plus ``TINY / 2`` in underflow), a
perturbation of spectral norm at most ``u c ||W||_F``, so
``||fl(c W)||_2 <= c S + u c F <= r`` (the underflow part is covered by taking ``r``
less ``sqrt(mn) TINY``). Optionally a few Björck orthonormalisation steps
``V <- 1.5 V - 0.5 V V^T V`` on ``W / r`` first (Björck and Bowie 1971; the layers of
Anil, Lucas and Grosse 2019 and of lip-dp): they only move public weights towards the
orthogonal matrices (all singular values ``r``: gradient-norm preserving); membership
is then proven by the same certified scaling, never assumed.

**Certified bounds** of :class:`SpectralDense` (weight norms ``(R, b_max, S, B, F)``:
largest row norm, largest bias, spectral norm, bias norm, Frobenius norm; input bounds
``A >= ||a||``, ``e_a >= ||a^ - a||``):

* exact: ``|z_j| <= R A + b_max``, ``||z|| <= S A + B``; ``||W^T delta|| <= S ||delta||``;
* computed: ``z^ - z = W (a^ - a) + (fl(W a^ + b) - (W a^ + b))``, so
  ``e_z <= S e_a + gamma_(n+1) (F (A + e_a) + B)`` (the rounding term is entrywise at most
  ``gamma_(n+1) (|W| |a^| + |b|)`` and ``|| |W| ||_2 <= ||W||_F``); backward
  ``e_v <= S e_d + gamma_m F (D + e_d)``; each plus the gradual-underflow allowance (as Dense);
* the gradient block is :class:`~opendp_hybridad.nn.parts.dense.Dense`'s (it reads no weight norm).

Over the declared set: ``R <= r`` (a row norm is at most the spectral norm),
``S = r``, ``F <= sqrt(min(m, n)) r``, ``||b|| <= sqrt(m) b_max``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from opendp_hybridad.analysis.rounding import (
    TINY,
    UNIT_ROUNDOFF,
    add_down,
    add_up,
    down,
    float_max_row_norm2_up,
    float_norm2_up,
    gamma,
    sqrt_up,
    underflow_allowance,
    up,
)
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.dense import Dense, _finite
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, Params, Shape, as_bound
from opendp_hybridad.nn.registry import register_layer

_gamma = functools.lru_cache(maxsize=None)(gamma)

#: the matrix product of the certified norm; tests put another summation order in its place
_matmul = np.matmul

#: Gram squarings of the spectral bound: the last step's looseness is rank^(1/2^(k+1)) (1.0005 at rank 64)
DEFAULT_SQUARINGS = 12


def frobenius_up(A: np.ndarray) -> float:
    """``>= ||A||_F`` (:func:`~opendp_hybridad.analysis.rounding.float_norm2_up`: one float dot product, raised by
    ``gamma_(n+2)`` and by what underflowing squares can hide); ``inf`` if it overflows."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is inf, a bound still
        return as_bound(float_norm2_up(np.asarray(A, dtype=np.float64)))


def spectral_norm_up(W: np.ndarray, squarings: int = DEFAULT_SQUARINGS) -> float:
    """A proven upper bound on ``||W||_2`` (module docstring: repeated Gram squaring, Higham 2002 section 3.5).

    Never below the exact spectral norm of the float matrix ``W``; within a factor
    ``rank^(1 / 2^(squarings+1))`` of it, and never above the rounded-up Frobenius norm.
    ``inf`` for a non-finite matrix.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise DeclarationError("spectral_norm_up takes a matrix")
    frob = frobenius_up(W)
    if frob == 0.0 or not math.isfinite(frob) or squarings <= 0:
        return frob
    A = W if W.shape[1] <= W.shape[0] else W.T  # A^T A is the smaller Gram matrix
    q = A.shape[1]
    # per level j: (s_j, E_j), the power of two taken out of G_j and the rounding allowance of G_j
    levels: list[tuple[int, float]] = []
    for _ in range(squarings):
        p = A.shape[0]
        F_A = frobenius_up(A)
        with np.errstate(over="ignore", invalid="ignore"):
            G = _matmul(A.T, A)
        top = float(np.abs(G).max(initial=0.0))
        if not math.isfinite(top) or not math.isfinite(F_A):
            return frob
        E = add_up(up(_gamma(p) * up(F_A * F_A)), underflow_allowance(q * q, p))
        if top == 0.0:  # A^T A rounds to zero: ||A||_2^2 <= E
            levels.append((0, E))
            A = G
            break
        s = math.frexp(top)[1]  # top < 2^s: A_(j+1) has entries below 1 in magnitude
        levels.append((s, E))
        A = np.ldexp(G, -s)
    b = frobenius_up(A)
    scale_error = up(float(q) * TINY)  # ||fl(2^-s G) - 2^-s G||_F where entries underflow
    for s, E in reversed(levels):
        b = sqrt_up(add_up(up(math.ldexp(add_up(b, scale_error), s)), E))
        if not math.isfinite(b):
            return frob
    return as_bound(min(b, frob))


def bjorck(W: np.ndarray, radius: float, steps: int) -> np.ndarray:
    """``steps`` Björck iterations ``V <- 1.5 V - 0.5 V V^T V`` on ``V = W / radius``, times ``radius``.

    Pushes the singular values of ``V`` towards 1 when they lie in ``(0, sqrt 3)``; a
    heuristic on public weights (no bound reads its result without the certified scaling).
    """
    if steps <= 0 or radius <= 0:
        return W
    V = W / radius
    top = spectral_norm_up(V, 6)
    if top > 1.5:  # outside the iteration's basin: scale in first
        V = V / top
    for _ in range(steps):
        V = 1.5 * V - 0.5 * (V @ (V.T @ V))
    return V * radius


@register_layer("spectral_dense")
@dataclass(frozen=True)
class SpectralDense(Dense):
    """``z = W a + b`` with ``W`` (out, in) in the spectral ball ``||W||_2 <= weight_bound`` and ``|b_j| <= bias_bound``.

    ``orthogonalize``: Björck steps applied by the projection before the certified scaling
    (0: the scaling alone, a radial retraction onto the ball, not the Euclidean projection,
    which would clip singular values). ``squarings``: Gram squarings of
    :func:`spectral_norm_up` (the looseness of the certified norm).
    """

    orthogonalize: int = 0
    squarings: int = DEFAULT_SQUARINGS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm_ball:
            raise DeclarationError("a spectral dense layer's weight set is the spectral ball; norm_ball does not apply")
        if not (isinstance(self.orthogonalize, int) and self.orthogonalize >= 0):
            raise DeclarationError("orthogonalize must be a non-negative number of Björck steps")
        if not (isinstance(self.squarings, int) and 1 <= self.squarings <= 30):
            raise DeclarationError("squarings must be an integer from 1 to 30")

    # -- the weight set ----------------------------------------------------------------------------
    @property
    def operator_bound(self) -> float:
        """``||W||_2 <= weight_bound`` over the declared set (the set itself)."""
        return float(self.weight_bound)

    def row_bound(self) -> float:
        """A row norm is at most the spectral norm (``||e_j^T W|| <= ||W||_2``)."""
        return float(self.weight_bound)

    def frobenius_bound(self) -> float:
        """``||W||_F <= sqrt(rank) ||W||_2 <= sqrt(min(m, n)) r`` over the declared set."""
        return up(sqrt_up(float(min(self.in_features, self.out_features))) * self.weight_bound)

    def project_weight(self, W: np.ndarray) -> np.ndarray:
        """``W`` moved into the spectral ball (module docstring: the certified scaling; identity if the bound is within)."""
        r = float(self.weight_bound)
        if self.orthogonalize:
            W = bjorck(W, r, self.orthogonalize)
        spectral = spectral_norm_up(W, self.squarings)
        if not spectral > r:
            return W
        frob = frobenius_up(W)
        # the underflow of the products c W_ij: at most TINY / 2 each, sqrt(mn) TINY / 2 in Frobenius norm
        target = add_down(r, -up(sqrt_up(float(W.size)) * TINY))  # rounded down: the reserve never rounds away
        finite = math.isfinite(spectral) and math.isfinite(frob)
        shrink = down(target / add_up(spectral, up(UNIT_ROUNDOFF * frob))) if finite else 0.0
        if not shrink > 0.0:
            return np.zeros_like(W)
        return W * shrink

    def project(self, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Back onto the certified set (the ``bound`` mode calls it after each step); NaN and infinite
        entries become 0 first (as :meth:`Dense.project`: a NaN spectral bound would pass the test)."""
        W, b = _finite(W), _finite(b)
        W = self.project_weight(W)
        if np.abs(b).max(initial=0.0) > self.bias_bound:
            b = np.clip(b, -self.bias_bound, self.bias_bound)
        return W, b

    def apply_step(self, W: np.ndarray, b: np.ndarray, step_W: np.ndarray, step_b: np.ndarray, scale: float,
                   project: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(W - scale step_W, b - scale step_b)``, projected back onto the certified set if ``project``."""
        new_W, new_b = W - scale * step_W.reshape(W.shape), b - scale * step_b
        return self.project(new_W, new_b) if project else (new_W, new_b)

    # -- the Layer protocol ----------------------------------------------------------------------------
    def describe(self) -> str:
        return f"spectral_dense({self.in_features}->{self.out_features})"

    def closed_form(self, index: int) -> str:
        return (f"a_{index} = W_{index} a_{index - 1} + b_{index}   (W_{index}: {self.out_features}x{self.in_features}, "
                f"||W_{index}||_2 <= {self.weight_bound:g})")

    def init(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        """An orthogonal matrix (QR of a Gaussian) times ``min(r, 1)``, projected (so certified inside)."""
        m, n = self.out_features, self.in_features
        Q, R = np.linalg.qr(rng.standard_normal((max(m, n), min(m, n))))
        Q = Q * np.sign(np.diag(R))
        W = Q if m >= n else Q.T
        return self.project(W * min(float(self.weight_bound), 1.0), np.zeros(m))

    def witness_params(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        """Extreme points: ``r`` times an orthogonal matrix (every singular value ``r``), bias at a corner of its box."""
        m, n = self.out_features, self.in_features
        Q, _ = np.linalg.qr(rng.standard_normal((max(m, n), min(m, n))))
        W = (Q if m >= n else Q.T) * float(self.weight_bound)
        return W, self.bias_bound * np.sign(rng.standard_normal(m))

    def weight_norms(self, params: Params | None, rows: bool = True) -> tuple[float, float, float, float, float]:
        """``(R, b_max, S, B, F)``: largest row norm, ``max |b_j|``, ``||W||_2``, ``||b||``, ``||W||_F``, all bounds.

        ``params`` None: over the declared set (module docstring). Otherwise of these
        (public) weights: the certified spectral norm (:func:`spectral_norm_up`), rounded-up
        Frobenius and row norms. ``rows=False`` takes ``R = S`` (no pass per row).
        """
        if params is None:
            bias_norm = up(sqrt_up(float(self.out_features)) * self.bias_bound)
            return (float(self.weight_bound), float(self.bias_bound), float(self.weight_bound), bias_norm, self.frobenius_bound())
        W, b = params
        F = frobenius_up(W)
        S = spectral_norm_up(W, self.squarings)
        B = frobenius_up(np.asarray(b).reshape(1, -1))
        R = min(as_bound(float_max_row_norm2_up(W)), S) if rows else S
        return (as_bound(R), float(np.abs(b).max(initial=0.0)), as_bound(S), as_bound(B), as_bound(F))

    # -- certified bounds (module docstring) ------------------------------------------------------------
    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        R, b_max, S, B, F = norms
        unit = add_up(up(R * inp.norm), b_max)
        norm = add_up(up(S * inp.norm), B)
        e_a = inp.error
        rounding = up(_gamma(self.in_features + 1) * add_up(up(F * add_up(inp.norm, e_a)), B))
        e_z = add_up(up(S * e_a), rounding)
        # and what gradual underflow adds to each of the out_features sums of in_features + 1 terms (as Dense)
        e_z = add_up(e_z, underflow_allowance(self.out_features, self.in_features + 1))
        return ActivationBound((self.out_features,), norm, unit, e_z, add_up(unit, e_z))

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        S, F = norms[2], norms[4]
        d, e_d = out.norm, out.error
        e_v = add_up(up(S * e_d), up(_gamma(self.out_features) * up(F * add_up(d, e_d))))
        e_v = add_up(e_v, underflow_allowance(self.in_features, self.out_features))  # gradual underflow, as forward
        return DeltaBound((self.in_features,), up(S * d), e_v)

