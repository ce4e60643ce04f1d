"""The one bridge between OpenDP measurements and dp-accounting.

Every measurement this package makes is an :class:`AccountedMeasurement`: the
OpenDP measurement, the distance ``d_in`` its guarantee is stated for, the
mechanism and its noise multiplier (noise scale / sensitivity at ``d_in``), and
the neighbouring relation. From these it reports its dp-accounting event
(``LaplaceDpEvent`` or ``GaussianDpEvent``), and it can be expressed in OpenDP's
other measures so ``dp.c.make_composition``, ``make_zCDP_to_approxDP`` and privacy
filters accept it. OpenDP measure names stay behind :func:`to_measure`
(OpenDP plans to rename them).

dp-accounting has no group privacy: a measurement is accounted at the ``d_in``
it was built for; asking for another distance is refused.

The relation is a :class:`~opendp_hybridad.relations.Relation` object (a name or
an OpenDP metric is accepted and converted by :func:`relation_of`); measurements
under different relations are refused together. The noise multiplier is rounded
*down*, so the privacy loss dp-accounting reports from it can only be larger.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from opendp_hybridad import validation
from opendp_hybridad.analysis.rounding import div_down, div_up, mul_up, sqrt_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.relations import ADD_REMOVE, Relation, relation_of

#: Renyi orders used by the RDP accountant (dp-accounting's default grid, extended)
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])


class AccountingError(DeclarationError):
    """Measurements that cannot be accounted together (mixed relations, unknown mechanisms, group privacy),
    or accounting parameters out of range (a :class:`DeclarationError`, like every parameter check)."""


@dataclass(frozen=True)
class AccountedMeasurement:
    """An OpenDP measurement together with what dp-accounting needs to know about it."""

    measurement: Any
    d_in: Any
    mechanism: str  # "laplace" or "gaussian"
    scale: float
    sensitivity: float
    relation: Relation = ADD_REMOVE

    def __post_init__(self) -> None:
        # a name ("add_remove", "ADD_OR_REMOVE_ONE", ...) or an OpenDP metric is accepted for compatibility
        object.__setattr__(self, "relation", relation_of(self.relation))

    @property
    def noise_multiplier(self) -> float:
        """Noise scale divided by the sensitivity at ``d_in``, rounded down (a larger reported loss)."""
        return div_down(self.scale, self.sensitivity) if self.sensitivity > 0 else math.inf

    def __call__(self, data: Any) -> Any:
        """Release on ``data``; a frame outside the input domain is refused first, with this library's error."""
        check = getattr(getattr(getattr(self.measurement, "input_domain", None), "descriptor", None), "check", None)
        if callable(check):
            check(data)  # e.g. FrameDomain.check: SchemaMismatchError naming the column
        return self.measurement(data)

    def dp_event(self) -> dp_accounting.DpEvent:
        if self.sensitivity == 0:
            return dp_accounting.NoOpDpEvent()
        if self.mechanism == "laplace":
            return dp_accounting.LaplaceDpEvent(self.noise_multiplier)
        if self.mechanism == "gaussian":
            return dp_accounting.GaussianDpEvent(self.noise_multiplier)
        raise AccountingError(f"no dp-accounting event for mechanism {self.mechanism!r}")

    def privacy_loss(self) -> float:
        """OpenDP's own privacy map at ``d_in``: epsilon (Laplace) or rho (Gaussian, zCDP)."""
        return self.measurement.map(self.d_in)

    def to_measure(self, measure: str, delta: float | None = None) -> Any:
        """This measurement in another OpenDP measure.

        ``"pure"``: epsilon-DP (Laplace only). ``"zcdp"``: rho-zCDP (Laplace via
        ``make_pureDP_to_zCDP``). ``"approx"``: (epsilon, delta)-DP with a fixed delta
        (Gaussian via ``make_zCDP_to_approxDP`` and ``make_fix_delta``; Laplace via
        ``make_approximate``, delta = 0).
        """
        import opendp.prelude as dp

        m = self.measurement
        if measure == "pure":
            if self.mechanism != "laplace":
                raise AccountingError("a Gaussian measurement has no pure-DP form")
            return m
        if measure == "zcdp":
            return m if self.mechanism == "gaussian" else dp.c.make_pureDP_to_zCDP(m)
        if measure == "approx":
            if self.mechanism == "laplace":
                return dp.c.make_approximate(m)
            if delta is None:
                raise AccountingError("converting a Gaussian measurement to approximate DP needs a delta")
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(m), delta)
        raise AccountingError(f"unknown measure {measure!r}: use 'pure', 'zcdp' or 'approx'")


