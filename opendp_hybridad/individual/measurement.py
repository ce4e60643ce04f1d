"""The individual filter as an OpenDP measurement whose output is an OpenDP queryable.

``make_individual_filter(domain, metric, ...)`` is a measurement from a frame domain
whose function opens an :class:`IndividualFilter` on the data and returns
``dp.new_queryable`` over it; each query is an :class:`IndividualQuery` (functions
and a noise scale).

**Relation.** Only adding or removing one individual: ``dp.symmetric_distance()``
when every row is an individual, or :func:`individual_distance` ``(id_column)``
(all of one individual's rows added or removed) when rows share ids. Row-level
symmetric distance with an id column is refused: adding one row to a person who
is already there changes their data, and so possibly their admission, which is
the replace-one situation (see ``docs/individual.md``). Replace-one and the
feature-level relation are refused for the same reason.

**Domain.** The frame domain's ``size_limit`` is the one the float allowance is
computed for; the domain's identifier carries it, and the function checks
membership before anything is computed. Every member frame is answered (no
exception depends on the data, see :class:`IndividualFilter`).

Its privacy map states the per-individual guarantee, which holds however many
queries are asked:

* Rényi form: a ``RenyiDivergence`` curve equal to ``B`` for orders up to ``alpha``
  (Rényi divergence is non-decreasing in the order) and unbounded above it;
* Gaussian-DP form: the filter keeps ``sum_t c_t^2 / sigma_t^2 <= mu^2``; OpenDP
  proves its Gaussian ``c^2 / (2 sigma^2)``-zCDP, so the Rényi filter at every order
  gives ``mu^2 / 2``-zCDP (``ZeroConcentratedDivergence``), rounded up.

**Accounting.** The Gaussian-DP form with one row per individual (no ``id_column``)
carries its zCDP guarantee as a dp-accounting ``ZCDpEvent(mu^2 / 2)`` under add/remove
(:func:`~opendp_hybridad.accounting.accounting_of`), so
:func:`~opendp_hybridad.accounting.compose_epsilon` accepts it (RDP only: dp-accounting's PLD
accountant has no zCDP event). The Rényi form (a bound at orders up to ``alpha`` only) has
no dp-accounting event, nor has a filter over whole individuals (``id_column``), whose
relation no other measurement here shares; both are refused there with ``AccountingError``.

Relation to OpenDP's ``make_privacy_filter``: that filter charges every query its
worst-case loss for every individual, and stops the whole queryable when the
budget is spent. This one charges each individual their own loss and only leaves
out the individuals whose budget is spent; the guarantee is the same kind
(a fixed budget per person), stated per individual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dp_accounting

from opendp_hybridad.accounting import Accounting, with_accounting
from opendp_hybridad.analysis.rounding import div_up, mul_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import as_frame_domain
from opendp_hybridad.individual.filter import REFUSAL, IndividualFilter, check_relation
from opendp_hybridad.opendp_compat import to_then
from opendp_hybridad.relations import ADD_REMOVE
from opendp_hybridad.symbolic.function import RecordFunction

_INDIVIDUAL_PREFIX = "AddRemoveIndividual("


@dataclass(frozen=True)
class IndividualQuery:
    """One query to the filter: noisy sums of ``functions`` with Gaussian noise of ``noise_scale``."""

    functions: tuple[RecordFunction, ...]
    noise_scale: float
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def individual_distance(id_column: str) -> Any:
    """OpenDP metric: the number of individuals (all rows sharing an id in ``id_column``) added or removed.

    Changing one individual's rows is distance 2 (remove them, add them back changed).
    """
    import opendp.prelude as dp

    dp.assert_features("honest-but-curious")  # a user-defined distance
    if not isinstance(id_column, str) or not id_column:
        raise DeclarationError("id_column must be a column name")
    return dp.user_distance(f"{_INDIVIDUAL_PREFIX}{id_column})")


def _check_metric(input_metric: Any, id_column: str | None) -> None:
    name = str(input_metric)
    if id_column is not None:
        if name == f"{_INDIVIDUAL_PREFIX}{id_column})":
            return
        if name.startswith("SymmetricDistance"):
            raise DeclarationError(
                "with an id column the filter needs individual_distance(id_column) (whole individuals added or "
                "removed): under symmetric_distance one added row changes the data of a person who is already "
                "there, so their admission can differ, as under replace-one (see docs/individual.md)")
        if name.startswith(_INDIVIDUAL_PREFIX):
            raise DeclarationError("the metric names another id column than the filter's")
    elif name.startswith(_INDIVIDUAL_PREFIX):
        raise DeclarationError("individual_distance needs the filter's id_column")
    try:
        check_relation(input_metric)
    except DeclarationError as exc:
        if "unsupported neighbouring relation" in str(exc):
            raise DeclarationError(REFUSAL.format(name=name)) from None
        raise


# the filter of each kind of frame domain, by the domain's class name (imported when a filter is built):
# a new engine is a filter module plus a line here
FILTERS = {
    "FrameDomain": "opendp_hybridad.individual.filter:IndividualFilter",
    "DaskFrameDomain": "opendp_hybridad.individual.dask_filter:DaskIndividualFilter",
}


def filter_for(domain: Any) -> type[IndividualFilter]:
    """The filter class for a frame domain: pandas and polars frames, or Dask frames (``make_dask_frame_domain``)."""
    import importlib

    path = FILTERS.get(type(domain).__name__)
    if path is None:
        raise DeclarationError(f"no individual filter for a {type(domain).__name__}")
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def make_individual_filter(input_domain: Any, input_metric: Any, *, budget: float, kind: str = "renyi",
                           alpha: float | None = None, ledger: str = ":memory:", id_column: str | None = None,
                           max_rows: int = 1024):
    """Measurement: frame -> queryable of noisy sums with per-individual accounting (see module docstring).

    ``input_domain`` from ``make_frame_domain`` (pandas or polars frames) or from
    ``make_dask_frame_domain`` (Dask frames: the filter is
    :class:`~opendp_hybridad.individual.dask_filter.DaskIndividualFilter`, same guarantee and charges).
    """
    import opendp.prelude as dp

    # make_user_measurement needs both, new_queryable and the Gaussian noise contrib: asked before any work
    dp.assert_features("contrib", "honest-but-curious")
    domain = as_frame_domain(input_domain)
    _check_metric(input_metric, id_column)
    if not (isinstance(budget, (int, float)) and budget > 0 and math.isfinite(budget)):
        raise DeclarationError("the per-individual budget must be a positive finite number")
    budget = float(budget)

    def check_d_in(d_in: Any) -> int:
        d = int(d_in)
        if d != d_in or d < 0:
            raise DeclarationError("d_in counts individuals: a non-negative whole number")
        if d > 1:
            raise DeclarationError("the individual guarantee is for one individual (d_in = 1); apply group privacy explicitly")
        return d

    if kind == "renyi":
        if alpha is None or not (alpha > 1 and math.isfinite(alpha)):
            raise DeclarationError("the Renyi filter needs a finite order alpha > 1")
        measure = dp.renyi_divergence()
        record = None

        def privacy_map(d_in: Any) -> Any:
            if check_d_in(d_in) == 0:
                return lambda order: 0.0
            return lambda order: budget if order <= alpha else math.inf
    elif kind == "gdp":
        measure = dp.zero_concentrated_divergence()
        rho = div_up(mul_up(budget, budget), 2.0)

        def privacy_map(d_in: Any) -> Any:
            return 0.0 if check_d_in(d_in) == 0 else rho

        record = None if id_column is not None else Accounting(dp_accounting.ZCDpEvent(rho), ADD_REMOVE, 1, "zcdp-filter")
    else:
        raise DeclarationError("kind must be 'renyi' or 'gdp'")

    filter_class = filter_for(domain)

    def open_filter(frame: Any) -> Any:
        flt = filter_class(frame, domain, budget=budget, kind=kind, alpha=alpha, ledger=ledger,
                           id_column=id_column, max_rows=max_rows)

        def transition(query: Any, _is_internal: bool) -> Any:
            if not isinstance(query, IndividualQuery):
                raise DeclarationError("queries to the individual filter are IndividualQuery objects")
            answer = flt.sum_vector(list(query.functions), query.noise_scale, label=query.label)
            return answer.tolist()

        return dp.new_queryable(transition)

    measurement = dp.m.make_user_measurement(input_domain, input_metric, measure, open_filter, privacy_map)
    return measurement if record is None else with_accounting(measurement, record)


then_individual_filter = to_then(make_individual_filter)
