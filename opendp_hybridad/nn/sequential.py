"""A DP-SGD model as a chain of registered parts (:mod:`opendp_hybridad.nn.protocol`) and a loss.

``Sequential(parts, loss, input_bound=..., label_bound=...)`` has the interface and the
semantics of :class:`opendp_hybridad.nn.model.MLP` (which is the special case of dense
layers each followed by an activation): batched per-example gradients, their norms
without materialising them where the parts allow, clipped sums written layer by layer
into one flat float64 vector over blocks of rows, and the certified per-example
gradient-norm bound ``K`` with the proven float64 forward error ``e`` of each computed
row, on which DP-SGD's float-sum argument (:func:`opendp_hybridad.dpsgd.sgd.computed_sum_sensitivity`)
rests.

**The recursion** (:func:`chain_bound`): from the declared input box, each part maps
bounds on its input (exact l2 norm, per-entry magnitude, l2 error of the computed
tensor) to bounds on its output; the loss gives the delta at the last output (its
norm bound at the exact outputs, ``Lip(delta) e_out + delta_error`` at the computed
ones); each part maps the delta at its output to the delta at its input and states its
own block of the gradient. Then, every operation rounded up:

* ``K = sqrt(sum_parts squared)`` (the blocks of the flat gradient are orthogonal);
* ``e = sum_parts error`` (triangle inequality over the blocks);
* the computed squared norm is a float sum of the parts' computed squared norms, ``P``
  non-negative terms in a fixed order (``P - 1`` roundings, Higham 2002 Lemma 3.1 and 3.3):
  ``rel <= max rel_p + gamma_(P-1) (1 + max rel_p)``, ``abs <= (1 + gamma_(P-1)) sum abs_p``.

For a dense layer followed by an activation these are exactly the per-layer steps of
the MLP recursion (``MLP`` runs this same function), so both give the same ``K`` and ``e``.

**The clipped sum** (:meth:`Sequential.gradient_sum`) runs over blocks of rows, BLAS on one
thread. A part may keep its rows for clipping with two optional methods (a convolution
does): ``clipped_rows(params, x, cache, delta) -> (squared norms, rows)`` and
``accumulate_rows(rows, scale, out, first)``, which adds ``sum_i scale_i row_i``: one term
per example, ``scale_i row_i,j``, a product of two computed factors (the protocol's
contract), where ``row_i`` is the same computed row whose squared norm clipping read. Such a
part's ``GradientBound`` must cover that row (its unscaled computed row); every other part
gets its delta scaled by the clip factor before :meth:`Layer.accumulate`, as before.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from opendp_hybridad.analysis.rounding import (
    TINY,
    UNIT_ROUNDOFF,
    add_down,
    add_up,
    down_array,
    gamma,
    mul_down,
    norm2_up,
    root_up,
    round_up_to_slots,
    sqrt_up,
    up,
    up_array,
)
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import Activation, Loss
from opendp_hybridad.nn.parts.activation import Elementwise
from opendp_hybridad.nn.protocol import NO_GRADIENT, ActivationBound, DeltaBound, GradientBound, Layer, ModelBound, Shape, as_bound
from opendp_hybridad.nn.registry import layer_kind

#: per-step bounds round each weight norm up to one of this many values per octave (at most 1.6% larger), then cache
STEP_NORM_SLOTS = 64
#: a block's activations (the input and every part's output, 8 bytes an entry): about 2 MiB for the
#: widest array of the 784-1024-256-10 MLP (256 rows), so the block's temporaries stay few and reused
_BLOCK_BYTES = 7 * 1024 * 1024

#: rows times parameters (about the weight-gradient products' multiply-adds) from which a batch that is one
#: block keeps the caller's BLAS threads (a batch of several blocks runs on one thread: see gradient_sum);
#: below it one thread (64-128-10 at 256 rows: 2.5e6, about 12% slower with 2 threads when the machine is
#: quiet, and several times slower when it is busy); above it threads pay (1.07M parameters at 256 rows,
#: 2.7e8: 1.6x faster with 2)
_THREADED_PRODUCT = 2**22

_blas_libraries: list[Any] | None = None


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS limited to one thread inside the block loop, restored after (threadpoolctl's library controllers).

    The BLAS libraries are found once (as ``ThreadpoolController().limit`` did with its one
    controller); each call then reads and sets their thread counts directly: about 3 us, where
    ``limit()`` took about 20 us (it re-reads every library's info), once per gradient sum.
    """
    global _blas_libraries
    if _blas_libraries is None:
        # the dense parts add their later blocks' gradient products through scipy's BLAS (its own
        # library, next to numpy's): loaded before the libraries are found, so it is held to one thread too
        import scipy.linalg.blas  # noqa: F401
        import threadpoolctl

        _blas_libraries = list(threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers)
    previous = [lib.get_num_threads() for lib in _blas_libraries]
    try:
        for lib, n in zip(_blas_libraries, previous, strict=True):
            if isinstance(n, int) and n != 1:  # a library that cannot say its count is left alone
                lib.set_num_threads(1)
        yield
    finally:
        for lib, n in zip(_blas_libraries, previous, strict=True):
            if isinstance(n, int) and n != 1:
                lib.set_num_threads(n)