def accounted(measurement: Any, d_in: Any = 1, mechanism: str | None = None, relation: Any = ADD_REMOVE) -> AccountedMeasurement:
    """Wrap a plain OpenDP Laplace or Gaussian measurement for accounting.

    The noise multiplier is read off OpenDP's own privacy map: for Laplace,
    epsilon = sensitivity / scale; for Gaussian, rho = sensitivity^2 / (2 scale^2).
    The sensitivity is reported as 1 and the scale as that multiplier, rounded down.
    """
    kind = mechanism or _guess_mechanism(measurement)
    loss = float(measurement.map(d_in))
    if kind == "laplace":
        multiplier = div_down(1.0, loss) if loss > 0 else math.inf
    elif kind == "gaussian":
        multiplier = div_down(1.0, sqrt_up(mul_up(2.0, loss))) if loss > 0 else math.inf
    else:
        raise AccountingError(f"unknown mechanism {kind!r}")
    return AccountedMeasurement(measurement, d_in, kind, multiplier, 1.0, relation)


def _guess_mechanism(measurement: Any) -> str:
    measure = str(measurement.output_measure)
    if measure.startswith("MaxDivergence"):
        return "laplace"
    if measure.startswith("ZeroConcentratedDivergence"):
        return "gaussian"
    raise AccountingError(f"cannot tell the mechanism of a measurement with output measure {measure}; pass mechanism=")


def _event(items: Iterable[AccountedMeasurement]) -> tuple[dp_accounting.DpEvent, Relation]:
    items = list(items)
    if not items:
        raise AccountingError("nothing to compose")
    relation = items[0].relation
    others = [m.relation for m in items if m.relation != relation]
    if others:
        names = sorted({relation.name, *(r.name for r in others)})
        raise AccountingError(f"measurements under different neighbouring relations cannot be composed: {names}")
    return dp_accounting.ComposedDpEvent([m.dp_event() for m in items]), relation


def compose_epsilon(measurements: Iterable[AccountedMeasurement], delta: float,
                    pld_discretization: float = 1e-4) -> dict[str, float]:
    """Total (epsilon, delta) of the composition, by dp-accounting's RDP and PLD accountants.

    For mechanisms that are not subsampled, the relation enters only through each
    measurement's sensitivity (already in its noise multiplier), so both
    accountants run with their add/remove-one convention.
    """
    delta = validation.probability("delta", delta)
    pld_discretization = validation.positive_finite("pld_discretization", pld_discretization)
    event, relation = _event(measurements)
    rdp_acc = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    rdp_acc.compose(event)
    pld_acc = pld.PLDAccountant(value_discretization_interval=pld_discretization)
    pld_acc.compose(event)
    return {
        "epsilon_rdp": float(rdp_acc.get_epsilon(delta)),
        "epsilon_pld": float(pld_acc.get_epsilon(delta)),
        "delta": float(delta),
        "relation": relation.name,
    }


# -- DP-SGD ------------------------------------------------------------------------------------
def dp_sgd_steps(n: int, batch_size: int, epochs: float) -> int:
    """Number of noisy steps of ``epochs`` passes over ``n`` examples with expected batch ``batch_size``."""
    n = validation.count("n", n)
    batch_size = validation.count("batch_size", batch_size)
    epochs = validation.positive_finite("epochs", epochs)
    if batch_size > n:
        raise AccountingError(f"the batch size ({batch_size}) is larger than the data ({n} examples)")
    return validation.steps(n, batch_size, epochs)


def dp_sgd_event(n: int, batch_size: int, noise_multiplier: float, epochs: float, sampling: str = "poisson") -> dp_accounting.DpEvent:
    """The dp-accounting event of DP-SGD.

    ``"poisson"``: every example joins each step's batch independently with
    probability ``batch_size / n`` (add/remove-one; amplification by Poisson
    sampling). ``"shuffle"``: each epoch splits a shuffled copy of the data into
    disjoint fixed-size batches, so each example is in exactly one step per epoch;
    no amplification is claimed: under replace-one the sum's sensitivity is twice the
    clip norm, so each epoch is one Gaussian with noise multiplier ``sigma / 2``,
    composed over the epochs.
    """
    noise_multiplier = validation.noise_multiplier("noise_multiplier", noise_multiplier)
    steps = dp_sgd_steps(n, batch_size, epochs)
    n, batch_size = int(n), int(batch_size)
    if sampling == "poisson":
        # the selection includes each example with probability at most the exact batch_size / n:
        # account for that ratio rounded up
        step = dp_accounting.PoissonSampledDpEvent(div_up(batch_size, n), dp_accounting.GaussianDpEvent(noise_multiplier))
        return dp_accounting.SelfComposedDpEvent(step, steps)
    if sampling == "shuffle":
        epochs_run = math.ceil(epochs)
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier / 2.0), epochs_run)
    raise AccountingError("sampling must be 'poisson' or 'shuffle'")


