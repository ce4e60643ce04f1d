"""The parts of a DP-SGD run as objects (JAX Privacy's ``DPExecutionPlan`` is the model).

:class:`DPSGDPlan` holds what a run does, each part an object that both acts and shows
itself in one line of ``str(plan)``:

* the batch selection (:class:`PoissonSelection`, :class:`ShuffledSelection`): its rate or
  size, its relation, the most terms a batch can hold, and :meth:`batches`, which draws
  the run's batches from a :class:`~opendp_hybridad.dpsgd.selection.BatchSelector`;
* the gradient sum (:class:`GradientSum`): the callable that adds the (clipped or
  certified) per-example gradients of a batch, in physical chunks if asked, with its
  sensitivity on exact rows, its forward error and its term limit;
* the noise (:class:`GaussianNoise`): a sampler factory with its noise multiplier and std;
* the accounting (:class:`ProvenAccounting`): the proven RDP curve of the lattice noise
  (:class:`~opendp_hybridad.dpsgd.accounting.DpSgdRdpCurve`) over the run's steps, and the
  continuous ``reference_event`` it resembles;
* the relation, the public size and the largest dataset accepted, the missing-value rule
  (:class:`Imputation`), and the optimizer and learning-rate schedule (post-processing).

``DPSGD.plan(n, max_size)`` builds a plan; ``DPSGD.fit`` and :func:`~opendp_hybridad.dpsgd.make_dp_sgd`
both run one built by it, so the measurement's map and the training cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendp_hybridad.accounting import delta_with_distance
from opendp_hybridad.analysis.rounding import add_up, div_up, mul_up, sqrt_up
from opendp_hybridad.dpsgd.accounting import DpSgdRdpCurve
from opendp_hybridad.dpsgd.nearby_bounds import CLIPS, NearbyStepBounds
from opendp_hybridad.dpsgd.optim import Optimizer, Schedule
from opendp_hybridad.dpsgd.selection import BatchSelector
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.model import ModelBound, _round_up_16_per_octave
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, Relation

__all__ = ["DPSGDPlan", "GaussianNoise", "GradientSum", "Imputation", "PoissonSelection", "ProvenAccounting",
           "ShuffledSelection", "StepBound", "computed_sum_sensitivity"]


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

    Physical batches (:class:`GradientSum` with ``physical_batch_size``) change nothing here:
    the sum of the chunks' sums is a sum of the same computed rows in another order and
    grouping, and the bound above holds for any.
    """
    from opendp_hybridad.analysis.rounding import gamma, up

    if max_terms < 1:
        raise DeclarationError("a sum has at least one term")
    N = float(max_terms)
    two_n = 2.0 * N
    allowance = mul_up(mul_up(two_n, gamma(int(max_terms))), add_up(per_example, row_error))
    return up(add_up(add_up(per_example, mul_up(two_n, row_error)), allowance))


# -- batch selection -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoissonSelection:
    """Each example joins each step's batch independently with probability ``q = batch_size / n`` (public ``n``).

    Accounted under add/remove; the data may hold 0 to ``max_size`` examples, so a batch
    holds at most ``max_size`` terms.
    """

    batch_size: int
    public_size: int
    max_size: int

    @property
    def relation(self) -> Relation:
        return ADD_REMOVE

    @property
    def sampling(self) -> str:
        return "poisson"

    @property
    def sampling_probability(self) -> float:
        """``batch_size / n`` rounded up (the accountant's ``q``)."""
        return min(1.0, div_up(self.batch_size, self.public_size))

    @property
    def max_terms(self) -> int:
        return self.max_size

    def batches(self, count: int, steps: int, selector: BatchSelector) -> Iterator[np.ndarray]:
        """``steps`` batches of indices among the ``count`` examples, at the public rate (never ``len(x)``'s)."""
        for _ in range(steps):
            yield selector.poisson(count, self.batch_size, self.public_size)

    def __str__(self) -> str:
        return (f"Poisson sampling, q = {self.batch_size}/{self.public_size} (public n; the data may hold 0 to "
                f"{self.max_size} examples)")


