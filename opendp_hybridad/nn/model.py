"""A multilayer perceptron declared per layer, with per-example gradient kernels and a certified bound.

Closed forms, per example (symbolic per layer, never expanded into scalars):

    z_l = W_l a_{l-1} + b_l,   a_l = phi_l(z_l),   a_0 = x
    delta_L = dLoss/dz_L
    delta_l = (W_{l+1}^T delta_{l+1}) * phi_l'(z_l)
    dLoss/dW_l = delta_l a_{l-1}^T,   dLoss/db_l = delta_l
    ||g||^2 = sum_l ||delta_l||^2 (||a_{l-1}||^2 + 1)

so per-example norms never materialise per-example gradients, and a clipped sum
is one matrix product per layer: ``sum_i c_i delta_li a_{l-1,i}^T = (c * Delta_l)^T A_{l-1}``.

**The certified bound** ``K`` propagates magnitudes through the same recursion over the
declared boxes (inputs, labels, weights), rounding every step up:
``||a_0|| <= ||x||_box``; ``|z_l,j| <= ||W_l,j.|| ||a_{l-1}|| + B_b``;
``||a_l|| <= sqrt(n_l) max|phi_l|``; ``||delta_L|| <=`` the loss's bound;
``||delta_l|| <= ||W_{l+1}||_2 ||delta_{l+1}|| max|phi_l'|``. Each matrix product's
rounding (Higham's ``gamma_(n+1)``) is part of the recursion, so ``K`` also covers the
computed magnitudes.

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

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from opendp_hybridad.analysis.rounding import TINY, UNIT_ROUNDOFF, add_down, add_up, gamma, norm2_up, sqrt_up, up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import Activation, Dense, Identity, Loss

#: Higham's gamma_n for the widths of the layers, cached (the per-step bound reads a few of them)
_gamma = functools.lru_cache(maxsize=None)(gamma)

#: the matrix product the kernels use; tests put another summation order in its place (as another BLAS would)
_matmul = np.matmul


def _finite_or_inf(value: float) -> float:
    """A bound: NaN (an undefined product of bounds) becomes inf, an unknown bound is no bound."""
    return value if value == value else math.inf


@dataclass
class ModelBound:
    """Certified ``K >= ||per-example gradient||_2`` over the declared boxes, with the per-layer parts.

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
        return _finite_or_inf(add_up(add_up(e, up(k * clip)), up(u * up(add_up(1.0, k) * clip))))


_BLOCK_BYTES = 256 * 1024  # per activation array: fits the L2 cache of current CPUs with room to spare


