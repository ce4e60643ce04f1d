"""DP-SGD over compiled per-example gradient kernels (the paper's Algorithm 1), with its parts visible.

Like JAX Privacy's execution plan, a :class:`DPSGDPlan` shows each part: batch
selection, the gradient sum and its sensitivity, the noise, the dp-accounting
event, the neighbouring relation and what is public. Three ways to bound the sensitivity:

* ``clip``: per-example clipping at ``C``; sensitivity ``C``.
* ``bound``: no clipping; inputs clamped to the declared box and weights projected
  back onto the certified set after every step, so the certified ``K`` holds;
  sensitivity ``K``.
* ``auto``: sensitivity ``min(C, K)``; when ``K <= C`` clipping is provably a no-op
  and per-example norms are not computed at all.

The sensitive sum is never modified before noise is added. The noise is a discrete
Gaussian on a power-of-two grid, the mechanism of OpenDP's ``then_gaussian``, with
standard deviation ``noise_multiplier * sensitivity`` (plus the grid rounding), where the
sensitivity covers the float64 computation of the sum (:func:`computed_sum_sensitivity`):
by default drawn from an exact table (:mod:`opendp_hybridad.dpsgd.noise`, its tiny
statistical distance added to delta), or by OpenDP itself with ``noise="opendp"``.
Batch selection draws from the operating system's CSPRNG (:mod:`.selection`); a
``seed`` makes it reproducible instead, for tests and experiments.

**What is public, and the relation.** Poisson sampling is accounted under add/remove
one example with sampling rate ``q = batch_size / n`` and ``ceil(epochs n / batch_size)``
steps, where ``n`` is a *declared* public dataset size, never ``len(x)`` (which add/remove
changes); the data may hold any number of examples up to a declared ``max_size`` (the
most terms a batch can have, which the float-sum allowance needs). Shuffled fixed-size
batches are accounted under replace-one, on datasets of exactly ``n`` examples.
:func:`make_dp_sgd` builds the measurement whose domain and map agree with this.
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.accounting import Accounting, AccountingError, with_accounting
from opendp_hybridad.analysis.rounding import add_up, gamma, libm_up, mul_up, sqrt_up, up
from opendp_hybridad.dpsgd.accounting import DpSgdRdpCurve, dp_sgd_epsilon, dp_sgd_steps, reference_event, unit_rdp
from opendp_hybridad.dpsgd.selection import BatchSelector
from opendp_hybridad.errors import DataError, DeclarationError
from opendp_hybridad.nn.model import MLP, ModelBound, _round_up_16_per_octave
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, Relation


@dataclass(frozen=True)
class DPSGDPlan:
    """The parts of a run, printable; also what :func:`~opendp_hybridad.accounting.compose_epsilon` accepts
    (``dp_event()``, ``relation``, ``statistical_distance``: the :class:`~opendp_hybridad.accounting.Accountable` protocol)."""

    batch_selection: str
    gradient_sum: str
    sensitivity: float
    float_sum: str
    noise: str
    event: Any
    neighbouring_relation: Relation
    public_size: int
    max_size: int
    missing_values: str
    #: total variation distance of the run's noise from the ideal lattice Gaussians (the table sampler's)
    statistical_distance: float = 0.0
    #: the run's proven RDP at :data:`~opendp_hybridad.accounting.RDP_ORDERS` (lattice noise:
    #: :mod:`opendp_hybridad.dpsgd.accounting`); :func:`~opendp_hybridad.accounting.compose_epsilon` reads
    #: it instead of ``event``, which only shows the continuous Gaussian the run resembles
    rdp_curve: tuple[float, ...] | None = None

    def __str__(self) -> str:
        return "\n".join(f"{k:>22s}: {v}" for k, v in self.__dict__.items())

    def dp_event(self) -> Any:
        """The continuous-Gaussian dp-accounting event the run resembles (its shape, not its guarantee:
        the guarantee is :attr:`rdp_curve`, which :func:`~opendp_hybridad.accounting.compose_epsilon` uses)."""
        return self.event

    @property
    def relation(self) -> Relation:
        return self.neighbouring_relation


@dataclass
class TrainingHistory:
    steps: list[dict[str, float]] = field(default_factory=list)
    noise_seconds: float = 0.0
    gradient_seconds: float = 0.0
    #: why training stopped before its last step (a function of public weights), or None
    stopped: str | None = None


class DPSGD:
    """A DP-SGD run: model, sensitivity mode, noise multiplier, batches, epochs.

    ``impute``: what a missing (NaN) feature becomes before clamping to the declared
    box, a data-independent rule: a number (default 0, the centre of the symmetric
    box), one number per feature, ``"lower"`` (the box's lower end), or None (a missing
    feature is refused; the measurement's domain then excludes NaN).
    """

    def __init__(self, model: MLP, *, noise_multiplier: float, batch_size: int, epochs: float, learning_rate: float,
                 mode: str = "clip", clip: float = 1.0, sampling: str = "poisson", delta: float = 1e-5,
                 granularity: str = "global", noise: str = "discrete-gaussian", impute: Any = 0.0):
        if mode not in ("clip", "bound", "auto"):
            raise DeclarationError("mode must be 'clip', 'bound' or 'auto'")
        # public parameters: one-line DeclarationErrors from the shared checks, never a TypeError later
        noise_multiplier = validation.noise_multiplier("noise_multiplier", noise_multiplier)
        batch_size = validation.count("batch_size", batch_size)
        epochs = validation.positive_finite("epochs", epochs)
        learning_rate = validation.positive_finite("learning_rate", learning_rate)
        delta = validation.probability("delta", delta)
        if sampling not in ("poisson", "shuffle"):
            raise DeclarationError("sampling must be 'poisson' or 'shuffle'")
        if mode != "bound":
            clip = validation.positive_finite("clip", clip)
            if clip < 2.0**-300:
                raise DeclarationError("the clipping norm clip must be at least 2^-300")
        else:
            clip = validation.real("clip", clip)  # unused by the bound mode's sensitivity
        self.model, self.mode, self.clip = model, mode, float(clip)
        self.noise_multiplier, self.batch_size, self.epochs = noise_multiplier, batch_size, epochs
        self.learning_rate, self.sampling, self.delta = learning_rate, sampling, delta
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

    def _impute_vector(self, impute: Any) -> np.ndarray | None:
        box = self.model.input_bound
        if impute is None:
            return None
        if isinstance(impute, str):
            if impute != "lower":
                raise DeclarationError("impute must be a number, one number per feature, 'lower' or None")
            return -box.copy()
        values = np.broadcast_to(np.asarray(impute, dtype=float), box.shape).copy()
        if not np.all(np.isfinite(values)):
            raise DeclarationError("imputed values must be finite")
        return np.clip(values, -box, box)  # inside the declared box, like every other feature

    @property
    def relation(self) -> Relation:
        """Add/remove one example under Poisson sampling, replace one under shuffled fixed-size batches."""
        return ADD_REMOVE if self.sampling == "poisson" else REPLACE_ONE

    # -- the plan ---------------------------------------------------------------------------------
    @property
    def sensitivity(self) -> float:
        """The per-example bound on the exact (real-arithmetic) rows: ``C``, ``K`` or ``min(C, K)``."""
        return self._sensitivity(self.bound.upper)

    def _sensitivity(self, K: float) -> float:
        return {"clip": self.clip, "bound": K, "auto": min(self.clip, K)}[self.mode]

    @property
    def clipping_needed(self) -> bool:
        return self._clipping_needed(self.bound.upper)

    def _clipping_needed(self, K: float) -> bool:
        return self.mode == "clip" or (self.mode == "auto" and self.clip < K)

    def row_error(self, bound: ModelBound | None = None, clip: bool | None = None) -> float:
        """``e``: how far a computed row can be from the exact one (:meth:`ModelBound.row_error`).

        ``bound`` None: over the declared weight set, which holds where the weights are kept
        there (``bound`` mode, ``auto`` with ``granularity="global"``); ``fit`` passes the
        current weights' bound otherwise.
        """
        bound = self.bound if bound is None else bound
        clip = self.clipping_needed if clip is None else clip
        return bound.row_error(self.clip if clip else None)

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

    def plan(self, n: int, max_size: int | None = None) -> DPSGDPlan:
        n, max_size = self._sizes(n, max_size)
        if self.sampling == "poisson":
            selection = f"Poisson sampling, q = {self.batch_size}/{n} (public n; the data may hold 0 to {max_size} examples)"
        else:
            selection = f"shuffled fixed-size batches of {self.batch_size} from exactly {n} examples"
        summed = {"clip": f"sum of per-example gradients clipped at C = {self.clip:g}",
                  "bound": f"sum of unclipped gradients, certified ||g_i|| <= K = {self.bound.upper:.6g}; weights projected",
                  "auto": (f"K = {self.bound.upper:.6g} <= C = {self.clip:g}: no clipping, norms not computed"
                           if not self.clipping_needed else f"K = {self.bound.upper:.6g} > C: clipped at {self.clip:g}")}[self.mode]
        terms = self._max_terms(max_size)
        e = self.row_error()
        total = computed_sum_sensitivity(self.sensitivity, e, terms)
        where = "" if self._projects else "; recomputed from the current (public) weights each step"
        float_sum = (f"each computed row within e = {e:.3g} of the exact one over the declared weight set (any BLAS{where}); "
                     f"sums of up to N = {terms} rows: S + 2 N e + 2 N gamma_N (S + e) = {total!r}")
        sampler = ("discrete Gaussian on a 2^k grid, exact alias table (OpenSSL bits), delta + (1 + e^eps) x coordinates x eta"
                   if self.noise == "discrete-gaussian" else "OpenDP's vector Gaussian (discrete, 2^k grid)")
        if self._impute is None:
            missing = "refused (not in the domain)"
        elif np.all(self._impute == self._impute[0]):
            missing = f"imputed with the declared value {float(self._impute[0]):g}"
        else:
            missing = "imputed with declared values, one per feature"
        missing += "; features clamped to the declared box"
        return DPSGDPlan(selection, summed, self.sensitivity, float_sum,
                         f"{sampler}; std = {self.noise_multiplier:g} x ({total!r} + grid rounding)",
                         reference_event(n, self.batch_size, self.noise_multiplier, self.epochs, self.sampling),
                         self.relation, n, max_size, missing, self.statistical_distance(n), self.rdp_curve(n))

    def rdp_curve(self, n: int) -> tuple[float, ...]:
        """The run's proven RDP at :data:`~opendp_hybridad.accounting.RDP_ORDERS` (:class:`DpSgdRdpCurve`)."""
        curve = DpSgdRdpCurve(n, self.batch_size, self.noise_multiplier, self.sampling)
        return tuple(float(v) for v in curve.rdp(self._steps(n)))

    def statistical_distance(self, n: int) -> float:
        """How far (total variation) the run's noise can be from the ideal discrete Gaussians its event describes.

        The table sampler draws each coordinate within ``STATISTICAL_DISTANCE_BOUND`` of the
        discrete Gaussian, so a run drawing ``steps x parameters`` coordinates is within their
        product (rounded up); OpenDP's own noise is exact (0).
        """
        if self.noise != "discrete-gaussian":
            return 0.0
        from opendp_hybridad.dpsgd.noise import STATISTICAL_DISTANCE_BOUND

        return min(1.0, mul_up(float(self._steps(n) * self.model.num_parameters), STATISTICAL_DISTANCE_BOUND))

    def _max_terms(self, max_size: int) -> int:
        """The most examples one batch can hold: a Poisson batch can take every example; a shuffled one ``batch_size``."""
        return max_size if self.sampling == "poisson" else self.batch_size

    def _steps(self, n: int) -> int:
        if self.sampling == "poisson":
            return dp_sgd_steps(n, self.batch_size, self.epochs)
        dp_sgd_steps(n, self.batch_size, self.epochs)  # validates the sizes
        return math.ceil(self.epochs) * (n // self.batch_size)

    def noise_measurement(self, dimension: int, sensitivity: float | None = None):
        """OpenDP's vector Gaussian on the summed gradient.

        OpenDP rounds its input to a grid of spacing ``2^k`` and adds discrete
        Gaussian noise on that grid; the default ``k`` is extremely fine (about 46
        microseconds per coordinate here). We pick ``2^k <= 2^-30 * std`` (about 11
        microseconds) and cover the rounding: every coordinate moves by at most
        ``2^(k-1)``, so the l2 sensitivity grows by at most ``sqrt(d) 2^k``, and the std
        is ``noise_multiplier x (sensitivity + sqrt(d) 2^k)``, rounded up, so the noise
        multiplier stays what the accounting assumes.
        """
        import opendp.prelude as dp

        dp.assert_features("contrib")  # OpenDP's vector Gaussian
        sens = self.sensitivity if sensitivity is None else sensitivity
        base = self.noise_multiplier * sens
        k = math.floor(math.log2(base)) - 30
        inflated = add_up(sens, mul_up(sqrt_up(float(dimension)), 2.0**k))
        std = mul_up(self.noise_multiplier, inflated)
        space = (dp.vector_domain(dp.atom_domain(T=float, nan=False), size=dimension), dp.l2_distance(T=float))
        return space >> dp.m.then_gaussian(std, k=k)

    def epsilon(self, n: int) -> dict[str, float]:
        """(epsilon, delta) of the run; with the table sampler, delta includes its statistical distance."""
        report = dp_sgd_epsilon(n, self.batch_size, self.noise_multiplier, self.epochs, self.delta, self.sampling)
        if self.noise == "discrete-gaussian":
            from opendp_hybridad.dpsgd.noise import STATISTICAL_DISTANCE_BOUND

            coordinates = self._steps(n) * self.model.num_parameters
            eps = report["epsilon"]
            # every table is checked against the bound at construction, so this holds for
            # whatever tables the run draws from (per-step sensitivities use several)
            eta = STATISTICAL_DISTANCE_BOUND
            penalty = mul_up(mul_up(add_up(1.0, libm_up(math.exp(eps))), float(coordinates)), eta)
            report["delta"] = add_up(self.delta, penalty)
            report["sampler_statistical_distance_per_coordinate"] = eta
        return report

    def noise_function(self, dimension: int, sensitivity: float | None = None, max_terms: int | None = None, *,
                       row_error: float | None = None):
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
        total = computed_sum_sensitivity(sensitivity, row_error, max_terms)
        if not math.isfinite(total):
            raise DeclarationError("the float error of the gradient sum is unbounded at these weights")
        if self.noise == "opendp":
            measurement = self.noise_measurement(dimension, total)

            def noise(flat, in_place=False):
                return np.asarray(measurement(flat.tolist()))
        else:
            from opendp_hybridad.dpsgd.noise import gaussian_noise_for

            noise = gaussian_noise_for(total, self.noise_multiplier, dimension)
            # every coordinate of a sum of max_terms rows is at most max_terms * total in magnitude:
            # refused here (public figures) rather than by the sampler on some data
            if not mul_up(float(max_terms), total) < 2.0**51 * noise.grid:
                raise DeclarationError("sums of max_terms rows could leave the noise grid's range; "
                                       "declare a smaller max_size or use a larger noise multiplier")
        noise.max_terms = max_terms  # step() refuses larger batches: the float-sum bound would not cover them
        noise.sum_sensitivity = total
        return noise

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
        d = self.model.layers[0].in_features
        if x.ndim != 2 or x.shape[1] != d or y.ndim < 1 or y.shape[0] != m:
            return "x must be (examples, features) matching the first layer, with one label per example"
        if self.sampling == "poisson" and m > max_size:
            return f"the data holds more examples than the declared maximum ({max_size})"
        if self.sampling == "shuffle" and m != n:
            return f"shuffled batches are accounted under replace-one: the data must hold exactly n = {n} examples"
        if self._impute is None and np.isnan(x).any():
            return "features contain missing values; declare impute= or impute them with a public rule before training"
        loss, out = self.model.loss.name, self.model.layers[-1].out_features
        try:
            if loss == "softmax cross-entropy":
                yf = y.astype(float)
                if y.ndim != 1 or not np.all((yf == np.round(yf)) & (yf >= 0) & (yf < out)):
                    return f"labels must be class indices 0..{out - 1}"
            elif loss == "logistic":
                if y.ndim != 1 or not np.all(np.isin(y.astype(float), (0.0, 1.0))):
                    return "labels must be 0 or 1 for the logistic loss"
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

    def _check(self, x: Any, y: Any, n: int | None = None, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The data as training reads it.

        Refused (naming no value) outside the domain; missing features imputed, features and
        regression labels clamped to the declared boxes.
        """
        m = len(x) if hasattr(x, "__len__") else None
        n, max_size = self._sizes(n, max_size, m)
        reason = self._membership_error(x, y, n, max_size)
        if reason is not None:
            raise DataError(reason)
        x = np.array(x, dtype=float)  # a copy: the caller's array is left alone
        y = np.asarray(y)
        if self._impute is not None:
            missing = np.isnan(x)
            if missing.any():
                x[missing] = np.broadcast_to(self._impute, x.shape)[missing]
        if self.model.loss.name == "softmax cross-entropy":
            y = y.astype(float).astype(np.int64)
        elif self.model.loss.name == "logistic":
            y = y.astype(float)
        else:
            # regression targets are clamped to the declared label box the bound assumes
            y = np.clip(y.astype(float), -self.model.label_bound, self.model.label_bound)
        # clamping to the declared input box is what the certified bound assumes (inf included)
        return np.clip(x, -self.model.input_bound, self.model.input_bound), y

    # -- training -------------------------------------------------------------------------------
    def step(self, params: list, x_batch: np.ndarray, y_batch: np.ndarray, noise, *, clip: bool | None = None,
             history: TrainingHistory | None = None) -> list:
        """One noisy step on a selected batch: gradient sum (clipped if ``clip``), noise, update, projection.

        ``noise`` is ``self.noise_function(dimension, sensitivity, ...)``; inputs must already be
        checked (``fit`` clamps them). The summed gradient goes to the noise untouched.
        """
        clip = self.clipping_needed if clip is None else clip
        if len(x_batch) > getattr(noise, "max_terms", math.inf):
            raise AccountingError(f"a batch of {len(x_batch)} examples is larger than the noise covers ({noise.max_terms}); "
                                  "build it with noise_function(..., max_terms=n)")
        t0 = time.perf_counter()
        flat = np.zeros(sum(W.size + b.size for W, b in params))
        if len(x_batch):
            self.model.gradient_sum(params, x_batch, y_batch, clip=self.clip if clip else None, out=flat)
        t1 = time.perf_counter()
        noisy = noise(flat, in_place=True)  # flat is ours: the released vector takes its place
        t2 = time.perf_counter()
        if history is not None:
            history.gradient_seconds += t1 - t0
            history.noise_seconds += t2 - t1
        # post-processing of the released sum; K (global) holds only on the certified weight
        # set, so the weights are kept there whenever K is relied on
        return self.model.apply_step(params, noisy, self.learning_rate / self.batch_size, project=self._projects)

    @property
    def _projects(self) -> bool:
        """Whether the weights are kept in the declared set (so the global K and e hold)."""
        return self.mode == "bound" or (self.mode == "auto" and self.granularity == "global")

    def fit(self, x: Any, y: Any, params=None, *, n: int | None = None, max_size: int | None = None,
            progress: bool = False, seed: int | None = None, validation: tuple[Any, Any] | None = None):
        """Train; returns ``(params, history)``. Only released (noisy) quantities and public ones are recorded.

        ``n``: the public dataset size that sets the sampling rate and the number of steps
        (default ``len(x)``, which treats the size as public: :func:`make_dp_sgd` always
        declares it). ``max_size``: under Poisson sampling, the most examples the data may
        hold (default ``n``); the noise covers the float sum of that many rows.
        ``progress``: a line on standard error at every tenth of the run with the epsilon
        spent so far by RDP (``epsilon_rdp`` in the step's record: an upper bound converted from
        one step's proven RDP curve, computed once, so the lines cost microseconds; the last line's
        figure is the ``epsilon`` of :meth:`epsilon`)
        and, if ``validation`` (public data) is given, its loss and accuracy. The training loss
        itself is never shown: it would not be private.
        """
        if self.noise == "opendp":
            import opendp.prelude as dp

            dp.assert_features("contrib")  # OpenDP's vector Gaussian draws the noise: asked before any data is read
        n, max_size = self._sizes(n, max_size, len(x) if hasattr(x, "__len__") else None)
        x, y = self._check(x, y, n, max_size)
        count = x.shape[0]
        steps = self._steps(n)
        rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)  # initial weights: public
        selector = BatchSelector(None if seed is None else [seed, 1])  # seeded: a stream apart from the initial weights
        params = self.model.project(params if params is not None else self.model.init(rng))
        dimension = sum(W.size + b.size for W, b in params)
        max_terms = self._max_terms(max_size)
        noises: dict[tuple[float, float], Any] = {}

        def noise_for(sensitivity: float, error: float):
            key = (sensitivity, error)
            if key not in noises:
                if len(noises) > 64:
                    noises.clear()
                noises[key] = self.noise_function(dimension, sensitivity, max_terms, row_error=error)
            return noises[key]

        history = TrainingHistory()
        curve: DpSgdRdpCurve | None = None
        order = selector.permutation(count)
        for step in range(steps):
            if self.sampling == "poisson":
                members = selector.poisson(count, self.batch_size, n)
            else:
                # each epoch: a fresh permutation cut into n // batch disjoint batches, so an
                # example is in at most one step per epoch (what the accounting assumes)
                per_epoch = n // self.batch_size
                position = step % per_epoch
                if position == 0:
                    order = selector.permutation(count)
                members = order[position * self.batch_size:(position + 1) * self.batch_size]
            # the current weights are public (released by earlier noisy steps): bounds read them
            if self.granularity == "step" and self.mode != "clip":
                bound_t = self.model.certified_bound(params)
                K_t = min(_round_up_16_per_octave(bound_t.upper), self.bound.upper if self.mode == "bound" else math.inf)
                clip_now = self._clipping_needed(K_t)
                sensitivity, error = self._sensitivity(K_t), _round_up_16_per_octave(self.row_error(bound_t, clip_now))
            elif self._projects:
                clip_now = self.clipping_needed
                sensitivity, error = self.sensitivity, self.row_error()
            else:  # clip mode: the weights are not kept in the declared set; e from their norms
                clip_now = True
                sensitivity, error = self.clip, _round_up_16_per_octave(self.model.rounding_bound(params).row_error(self.clip))
            if not math.isfinite(computed_sum_sensitivity(sensitivity, error, max_terms)):
                # no finite noise covers the float sum at these (public) weights: stop here, a
                # decision made from released quantities only, so every member is answered alike
                history.stopped = f"step {step}: the float error of the gradient sum is unbounded at the current weights"
                break
            noise = noise_for(sensitivity, error)
            params = self.step(params, x[members], y[members], noise, clip=clip_now, history=history)
            record: dict[str, float] = {"step": step}
            if progress and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
                if curve is None:  # one unit's RDP curve, computed once; each line only converts it
                    curve = DpSgdRdpCurve(n, self.batch_size, self.noise_multiplier, self.sampling)
                record["epsilon_rdp"] = curve.epsilon(step + 1, self.delta)
                line = f"step {step + 1:>6d}/{steps}  [{'#' * ((step + 1) * 20 // steps):<20s}]  epsilon (RDP) {record['epsilon_rdp']:.3f}"
                if validation is not None:
                    vx, vy = self._check(validation[0], validation[1], len(validation[0]), len(validation[0]))
                    acts, _ = self.model.forward(params, vx)
                    record["validation_loss"] = float(self.model.loss.value(acts[-1], vy).mean())
                    if self.model.loss.name == "softmax cross-entropy":
                        record["validation_accuracy"] = float((acts[-1].argmax(axis=1) == vy).mean())
                    line += f"  validation loss {record['validation_loss']:.4f}"
                print(line, file=sys.stderr)
            history.steps.append(record)
        return params, history


def _has_text(values: Any) -> bool:
    """Whether ``values`` holds strings or bytes (numpy would parse ``"1.5"`` as a number; the domain has numbers only)."""
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object) if not hasattr(values, "dtype") \
        else np.asarray(values)
    if array.dtype.kind in "USV":
        return True
    if array.dtype.kind == "O":
        return any(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in array.ravel())
    return False


def computed_sum_sensitivity(per_example: float, row_error: float, max_terms: int) -> float:
    """l2 sensitivity of the gradient sum as float64 computes it, for add/remove one example.

    ``per_example`` (``S``) bounds the *exact* rows ``c_i`` (the real-arithmetic clipped or
    unclipped gradient at the public weights: a function of the example alone, ``C`` or
    ``K``); ``row_error`` (``e``) bounds ``||c^_i - c_i||`` for the row ``c^_i`` the kernels
    compute, in any batch, with any BLAS, blocking, thread count or summation order
    (:meth:`opendp_hybridad.nn.model.ModelBound.row_error`); ``max_terms`` (``N``) bounds the
    number of rows in a sum. The kernels add the rows up as one matrix product per layer
    (and a sum for the biases): every coordinate is a sum of at most ``N`` products, within
    ``gamma_N sum_i |c^_ij|`` of the exact sum of the computed rows in any order (Higham 2002,
    3.1), so in l2 within ``gamma_N sum_i ||c^_i|| <= gamma_N N (S + e)`` (Minkowski). For
    neighbours ``D' = D + {x}`` (at most ``N`` rows each):

    ``||S^(D') - S^(D)|| <= ||c^'_x|| + sum_(i in D) ||c^'_i - c^_i|| + 2 gamma_N N (S + e)
    <= S + e + 2 (N - 1) e + 2 N gamma_N (S + e)``,

    since each example's two computed rows (one per batch) are both within ``e`` of its
    exact row. So the bound is ``S + 2 N e + 2 N gamma_N (S + e)``, rounded up. Under
    replace-one (the same ``N``) the difference is at most twice this, which the shuffled
    accounting's factor 2 covers. At batch 256, ``2 N gamma_N`` is ``1.5e-11``; the ``2 N e``
    term for the 64-128-10 bench model is about ``1e-10`` of ``S`` (``docs/dpsgd.md``).
    """
    if max_terms < 1:
        raise DeclarationError("a sum has at least one term")
    N = float(max_terms)
    two_n = 2.0 * N
    allowance = mul_up(mul_up(two_n, gamma(int(max_terms))), add_up(per_example, row_error))
    return up(add_up(add_up(per_example, mul_up(two_n, row_error)), allowance))


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


def make_dp_sgd(trainer: DPSGD, n: int, measure: str = "approx", *, max_size: int | None = None):
    """The run as an OpenDP measurement: ``(x, y)`` -> trained parameters.

    **Relation and domain.** Poisson sampling: ``symmetric_distance`` (add/remove one
    example); the domain holds datasets of 0 to ``max_size`` examples (default ``n``), and
    the sampling rate ``batch_size / n`` and the step count come from the declared public
    ``n``, whatever the data's size. Shuffled batches: ``change_one_distance`` (replace
    one), datasets of exactly ``n`` examples. Features may be anything numeric: missing
    values follow the trainer's ``impute`` policy (if it is None, NaN is outside the
    domain), everything is clamped to the declared box; labels are part of the domain
    (class indices, 0/1, or non-missing regression targets, clamped). The function checks
    membership before touching any value and raises :class:`DataError` naming no value for
    a non-member (inside OpenDP's ``OpenDPException`` when called directly;
    :func:`opendp_hybridad.release` raises it first); on members it is total. The
    measurement carries its accounting record (:func:`~opendp_hybridad.accounting.accounting_of`:
    the run's event at ``d_in = 1`` and the table sampler's statistical distance), so
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
    import opendp.prelude as dp

    # user_domain and make_user_measurement need both (OpenDP's Gaussian, with noise="opendp", needs contrib)
    dp.assert_features("contrib", "honest-but-curious")
    n, max_size = trainer._sizes(n, max_size)
    trainer._steps(n)  # validates the public sizes
    d = trainer.model.layers[0].in_features
    relation = trainer.relation
    size = f"size={n}" if trainer.sampling == "shuffle" else f"max_size={max_size}"
    missing = "refuse" if trainer._impute is None else "impute[" + ",".join(f"{v:.17g}" for v in trainer._impute) + "]"
    box = ",".join(f"{v:.17g}" for v in trainer.model.input_bound)
    domain = dp.user_domain(
        f"DPSGDExamples(d={d}, {size}, n={n}, loss={trainer.model.loss.name}, outputs={trainer.model.layers[-1].out_features}, "
        f"label_bound={trainer.model.label_bound!r}, box=[{box}], missing={missing})",
        member=lambda data: trainer.is_member(data, n, max_size), descriptor=_Examples(trainer, n, max_size))
    event = reference_event(n, trainer.batch_size, trainer.noise_multiplier, trainer.epochs, trainer.sampling)
    # accounted at d_in = 1 (no group privacy in RDP here), by the proven curve, with the table sampler's distance
    record = Accounting(event, relation, 1, "dp-sgd", noise_multiplier=trainer.noise_multiplier,
                        statistical_distance=trainer.statistical_distance(n), rdp_curve=trainer.rdp_curve(n))

    def run(data: Any) -> Any:
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise DataError("the data must be a pair (features, labels)")
        params, _ = trainer.fit(data[0], data[1], n=n, max_size=max_size)
        return params

    def distance(d_in: Any) -> int:
        k = int(d_in)
        if k < 0:
            raise DeclarationError("d_in must be non-negative")
        return k

    if measure == "approx":
        report = trainer.epsilon(n)  # delta includes the table sampler's distance when it is used
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

    curve_of_units = DpSgdRdpCurve(n, trainer.batch_size, trainer.noise_multiplier, trainer.sampling, orders=(2.0,))
    units = float(curve_of_units.units(trainer._steps(n)))

    def curve_map(d_in: Any) -> Any:
        k = distance(d_in)
        if k > 1:
            raise DeclarationError("the Renyi-curve form offers no group privacy (d_in > 1); use measure='approx'")

        def curve(order: float) -> float:
            if k == 0:
                return 0.0
            # the proven bound of one unit at this order, times the units composed (dpsgd.accounting)
            return mul_up(units, unit_rdp(float(order), trainer.noise_multiplier, trainer.sampling,
                                          curve_of_units.sampling_probability))

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
