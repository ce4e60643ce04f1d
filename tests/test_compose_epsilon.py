"""compose_epsilon: the PLD sized for the whole composition, inf (with a note) where nothing fits,
and accounting_of refusing objects that answer every attribute (OpenDP's Context queries)."""

from __future__ import annotations

import math

import dp_accounting
import pytest

from opendp_hybridad import pld_size
from opendp_hybridad.accounting import AccountingError, accounting_of, compose_epsilon


def _laplace_delta(epsilon: float, epsilon0: float) -> float:
    """Exact privacy profile of one Laplace mechanism with epsilon0 = sensitivity / scale."""
    return 0.0 if epsilon >= epsilon0 else 1.0 - math.exp((epsilon - epsilon0) / 2.0)


def test_a_composition_too_wide_for_the_interval_is_coarsened_and_stays_an_upper_bound(monkeypatch):
    events = [dp_accounting.LaplaceDpEvent(0.05) for _ in range(4)]  # epsilon 20 each: supports of 40 nats
    monkeypatch.setattr(pld_size, "MAX_COMPOSED_POINTS", 2**12)
    out = compose_epsilon(events, 1e-6)
    total_width = 4 * 2 / 0.05
    assert out["pld_discretization"] * (2**12 - 2) >= total_width  # the composed support fits
    assert out["pld_discretization"] > 1e-4
    # sound against the pure-DP truth: 4 Laplace of epsilon 20 are at most 80-DP, and the
    # composition's epsilon at this delta is at least one mechanism's exact epsilon
    single = 20.0 + 2.0 * math.log1p(-1e-6)  # where one Laplace's exact delta(eps) = 1e-6
    assert _laplace_delta(single, 20.0) == pytest.approx(1e-6, rel=1e-9)
    # and no more than pure composition, give or take one (pessimistic) interval per mechanism
    assert single <= out["epsilon_pld"] <= 80.0 + 4 * out["pld_discretization"]


def test_the_default_interval_is_kept_when_the_composition_fits():
    out = compose_epsilon([dp_accounting.LaplaceDpEvent(1.0), dp_accounting.GaussianDpEvent(2.0)], 1e-5)
    assert out["pld_discretization"] == 1e-4
    assert math.isfinite(out["epsilon_pld"]) and "pld_note" not in out


def test_no_interval_fits_gives_an_infinite_pld_with_a_note_and_the_rdp_figure(monkeypatch):
    monkeypatch.setattr(pld_size, "MAX_DISCRETIZATION", 1e-3)
    monkeypatch.setattr(pld_size, "MAX_COMPOSED_POINTS", 2**10)
    out = compose_epsilon([dp_accounting.GaussianDpEvent(0.05)] * 3, 1e-5)
    assert out["epsilon_pld"] == math.inf and "pld_note" in out and math.isnan(out["pld_discretization"])
    assert math.isfinite(out["epsilon_rdp"])


class _AnswersEverything:
    """Like OpenDP's LazyFrameQuery: any attribute, even __class__, is a callable."""

    def __getattribute__(self, name):
        return lambda *a, **k: None


def test_an_object_that_answers_every_attribute_carries_no_event():
    with pytest.raises(AccountingError):
        accounting_of(_AnswersEverything())
    with pytest.raises(AccountingError):
        compose_epsilon([_AnswersEverything()], 1e-5)


def test_a_context_query_carries_no_event():
    pl = pytest.importorskip("polars")
    import opendp.prelude as dp

    context = dp.Context.compositor(data=pl.LazyFrame({"x": [1.0, 2.0]}), privacy_unit=dp.unit_of(contributions=1),
                                    privacy_loss=dp.loss_of(epsilon=1.0), split_evenly_over=1)
    query = context.query().select(pl.col("x").fill_null(0.0).dp.sum((0.0, 5.0)))
    with pytest.raises(AccountingError):
        accounting_of(query)
