"""The contract between one layer of a DP-SGD model and :class:`~opendp_hybridad.nn.sequential.Sequential`.

A model is a chain of *parts* (layers) ``a_0 = x``, ``a_i = f_i(theta_i, a_{i-1})``,
followed by a loss on ``a_n``. Every part is a subclass of :class:`Layer` in its own
file under ``opendp_hybridad/nn/parts/``, registered by name with
:func:`opendp_hybridad.nn.registry.register_layer`. Sequential never looks inside a
part: it only calls the methods below.

**Shapes and parameters.** Arrays are batched: an input is ``(B, *in_shape)``, an
output ``(B, *out_shape)``; ``in_shape`` is the per-example shape (``(C, H, W)`` for
images). A part's parameters are a tuple of float64 arrays (``()`` for a
parameter-free part), shapes from :meth:`Layer.param_shapes`. The model's flat vector
(what ``gradient_sum`` writes and ``apply_step`` reads) is every part's arrays in order,
each flattened in C (row-major) order.

**Kernels** (per example, batched). ``forward`` returns the output and a *cache* (any
object: what the backward pass needs, e.g. an activation's slope; the part's own
input is always passed back separately). ``backward`` maps the delta at the output,
``dLoss/da_i`` of shape ``(B, *out_shape)``, to the delta at the input,
``dLoss/da_{i-1}``; it is never called on a part that has no parametrised part before
it. The gradient kernels read the part's input ``x``, its cache and the delta at its
output; since a parameter gradient is linear in that delta, clipping scales the delta
of each example (by ``c_i = min(1, C / ||g_i||)``) before :meth:`Layer.accumulate`:

* :meth:`Layer.per_example_gradients`: materialised, ``(B, *shape)`` per array (tests);
* :meth:`Layer.per_example_squared_norms`: ``||g_i,part||^2`` per example, without
  materialising where the structure allows (dense: ``||delta||^2 (||a||^2 + 1)``);
* :meth:`Layer.accumulate`: ``sum_i g_i,part`` written into (``first``) or added to
  given views of the flat vector. **Contract for the float-sum argument**: each
  coordinate of the sum must be a float sum over the batch of *one term per example*,
  that term being a product of computed factors or one computed value, so that the
  rounding of the batch sum is DP-SGD's ``gamma_N`` (:mod:`opendp_hybridad.dpsgd.sgd`).
  A part whose gradient is itself a sum per example (a convolution sums over
  positions) must compute each example's row first, or count that sum's rounding in
  :attr:`GradientBound.error` of a row defined as the exact sum of its terms, stating
  which in its docstring.

**Optional: rows computed once.** A part whose per-example rows must be materialised anyway
(a convolution sums over positions) may offer ``clipped_rows(params, x, cache, delta) ->
(squared_norms, rows)`` and ``accumulate_rows(rows, scale, out, first)``, which adds
``sum_i scale_i row_i`` as one term per example (a product of two computed factors), so the
rows feed both the norm that clipping reads and the clipped sum; :class:`Sequential` uses them
where a part has them. The part's :class:`GradientBound` must cover the row it keeps (that row
is exactly the unscaled row the error bound is about, times the clip factor).

Matrix products in a part's kernels go through a module-level ``_matmul`` (default
``np.matmul``), so tests can put another summation order in its place (as another BLAS
would) and check the forward error still holds.

**Certified bounds** (all rounded up through :mod:`opendp_hybridad.analysis.rounding`;
a bound that cannot be proven is ``math.inf``, never a guess; NaN is read as ``inf``).
Sequential runs one recursion over the parts, per example, uniformly over the declared
input box, labels and weight set (or given public weights):

1. ``norms = part.weight_norms(params_or_None)`` (a tuple of floats, ``()`` when
   parameter-free): bounds on norms of the part's parameters over its declared set
   (``None``) or of the given public arrays (float norms raised by Higham's
   ``gamma_(n+2)``). Every bound below must be **nondecreasing in every entry** of
   ``norms``: Sequential rounds entries up (to powers of two) to cache per-step bounds.
2. forward: :meth:`Layer.forward_bound` maps an :class:`ActivationBound` of the part's
   input to one of its output;
3. the loss gives the :class:`DeltaBound` at the last output;
4. backward: :meth:`Layer.backward_bound` maps the :class:`DeltaBound` at the part's
   output (and its input's :class:`ActivationBound`) to the one at its input, and
   :meth:`Layer.gradient_bound` gives the part's :class:`GradientBound`.

``K = sqrt(sum_parts squared)``; the forward error ``e`` of the whole computed
per-example gradient is ``sum_parts error`` (triangle inequality over the blocks of the
flat row). Errors compare the *computed* float64 value (any summation order in any
product: use Higham's ``gamma_n`` for ``n`` terms, never an assumption on BLAS
order) with the *exact* value of the same example at the same float weights.
A part whose derivative jumps (relu, GroupSort/MaxMin sorts) has **no** finite
backward error: a computed input that rounds to the other side of a kink (or of a
tie) changes the computed delta by O(1); it returns ``math.inf`` there.

The input record Sequential starts from: ``norm`` the l2 norm of the declared input
box, ``unit`` its largest entry, ``error`` 0 (the clamped input is exact). The last
part's output must be one-dimensional, ``(m,)``: the loss
(:class:`opendp_hybridad.nn.layers.Loss`) reads ``unit`` for its delta bound,
``error`` times its delta's Lipschitz constant and ``computed_unit`` for its evaluation
error. A loss declares ``label_kind`` (``"class"``: integer indices ``0..m-1``;
``"binary"``: 0/1 with ``m = 1``; ``"real"``: a vector in ``[-label_bound, label_bound]^m``)
and ``closed_form`` (its formula and delta, as text).

A parameter-free part overrides only ``output_shape``, ``forward``, ``backward``,
``forward_bound`` and ``backward_bound`` (and ``closed_form``/``describe`` for display);
the defaults below are those of a part without parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from opendp_hybridad.analysis.rounding import UNIT_ROUNDOFF, add_down, add_up, up
from opendp_hybridad.errors import DeclarationError

Shape = tuple[int, ...]
Params = tuple[np.ndarray, ...]


def as_bound(value: float) -> float:
    """A bound: NaN (an undefined product of bounds, such as ``inf * 0``) is no bound, ``inf``."""
    return value if value == value else math.inf


@dataclass(frozen=True)
class ActivationBound:
    """Bounds on one example's tensor ``a`` (shape ``shape``) at the input or output of a part.

    :param norm: ``>= ||a||_2`` of the exact tensor, for every example and weight in the declared sets.
    :param unit: ``>= |a_j|`` for every entry of the exact tensor.
    :param error: ``>= ||a^ - a||_2``, the computed float64 tensor against the exact one of
        the same example at the same float weights (hence also a bound per entry).
    :param computed_unit: ``>= |a^_j|`` for every entry of the computed tensor; None means
        ``unit + error`` (a part may state a tighter one, e.g. an activation evaluated over
        the widened range; the loss reads it at the last output).
    """

    shape: Shape
    norm: float
    unit: float
    error: float = 0.0
    computed_unit: float | None = None

    def __post_init__(self) -> None:
        # written out field by field: the per-step bound builds a few of these every step
        setter = object.__setattr__
        setter(self, "shape", tuple(map(int, self.shape)))
        norm, unit, error = as_bound(float(self.norm)), as_bound(float(self.unit)), as_bound(float(self.error))
        setter(self, "norm", norm)
        setter(self, "unit", unit)
        setter(self, "error", error)
        computed = self.computed_unit
        setter(self, "computed_unit", as_bound(add_up(unit, error) if computed is None else float(computed)))

    @property
    def size(self) -> int:
        """Entries per example."""
        return math.prod(self.shape)

    @property
    def computed_norm(self) -> float:
        """``>= ||a^||_2``: ``norm + error``, rounded up."""
        return as_bound(add_up(self.norm, self.error))


@dataclass(frozen=True)
class DeltaBound:
    """Bounds on one example's ``delta = dLoss/da`` at the input or output of a part.

    :param norm: ``>= ||delta||_2`` of the exact delta.
    :param error: ``>= ||delta^ - delta||_2``, computed against exact (same example, same weights).
    """

    shape: Shape
    norm: float
    error: float = 0.0

    def __post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "shape", tuple(map(int, self.shape)))
        setter(self, "norm", as_bound(float(self.norm)))
        setter(self, "error", as_bound(float(self.error)))


@dataclass(frozen=True)
class GradientBound:
    """One part's share of the per-example gradient ``g`` (its own parameters' block ``g_part``).

    :param squared: ``>= ||g_part||_2^2`` of the exact block (so ``K^2`` is the sum over parts).
    :param error: ``>= ||g^_part - g_part||_2``: ``g^_part`` is the row the part's
        :meth:`Layer.accumulate` adds for this example (see the module docstring's contract),
        ``g_part`` the exact block of the same example at the same weights.
    :param norm_relative_error, norm_absolute_error: the computed squared norm ``s^`` of
        :meth:`Layer.per_example_squared_norms` satisfies
        ``|s^ - ||g^_part||^2| <= norm_relative_error ||g^_part||^2 + norm_absolute_error``
        (the absolute part covers underflow); clipping reads them.
    """

    squared: float = 0.0
    error: float = 0.0
    norm_relative_error: float = 0.0
    norm_absolute_error: float = 0.0

    def __post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "squared", as_bound(float(self.squared)))
        setter(self, "error", as_bound(float(self.error)))
        setter(self, "norm_relative_error", as_bound(float(self.norm_relative_error)))
        setter(self, "norm_absolute_error", as_bound(float(self.norm_absolute_error)))


#: the share of a parameter-free part: nothing
NO_GRADIENT = GradientBound()


class Layer:
    """One part of a :class:`~opendp_hybridad.nn.sequential.Sequential` model (module docstring: the contract).

    Subclasses are frozen dataclasses of their hyper-parameters and declared weight set,
    registered with :func:`~opendp_hybridad.nn.registry.register_layer` (which sets
    :attr:`kind`). The defaults here are those of a parameter-free part; a part with
    parameters overrides every method of the "parameters" and "gradient" groups.
    """

    #: the registered name of this layer type (set by ``register_layer``)
    kind: ClassVar[str] = ""
    #: True where the part is elementwise and its backward error is finite only with a
    #: Lipschitz derivative; informational (Sequential does not read it)
    elementwise: ClassVar[bool] = False

    # -- shapes -----------------------------------------------------------------------------
    def expected_input_shape(self) -> Shape | None:
        """The per-example input shape this part fixes by itself (dense: ``(in_features,)``), else None."""
        return None

    def output_shape(self, input_shape: Shape) -> Shape:
        """The per-example output shape for this input shape; ``DeclarationError`` naming the part if it does not fit."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line display name (used in closed forms and messages; never a private value)."""
        return self.kind or type(self).__name__

    def closed_form(self, index: int) -> str:
        """One line ``a_i = ...`` of the model's closed form (``a_{i-1}`` its input, ``theta_i`` its parameters)."""
        return f"a_{index} = {self.describe()}(a_{index - 1})"

    # -- parameters ---------------------------------------------------------------------------
    def param_shapes(self, input_shape: Shape) -> tuple[Shape, ...]:
        """Shapes of the parameter arrays, in the order of the flat vector."""
        return ()

    def init(self, rng: np.random.Generator, input_shape: Shape) -> Params:
        """Initial parameters inside the declared weight set."""
        return ()

    def project_params(self, params: Params) -> Params:
        """Back onto the declared weight set (identity inside it)."""
        return params

    def update(self, params: Params, step: np.ndarray, scale: float, project: bool) -> Params:
        """``params - scale * step`` (``step``: this part's flat slice), projected onto the declared set if ``project``."""
        return params

    def witness_params(self, rng: np.random.Generator, input_shape: Shape) -> Params:
        """Random extreme points of the declared weight set (corners of a box, the sphere of a ball): for witnesses."""
        return ()

    def weight_norms(self, params: Params | None, rows: bool = True) -> tuple[float, ...]:
        """Bounds on the parameters' norms (module docstring, step 1): over the declared set when ``params`` is None.

        ``rows=False`` may trade tightness for speed (per step); every bound method must be
        nondecreasing in each entry.
        """
        return ()

    # -- kernels --------------------------------------------------------------------------------
    def forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """``(output, cache)`` for a batch ``x`` of shape ``(B, *in_shape)``."""
        raise NotImplementedError

    def backward(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray:
        """``dLoss/d input`` from ``delta = dLoss/d output`` (both batched)."""
        raise NotImplementedError

    def per_example_gradients(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> tuple[np.ndarray, ...]:
        """Materialised per-example gradients, ``(B, *shape)`` per parameter array (tests, small models)."""
        return ()

    def per_example_squared_norms(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray) -> np.ndarray | None:
        """``||g_i,part||^2`` per example (shape ``(B,)``), without materialising where possible; None when parameter-free."""
        return None

    def accumulate(self, params: Params, x: np.ndarray, cache: Any, delta: np.ndarray, out: tuple[np.ndarray, ...],
                   first: bool) -> None:
        """Write (``first``) or add ``sum_i g_i,part`` into the views ``out`` (shapes of :meth:`param_shapes`)."""
        return None

    # -- certified bounds -------------------------------------------------------------------------
    def forward_bound(self, inp: ActivationBound, norms: tuple[float, ...]) -> ActivationBound:
        """Bounds on the output from bounds on the input (exact norm, per-entry magnitude, computed error)."""
        raise NotImplementedError

    def backward_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> DeltaBound:
        """Bounds on the delta at the input (exact norm, computed error) from the delta at the output."""
        raise NotImplementedError

    def gradient_bound(self, inp: ActivationBound, out: DeltaBound, norms: tuple[float, ...]) -> GradientBound:
        """This part's share of ``K^2``, of ``e`` and of the squared norm's error (parameter-free: nothing)."""
        return NO_GRADIENT

    # -- helpers for subclasses -------------------------------------------------------------------
    def _refuse(self, message: str) -> DeclarationError:
        """A one-line ``DeclarationError`` naming this part (never a private value)."""
        return DeclarationError(f"{self.describe()}: {message}")


@dataclass
class ModelBound:
    """Certified ``K >= ||per-example gradient||_2`` over the declared boxes, with the per-layer parts.

    The record a whole model's recursion gives (:class:`~opendp_hybridad.nn.model.MLP`,
    :class:`~opendp_hybridad.nn.sequential.Sequential`); ``per_layer``: ``sqrt`` of each
    part's :attr:`GradientBound.squared` (MLP: one per dense layer; Sequential: one per part,
    0 for parameter-free parts).

    ``rounding``: the forward error ``e`` of a computed unclipped per-example gradient
    (module docstring); ``norm_relative_error`` and ``norm_absolute_error``: how far the
    computed squared norm of a computed gradient can be from its exact squared norm
    (relative, and an absolute allowance for underflow), which clipping reads.
    """

    upper: float
    per_layer: list[float]
    witness_value: float = float("nan")
    witness: dict[str, object] = field(default_factory=dict)
    rounding: float = math.inf
    norm_relative_error: float = math.inf
    norm_absolute_error: float = math.inf

    @property
    def ratio(self) -> float:
        return self.upper / self.witness_value if self.witness_value > 0 else math.inf

    def row_error(self, clip: float | None = None) -> float:
        """``e`` for the rows the kernels add up: unclipped (``clip`` None) or clipped at ``clip``.

        Exact clipping ``c = g min(1, C / ||g||)`` is the projection onto the ball of
        radius ``C``, which is non-expansive: ``||proj(g^) - proj(g)|| <= ||g^ - g|| <= e``.
        The kernel computes ``n^``, the norm of ``g^``, from the layers' squared norms
        (relative error at most ``rho`` plus an absolute ``t`` for underflow, so
        ``|n^ / ||g^|| - 1| <= k_n = rho + 2 t / C^2 + 2 u`` wherever clipping can act, i.e.
        ``||g^||`` or ``n^`` near ``C`` or above), then ``f^ = min(1, fl(C / max(n^, 1e-300)))``: its
        ratio to ``f = min(1, C / ||g^||)`` is within ``1 + k`` with ``k = (u + k_n) / (1 - k_n)``
        (``min(1, .)`` keeps ratios), so ``||f^ g^ - f g^|| <= k C``; and the rows are
        multiplied by ``f^``, one rounding (``u (1 + k) C``). Total:
        ``e + k C + u (1 + k) C``. Needs ``C >= 2^-300`` (so the ``1e-300`` floor never clips).
        """
        e = self.rounding
        if clip is None:
            return e
        if not (clip >= 2.0**-300 and math.isfinite(clip)):
            return math.inf
        u = UNIT_ROUNDOFF
        kn = add_up(add_up(self.norm_relative_error, up(2.0 * self.norm_absolute_error / up(clip * clip))), 2.0 * u)
        if not kn < 0.5:
            return math.inf
        k = up(add_up(u, kn) / add_down(1.0, -kn))
        return as_bound(add_up(add_up(e, up(k * clip)), up(u * up(add_up(1.0, k) * clip))))