@dataclass(frozen=True)
class ShuffledSelection:
    """Each epoch a fresh uniform permutation cut into ``n // batch_size`` disjoint batches; replace-one, exactly ``n``."""

    batch_size: int
    public_size: int

    @property
    def relation(self) -> Relation:
        return REPLACE_ONE

    @property
    def sampling(self) -> str:
        return "shuffle"

    @property
    def max_size(self) -> int:
        return self.public_size

    @property
    def sampling_probability(self) -> float:
        return min(1.0, div_up(self.batch_size, self.public_size))

    @property
    def max_terms(self) -> int:
        return self.batch_size

    def batches(self, count: int, steps: int, selector: BatchSelector) -> Iterator[np.ndarray]:
        """An example is in at most one batch per epoch (what the accounting assumes)."""
        per_epoch = self.public_size // self.batch_size
        order = np.arange(0)
        for step in range(steps):
            position = step % per_epoch
            if position == 0:
                order = selector.permutation(count)
            yield order[position * self.batch_size:(position + 1) * self.batch_size]

    def __str__(self) -> str:
        return f"shuffled fixed-size batches of {self.batch_size} from exactly {self.public_size} examples"


# -- the gradient sum -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepBound:
    """What one step's sum needs: whether it clips, the bound ``S`` on exact rows and the forward error ``e``."""

    clip: bool
    sensitivity: float
    error: float


