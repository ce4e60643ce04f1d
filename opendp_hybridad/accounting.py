"""The one bridge between OpenDP measurements and dp-accounting.

Every measurement this package makes is a plain OpenDP ``Measurement`` (it chains
with ``>>``, composes, runs in odometers and filters). What dp-accounting needs to
know about it travels with it as an :class:`Accounting` record, read with
:func:`accounting_of`: its dp-accounting event (``LaplaceDpEvent``,
``GaussianDpEvent``, a composition, DP-SGD's subsampled Gaussians), the distance
``d_in`` the event is stated for, the neighbouring :class:`~opendp_hybridad.relations.Relation`,
and the ``statistical_distance`` between what the implementation draws and the ideal
mechanism the event describes (DP-SGD's table sampler; OpenDP's Laplace and Gaussian noise,
drawn on a lattice: :mod:`opendp_hybridad.lattice_noise`).

:func:`compose_epsilon` is the one accountant entry point. It takes anything that
carries an event (the :class:`Accountable` protocol: ``dp_event()``, ``relation``,
``statistical_distance``): this package's measurements, a DP-SGD plan
(``DPSGD.plan(n)``), an :class:`Accounting` record, or a raw ``dp_accounting.DpEvent``
(taken under add/remove, dp-accounting's own convention).

dp-accounting has no group privacy: each measurement is accounted at the ``d_in``
it was built for. Measurements under different relations are refused together.
Noise multipliers are rounded *down*, so the loss dp-accounting reports from them
can only be larger. OpenDP measure names stay behind :func:`to_measure` (OpenDP plans
to rename them).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from opendp_hybridad import pld_size, validation
from opendp_hybridad.analysis.rounding import add_up, div_down, div_up, libm_up, mul_up, sqrt_up, sum_up
from opendp_hybridad.errors import AccountingError
from opendp_hybridad.lattice_noise import _check_measure, lattice_noise_distance, measurement_noise_distance
from opendp_hybridad.relations import ADD_REMOVE, Relation, relation_of

#: Renyi orders used by the RDP accountant (dp-accounting's default grid, extended)
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])

#: the attribute of an OpenDP Measurement that holds its :class:`Accounting` (read it with :func:`accounting_of`)
_ATTRIBUTE = "_hybridad_accounting"

__all__ = ["RDP_ORDERS", "Accountable", "Accounting", "AccountingError", "accounted", "accounting_of", "compose_epsilon",
           "noise_accounting", "to_measure", "with_accounting", "dp_sgd_epsilon", "dp_sgd_event",
           "dp_sgd_calibration", "dp_sgd_noise_multiplier", "dp_sgd_steps", "DpSgdRdpCurve"]


@runtime_checkable
class Accountable(Protocol):
    """Anything :func:`compose_epsilon` accepts: a dp-accounting event under a relation.

    ``statistical_distance`` is the total variation distance between the released output
    and the output of the ideal mechanism that ``dp_event()`` describes (0 when they are
    the same). An ``(epsilon, delta)`` guarantee of the ideal then holds for the real one
    with ``delta + (1 + e^epsilon) * statistical_distance``.
    """

    @property
    def relation(self) -> Relation: ...

    @property
    def statistical_distance(self) -> float: ...

    def dp_event(self) -> dp_accounting.DpEvent: ...


@dataclass(frozen=True)
class Accounting:
    """What dp-accounting needs to know about one measurement (see the module docstring).

    For a noise mechanism built by :func:`noise_accounting`, ``mechanism`` is
    ``"laplace"`` or ``"gaussian"`` and ``scale``, ``sensitivity`` (at ``d_in``) and
    ``noise_multiplier`` (the event's, rounded down) are set; other records hold the
    event (a composition also its ``parts``; DP-SGD with the table sampler its
    ``statistical_distance``).
    """

    event: dp_accounting.DpEvent
    relation: Relation = ADD_REMOVE
    d_in: Any = 1
    mechanism: str = "event"
    scale: float | None = None
    sensitivity: float | None = None
    noise_multiplier: float | None = None
    statistical_distance: float = 0.0
    #: the records of the measurements a composition was made from, in order
    parts: tuple[Accounting, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.event, dp_accounting.DpEvent):
            raise AccountingError("an accounting record needs a dp_accounting.DpEvent")
        # a name ("add_remove", "REPLACE_ONE", ...) or an OpenDP metric is accepted and converted
        object.__setattr__(self, "relation", relation_of(self.relation))
        distance = float(self.statistical_distance)
        if not 0.0 <= distance <= 1.0:
            raise AccountingError("statistical_distance is a total variation distance, in [0, 1]")
        object.__setattr__(self, "statistical_distance", distance)

    def dp_event(self) -> dp_accounting.DpEvent:
        return self.event

    def __repr__(self) -> str:
        noise = f", {self.mechanism} scale {self.scale:.6g} at sensitivity {self.sensitivity:.6g}" if self.scale is not None else ""
        return f"Accounting({self.event!r}, relation={self.relation.name}, d_in={self.d_in!r}{noise})"


def noise_accounting(d_in: Any, mechanism: str, scale: float, sensitivity: float, relation: Any = ADD_REMOVE,
                     opendp_loss: float | None = None, k: int | None = None, coordinates: int = 1) -> Accounting:
    """The record of a Laplace or Gaussian mechanism of ``scale`` at ``sensitivity`` (for ``d_in``).

    The noise multiplier is ``scale / sensitivity`` rounded down. With ``opendp_loss``
    (OpenDP's own privacy map at ``d_in``: epsilon for Laplace, rho for Gaussian), it is
    also at most the multiplier that loss implies (``1 / epsilon``, ``1 / sqrt(2 rho)``,
    rounded down), so dp-accounting never reports less than OpenDP's map (which covers
    OpenDP's own discretisation of the noise). ``k``: the noise is OpenDP's, on the lattice
    ``2^k`` (``coordinates`` draws): ``statistical_distance`` is then
    :func:`~opendp_hybridad.lattice_noise.lattice_noise_distance` (None: continuous noise, 0).
    """
    if mechanism not in ("laplace", "gaussian"):
        raise AccountingError(f"no dp-accounting event for mechanism {mechanism!r}: use 'laplace' or 'gaussian'")
    scale, sensitivity = float(scale), float(sensitivity)
    if sensitivity == 0:
        return Accounting(dp_accounting.NoOpDpEvent(), relation, d_in, mechanism, scale, sensitivity, math.inf)
    multiplier = div_down(scale, sensitivity)
    if opendp_loss is not None:
        multiplier = min(multiplier, _multiplier_of_loss(mechanism, float(opendp_loss)))
    event = dp_accounting.LaplaceDpEvent(multiplier) if mechanism == "laplace" else dp_accounting.GaussianDpEvent(multiplier)
    distance = 0.0 if k is None else lattice_noise_distance(mechanism, scale, k, coordinates)
    return Accounting(event, relation, d_in, mechanism, scale, sensitivity, multiplier, distance)


def _multiplier_of_loss(mechanism: str, loss: float) -> float:
    """The noise multiplier whose Laplace epsilon (or Gaussian rho) is ``loss``, rounded down."""
    if loss <= 0:
        return math.inf
    if mechanism == "laplace":
        return div_down(1.0, loss)
    return div_down(1.0, sqrt_up(mul_up(2.0, loss)))


def with_accounting(measurement: Any, accounting: Accountable) -> Any:
    """Attach ``accounting`` to an OpenDP measurement and return it (the same object).

    Post-processing never increases the privacy loss, so the record of ``m`` holds for
    ``m >> f`` too: ``with_accounting(m >> f, accounting_of(m))``.
    """
    if not isinstance(accounting, Accountable):
        raise AccountingError("an accounting record needs dp_event(), relation and statistical_distance")
    setattr(measurement, _ATTRIBUTE, accounting)
    return measurement


def accounting_of(item: Any) -> Accountable:
    """What dp-accounting needs to know about ``item``.

    ``item``: a measurement made by this package (``make_private_*``, ``make_dp_sgd``,
    the Gaussian-DP individual filter) or one given a record by :func:`accounted` or
    :func:`with_accounting`; an :class:`Accountable` (e.g. ``DPSGD.plan(n)``); or a raw
    ``dp_accounting.DpEvent``, taken under add/remove (dp-accounting's convention).
    Raises :class:`AccountingError` for anything that carries no event, such as an OpenDP
    measurement built by hand or a chain built after one of ours (attach the record with
    :func:`with_accounting`).
    """
    # read from the instance's own dict: an object that answers every attribute (OpenDP's
    # LazyFrameQuery builds an expression for any name, even __class__) must not pass for a record
    try:
        attached = object.__getattribute__(item, "__dict__").get(_ATTRIBUTE)
    except (AttributeError, TypeError):
        attached = None
    if attached is not None:
        return attached
    try:
        if isinstance(item, dp_accounting.DpEvent):
            return Accounting(item)
        # the protocol check only asks that the names exist; the event must really be one
        if isinstance(item, Accountable) and isinstance(item.dp_event(), dp_accounting.DpEvent):
            return item
    except TypeError:  # isinstance itself failed (a __class__ that is not a class): carries no event
        pass
    kind = type(item).__name__
    raise AccountingError(
        f"a {kind} carries no dp-accounting event: use a measurement from make_private_* or make_dp_sgd, a DP-SGD plan, "
        "a dp_accounting.DpEvent, or attach one with accounted(measurement) or with_accounting(measurement, record)")


def accounted(measurement: Any, d_in: Any = 1, mechanism: str | None = None, relation: Any = ADD_REMOVE,
              k: int | None = None, coordinates: int | None = None, scale: float | None = None) -> Any:
    """Give a plain OpenDP Laplace or Gaussian measurement its accounting record; returns the measurement.

    The noise multiplier is read off OpenDP's own privacy map at ``d_in``: for Laplace,
    epsilon = 1 / multiplier; for Gaussian, rho = 1 / (2 multiplier^2); the record states
    sensitivity 1 and that multiplier, rounded down, as the scale. OpenDP draws the noise on
    the lattice ``2^k``, which a Measurement does not expose: integer data is on the
    integers; float data needs ``k`` (OpenDP's default is -1074 for f64); a vector domain of
    unknown size needs ``coordinates``; a chain also needs the noise's ``scale``
    (:func:`~opendp_hybridad.lattice_noise.measurement_noise_distance`). The record's
    ``statistical_distance`` covers the lattice. ``mechanism`` must agree with the map's measure
    (Laplace: MaxDivergence, Gaussian: zCDP), and a chain's declared noise with the
    ``make_laplace`` / ``make_gaussian`` it ends with (its lattice, its size; its own scale if smaller).
    """
    kind = mechanism or _guess_mechanism(measurement)
    if kind not in ("laplace", "gaussian"):
        raise AccountingError(f"unknown mechanism {kind!r}")
    _check_measure(measurement, kind)  # a mechanism= that contradicts the map's measure would describe another mechanism
    multiplier = _multiplier_of_loss(kind, float(measurement.map(d_in)))
    distance = measurement_noise_distance(measurement, kind, d_in, multiplier, k, coordinates, scale)
    record = replace(noise_accounting(d_in, kind, multiplier, 1.0, relation), statistical_distance=distance)
    return with_accounting(measurement, record)


def _guess_mechanism(measurement: Any) -> str:
    measure = str(measurement.output_measure)
    if measure.startswith("MaxDivergence"):
        return "laplace"
    if measure.startswith("ZeroConcentratedDivergence"):
        return "gaussian"
    raise AccountingError(f"cannot tell the mechanism of a measurement with output measure {measure}; pass mechanism=")


def to_measure(measurement: Any, measure: str, delta: float | None = None) -> Any:
    """``measurement`` in another OpenDP privacy measure, keeping its accounting record.

    ``"pure"``: epsilon-DP (a pure-DP measurement is returned as it is). ``"zcdp"``:
    rho-zCDP (pure DP through ``make_pureDP_to_zCDP``). ``"approx"``: (epsilon, delta)-DP
    with a fixed delta (zCDP through ``make_zCDP_to_approxDP`` and ``make_fix_delta``,
    which needs ``delta``; pure DP through ``make_approximate``, delta = 0).
    """
    import opendp.prelude as dp

    kind = str(measurement.output_measure)
    pure, zcdp = kind.startswith("MaxDivergence"), kind.startswith("ZeroConcentratedDivergence")
    approx = kind.startswith("Approximate")
    if measure == "pure":
        if not pure:
            raise AccountingError(f"a measurement in {kind} has no pure-DP form")
        return measurement
    if measure == "zcdp":
        if zcdp:
            return measurement
        if not pure:
            raise AccountingError(f"a measurement in {kind} has no zCDP form")
        converted = dp.c.make_pureDP_to_zCDP(measurement)
    elif measure == "approx":
        if approx:
            return measurement
        if pure:
            converted = dp.c.make_approximate(measurement)
        elif zcdp:
            if delta is None:
                raise AccountingError("converting a zCDP measurement to approximate DP needs a delta")
            converted = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), validation.probability("delta", delta))
        else:
            raise AccountingError(f"a measurement in {kind} has no approximate-DP form here")
    else:
        raise AccountingError(f"unknown measure {measure!r}: use 'pure', 'zcdp' or 'approx'")
    record = getattr(measurement, _ATTRIBUTE, None)
    return converted if record is None else with_accounting(converted, record)


def _composed(items: Iterable[Any]) -> tuple[dp_accounting.DpEvent, Relation, float]:
    """The composed event, the common relation and the summed statistical distance (rounded up)."""
    records = [accounting_of(item) for item in items]
    if not records:
        raise AccountingError("nothing to compose")
    relation = relation_of(records[0].relation)
    others = {relation_of(r.relation) for r in records} - {relation}
    if others:
        names = sorted({relation.name, *(r.name for r in others)})
        raise AccountingError(f"measurements under different neighbouring relations cannot be composed: {names}")
    distance = sum_up([float(getattr(r, "statistical_distance", 0.0)) for r in records])
    return dp_accounting.ComposedDpEvent([r.dp_event() for r in records]), relation, distance


def compose_epsilon(items: Iterable[Any], delta: float, pld_discretization: float = 1e-4) -> dict[str, Any]:
    """Total (epsilon, delta) of the sequential composition of ``items``, by dp-accounting's RDP and PLD accountants.

    ``items``: anything :func:`accounting_of` accepts (this package's measurements, DP-SGD
    plans, :class:`Accounting` records, raw ``DpEvent``\\ s), all under one relation.

    Each accountant reports the epsilon of the composed ideal mechanisms at ``delta``.
    The returned ``"delta"`` is the total: ``delta + (1 + e^epsilon) * D``, with ``D`` the
    sum of every item's ``statistical_distance`` (samplers that are not exactly the ideal
    mechanism) and ``epsilon`` the larger of the two finite epsilons, rounded up; so
    ``(epsilon_rdp, delta)`` and ``(epsilon_pld, delta)`` both hold. ``"accountant_delta"``
    is the ``delta`` asked for and ``"statistical_distance"`` is ``D``. An event the PLD
    accountant does not support (a zCDP one) gives ``epsilon_pld = inf``. The PLD runs at
    ``pld_discretization``, coarsened where a DP-SGD run would make it too large to hold
    (:mod:`opendp_hybridad.pld_size`; reported as ``"pld_discretization"``).

    For mechanisms that are not subsampled the relation enters only through each
    sensitivity (already in its noise multiplier), so both accountants run with their
    add/remove-one convention.
    """
    delta = validation.probability("delta", delta)
    pld_discretization = validation.positive_finite("pld_discretization", pld_discretization)
    event, relation, distance = _composed(items)
    # sized before it runs, as dp_sgd_epsilon sizes a DP-SGD run alone (opendp_hybridad.pld_size): the
    # coarsest interval any component needs, coarser still if the composed support would not fit; a
    # coarser pessimistic PLD is still an upper bound. No interval fits: PLD reports inf, RDP stands.
    try:
        discretization: float | None = pld_size.composition_discretization(event, pld_discretization)
    except pld_size.PldTooLargeError:
        discretization = None
    try:
        epsilon_rdp = _rdp_epsilon(event, delta)  # inf where dp-accounting's divergences go negative
        pld_acc = None if discretization is None else pld.PLDAccountant(value_discretization_interval=discretization)
        if pld_acc is not None and pld_acc.supports(event):
            pld_acc.compose(event)
            epsilon_pld = float(pld_acc.get_epsilon(delta))
        else:
            epsilon_pld = math.inf
    except dp_accounting.UnsupportedEventError as exc:
        raise AccountingError(f"dp-accounting cannot account this event: {type(exc).__name__}") from None
    except (ArithmeticError, ValueError, MemoryError) as exc:  # one line, no traceback
        raise AccountingError(f"the accountants could not evaluate this composition ({type(exc).__name__})") from None
    total = delta
    if distance > 0:
        finite = [e for e in (epsilon_rdp, epsilon_pld) if math.isfinite(e)]
        epsilon = max(finite) if finite else math.inf
        growth = add_up(1.0, libm_up(math.exp(epsilon))) if epsilon < 700 else math.inf
        total = min(1.0, add_up(delta, mul_up(growth, distance)))
    return {
        "epsilon_rdp": epsilon_rdp,
        "epsilon_pld": epsilon_pld,
        "delta": float(total),
        "accountant_delta": float(delta),
        "statistical_distance": float(distance),
        "relation": relation.name,
        "pld_discretization": math.nan if discretization is None else discretization,
        **({} if discretization is not None else {"pld_note": "PLD not computed: no discretisation holds this "
                                                  "composition within the memory and time limits"}),
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
                   sampling: str = "poisson") -> dict[str, Any]:
    """(epsilon, delta) of DP-SGD by dp-accounting's RDP and PLD accountants.

    ``pld_discretization`` is the interval the PLD ran at (coarsened where a small noise
    multiplier would make it too large: :mod:`opendp_hybridad.pld_size`). Where no interval keeps
    it within limits, ``epsilon_pld`` is ``inf`` (a vacuous bound, as :func:`compose_epsilon`
    reports an event PLD cannot account), ``pld_discretization`` None, and ``pld_note`` says why.
    """
    delta = validation.probability("delta", delta)
    event = dp_sgd_event(n, batch_size, noise_multiplier, epochs, sampling)
    epsilon_rdp = _rdp_epsilon(event, delta)
    note = {}
    try:
        epsilon_pld, discretization = _dp_sgd_pld_epsilon(event, delta)
    except pld_size.PldTooLargeError as exc:
        epsilon_pld, discretization, note = math.inf, None, {"pld_note": str(exc)}
    n, batch_size = int(n), int(batch_size)
    steps = dp_sgd_steps(n, batch_size, epochs) if sampling == "poisson" else math.ceil(epochs) * (n // batch_size)
    return {"epsilon_rdp": epsilon_rdp, "epsilon_pld": epsilon_pld,
            "delta": float(delta), "steps": steps, "sampling": sampling,
            "noise_multiplier": float(noise_multiplier), "sampling_probability": div_up(batch_size, n),
            "pld_discretization": discretization, **note}


def dp_sgd_noise_multiplier(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                            sampling: str = "poisson", accountant: str = "pld") -> float:
    """The smallest allowed noise multiplier (to 1e-3 relative) whose DP-SGD epsilon is at most the target.

    See :func:`dp_sgd_calibration`, which also returns the report at that multiplier.
    """
    return dp_sgd_calibration(target_epsilon, delta, n, batch_size, epochs, sampling, accountant)["noise_multiplier"]


def dp_sgd_calibration(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                       sampling: str = "poisson", accountant: str = "pld") -> dict[str, Any]:
    """:func:`dp_sgd_epsilon`'s report at the smallest allowed noise multiplier (to 1e-3 relative)
    whose epsilon by ``accountant`` is at most the target, with ``target_epsilon``, ``calibrated_by``
    (the accountant whose figure meets the target: ``accountant``, or ``"rdp"`` where the PLD cannot
    be computed at all, see ``pld_note``) and ``at_smallest_allowed`` added. Below a multiplier of
    0.3 the PLD is not searched: RDP's answer is kept (and verified), so PLD's figure may lie well
    under the target there.

    The search stays within :mod:`~opendp_hybridad.validation`'s limits: when even
    ``MIN_NOISE_MULTIPLIER`` meets the target, that limit is returned with its actual epsilon
    (``at_smallest_allowed`` true); when even ``MAX_NOISE_MULTIPLIER`` does not,
    :class:`AccountingError` names that limit and the epsilon it gives. The answer is verified
    through the same :func:`dp_sgd_epsilon` that reports it, and raised until the calibrating
    accountant's epsilon is at most the target: the reported figure never exceeds it.
    """
    target_epsilon = validation.positive_finite("target_epsilon", target_epsilon)
    delta = validation.probability("delta", delta)
    dp_sgd_steps(n, batch_size, epochs)  # validates the sizes before any search
    if accountant not in ("pld", "rdp"):
        raise AccountingError("accountant must be 'pld' or 'rdp'")
    key = "epsilon_pld" if accountant == "pld" else "epsilon_rdp"
    smallest, largest = validation.MIN_NOISE_MULTIPLIER, validation.MAX_NOISE_MULTIPLIER

    def report(sigma: float) -> dict[str, Any]:
        return dp_sgd_epsilon(n, batch_size, sigma, epochs, delta, sampling)

    def meets(found: dict[str, Any]) -> str | None:
        """The accountant whose figure is at most the target: the calibrating one, or RDP where the
        PLD could not be computed at all (too large at any discretisation; its figure is then inf)."""
        if found[key] <= target_epsilon:
            return accountant
        if "pld_note" in found and found["epsilon_rdp"] <= target_epsilon:
            return "rdp"
        return None

    def done(found: dict[str, Any]) -> dict[str, Any]:
        return {**found, "target_epsilon": target_epsilon, "calibrated_by": meets(found),
                "at_smallest_allowed": found["noise_multiplier"] <= smallest}

    sigma = _calibrate_noise_multiplier(target_epsilon, delta, n, batch_size, epochs, sampling, accountant)
    found = report(sigma)
    if meets(found):
        return done(found)
    # the accountant's own figure is above the target (e.g. PLD's pessimistic discretisation over
    # many steps exceeds RDP at small epsilon): grow geometrically, up to the largest allowed
    # multiplier, until it holds, then bisect to 1e-3
    low, factor = sigma, 1.01
    while True:
        high = min(low * factor, largest)
        found = report(high)
        if meets(found):
            break
        if high >= largest:
            raise _unreachable(target_epsilon, delta, found["steps"], accountant, found[key], report(largest / 100)[key],
                               rdp_meets=accountant == "pld" and found["epsilon_rdp"] <= target_epsilon)
        low, factor = high, factor * factor
    while high > low * 1.001:
        mid = math.sqrt(low * high)
        at_mid = report(mid)
        if meets(at_mid):
            high, found = mid, at_mid
        else:
            low = mid
    return done(found)


def _unreachable(target_epsilon: float, delta: float, steps: int, accountant: str, at_largest: float,
                 at_hundredth: float, rdp_meets: bool = False) -> AccountingError:
    """The one-line refusal when the largest allowed multiplier misses the target, naming what stops it:
    the multiplier's limit, or (when 100 times less noise gives nearly the same figure) the accountant's floor."""
    head = (f"epsilon {target_epsilon:g} at delta {delta:g} cannot be met by the {accountant.upper()} accountant over "
            f"{steps} steps: even the largest allowed noise multiplier ({validation.MAX_NOISE_MULTIPLIER:g}) gives {at_largest:.3g}")
    if at_largest < 0.99 * at_hundredth:  # still falling with more noise: the multiplier's limit stops it
        return AccountingError(f"{head}; use fewer epochs, a smaller batch, or a larger epsilon or delta")
    # more noise no longer lowers the figure: the accountant's own floor (RDP's order grid and delta,
    # PLD's discretisation over the steps) stops it
    tail = ", or the RDP accountant, which meets it (accountant='rdp', --accountant rdp)" if rdp_meets else ""
    return AccountingError(f"{head}, the accountant's floor (more noise does not lower it); "
                           f"use a larger epsilon or delta, or fewer steps{tail}")


class _NegativeRenyi(logging.Filter):
    """Catches dp-accounting's 'Negative Renyi divergence ... Returning an epsilon of zero' warning:
    at extreme noise its RDP goes numerically negative at some orders and it reports epsilon 0 there,
    which is no proven bound; the warning (one per order) is recorded instead of printed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Negative Renyi divergence" in str(record.msg):
            self.seen = True
            return False
        return True


def _rdp_epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    """RDP epsilon of ``event``; ``inf`` (the vacuous bound) where dp-accounting's divergences went
    numerically negative, since it would report 0 for them."""
    negative = _NegativeRenyi()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(negative)
    try:
        accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
        accountant.compose(event)
        epsilon = float(accountant.get_epsilon(delta))
    except (ArithmeticError, ValueError, MemoryError) as exc:
        raise _not_evaluated(exc) from None
    finally:
        absl_logger.removeFilter(negative)
    return math.inf if negative.seen else epsilon


class DpSgdRdpCurve:
    """RDP epsilon of DP-SGD after any number of steps, from one unit's RDP curve computed once.

    The unit is one Poisson-sampled step (``"poisson"``) or one epoch's Gaussian with noise
    multiplier ``sigma / 2`` (``"shuffle"``), the events :func:`dp_sgd_event` self-composes.
    RDP composes by adding at every order, and dp-accounting's own accountant composes a
    self-composed event as ``count * rdp_of_one_unit``: :meth:`epsilon` forms the same
    product and converts it with dp-accounting's ``compute_epsilon``, so it equals (bit for
    bit) the ``epsilon_rdp`` :func:`dp_sgd_epsilon` reports for that many steps, at the cost of
    a conversion (microseconds) instead of a fresh accounting (a PLD run: seconds). After
    ``t`` steps of a shuffled run, the units are the epochs begun, ``ceil(t / (n // batch))``.
    """

    def __init__(self, n: int, batch_size: int, noise_multiplier: float, sampling: str = "poisson") -> None:
        noise_multiplier = validation.noise_multiplier("noise_multiplier", noise_multiplier)
        n, batch_size = validation.count("n", n), validation.count("batch_size", batch_size)
        if batch_size > n:
            raise AccountingError(f"the batch size ({batch_size}) is larger than the data ({n} examples)")
        if sampling == "poisson":
            unit: dp_accounting.DpEvent = dp_accounting.PoissonSampledDpEvent(
                div_up(batch_size, n), dp_accounting.GaussianDpEvent(noise_multiplier))
            self._per_unit = 1
        elif sampling == "shuffle":
            unit = dp_accounting.GaussianDpEvent(noise_multiplier / 2.0)
            self._per_unit = n // batch_size
        else:
            raise AccountingError("sampling must be 'poisson' or 'shuffle'")
        try:
            accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
            accountant.compose(unit)
        except (ArithmeticError, ValueError, MemoryError) as exc:
            raise _not_evaluated(exc) from None
        self.orders = np.array(RDP_ORDERS)  # as the accountant holds them
        self.unit_rdp = accountant.rdp

    def units(self, steps: int) -> int:
        """The units composed after ``steps`` steps (every epoch begun counts whole)."""
        return -(-int(steps) // self._per_unit)

    def rdp(self, steps: int) -> np.ndarray:
        """The RDP curve (one value per order of :data:`RDP_ORDERS`) after ``steps`` steps."""
        return self.units(steps) * self.unit_rdp

    def epsilon(self, steps: int, delta: float) -> float:
        """RDP epsilon at ``delta`` after ``steps`` steps; ``inf`` where a divergence went negative, as :func:`_rdp_epsilon`."""
        delta = validation.probability("delta", delta)
        negative = _NegativeRenyi()
        absl_logger = logging.getLogger("absl")
        absl_logger.addFilter(negative)
        try:
            epsilon = float(rdp.rdp_privacy_accountant.compute_epsilon(self.orders, self.rdp(steps), delta)[0])
        except (ArithmeticError, ValueError, MemoryError) as exc:
            raise _not_evaluated(exc) from None
        finally:
            absl_logger.removeFilter(negative)
        return math.inf if negative.seen else epsilon


def _dp_sgd_pld_epsilon(event: dp_accounting.DpEvent, delta: float) -> tuple[float, float]:
    """PLD epsilon of ``event`` and the discretisation interval it was computed at."""
    try:
        # sized before it runs: a small noise multiplier would make the PLD billions of points;
        # a coarser interval keeps it bounded and stays an upper bound (opendp_hybridad.pld_size)
        discretization = pld_size.pld_discretization(event)
        accountant = pld.PLDAccountant(value_discretization_interval=discretization)
        accountant.compose(event)
        return float(accountant.get_epsilon(delta)), discretization
    except pld_size.PldTooLargeError:
        raise  # an AccountingError (so a ValueError): the caller reports RDP alone
    except (ArithmeticError, ValueError, MemoryError) as exc:
        raise _not_evaluated(exc) from None


def _not_evaluated(exc: BaseException) -> AccountingError:
    # one line, no traceback
    return AccountingError(f"the accountants could not evaluate this accounting ({type(exc).__name__}); "
                           "use a larger noise multiplier or fewer steps")


#: the PLD search stays above this multiplier: below it epsilon is in the hundreds and each PLD run costs
#: seconds (opendp_hybridad.pld_size), so the RDP calibration (verified by PLD) is kept there
_PLD_SEARCH_FLOOR = 0.3


def _calibrate_noise_multiplier(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                                sampling: str, accountant: str) -> float:
    """A candidate multiplier in the allowed range (the caller verifies it): the smallest allowed one
    when RDP meets the target there, else a root search by RDP, then by PLD below RDP's answer."""
    from scipy import optimize

    smallest, largest = validation.MIN_NOISE_MULTIPLIER, validation.MAX_NOISE_MULTIPLIER

    def event(sigma: float) -> dp_accounting.DpEvent:
        return dp_sgd_event(n, batch_size, sigma, epochs, sampling)

    # memoised: the searches below ask for the same multipliers more than once (bracket ends)
    @functools.cache
    def rdp_epsilon(sigma: float) -> float:
        return _rdp_epsilon(event(sigma), delta)

    @functools.cache
    def pld_epsilon(sigma: float) -> float:
        return _dp_sgd_pld_epsilon(event(sigma), delta)[0]

    def search(figure, low: float, high: float) -> float:
        """The smallest sigma in [low, high] with figure(sigma) <= target, to 1e-3 relative: a root in
        log sigma, then moved up in steps of 1e-3 while it is still above the target (never past high)."""
        def clamp(sigma: float) -> float:
            return min(max(sigma, low), high)  # exp(log(x)) can round below x (and below the allowed minimum)

        def gap(log_sigma: float) -> float:
            return min(figure(clamp(math.exp(log_sigma))), 1e300) - target_epsilon

        sigma = clamp(math.exp(optimize.brentq(gap, math.log(low), math.log(high), xtol=1e-3)))
        while figure(sigma) > target_epsilon and sigma < high:
            sigma = clamp(sigma * 1.001)
        return sigma

    # RDP first: cheap at any noise level, and usually above PLD's figure
    if rdp_epsilon(smallest) <= target_epsilon:
        return smallest  # met at the allowed minimum (the caller checks PLD there): no search below it
    # probe upward by factors of 10 rather than jump to the largest: extreme noise is where RDP's
    # divergences go numerically negative (reported as inf by _rdp_epsilon)
    bottom, top = smallest, min(largest, 1e3)
    at_top = rdp_epsilon(top)
    while at_top > target_epsilon and top < largest:
        bottom, top = top, min(largest, top * 10)
        at_top = rdp_epsilon(top)
    if at_top > target_epsilon:
        if accountant == "rdp":
            raise _unreachable(target_epsilon, delta, dp_sgd_steps(n, batch_size, epochs), accountant, at_top,
                               rdp_epsilon(largest / 100))
        # below RDP's floor, PLD may still meet it: search the whole upper range by PLD (the caller
        # checks the answer, and names the limit if even the largest multiplier misses)
        low, high = _PLD_SEARCH_FLOOR, largest
    else:
        sigma_rdp = search(rdp_epsilon, bottom, top)
        if accountant == "rdp" or sigma_rdp <= _PLD_SEARCH_FLOOR:
            return sigma_rdp
        low, high = max(_PLD_SEARCH_FLOOR, sigma_rdp / 2), sigma_rdp
    # PLD as dp_sgd_epsilon runs it, so every multiplier tried gets the discretisation sized for it
    try:
        if pld_epsilon(low) <= target_epsilon:
            return low
        if pld_epsilon(high) > target_epsilon:
            return high  # the caller grows it, and names the limit if even the largest multiplier misses
        return search(pld_epsilon, low, high)
    except pld_size.PldTooLargeError:
        return high  # PLD cannot run here at all: the caller checks RDP's answer
