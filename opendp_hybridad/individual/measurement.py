"""The individual filter as an OpenDP measurement whose output is an OpenDP queryable.

``make_individual_filter(domain, metric, ...)`` is a measurement from the frame
domain (add/remove one individual, ``symmetric_distance``) whose function opens an
:class:`IndividualFilter` on the data and returns ``dp.new_queryable`` over it;
each query is an :class:`IndividualQuery` (functions and a noise scale).

Its privacy map states the per-individual guarantee, which holds however many
queries are asked:

* Rényi form: a ``RenyiDivergence`` curve equal to ``B`` for orders up to ``alpha``
  (Rényi divergence is non-decreasing in the order) and unbounded above it;
* Gaussian-DP form: ``mu``-GDP implies ``mu^2 / 2``-zCDP (a mu-GDP mechanism is
  post-processing of a Gaussian with sensitivity 1 and noise 1/mu, whose Rényi
  curve is ``alpha mu^2 / 2``; Dong, Roth and Su 2022), so the map is in OpenDP's
  ``ZeroConcentratedDivergence``.

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

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import schema_of
from opendp_hybridad.individual.filter import IndividualFilter
from opendp_hybridad.symbolic.function import RecordFunction


@dataclass(frozen=True)
class IndividualQuery:
    """One query to the filter: noisy sums of ``functions`` with Gaussian noise of ``noise_scale``."""

    functions: tuple[RecordFunction, ...]
    noise_scale: float
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def make_individual_filter(input_domain: Any, input_metric: Any, *, budget: float, kind: str = "renyi",
                           alpha: float | None = None, ledger: str = ":memory:", id_column: str | None = None):
    """Measurement: frame -> queryable of noisy sums with per-individual accounting (see module docstring)."""
    import opendp.prelude as dp

    schema = schema_of(input_domain)
    if not str(input_metric).startswith("SymmetricDistance"):
        raise DeclarationError("the individual filter is stated for adding or removing one individual (symmetric_distance)")
    if kind == "renyi":
        if alpha is None or not alpha > 1:
            raise DeclarationError("the Renyi filter needs an order alpha > 1")
        measure = dp.renyi_divergence()

        def privacy_map(d_in: Any) -> Any:
            if int(d_in) > 1:
                raise DeclarationError("the individual guarantee is for one individual (d_in = 1); apply group privacy explicitly")
            if int(d_in) == 0:
                return lambda order: 0.0
            return lambda order: float(budget) if order <= alpha else math.inf
    elif kind == "gdp":
        measure = dp.zero_concentrated_divergence()

        def privacy_map(d_in: Any) -> Any:
            if int(d_in) > 1:
                raise DeclarationError("the individual guarantee is for one individual (d_in = 1); apply group privacy explicitly")
            return 0.0 if int(d_in) == 0 else math.nextafter(budget * budget / 2.0, math.inf)
    else:
        raise DeclarationError("kind must be 'renyi' or 'gdp'")

    def open_filter(frame: Any) -> Any:
        flt = IndividualFilter(frame, schema, budget=budget, kind=kind, alpha=alpha, ledger=ledger, id_column=id_column)

        def transition(query: Any, _is_internal: bool) -> Any:
            if not isinstance(query, IndividualQuery):
                raise DeclarationError("queries to the individual filter are IndividualQuery objects")
            answer = flt.sum_vector(list(query.functions), query.noise_scale, label=query.label)
            return answer.tolist()

        return dp.new_queryable(transition)

    return dp.m.make_user_measurement(input_domain, input_metric, measure, open_filter, privacy_map)