@dataclass(frozen=True)
class GradientSum:
    """The sum of a batch's per-example gradients, clipped where the mode needs it (the sensitive sum: never altered
    before the noise).

    ``sensitivity`` (``S``, :attr:`sensitivity`) bounds each exact row: ``C`` (clip), ``K``
    (bound) or ``min(C, K)`` (auto); ``row_error`` (``e``) bounds how far a computed row can
    be from its exact one over the declared weight set; a batch holds at most ``max_terms``
    rows, and :attr:`sum_sensitivity` is :func:`computed_sum_sensitivity` of the three.
    ``physical_batch_size``: the batch is summed in chunks of at most that many rows (a
    large logical batch within memory); the chunks' sums are added up, a sum of the same
    rows in another order, which :func:`computed_sum_sensitivity` covers for any order.
    """

    model: Any
    mode: str
    clip_norm: float
    bound: ModelBound
    granularity: str
    max_terms: int
    physical_batch_size: int | None = None
    #: per-step results by their rounded norms (:mod:`.nearby_bounds`); a cache, not part of the plan's value, and
    #: not an init field, so ``dataclasses.replace`` (another mode, C, model or bound) starts a fresh one (audit
    #: attack_nearby_bounds.py: a shared cache answered a variant with the original's bounds)
    nearby: NearbyStepBounds = field(default_factory=NearbyStepBounds, init=False, compare=False, repr=False)

    @property
    def clipping_needed(self) -> bool:
        return self._clipping_needed(self.bound.upper)

    def _clipping_needed(self, K: float) -> bool:
        return self.mode == "clip" or (self.mode == "auto" and self.clip_norm < K)

    def _sensitivity(self, K: float) -> float:
        return {"clip": self.clip_norm, "bound": K, "auto": min(self.clip_norm, K)}[self.mode]

    @property
    def sensitivity(self) -> float:
        """The per-example bound on the exact (real-arithmetic) rows: ``C``, ``K`` or ``min(C, K)``."""
        return self._sensitivity(self.bound.upper)

    @property
    def projects(self) -> bool:
        """Whether the weights are kept in the declared set (so the global ``K`` and ``e`` hold)."""
        return self.mode == "bound" or (self.mode == "auto" and self.granularity == "global")

    def row_error(self, bound: ModelBound | None = None, clip: bool | None = None) -> float:
        """``e`` of the rows the kernels add up (:meth:`ModelBound.row_error`), over the declared set by default."""
        bound = self.bound if bound is None else bound
        clip = self.clipping_needed if clip is None else clip
        return bound.row_error(self.clip_norm if clip else None)

    @property
    def sum_sensitivity(self) -> float:
        """:func:`computed_sum_sensitivity` over the declared weight set (``inf`` if it has no finite bound)."""
        return computed_sum_sensitivity(self.sensitivity, self.row_error(), self.max_terms)

    def at(self, params: Any) -> StepBound:
        """The bounds for a step at these weights (public: released by earlier noisy steps, or the initial ones).

        Per-step (``granularity="step"``, not clip mode): from the model's bound over every weight
        with norms at most these weights' norms rounded up to slots (``K_t`` and ``e`` rounded up to
        16 values per octave). A step whose ``K_t`` exceeds ``C`` clips, with ``e`` from the bound at
        the norms rounded up to powers of two, as clip mode's. Results already computed at nearby
        norms answer most steps without the chain (:mod:`.nearby_bounds`: the same result).
        """
        if self.granularity == "step" and self.mode != "clip":
            norms = self.model.step_norms(params)
            known = self.nearby.read(norms)
            if known is None:
                known = self._step_at(norms)
                self.nearby.add(norms, known)
            return self._clipping_step(norms) if known is CLIPS else known
        if self.projects:
            return StepBound(self.clipping_needed, self.sensitivity, self.row_error())
        # clip mode: the weights are not kept in the declared set; e from their (public) norms
        return StepBound(True, self.clip_norm, _round_up_16_per_octave(self.model.rounding_bound(params).row_error(self.clip_norm)))

    def _step_at(self, norms: Any) -> StepBound | str:
        """The per-step bound at these rounded norms from the model's bound there (:data:`CLIPS` where it clips)."""
        bound_t = self.model.bound_at(norms)
        K_t = min(_round_up_16_per_octave(bound_t.upper), self.bound.upper if self.mode == "bound" else math.inf)
        if self._clipping_needed(K_t):
            return CLIPS
        return StepBound(False, self._sensitivity(K_t), _round_up_16_per_octave(self.row_error(bound_t, False)))

    def _clipping_step(self, norms: Any) -> StepBound:
        """A step whose ``K_t`` exceeds ``C``: rows clipped at ``C``, ``e`` from the bound at the norms rounded up to
        powers of two (valid: larger norms; ``e`` is about ``1e-12`` of the rows' scale, so the coarser key moves the
        noise by nothing and changes rarely)."""
        return StepBound(True, self.clip_norm, _round_up_16_per_octave(self.model.coarse_bound(norms).row_error(self.clip_norm)))

    def __call__(self, params: Any, x: np.ndarray, y: np.ndarray, clip: bool, out: np.ndarray) -> np.ndarray:
        """Write ``sum_i c_i g_i`` over the batch into ``out`` (flat, ``num_parameters``), chunk by chunk."""
        clip_at = self.clip_norm if clip else None
        size = len(x)
        chunk = self.physical_batch_size
        if size == 0:
            out[:] = 0.0
            return out
        if chunk is None or size <= chunk:
            self.model.gradient_sum(params, x, y, clip=clip_at, out=out)
            return out
        part = np.empty_like(out)
        for start in range(0, size, chunk):
            target = out if start == 0 else part
            self.model.gradient_sum(params, x[start:start + chunk], y[start:start + chunk], clip=clip_at, out=target)
            if start:
                out += part
        return out

    def __str__(self) -> str:
        K = self.bound.upper
        summed = {"clip": f"sum of per-example gradients clipped at C = {self.clip_norm:g}",
                  "bound": f"sum of unclipped gradients, certified ||g_i|| <= K = {K:.6g}; weights projected",
                  "auto": (f"K = {K:.6g} <= C = {self.clip_norm:g}: no clipping, norms not computed"
                           if not self.clipping_needed else f"K = {K:.6g} > C: clipped at {self.clip_norm:g}")}[self.mode]
        if self.mode == "auto" and self.granularity == "step":
            summed += "; K_t from the current (public) weights each step"
        e = self.row_error()
        where = "" if self.projects else "; recomputed from the current (public) weights each step"
        chunks = f"; physical chunks of {self.physical_batch_size} rows" if self.physical_batch_size else ""
        return (f"{summed}; S = {self.sensitivity:.6g}; at most N = {self.max_terms} terms{chunks}; each computed row within "
                f"e = {e:.3g} of the exact one (any BLAS{where}): S + 2 N e + 2 N gamma_N (S + e) = {self.sum_sensitivity!r}")


