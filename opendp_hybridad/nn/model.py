"""A multilayer perceptron declared per layer, with per-example gradient kernels and a certified bound.

Closed forms, per example (ARCHITECTURE decision 1, no scalar expansion):

    z_l = W_l a_{l-1} + b_l,   a_l = phi_l(z_l),   a_0 = x
    delta_L = dLoss/dz_L
    delta_l = (W_{l+1}^T delta_{l+1}) * phi_l'(z_l)
    dLoss/dW_l = delta_l a_{l-1}^T,   dLoss/db_l = delta_l
    ||g||^2 = sum_l ||delta_l||^2 (||a_{l-1}||^2 + 1)

so per-example norms never materialise per-example gradients, and a clipped sum
is one matrix product per layer: ``sum_i c_i delta_li a_{l-1,i}^T = (c * Delta_l)^T A_{l-1}``.

The certified bound propagates magnitudes through the same recursion over the
declared boxes (inputs, labels, weights), rounding every step up, and bounds the
gradient the kernels *compute*, not only the exact one: each matrix product's rounding
(Higham's ``gamma_(n+1)``) is part of the recursion, and the library functions (tanh,
exp, expit) are taken as faithful within the paddings of the activations' and
losses' bounds:
``||a_0|| <= ||x||_box``; ``|z_l,j| <= ||W_l,j.|| ||a_{l-1}|| + B_b``;
``||a_l|| <= sqrt(n_l) max|phi_l|``; ``||delta_L|| <=`` the loss's bound;
``||delta_l|| <= ||W_{l+1}||_2 ||delta_{l+1}|| max|phi_l'|``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from opendp_hybridad.analysis.rounding import gamma
from opendp_hybridad.nn.layers import Activation, Dense, Identity, Loss, _up


def _mul_up(a: float, b: float) -> float:
    return 0.0 if a == 0 or b == 0 else _up(a * b)


def _add_up(a: float, b: float) -> float:
    return _up(a + b)


def _sqrt_up(a: float) -> float:
    return _up(math.sqrt(a)) if a > 0 else 0.0


@dataclass
class ModelBound:
    """Certified ``K >= ||per-example gradient||_2`` over the declared boxes, with the per-layer parts."""

    upper: float
    per_layer: list[float]
    witness_value: float = float("nan")
    witness: dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.upper / self.witness_value if self.witness_value > 0 else math.inf


_BLOCK_BYTES = 256 * 1024  # per activation array: fits the L2 cache of current CPUs with room to spare
#: rows per matrix product are a multiple of this: a multiple of the row tiles of BLAS's double-precision kernels (4, 8 or 16)
ROW_QUANTUM = 16


class MLP:
    """Dense layers with activations and a loss; parameters are ``[(W_1, b_1), ...]``.

    :param input_bound: the input box, ``|x_j| <= input_bound`` (a float, or one per feature).
    :param label_bound: ``|y| <= label_bound`` for regression losses.
    """

    def __init__(self, layers: list[Dense], activations: list[Activation], loss: Loss, *,
                 input_bound: float | np.ndarray = 1.0, label_bound: float = 1.0):
        if len(layers) != len(activations):
            raise ValueError("one activation per layer (use Identity for the output layer)")
        for prev, nxt in itertools.pairwise(layers):
            if prev.out_features != nxt.in_features:
                raise ValueError("consecutive layers must agree on their widths")
        self.layers, self.activations, self.loss = layers, activations, loss
        bound = np.broadcast_to(np.asarray(input_bound, dtype=float), (layers[0].in_features,))
        if not np.all(np.isfinite(bound) & (bound >= 0)):
            raise ValueError("input_bound must be finite and non-negative")
        if not (math.isfinite(label_bound) and label_bound >= 0):
            raise ValueError("label_bound must be finite and non-negative")
        if loss.name == "logistic" and layers[-1].out_features != 1:
            raise ValueError("the logistic loss takes one output (one logit)")
        self.input_bound = bound.copy()
        self.label_bound = float(label_bound)

    # -- parameters -----------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return sum(layer.in_features * layer.out_features + layer.out_features for layer in self.layers)

    def init(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        params = []
        for layer in self.layers:
            scale = min(layer.weight_bound, 1.0 / math.sqrt(layer.in_features))
            W = rng.uniform(-scale, scale, (layer.out_features, layer.in_features))
            params.append(layer.project(W, np.zeros(layer.out_features)))
        return params

    def project(self, params):
        return [layer.project(W, b) for layer, (W, b) in zip(self.layers, params, strict=True)]

    def apply_step(self, params, step: np.ndarray, scale: float, project: bool = True):
        """``params - scale * step`` (``step`` flat, layer by layer as :meth:`gradient_sum` writes it), projected if ``project``."""
        out, offset = [], 0
        for layer, (W, b) in zip(self.layers, params, strict=True):
            step_W, step_b = step[offset:offset + W.size], step[offset + W.size:offset + W.size + b.size]
            out.append(layer.apply_step(W, b, step_W, step_b, scale, project))
            offset += W.size + b.size
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

    # -- per-example kernels ------------------------------------------------------------------
    def forward(self, params, x):
        acts, pre = [x], []
        a = x
        for (W, b), act in zip(params, self.activations, strict=True):
            z = a @ W.T + b
            a = act(z)
            pre.append(z)
            acts.append(a)
        return acts, pre

    def deltas(self, params, x, y):
        """Activations ``a_0..a_L`` and per-example output deltas ``delta_1..delta_L`` (``dLoss/dz_i``), one row per example."""
        acts, slopes, a = [x], [], x
        for (W, b), act in zip(params, self.activations, strict=True):
            z = a @ W.T
            z += b
            a, slope = act.value_and_derivative(z)
            acts.append(a)
            slopes.append(slope)
        delta = self.loss.delta(acts[-1], y)
        if slopes[-1] is not None:
            delta *= slopes[-1]
        out = [delta]
        for i in range(len(self.layers) - 1, 0, -1):
            delta = delta @ params[i][0]
            if slopes[i - 1] is not None:
                delta *= slopes[i - 1]
            out.append(delta)
        return acts, list(reversed(out))

    def loss_value(self, params, x, y) -> np.ndarray:
        acts, _ = self.forward(params, x)
        return self.loss.value(acts[-1], y)

    def per_example_gradients(self, params, x, y) -> list[tuple[np.ndarray, np.ndarray]]:
        """Materialised per-example gradients (for tests and small models): [(B, out, in), (B, out)] per layer."""
        acts, deltas = self.deltas(params, x, y)
        return [(np.einsum("bo,bi->boi", d, a), d) for d, a in zip(deltas, acts[:-1], strict=True)]

    def per_example_norms(self, params, x, y) -> np.ndarray:
        """``||g_i||_2`` without materialising the per-example gradients."""
        acts, deltas = self.deltas(params, x, y)
        return np.sqrt(self._squared_norms(acts, deltas))

    @staticmethod
    def _squared_norms(acts, deltas) -> np.ndarray:
        """``sum_l ||delta_l||^2 (||a_(l-1)||^2 + 1)``: the dense layer's per-example gradient is ``delta a^T`` and ``delta``."""
        sq = np.zeros(acts[0].shape[0])
        for d, a in zip(deltas, acts[:-1], strict=True):
            sq += np.einsum("ij,ij->i", d, d) * (np.einsum("ij,ij->i", a, a) + 1.0)
        return sq

    def gradient_sum(self, params, x, y, clip: float | None = None, out: np.ndarray | None = None):
        """``sum_i c_i g_i`` with ``c_i = min(1, clip / ||g_i||)`` (no clipping if ``clip`` is None): one product per layer.

        Large batches go through in blocks of rows sized so a block's activations stay in
        cache (about 256 KB per array): about a quarter faster at a batch of 1,024. Every
        block's row count is padded (with zero rows, left out of the sum) to a multiple of
        :data:`ROW_QUANTUM`, so BLAS computes each example's row the same way whatever
        the batch: no matrix-vector path for one row, no edge tiles (the float-sum bound
        of DP-SGD takes each row as a function of its example alone; tested in
        ``tests/test_nn.py``).
        ``out``: a flat float64 array of ``num_parameters`` to write into (layer by layer,
        ``W`` row-major then ``b``); the returned blocks are then views of it.
        """
        if out is None:
            out = np.empty(sum(W.size + b.size for W, b in params))
        views, offset = [], 0
        for W, b in params:
            views.append((out[offset:offset + W.size].reshape(W.shape), out[offset + W.size:offset + W.size + b.size]))
            offset += W.size + b.size
        widest = max(max(W.shape) for W, _ in params)
        rows = max(ROW_QUANTUM, _BLOCK_BYTES // (8 * widest) // ROW_QUANTUM * ROW_QUANTUM)
        y = np.asarray(y)
        for start in range(0, max(x.shape[0], 1), rows):
            acts, deltas = self._block_deltas(params, x[start:start + rows], y[start:start + rows], clip)
            for (gW, gb), d, a in zip(views, deltas, acts[:-1], strict=True):
                if start == 0:
                    np.matmul(d.T, a, out=gW)
                    np.sum(d, axis=0, out=gb)
                else:
                    gW += d.T @ a
                    gb += d.sum(axis=0)
        return views

    def _block_deltas(self, params, x, y, clip: float | None):
        """Activations and deltas of a block, the deltas scaled by ``min(1, clip / ||g_i||)`` when clipping.

        The block is computed padded with zero rows to a multiple of :data:`ROW_QUANTUM`
        (zero rows lie in every input box); the padding is cut off the results.
        """
        m = x.shape[0]
        padding = -m % ROW_QUANTUM
        if padding:
            x = np.concatenate([x, np.zeros((padding, *x.shape[1:]))])
            y = np.concatenate([y, np.zeros((padding, *y.shape[1:]), dtype=y.dtype)])
        acts, deltas = self.deltas(params, x, y)
        acts, deltas = [a[:m] for a in acts], [d[:m] for d in deltas]
        if clip is not None:
            factor = np.minimum(1.0, clip / np.maximum(np.sqrt(self._squared_norms(acts, deltas)), 1e-300))
            for d in deltas:
                d *= factor[:, None]
        return acts, deltas

    # -- certified bound ----------------------------------------------------------------------
    def certified_bound(self, params=None) -> ModelBound:
        """Certified ``K`` on the per-example gradient norm.

        ``params`` None: over the whole declared weight set (fixed for a run).
        ``params`` given: with these (public) weights, over the input and label boxes only.
        """
        a_norm = _sqrt_up(_up(math.fsum(_mul_up(float(v), float(v)) for v in self.input_bound)))
        a_norms = [a_norm]
        z_bounds, op_norms = [], []
        for idx, (layer, act) in enumerate(zip(self.layers, self.activations, strict=True)):
            root_out = math.sqrt(layer.out_features) * (1 + 2.0**-50)
            if params is None:
                row, bias, op = layer.row_bound(), layer.bias_bound, layer.operator_bound
                bias_norm = _mul_up(root_out, bias)
            else:
                W, b = params[idx]
                # float norms of the public weights, raised by gamma_(n+2) (n squares summed in any
                # order, each square and the square root rounded), so they bound the exact norms
                row = _mul_up(float(np.sqrt((W * W).sum(axis=1)).max()), 1.0 + gamma(W.shape[1] + 2))
                bias = _up(float(np.abs(b).max(initial=0.0)))
                op = _mul_up(float(np.sqrt((W * W).sum())), 1.0 + gamma(W.size + 2))  # Frobenius >= spectral
                bias_norm = _mul_up(float(np.sqrt((b * b).sum())), 1.0 + gamma(b.size + 2))
            # the computed z = fl(a W^T) + b: a dot product of n terms and one addition, within
            # gamma_(n+1) (|W| |a| + |b|) of the exact one, whose norms the same bounds cover
            rounding = 1.0 + gamma(layer.in_features + 1)
            r = _mul_up(_add_up(_mul_up(row, a_norms[-1]), bias), rounding)
            z_bounds.append(r)
            op_norms.append(op)
            # ||phi(z)|| two ways: per unit (|phi(z_j)| <= max_abs(r)), and through ||z|| <= op ||a|| + ||b||
            # with |phi(z_j)| <= |phi(0)| + L |z_j| (tight when weights are small and phi is tanh-like)
            per_unit = _mul_up(root_out, act.max_abs(r))
            z_norm = _mul_up(_add_up(_mul_up(op, a_norms[-1]), bias_norm), rounding)
            through_norm = _add_up(_mul_up(root_out, act.abs_at_zero()), _mul_up(act.max_derivative(r), z_norm))
            a_norms.append(min(per_unit, through_norm))
        last = self.layers[-1]
        output_abs = self.activations[-1].max_abs(z_bounds[-1])  # per output component
        delta = self.loss.delta_norm_bound(last.out_features, output_abs, self.label_bound)
        if not isinstance(self.activations[-1], Identity):
            delta = _mul_up(delta, self.activations[-1].max_derivative(z_bounds[-1]))
        delta_norms = [delta]
        for i in range(len(self.layers) - 1, 0, -1):
            # fl(delta W) * slope: a dot product over the layer's outputs, then one rounded product
            rounding = 1.0 + gamma(self.layers[i].out_features + 1)
            delta = _mul_up(_mul_up(_mul_up(op_norms[i], delta), self.activations[i - 1].max_derivative(z_bounds[i - 1])), rounding)
            delta_norms.append(delta)
        delta_norms.reverse()
        parts = [_mul_up(_mul_up(d, d), _add_up(_mul_up(a, a), 1.0)) for d, a in zip(delta_norms, a_norms[:-1], strict=True)]
        total = 0.0
        for p in parts:
            total = _add_up(total, p)
        return ModelBound(_sqrt_up(total), [_sqrt_up(p) for p in parts])

    def witness(self, bound: ModelBound, params=None, samples: int = 2048, seed: int = 0, labels=None) -> ModelBound:
        """Largest per-example gradient norm found by sampling the boxes (corners of the input box included)."""
        rng = np.random.default_rng(seed)
        best, where = 0.0, {}
        for trial in range(4):
            ps = params if params is not None else [
                (layer.weight_bound * np.sign(rng.standard_normal((layer.out_features, layer.in_features)))
                 if not layer.norm_ball else self._ball(rng, layer), layer.bias_bound * np.sign(rng.standard_normal(layer.out_features)))
                for layer in self.layers]
            x = self.input_bound * np.where(rng.random((samples, self.layers[0].in_features)) < 0.5, -1.0, 1.0)
            if trial % 2:
                x = x * rng.random(x.shape)
            if labels is not None:
                y = rng.choice(labels, samples)
            elif self.loss.name == "softmax cross-entropy":
                y = rng.integers(0, self.layers[-1].out_features, samples)
            elif self.loss.name == "logistic":
                y = rng.integers(0, 2, samples).astype(float)
            else:
                y = self.label_bound * np.where(rng.random((samples, self.layers[-1].out_features)) < 0.5, -1.0, 1.0)
            norms = self.per_example_norms(ps, x, y)
            i = int(np.argmax(norms))
            if norms[i] > best:
                best, where = float(norms[i]), {"trial": trial, "x": x[i].tolist(), "y": np.asarray(y[i]).tolist()}
        bound.witness_value, bound.witness = best, where
        return bound

    @staticmethod
    def _ball(rng, layer: Dense) -> np.ndarray:
        W = rng.standard_normal((layer.out_features, layer.in_features))
        return W * (layer.weight_bound / np.sqrt((W * W).sum()))


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
        raise ValueError("scalar expansion is for small models (it grows with the parameters)")
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
            raise ValueError(f"scalar expansion supports tanh, sigmoid and identity, not {name}")
    if model.loss.name == "softmax cross-entropy":
        expr = sympy.log(sum(sympy.exp(v) for v in a)) - a[int(label)]
    elif model.loss.name == "logistic":
        from opendp_hybridad.symbolic.functions import softplus

        expr = softplus(a[0]) - float(label) * a[0]
    else:
        expr = sum((v - float(label)) ** 2 for v in a) / 2
    return schema.function(expr, name="per-example loss")