class MLP:
    """Dense layers with activations and a loss; parameters are ``[(W_1, b_1), ...]``.

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
        self.layers, self.activations, self.loss = layers, activations, loss
        bound = np.broadcast_to(np.asarray(input_bound, dtype=float), (layers[0].in_features,))
        if not np.all(np.isfinite(bound) & (bound >= 0)):
            raise DeclarationError("input_bound must be finite and non-negative")
        if not (math.isfinite(label_bound) and label_bound >= 0):
            raise DeclarationError("label_bound must be finite and non-negative")
        if loss.name == "logistic" and layers[-1].out_features != 1:
            raise DeclarationError("the logistic loss takes one output (one logit)")
        self.input_bound = bound.copy()
        self.label_bound = float(label_bound)
        self._norm_bounds_cache: dict[tuple, ModelBound] = {}
        self._input_norm = norm2_up(self.input_bound.tolist())  # ||x|| over the box, exact then rounded up
        self._root_out = [sqrt_up(float(layer.out_features)) for layer in layers]

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
            z = _matmul(a, W.T)
            z += b
            a, slope = act.value_and_derivative(z)
            acts.append(a)
            slopes.append(slope)
        delta = self.loss.delta(acts[-1], y)
        if slopes[-1] is not None:
            delta *= slopes[-1]
        out = [delta]
        for i in range(len(self.layers) - 1, 0, -1):
            delta = _matmul(delta, params[i][0])
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
        cache (about 256 KB per array): about a quarter faster at a batch of 1,024. How
        BLAS orders the sums inside a product (and so the last bits of an example's row)
        may depend on the block; the float-sum bound of DP-SGD does not care: every
        computed row is within the proven forward error of the exact one
        (:attr:`ModelBound.rounding`, :meth:`ModelBound.row_error`), and the sum of
        ``N`` rows in any order within Higham's ``gamma_N``.
        ``out``: a flat float64 array of ``num_parameters`` to write into (layer by layer,
        ``W`` row-major then ``b``); the returned blocks are then views of it.
        """
        if out is None:
            out = np.empty(sum(W.size + b.size for W, b in params))
        views, offset = [], 0
        for W, b in params:
            views.append((out[offset:offset + W.size].reshape(W.shape), out[offset + W.size:offset + W.size + b.size]))
            offset += W.size + b.size
        if x.shape[0] == 0:
            out[:] = 0.0
            return views
        widest = max(max(W.shape) for W, _ in params)
        rows = max(16, _BLOCK_BYTES // (8 * widest))
        y = np.asarray(y)
        for start in range(0, x.shape[0], rows):
            acts, deltas = self._block_deltas(params, x[start:start + rows], y[start:start + rows], clip)
            for (gW, gb), d, a in zip(views, deltas, acts[:-1], strict=True):
                if start == 0:
                    gW[...] = _matmul(d.T, a)
                    np.sum(d, axis=0, out=gb)
                else:
                    gW += _matmul(d.T, a)
                    gb += d.sum(axis=0)
        return views

    def _block_deltas(self, params, x, y, clip: float | None):
        """Activations and deltas of a block, the deltas scaled by ``min(1, clip / ||g_i||)`` when clipping."""
        acts, deltas = self.deltas(params, x, y)
        if clip is not None:
            factor = np.minimum(1.0, clip / np.maximum(np.sqrt(self._squared_norms(acts, deltas)), 1e-300))
            for d in deltas:
                d *= factor[:, None]
        return acts, deltas

    # -- certified bound and forward error -----------------------------------------------------
    def _weight_norms(self, params=None, rows: bool = True) -> tuple[tuple[float, float, float, float], ...]:
        """Per layer ``(R, b_max, F, B)``: bounds on the largest row norm of ``W``, ``max |b_j|``, ``||W||_F`` (>= ``||W||_2``), ``||b||``.

        ``params`` None: over the declared weight set. Otherwise of these (public) weights:
        float norms raised by ``gamma_(n+2)`` (``n`` squares summed in any order, each square
        and the square root rounded), so they bound the exact norms. ``rows=False`` takes
        ``R = F`` (one dot product per array instead of a pass per row).
        """
        out = []
        for idx, layer in enumerate(self.layers):
            if params is None:
                bias_norm = up(sqrt_up(float(layer.out_features)) * layer.bias_bound)
                out.append((layer.row_bound(), layer.bias_bound, layer.operator_bound, bias_norm))
                continue
            W, b = params[idx]
            flat = W.reshape(-1)
            F = up(float(np.sqrt(np.dot(flat, flat))) * add_up(1.0, _gamma(W.size + 2)))
            B = up(float(np.sqrt(np.dot(b, b))) * add_up(1.0, _gamma(b.size + 2)))
            R = up(float(np.sqrt(np.einsum("ij,ij->i", W, W)).max()) * add_up(1.0, _gamma(W.shape[1] + 2))) if rows else F
            out.append((_finite_or_inf(R), float(np.abs(b).max(initial=0.0)), _finite_or_inf(F), _finite_or_inf(B)))
        return tuple(out)

    def certified_bound(self, params=None) -> ModelBound:
        """Certified ``K`` on the per-example gradient norm, and the forward error ``e`` of the computed gradient.

        ``params`` None: over the whole declared weight set (fixed for a run).
        ``params`` given: with these (public) weights, over the input and label boxes only.
        """
        return self._bound_from_norms(self._weight_norms(params))

    def rounding_bound(self, params) -> ModelBound:
        """A cheaper bound with these (public) weights, for the forward error of clipped rows each step.

        Frobenius norms only (``R = F``), each rounded up to a power of two, and at least
        ``2^-30``, so that results are cached across steps (every quantity of the recursion
        grows with the norms, so larger norms give a valid, larger bound; ``e`` is about
        ``1e-12`` of the gradients' scale, so a factor 2 in it moves the noise by nothing).
        """
        norms = tuple(tuple(_round_up_to_power_of_two(v) for v in layer) for layer in self._weight_norms(params, rows=False))
        cached = self._norm_bounds_cache.get(norms)
        if cached is None:
            if len(self._norm_bounds_cache) > 256:
                self._norm_bounds_cache.clear()
            cached = self._norm_bounds_cache[norms] = self._bound_from_norms(norms)
        return cached

    def _bound_from_norms(self, norms) -> ModelBound:
        """``K`` and the forward error ``e`` (module docstring) from per-layer weight norms; every step rounded up.

        Products of non-negative bounds are ``up(x * y)``: a correctly rounded product moved
        one float up is not below the exact product (rounding.py).
        """
        L = len(self.layers)
        a_norms = [self._input_norm]
        z_bounds, op_norms = [], []
        for layer, act, (row, bias, op, bias_norm), root_out in zip(self.layers, self.activations, norms, self._root_out,
                                                                      strict=True):
            # the computed z = fl(a W^T) + b: a dot product of n terms and one addition, within
            # gamma_(n+1) (|W| |a| + |b|) of the exact one, whose norms the same bounds cover
            rounding = add_up(1.0, _gamma(layer.in_features + 1))
            r = up(add_up(up(row * a_norms[-1]), bias) * rounding)
            z_bounds.append(r)
            op_norms.append(op)
            # ||phi(z)|| two ways: per unit (|phi(z_j)| <= max_abs(r)), and through ||z|| <= op ||a|| + ||b||
            # with |phi(z_j)| <= |phi(0)| + L |z_j| (tight when weights are small and phi is tanh-like)
            per_unit = up(root_out * act.max_abs(r))
            z_norm = up(add_up(up(op * a_norms[-1]), bias_norm) * rounding)
            through_norm = add_up(up(root_out * act.abs_at_zero()), up(act.max_derivative(r) * z_norm))
            a_norms.append(_finite_or_inf(min(per_unit, through_norm)))
        last = self.layers[-1]
        out_act = self.activations[-1]
        loss_delta = self.loss.delta_norm_bound(last.out_features, out_act.max_abs(z_bounds[-1]), self.label_bound)
        delta = loss_delta
        if not isinstance(out_act, Identity):
            delta = up(delta * out_act.max_derivative(z_bounds[-1]))
        delta_norms = [delta]
        for i in range(L - 1, 0, -1):
            # fl(delta W) * slope: a dot product over the layer's outputs, then one rounded product
            rounding = add_up(1.0, _gamma(self.layers[i].out_features + 1))
            delta = up(up(up(op_norms[i] * delta) * self.activations[i - 1].max_derivative(z_bounds[i - 1])) * rounding)
            delta_norms.append(delta)
        delta_norms.reverse()
        parts = [up(up(d * d) * add_up(up(a * a), 1.0)) for d, a in zip(delta_norms, a_norms[:-1], strict=True)]
        total = 0.0
        for p in parts:
            total = add_up(total, p)
        bound = ModelBound(_finite_or_inf(sqrt_up(total) if total == total else math.inf),
                           [_finite_or_inf(sqrt_up(p)) if p == p else math.inf for p in parts])
        self._forward_error(bound, norms, a_norms, z_bounds, delta_norms, loss_delta)
        return bound

    def _forward_error(self, bound: ModelBound, norms, a_norms, z_bounds, delta_norms, loss_delta) -> None:
        """Fill in ``bound.rounding`` (``e``) and the clipping norm's errors; the recursion is the module docstring's."""
        L = len(self.layers)
        e_a, e_as, e_zs, r_hats = 0.0, [0.0], [], []
        for layer, act, (_row, _bias, F, B), a_prev, r, root_out in zip(self.layers, self.activations, norms, a_norms[:-1],
                                                                       z_bounds, self._root_out, strict=True):
            a_hat = add_up(a_prev, e_a)
            e_z = add_up(up(F * e_a), up(_gamma(layer.in_features + 1) * add_up(up(F * a_hat), B)))
            r_hat = add_up(r, e_z)
            e_a = add_up(up(act.max_derivative(r_hat) * e_z), up(root_out * act.value_error(r_hat)))
            e_zs.append(e_z)
            r_hats.append(r_hat)
            e_as.append(_finite_or_inf(e_a))
        last, out_act = self.layers[-1], self.activations[-1]
        # the loss's delta at the computed outputs (each within max_abs + value_error)
        m_hat = add_up(out_act.max_abs(r_hats[-1]), out_act.value_error(r_hats[-1]))
        e_loss = add_up(up(self.loss.delta_lipschitz() * e_as[-1]),
                        self.loss.delta_error(last.out_features, m_hat, self.label_bound))
        e_d = self._times_slope(out_act, e_loss, loss_delta, r_hats[-1], e_zs[-1])
        e_ds = [e_d]
        for i in range(L - 1, 0, -1):
            # v = fl(delta_{i+1} W_{i+1}): m terms per entry; then times the slope of layer i
            F = norms[i][2]
            d_next = delta_norms[i]
            e_v = add_up(up(F * e_d), up(_gamma(self.layers[i].out_features) * up(F * add_up(d_next, e_d))))
            e_d = self._times_slope(self.activations[i - 1], e_v, up(F * d_next), r_hats[i - 1], e_zs[i - 1])
            e_ds.append(e_d)
        e_ds.reverse()
        total = 0.0
        for e_dl, d_l, a_prev, e_prev in zip(e_ds, delta_norms, a_norms[:-1], e_as[:-1], strict=True):
            # ||d^ a^^T - d a^T|| <= e_d ||a^|| + ||d|| e_a, and the bias part e_d
            total = add_up(total, add_up(up(e_dl * add_up(add_up(a_prev, e_prev), 1.0)), up(d_l * e_prev)))
        bound.rounding = _finite_or_inf(total)
        # clipping computes sum_l fl(||d||^2) (fl(||a||^2) + 1): relative error gamma_(2w + L + 2)
        # (nonnegative terms); underflow of squares adds at most a few TINY per operation, times
        # the other factor
        widest = max(max(layer.in_features, layer.out_features) for layer in self.layers)
        bound.norm_relative_error = _gamma(2 * widest + L + 2)
        absolute = 0.0
        for layer, a_prev, e_prev, d_l, e_dl in zip(self.layers, a_norms[:-1], e_as[:-1], delta_norms, e_ds, strict=True):
            a_hat, d_hat = add_up(a_prev, e_prev), add_up(d_l, e_dl)
            ops = float(layer.in_features + layer.out_features + 3)
            absolute = add_up(absolute, up(up(4.0 * ops * TINY) * add_up(add_up(up(a_hat * a_hat), up(d_hat * d_hat)), 2.0)))
        bound.norm_absolute_error = _finite_or_inf(absolute)

    @staticmethod
    def _times_slope(act: Activation, e_in: float, in_norm: float, r_hat: float, e_z: float) -> float:
        """Error of ``fl(v^ * s^)`` against ``v * phi'(z)``: ``S^ e_v + ||v|| (L2 e_z + sigma) + u S^ (||v|| + e_v)``.

        ``in_norm`` bounds ``||v||`` (exact); the computed slope is within ``L2 e_z + sigma`` of
        ``phi'(z)`` (``|z^_j - z_j| <= e_z``) and at most ``S^ = max|phi'| + sigma``. An identity
        has no slope product (exact), which the formula over-covers by ``u``.
        """
        if isinstance(act, Identity):
            return e_in
        sigma = act.slope_error(r_hat)
        s_hat = add_up(act.max_derivative(r_hat), sigma)
        slope_move = add_up(up(act.derivative_lipschitz(r_hat) * e_z), sigma)
        return _finite_or_inf(add_up(add_up(up(s_hat * e_in), up(in_norm * slope_move)),
                                     up(UNIT_ROUNDOFF * up(s_hat * add_up(in_norm, e_in)))))

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


def _round_up_16_per_octave(value: float) -> float:
    """``value`` rounded up to one of 16 values per octave (at most 6.25% larger; exact: powers of two)."""
    if not (value > 0 and math.isfinite(value)):
        return value
    octave = math.floor(math.log2(value))
    return math.ceil(value / 2.0**octave * 16) / 16 * 2.0**octave


def _round_up_to_power_of_two(value: float, floor: float = 2.0**-30) -> float:
    """The smallest power of two not below ``max(value, floor)`` (``inf`` and NaN stay ``inf``)."""
    if not value <= 2.0**1023:
        return math.inf
    if value <= floor:
        return floor
    mantissa, exponent = math.frexp(value)  # value = mantissa 2^exponent, mantissa in [1/2, 1)
    return value if mantissa == 0.5 else math.ldexp(1.0, exponent)


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
    if model.loss.name == "softmax cross-entropy":
        expr = sympy.log(sum(sympy.exp(v) for v in a)) - a[int(label)]
    elif model.loss.name == "logistic":
        from opendp_hybridad.symbolic.functions import softplus

        expr = softplus(a[0]) - float(label) * a[0]
    else:
        expr = sum((v - float(label)) ** 2 for v in a) / 2
    return schema.function(expr, name="per-example loss")