# -- the noise -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianNoise:
    """The noise on the summed gradient: a discrete Gaussian on a ``2^k`` grid, std ``noise_multiplier`` x (the float
    sum's sensitivity + the grid rounding), drawn by the exact table sampler (``"discrete-gaussian"``) or by
    OpenDP's ``then_gaussian`` (``"opendp"``). :meth:`sampler` builds one for a step's bounds."""

    kind: str
    noise_multiplier: float
    dimension: int
    max_terms: int
    #: the float sum's sensitivity over the declared weight set (the std below covers it)
    sum_sensitivity: float

    @property
    def std(self) -> float:
        """The std at :attr:`sum_sensitivity` (per-step bounds may give a smaller one)."""
        return self.std_for(self.sum_sensitivity)

    def std_for(self, total: float) -> float:
        if not math.isfinite(total):
            return math.inf
        if self.kind == "opendp":
            return self._opendp_parameters(total)[0]
        from opendp_hybridad.dpsgd.noise import gaussian_std_for

        return gaussian_std_for(total, self.noise_multiplier, self.dimension)[0]

    def _opendp_parameters(self, total: float) -> tuple[float, int]:
        """OpenDP's std and grid ``2^k <= 2^-30 std`` (about 11 us a coordinate), the rounding covered (``sqrt(d) 2^k``)."""
        k = math.floor(math.log2(self.noise_multiplier * total)) - 30
        inflated = add_up(total, mul_up(sqrt_up(float(self.dimension)), 2.0**k))
        return mul_up(self.noise_multiplier, inflated), k

    def opendp_measurement(self, total: float) -> Any:
        """OpenDP's vector Gaussian covering a float sum of sensitivity ``total``."""
        import opendp.prelude as dp

        dp.assert_features("contrib")  # OpenDP's vector Gaussian
        std, k = self._opendp_parameters(total)
        space = (dp.vector_domain(dp.atom_domain(T=float, nan=False), size=self.dimension), dp.l2_distance(T=float))
        return space >> dp.m.then_gaussian(std, k=k)

    def sampler(self, sensitivity: float, row_error: float, insecure_rng: np.random.Generator | None = None) -> Any:
        """The noise for a sum of up to :attr:`max_terms` rows, each within ``row_error`` of an exact row of norm at most
        ``sensitivity``: array in, array out, with ``std``, ``max_terms`` and ``sum_sensitivity`` attributes.

        ``insecure_rng``: draw the table sampler's random words from this seeded generator
        instead of the CSPRNG (reproducible experiments; not private).
        """
        total = computed_sum_sensitivity(sensitivity, row_error, self.max_terms)
        if not math.isfinite(total):
            raise DeclarationError("the float error of the gradient sum is unbounded at these weights")
        if self.kind == "opendp":
            if insecure_rng is not None:
                raise DeclarationError("seeded noise is drawn by the table sampler only (noise='discrete-gaussian')")
            measurement = self.opendp_measurement(total)

            def noise(flat: np.ndarray, in_place: bool = False) -> np.ndarray:
                return np.asarray(measurement(flat.tolist()))

            noise.std = self._opendp_parameters(total)[0]  # type: ignore[attr-defined]
        else:
            from opendp_hybridad.dpsgd.noise import gaussian_noise_for

            table = gaussian_noise_for(total, self.noise_multiplier, self.dimension)
            # every coordinate of a sum of max_terms rows is at most max_terms * total in magnitude:
            # refused here (public figures) rather than by the sampler on some data
            if not mul_up(float(self.max_terms), total) < 2.0**51 * table.grid:
                raise DeclarationError("sums of max_terms rows could leave the noise grid's range; "
                                       "declare a smaller max_size or use a larger noise multiplier")
            if insecure_rng is None:
                noise = table
            else:
                rng = insecure_rng

                def noise(flat: np.ndarray, in_place: bool = False, table: Any = table) -> np.ndarray:
                    words = rng.integers(0, 2**64, size=(2, flat.size), dtype=np.uint64)
                    return table.add(flat, words[0], words[1], out=flat if in_place else None)

                noise.std = table.std  # type: ignore[attr-defined]
        noise.max_terms = self.max_terms  # step() refuses larger batches: the float-sum bound would not cover them
        noise.sum_sensitivity = total
        return noise

    def __str__(self) -> str:
        sampler = ("discrete Gaussian on a 2^k grid, exact alias table (OpenSSL bits), delta + (1 + e^eps) x coordinates x eta"
                   if self.kind == "discrete-gaussian" else "OpenDP's vector Gaussian (discrete, 2^k grid)")
        return (f"{sampler}; noise multiplier {self.noise_multiplier:g}; std = {self.noise_multiplier:g} x "
                f"({self.sum_sensitivity!r} + grid rounding) = {self.std:.6g}; {self.dimension} coordinates")


