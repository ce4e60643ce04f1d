"""A multilayer perceptron declared per layer: the composition dense, activation, dense, ... of registered parts.

:class:`MLP` is a thin layer over :class:`~opendp_hybridad.nn.sequential.Sequential` of the
parts :class:`~opendp_hybridad.nn.parts.dense.Dense`, :class:`~opendp_hybridad.nn.parts.activation.Elementwise`,
... (one home per kernel: the parts' own, run by Sequential). What MLP adds is its interface:
parameters ``[(W_1, b_1), ...]`` (one tuple per dense layer; Sequential's are one tuple per
part, ``()`` for an activation), converted at the boundary without copying an array;
activations ``a_0..a_L`` and deltas ``dLoss/dz_l`` per dense layer; ``per_layer`` of the bound
per dense layer; and its closed form. Matrix products go through the dense part's ``_matmul``
(:mod:`opendp_hybridad.nn.parts.dense`), where tests put another summation order.

Closed forms, per example (symbolic per layer, never expanded into scalars):

    z_l = W_l a_{l-1} + b_l,   a_l = phi_l(z_l),   a_0 = x
    delta_L = dLoss/dz_L
    delta_l = (W_{l+1}^T delta_{l+1}) * phi_l'(z_l)
    dLoss/dW_l = delta_l a_{l-1}^T,   dLoss/db_l = delta_l
    ||g||^2 = sum_l ||delta_l||^2 (||a_{l-1}||^2 + 1)

so per-example norms never materialise per-example gradients, and a clipped sum
is one matrix product per layer: ``sum_i c_i delta_li a_{l-1,i}^T = (c * Delta_l)^T A_{l-1}``
(:meth:`Dense.per_example_squared_norms <opendp_hybridad.nn.parts.dense.Dense.per_example_squared_norms>`
and :meth:`~opendp_hybridad.nn.parts.dense.Dense.accumulate`).

**The certified bound** ``K`` propagates magnitudes through the same recursion over the
declared boxes (inputs, labels, weights), rounding every step up:
``||a_0|| <= ||x||_box``; ``|z_l,j| <= ||W_l,j.|| ||a_{l-1}|| + B_b``;
``||a_l|| <= sqrt(n_l) max|phi_l|``; ``||delta_L|| <=`` the loss's bound;
``||delta_l|| <= ||W_{l+1}||_2 ||delta_{l+1}|| max|phi_l'|``. ``K`` bounds the exact
gradients; how far a computed one can be is ``e`` below (so no rounding factor enters
``K``). The recursion is :func:`opendp_hybridad.nn.sequential.chain_bound` over the parts
dense, activation, dense, ... (:mod:`opendp_hybridad.nn.parts`), which a
:class:`~opendp_hybridad.nn.sequential.Sequential` of the same parts runs too.

**The forward error** ``e`` (:attr:`ModelBound.rounding`): however the matrix products
are computed (any BLAS, blocking, thread count or summation order, with or without fused
multiply-add), the computed per-example gradient ``g^`` (the exact product of the
computed ``delta^_l`` and ``a^_{l-1}``, which is what the batch sum adds up) is within
``e`` of the exact gradient ``g`` of the same example at the same weights, a function of
the example alone. Facts used (Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed. 2002): a dot product of ``n`` terms computed in any order satisfies
``|fl(x^T y) - x^T y| <= gamma_n |x|^T |y|`` (section 3.1 and Lemma 3.1; 3.5 for matrix
products, componentwise ``|fl(AB) - AB| <= gamma_n |A| |B|``), and
``|| |W| |a| ||_2 <= ||W||_F ||a||_2`` (Cauchy-Schwarz per row); library functions are
faithful within ``LIBM_PAD`` (:mod:`opendp_hybridad.analysis.rounding`); each activation and
loss states its evaluation errors and Lipschitz constants (:mod:`.layers`). With
``A_l, Z_l, D_l`` the certified bounds on ``||a_l||``, ``|z_l,j|``, ``||delta_l||`` of the
exact values, ``F_l >= ||W_l||_F``, ``B_l >= ||b_l||``, and hats for computed values:

* forward (``e_a(0) = 0``: the clamped input is exact):
  ``e_z(l) <= F_l e_a(l-1) + gamma_(n_l+1) (F_l (A_{l-1} + e_a(l-1)) + B_l)`` (the product
  over ``n_l`` inputs and the bias addition); every ``z^_j`` and ``z_j`` lies within
  ``r^_l = Z_l + e_z(l)``, so ``e_a(l) <= L_phi(r^) e_z(l) + sqrt(n_out) value_error(r^)``;
* the loss: ``e_L <= Lip(delta) e_a(L) + delta_error`` (at the computed outputs), and for
  a non-identity output activation the product with the slope (below);
* backward: ``v = W^T delta_{l+1}`` is a product over ``m`` outputs:
  ``e_v <= F e_d(l+1) + gamma_m F (D_{l+1} + e_d(l+1))``; then ``delta_l = v * s`` with the
  computed slope within ``L2_phi(r^) e_z(l) + slope_error(r^)`` of ``phi'(z_l)``
  (``L2_phi >= |phi''|``: the slope at the computed ``z^`` against the slope at ``z``) and
  one rounding: ``e_d(l) <= S^ e_v + ||v|| (L2 e_z(l) + sigma) + u S^ (||v|| + e_v)``,
  ``S^ = max|phi'| + sigma``;
* the gradient: ``||delta^ a^^T - delta a^T||_F <= e_d ||a^|| + ||delta|| e_a`` and
  ``||delta^ - delta|| = e_d`` per layer; ``e`` is the sum over layers.

Activations whose derivative jumps (relu) have no such bound (``L2_phi`` infinite): a
pre-activation that rounds to either side of the kink changes the gradient by O(1).
Clipping adds :meth:`ModelBound.row_error` (the norm's rounding and the scaling).
DP-SGD's float-sum argument (:func:`opendp_hybridad.dpsgd.sgd.computed_sum_sensitivity`)
rests on ``e``; no assumption on how BLAS orders its sums remains.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from opendp_hybridad.analysis.rounding import round_up_to_slots
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import Activation, Dense, Loss
from opendp_hybridad.nn.parts.activation import Elementwise
from opendp_hybridad.nn.protocol import ModelBound as ModelBound  # re-exported: DP-SGD and users import it from here
from opendp_hybridad.nn.sequential import Sequential, check_loss


class MLP:
    """Dense layers with activations and a loss; parameters are ``[(W_1, b_1), ...]``.

    The kernels and the bound are those of the equivalent :class:`Sequential` (module
    docstring); parameters go in and come out as one ``(W, b)`` per dense layer.

    :param input_bound: the input box, ``|x_j| <= input_bound`` (a float, or one per feature).
    :param label_bound: ``|y| <= label_bound`` for regression losses.
    """

    def __init__(self, layers: list[Dense], activations: list[Activation], loss: Loss, *,
                 input_bound: float | np.ndarray = 1.0, label_bound: float = 1.0):
        if len(layers) != len(activations):
            raise DeclarationError("one activation per layer (use Identity for the output layer)")
        for prev, nxt in itertools.pairwise(layers):
            if prev.out_features != nxt.in_features:
                raise DeclarationError("consecutive layers must agree on their widths")
        # copies: a caller who edits its lists afterwards (to build another model) must not change this one
        self.layers, self.activations, self.loss = list(layers), list(activations), loss
        bound = np.broadcast_to(np.asarray(input_bound, dtype=float), (layers[0].in_features,))
        if not np.all(np.isfinite(bound) & (bound >= 0)):
            raise DeclarationError("input_bound must be finite and non-negative")
        if not (math.isfinite(label_bound) and label_bound >= 0):
            raise DeclarationError("label_bound must be finite and non-negative")
        check_loss(loss, (layers[-1].out_features,))
        self._input_bound = bound.copy()
        self._input_bound.setflags(write=False)  # the certified K is over this box: not to be edited in place
        self._label_bound = float(label_bound)
        self._parts = [part for layer, act in zip(layers, activations, strict=True) for part in (layer, Elementwise(act))]
        #: the dense layers the bound is certified over (the update projects onto these, whatever
        #: happens to ``self.layers`` later: audit attack_dense_update.py)
        self._certified_layers = tuple(self._parts[0::2])
        # every kernel and the bound's recursion: the parts', run by Sequential (dense at even indices)
        self._seq = Sequential(self._parts, loss, input_bound=self.input_bound, label_bound=self.label_bound)
        #: (a bound of Sequential's, its dense-layer record): the last one read per step, returned again while it holds
        self._last_step_bound: tuple[ModelBound, ModelBound] | None = None

    # -- the boundary: (W, b) per dense layer <-> one tuple per part ------------------------------------
    @staticmethod
    def _seq_params(params) -> list:
        """``[(W_1, b_1), (), (W_2, b_2), (), ...]``: the same arrays, no copy."""
        return [ps for p in params for ps in (p, ())]

    @staticmethod
    def _dense(per_part: list) -> list:
        """The dense parts' entries (even indices) of a per-part list."""
        return per_part[0::2]

    # -- parameters -----------------------------------------------------------------------
    @property
    def input_bound(self) -> np.ndarray:
        """The input box (a read-only array; declare a new model for another box)."""
        return self._input_bound

    @property
    def label_bound(self) -> float:
        """``|y| <= label_bound`` for regression losses (read-only: the certified and cached bounds are over it)."""
        return self._label_bound

    @property
    def input_features(self) -> int:
        return self.layers[0].in_features

    @property
    def output_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-example input shape, ``(in_features,)`` (as :attr:`Sequential.input_shape`)."""
        return (self.layers[0].in_features,)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.layers[-1].out_features,)

    @property
    def parts(self) -> list:
        """The model as Sequential parts: dense, activation, dense, activation, ..."""
        return list(self._parts)

    @property
    def _input_norm(self) -> float:
        """``||x||`` over the input box, rounded up (where the bound's recursion starts)."""
        return self._seq._input_record.norm

    def to_sequential(self) -> Sequential:
        """The same model as a :class:`~opendp_hybridad.nn.sequential.Sequential` (parameters: ``(W, b), (), (W, b), ()...``)."""
        return Sequential(self.parts, self.loss, input_bound=self.input_bound, label_bound=self.label_bound)

    @property
    def num_parameters(self) -> int:
        return self._seq.num_parameters

    def init(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._dense(self._seq.init(rng))

    def project(self, params):
        return self._dense(self._seq.project(self._seq_params(params)))

    def apply_step(self, params, step: np.ndarray, scale: float, project: bool = True):
        """``params - scale * step`` (``step`` flat, layer by layer as :meth:`gradient_sum` writes it), projected if ``project``.

        The weights of :meth:`Sequential.apply_step <opendp_hybridad.nn.sequential.Sequential.apply_step>`
        on the per-part list, computed layer by layer here (each dense layer reads its slice of
        ``step``; the activations have no parameters): a training step runs this, and the
        conversions to and from the per-part list cost a few microseconds on a small model.
        """
        step = np.asarray(step, dtype=np.float64)
        if step.size != self.num_parameters:  # a programming error, the same for every dataset
            raise ValueError(f"the step has {step.size} entries; the model has {self.num_parameters} parameters")
        layers = self._certified_layers
        if step.ndim != 1 or len(params) != len(layers):  # Sequential's handling (and errors)
            return self._dense(self._seq.apply_step(self._seq_params(params), step, scale, project))
        out, offset = [], 0
        for layer, (W, b) in zip(layers, params, strict=True):
            out.append(layer.apply_flat_step(W, b, step, offset, scale, project))
            offset += layer.in_features * layer.out_features + layer.out_features
        return out

    # -- closed forms -----------------------------------------------------------------------
    def closed_form(self) -> str:
        L = len(self.layers)
        lines = [f"a_0 = x   (|x_j| <= {self.input_bound.max():g})"]
        for i, act in enumerate(self.activations, start=1):
            lines.append(f"z_{i} = W_{i} a_{i - 1} + b_{i},  a_{i} = {act.name}(z_{i})")
        lines.append(f"delta_{L} = dLoss/dz_{L}   ({self.loss.name})")
        for i in range(L - 1, 0, -1):
            lines.append(f"delta_{i} = (W_{i + 1}^T delta_{i + 1}) * {self.activations[i - 1].name}'(z_{i})")
        for i in range(1, L + 1):
            lines.append(f"dLoss/dW_{i} = delta_{i} a_{i - 1}^T,   dLoss/db_{i} = delta_{i}")
        lines.append("||g||^2 = " + " + ".join(f"||delta_{i}||^2 (||a_{i - 1}||^2 + 1)" for i in range(1, L + 1)))
        return "\n".join(lines)

    # -- per-example kernels (Sequential's, over the parts) -------------------------------------
    def forward(self, params, x):
        """Activations ``a_0..a_L`` (``a_0 = x``) and pre-activations ``z_1..z_L``."""
        outputs, _ = self._seq.forward(self._seq_params(params), x)
        return outputs[0::2], outputs[1::2]

    def deltas(self, params, x, y):
        """Activations ``a_0..a_L`` and per-example output deltas ``delta_1..delta_L`` (``dLoss/dz_i``), one row per example."""
        outputs, deltas = self._seq.deltas(self._seq_params(params), x, y)
        return outputs[0::2], deltas[0::2]

    def loss_value(self, params, x, y) -> np.ndarray:
        return self._seq.loss_value(self._seq_params(params), x, y)

    def per_example_gradients(self, params, x, y) -> list[tuple[np.ndarray, np.ndarray]]:
        """Materialised per-example gradients (for tests and small models): [(B, out, in), (B, out)] per layer."""
        return self._dense(self._seq.per_example_gradients(self._seq_params(params), x, y))

    def per_example_norms(self, params, x, y) -> np.ndarray:
        """``||g_i||_2`` without materialising the per-example gradients: ``sum_l ||delta_l||^2 (||a_(l-1)||^2 + 1)``."""
        return self._seq.per_example_norms(self._seq_params(params), x, y)

    def gradient_sum(self, params, x, y, clip: float | None = None, out: np.ndarray | None = None):
        """``sum_i c_i g_i`` with ``c_i = min(1, clip / ||g_i||)`` (no clipping if ``clip`` is None): one product per layer.

        :meth:`Sequential.gradient_sum`: equal blocks of rows whose activations fit in about
        7 MiB, each product written into ``out`` in place. How BLAS orders the sums inside a product (and
        so the last bits of an example's row) may depend on the block; the float-sum bound
        of DP-SGD does not care: every computed row is within the proven forward error of
        the exact one (:attr:`ModelBound.rounding`, :meth:`ModelBound.row_error`), and the
        sum of ``N`` rows in any order within Higham's ``gamma_N``.
        ``out``: a flat float64 array of ``num_parameters`` to write into (layer by layer,
        ``W`` row-major then ``b``); the returned ``(gW, gb)`` per layer are views of it.
        """
        return self._dense(self._seq.gradient_sum(self._seq_params(params), x, y, clip=clip, out=out))

    def _block_deltas(self, params, x, y, clip: float | None):
        """Activations and deltas of a block, the deltas scaled by ``min(1, clip / ||g_i||)`` when clipping (the rows the sum adds)."""
        outputs, _, deltas = self._seq._block_deltas(self._seq_params(params), x, y, clip)
        return outputs[0::2], deltas[0::2]

    # -- certified bound and forward error -----------------------------------------------------
    def _per_layer(self, bound: ModelBound) -> ModelBound:
        """``bound`` with ``per_layer`` kept for the dense layers only (a new record: Sequential's may be cached)."""
        return dataclasses.replace(bound, per_layer=bound.per_layer[0::2])

    def certified_bound(self, params=None) -> ModelBound:
        """Certified ``K`` on the per-example gradient norm, and the forward error ``e`` of the computed gradient.

        ``params`` None: over the whole declared weight set (fixed for a run).
        ``params`` given: with these (public) weights, over the input and label boxes only.
        :func:`opendp_hybridad.nn.sequential.chain_bound` over the parts dense, activation,
        dense, ...; ``per_layer`` keeps the dense layers' terms.
        """
        return self._per_layer(self._seq.certified_bound(None if params is None else self._seq_params(params)))

    def _shared_record(self, bound: ModelBound) -> ModelBound:
        """:meth:`_per_layer` of a (cached, shared) bound of Sequential's, itself kept while Sequential returns the
        same bound, so per-step reads make no copy (the records are the same values; read them, do not edit them)."""
        last = self._last_step_bound
        if last is not None and last[0] is bound:
            return last[1]
        mine = self._per_layer(bound)
        self._last_step_bound = (bound, mine)
        return mine

    def step_norms(self, params) -> tuple[tuple[float, ...], ...]:
        """:meth:`Sequential.step_norms`: the weight norms rounded up to slots (the key of :meth:`bound_at`)."""
        return self._seq.step_norms(self._seq_params(params))

    def bound_at(self, norms) -> ModelBound:
        """:meth:`Sequential.bound_at`: the bound over every weight with norms at most ``norms``, cached."""
        return self._shared_record(self._seq.bound_at(norms))

    def coarse_bound(self, norms) -> ModelBound:
        """:meth:`Sequential.coarse_bound`: the bound at ``norms`` rounded up to powers of two, cached."""
        return self._shared_record(self._seq.coarse_bound(norms))

    def step_bound(self, params) -> ModelBound:
        """:meth:`Sequential.step_bound`: the bound at these (public) weights from norms rounded up to slots, cached."""
        return self.bound_at(self.step_norms(params))

    def rounding_bound(self, params) -> ModelBound:
        """A cheaper bound with these (public) weights, for the forward error of clipped rows each step.

        :meth:`Sequential.rounding_bound`: Frobenius norms only (``R = F``), each rounded up to
        a power of two, and at least ``2^-30``, so that results are cached across steps (every
        quantity of the recursion grows with the norms, so larger norms give a valid, larger
        bound; ``e`` is about ``1e-12`` of the gradients' scale, so a factor 2 in it moves the
        noise by nothing).
        """
        return self._per_layer(self._seq.rounding_bound(self._seq_params(params)))

    def witness(self, bound: ModelBound, params=None, samples: int = 2048, seed: int = 0, labels=None) -> ModelBound:
        """Largest per-example gradient norm found by sampling the boxes (corners of the input box included)."""
        return self._seq.witness(bound, None if params is None else self._seq_params(params), samples, seed, labels)


def _round_up_16_per_octave(value: float) -> float:
    """``value`` rounded up to one of 16 values per octave (at most 6.25% larger; exact: powers of two)."""
    return round_up_to_slots(value, 16)


def scalar_expansion(model: MLP, label: float | int = 0):
    """The model's per-example loss as one scalar :class:`RecordFunction` over inputs and weights (small models only).

    Fields: ``x{j}`` (the input box), ``W{l}_{o}_{i}`` and ``b{l}_{o}`` (their boxes; for a
    Frobenius ball, the box ``[-R, R]`` that contains it). The label is fixed. This is the
    scalar form the paper's prototype built for everything; here it is for checking
    the per-layer kernels against the foundation's symbolic gradient and certificates.
    """
    import sympy

    from opendp_hybridad.symbolic.functions import sigmoid
    from opendp_hybridad.symbolic.schema import Field, Schema

    fields: dict[str, Field] = {f"x{j}": Field(-float(b), float(b)) for j, b in enumerate(model.input_bound)}
    for li, layer in enumerate(model.layers, start=1):
        for o in range(layer.out_features):
            for i in range(layer.in_features):
                fields[f"W{li}_{o}_{i}"] = Field(-layer.weight_bound, layer.weight_bound)
            fields[f"b{li}_{o}"] = Field(-layer.bias_bound, layer.bias_bound)
    if model.num_parameters > 2000:
        raise DeclarationError("scalar expansion is for small models (it grows with the parameters)")
    schema = Schema(fields)
    sym = schema.symbol_map
    a = [sym[f"x{j}"] for j in range(model.layers[0].in_features)]
    for li, (layer, act) in enumerate(zip(model.layers, model.activations, strict=True), start=1):
        z = [sum(sym[f"W{li}_{o}_{i}"] * a[i] for i in range(layer.in_features)) + sym[f"b{li}_{o}"]
             for o in range(layer.out_features)]
        name = act.name
        if name == "tanh":
            a = [sympy.tanh(v) for v in z]
        elif name == "sigmoid":
            a = [sigmoid(v) for v in z]
        elif name == "identity":
            a = z
        else:
            raise DeclarationError(f"scalar expansion supports tanh, sigmoid and identity, not {name}")
    expr = model.loss.sympy_expression(a, label)
    return schema.function(expr, name="per-example loss")
