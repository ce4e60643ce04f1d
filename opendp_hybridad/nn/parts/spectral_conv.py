"""Lipschitz convolutions: the kernel's matrix view in a spectral ball ``||W_mat||_2 <= r``, kept there by a certified projection.

:class:`SpectralConv1d` and :class:`SpectralConv2d` are :class:`~opendp_hybridad.nn.parts.conv.Conv1d` and
:class:`~opendp_hybridad.nn.parts.conv.Conv2d` (same kernels, same geometry, notation of
:mod:`~opendp_hybridad.nn.parts.conv`: ``P`` output positions, ``n = C k`` entries per patch,
``c`` the most patches an input entry lies in) whose declared weight set is the spectral
ball of the matrix view ``W_mat`` (``out x n``) of the kernel, as
:class:`~opendp_hybridad.nn.parts.lipschitz.SpectralDense` for a dense weight. The certified
spectral norm and the projection are :func:`~opendp_hybridad.nn.parts.lipschitz.spectral_norm_up`
and :meth:`SpectralDense.project <opendp_hybridad.nn.parts.lipschitz.SpectralDense.project>`
applied to ``W_mat`` (optional Björck steps, then the certified radial scaling; bias clipped).

**Weight norms** ``(R, b_max, F, B, S)``: largest filter norm, largest bias, ``||W_mat||_F``,
``||b||``, and ``S >= ||W_mat||_2``. Over the declared set ``S = r``, ``R <= r`` (a row norm is
at most the spectral norm), ``F <= sqrt(min(out, n)) r``, ``B <= sqrt(out) b_max``; of given
public weights ``S`` is the certified :func:`spectral_norm_up` of ``W_mat``, ``R = min(row norms, S)``.

**The bounds** are the convolution's with ``S`` in place of ``F`` wherever ``F`` stands for the
operator norm in an exact term (:meth:`~opendp_hybridad.nn.parts.conv._ConvNd.operator_norm`);
the rounding terms keep ``F`` (entrywise ``|W_mat|`` enters, and ``|| |W_mat| ||_2 <= ||W_mat||_F``):

* the output: ``z_p = W_mat a_p + b``, so ``||z||^2 = sum_p ||W_mat a_p + b||^2`` and by the
  triangle inequality in ``l2`` over positions ``||z|| <= ||W_mat im2col(a)^T||_F + sqrt(P) ||b||
  <= S ||im2col(a)||_F + sqrt(P) ||b||`` (``||A X||_F <= ||A||_2 ||X||_F``, column by column);
  with ``||im2col(a)||_F <= sqrt(c) ||a||`` the propagated input error is ``S sqrt(c) e_a``;
* the transposed operator: ``dLoss/da = col2im(D W_mat)`` and ``||D W_mat||_F <= ||D||_F S``,
  while col2im is the adjoint of im2col, whose operator norm is at most ``sqrt(c)``; so
  ``||col2im(D W_mat)|| <= sqrt(c) S ||D||`` (and ``sqrt(c) S e_d`` for a delta's error);
* the gradient block reads no weight norm: it is the convolution's,
  ``||D^T im2col(a)||_F^2 + ||sum_p delta_p||^2 <= D^2 (A_col^2 + P)``.

Over the declared set ``S = r`` while the Frobenius-ball convolution of the same radius has
``F = r`` but the spectral ball holds matrices with ``||W_mat||_F`` up to ``sqrt(rank) r``: the
weights are richer at the same per-example bound ``K``; the Frobenius-ball layer of radius
``sqrt(min(out, n)) r``, which contains the spectral ball, has a larger ``K`` once ``rank > 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opendp_hybridad.analysis.rounding import float_max_row_norm2_up, float_norm2_up, sqrt_up, up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d, _ConvNd
from opendp_hybridad.nn.parts.lipschitz import DEFAULT_SQUARINGS, SpectralDense, frobenius_up, spectral_norm_up
from opendp_hybridad.nn.protocol import Params, Shape, as_bound
from opendp_hybridad.nn.registry import register_layer


@dataclass(frozen=True)
class _SpectralConvNd(_ConvNd):
    """A convolution whose ``W_mat`` (``out x C prod(kernel)``) lies in ``||W_mat||_2 <= weight_bound``; ``|b_j| <= bias_bound``.

    ``orthogonalize`` and ``squarings`` as :class:`~opendp_hybridad.nn.parts.lipschitz.SpectralDense`.
    """

    orthogonalize: int = 0
    squarings: int = DEFAULT_SQUARINGS

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.describe_kind()
        if self.norm_ball:
            raise DeclarationError(f"{name}: the weight set is the spectral ball; norm_ball does not apply")
        if not (isinstance(self.orthogonalize, int) and not isinstance(self.orthogonalize, bool) and self.orthogonalize >= 0):
            raise DeclarationError(f"{name}: orthogonalize must be a non-negative number of Björck steps")
        if not (isinstance(self.squarings, int) and not isinstance(self.squarings, bool) and 1 <= self.squarings <= 30):
            raise DeclarationError(f"{name}: squarings must be an integer from 1 to 30")

    # -- the weight set ----------------------------------------------------------------------------
    def describe_kind(self) -> str:
        return f"spectral_conv{self.nd}d"

    def describe(self) -> str:
        k = "x".join(str(v) for v in self.kernel_size)
        return f"spectral_conv{self.nd}d({self.in_channels}->{self.out_channels}, k={k})"

    def closed_form(self, index: int) -> str:
        return (f"a_{index}[:, p] = W_{index} patch_p(a_{index - 1}) + b_{index}   (conv{self.nd}d, kernel {self.kernel_size}, "
                f"stride {self.stride}, zero padding {self.padding}; W_{index}: {self.out_channels}x{self.patch_size}, "
                f"||W_{index}||_2 <= {self.weight_bound:g})")

    def _spectral(self) -> SpectralDense:
        """The dense layer on ``W_mat`` whose certified projection this layer's is."""
        return SpectralDense(self.patch_size, self.out_channels, float(self.weight_bound), float(self.bias_bound),
                             orthogonalize=self.orthogonalize, squarings=self.squarings)

    def _matrix(self, W: np.ndarray) -> np.ndarray:
        return np.asarray(W, dtype=np.float64).reshape(self.out_channels, self.patch_size)

    def _kernel(self, Wm: np.ndarray) -> np.ndarray:
        return Wm.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def project_params(self, params: Params) -> Params:
        """Back onto the certified set: :meth:`SpectralDense.project` on ``W_mat`` (NaN to 0, Björck, certified scaling; bias clip)."""
        W, b = params
        Wm, b = self._spectral().project(self._matrix(W), np.asarray(b, dtype=np.float64))
        return self._kernel(Wm), b

    def update(self, params: Params, step: np.ndarray, scale: float, project: bool) -> Params:
        W, b = params
        new_W = W - scale * step[:W.size].reshape(W.shape)
        new_b = b - scale * step[W.size:W.size + b.size]
        return self.project_params((new_W, new_b)) if project else (new_W, new_b)

    def _orthogonal(self, rng: np.random.Generator) -> np.ndarray:
        m, n = self.out_channels, self.patch_size
        Q, R = np.linalg.qr(rng.standard_normal((max(m, n), min(m, n))))
        Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
        return Q if m >= n else Q.T

    def init(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        """An orthogonal ``W_mat`` times ``min(r, 1)``, projected (so certified inside), zero bias."""
        W = self._orthogonal(rng) * min(float(self.weight_bound), 1.0)
        return self.project_params((self._kernel(W), np.zeros(self.out_channels)))

    def witness_params(self, rng: np.random.Generator, input_shape: Shape | None = None) -> Params:
        """Extreme points: ``r`` times an orthogonal ``W_mat`` (every singular value ``r``), bias at a corner of its box."""
        W = self._orthogonal(rng) * float(self.weight_bound)
        return self._kernel(W), self.bias_bound * np.sign(rng.standard_normal(self.out_channels))

    def weight_norms(self, params: Params | None, rows: bool = True) -> tuple[float, float, float, float, float]:
        """``(R, b_max, F, B, S)`` (module docstring); ``rows=False`` takes ``R = S``."""
        r = float(self.weight_bound)
        if params is None:
            F = up(sqrt_up(float(min(self.out_channels, self.patch_size))) * r)
            B = up(sqrt_up(float(self.out_channels)) * self.bias_bound)
            return (r, float(self.bias_bound), F, B, r)
        W, b = params
        Wm = self._matrix(W)
        F = frobenius_up(Wm)
        S = min(spectral_norm_up(Wm, self.squarings), F)
        B = as_bound(float_norm2_up(np.asarray(b, dtype=np.float64)))
        R = min(as_bound(float_max_row_norm2_up(Wm)), S) if rows else S
        return (as_bound(R), as_bound(float(np.abs(b).max(initial=0.0))), as_bound(F), B, as_bound(S))

    def operator_norm(self, norms: tuple[float, ...]) -> float:
        """``S`` (the fifth weight norm): ``>= ||W_mat||_2``."""
        return norms[4]


@register_layer("spectral_conv1d")
@dataclass(frozen=True)
class SpectralConv1d(_SpectralConvNd, Conv1d):
    """:class:`~opendp_hybridad.nn.parts.conv.Conv1d` with ``||W_mat||_2 <= weight_bound`` (module docstring)."""

    nd = 1


@register_layer("spectral_conv2d")
@dataclass(frozen=True)
class SpectralConv2d(_SpectralConvNd, Conv2d):
    """:class:`~opendp_hybridad.nn.parts.conv.Conv2d` with ``||W_mat||_2 <= weight_bound`` (module docstring)."""

    nd = 2
