"""DP-SGD over compiled per-example gradient kernels (the paper's Algorithm 1), with its parts visible.

The model is any :class:`~opendp_hybridad.nn.sequential.Sequential` (dense, convolution,
pooling, embedding, ... parts) or :class:`~opendp_hybridad.nn.model.MLP`; an example is an
array of the model's ``input_shape`` (a batch ``(B, *input_shape)``), clamped entry by entry
to the declared input box, and a label of the loss's ``label_kind`` (class index, 0/1, or
real vector). Three ways to bound the sensitivity:

* ``clip``: per-example clipping at ``C``; sensitivity ``C``.
* ``bound``: no clipping; inputs clamped to the declared box and weights projected
  back onto the certified set after every step, so the certified ``K`` holds;
  sensitivity ``K``.
* ``auto``: sensitivity ``min(C, K)``; when ``K <= C`` clipping is provably a no-op
  and per-example norms are not computed at all.

Like JAX Privacy's execution plan, ``trainer.plan(n, max_size)`` builds a
:class:`~opendp_hybridad.dpsgd.plan.DPSGDPlan` holding the parts as objects (batch
selection, gradient sum, noise, proven accounting, relation, sizes, imputation, optimizer);
``fit`` and :func:`make_dp_sgd` run a plan built by it, so they cannot disagree.

The sensitive sum is never modified before noise is added. The noise is a discrete
Gaussian on a power-of-two grid, the mechanism of OpenDP's ``then_gaussian``, with
standard deviation ``noise_multiplier * sensitivity`` (plus the grid rounding), where the
sensitivity covers the float64 computation of the sum (:func:`computed_sum_sensitivity`):
by default drawn from an exact table (:mod:`opendp_hybridad.dpsgd.noise`, its tiny
statistical distance added to delta), or by OpenDP itself with ``noise="opendp"``.
Batch selection draws from the operating system's CSPRNG (:mod:`.selection`); a
``seed`` makes it reproducible instead, for tests and experiments. The optimizer
(:mod:`.optim`: SGD with momentum, Adam, weight decay, learning-rate schedules) only
post-processes the released noisy sums.

**What is public, and the relation.** Poisson sampling is accounted under add/remove
one example with sampling rate ``q = batch_size / n`` and ``ceil(epochs n / batch_size)``
steps, where ``n`` is a *declared* public dataset size, never ``len(x)`` (which add/remove
changes); the data may hold any number of examples up to a declared ``max_size`` (the
most terms a batch can have, which the float-sum allowance needs). Shuffled fixed-size
batches are accounted under replace-one, on datasets of exactly ``n`` examples.
:func:`make_dp_sgd` builds the measurement whose domain and map agree with this.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.accounting import Accounting, AccountingError, with_accounting
from opendp_hybridad.analysis.rounding import add_up, libm_up, mul_up
from opendp_hybridad.dpsgd.accounting import DpSgdRdpCurve, dp_sgd_calibration, dp_sgd_steps, reference_event, unit_rdp
from opendp_hybridad.dpsgd.optim import SGD, Constant, Optimizer, Schedule, as_schedule
from opendp_hybridad.dpsgd.plan import (
    DPSGDPlan,
    GaussianNoise,
    GradientSum,
    Imputation,
    PoissonSelection,
    ProvenAccounting,
    ShuffledSelection,
    StepBound,
    computed_sum_sensitivity,
)
from opendp_hybridad.dpsgd.selection import BatchSelector
from opendp_hybridad.errors import DataError, DeclarationError
from opendp_hybridad.nn.model import ModelBound
from opendp_hybridad.nn.model import _round_up_16_per_octave as _round_up_16_per_octave  # re-exported (tests read it here)
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, Relation

__all__ = ["DPSGD", "DPSGDPlan", "TrainedParameters", "TrainingHistory", "computed_sum_sensitivity", "make_dp_sgd"]



class TrainedParameters(list):
    """The trained weights (one tuple of arrays per part, as the model's ``init`` gives), marked ``private``:
    False when the run drew seeded noise (``fit(insecure_noise_seed=...)``), which is not differentially private."""

    private: bool = True

    def __init__(self, params: Any = (), private: bool = True):
        super().__init__(params)
        self.private = bool(private)


@dataclass
class TrainingHistory:
    """What a run recorded: only released (noisy) and public quantities, never the training loss.

    ``steps_run`` counts the noisy steps taken, those of resumed runs included (under shuffling,
    a run that stopped mid-epoch counts that epoch whole, since a resumed run draws a fresh
    permutation); it is increased before each step's noisy sum is drawn, and
    ``epsilon``/``delta`` (the proven figure for ``steps_run`` steps) are set before the
    weights are returned. ``noise_seconds`` and ``gradient_seconds`` are diagnostic timings for
    benchmarks: they depend on the batch sizes, so they are **not** private (the measurement of
    :func:`make_dp_sgd` releases the weights only, never a history).
    """

    steps: list[dict[str, float]] = field(default_factory=list)
    noise_seconds: float = 0.0
    gradient_seconds: float = 0.0
    #: why training stopped before its last step (a function of public weights), or None
    stopped: str | None = None
    #: steps of the runs this one resumed (0 for a fresh run)
    steps_before: int = 0
    #: noisy steps taken, over all runs behind these weights
    steps_run: int = 0
    #: False when any run behind these weights drew seeded noise: then nothing here is private
    private: bool = True
    epsilon: float = math.nan
    delta: float = math.nan
    plan: DPSGDPlan | None = None
    #: the optimizer's state after the last step (post-processing of released sums: public)
    optimizer_state: dict[str, Any] = field(default_factory=dict)

    @property
    def privacy(self) -> dict[str, Any]:
        """The privacy spent so far and the public parameters it depends on (what a checkpoint's sidecar holds)."""
        if self.plan is None:
            raise DeclarationError("this history has no plan (it was not made by DPSGD.fit)")
        plan = self.plan
        report = plan.accounting.report(self.steps_run)
        return {"private": self.private, "steps": self.steps_run, "epsilon": report["epsilon"], "delta": report["delta"],
                "accountant_delta": plan.accounting.delta, "sampling": plan.batch_selection.sampling,
                "sampling_probability": plan.accounting.curve.sampling_probability,
                "noise_multiplier": plan.noise_multiplier, "public_size": plan.public_size, "max_size": plan.max_size,
                "batch_size": plan.batch_size, "relation": plan.relation.name, "accountant": report["accountant"],
                "noise": plan.noise.kind, "coordinates_per_step": plan.accounting.coordinates_per_step}


def _flatten(params: Any) -> np.ndarray:
    """The weights as one flat vector, in the layout of the gradient sum (part by part, each array row-major)."""
    arrays = [np.ravel(a) for part in params for a in part]
    return np.concatenate(arrays) if arrays else np.zeros(0)


class DPSGD:
    """A DP-SGD run: model, sensitivity mode, noise, batches, epochs, optimizer.

    ``noise_multiplier`` or ``target_epsilon`` (exactly one): with ``target_epsilon`` the
    multiplier is calibrated for the public ``n`` when a plan is built
    (:func:`~opendp_hybridad.dpsgd.accounting.dp_sgd_calibration`: the smallest found whose
    proven epsilon at ``delta`` is at most the target, never above it) and recorded in the plan.

    ``learning_rate``: a number, a :class:`~opendp_hybridad.dpsgd.optim.Schedule`
    (``Constant``, ``StepDecay``, ``Cosine``) or any callable of the step index.
    ``optimizer``: :class:`~opendp_hybridad.dpsgd.optim.SGD` (default; ``momentum``,
    ``weight_decay``) or :class:`~opendp_hybridad.dpsgd.optim.Adam`; post-processing only.
    ``physical_batch_size``: sum each (logical) batch in chunks of at most this many rows.

    ``impute``: what a missing (NaN) input entry becomes before clamping to the declared
    box, a data-independent rule: a number (default 0, the centre of the symmetric box),
    an array broadcast to the input shape (one value per entry), ``"lower"`` (the box's
    lower end), or None (a missing entry is refused; the measurement's domain then excludes NaN).
    """

    def __init__(self, model: Any, *, noise_multiplier: float | None = None, batch_size: int, epochs: float,
                 learning_rate: float | Schedule | Callable[[int], float], mode: str = "clip", clip: float = 1.0,
                 sampling: str = "poisson", delta: float = 1e-5, granularity: str = "global", noise: str = "discrete-gaussian",
                 impute: Any = 0.0, target_epsilon: float | None = None, optimizer: Optimizer | None = None,
                 physical_batch_size: int | None = None):
        if mode not in ("clip", "bound", "auto"):
            raise DeclarationError("mode must be 'clip', 'bound' or 'auto'")
        # public parameters: one-line DeclarationErrors from the shared checks, never a TypeError later
        if (noise_multiplier is None) == (target_epsilon is None):
            raise DeclarationError("declare exactly one of noise_multiplier and target_epsilon")
        if noise_multiplier is not None:
            noise_multiplier = validation.noise_multiplier("noise_multiplier", noise_multiplier)
        if target_epsilon is not None:
            target_epsilon = validation.positive_finite("target_epsilon", target_epsilon)
        batch_size = validation.count("batch_size", batch_size)
        epochs = validation.positive_finite("epochs", epochs)
        schedule = as_schedule(learning_rate)
        delta = validation.probability("delta", delta)
        if sampling not in ("poisson", "shuffle"):
            raise DeclarationError("sampling must be 'poisson' or 'shuffle'")
        if mode != "bound":
            clip = validation.positive_finite("clip", clip)
            if clip < 2.0**-300:
                raise DeclarationError("the clipping norm clip must be at least 2^-300")
        else:
            clip = validation.real("clip", clip)  # unused by the bound mode's sensitivity
        if physical_batch_size is not None:
            physical_batch_size = validation.count("physical_batch_size", physical_batch_size)
        optimizer = SGD() if optimizer is None else optimizer
        if not isinstance(optimizer, Optimizer):
            raise DeclarationError("optimizer must be an opendp_hybridad.dpsgd.optim.Optimizer (SGD(...), Adam(...))")
        self.model, self.mode, self.clip = model, mode, float(clip)
        self.noise_multiplier, self.target_epsilon = noise_multiplier, target_epsilon
        self.batch_size, self.epochs = batch_size, epochs
        self.schedule, self.optimizer, self.physical_batch_size = schedule, optimizer, physical_batch_size
        # the number when one was declared (as before), else the schedule
        self.learning_rate = schedule.rate if isinstance(schedule, Constant) else schedule
        self.sampling, self.delta = sampling, delta
        if granularity not in ("global", "step"):
            raise DeclarationError("granularity must be 'global' (one bound over the weight set) or 'step' (current weights)")
        self.granularity = granularity
        if noise not in ("opendp", "discrete-gaussian"):
            raise DeclarationError("noise must be 'opendp' (OpenDP's Gaussian) or 'discrete-gaussian' (our table sampler)")
        self.noise = noise
        for act in model.activations:
            if not all(math.isfinite(v) for v in (act.derivative_lipschitz(1.0), act.value_error(1.0), act.slope_error(1.0))):
                raise DeclarationError(
                    f"activation {act.name}: no bound on the float error of its per-example gradients (its derivative "
                    "jumps, or its evaluation errors are not stated), so the noise could not cover how BLAS computes "
                    "them; use tanh, sigmoid, a tempered sigmoid or identity")
        if not math.isfinite(model.loss.delta_lipschitz()):
            raise DeclarationError(f"loss {model.loss.name}: no bound on the float error of its delta")
        self._impute = self._impute_vector(impute)
        self.bound: ModelBound = model.certified_bound()
        if not math.isfinite(self.bound.upper) and mode != "clip":
            raise DeclarationError("the certified gradient-norm bound is infinite for this model; use mode='clip'")
        if not math.isfinite(self.bound.rounding) and mode != "clip":
            raise DeclarationError("the float error of the per-example gradient is unbounded over the declared set; use mode='clip'")
        if mode == "clip":
            # at typical (public, data-free) weights: a part whose derivative jumps (GroupSort, relu) has no finite
            # forward error anywhere, and every run would stop at its first step; refuse it now
            start = model.init(np.random.default_rng(0))
            if not math.isfinite(model.rounding_bound(start).row_error(self.clip)):
                raise DeclarationError("the float error of the per-example gradients is unbounded for this model (a part "
                                       "whose derivative jumps, such as relu or GroupSort), so no noise covers the float sum")
        self._calibrations: dict[int, dict[str, Any]] = {}
        self._curves: dict[tuple[int, float], DpSgdRdpCurve] = {}

    def _impute_vector(self, impute: Any) -> np.ndarray | None:
        box = self.model.input_bound
        if impute is None:
            return None
        if isinstance(impute, str):
            if impute != "lower":
                raise DeclarationError("impute must be a number, an array of the input's shape, 'lower' or None")
            return -box.copy()
        try:
            values = np.broadcast_to(np.asarray(impute, dtype=float), box.shape).copy()
        except (TypeError, ValueError) as error:
            raise DeclarationError("impute must be a number, an array of the input's shape, 'lower' or None") from error
        if not np.all(np.isfinite(values)):
            raise DeclarationError("imputed values must be finite")
        return np.clip(values, -box, box)  # inside the declared box, like every other entry

    @property
    def relation(self) -> Relation:
        """Add/remove one example under Poisson sampling, replace one under shuffled fixed-size batches."""
        return ADD_REMOVE if self.sampling == "poisson" else REPLACE_ONE

    # -- the sum's bounds (over the declared set; the plan's GradientSum holds them for a run) ------------------
    def _summer(self, max_terms: int) -> GradientSum:
        return GradientSum(self.model, self.mode, self.clip, self.bound, self.granularity, int(max_terms), self.physical_batch_size)

    @property
    def sensitivity(self) -> float:
        """The per-example bound on the exact (real-arithmetic) rows: ``C``, ``K`` or ``min(C, K)``."""
        return self._summer(self.batch_size).sensitivity

    @property
    def clipping_needed(self) -> bool:
        return self._summer(self.batch_size).clipping_needed

    def row_error(self, bound: ModelBound | None = None, clip: bool | None = None) -> float:
        """``e``: how far a computed row can be from the exact one (:meth:`ModelBound.row_error`).

        ``bound`` None: over the declared weight set, which holds where the weights are kept
        there (``bound`` mode, ``auto`` with ``granularity="global"``); ``fit`` passes the
        current weights' bound otherwise.
        """
        return self._summer(self.batch_size).row_error(bound, clip)

    @property
    def _projects(self) -> bool:
        """Whether the weights are kept in the declared set (so the global K and e hold)."""
        return self._summer(self.batch_size).projects

    # -- sizes, calibration and the plan -------------------------------------------------------------------
    def _sizes(self, n: int | None, max_size: int | None, actual: int | None = None) -> tuple[int, int]:
        """The public size and the largest dataset accepted (default: ``n``; ``n`` itself defaults to ``actual``)."""
        if n is None:
            if actual is None:
                raise DeclarationError("the public dataset size n is needed")
            n = actual
        n = validation.count("n (the public dataset size)", n)
        if self.sampling == "shuffle":
            if max_size is not None and validation.count("max_size", max_size) != n:
                raise DeclarationError("shuffled batches are accounted under replace-one: datasets hold exactly n examples")
            return n, n
        max_size = n if max_size is None else validation.count("max_size", max_size)
        return n, max_size

    def _steps(self, n: int) -> int:
        if self.sampling == "poisson":
            return dp_sgd_steps(n, self.batch_size, self.epochs)
        dp_sgd_steps(n, self.batch_size, self.epochs)  # validates the sizes
        return math.ceil(self.epochs) * (n // self.batch_size)

    def calibration(self, n: int) -> dict[str, Any] | None:
        """With ``target_epsilon``: :func:`dp_sgd_calibration`'s report for the public ``n`` (cached), else None."""
        if self.target_epsilon is None:
            return None
        n = validation.count("n (the public dataset size)", n)
        if n not in self._calibrations:
            self._calibrations[n] = dp_sgd_calibration(self.target_epsilon, self.delta, n, self.batch_size, self.epochs,
                                                       self.sampling)
        return self._calibrations[n]

    def noise_multiplier_for(self, n: int) -> float:
        """The declared noise multiplier, or the one calibrated to ``target_epsilon`` for the public ``n``."""
        calibrated = self.calibration(n)
        return self.noise_multiplier if calibrated is None else float(calibrated["noise_multiplier"])

    def _curve(self, n: int, sigma: float) -> DpSgdRdpCurve:
        key = (n, sigma)
        if key not in self._curves:
            self._curves[key] = DpSgdRdpCurve(n, self.batch_size, sigma, self.sampling)
        return self._curves[key]

    def plan(self, n: int, max_size: int | None = None, *, steps_before: int = 0) -> DPSGDPlan:
        """The run on a dataset of public size ``n`` (at most ``max_size`` examples under Poisson sampling) as its parts.

        ``steps_before``: the steps of the runs a resumed run continues (their privacy is counted too).
        """
        n, max_size = self._sizes(n, max_size)
        steps = self._steps(n)
        sigma = self.noise_multiplier_for(n)
        selection = (PoissonSelection(self.batch_size, n, max_size) if self.sampling == "poisson"
                     else ShuffledSelection(self.batch_size, n))
        summer = self._summer(selection.max_terms)
        dimension = int(self.model.num_parameters)
        noise = GaussianNoise(self.noise, sigma, dimension, selection.max_terms, summer.sum_sensitivity)
        accounting = ProvenAccounting(self._curve(n, sigma), steps, int(steps_before), self.delta,
                                      reference_event(n, self.batch_size, sigma, self.epochs, self.sampling),
                                      dimension if self.noise == "discrete-gaussian" else 0, self.target_epsilon)
        return DPSGDPlan(selection, summer, noise, accounting, selection.relation, n, max_size, Imputation(self._impute),
                         self.optimizer, self.schedule.for_run(accounting.total_steps), self.batch_size)

    def rdp_curve(self, n: int) -> tuple[float, ...]:
        """The run's proven RDP at :data:`~opendp_hybridad.accounting.RDP_ORDERS` (:class:`DpSgdRdpCurve`)."""
        return self.plan(n).rdp_curve

    def statistical_distance(self, n: int) -> float:
        """How far (total variation) the run's noise can be from the ideal discrete Gaussians its event describes.

        The table sampler draws each coordinate within ``STATISTICAL_DISTANCE_BOUND`` of the
        discrete Gaussian, so a run drawing ``steps x parameters`` coordinates is within their
        product (rounded up); OpenDP's own noise is exact (0).
        """
        return self.plan(n).statistical_distance

    def epsilon(self, n: int) -> dict[str, Any]:
        """(epsilon, delta) of the run; with the table sampler, delta includes its statistical distance."""
        return self.plan(n).epsilon()

    # -- noise (for a step outside fit: the bench, audits) -------------------------------------------------
    def _noise_part(self, dimension: int, max_terms: int, noise_multiplier: float | None) -> GaussianNoise:
        sigma = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        if sigma is None:
            raise DeclarationError("the noise multiplier is calibrated for a public n: use trainer.plan(n).noise")
        return GaussianNoise(self.noise, sigma, int(dimension), int(max_terms), math.nan)

    def noise_measurement(self, dimension: int, sensitivity: float | None = None, *, noise_multiplier: float | None = None):
        """OpenDP's vector Gaussian on the summed gradient.

        OpenDP rounds its input to a grid of spacing ``2^k`` and adds discrete
        Gaussian noise on that grid; the default ``k`` is extremely fine (about 46
        microseconds per coordinate here). We pick ``2^k <= 2^-30 * std`` (about 11
        microseconds) and cover the rounding: every coordinate moves by at most
        ``2^(k-1)``, so the l2 sensitivity grows by at most ``sqrt(d) 2^k``, and the std
        is ``noise_multiplier x (sensitivity + sqrt(d) 2^k)``, rounded up, so the noise
        multiplier stays what the accounting assumes.
        """
        sens = self.sensitivity if sensitivity is None else sensitivity
        return self._noise_part(dimension, 1, noise_multiplier).opendp_measurement(sens)

    def noise_function(self, dimension: int, sensitivity: float | None = None, max_terms: int | None = None, *,
                       row_error: float | None = None, noise_multiplier: float | None = None):
        """The noise for a summed gradient of ``dimension`` coordinates: array in, array out.

        ``sensitivity`` is the per-example bound on the exact rows (default: the mode's);
        the noise covers :func:`computed_sum_sensitivity` of it for sums of up to
        ``max_terms`` examples (default the batch size; ``fit`` passes the most a batch can
        hold) whose rows are each within ``row_error`` of the exact ones (default
        :meth:`row_error` over the declared weight set).
        """
        sensitivity = self.sensitivity if sensitivity is None else sensitivity
        max_terms = self.batch_size if max_terms is None else int(max_terms)
        row_error = self.row_error() if row_error is None else row_error
        return self._noise_part(dimension, max_terms, noise_multiplier).sampler(sensitivity, row_error)

    # -- the data ----------------------------------------------------------------------------------
    def _membership_error(self, x: Any, y: Any, n: int, max_size: int) -> str | None:
        """Why ``(x, y)`` is not in the domain (a message naming no value), or None. Never raises."""
        try:
            if _has_text(x):
                return "features must be numbers"
            x = np.asarray(x, dtype=float)
            y = np.asarray(y)
        except (TypeError, ValueError, OverflowError):
            return "features must be numbers"
        if _has_text(y):
            return "labels must be numbers"
        m = x.shape[0] if x.ndim >= 1 else -1
        shape = tuple(int(s) for s in self.model.input_shape)
        if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape or y.ndim < 1 or y.shape[0] != m:
            return (f"x must be (examples, {', '.join(str(s) for s in shape)}): one input of the model's shape {shape} per "
                    "example, with one label per example")
        if self.sampling == "poisson" and m > max_size:
            return f"the data holds more examples than the declared maximum ({max_size})"
        if self.sampling == "shuffle" and m != n:
            return f"shuffled batches are accounted under replace-one: the data must hold exactly n = {n} examples"
        if self._impute is None and np.isnan(x).any():
            return "features contain missing values; declare impute= or impute them with a public rule before training"
        return self._label_error(y)

    def _label_error(self, y: np.ndarray) -> str | None:
        """Why the labels are not of the loss's kind (``loss.label_kind``), or None."""
        kind, out = self.model.loss.label_kind, int(self.model.output_features)
        try:
            if kind == "class":
                yf = y.astype(float)
                if y.ndim != 1 or not np.all((yf == np.round(yf)) & (yf >= 0) & (yf < out)):
                    return f"labels must be class indices 0..{out - 1}"
            elif kind == "binary":
                if y.ndim != 1 or not np.all(np.isin(y.astype(float), (0.0, 1.0))):
                    return f"labels must be 0 or 1 for the {self.model.loss.name} loss"
            else:
                yf = y.astype(float)
                if not ((yf.ndim == 1 and out == 1) or yf.shape[1:] == (out,)):
                    return "regression labels must have one value per output"
                if np.isnan(yf).any():
                    return "labels contain missing values"
        except (TypeError, ValueError, OverflowError):
            return "labels must be numbers"
        return None

    def is_member(self, data: Any, n: int, max_size: int | None = None) -> bool:
        """Whether ``data = (x, y)`` is in the domain of :func:`make_dp_sgd` with public size ``n``."""
        try:
            n, max_size = self._sizes(n, max_size)
            if not (isinstance(data, (tuple, list)) and len(data) == 2):
                return False
            return self._membership_error(data[0], data[1], n, max_size) is None
        except Exception:  # a member check answers, it never raises
            return False

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        """Missing entries imputed (a copy), then each example moved into the declared input set the bound assumes:
        the model's own rule where it has one (``Sequential.clamp_inputs``: the box, then its l2 ball if declared),
        else every entry clamped to the box. A fixed map of each example alone, so neighbours stay neighbours."""
        x = np.array(x, dtype=float)  # a copy: the caller's array is left alone
        Imputation(self._impute).apply(x)
        clamp = getattr(self.model, "clamp_inputs", None)
        if callable(clamp):
            return clamp(x)
        return np.clip(x, -self.model.input_bound, self.model.input_bound)

    def _check(self, x: Any, y: Any, n: int | None = None, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The data as training reads it.

        Refused (naming no value) outside the domain; missing entries imputed, inputs and
        regression labels clamped to the declared boxes.
        """
        m = len(x) if hasattr(x, "__len__") else None
        n, max_size = self._sizes(n, max_size, m)
        reason = self._membership_error(x, y, n, max_size)
        if reason is not None:
            raise DataError(reason)
        y = np.asarray(y)
        kind = self.model.loss.label_kind
        if kind == "class":
            y = y.astype(float).astype(np.int64)
        elif kind == "binary":
            y = y.astype(float)
        else:
            # regression targets are clamped to the declared label box the bound assumes
            y = np.clip(y.astype(float), -self.model.label_bound, self.model.label_bound)
        return self._inputs(x), y

    def predict(self, params: Any, x: Any) -> np.ndarray:
        """Predictions for a batch ``x`` of shape ``(B, *input_shape)``, imputed and clamped as in training.

        By the loss's label kind: class indices (``"class"``), the probability of label 1
        (``"binary"``: the sigmoid of the logit), or the outputs (``"real"``). Post-processing
        of the released weights: no privacy cost (the data predicted on is the caller's).
        """
        try:
            array = np.asarray(x, dtype=float)
        except (TypeError, ValueError) as error:
            raise DataError("x must hold numbers") from error
        shape = tuple(int(s) for s in self.model.input_shape)
        if array.ndim != 1 + len(shape) or tuple(array.shape[1:]) != shape:
            raise DataError(f"x must be (examples, {', '.join(str(s) for s in shape)}): one input of the model's shape per row")
        if self._impute is None and np.isnan(array).any():
            raise DataError("x contains missing values and the trainer declares impute=None")
        acts, _ = self.model.forward(params, self._inputs(array))
        out = acts[-1]
        kind = self.model.loss.label_kind
        if kind == "class":
            return out.argmax(axis=1)
        if kind == "binary":
            from scipy.special import expit

            return expit(out[:, 0])
        return out

    # -- training -------------------------------------------------------------------------------
    def step(self, params: list, x_batch: np.ndarray, y_batch: np.ndarray, noise, *, clip: bool | None = None,
             history: TrainingHistory | None = None, state: dict[str, Any] | None = None, index: int = 0,
             plan: DPSGDPlan | None = None) -> list:
        """One noisy step on a selected batch: gradient sum (clipped if ``clip``), noise, update, projection.

        ``noise`` is ``self.noise_function(dimension, sensitivity, ...)`` (or a plan's
        sampler); inputs must already be checked (``fit`` clamps them). The summed gradient
        goes to the noise untouched; the optimizer (``state``: its state, updated in place;
        ``index``: the step, for the schedule) only reads the noisy sum.
        """
        max_terms = getattr(noise, "max_terms", None)
        if len(x_batch) > (math.inf if max_terms is None else max_terms):
            raise AccountingError(f"a batch of {len(x_batch)} examples is larger than the noise covers ({noise.max_terms}); "
                                  "build it with noise_function(..., max_terms=n)")
        if plan is not None:
            summer, optimizer, schedule = plan.gradient_sum, plan.optimizer, plan.learning_rate
            clip = summer.clipping_needed if clip is None else clip
            projects, size = summer.projects, int(self.model.num_parameters)
        else:
            summer, clipping_needed, projects, size = self._step_summer(self.batch_size if max_terms is None else max_terms)
            optimizer, schedule = self.optimizer, self.schedule
            clip = clipping_needed if clip is None else clip
        if history is not None:
            t0 = time.perf_counter()
        flat = np.empty(size)  # every entry is written: the first block's products, or 0 for no rows
        summer(params, x_batch, y_batch, clip, flat)
        if history is not None:
            t1 = time.perf_counter()
        noisy = noise(flat, in_place=True)  # flat is ours: the released vector takes its place
        if history is not None:
            t2 = time.perf_counter()
            history.gradient_seconds += t1 - t0
            history.noise_seconds += t2 - t1
        # post-processing of the released sum (optim.py); K (global) holds only on the certified weight
        # set, so the weights are projected back there whenever K is relied on, whatever the optimizer did
        state = optimizer.init(size) if state is None else state
        direction, scale = optimizer.update(noisy, self.batch_size, lambda: _flatten(params), state)
        return self.model.apply_step(params, direction, schedule(index) * scale, project=projects)

    def _step_summer(self, max_terms: int) -> tuple[GradientSum, bool, bool, int]:
        """``(self._summer(max_terms), its clipping_needed, its projects, the parameter count)``, for :meth:`step` without a plan.

        Kept from the last call while every field it was built from is the same object (model,
        bound) or value (a step costs about 1-2 us less on a small model than rebuilding it); any change to
        the trainer's mode, clip, bound, model or batch sizes builds it afresh, so the sum and
        the projection always follow the trainer's current declaration.
        """
        # the model and the bound by identity (objects), the declared numbers by value
        values = (self.mode, self.clip, self.granularity, max_terms, self.physical_batch_size)
        cached = self.__dict__.get("_step_summer_cache")
        if cached is None or cached[0] is not self.model or cached[1] is not self.bound or cached[2] != values:
            summer = self._summer(max_terms)
            cached = (self.model, self.bound, values, (summer, summer.clipping_needed, summer.projects,
                                                       int(self.model.num_parameters)))
            self.__dict__["_step_summer_cache"] = cached
        return cached[3]

    def _resumed(self, resume: Any) -> tuple[int, bool, dict[str, Any]]:
        """The steps, privacy flag and optimizer state of the run(s) ``resume`` (a Checkpoint or TrainingHistory) records."""
        privacy = resume.privacy
        return int(privacy["steps"]), bool(privacy["private"]), dict(getattr(resume, "optimizer_state", {}) or {})

    def _check_resumable(self, resume: Any, plan: DPSGDPlan) -> None:
        """Refuse to continue a run with other accounting parameters (its steps would not compose as one curve)."""
        privacy = resume.privacy
        ours = {"sampling": plan.batch_selection.sampling, "public_size": plan.public_size, "batch_size": plan.batch_size,
                "noise_multiplier": plan.noise_multiplier, "accountant_delta": plan.accounting.delta, "noise": plan.noise.kind}
        for name, value in ours.items():
            if privacy.get(name) != value:
                raise DeclarationError(f"resume: {name} differs from the checkpoint's ({privacy.get(name)!r} there, {value!r} "
                                       "here); account different runs together with compose_epsilon")
        # the weights must fit this model (public shapes): checked here, before any data, not by a matmul on a batch
        stored = getattr(resume, "params", None)
        if stored is not None:
            expected = [np.shape(a) for part in self.model.init(np.random.default_rng(0)) for a in part]
            found = [np.shape(a) for part in stored for a in part]
            if found != expected:
                raise DeclarationError("resume: the checkpoint's weights do not fit this model (their shapes differ)")

    def fit(self, x: Any, y: Any, params=None, *, n: int | None = None, max_size: int | None = None,
            progress: bool = False, seed: int | None = None, validation: tuple[Any, Any] | None = None,
            resume: Any = None, insecure_noise_seed: int | None = None):
        """Train; returns ``(params, history)``. Only released (noisy) quantities and public ones are recorded.

        Builds ``self.plan(n, max_size)`` and runs it (:meth:`run`).
        ``n``: the public dataset size that sets the sampling rate and the number of steps
        (default ``len(x)``, which treats the size as public: :func:`make_dp_sgd` always
        declares it). ``max_size``: under Poisson sampling, the most examples the data may
        hold (default ``n``); the noise covers the float sum of that many rows.
        ``resume``: a :class:`~opendp_hybridad.dpsgd.checkpoint.Checkpoint` (``DPSGD.load``) or the
        ``TrainingHistory`` of an earlier run with the same accounting parameters: the step count
        continues, so the epsilon reported is that of all the steps together; ``params``
        default to the checkpoint's.
        ``insecure_noise_seed``: draw the noise from numpy's generator seeded with it, for
        reproducible experiments. **Not private**: the history and the returned weights are
        marked ``private = False`` (and so are runs resumed from them); :func:`make_dp_sgd` refuses it.
        ``seed``: seeds the initial weights and the batch selection, for tests and experiments. A
        known seed makes the batches predictable, so amplification by subsampling no longer holds:
        the run is marked ``private = False`` too (:func:`make_dp_sgd` never passes a seed).
        ``progress``: a tqdm bar on standard error, and a line at every tenth of the run with
        the epsilon spent so far by RDP (``epsilon_rdp`` in the step's record: converted from
        one step's proven RDP curve, computed once, so the lines cost microseconds; the last line's
        figure is the ``epsilon`` of :meth:`epsilon`)
        and, if ``validation`` (public data) is given, its loss and accuracy. The training loss
        itself is never shown: it would not be private.
        """
        if self.noise == "opendp":
            import opendp.prelude as dp

            dp.assert_features("contrib")  # OpenDP's vector Gaussian draws the noise: asked before any data is read
        if insecure_noise_seed is not None and self.noise != "discrete-gaussian":
            raise DeclarationError("seeded noise is drawn by the table sampler only (noise='discrete-gaussian')")
        n, max_size = self._sizes(n, max_size, len(x) if hasattr(x, "__len__") else None)
        before = 0 if resume is None else self._resumed(resume)[0]
        plan = self.plan(n, max_size, steps_before=before)
        if resume is not None:
            self._check_resumable(resume, plan)
            if params is None and hasattr(resume, "params"):
                params = resume.params
        return self.run(plan, x, y, params, progress=progress, seed=seed, validation=validation, resume=resume,
                        insecure_noise_seed=insecure_noise_seed)

    def run(self, plan: DPSGDPlan, x: Any, y: Any, params=None, *, progress: bool = False, seed: int | None = None,
            validation: tuple[Any, Any] | None = None, resume: Any = None, insecure_noise_seed: int | None = None):
        """Run a plan built by :meth:`plan` (what :meth:`fit` and :func:`make_dp_sgd` both do); see :meth:`fit`."""
        x, y = self._check(x, y, plan.public_size, plan.max_size)
        count = x.shape[0]
        model = self.model
        rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)  # initial weights: public
        selector = BatchSelector(None if seed is None else [seed, 1])  # seeded: a stream apart from the initial weights
        params = model.project(params if params is not None else model.init(rng))
        dimension = int(model.num_parameters)
        before, private, state = (0, True, {}) if resume is None else self._resumed(resume)
        state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()} or plan.optimizer.init(dimension)
        noise_rng = None if insecure_noise_seed is None else np.random.default_rng(insecure_noise_seed)
        # seeded noise or seeded batches (a known seed makes the batches predictable: no amplification) is not private
        history = TrainingHistory(steps_before=before, steps_run=before, private=private and noise_rng is None and seed is None, plan=plan,
                                  optimizer_state=state)
        noises: dict[StepBound, Any] = {}

        def noise_for(bounds: StepBound):
            if bounds not in noises:
                if len(noises) > 64:
                    noises.clear()
                noises[bounds] = plan.noise.sampler(bounds.sensitivity, bounds.error, noise_rng)
            return noises[bounds]

        steps = plan.steps
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc="DP-SGD", unit="step", file=sys.stderr, leave=True)
        # the bar moves every 1/200 of the run (and at each progress line and the end): a tqdm update
        # costs 2-3 us, which every step paying was about 1% of a small model's step
        bar_stride = max(1, steps // 200)
        done = 0
        curve = plan.accounting.curve
        try:
            for step, members in enumerate(plan.batch_selection.batches(count, steps, selector)):
                # the current weights are public (released by earlier noisy steps): bounds read them
                if not _all_finite(params):
                    # an update overflowed (a huge learning rate): stopped, from released weights only, so
                    # every dataset is answered alike (a NaN sum would otherwise raise in the sampler on
                    # non-empty batches only)
                    history.stopped = f"step {step}: the current weights are not finite"
                    break
                bounds = plan.gradient_sum.at(params)
                if not math.isfinite(computed_sum_sensitivity(bounds.sensitivity, bounds.error, plan.gradient_sum.max_terms)):
                    # no finite noise covers the float sum at these (public) weights: stop here, a
                    # decision made from released quantities only, so every member is answered alike
                    history.stopped = f"step {step}: the float error of the gradient sum is unbounded at the current weights"
                    break
                try:
                    noise = noise_for(bounds)
                except DeclarationError:
                    if step == 0:  # at the initial (public, data-free) weights: a bad declaration, for every dataset alike
                        raise
                    # the sum could leave the noise grid's range at these (released) weights: stopped as above
                    history.stopped = f"step {step}: the gradient sum could leave the noise grid's range at the current weights"
                    break
                history.steps_run += 1  # the spent budget is recorded before this step's noisy sum is drawn
                params = self.step(params, x[members], y[members], noise, clip=bounds.clip, history=history, state=state,
                                   index=before + step, plan=plan)
                done = step + 1
                record: dict[str, float] = {"step": step}
                if progress and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
                    record["epsilon_rdp"] = curve.epsilon(before + step + 1, plan.accounting.delta)
                    line = f"step {step + 1:>6d}/{steps}  epsilon (RDP) {record['epsilon_rdp']:.3f}"
                    if validation is not None:
                        line += self._validation(params, validation, record)
                    bar.set_postfix_str(f"eps {record['epsilon_rdp']:.3f}", refresh=False)
                    bar.update(done - bar.n)
                    bar.write(line, file=sys.stderr)
                elif bar is not None and done % bar_stride == 0:
                    bar.update(done - bar.n)
                history.steps.append(record)
        finally:
            if bar is not None:
                bar.update(done - bar.n)  # a run that stopped early shows where it stopped
                bar.close()
        if plan.batch_selection.sampling == "shuffle":
            # a run that stopped mid-epoch counts that epoch whole: a resumed run draws a fresh permutation,
            # so its steps must start a new epoch in the accounting (audit: attack_dpsgd_trainer.py)
            per_epoch = plan.public_size // plan.batch_size
            history.steps_run = -(-history.steps_run // per_epoch) * per_epoch
        spent = plan.accounting.report(history.steps_run)  # recorded before the weights are returned
        history.epsilon, history.delta = spent["epsilon"], spent["delta"]
        return TrainedParameters(params, history.private), history

    def _validation(self, params: Any, data: tuple[Any, Any], record: dict[str, float]) -> str:
        """Loss and accuracy on public validation data, into ``record``; the text for the progress line."""
        vx, vy = self._check(data[0], data[1], len(data[0]), len(data[0]))
        acts, _ = self.model.forward(params, vx)
        out = acts[-1]
        record["validation_loss"] = float(self.model.loss.value(out, vy).mean())
        kind = self.model.loss.label_kind
        if kind == "class":
            record["validation_accuracy"] = float((out.argmax(axis=1) == vy).mean())
        elif kind == "binary":
            record["validation_accuracy"] = float(((out[:, 0] > 0) == (vy > 0.5)).mean())
        return f"  validation loss {record['validation_loss']:.4f}"

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], params: Any, history: TrainingHistory):
        """Write ``params`` (npz) and a JSON sidecar with the plan's public parameters and the privacy spent so far
        (steps run, sampling, q, noise multiplier, the proven epsilon at delta); the sidecar first.
        Returns the two paths (:mod:`opendp_hybridad.dpsgd.checkpoint`)."""
        from opendp_hybridad.dpsgd import checkpoint

        settings = {"mode": self.mode, "clip": self.clip, "epochs": self.epochs, "granularity": self.granularity,
                    "learning_rate": str(self.schedule), "optimizer": str(self.optimizer),
                    "physical_batch_size": self.physical_batch_size, "target_epsilon": self.target_epsilon,
                    "input_shape": [int(s) for s in self.model.input_shape], "num_parameters": int(self.model.num_parameters),
                    "stopped": history.stopped}
        return checkpoint.save(path, params, history.privacy, settings, history.optimizer_state)

    @staticmethod
    def load(path: str | os.PathLike[str]):
        """A :class:`~opendp_hybridad.dpsgd.checkpoint.Checkpoint`: weights, privacy spent, optimizer state."""
        from opendp_hybridad.dpsgd import checkpoint

        return checkpoint.load(path)


def _all_finite(params: Any) -> bool:
    """Whether every weight is finite (a public check: the weights are released by the noisy steps)."""
    return all(np.isfinite(a).all() for part in params for a in part)


def _has_text(values: Any) -> bool:
    """Whether ``values`` holds strings or bytes (numpy would parse ``"1.5"`` as a number; the domain has numbers only)."""
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object) if not hasattr(values, "dtype") \
        else np.asarray(values)
    if array.dtype.kind in "USV":
        return True
    if array.dtype.kind == "O":
        return any(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in array.ravel())
    return False


def _group_delta(epsilon: float, delta: float, k: int) -> float:
    """``delta (1 + e^eps + ... + e^((k-1) eps))``, rounded up (at most 1: any pair is (eps, 1)-close).

    Past 64 terms the sum is bounded by ``k e^((k-1) eps)`` (each term is at most the last).
    """
    if k > 64:
        exponent = mul_up(float(k - 1), epsilon)
        if exponent > 700.0:
            return 1.0
        return min(1.0, mul_up(delta, mul_up(float(k), libm_up(math.exp(exponent)))))
    total = 0.0
    for j in range(k):
        exponent = mul_up(float(j), epsilon)
        if exponent > 700.0:
            return 1.0
        total = add_up(total, libm_up(math.exp(exponent)))
        if not mul_up(delta, total) < 1.0:
            return 1.0
    return mul_up(delta, total)


def _array_text(values: np.ndarray) -> str:
    """A domain descriptor's text for a per-entry array: its one value when uniform, all of them when few, else a digest
    of the exact float64 bytes (two different arrays never share a text)."""
    flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return f"{flat[0]:.17g}"
    if flat.size <= 16:
        return "[" + ",".join(f"{v:.17g}" for v in flat) + "]"
    return "sha256:" + hashlib.sha256(flat.tobytes()).hexdigest()


def make_dp_sgd(trainer: DPSGD, n: int, measure: str = "approx", *, max_size: int | None = None,
                insecure_noise_seed: int | None = None):
    """The run as an OpenDP measurement: ``(x, y)`` -> trained parameters.

    The measurement runs ``trainer.plan(n, max_size)`` (the plan its maps are read from, so
    the map and the training cannot disagree). ``insecure_noise_seed`` is refused: a
    measurement never draws seeded noise.

    **Relation and domain.** Poisson sampling: ``symmetric_distance`` (add/remove one
    example); the domain holds datasets of 0 to ``max_size`` examples (default ``n``), and
    the sampling rate ``batch_size / n`` and the step count come from the declared public
    ``n``, whatever the data's size. Shuffled batches: ``change_one_distance`` (replace
    one), datasets of exactly ``n`` examples. An example's input is an array of the
    model's ``input_shape`` (the descriptor names it): entries may be any number;
    missing values follow the trainer's ``impute`` policy (if it is None, NaN is outside the
    domain), everything is clamped to the declared box; labels are part of the domain, by
    the loss's ``label_kind`` (class indices, 0/1, or non-missing regression targets, clamped).
    The function checks membership before touching any value and raises :class:`DataError`
    naming no value for a non-member (inside OpenDP's ``OpenDPException`` when called directly;
    :func:`opendp_hybridad.release` raises it first); on members it is total. The
    measurement carries its accounting record (:func:`~opendp_hybridad.accounting.accounting_of`:
    the plan's proven RDP curve at ``d_in = 1`` and the table sampler's statistical distance), so
    :func:`~opendp_hybridad.accounting.compose_epsilon` accepts it.

    **Maps.** ``measure="approx"``: (epsilon, delta) at the trainer's delta (the proven RDP
    of the lattice noise, :mod:`opendp_hybridad.dpsgd.accounting`; delta includes the table
    sampler's distance). ``d_in = 0``: (0, 0); ``d_in = k > 1``:
    group privacy, ``(k eps, delta sum_{j<k} e^(j eps))``: by induction over a path of ``k``
    neighbours, ``P[M(D_0) in S] <= e^eps P[M(D_1) in S] + delta <= ... <= e^(k eps) P[M(D_k) in S]
    + delta (1 + e^eps + ... + e^((k-1) eps))`` (Dwork and Roth 2014, Theorem 2.2, for
    delta > 0), rounded up. ``measure="renyi"``: a Rényi curve from the RDP accountant, for
    ``d_in <= 1`` only: group privacy of Rényi DP is not offered (the map refuses
    ``d_in > 1`` with :class:`DeclarationError`; use ``measure="approx"``).
    """
    if insecure_noise_seed is not None:
        raise DeclarationError("make_dp_sgd never uses seeded noise (insecure_noise_seed): a measurement's noise is private")
    import opendp.prelude as dp

    # user_domain and make_user_measurement need both (OpenDP's Gaussian, with noise="opendp", needs contrib)
    dp.assert_features("contrib", "honest-but-curious")
    plan = trainer.plan(n, max_size)
    n, max_size = plan.public_size, plan.max_size
    relation = plan.relation
    model = trainer.model
    size = f"size={n}" if trainer.sampling == "shuffle" else f"max_size={max_size}"
    missing = "refuse" if trainer._impute is None else f"impute={_array_text(trainer._impute)}"
    shape = "x".join(str(int(s)) for s in model.input_shape)
    domain = dp.user_domain(
        f"DPSGDExamples(shape={shape}, {size}, n={n}, loss={model.loss.name}, labels={model.loss.label_kind}, "
        f"outputs={model.output_features}, label_bound={model.label_bound!r}, box={_array_text(model.input_bound)}, "
        f"ball={getattr(model, 'input_norm_bound', None)!r}, missing={missing})",
        member=lambda data: trainer.is_member(data, n, max_size), descriptor=_Examples(trainer, n, max_size))
    # accounted at d_in = 1 (no group privacy in RDP here), by the proven curve, with the table sampler's distance
    record = Accounting(plan.dp_event(), relation, 1, "dp-sgd", noise_multiplier=plan.noise_multiplier,
                        statistical_distance=plan.statistical_distance, rdp_curve=plan.rdp_curve)

    def run(data: Any) -> Any:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise DataError("the data must be a pair (features, labels)")
        params, _ = trainer.run(plan, data[0], data[1])
        return params

    def distance(d_in: Any) -> int:
        k = int(d_in)
        if k < 0:
            raise DeclarationError("d_in must be non-negative")
        return k

    if measure == "approx":
        report = plan.epsilon()  # delta includes the table sampler's distance when it is used
        eps, delta = report["epsilon"], report["delta"]  # proven and rounded up (dpsgd.accounting)

        def privacy_map(d_in: Any) -> Any:
            k = distance(d_in)
            if k == 0:
                return (0.0, 0.0)
            if k == 1:
                return (eps, delta)
            return (mul_up(float(k), eps), _group_delta(eps, delta, k))

        measurement = dp.m.make_user_measurement(domain, relation.metric(), dp.approximate(dp.max_divergence()), run, privacy_map)
        return with_accounting(measurement, record)

    if measure != "renyi":
        raise DeclarationError("measure must be 'approx' or 'renyi'")
    if trainer.noise != "opendp":
        raise DeclarationError("the Renyi-curve form is for OpenDP's noise; the table sampler's guarantee is (epsilon, delta)")

    curve_of_units = plan.accounting.curve
    units = curve_of_units.units(plan.accounting.total_steps)  # an int: mul_up rounds the exact product up
    sigma = plan.noise_multiplier

    def curve_map(d_in: Any) -> Any:
        k = distance(d_in)
        if k > 1:
            raise DeclarationError("the Renyi-curve form offers no group privacy (d_in > 1); use measure='approx'")

        def curve(order: float) -> float:
            if k == 0:
                return 0.0
            # the proven bound of one unit at this order, times the units composed (dpsgd.accounting)
            return mul_up(units, unit_rdp(float(order), sigma, trainer.sampling, curve_of_units.sampling_probability))

        return curve

    return with_accounting(dp.m.make_user_measurement(domain, relation.metric(), dp.renyi_divergence(), run, curve_map), record)


@dataclass(frozen=True)
class _Examples:
    """The descriptor of :func:`make_dp_sgd`'s domain: :func:`opendp_hybridad.release` calls ``check`` before training."""

    trainer: DPSGD
    n: int
    max_size: int

    def check(self, data: Any) -> None:
        """Raise :class:`DataError` (naming no value) unless ``data`` is a member."""
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise DataError("the data must be a pair (features, labels)")
        reason = self.trainer._membership_error(data[0], data[1], self.n, self.max_size)
        if reason is not None:
            raise DataError(reason)