#: the kinds of label a loss may declare (nn.layers.Loss.label_kind)
LABEL_KINDS = ("class", "binary", "real")


def _round_up_to_power_of_two(value: float, floor: float = 2.0**-30) -> float:
    """The smallest power of two not below ``max(value, floor)`` (``inf`` and NaN stay ``inf``)."""
    if not value <= 2.0**1023:
        return math.inf
    if value <= floor:
        return floor
    return round_up_to_slots(value, 1)


def check_loss(loss: Loss, output_shape: Shape) -> None:
    """Refuse a loss whose label kind is unknown or does not fit the output (one-line messages)."""
    if not isinstance(loss, Loss):
        raise DeclarationError("the loss must be an nn.layers.Loss (SoftmaxCrossEntropy(), MeanSquaredError(), Logistic(), ...)")
    if loss.label_kind not in LABEL_KINDS:
        raise DeclarationError(f"loss {loss.name}: label_kind must be one of {', '.join(LABEL_KINDS)}")
    if len(output_shape) != 1:
        raise DeclarationError("the last part must output a vector per example (add a flatten part)")
    if loss.label_kind == "binary" and output_shape[0] != 1:
        raise DeclarationError(f"the {loss.name} loss takes one output (one logit)")


def chain_bound(parts: Sequence[Layer], inp: ActivationBound, norms: Sequence[tuple[float, ...]], loss: Loss,
                label_bound: float, has_params: Sequence[bool]) -> ModelBound:
    """``K``, its per-part terms, the forward error ``e`` and the clipping norm's errors (module docstring).

    ``has_params[i]``: whether part ``i`` has parameters (only those contribute, and the
    backward recursion stops at the first of them). ``per_layer`` has one entry per part
    (0 for parameter-free parts).
    """
    records = [inp]
    for part, n in zip(parts, norms, strict=True):
        records.append(part.forward_bound(records[-1], n))
    out = records[-1]
    m = out.size
    # the loss's delta: its bound at the exact outputs; at the computed ones (within computed_unit) its
    # evaluation error, and its Lipschitz constant times the outputs' error
    loss_delta = loss.delta_norm_bound(m, out.unit, label_bound)
    e_loss = add_up(up(loss.delta_lipschitz() * out.error), loss.delta_error(m, out.computed_unit, label_bound))
    delta = DeltaBound(out.shape, loss_delta, e_loss)
    first = list(has_params).index(True) if any(has_params) else len(parts)
    grads: list[GradientBound] = [NO_GRADIENT] * len(parts)
    for i in range(len(parts) - 1, first - 1, -1):
        grads[i] = parts[i].gradient_bound(records[i], delta, norms[i])
        if i > first:
            delta = parts[i].backward_bound(records[i], delta, norms[i])
    total = error = absolute = 0.0
    relative = 0.0
    counted = 0
    for g, p in zip(grads, has_params, strict=True):
        if not p:
            continue
        counted += 1
        total = add_up(total, g.squared)
        error = add_up(error, g.error)
        relative = max(relative, g.norm_relative_error)
        absolute = add_up(absolute, g.norm_absolute_error)
    if counted > 1:
        # the parts' squared norms summed in a fixed order: counted - 1 roundings of non-negative terms
        g_sum = gamma(counted - 1)
        relative = add_up(relative, up(g_sum * add_up(1.0, relative)))
        absolute = up(absolute * add_up(1.0, g_sum))
    bound = ModelBound(as_bound(sqrt_up(total) if total == total else math.inf),
                       [(as_bound(sqrt_up(g.squared)) if g.squared == g.squared else math.inf) if p else 0.0
                        for g, p in zip(grads, has_params, strict=True)])
    bound.rounding = as_bound(error)
    bound.norm_relative_error = as_bound(relative)
    bound.norm_absolute_error = as_bound(absolute)
    return bound