def dp_sgd_epsilon(n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float,
                   sampling: str = "poisson") -> dict[str, float]:
    """(epsilon, delta) of DP-SGD by dp-accounting's RDP and PLD accountants."""
    delta = validation.probability("delta", delta)
    event = dp_sgd_event(n, batch_size, noise_multiplier, epochs, sampling)
    try:
        rdp_acc = rdp.RdpAccountant(orders=list(RDP_ORDERS))
        rdp_acc.compose(event)
        pld_acc = pld.PLDAccountant()
        pld_acc.compose(event)
        epsilon_rdp, epsilon_pld = float(rdp_acc.get_epsilon(delta)), float(pld_acc.get_epsilon(delta))
    except (ArithmeticError, ValueError, MemoryError) as exc:  # one line, no traceback
        raise AccountingError(f"the accountants could not evaluate this DP-SGD run ({type(exc).__name__}); "
                              "use a larger noise multiplier or fewer steps") from None
    n, batch_size = int(n), int(batch_size)
    steps = dp_sgd_steps(n, batch_size, epochs) if sampling == "poisson" else math.ceil(epochs) * (n // batch_size)
    return {"epsilon_rdp": epsilon_rdp, "epsilon_pld": epsilon_pld,
            "delta": float(delta), "steps": steps, "sampling": sampling,
            "noise_multiplier": float(noise_multiplier), "sampling_probability": div_up(batch_size, n)}


def dp_sgd_noise_multiplier(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                            sampling: str = "poisson", accountant: str = "pld") -> float:
    """The smallest noise multiplier (to 1e-3 relative) whose DP-SGD epsilon is at most the target.

    The answer is verified with the accountant it was calibrated by, through the same
    :func:`dp_sgd_epsilon` that reports it (PLD at its default discretisation, or RDP), and
    raised until that epsilon is at most the target: a reported epsilon never exceeds it.
    Raises :class:`AccountingError` that says what would work when the target cannot be met.
    """
    target_epsilon = validation.positive_finite("target_epsilon", target_epsilon)
    delta = validation.probability("delta", delta)
    dp_sgd_steps(n, batch_size, epochs)  # validates the sizes before any search
    if accountant not in ("pld", "rdp"):
        raise AccountingError("accountant must be 'pld' or 'rdp'")
    sigma = _calibrate_noise_multiplier(target_epsilon, delta, n, batch_size, epochs, sampling, accountant)
    key = "epsilon_pld" if accountant == "pld" else "epsilon_rdp"

    def holds(sigma: float) -> bool:
        return dp_sgd_epsilon(n, batch_size, sigma, epochs, delta, sampling)[key] <= target_epsilon

    if holds(sigma):
        return sigma
    # the accountant's own figure is above the target (e.g. PLD's pessimistic discretisation over
    # many steps exceeds RDP at small epsilon): grow geometrically until it holds, then bisect to 1e-3
    low, factor = sigma, 1.01
    while True:
        high = low * factor
        if high > validation.MAX_NOISE_MULTIPLIER:
            raise AccountingError(f"no noise multiplier up to {validation.MAX_NOISE_MULTIPLIER:g} gives epsilon at most "
                                  f"{target_epsilon} at delta {delta}; use fewer epochs or a larger epsilon or delta")
        if holds(high):
            break
        low, factor = high, factor * factor
    while high > low * 1.001:
        mid = math.sqrt(low * high)
        low, high = (low, mid) if holds(mid) else (mid, high)
    return high


def _calibrate_noise_multiplier(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                                sampling: str, accountant: str) -> float:
    from dp_accounting import mechanism_calibration

    def calibrate(make_accountant, low: float, high: float) -> float:
        return float(mechanism_calibration.calibrate_dp_mechanism(
            make_accountant, lambda sigma: dp_sgd_event(n, batch_size, sigma, epochs, sampling),
            target_epsilon, delta, mechanism_calibration.ExplicitBracketInterval(low, high), tol=1e-3,
        ))

    # RDP first: cheap at any noise level, and an upper bound on what PLD needs
    # (PLD epsilon <= RDP epsilon); PLD then searches below it, where its
    # discretised distributions stay small
    try:
        sigma_rdp = calibrate(lambda: rdp.RdpAccountant(orders=list(RDP_ORDERS)), 0.05, 1000.0)
    except (mechanism_calibration.NoBracketIntervalFoundError, ValueError) as exc:
        at_max = dp_sgd_epsilon(n, batch_size, 1000.0, epochs, delta, sampling)["epsilon_rdp"]
        raise AccountingError(
            f"epsilon {target_epsilon} at delta {delta} cannot be met with {dp_sgd_steps(n, batch_size, epochs)} steps: "
            f"even noise multiplier 1000 gives {at_max:.3g}; use fewer epochs, a smaller batch, or a larger epsilon or delta"
        ) from exc
    if accountant == "rdp":
        return sigma_rdp
    try:
        return calibrate(pld.PLDAccountant, max(0.3, sigma_rdp / 2), sigma_rdp)
    except (mechanism_calibration.NoBracketIntervalFoundError, ValueError):
        return sigma_rdp  # PLD could not do better inside the bracket: the RDP answer is valid