# -- the accounting ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProvenAccounting:
    """The run's proven privacy: ``curve`` (one unit's RDP of the lattice Gaussian, :class:`DpSgdRdpCurve`) over
    ``steps_before + steps`` steps (a resumed run counts the steps of the runs it continues), converted at ``delta``.

    ``event`` is the continuous dp-accounting event the run resembles (its shape, not its
    guarantee); ``statistical_distance`` the table sampler's, over all the steps.
    """

    curve: DpSgdRdpCurve
    steps: int
    steps_before: int
    delta: float
    event: Any
    #: noise coordinates drawn per step by the table sampler (0 for OpenDP's exact sampler)
    coordinates_per_step: int = 0
    #: the target the noise multiplier was calibrated to (``DPSGD(target_epsilon=...)``), or None
    target_epsilon: float | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_before + self.steps

    @property
    def noise_multiplier(self) -> float:
        return self.curve.noise_multiplier

    def distance(self, steps: int | None = None) -> float:
        """Total variation of ``steps`` (default: all) steps' table draws from the ideal lattice Gaussians: each
        coordinate within ``STATISTICAL_DISTANCE_BOUND`` (checked when a table is built), so their number times it."""
        if not self.coordinates_per_step:
            return 0.0
        from opendp_hybridad.dpsgd.noise import STATISTICAL_DISTANCE_BOUND

        steps = self.total_steps if steps is None else int(steps)
        return min(1.0, mul_up(float(steps * self.coordinates_per_step), STATISTICAL_DISTANCE_BOUND))

    @property
    def statistical_distance(self) -> float:
        return self.distance()

    def rdp(self, steps: int | None = None) -> tuple[float, ...]:
        """The proven RDP at :data:`~opendp_hybridad.accounting.RDP_ORDERS` after ``steps`` (default: all) steps."""
        return tuple(float(v) for v in self.curve.rdp(self.total_steps if steps is None else steps))

    def epsilon(self, steps: int | None = None) -> float:
        """The proven epsilon at :attr:`delta` after ``steps`` (default: all) steps (the accountant's delta)."""
        return self.curve.epsilon(self.total_steps if steps is None else steps, self.delta)

    def report(self, steps: int | None = None) -> dict[str, Any]:
        """``(epsilon, delta)`` after ``steps`` (default all): with the table sampler, delta includes its distance."""
        steps = self.total_steps if steps is None else int(steps)
        eps = self.epsilon(steps)
        report: dict[str, Any] = {
            "epsilon": eps, "epsilon_rdp": eps, "delta": float(self.delta), "steps": steps, "sampling": self.curve.sampling,
            "noise_multiplier": float(self.curve.noise_multiplier), "sampling_probability": self.curve.sampling_probability,
            "accountant": "rdp (lattice Gaussian: CKS 2020 base, Zhu-Wang 2019 subsampling)"}
        if self.target_epsilon is not None:
            report["target_epsilon"] = self.target_epsilon
        distance = self.distance(steps)
        if distance > 0:
            from opendp_hybridad.dpsgd.noise import STATISTICAL_DISTANCE_BOUND

            # every table is checked against the bound at construction, so this holds for
            # whatever tables the run draws from (per-step sensitivities use several)
            report["delta"] = delta_with_distance(self.delta, eps, distance)
            report["sampler_statistical_distance_per_coordinate"] = STATISTICAL_DISTANCE_BOUND
        return report

    def __str__(self) -> str:
        before = f" (after {self.steps_before} earlier steps)" if self.steps_before else ""
        target = f", calibrated to the target {self.target_epsilon:g}" if self.target_epsilon is not None else ""
        return (f"proven RDP of the lattice Gaussian over {self.steps} {self.curve.sampling} steps{before}, "
                f"noise multiplier {self.noise_multiplier:g}{target}: epsilon {self.epsilon():.6g} at delta {self.delta:g} "
                f"(the continuous event it resembles: {type(self.event).__name__})")


