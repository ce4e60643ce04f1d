"""Private releases: calibration, composition with plain OpenDP, odometers and filters, dp-accounting bridge.

``make_private_*`` return plain OpenDP measurements; their scale, sensitivity and event are read with
``accounting_of``. OpenDP's features are enabled once for the suite in ``conftest.py``.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from dp_accounting import pld, rdp

import opendp_hybridad as hd
from opendp_hybridad.accounting import AccountingError, accounted, accounting_of, compose_epsilon, to_measure
from opendp_hybridad.frame import feature_distance, make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of
from opendp_hybridad.frame.measurements import make_mean_of, make_private_count, make_private_mean, make_private_sum

SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=40), weight=hd.Field(40, 200, missing="impute", impute=70),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
A, W, H = SCHEMA.symbols()
BMI = SCHEMA.function(A * W / H**2)


def bdims():
    from opendp_hybridad.datasets import load_bdims

    return load_bdims()[["age", "weight", "height"]]


def test_private_sum_is_calibrated_to_the_certified_sensitivity():
    q = make_private_sum(SCHEMA, BMI, epsilon=1.0)
    assert isinstance(q, dp.Measurement)
    record = accounting_of(q)
    assert record.mechanism == "laplace"
    assert record.sensitivity >= BMI.range().upper
    assert record.scale == pytest.approx(record.sensitivity, rel=1e-12)
    assert q.map(1) <= 1.0
    g = make_private_sum(SCHEMA, BMI, rho=0.5)
    gr = accounting_of(g)
    assert gr.mechanism == "gaussian" and g.map(1) <= 0.5
    assert gr.scale == pytest.approx(gr.sensitivity, rel=1e-9)  # sigma = Delta / sqrt(2 rho) = Delta
    assert np.isfinite(q(bdims()))
    with pytest.raises(hd.DeclarationError, match="exactly one"):
        make_private_sum(SCHEMA, BMI, epsilon=1.0, rho=1.0)
    with pytest.raises(hd.DeclarationError, match="positive"):
        make_private_sum(SCHEMA, BMI, epsilon=-1.0)


def test_feature_level_relation_needs_far_less_noise():
    r = 0.01
    feat = make_private_sum(SCHEMA, BMI, feature_distance(2), epsilon=1.0, d_in=r)
    add = make_private_sum(SCHEMA, BMI, epsilon=1.0)
    assert accounting_of(feat).sensitivity <= r * BMI.lipschitz().upper * (1 + 1e-9) + 1
    assert accounting_of(add).scale / accounting_of(feat).scale > 50


def test_mean_with_known_size_and_with_private_count():
    data = bdims()
    n = len(data)
    domain = make_frame_domain(SCHEMA, size=n)  # the public size is part of the domain
    t = make_mean_of(domain, dp.change_one_distance(), BMI)
    true_mean = float(np.mean(BMI.compile()(data)))
    assert t(data) == pytest.approx(true_mean, rel=1e-12)
    assert t.map(1) >= (BMI.range().upper - BMI.range().lower) / n
    with pytest.raises(Exception, match="exactly 507 records"):
        t(data.iloc[:10])
    known = make_private_mean(SCHEMA, BMI, dp.change_one_distance(), size=n, epsilon=1.0)
    assert isinstance(known, dp.Measurement) and known.map(1) <= 1.0
    measurement = make_private_mean(SCHEMA, BMI, epsilon=1.0)  # one measurement: composition >> post-processing
    assert isinstance(measurement, dp.Measurement)
    assert measurement.map(1) <= 1.0 + 1e-12
    record = accounting_of(measurement)
    sum_part, count_part = record.parts
    assert (sum_part.mechanism, count_part.mechanism) == ("laplace", "laplace")
    assert record.dp_event() == dp_accounting.ComposedDpEvent([sum_part.dp_event(), count_part.dp_event()])
    # each part's epsilon is 1 / noise multiplier (rounded down, so at least OpenDP's share); the shares add up to 1
    assert 1 / sum_part.noise_multiplier + 1 / count_part.noise_multiplier == pytest.approx(1.0, rel=1e-9)
    value = measurement(data)
    lo, hi = BMI.range().lower, BMI.range().upper
    assert lo <= value <= hi


def test_ours_compose_with_plain_opendp_in_make_composition():
    from opendp_hybridad.frame import then_row_map

    ours = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    space = (make_frame_domain(SCHEMA), dp.symmetric_distance())
    # a plain OpenDP pipeline on the same input: OpenDP's own count and Laplace noise
    plain_count = space >> then_row_map(BMI) >> dp.t.then_count() >> dp.m.then_laplace(4.0)
    both = dp.c.make_composition([ours, plain_count])
    assert both.map(1) == pytest.approx(ours.map(1) + plain_count.map(1))
    release = both(bdims())
    assert len(release) == 2
    # in zCDP, next to a plain OpenDP Gaussian
    plain_gauss = space >> then_row_map(BMI) >> dp.t.then_count() >> dp.m.then_gaussian(3.0)
    mixed = dp.c.make_composition([to_measure(ours, "zcdp"), plain_gauss])
    assert mixed.map(1) == pytest.approx(to_measure(ours, "zcdp").map(1) + plain_gauss.map(1))
    # and in approximate DP, each converted by OpenDP
    approx = dp.c.make_composition([to_measure(ours, "approx"), dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(plain_gauss), 1e-7)])
    eps, delta = approx.map(1)
    assert eps > ours.map(1) and delta == pytest.approx(1e-7)
    # a converted measurement keeps its accounting record
    assert accounting_of(to_measure(ours, "approx")) is accounting_of(ours)


def test_privacy_filter_over_a_fully_adaptive_odometer_refuses_the_query_past_the_budget():
    space = (make_frame_domain(SCHEMA), dp.symmetric_distance())
    odometer = dp.c.make_fully_adaptive_composition(*space, dp.max_divergence())
    flt = dp.c.make_privacy_filter(odometer, d_in=1, d_out=1.0)
    queryable = flt(bdims())
    first = make_private_sum(SCHEMA, BMI, epsilon=0.6)
    second = make_private_sum(SCHEMA, BMI, epsilon=0.3)
    third = make_private_count(SCHEMA, epsilon=0.3)
    assert np.isfinite(queryable(first))
    assert np.isfinite(queryable(second))
    with pytest.raises(Exception, match=r"(?i)budget|exceed|filter"):
        queryable(third)


def test_accounting_helper_agrees_with_dp_accounting_by_hand():
    a = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    b = make_private_sum(SCHEMA, BMI, rho=0.1)
    c = accounted((dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)) >> dp.m.then_gaussian(2.0), k=-1074)
    assert isinstance(c, dp.Measurement)
    report = compose_epsilon([a, b, c], delta=1e-6)
    ra, rb = accounting_of(a), accounting_of(b)
    event = dp_accounting.ComposedDpEvent([
        dp_accounting.LaplaceDpEvent(ra.scale / ra.sensitivity),
        dp_accounting.GaussianDpEvent(rb.scale / rb.sensitivity),
        dp_accounting.GaussianDpEvent(2.0),
    ])
    by_hand_rdp = rdp.RdpAccountant(orders=[1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])
    by_hand_rdp.compose(event)
    by_hand_pld = pld.PLDAccountant(value_discretization_interval=1e-4)
    by_hand_pld.compose(event)
    assert report["epsilon_rdp"] == pytest.approx(by_hand_rdp.get_epsilon(1e-6), rel=1e-12)
    assert report["epsilon_pld"] == pytest.approx(by_hand_pld.get_epsilon(1e-6), rel=1e-12)
    assert report["epsilon_pld"] <= report["epsilon_rdp"]


@pytest.mark.parametrize("rho", [0.01, 0.125, 2.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-9])
def test_gaussian_epsilon_from_the_bridge_matches_opendp_conversion(rho, delta):
    g = make_private_sum(SCHEMA, BMI, rho=rho)
    report = compose_epsilon([g], delta)
    opendp_eps, opendp_delta = to_measure(g, "approx", delta=delta).map(1)
    assert opendp_delta == delta
    # the same Renyi curve (alpha * rho) converted to (epsilon, delta): dp-accounting's
    # RDP accountant works on a grid of orders, OpenDP over all of them
    assert report["epsilon_rdp"] == pytest.approx(opendp_eps, rel=1e-3)
    assert report["epsilon_rdp"] >= opendp_eps * (1 - 1e-6)
    # the PLD accountant is exact for the Gaussian up to its discretisation: tighter than both
    assert report["epsilon_pld"] <= opendp_eps
    record = accounting_of(g)
    assert report["epsilon_pld"] == pytest.approx(_gaussian_epsilon(record.scale / record.sensitivity, delta), abs=2e-3)


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    """The exact (Balle and Wang 2018) epsilon of a Gaussian mechanism with noise multiplier sigma, by bisection."""
    from scipy.stats import norm

    def delta_of(eps):
        return norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_mixed_relations_are_not_composed():
    a = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    b = make_private_sum(SCHEMA, BMI, dp.change_one_distance(), epsilon=0.5)
    with pytest.raises(AccountingError, match="different neighbouring relations"):
        compose_epsilon([a, b], 1e-6)


def test_sum_transformation_is_exposed_for_chaining():
    t = make_sum_of(make_frame_domain(SCHEMA), dp.symmetric_distance(), BMI)
    assert t(pd.DataFrame({"age": [90.0], "weight": [200.0], "height": [1.4]})) == pytest.approx(90 * 200 / 1.96)


# -- property tests for the count and the mean ----------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BOX = {"age": (18.0, 90.0), "weight": (40.0, 200.0), "height": (1.4, 2.2)}
_value = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 250))
_record = st.one_of(st.tuples(*[st.sampled_from(b) for b in BOX.values()]), st.tuples(_value, _value, _value))


def _frame(rows):
    return pd.DataFrame(rows, columns=list(BOX), dtype=float)


@settings(max_examples=60, deadline=None)
@given(st.lists(_record, max_size=15), st.lists(_record, min_size=1, max_size=3))
def test_count_stability_under_add_remove(rows, added):
    from opendp_hybridad.frame import make_count_of

    dropping = hd.Schema(age=hd.Field(18, 90, missing="drop"), weight=hd.Field(40, 200, missing="impute", impute=70),
                         height=hd.Field(1.4, 2.2, missing="drop"))
    t = make_count_of(make_frame_domain(dropping), dp.symmetric_distance())
    assert abs(t(_frame(rows + added)) - t(_frame(rows))) <= t.map(len(added))


@settings(max_examples=60, deadline=None)
@given(st.lists(_record, min_size=1, max_size=15), st.data())
def test_mean_with_known_size_under_replace(rows, data):
    t = make_mean_of(make_frame_domain(SCHEMA, size=len(rows)), dp.change_one_distance(), BMI)
    i = data.draw(st.integers(0, len(rows) - 1))
    neighbour = [*rows[:i], data.draw(_record), *rows[i + 1:]]
    assert abs(t(_frame(neighbour)) - t(_frame(rows))) <= t.map(1)
    # the same pair seen as add/remove twice (OpenDP's sized convention: d_in = 2)
    s = make_mean_of(make_frame_domain(SCHEMA, size=len(rows)), dp.symmetric_distance(), BMI, len(rows))
    assert abs(s(_frame(neighbour)) - s(_frame(rows))) <= s.map(2)


def test_private_vector_of_sums():
    from opendp_hybridad.frame import make_private_sum_vector

    fs = [BMI, SCHEMA.function(W - 100)]
    lap = make_private_sum_vector(SCHEMA, fs, epsilon=1.0)
    gau = make_private_sum_vector(SCHEMA, fs, rho=0.5)
    assert lap.map(1) <= 1.0 and gau.map(1) <= 0.5
    assert len(lap(bdims())) == 2 and len(gau(bdims())) == 2
    assert compose_epsilon([lap, gau], 1e-6)["epsilon_pld"] > 0


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (pd.DataFrame({"age": [30.0], "weight": [70.0]}), "column 'height' is missing"),
        (pd.DataFrame({"age": ["thirty"], "weight": [70.0], "height": [1.7]}), "column 'age' has dtype"),
        ([[30.0, 70.0, 1.7]], "expected a pandas DataFrame"),
    ],
)
def test_bad_frames_get_a_clear_error_through_the_whole_pipeline(bad, fragment):
    q = make_private_sum(SCHEMA, BMI, epsilon=1.0)
    # checked first by release: this library's error, naming the column
    with pytest.raises(hd.SchemaMismatchError, match=fragment):
        hd.release(q, bad)
    assert not q.input_domain.member(bad)  # OpenDP's member callback answers, never raises
    # called directly, OpenDP runs the function on the non-member, which refuses it inside OpenDP's wrapper
    with pytest.raises(dp.OpenDPException, match=fragment):
        q(bad)


def test_awkward_but_valid_frames_are_clamped_or_imputed():
    q = make_private_sum(SCHEMA, BMI, epsilon=1.0)
    # a height recorded in the weight column, NaN, inf, an empty frame: all released
    awkward = pd.DataFrame({"age": [30.0, np.nan, np.inf], "weight": [1.75, 80.0, -np.inf], "height": [1.75, np.nan, 1e9]})
    assert np.isfinite(q(awkward))
    assert np.isfinite(q(awkward.iloc[0:0]))
    t = make_sum_of(make_frame_domain(SCHEMA), dp.symmetric_distance(), BMI)
    expected = 30 * 40 / 1.75**2 + 40 * 80 / 1.7**2 + 90 * 40 / 2.2**2
    assert t(awkward) == pytest.approx(expected, rel=1e-12)


# -- relation objects and rounding in accounting (issue 10) ------------------------------------
def test_accounted_measurements_hold_relation_objects_and_round_the_multiplier_down():
    from fractions import Fraction

    from opendp_hybridad.accounting import noise_accounting
    from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, FeatureLevel

    a = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    b = make_private_sum(SCHEMA, BMI, dp.change_one_distance(), epsilon=0.5)
    f = make_private_sum(SCHEMA, BMI, feature_distance(2), epsilon=0.5, d_in=0.01)
    ra, rb, rf = accounting_of(a), accounting_of(b), accounting_of(f)
    assert (ra.relation, rb.relation, rf.relation) == (ADD_REMOVE, REPLACE_ONE, FeatureLevel(2))
    # names (old style) are accepted and become the same objects
    legacy = noise_accounting(1, "laplace", ra.scale, ra.sensitivity, "REPLACE_ONE")
    assert legacy.relation is REPLACE_ONE
    assert compose_epsilon([b, legacy], 1e-6)["relation"] == "replace_one"
    with pytest.raises(AccountingError, match="different neighbouring relations"):
        compose_epsilon([a, f], 1e-6)
    for m in (a, b, f):
        r = accounting_of(m)
        # rounded down: the loss dp-accounting reports from it can only be larger
        assert Fraction(r.noise_multiplier) <= Fraction(r.scale) / Fraction(r.sensitivity)
        # and never below what OpenDP's own map implies (epsilon = 1 / multiplier for Laplace)
        assert Fraction(r.noise_multiplier) <= 1 / Fraction(m.map(r.d_in))
    third = noise_accounting(1, "laplace", 1.0, 3.0)
    assert Fraction(third.noise_multiplier) <= Fraction(1, 3)


def test_size_limit_and_public_size_live_in_the_domain():
    domain = make_frame_domain(SCHEMA, size_limit=100)
    with pytest.raises(hd.DeclarationError, match="size_limit is part of the frame domain"):
        make_sum_of(domain, dp.symmetric_distance(), BMI, size_limit=1000)
    assert make_sum_of(domain, dp.symmetric_distance(), BMI, size_limit=100).map(1) < make_sum_of(
        make_frame_domain(SCHEMA), dp.symmetric_distance(), BMI).map(1)  # a smaller relaxation
    with pytest.raises(hd.DeclarationError, match="size_limit is part of the frame domain"):
        make_private_sum(domain, BMI, epsilon=1.0, size_limit=1000)
    with pytest.raises(hd.DeclarationError, match="needs a domain that fixes it"):
        make_mean_of(domain, dp.change_one_distance(), BMI)
    with pytest.raises(hd.DeclarationError, match="public size is part of the frame domain"):
        make_private_mean(domain, BMI, dp.change_one_distance(), size=10, epsilon=1.0)
    sized = make_frame_domain(SCHEMA, size_limit=100, size=10)
    with pytest.raises(hd.DeclarationError, match="differs from the domain's size"):
        make_mean_of(sized, dp.change_one_distance(), BMI, 11)
    assert make_private_mean(sized, BMI, dp.change_one_distance(), epsilon=1.0).map(1) <= 1.0
