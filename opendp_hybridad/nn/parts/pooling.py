"""Average pooling ``AvgPool1d`` and ``AvgPool2d`` (kernel = stride, no padding; a trailing remainder is dropped, as torch does).

Per example and channel, each window ``w`` of ``K`` entries (``K = k`` or ``kh kw``) gives
``out_w = (1/K) sum_(j in w) a_j``; the delta at the input is ``delta_w / K`` on each of
the window's entries (zero on a dropped remainder). No parameters.

**Certified bounds** (exact, rounded up through :mod:`opendp_hybridad.analysis.rounding`):

* ``|out_w| <= max_j |a_j|``, and ``||out|| <= ||a|| / sqrt(K)``: by Cauchy-Schwarz
  ``(sum_w a_j / K)^2 <= (sum_w a_j^2) / K``, and the windows are disjoint;
* ``||delta_in||^2 = sum_w K (delta_w / K)^2 = ||delta||^2 / K`` exactly.

**Float error** (Higham 2002, section 3.1 and Lemma 3.3; section 2.1 for underflow): the
computed mean is ``fl(fl(sum_w a^_j) / K)``: a sum of ``K`` terms in any order (the kernel
adds ``K`` strided views of the input, one per window offset, so each window's entries are
summed left to right in offset order; the bound does not depend on that order) and one
division, within ``gamma_K sum_w |a^_j| / K`` of the exact mean of the computed inputs
(``(1 + gamma_(K-1))(1 + u) <= 1 + gamma_K``), plus ``TINY / 2`` if the quotient
underflows. In l2 over the windows ``|| sum_w |a^_j| / K || <= ||a^|| / sqrt(K)``, so
``e_out <= (e_in + gamma_K (A + e_in)) / sqrt(K) + sqrt(m) TINY`` (``m`` outputs). The
backward ``fl(delta^_w / K)`` rounds once (exact when ``K`` is a power of two) and is stored,
unchanged, into each of the window's ``K`` entries (strided stores, no arithmetic):
``e_d,in <= (e_d + u (D + e_d)) / sqrt(K) + sqrt(entries) TINY``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad.analysis.rounding import UNIT_ROUNDOFF, add_up, div_up, gamma, sqrt_down, underflow_allowance
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.parts.conv import _prod_up, _sum_up
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, Layer, Params, Shape
from opendp_hybridad.nn.registry import register_layer


def _kernel(value: Any, nd: int, owner: str) -> tuple[int, ...]:
    items = (value,) * nd if isinstance(value, (int, np.integer)) else tuple(value) if isinstance(value, (tuple, list)) else None
    if items is None or len(items) != nd or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        raise DeclarationError(f"{owner}: kernel_size must be an int or {nd} ints")
    if any(int(v) < 1 for v in items):
        raise DeclarationError(f"{owner}: kernel_size must be at least 1")
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class _AvgPoolNd(Layer):
    """Average pooling over ``nd`` spatial axes of a ``(C, *S)`` input, windows of ``kernel_size`` with stride ``kernel_size``."""

    kernel_size: Any

    nd = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", _kernel(self.kernel_size, self.nd, f"avgpool{self.nd}d"))

    @property
    def window(self) -> int:
        """``K``: entries per window."""
        return math.prod(self.kernel_size)

    def describe(self) -> str:
        return f"avgpool{self.nd}d({'x'.join(str(k) for k in self.kernel_size)})"

    def closed_form(self, index: int) -> str:
        return f"a_{index}[c, w] = mean over window w of a_{index - 1}[c, :]   ({self.describe()}, stride = kernel)"

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = tuple(input_shape)
        if len(shape) != 1 + self.nd:
            raise self._refuse(f"takes inputs of shape (channels, {', '.join(['size'] * self.nd)}), not {shape}")
        grid = tuple(s // k for s, k in zip(shape[1:], self.kernel_size, strict=True))
        if any(g < 1 for g in grid):
            raise self._refuse("the window is larger than the input")
        return (shape[0], *grid)

    def _grid(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output grid of a batched input shape ``(B, C, *S)``."""
        return tuple(s // k for s, k in zip(shape[2:], self.kernel_size, strict=True))

    def _offsets(self, grid: tuple[int, ...]) -> list[tuple[slice, ...]]:
        """One strided slice per window offset ``o`` (``K`` of them): entry ``o`` of every window, ``(B, C, *grid)``."""
        return [(slice(None), slice(None), *tuple(slice(o, o + g * k, k) for o, g, k in zip(offset, grid, self.kernel_size,
                                                                                             strict=True)))
                for offset in itertools.product(*(range(k) for k in self.kernel_size))]

    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        views = [x[index] for index in self._offsets(self._grid(x.shape))]
        # the window sums: K strided views added one after another (a sum of K terms per window, in
        # offset order), then one division per output entry
        s = np.add(views[0], views[1]) if len(views) > 1 else views[0].copy()
        for v in views[2:]:
            s += v
        s /= float(self.window)
        return s, None

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        grid = self._grid(x.shape)
        share = delta / float(self.window)  # one rounding per entry (none when K is a power of two)
        # every entry lies in at most one window: K strided stores; zeros only where a remainder is dropped
        whole = all(g * k == s for g, k, s in zip(grid, self.kernel_size, x.shape[2:], strict=True))
        out = np.empty(x.shape) if whole else np.zeros(x.shape)
        for index in self._offsets(grid):
            out[index] = share
        return out

    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        K = self.window
        root_k = sqrt_down(float(K))  # dividing by a lower bound of sqrt(K) gives an upper bound
        shape = self.output_shape(inp.shape)
        m = math.prod(shape)
        e_in = inp.error
        g = gamma(K)
        e_out = _sum_up(div_up(add_up(e_in, _prod_up(g, inp.computed_norm)), root_k), underflow_allowance(m, 1))
        computed_unit = add_up(_prod_up(inp.computed_unit, add_up(1.0, g)), underflow_allowance(1, 1))
        return ActivationBound(shape, div_up(inp.norm, root_k), inp.unit, e_out, computed_unit)

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        root_k = sqrt_down(float(self.window))
        d, e_d = out.norm, out.error
        e_in = _sum_up(div_up(add_up(e_d, _prod_up(UNIT_ROUNDOFF, add_up(d, e_d))), root_k), underflow_allowance(inp.size, 1))
        return DeltaBound(inp.shape, div_up(d, root_k), e_in)


@register_layer("avgpool1d")
@dataclass(frozen=True)
class AvgPool1d(_AvgPoolNd):
    """Average pooling of ``(C, L)`` inputs over windows of ``kernel_size`` (stride = kernel_size, no padding)."""

    nd = 1


@register_layer("avgpool2d")
@dataclass(frozen=True)
class AvgPool2d(_AvgPoolNd):
    """Average pooling of ``(C, H, W)`` inputs over ``kh x kw`` windows (stride = kernel, no padding)."""

    nd = 2

