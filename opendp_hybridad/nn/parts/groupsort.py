"""GroupSort: sort each group of ``group_size`` consecutive units (``MaxMin`` is group size 2, largest first).

The activation of Lipschitz networks (Anil, Lucas and Grosse, *Sorting out Lipschitz
function approximation*, ICML 2019; Béthune et al., *DP-SGD without clipping: the
Lipschitz neural network way*, ICLR 2024, lip-dp). Groups run along the first
per-example axis (features of a vector, channels of a ``(C, ...)`` tensor), which must be
a multiple of ``group_size``. No parameters.

**Certified bounds** (exact, so the ``K`` recursion loses nothing here). Per example the
output is a permutation of the input, so ``||out|| = ||a||``, ``max |out_j| = max |a_j|``,
and the delta at the input is the inverse permutation of the delta at the output:
``||delta_in|| = ||delta||``. Sorting is 1-Lipschitz in l2 (``||sort x - sort y|| <=
||x - y||``: ``||sort x - sort y||^2 = ||x||^2 + ||y||^2 - 2 sum x_(i) y_(i)`` and
``sum x_(i) y_(i) >= sum x_i y_i``, the rearrangement inequality, Hardy, Littlewood and
Pólya 1934, Theorem 368), and a sort moves values without arithmetic, so the forward
error passes through unchanged: ``e_out <= e_in``.

**No backward error bound.** The Jacobian is a permutation that jumps where two units of
a group tie: a computed input that rounds across a tie swaps two entries of the delta, an
O(1) change. So unless the input is exact (``e_in = 0``: the permutation is then the
exact one, ties broken alike), the backward error is ``math.inf``, exactly like relu's
(:class:`~opendp_hybridad.nn.layers.ReLU`); DP-SGD's float-sum argument then has no finite
``e`` and only its clipping mode applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound, Layer, Params, Shape
from opendp_hybridad.nn.registry import register_layer


@register_layer("groupsort")
@dataclass(frozen=True)
class GroupSort(Layer):
    """Sort each group of ``group_size`` consecutive units along the first per-example axis (ascending unless ``descending``)."""

    group_size: int = 2
    descending: bool = False

    def __post_init__(self) -> None:
        g = self.group_size
        if not (isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g >= 1):
            raise DeclarationError("groupsort: group_size must be a positive int")
        if not isinstance(self.descending, bool):
            raise DeclarationError("groupsort: descending must be True or False")

    def describe(self) -> str:
        return f"groupsort({self.group_size})"

    def closed_form(self, index: int) -> str:
        order = "descending" if self.descending else "ascending"
        return f"a_{index} = sort each group of {self.group_size} units of a_{index - 1} ({order})"

    def output_shape(self, input_shape: Shape) -> Shape:
        shape = tuple(input_shape)
        if len(shape) == 0 or shape[0] % self.group_size:
            raise self._refuse(f"the first axis must be a multiple of {self.group_size}, not {shape}")
        return shape

    def _grouped(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], x.shape[1] // self.group_size, self.group_size, *x.shape[2:])

    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        grouped = self._grouped(x)
        key = -grouped if self.descending else grouped
        order = np.argsort(key, axis=2, kind="stable")  # ties keep their order: a function of the example alone
        return np.take_along_axis(grouped, order, axis=2).reshape(x.shape), order

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        out = np.empty(self._grouped(x).shape)
        np.put_along_axis(out, cache, self._grouped(delta), axis=2)  # the inverse permutation
        return out.reshape(x.shape)

    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        return ActivationBound(self.output_shape(inp.shape), inp.norm, inp.unit, inp.error, inp.computed_unit)

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        # a computed input off by anything can round across a tie: the permutation, and the delta, jump
        error = out.error if inp.error == 0 else math.inf
        return DeltaBound(inp.shape, out.norm, error)


@register_layer("maxmin")
@dataclass(frozen=True)
class MaxMin(GroupSort):
    """GroupSort with groups of two, largest first (Anil, Lucas and Grosse 2019)."""

    group_size: int = 2
    descending: bool = True

    def __post_init__(self) -> None:
        if self.group_size != 2 or not self.descending:
            raise DeclarationError("maxmin: groups of two, largest first (use GroupSort for others)")

    def describe(self) -> str:
        return "maxmin"
