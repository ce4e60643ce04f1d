"""DP-SGD over compiled per-example gradient kernels (the paper's Algorithm 1), with its parts visible.

Like JAX Privacy's execution plan, a :class:`DPSGDPlan` shows each part: batch
selection, the gradient sum and its sensitivity, the noise, the dp-accounting
event and the neighbouring relation. Three ways to bound the sensitivity:

* ``clip``: per-example clipping at ``C``; sensitivity ``C``.
* ``bound``: no clipping; inputs clamped to the declared box and weights projected
  back onto the certified set after every step, so the certified ``K`` holds;
  sensitivity ``K``.
* ``auto``: sensitivity ``min(C, K)``; when ``K <= C`` clipping is provably a no-op
  and per-example norms are not computed at all.

The sensitive sum is never modified before noise is added. The noise is a discrete
Gaussian on a power-of-two grid, the mechanism of OpenDP's ``then_gaussian``, with
standard deviation ``noise_multiplier * sensitivity`` (plus the grid rounding): by
default drawn from an exact table (:mod:`opendp_hybridad.dpsgd.noise`, its tiny
statistical distance added to delta), or by OpenDP itself with ``noise="opendp"``.
Batch selection draws from the operating system's CSPRNG (:mod:`.selection`); a
``seed`` makes it reproducible instead, for tests and experiments.
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendp_hybridad.accounting import AccountingError, dp_sgd_epsilon, dp_sgd_event, dp_sgd_steps
from opendp_hybridad.analysis.rounding import gamma
from opendp_hybridad.dpsgd.selection import BatchSelector
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.model import MLP, ModelBound


@dataclass(frozen=True)
class DPSGDPlan:
    batch_selection: str
    gradient_sum: str
    sensitivity: float
    noise: str
    dp_event: Any
    neighbouring_relation: str

    def __str__(self) -> str:
        return "\n".join(f"{k:>22s}: {v}" for k, v in self.__dict__.items())


@dataclass
class TrainingHistory:
    steps: list[dict[str, float]] = field(default_factory=list)
    noise_seconds: float = 0.0
    gradient_seconds: float = 0.0


class DPSGD:
    """A DP-SGD run: model, sensitivity mode, noise multiplier, batches, epochs."""

    def __init__(self, model: MLP, *, noise_multiplier: float, batch_size: int, epochs: float, learning_rate: float,
                 mode: str = "clip", clip: float = 1.0, sampling: str = "poisson", delta: float = 1e-5,
                 granularity: str = "global", noise: str = "discrete-gaussian"):
        if mode not in ("clip", "bound", "auto"):
            raise DeclarationError("mode must be 'clip', 'bound' or 'auto'")
        if not (noise_multiplier > 0 and batch_size >= 1 and epochs > 0 and learning_rate > 0):
            raise DeclarationError("noise multiplier, batch size, epochs and learning rate must be positive")
        self.model, self.mode, self.clip = model, mode, float(clip)
        self.noise_multiplier, self.batch_size, self.epochs = float(noise_multiplier), int(batch_size), float(epochs)
        self.learning_rate, self.sampling, self.delta = float(learning_rate), sampling, float(delta)
        if granularity not in ("global", "step"):
            raise DeclarationError("granularity must be 'global' (one bound over the weight set) or 'step' (current weights)")
        self.granularity = granularity
        if noise not in ("opendp", "discrete-gaussian"):
            raise DeclarationError("noise must be 'opendp' (OpenDP's Gaussian) or 'discrete-gaussian' (our table sampler)")
        self.noise = noise
        self.bound: ModelBound = model.certified_bound()
        if not math.isfinite(self.bound.upper) and mode != "clip":
            raise DeclarationError("the certified gradient-norm bound is infinite for this model; use mode='clip'")

    # -- the plan ---------------------------------------------------------------------------------
    @property
    def sensitivity(self) -> float:
        return self._sensitivity(self.bound.upper)

    def _sensitivity(self, K: float) -> float:
        return {"clip": self.clip, "bound": K, "auto": min(self.clip, K)}[self.mode]

    @property
    def clipping_needed(self) -> bool:
        return self._clipping_needed(self.bound.upper)

    def _clipping_needed(self, K: float) -> bool:
        return self.mode == "clip" or (self.mode == "auto" and self.clip < K)

    def plan(self, n: int) -> DPSGDPlan:
        selection = (f"Poisson sampling, q = {self.batch_size}/{n}" if self.sampling == "poisson"
                     else f"shuffled fixed-size batches of {self.batch_size}")
        summed = {"clip": f"sum of per-example gradients clipped at C = {self.clip:g}",
                  "bound": f"sum of unclipped gradients, certified ||g_i|| <= K = {self.bound.upper:.6g}; weights projected",
                  "auto": (f"K = {self.bound.upper:.6g} <= C = {self.clip:g}: no clipping, norms not computed"
                           if not self.clipping_needed else f"K = {self.bound.upper:.6g} > C: clipped at {self.clip:g}")}[self.mode]
        sampler = ("discrete Gaussian on a 2^k grid, exact alias table (OpenSSL bits), delta + (1 + e^eps) x coordinates x eta"
                   if self.noise == "discrete-gaussian" else "OpenDP's vector Gaussian (discrete, 2^k grid)")
        return DPSGDPlan(selection, summed, self.sensitivity,
                         f"{sampler}; std = {self.noise_multiplier:g} x ({self.sensitivity:.6g} + grid rounding)",
                         dp_sgd_event(n, self.batch_size, self.noise_multiplier, self.epochs, self.sampling),
                         "add or remove one example" if self.sampling == "poisson" else "replace one example")

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
        is ``noise_multiplier x (sensitivity + sqrt(d) 2^k)``, so the noise multiplier
        stays what the accounting assumes.
        """
        import opendp.prelude as dp

        dp.enable_features("contrib")
        sens = self.sensitivity if sensitivity is None else sensitivity
        base = self.noise_multiplier * sens
        k = math.floor(math.log2(base)) - 30
        inflated = sens + math.sqrt(dimension) * 2.0**k
        std = math.nextafter(self.noise_multiplier * inflated, math.inf)
        space = (dp.vector_domain(dp.atom_domain(T=float, nan=False), size=dimension), dp.l2_distance(T=float))
        return space >> dp.m.then_gaussian(std, k=k)

    def epsilon(self, n: int) -> dict[str, float]:
        """(epsilon, delta) of the run; with the table sampler, delta includes its statistical distance."""
        report = dp_sgd_epsilon(n, self.batch_size, self.noise_multiplier, self.epochs, self.delta, self.sampling)
        if self.noise == "discrete-gaussian":
            from opendp_hybridad.dpsgd.noise import STATISTICAL_DISTANCE_BOUND

            coordinates = self._steps(n) * self.model.num_parameters
            eps = max(report["epsilon_pld"], report["epsilon_rdp"])
            # every table is checked against the bound at construction, so this holds for
            # whatever tables the run draws from (per-step sensitivities use several)
            eta = STATISTICAL_DISTANCE_BOUND
            report["delta"] = self.delta + (1.0 + math.exp(eps)) * coordinates * eta
            report["sampler_statistical_distance_per_coordinate"] = eta
        return report

    def noise_function(self, dimension: int, sensitivity: float | None = None, max_terms: int | None = None):
        """The noise for a summed gradient of ``dimension`` coordinates: array in, array out.

        ``sensitivity`` is the per-example bound (default: the mode's); the noise covers
        :func:`computed_sum_sensitivity` of it for sums of up to ``max_terms`` examples
        (default the batch size; ``fit`` passes ``n``, the most a Poisson batch can hold).
        """
        sensitivity = self.sensitivity if sensitivity is None else sensitivity
        max_terms = self.batch_size if max_terms is None else int(max_terms)
        widest = max(max(layer.in_features, layer.out_features) for layer in self.model.layers)
        sensitivity = computed_sum_sensitivity(sensitivity, max_terms, widest, len(self.model.layers))
        if self.noise == "opendp":
            measurement = self.noise_measurement(dimension, sensitivity)

            def noise(flat, in_place=False):
                return np.asarray(measurement(flat.tolist()))
        else:
            from opendp_hybridad.dpsgd.noise import gaussian_noise_for

            noise = gaussian_noise_for(sensitivity, self.noise_multiplier, dimension)
        noise.max_terms = max_terms  # step() refuses larger batches: the float-sum bound would not cover them
        return noise

    # -- training -------------------------------------------------------------------------------
    def _check(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=float)
        y = np.asarray(y)
        n = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.model.layers[0].in_features or y.shape[0] != n:
            raise DeclarationError("x must be (examples, features) matching the first layer, with one label per example")
        if self.batch_size > n:
            raise AccountingError(f"the batch size ({self.batch_size}) is larger than the data ({n} examples)")
        if np.isnan(x).any():
            raise DeclarationError("features contain missing values; impute them with a public rule before training")
        if self.model.loss.name == "softmax cross-entropy":
            classes = self.model.layers[-1].out_features
            if not np.all((y == np.round(y)) & (y >= 0) & (y < classes)):
                raise DeclarationError(f"labels must be class indices 0..{classes - 1}")
        elif self.model.loss.name == "logistic" and not np.all(np.isin(y, (0, 1))):
            raise DeclarationError("labels must be 0 or 1 for the logistic loss")
        else:
            if np.isnan(np.asarray(y, dtype=float)).any():
                raise DeclarationError("labels contain missing values")
            # regression targets are clamped to the declared label box the bound assumes
            y = np.clip(np.asarray(y, dtype=float), -self.model.label_bound, self.model.label_bound)
        # clamping to the declared input box is what the certified bound assumes
        return np.clip(x, -self.model.input_bound, self.model.input_bound), y

    def step(self, params: list, x_batch: np.ndarray, y_batch: np.ndarray, noise, *, clip: bool | None = None,
             history: TrainingHistory | None = None) -> list:
        """One noisy step on a selected batch: gradient sum (clipped if ``clip``), noise, update, projection.

        ``noise`` is ``self.noise_function(dimension, sensitivity)``; inputs must already be
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
        relies_on_global_k = self.mode == "bound" or (self.mode == "auto" and self.granularity == "global")
        return self.model.apply_step(params, noisy, self.learning_rate / self.batch_size, project=relies_on_global_k)

    def fit(self, x: Any, y: Any, params=None, *, progress: bool = False, seed: int | None = None,
            validation: tuple[Any, Any] | None = None):
        """Train; returns ``(params, history)``. Only released (noisy) quantities and public ones are recorded.

        ``progress``: a line on standard error at every tenth of the run with the epsilon
        spent so far (PLD) and, if ``validation`` (public data) is given, its loss and
        accuracy. The training loss itself is never shown: it would not be private.
        """
        import opendp.prelude as dp

        dp.enable_features("contrib")
        x, y = self._check(x, y)
        n = x.shape[0]
        rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)  # initial weights: public
        selector = BatchSelector(None if seed is None else [seed, 1])  # seeded: a stream apart from the initial weights
        params = self.model.project(params if params is not None else self.model.init(rng))
        steps = self._steps(n)
        sizes = [W.size + b.size for W, b in params]
        noise = self.noise_function(sum(sizes), max_terms=n)
        history = TrainingHistory()
        order = selector.permutation(n)
        for step in range(steps):
            if self.sampling == "poisson":
                members = selector.poisson(n, self.batch_size)
            else:
                # each epoch: a fresh permutation cut into n // batch disjoint batches, so an
                # example is in at most one step per epoch (what the accounting assumes)
                per_epoch = n // self.batch_size
                position = step % per_epoch
                if position == 0:
                    order = selector.permutation(n)
                members = order[position * self.batch_size:(position + 1) * self.batch_size]
            if self.granularity == "step" and self.mode != "clip":
                # the current weights are public (released by earlier noisy steps): a tighter K for this step
                K_t = min(_round_up_16_per_octave(self.model.certified_bound(params).upper),
                          self.bound.upper if self.mode == "bound" else math.inf)
                clip_now, sens_now = self._clipping_needed(K_t), self._sensitivity(K_t)
                noise = self.noise_function(sum(sizes), sens_now, max_terms=n)
            else:
                clip_now = self.clipping_needed
            params = self.step(params, x[members], y[members], noise, clip=clip_now, history=history)
            record: dict[str, float] = {"step": step}
            if progress and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
                record["epsilon_pld"] = dp_sgd_epsilon(n, self.batch_size, self.noise_multiplier, (step + 1) * self.batch_size / n,
                                                       self.delta, self.sampling)["epsilon_pld"]
                line = f"step {step + 1:>6d}/{steps}  [{'#' * ((step + 1) * 20 // steps):<20s}]  epsilon {record['epsilon_pld']:.3f}"
                if validation is not None:
                    vx, vy = self._check(validation[0], validation[1])
                    acts, _ = self.model.forward(params, vx)
                    record["validation_loss"] = float(self.model.loss.value(acts[-1], vy).mean())
                    if self.model.loss.name == "softmax cross-entropy":
                        record["validation_accuracy"] = float((acts[-1].argmax(axis=1) == vy).mean())
                    line += f"  validation loss {record['validation_loss']:.4f}"
                print(line, file=sys.stderr)
            history.steps.append(record)
        return params, history


def computed_sum_sensitivity(per_example: float, max_terms: int, widest: int, layers: int) -> float:
    """l2 sensitivity of the gradient sum as float64 computes it, for add/remove one example.

    Following OpenDP's treatment of float sums (Casacuberta et al. 2022), each example's
    contribution ``v_i`` (its row of ``c_i delta_i`` and ``a_i``) is taken as the
    record-level value:

    * clipping: the norm is computed from dot products of at most ``widest`` terms and a
      sum over the ``layers``, then ``c_i = C / norm`` and ``c_i delta_i`` are rounded, so
      ``||v_i|| <= C (1 + gamma_m)`` with ``m = widest + 2 layers + 12`` (generous);
    * the sum: every output coordinate is a sum of at most ``N = max_terms`` products,
      with error at most ``gamma_(N+1) sum_i |v_ij|`` in any order (blocks included), so
      the computed sum is within ``gamma_(N+1) sum_i ||v_i|| <= gamma_(N+1) N C'`` of
      the exact one in l2 (Minkowski), for either neighbour.

    Hence ``||S(D) - S(D')|| <= C' (1 + 2 N gamma_(N+1))``. For a batch of 256 that is a
    factor ``1 + 1.5e-11``; for 60,000 examples ``1 + 8e-7``.

    That an example's row is the same function of the example in any batch is not
    promised by BLAS (one row goes through matrix-vector code, the last rows of a product
    through edge tiles, which changed the last bits here); the kernels pad every block to
    a multiple of 16 rows so neither happens, and ``tests/test_nn.py`` checks
    bit-identical rows across batches on the machine that runs it. Without clipping the
    per-example bound is ``K``, which bounds the computed rows (the certificate includes
    the products' rounding; :meth:`MLP.certified_bound`). See docs/dpsgd.md.
    """
    per_term = per_example * (1.0 + gamma(widest + 2 * layers + 12))
    bound = per_term * (1.0 + 2.0 * max_terms * gamma(max_terms + 1))
    return math.nextafter(math.nextafter(bound, math.inf), math.inf)  # two roundings above


def _round_up_16_per_octave(value: float) -> float:
    """``value`` rounded up to one of 16 values per octave (at most 6.25% larger): noise tables get reused across steps."""
    if not (value > 0 and math.isfinite(value)):
        return value
    octave = math.floor(math.log2(value))
    return math.ceil(value / 2.0**octave * 16) / 16 * 2.0**octave


def make_dp_sgd(trainer: DPSGD, n: int, measure: str = "approx"):
    """The run as an OpenDP measurement: ``(x, y)`` -> trained parameters, add/remove one example.

    ``measure="approx"``: privacy map gives (epsilon, delta) at the trainer's delta
    (dp-accounting PLD). ``measure="renyi"``: a Rényi curve from the RDP accountant.
    The input domain holds arrays with exactly ``n`` examples (the accounting uses n).
    """
    import opendp.prelude as dp
    from dp_accounting import rdp

    dp.enable_features("contrib", "honest-but-curious")
    d = trainer.model.layers[0].in_features
    domain = dp.user_domain(f"ExamplesDomain(n={n}, d={d})",
                            member=lambda data: isinstance(data, tuple) and len(data) == 2 and np.shape(data[0]) == (n, d))
    event = dp_sgd_event(n, trainer.batch_size, trainer.noise_multiplier, trainer.epochs, trainer.sampling)

    def run(data: Any) -> Any:
        params, _ = trainer.fit(data[0], data[1])
        return params

    if measure == "approx":
        report = trainer.epsilon(n)  # delta includes the table sampler's distance when it is used
        eps, delta = report["epsilon_pld"], report["delta"]

        def privacy_map(d_in: Any) -> Any:
            if int(d_in) > 1:
                raise DeclarationError("dp-accounting has no group privacy: the guarantee is for d_in = 1")
            return (0.0, 0.0) if int(d_in) == 0 else (math.nextafter(eps, math.inf), delta)

        return dp.m.make_user_measurement(domain, dp.symmetric_distance(), dp.approximate(dp.max_divergence()), run, privacy_map)

    if trainer.noise != "opendp":
        raise DeclarationError("the Renyi-curve form is for OpenDP's noise; the table sampler's guarantee is (epsilon, delta)")

    def curve_map(d_in: Any) -> Any:
        if int(d_in) > 1:
            raise DeclarationError("dp-accounting has no group privacy: the guarantee is for d_in = 1")

        def curve(order: float) -> float:
            acc = rdp.RdpAccountant(orders=[float(order)])
            acc.compose(event)
            return float(acc._rdp[0])

        return curve

    return dp.m.make_user_measurement(domain, dp.symmetric_distance(), dp.renyi_divergence(), run, curve_map)
