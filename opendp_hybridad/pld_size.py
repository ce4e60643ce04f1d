"""How many points dp-accounting's PLD accountant will hold for a DP-SGD event, and a
discretisation interval that keeps that number bounded.

The PLD accountant discretises each Gaussian's privacy-loss distribution on a grid of
``value_discretization_interval`` (default 1e-4) and composes by FFT. The single step's
support spans about ``1 / (2 sigma^2)`` (subsampled) or ``20 / sigma`` (not subsampled)
nats, and the composed one a multiple of that, so at a small noise multiplier the
accountant would allocate billions of points (minutes, or every byte of memory).
:func:`pld_discretization` estimates both sizes from the parameters *before* the
accountant runs and coarsens the interval just enough to keep them under
:data:`MAX_COMPOSED_POINTS` (and a subsampled step under :data:`MAX_SUBSAMPLED_STEP_POINTS`).

Why a coarser interval is still an upper bound: the accountant builds every Gaussian
PLD with ``pessimistic_estimate=True`` by connect-the-dots
(``dp_accounting/pld/privacy_loss_distribution.py``: ``from_gaussian_mechanism`` ->
``_create_pld_pmf_from_monotone_privacy_loss`` -> ``pld_pmf.create_pmf_pessimistic_connect_dots_fixed_gap``),
whose hockey-stick divergence is at least the true one at every epsilon for *any*
finite support grid (Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots:
Tighter Discrete Approximations of Privacy Loss Distributions", PETS 2022,
arXiv:2207.04380: "pessimistic estimation, which overestimates the hockey-stick divergence
for any value of epsilon", over "any specified discrete support"). Composition keeps
that order: the truncated left tail is moved up onto the first kept point and the right
tail and the truncation allowance go to +infinity (``pld_pmf._truncate_tails``,
``DensePLDPmf.self_compose``). The interval trades only accuracy for memory; the
accountant's own numerics (its FFT) are the same at every interval.

The estimate mirrors the accountant: the single step's support is
``GaussianPrivacyLoss.connect_dots_bounds()`` (what ``from_gaussian_mechanism`` uses),
and the composed support is dp-accounting's own Chernoff truncation bound
(``common.compute_self_convolve_bounds``, which sizes ``self_convolve``'s FFT) applied to
a coarse connect-the-dots preview of the step. That bound's orders are scaled by the
support width, so in nats it barely depends on the grid: the preview predicts the size
at any interval (checked against the accountant in tests/test_dp_sgd_accounting.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting.pld import common, privacy_loss_mechanism

from opendp_hybridad.errors import AccountingError

#: dp-accounting's default interval, used whenever the distributions stay small enough
DEFAULT_DISCRETIZATION = 1e-4
#: the most points of one subsampled step's distribution (connect-the-dots inverts the subsampled
#: loss at every point: about 4-8 us a point measured, so 2^18 points take 1-2 s); a step that is not
#: subsampled costs about 1 us a point and is bounded by MAX_COMPOSED_POINTS alone
MAX_SUBSAMPLED_STEP_POINTS = 2**18
#: the most points of the composed distribution (its FFT holds a few complex copies,
#: about 70 bytes a point measured: 2^22 points stay near 300 MB and a few seconds)
MAX_COMPOSED_POINTS = 2**22
#: the largest interval dp-accounting's connect-the-dots can use: it evaluates exp(interval), which
#: overflows past about 709
MAX_DISCRETIZATION = 500.0
#: dp-accounting keeps a step of at most 1000 points sparse, and ``SparsePLDPmf.self_compose`` first
#: computes ``size ** count`` as a Python integer, ``count * log2(size)`` bits: measured 1.2 s at 1e7
#: bits, 2.5 s at 2e7, 18 s at 6.6e7 (1e7 steps at q = 1e-4 took 15 s in all, 1e8 never finished); above this
#: many bits the step is made dense instead
MAX_SPARSE_POWER_BITS = 2e7
_SPARSE_POINTS = 1000  # dp_accounting.pld.pld_pmf._MAX_PMF_SPARSE_SIZE
#: points of the coarse preview whose Chernoff bound predicts the composed width
_PREVIEW_POINTS = 2**12
#: PLDAccountant composes with dp-accounting's default tail truncation
_TAIL_MASS_TRUNCATION = 1e-15


@dataclass(frozen=True)
class GaussianTerms:
    """What the PLD accountant builds for a DP-SGD event: a Gaussian with ``noise_multiplier``
    (sensitivity 1), Poisson-subsampled with ``sampling_probability``, self-composed ``count`` times."""

    noise_multiplier: float
    sampling_probability: float
    count: int


def gaussian_terms(event: dp_accounting.DpEvent) -> GaussianTerms | None:
    """The Gaussian the PLD accountant will build for ``event``, read as ``PLDAccountant._maybe_compose`` does.

    ``SelfComposedDpEvent`` multiplies the count; a ``PoissonSampledDpEvent`` of a Gaussian is
    composed ``count`` times; a bare Gaussian composed ``count`` times is one Gaussian of
    noise multiplier ``sigma / sqrt(count)``. Any other shape: None (nothing to estimate).
    """
    count = 1
    while isinstance(event, dp_accounting.SelfComposedDpEvent):
        count *= int(event.count)
        event = event.event
    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and isinstance(event.event, dp_accounting.GaussianDpEvent):
        q, sigma = float(event.sampling_probability), float(event.event.noise_multiplier)
        return GaussianTerms(sigma, q, count) if q > 0 and sigma > 0 else None
    if isinstance(event, dp_accounting.GaussianDpEvent) and event.noise_multiplier > 0:
        return GaussianTerms(float(event.noise_multiplier) / math.sqrt(count), 1.0, 1)
    return None


@dataclass(frozen=True)
class PldWidths:
    """Supports, in nats, of one step's distribution and of the composed one (the wider direction of add/remove)."""

    step: float
    composed: float

    def points(self, discretization: float) -> int:
        """Estimated number of points the accountant holds at ``discretization`` (the larger of the two arrays)."""
        return math.ceil(max(self.step, self.composed) / discretization) + 2


