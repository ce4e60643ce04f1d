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

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from opendp_hybridad import pld_size, validation
from opendp_hybridad.analysis.rounding import add_up, add_up_array, div_down, libm_up, mul_up, sqrt_up, sum_up
from opendp_hybridad.errors import AccountingError
from opendp_hybridad.lattice_noise import _check_measure, lattice_noise_distance, measurement_noise_distance
from opendp_hybridad.relations import ADD_REMOVE, Relation, relation_of

#: Renyi orders used by the RDP accountant (dp-accounting's default grid, extended)
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])

#: the attribute of an OpenDP Measurement that holds its :class:`Accounting` (read it with :func:`accounting_of`)
_ATTRIBUTE = "_hybridad_accounting"

__all__ = ["RDP_ORDERS", "Accountable", "Accounting", "AccountingError", "accounted", "accounting_of", "compose_epsilon",
           "noise_accounting", "to_measure", "with_accounting"]

#: DP-SGD's accounting lives next to the mechanism (opendp_hybridad.dpsgd.accounting); these names
#: are still importable from here
_MOVED_TO_DPSGD = frozenset({"dp_sgd_epsilon", "dp_sgd_calibration", "dp_sgd_noise_multiplier", "dp_sgd_steps",
                             "DpSgdRdpCurve"})


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_DPSGD:
        from opendp_hybridad.dpsgd import accounting as dpsgd_accounting

        return getattr(dpsgd_accounting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    #: a proven RDP upper bound at :data:`RDP_ORDERS` that *replaces* dp-accounting's reading of
    #: ``event`` (DP-SGD's lattice noise: :mod:`opendp_hybridad.dpsgd.accounting`); such a record has
    #: no PLD, and its event only describes the mechanism's shape
    rdp_curve: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, dp_accounting.DpEvent):
            raise AccountingError("an accounting record needs a dp_accounting.DpEvent")
        # a name ("add_remove", "REPLACE_ONE", ...) or an OpenDP metric is accepted and converted
        object.__setattr__(self, "relation", relation_of(self.relation))
        distance = float(self.statistical_distance)
        if not 0.0 <= distance <= 1.0:
            raise AccountingError("statistical_distance is a total variation distance, in [0, 1]")
        object.__setattr__(self, "statistical_distance", distance)
        if self.rdp_curve is not None:
            curve = tuple(float(v) for v in self.rdp_curve)
            if len(curve) != len(RDP_ORDERS) or not all(v >= 0 for v in curve):
                raise AccountingError("rdp_curve holds one non-negative divergence per order of RDP_ORDERS")
            object.__setattr__(self, "rdp_curve", curve)

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


def _composed(items: Iterable[Any]) -> tuple[dp_accounting.DpEvent, Relation, float, np.ndarray | None]:
    """The composed event of the records dp-accounting reads, the common relation, the summed
    statistical distance (rounded up) and the sum of the proven RDP curves (None if no record has one)."""
    records = [accounting_of(item) for item in items]
    if not records:
        raise AccountingError("nothing to compose")
    relation = relation_of(records[0].relation)
    others = {relation_of(r.relation) for r in records} - {relation}
    if others:
        names = sorted({relation.name, *(r.name for r in others)})
        raise AccountingError(f"measurements under different neighbouring relations cannot be composed: {names}")
    distance = sum_up([float(getattr(r, "statistical_distance", 0.0)) for r in records])
    curves = [getattr(r, "rdp_curve", None) for r in records]
    events = [r.dp_event() for r, c in zip(records, curves, strict=True) if c is None]
    curve_sum = None
    if any(c is not None for c in curves):
        curve_sum = np.zeros(len(RDP_ORDERS))
        for c in curves:
            if c is not None:
                curve_sum = add_up_array(curve_sum, np.asarray(c, dtype=float))  # one rounding up per addition
    return dp_accounting.ComposedDpEvent(events), relation, distance, curve_sum


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
    event, relation, distance, curve = _composed(items)
    if curve is not None:
        return _compose_with_curves(event, curve, delta, relation, distance)
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
    finite = [e for e in (epsilon_rdp, epsilon_pld) if math.isfinite(e)]
    total = delta_with_distance(delta, max(finite) if finite else math.inf, distance)
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


def distance_penalty(epsilon: float, distance: float) -> float:
    """``(1 + e^epsilon) * distance``, rounded up (``inf`` past ``exp``'s range): what a mechanism within total
    variation ``distance`` of the ideal one adds to the ideal's delta at ``epsilon``. The one home of this rule."""
    growth = add_up(1.0, libm_up(math.exp(epsilon))) if epsilon < 700 else math.inf
    return mul_up(growth, distance)


def delta_with_distance(delta: float, epsilon: float, distance: float) -> float:
    """``delta + (1 + e^epsilon) * distance``, rounded up and at most 1 (``delta`` itself when ``distance`` is 0):
    an ``(epsilon, delta)`` guarantee of the ideal mechanism holds with this delta for the real one."""
    if not distance > 0:
        return float(delta)
    return min(1.0, add_up(delta, distance_penalty(epsilon, distance)))


def _compose_with_curves(event: dp_accounting.DpEvent, curve: np.ndarray, delta: float, relation: Relation,
                         distance: float) -> dict[str, Any]:
    """:func:`compose_epsilon` when some records carry a proven RDP curve (DP-SGD's lattice noise).

    RDP composes by adding at every order (Mironov 2017, Proposition 1): dp-accounting's RDP of
    the other records' events plus the proven curves, converted by
    :func:`opendp_hybridad.dpsgd.accounting.rdp_to_epsilon` (outward-rounded). No PLD: the curves
    have none (``epsilon_pld`` is inf and ``pld_note`` says why).
    """
    from opendp_hybridad.dpsgd.accounting import rdp_to_epsilon

    negative = _NegativeRenyi()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(negative)
    try:
        accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
        accountant.compose(event)
        others = accountant.rdp
    except dp_accounting.UnsupportedEventError as exc:
        raise AccountingError(f"dp-accounting cannot account this event: {type(exc).__name__}") from None
    except (ArithmeticError, ValueError, MemoryError) as exc:
        raise _not_evaluated(exc) from None
    finally:
        absl_logger.removeFilter(negative)
    # a numerically negative divergence is no bound
    negative_seen = negative.seen or not np.all(others >= 0)
    combined = add_up_array(others, curve)  # exact where the sum is: one plan alone reports its own epsilon
    epsilon_rdp = math.inf if negative_seen else rdp_to_epsilon(RDP_ORDERS, combined, delta)
    total = delta_with_distance(delta, epsilon_rdp, distance)
    return {"epsilon_rdp": epsilon_rdp, "epsilon_pld": math.inf, "delta": float(total), "accountant_delta": float(delta),
            "statistical_distance": float(distance), "relation": relation.name, "pld_discretization": math.nan,
            "pld_note": "no PLD: DP-SGD's lattice noise is accounted by its proven RDP curve only"}


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


def _not_evaluated(exc: BaseException) -> AccountingError:
    # one line, no traceback
    return AccountingError(f"the accountants could not evaluate this accounting ({type(exc).__name__}); "
                           "use a larger noise multiplier or fewer steps")