# -- missing values ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Imputation:
    """What a missing (NaN) input entry becomes before clamping to the declared box: ``values`` (one per entry of
    the input shape, inside the box), or None (missing entries are outside the domain)."""

    values: np.ndarray | None = field(default=None, compare=False)

    def apply(self, x: np.ndarray) -> None:
        """Impute ``x`` (a batch, ``(B, *input_shape)``, owned by the caller) in place."""
        if self.values is None:
            return
        missing = np.isnan(x)
        if missing.any():
            x[missing] = np.broadcast_to(self.values, x.shape)[missing]

    def __str__(self) -> str:
        if self.values is None:
            text = "refused (not in the domain)"
        else:
            flat = self.values.reshape(-1)
            if flat.size and np.all(flat == flat[0]):
                text = f"imputed with the declared value {float(flat[0]):g}"
            else:
                text = f"imputed with declared values, one per input entry (shape {tuple(self.values.shape)})"
        return text + "; inputs clamped to the declared box"


# -- the plan ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DPSGDPlan:
    """The parts of a run (module docstring), printable one line per part; also what
    :func:`~opendp_hybridad.accounting.compose_epsilon` accepts (``dp_event()``, ``relation``,
    ``statistical_distance``, ``rdp_curve``: the :class:`~opendp_hybridad.accounting.Accountable` protocol).

    The plan of a resumed run accounts for all the steps, the earlier runs' included
    (:attr:`ProvenAccounting.steps_before`): its ``rdp_curve`` is what training the model has spent.
    """

    batch_selection: PoissonSelection | ShuffledSelection
    gradient_sum: GradientSum
    noise: GaussianNoise
    accounting: ProvenAccounting
    neighbouring_relation: Relation
    public_size: int
    max_size: int
    missing_values: Imputation
    optimizer: Optimizer
    learning_rate: Schedule
    #: the expected batch size the noisy sum is divided by (public)
    batch_size: int

    @property
    def relation(self) -> Relation:
        return self.neighbouring_relation

    @property
    def steps(self) -> int:
        """The steps this run takes (without those of the runs it resumes)."""
        return self.accounting.steps

    @property
    def sensitivity(self) -> float:
        return self.gradient_sum.sensitivity

    @property
    def noise_multiplier(self) -> float:
        return self.noise.noise_multiplier

    @property
    def statistical_distance(self) -> float:
        """Total variation distance of the run's noise from the ideal lattice Gaussians (the table sampler's)."""
        return self.accounting.statistical_distance

    @property
    def rdp_curve(self) -> tuple[float, ...]:
        """The proven RDP at :data:`~opendp_hybridad.accounting.RDP_ORDERS` of all the steps (what compose_epsilon reads)."""
        return self.accounting.rdp()

    @property
    def event(self) -> Any:
        return self.accounting.event

    def dp_event(self) -> Any:
        """The continuous-Gaussian dp-accounting event the run resembles (its shape, not its guarantee:
        the guarantee is :attr:`rdp_curve`, which :func:`~opendp_hybridad.accounting.compose_epsilon` uses)."""
        return self.accounting.event

    def epsilon(self) -> dict[str, Any]:
        """The run's ``(epsilon, delta)`` report (:meth:`ProvenAccounting.report`)."""
        return self.accounting.report()

    def __str__(self) -> str:
        lines = {
            "batch selection": str(self.batch_selection),
            "gradient sum": str(self.gradient_sum),
            "noise": str(self.noise),
            "accounting": str(self.accounting),
            "relation": str(self.neighbouring_relation),
            "public size": f"n = {self.public_size}",
            "max size": f"{self.max_size} examples",
            "missing values": str(self.missing_values),
            "optimizer": f"{self.optimizer}, learning rate {self.learning_rate} (post-processing of the noisy sums)",
        }
        return "\n".join(f"{k:>16s}: {v}" for k, v in lines.items())