def pld_widths(terms: GaussianTerms) -> PldWidths:
    """Support widths of the accountant's distributions for ``terms``, independent of the interval."""
    sigma, q, count = terms.noise_multiplier, terms.sampling_probability, terms.count
    adjacencies = [privacy_loss_mechanism.AdjacencyType.REMOVE]
    if q < 1.0:  # the accountant keeps both directions when subsampled, and reports the larger epsilon
        adjacencies.append(privacy_loss_mechanism.AdjacencyType.ADD)
    step = composed = 0.0
    for adjacency in adjacencies:
        loss = privacy_loss_mechanism.GaussianPrivacyLoss(
            sigma, sensitivity=1, pessimistic_estimate=True, log_mass_truncation_bound=-50,
            sampling_prob=q, adjacency_type=adjacency)
        bounds = loss.connect_dots_bounds()
        width = float(bounds.epsilon_upper) - float(bounds.epsilon_lower)
        step = max(step, width)
        composed = max(composed, width if count == 1 else _composed_width(loss, float(bounds.epsilon_lower), width, count))
    return PldWidths(step, composed)


def _composed_width(loss: privacy_loss_mechanism.GaussianPrivacyLoss, lower: float, width: float, count: int) -> float:
    gap = width / (_PREVIEW_POINTS - 1)
    epsilons = lower + gap * np.arange(_PREVIEW_POINTS)
    deltas = np.minimum.accumulate(np.clip(np.asarray(loss.get_delta_for_epsilon(epsilons), dtype=float), 0.0, 1.0))
    masses = _connect_dots_masses(deltas, gap)
    low, high = common.compute_self_convolve_bounds(masses, count, _TAIL_MASS_TRUNCATION)
    return (high - low + 1) * gap


def _connect_dots_masses(deltas: np.ndarray, gap: float) -> np.ndarray:
    """The masses ``pld_pmf.create_pmf_pessimistic_connect_dots_fixed_gap`` puts on an evenly spaced grid
    (its docstring's formulas, written with expm1 so that a wide gap cannot overflow)."""
    up = np.diff(deltas)  # delta_{i+1} - delta_i <= 0
    masses = np.zeros_like(deltas)
    masses[0] = 1.0 - deltas[0]
    masses[:-1] += up / math.expm1(gap)
    masses[1:] += -up / -math.expm1(-gap)
    return np.clip(masses, 0.0, None)


class PldTooLargeError(AccountingError):
    """No discretisation interval keeps dp-accounting's PLD for this event within the limits."""


def pld_discretization(event: dp_accounting.DpEvent, requested: float = DEFAULT_DISCRETIZATION) -> float:
    """The interval to give dp-accounting's ``PLDAccountant`` for ``event``: ``requested`` when the
    estimated distributions stay within :data:`MAX_COMPOSED_POINTS` (a subsampled step within
    :data:`MAX_SUBSAMPLED_STEP_POINTS`), else the smallest interval that keeps them there (a coarser
    pessimistic PLD is still an upper bound; see the module docstring).

    A sparse step whose ``size ** count`` would exceed :data:`MAX_SPARSE_POWER_BITS` is made dense
    by refining the interval (which only tightens the figure). Raises :class:`PldTooLargeError` when
    no interval satisfies all of this (then only RDP can account the run).
    """
    terms = gaussian_terms(event)
    if terms is None:
        return requested
    widths = pld_widths(terms)
    needed = max(widths.step, widths.composed) / (MAX_COMPOSED_POINTS - 2)
    if terms.sampling_probability < 1.0:
        needed = max(needed, widths.step / (MAX_SUBSAMPLED_STEP_POINTS - 2))
    interval = max(requested, needed)
    step_points = widths.step / interval + 2
    too_large = interval > MAX_DISCRETIZATION
    if step_points <= _SPARSE_POINTS and terms.count * math.log2(step_points) > MAX_SPARSE_POWER_BITS:
        interval = widths.step / (_SPARSE_POINTS + 24)  # dense: finer, so the composed size is checked again
        too_large = too_large or widths.points(interval) > MAX_COMPOSED_POINTS
    if too_large:
        raise PldTooLargeError("the PLD accountant cannot hold this run within its memory and time limits at any "
                          "discretisation; only the RDP figure is computed (a larger noise multiplier or fewer "
                          "steps would allow PLD)")
    return interval