class Sequential:
    """Registered parts applied in order, then a loss; parameters are one tuple of arrays per part (``()`` if none).

    :param parts: :class:`~opendp_hybridad.nn.protocol.Layer` instances of registered kinds;
        a bare :class:`~opendp_hybridad.nn.layers.Activation` (``Tanh()``) is wrapped in
        :class:`~opendp_hybridad.nn.parts.activation.Elementwise`.
    :param loss: on the last part's output, which must be a vector per example.
    :param input_bound: the input box, ``|x_j| <= input_bound`` (a float, or an array broadcast to ``input_shape``);
        default 1, or ``input_norm_bound`` when that is given (the ball lies in that box).
    :param input_norm_bound: an l2 ball, ``||x||_2 <= input_norm_bound`` (the whole example, every
        entry of ``input_shape``), on top of the box: the certified recursion starts from
        ``min(||box||, R)`` instead of the box's diagonal. :meth:`clamp_inputs` maps any input into
        the box and then the ball (the data-independent rule DP-SGD must apply).
    :param label_bound: ``|y| <= label_bound`` for regression losses.
    :param input_shape: the per-example input shape; by default the first part's own (a dense layer's ``(in,)``).
    """

    def __init__(self, parts: Sequence[Layer | Activation], loss: Loss, *, input_bound: float | np.ndarray | None = None,
                 label_bound: float = 1.0, input_shape: Sequence[int] | None = None,
                 input_norm_bound: float | None = None):
        wrapped = [Elementwise(p) if isinstance(p, Activation) else p for p in parts]
        if not wrapped:
            raise DeclarationError("a Sequential model needs at least one part")
        for p in wrapped:
            if not isinstance(p, Layer):
                raise DeclarationError(f"{type(p).__name__} is not a layer (subclass nn.protocol.Layer and register it)")
            layer_kind(p)  # a registered kind, so a converter and the closed form can name it
        shape = tuple(input_shape) if input_shape is not None else wrapped[0].expected_input_shape()
        if shape is None:
            raise DeclarationError(f"{wrapped[0].describe()}: declare input_shape= (the per-example input shape)")
        if not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
            raise DeclarationError("input_shape must be positive integers")
        shapes = [tuple(int(s) for s in shape)]
        for p in wrapped:
            shapes.append(tuple(p.output_shape(shapes[-1])))
        check_loss(loss, shapes[-1])
        if input_norm_bound is not None:
            if not (isinstance(input_norm_bound, (int, float)) and math.isfinite(input_norm_bound) and input_norm_bound >= 0):
                raise DeclarationError("input_norm_bound must be a finite non-negative number")
            input_norm_bound = float(input_norm_bound)
        if input_bound is None:
            # every entry of the ball is at most its radius, so the box [-R, R] adds nothing to it
            input_bound = 1.0 if input_norm_bound is None else input_norm_bound
        bound = np.broadcast_to(np.asarray(input_bound, dtype=float), shapes[0]) if _broadcasts(input_bound, shapes[0]) else None
        if bound is None:
            raise DeclarationError("input_bound must be a number or an array of the input's shape")
        if not np.all(np.isfinite(bound) & (bound >= 0)):
            raise DeclarationError("input_bound must be finite and non-negative")
        if not (isinstance(label_bound, (int, float)) and math.isfinite(label_bound) and label_bound >= 0):
            raise DeclarationError("label_bound must be finite and non-negative")
        self.parts: list[Layer] = wrapped
        self.loss = loss
        self._input_bound = bound.copy()
        self._input_bound.setflags(write=False)  # the certified K is over this box: not to be edited in place
        self._label_bound = float(label_bound)
        self._shapes = shapes
        self._param_shapes = [p.param_shapes(s) for p, s in zip(wrapped, shapes[:-1], strict=True)]
        self._sizes = [sum(math.prod(s) for s in ps) for ps in self._param_shapes]
        if not any(self._sizes):
            raise DeclarationError("a Sequential model needs at least one part with parameters")
        self._first = next(i for i, size in enumerate(self._sizes) if size)
        self._norm_bounds_cache: dict[tuple, ModelBound] = {}
        self._step_bounds_cache: dict[tuple, ModelBound] = {}
        self._input_norm_bound: float | None = input_norm_bound
        flat_bound = self.input_bound.reshape(-1)
        norm, unit = norm2_up(flat_bound.tolist()), float(flat_bound.max(initial=0.0))
        if input_norm_bound is not None:
            # the clamped input lies in the box and in the ball: ||x|| <= R, and |x_j| <= ||x|| <= R
            norm, unit = min(norm, input_norm_bound), min(unit, input_norm_bound)
        self._input_record = ActivationBound(shapes[0], norm, unit, 0.0)

    # -- the declared boxes: read-only, since every bound (and the cached ones) is over them ----------
    @property
    def input_bound(self) -> np.ndarray:
        """The input box ``|x_j| <= input_bound[j]`` (a read-only array; declare a new model for another box)."""
        return self._input_bound

    @property
    def label_bound(self) -> float:
        """``|y| <= label_bound`` for regression losses (read-only: the certified and cached bounds are over it)."""
        return self._label_bound

    @property
    def input_norm_bound(self) -> float | None:
        """The l2 ball of the inputs, or None (read-only: the certified and cached bounds are over it)."""
        return self._input_norm_bound

    # -- shapes and parameters ---------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """The parts (the name MLP uses for its dense layers)."""
        return self.parts

    @property
    def activations(self) -> list[Activation]:
        """The activations of the elementwise parts, in order."""
        return [p.activation for p in self.parts if isinstance(p, Elementwise)]

    @property
    def input_shape(self) -> Shape:
        return self._shapes[0]

    @property
    def output_shape(self) -> Shape:
        return self._shapes[-1]

    @property
    def input_features(self) -> int:
        """Entries of one example's input (the product of ``input_shape``)."""
        return math.prod(self._shapes[0])

    @property
    def output_features(self) -> int:
        return self._shapes[-1][0]

    @property
    def num_parameters(self) -> int:
        return sum(self._sizes)

    def init(self, rng: np.random.Generator) -> list[tuple[np.ndarray, ...]]:
        return [tuple(p.init(rng, s)) for p, s in zip(self.parts, self._shapes[:-1], strict=True)]

    def project(self, params):
        return [tuple(p.project_params(tuple(ps))) for p, ps in zip(self.parts, params, strict=True)]

    def apply_step(self, params, step: np.ndarray, scale: float, project: bool = True):
        """``params - scale * step`` (``step`` flat, part by part as :meth:`gradient_sum` writes it), projected if ``project``."""
        if np.size(step) != self.num_parameters:  # a programming error, the same for every dataset
            raise ValueError(f"the step has {np.size(step)} entries; the model has {self.num_parameters} parameters")
        out, offset = [], 0
        for p, ps, size in zip(self.parts, params, self._sizes, strict=True):
            out.append(tuple(p.update(tuple(ps), step[offset:offset + size], scale, project)) if size else tuple(ps))
            offset += size
        return out

    def clamp_inputs(self, x: np.ndarray) -> np.ndarray:
        """Each example moved into the declared input set: clipped to the box, then (with a ball) scaled into the ball.

        A fixed map of each example alone (no other example and no parameter is read), so
        DP-SGD may apply it to every record before training; the certified bound holds for
        its outputs. ``x``: ``(B, *input_shape)``; returns a new array.

        The ball step is proven, not the exact projection: ``N >= ||x||`` from the float sum
        of ``d`` squares (``gamma_(d+2)`` with the root, Higham 2002 section 3.1, plus ``d TINY``
        for underflowed squares), each operation rounded up; rows with ``N > R`` are
        multiplied by ``c = down(R' / N)``, ``R' = R (1 - 2u) - sqrt(d) TINY``; each product
        rounds by at most ``u`` relative (``TINY / 2`` in underflow), so
        ``||fl(c x)|| <= (1 + u) c ||x|| + sqrt(d) TINY / 2 < R``. Rows already inside
        (``N <= R``) are returned unchanged. NaN entries become 0 (the box's centre; DP-SGD has
        already imputed them by its declared policy); a norm that overflows shrinks the row to 0.
        """
        x = np.asarray(x, dtype=np.float64)
        if np.isnan(x).any():  # DP-SGD imputes by its declared policy first; anything left is the box's centre
            x = np.where(np.isnan(x), 0.0, x)
        x = np.clip(x, -self.input_bound, self.input_bound)
        R = self.input_norm_bound
        if R is None or x.shape[0] == 0:
            return x
        rows = x.reshape(x.shape[0], -1)
        d = rows.shape[1]
        with np.errstate(over="ignore", invalid="ignore"):
            squares = up_array(np.einsum("ij,ij->i", rows, rows) * add_up(1.0, gamma(d + 2)))
            norms = up_array(np.sqrt(up_array(squares + up(float(d) * TINY))))
        outside = norms > R
        if not outside.any():
            return x
        target = add_down(mul_down(R, add_down(1.0, -2.0 * UNIT_ROUNDOFF)), -up(root_up(d) * TINY))
        # a norm that overflowed (inf) gives 0 / inf = 0, and down(0) is -TINY: never below 0 (0 is in every ball)
        shrink = np.where(outside, np.maximum(down_array(max(target, 0.0) / np.where(outside, norms, 1.0)), 0.0), 1.0)
        rows = rows * shrink[:, None]
        return rows.reshape(x.shape)

    def closed_form(self) -> str:
        n = len(self.parts)
        ball = "" if self.input_norm_bound is None else f", ||x||_2 <= {self.input_norm_bound:g}"
        lines = [f"a_0 = x   (shape {self.input_shape}, |x_j| <= {self.input_bound.max():g}{ball})"]
        lines += [p.closed_form(i) for i, p in enumerate(self.parts, start=1)]
        lines.append(f"loss ({self.loss.name}, labels: {self.loss.label_kind}): {self.loss.closed_form}")
        lines.append(f"delta_{n} = dLoss/da_{n};  delta_(i-1) = (da_i/da_(i-1))^T delta_i")
        lines.append("||g||^2 = sum over parts with parameters of ||dLoss/dtheta_i||^2")
        return "\n".join(lines)

    # -- per-example kernels ------------------------------------------------------------------
    def forward(self, params, x):
        """Outputs ``a_0..a_n`` of the parts (``a_0 = x``) and the parts' caches."""
        acts, caches = [x], []
        for p, ps in zip(self.parts, params, strict=True):
            a, cache = p.forward(tuple(ps), acts[-1])
            acts.append(a)
            caches.append(cache)
        return acts, caches

    def _pass(self, params, x, y) -> tuple[list[np.ndarray], list[Any], list[np.ndarray | None]]:
        """Outputs, caches, and the delta at each part's output (None before the first part with parameters)."""
        acts, caches = self.forward(params, x)
        n = len(self.parts)
        deltas: list[np.ndarray | None] = [None] * n
        delta = self.loss.delta(acts[-1], y)
        deltas[n - 1] = delta
        for i in range(n - 1, self._first, -1):
            delta = self.parts[i].backward(tuple(params[i]), acts[i], caches[i], delta)
            deltas[i - 1] = delta
        return acts, caches, deltas

    def deltas(self, params, x, y):
        """Outputs ``a_0..a_n`` and the deltas ``dLoss/da_1..dLoss/da_n`` (None before the first part with parameters)."""
        acts, _, deltas = self._pass(params, x, y)
        return acts, deltas

    def loss_value(self, params, x, y) -> np.ndarray:
        acts, _ = self.forward(params, x)
        return self.loss.value(acts[-1], y)

    def per_example_gradients(self, params, x, y) -> list[tuple[np.ndarray, ...]]:
        """Materialised per-example gradients (tests, small models): per part, ``(B, *shape)`` per parameter array."""
        acts, caches, deltas = self._pass(params, x, y)
        return [tuple(p.per_example_gradients(tuple(ps), acts[i], caches[i], deltas[i])) if self._sizes[i] else ()
                for i, (p, ps) in enumerate(zip(self.parts, params, strict=True))]

    def _squared_norms(self, params, acts, caches, deltas) -> np.ndarray:
        """The parts' squared norms summed in part order (the order the bound's ``gamma_(P-1)`` counts)."""
        sq = np.zeros(acts[0].shape[0])
        for i, (p, ps) in enumerate(zip(self.parts, params, strict=True)):
            if self._sizes[i]:
                sq += p.per_example_squared_norms(tuple(ps), acts[i], caches[i], deltas[i])
        return sq

    def per_example_norms(self, params, x, y) -> np.ndarray:
        """``||g_i||_2``, without materialising the per-example gradients where the parts can avoid it."""
        acts, caches, deltas = self._pass(params, x, y)
        return np.sqrt(self._squared_norms(params, acts, caches, deltas))

    def _block_deltas(self, params, x, y, clip: float | None):
        """Outputs, caches and deltas of a block, the deltas scaled by ``min(1, clip / ||g_i||)`` when clipping.

        A parameter gradient is linear in the delta at its part's output, so scaling those
        deltas scales each example's whole row.
        """
        acts, caches, deltas = self._pass(params, x, y)
        if clip is not None:
            factor = np.minimum(1.0, clip / np.maximum(np.sqrt(self._squared_norms(params, acts, caches, deltas)), 1e-300))
            for i, d in enumerate(deltas):
                if d is not None and self._sizes[i]:
                    deltas[i] = d * factor.reshape((-1,) + (1,) * (d.ndim - 1))
        return acts, caches, deltas

    def _clipped_block(self, params, x, y, clip: float, views, first: bool) -> None:
        """One block's clipped rows added into ``views``; parts with rows kept for clipping give them once.

        A part with ``clipped_rows``/``accumulate_rows`` (a convolution) computes each
        example's row once: its squared norm is read off that row, and the clipped sum is
        ``sum_i f_i G^_i`` of the same rows (one term per example, a product of two computed
        factors, as the protocol's contract asks). Any other part gets its delta scaled by
        ``f_i`` and adds its rows with :meth:`Layer.accumulate`, as :meth:`_block_deltas`.
        The parts' squared norms are still summed in part order.
        """
        acts, caches, deltas = self._pass(params, x, y)
        sq = np.zeros(x.shape[0])
        kept: dict[int, Any] = {}
        for i, (p, ps) in enumerate(zip(self.parts, params, strict=True)):
            if not self._sizes[i]:
                continue
            if hasattr(p, "clipped_rows"):
                part_sq, kept[i] = p.clipped_rows(tuple(ps), acts[i], caches[i], deltas[i])
                sq += part_sq
            else:
                sq += p.per_example_squared_norms(tuple(ps), acts[i], caches[i], deltas[i])
        factor = np.minimum(1.0, clip / np.maximum(np.sqrt(sq), 1e-300))
        scaled = [i for i in range(len(self.parts)) if self._sizes[i] and i not in kept]
        for i in scaled:
            d = deltas[i]
            f = factor.reshape((-1,) + (1,) * (d.ndim - 1))
            # the same products f_i d_ij either way; in place only where d is this pass's own array (no
            # activation and no other delta to be scaled reads it), else a copy as before
            if d.flags.owndata and d.flags.writeable and not any(
                    np.may_share_memory(d, other) for other in [*acts, *(deltas[j] for j in scaled if j != i)]):
                d *= f
            else:
                deltas[i] = d * f
        for i, (p, ps) in enumerate(zip(self.parts, params, strict=True)):
            if not self._sizes[i]:
                continue
            if i in kept:
                p.accumulate_rows(kept[i], factor, views[i], first)
            else:
                p.accumulate(tuple(ps), acts[i], caches[i], deltas[i], views[i], first)

    def _block_rows(self) -> int:
        """Rows per block at most: the block's activations within ``_BLOCK_BYTES`` (at least 16), and at least
        ``parameters / (2 sum of widths)`` rows.

        ``sum of widths`` counts the input and every part's output (an elementwise part's output and its
        slope are arrays of their own): a block of ``R`` rows allocates about ``8 R sum(widths)`` bytes of
        activations and as much again of deltas. Keeping that within ``_BLOCK_BYTES`` keeps the block's
        temporaries few and moderate, so the allocator reuses them from block to block and from call to
        call instead of returning them to the system and faulting fresh pages in (measured on the
        784-1024-256-10 MLP, 1024-row calls back to back: 512-row blocks took about 6,000 page faults a
        call, 2.5 us each on this VM, 256-row blocks none). Each block reads and writes every parameter's
        gradient once (``16 P`` bytes) against about ``32 R sum(widths)`` bytes of activations and deltas;
        the second bound keeps the first no larger than the second, so wide layers are not dominated by
        rewriting the gradient. The computed sum is covered for any block size: the float-sum bound holds
        for any summation order.
        """
        widths = sum(math.prod(s) for s in self._shapes)
        by_memory = _BLOCK_BYTES // (8 * widths)
        by_parameters = -(-self.num_parameters // (2 * widths))
        return max(16, by_memory, by_parameters)

    @staticmethod
    def _blocks(batch: int, most: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of ``ceil(batch / most)`` blocks of equal size (within one row), none over ``most`` rows.

        Equal blocks rather than full blocks and a remainder: a small last block makes small,
        inefficient matrix products (a 97-row remainder after 159 rows cost more than the rows it held).
        """
        count = -(-batch // most)
        size, extra = divmod(batch, count)
        bounds, start = [], 0
        for k in range(count):
            stop = start + size + (1 if k < extra else 0)
            bounds.append((start, stop))
            start = stop
        return bounds

    def gradient_sum(self, params, x, y, clip: float | None = None, out: np.ndarray | None = None):
        """``sum_i c_i g_i`` with ``c_i = min(1, clip / ||g_i||)`` (no clipping if ``clip`` is None), part by part.

        As :meth:`opendp_hybridad.nn.model.MLP.gradient_sum`: equal blocks of at most
        :meth:`_block_rows` rows, each part's sum written in place (the first block over ``out``,
        the others added to it); ``out`` a flat float64 array of
        ``num_parameters`` to write into (part by part, each array row-major); the returned
        per-part tuples of views are views of it. A batch in one block of large products (rows
        times parameters at least :data:`_THREADED_PRODUCT`) runs on the caller's BLAS threads,
        as numpy's own would (on the 2-core reference machine, quiet, 1.6x faster for the
        784-1024-256-10 MLP at 256 rows); otherwise BLAS runs on one thread meanwhile
        (threadpoolctl): small products gain nothing from threads, and later blocks are added
        through scipy's BLAS, whose thread pool would compete with numpy's. The computed
        values, and so the bounds, do not depend on it: any summation order is covered.
        """
        if out is None:
            out = np.empty(self.num_parameters)
        views, offset = [], 0
        for shapes in self._param_shapes:
            vs = []
            for s in shapes:
                size = math.prod(s)
                vs.append(out[offset:offset + size].reshape(s))
                offset += size
            views.append(tuple(vs))
        if x.shape[0] == 0:
            out[:] = 0.0
            return views
        y = np.asarray(y)
        blocks = self._blocks(x.shape[0], self._block_rows())
        # public (shapes only): one block of large products keeps the caller's threads; later blocks are added
        # through scipy's BLAS, a second thread pool next to numpy's, and the two pools' threads then compete
        # (1,024 rows in 4 blocks: 187 ms on 2 + 2 threads against 104 ms on one)
        threaded = len(blocks) == 1 and x.shape[0] * self.num_parameters >= _THREADED_PRODUCT
        with contextlib.nullcontext() if threaded else _one_blas_thread():
            for start, stop in blocks:
                xb, yb = x[start:stop], y[start:stop]
                if clip is not None:
                    self._clipped_block(params, xb, yb, clip, views, start == 0)
                    continue
                acts, caches, deltas = self._pass(params, xb, yb)
                for i, (p, ps) in enumerate(zip(self.parts, params, strict=True)):
                    if self._sizes[i]:
                        p.accumulate(tuple(ps), acts[i], caches[i], deltas[i], views[i], start == 0)
        return views

    # -- certified bound and forward error -------------------------------------------------------
    def _weight_norms(self, params=None, rows: bool = True) -> tuple[tuple[float, ...], ...]:
        if params is None:
            return tuple(tuple(p.weight_norms(None, rows)) for p in self.parts)
        return tuple(tuple(p.weight_norms(tuple(ps), rows)) for p, ps in zip(self.parts, params, strict=True))

    def _bound_from_norms(self, norms) -> ModelBound:
        return chain_bound(self.parts, self._input_record, norms, self.loss, self.label_bound, [size > 0 for size in self._sizes])

    def certified_bound(self, params=None) -> ModelBound:
        """Certified ``K`` on the per-example gradient norm, and the forward error ``e`` of the computed gradient.

        ``params`` None: over the whole declared weight set (fixed for a run).
        ``params`` given: with these (public) weights, over the input and label boxes only.
        """
        return self._bound_from_norms(self._weight_norms(params))

    def step_norms(self, params) -> tuple[tuple[float, ...], ...]:
        """The weight norms of these (public) weights, each rounded up to one of :data:`STEP_NORM_SLOTS`
        values per octave: the key of :meth:`bound_at` (at most ``1 + 1/STEP_NORM_SLOTS`` larger per norm)."""
        return tuple(tuple(round_up_to_slots(v, STEP_NORM_SLOTS) for v in part) for part in self._weight_norms(params))

    def bound_at(self, norms) -> ModelBound:
        """The certified bound over every weight whose norms are at most ``norms`` (:meth:`step_norms`' form), cached.

        Every bound of the recursion is nondecreasing in each norm (the protocol's rule), and the
        recursion assumes only that each norm bounds the weights' own, so the bound at larger norms
        holds at these weights too.
        """
        return self._cached_bound(self._step_bounds_cache, norms)

    def _cached_bound(self, cache: dict, norms) -> ModelBound:
        """The chain bound at ``norms`` through ``cache`` (emptied once it holds more than 256 bounds)."""
        cached = cache.get(norms)
        if cached is None:
            if len(cache) > 256:
                cache.clear()
            cached = cache[norms] = self._bound_from_norms(norms)
        return cached

    def step_bound(self, params) -> ModelBound:
        """:meth:`certified_bound` at these (public) weights with each norm first rounded up to one of
        :data:`STEP_NORM_SLOTS` values per octave, cached by the rounded norms (:meth:`bound_at` of
        :meth:`step_norms`).

        Consecutive training steps move the norms little, so many steps find their bound in the
        cache and pay only for the norms (about 20 us on a 64-128-10 MLP, against 40 us for the chain).
        """
        return self.bound_at(self.step_norms(params))

    def coarse_bound(self, norms) -> ModelBound:
        """The bound at ``norms`` each rounded up to a power of two (and at least ``2^-30``), cached by those.

        Valid wherever :meth:`bound_at` of ``norms`` is (larger norms, a larger bound); for the forward
        error ``e`` of clipped rows, where a factor 2 in ``e`` (about ``1e-12`` of the gradients' scale)
        moves the noise by nothing and the power-of-two key changes rarely.
        """
        return self._cached_bound(self._norm_bounds_cache,
                                  tuple(tuple(_round_up_to_power_of_two(v) for v in part) for part in norms))

    def rounding_bound(self, params) -> ModelBound:
        """A cheaper bound with these (public) weights, cached: :meth:`coarse_bound` of the norms with
        ``rows=False`` (one dot product per array: ``R = F``)."""
        return self.coarse_bound(self._weight_norms(params, rows=False))

    def sample_labels(self, rng: np.random.Generator, samples: int) -> np.ndarray:
        """Labels of the loss's kind: class indices, 0/1, or corners of the label box."""
        kind, m = self.loss.label_kind, self.output_features
        if kind == "class":
            return rng.integers(0, m, samples)
        if kind == "binary":
            return rng.integers(0, 2, samples).astype(float)
        return self.label_bound * np.where(rng.random((samples, m)) < 0.5, -1.0, 1.0)

    def witness(self, bound: ModelBound, params=None, samples: int = 2048, seed: int = 0, labels=None) -> ModelBound:
        """Largest per-example gradient norm found by sampling the boxes (corners of the input box included)."""
        rng = np.random.default_rng(seed)
        best, where = 0.0, {}
        for trial in range(4):
            ps = params if params is not None else [tuple(p.witness_params(rng, s)) for p, s in zip(self.parts, self._shapes[:-1],
                                                                                                 strict=True)]
            x = self.input_bound * np.where(rng.random((samples, *self.input_shape)) < 0.5, -1.0, 1.0)
            if trial % 2:
                x = x * rng.random(x.shape)
            x = self.clamp_inputs(x)  # with a ball: its points (corners of the box scaled onto the sphere)
            y = rng.choice(labels, samples) if labels is not None else self.sample_labels(rng, samples)
            norms = self.per_example_norms(ps, x, y)
            i = int(np.argmax(norms))
            if norms[i] > best:
                best, where = float(norms[i]), {"trial": trial, "x": x[i].tolist(), "y": np.asarray(y[i]).tolist()}
        bound.witness_value, bound.witness = best, where
        return bound


def _broadcasts(value: Any, shape: Shape) -> bool:
    try:
        np.broadcast_to(np.asarray(value, dtype=float), shape)
    except (ValueError, TypeError):
        return False
    return True