def _components(event: dp_accounting.DpEvent, count: int = 1) -> list[dp_accounting.DpEvent]:
    """The events the PLD accountant composes for ``event``, each with its own count: a ``ComposedDpEvent`` is
    flattened and a ``SelfComposedDpEvent``'s count is carried down to every event inside it (as
    ``PLDAccountant._maybe_compose`` does), so ``SelfComposed(Composed([a, b]), n)`` is ``a`` and ``b``
    each self-composed ``n`` times."""
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return [part for inner in event.events for part in _components(inner, count)]
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _components(event.event, count * int(event.count))
    return [event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count)]


def _laplace_terms(event: dp_accounting.DpEvent) -> tuple[float, int] | None:
    """``(noise multiplier, count)`` of a Laplace self-composed ``count`` times; None for any other event."""
    count = 1
    while isinstance(event, dp_accounting.SelfComposedDpEvent):
        count *= int(event.count)
        event = event.event
    if isinstance(event, dp_accounting.LaplaceDpEvent) and event.noise_multiplier > 0:
        return float(event.noise_multiplier), count
    return None


def _shape(event: dp_accounting.DpEvent) -> tuple[float, float, int]:
    """``(step width, composed width, count)`` in nats of the accountant's distribution for one component: a
    Gaussian DP-SGD-shaped event as :func:`pld_widths` estimates it; a Laplace of noise multiplier ``b`` has
    privacy losses in ``[-1/b, 1/b]``, self-composed ``count`` times (Chernoff bound on a preview, as for
    DP-SGD); anything else adds nothing we can estimate (0)."""
    terms = gaussian_terms(event)
    if terms is not None:
        widths = pld_widths(terms)
        return widths.step, widths.composed, terms.count
    laplace = _laplace_terms(event)
    if laplace is not None:
        b, count = laplace
        step = 2.0 / b
        if count == 1:
            return step, step, 1
        loss = privacy_loss_mechanism.LaplacePrivacyLoss(b, sensitivity=1)
        return step, min(count * step, _composed_width(loss, -1.0 / b, step, count)), count
    return 0.0, 0.0, 1


def _width(event: dp_accounting.DpEvent) -> float:
    """Support, in nats, of the accountant's composed distribution for one component (see :func:`_shape`)."""
    return _shape(event)[1]


def composition_discretization(event: dp_accounting.DpEvent, requested: float = DEFAULT_DISCRETIZATION) -> float:
    """:func:`pld_discretization` for a composition of several events: the coarsest interval any
    component needs, coarsened again until the composed distribution (whose support is the sum of
    the components' supports) stays within :data:`MAX_COMPOSED_POINTS`; then refined where a
    component self-composed many times would be kept sparse at that interval (its ``size ** count``
    past :data:`MAX_SPARSE_POWER_BITS`). Raises :class:`PldTooLargeError` when no interval up to
    :data:`MAX_DISCRETIZATION` satisfies all of this."""
    parts = _components(event)
    shapes = [_shape(part) for part in parts]
    interval = max([requested, *(pld_discretization(part, requested) for part in parts)])
    total = sum(composed for _, composed, _ in shapes)
    if total / interval + 2 > MAX_COMPOSED_POINTS:
        interval = total / (MAX_COMPOSED_POINTS - 2)
    too_large = interval > MAX_DISCRETIZATION
    for step, _, count in shapes:  # at the common interval, a small step composed many times must be made dense
        points = step / interval + 2
        if step > 0 and points <= _SPARSE_POINTS and count * math.log2(points) > MAX_SPARSE_POWER_BITS:
            interval = min(interval, step / (_SPARSE_POINTS + 24))
    too_large = too_large or total / interval + 2 > MAX_COMPOSED_POINTS \
        or any(step / interval + 2 > MAX_COMPOSED_POINTS for step, _, _ in shapes)
    if too_large:
        raise PldTooLargeError("the PLD accountant cannot hold this composition within its memory and time limits at "
                               "any discretisation; only the RDP figure is computed")
    return interval
