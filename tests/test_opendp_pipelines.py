"""This library's measurements used the way OpenDP's documentation builds pipelines.

Every ``make_private_*`` is a plain ``dp.Measurement``: chained with ``>>``, composed by
``make_composition`` and the adaptive compositions, asked by a privacy filter over a fully
adaptive odometer, searched by ``binary_search_param``, mapped and checked. Also: the one
accountant entry point (``compose_epsilon``) over a mix of releases against dp-accounting
by hand, ``hd.release`` (the library's membership error before any private computation),
the ``then_*`` forms, and that the library enables no OpenDP feature.
"""

from __future__ import annotations

import inspect
import math
import pathlib
import subprocess
import sys
from fractions import Fraction

import dp_accounting
import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from dp_accounting import rdp

import opendp_hybridad as hd
from opendp_hybridad.accounting import (
    RDP_ORDERS,
    AccountingError,
    accounting_of,
    compose_epsilon,
    to_measure,
    with_accounting,
)
from opendp_hybridad.frame import (
    make_frame_domain,
    make_private_count,
    make_private_mean,
    make_private_sum,
    make_sum_of,
    then_private_count,
    then_private_mean,
    then_private_sum,
    then_row_map,
    then_sum_of,
)
from opendp_hybridad.relations import ADD_REMOVE

SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=40), weight=hd.Field(40, 200, missing="impute", impute=70),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
A, W, H = SCHEMA.symbols()
BMI = SCHEMA.function(A * W / H**2)
DELTA = 1e-6


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    from opendp_hybridad.datasets import load_bdims

    return load_bdims()[["age", "weight", "height"]]


@pytest.fixture(scope="module")
def space():
    return make_frame_domain(SCHEMA), dp.symmetric_distance()


# -- measurements are measurements ----------------------------------------------------------
def test_every_make_private_returns_one_plain_measurement(space):
    made = [make_private_sum(SCHEMA, BMI, epsilon=1.0), make_private_count(SCHEMA, epsilon=1.0),
            make_private_mean(SCHEMA, BMI, epsilon=1.0),  # private count: composition >> post-processing
            make_private_mean(SCHEMA, BMI, dp.change_one_distance(), size=507, epsilon=1.0)]
    for m in made:
        assert type(m) is dp.Measurement  # the exact type OpenDP's type inference needs
        assert accounting_of(m).relation in (ADD_REMOVE, accounting_of(made[3]).relation)


def test_postprocessing_with_rshift_keeps_the_map_and_releases(space, data):
    q = make_private_sum(SCHEMA, BMI, epsilon=1.0)
    n = len(data)
    mean = q >> dp.new_function(lambda s: s / n, TO=float)
    assert mean.map(1) == q.map(1)
    assert math.isfinite(mean(data))
    # a chain is a new OpenDP object: it carries a record only when given one (post-processing keeps it valid)
    with pytest.raises(AccountingError, match="carries no dp-accounting event"):
        accounting_of(mean)
    assert accounting_of(with_accounting(mean, accounting_of(q))) is accounting_of(q)


def test_then_forms_chain_from_a_space_and_match_make(space, data):
    chained = space >> then_private_sum(BMI, epsilon=0.5)
    made = make_private_sum(space[0], BMI, space[1], epsilon=0.5)
    assert chained.map(1) == made.map(1) <= 0.5
    assert accounting_of(chained).scale == accounting_of(made).scale
    assert (space >> then_private_count(epsilon=0.25)).map(1) <= 0.25
    assert (space >> then_private_mean(BMI, epsilon=0.5)).map(1) <= 0.5 + 1e-12
    # OpenDP's own convention: the then_ form has make_'s signature without domain and metric, and its docstring
    parameters = list(inspect.signature(then_private_sum).parameters)
    assert parameters[0] == "function" and "metric" not in parameters and "domain_or_schema" not in parameters
    assert next(iter(inspect.signature(then_sum_of).parameters)) == "function"
    assert "certified sensitivity" in then_private_sum.__doc__ and then_private_sum.__name__ == "then_private_sum"


def test_a_chain_map_is_what_opendp_reports(space):
    """make_private_sum is the sum transformation >> OpenDP's Laplace at the recorded scale: the same map, bit for bit."""
    q = make_private_sum(SCHEMA, BMI, epsilon=0.8)
    record = accounting_of(q)
    by_hand = space >> then_sum_of(BMI) >> dp.m.then_laplace(record.scale)
    for d_in in (0, 1, 2, 5):
        assert q.map(d_in) == by_hand.map(d_in)
    assert record.sensitivity == make_sum_of(space[0], space[1], BMI).map(1)
    # and the transformation's own map is OpenDP's symmetric-distance stability, composed by OpenDP
    plain = space >> then_row_map(BMI) >> dp.t.then_count() >> dp.m.then_laplace(2.0)
    assert plain.map(3) == pytest.approx(3 / 2.0)


def test_map_and_check():
    q = make_private_sum(SCHEMA, BMI, epsilon=1.0)
    assert q.map(1) <= 1.0 and q.check(1, 1.0)
    assert not q.check(1, 0.999)  # calibrated to the target, not far below it
    # OpenDP's map at any d_in, beyond the one the accounting records: slope x d_in + the float-sum relaxation
    assert q.map(1) < q.map(2) <= 2 * q.map(1)
    g = make_private_sum(SCHEMA, BMI, rho=0.5)
    assert g.check(1, 0.5) and not g.check(1, 0.49)


def test_make_composition_of_ours_and_opendp_own(space, data):
    s = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    c = make_private_count(SCHEMA, epsilon=0.25)
    plain = space >> then_row_map(BMI) >> dp.t.then_count() >> dp.m.then_laplace(8.0)
    both = dp.c.make_composition([s, c, plain])
    assert both.map(1) == pytest.approx(s.map(1) + c.map(1) + plain.map(1), rel=1e-12)
    assert both.map(1) >= s.map(1) + c.map(1) + plain.map(1)  # OpenDP adds with rounding up
    total, count, plain_count = both(data)
    assert math.isfinite(total) and math.isfinite(count) and plain_count >= 0


def test_adaptive_composition_answers_queries_until_its_declared_budgets(space, data):
    adaptive = dp.c.make_adaptive_composition(*space, dp.max_divergence(), d_in=1, d_mids=[0.5, 0.25])
    assert adaptive.map(1) == pytest.approx(0.75)
    queryable = adaptive(data)
    assert math.isfinite(queryable(make_private_sum(SCHEMA, BMI, epsilon=0.5)))
    assert math.isfinite(queryable(make_private_count(SCHEMA, epsilon=0.25)))
    with pytest.raises(dp.OpenDPException):
        queryable(make_private_count(SCHEMA, epsilon=0.25))  # no third query was declared


def test_privacy_filter_over_a_fully_adaptive_composition_refuses_past_the_budget(space, data):
    odometer = dp.c.make_fully_adaptive_composition(*space, dp.max_divergence())
    flt = dp.c.make_privacy_filter(odometer, d_in=1, d_out=1.0)
    queryable = flt(data)
    assert math.isfinite(queryable(make_private_sum(SCHEMA, BMI, epsilon=0.6)))
    assert math.isfinite(queryable(make_private_mean(SCHEMA, BMI, epsilon=0.3)))
    with pytest.raises(dp.OpenDPException, match=r"(?i)budget|exceed|filter"):
        queryable(make_private_count(SCHEMA, epsilon=0.3))  # 0.6 + 0.3 + 0.3 > 1
    with pytest.raises(dp.OpenDPException, match="exhausted"):  # OpenDP's filter stops for good once it refuses
        queryable(make_private_count(SCHEMA, epsilon=0.05))


def test_binary_search_param_over_epsilon_and_binary_search_chain_over_the_scale(space):
    epsilon = dp.binary_search_param(lambda e: make_private_sum(SCHEMA, BMI, epsilon=e), d_in=1, d_out=0.7)
    assert make_private_sum(SCHEMA, BMI, epsilon=epsilon).map(1) <= 0.7
    assert epsilon == pytest.approx(0.7, rel=1e-6)
    sensitivity = make_sum_of(space[0], space[1], BMI).map(1)
    chain = dp.binary_search_chain(lambda s: space >> then_sum_of(BMI) >> dp.m.then_laplace(s), d_in=1, d_out=0.5)
    assert chain.map(1) <= 0.5
    # Laplace: epsilon = sensitivity / scale, so the smallest scale meeting 0.5 is about 2 x sensitivity
    assert chain.map(1) == pytest.approx(0.5, rel=1e-6) and sensitivity > 0


# -- errors before private computation -------------------------------------------------------
@pytest.mark.parametrize(("bad", "column"), [
    (pd.DataFrame({"age": [30.0], "weight": [70.0]}), "height"),
    (pd.DataFrame({"age": ["1234.5"], "weight": [70.0], "height": [1.7]}), "age"),
])
def test_release_raises_the_library_membership_error_for_chains_and_compositions(space, bad, column):
    q = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    pipelines = [q, q >> dp.new_function(lambda s: 2 * s, TO=float),
                 dp.c.make_composition([q, make_private_count(SCHEMA, epsilon=0.5)]),
                 make_private_mean(SCHEMA, BMI, epsilon=0.5),
                 space >> then_sum_of(BMI)]
    for pipeline in pipelines:
        assert not pipeline.input_domain.member(bad)  # OpenDP's member answers, it never raises
        with pytest.raises(hd.SchemaMismatchError, match=f"column '{column}'") as err:
            hd.release(pipeline, bad)
        assert isinstance(err.value, hd.DataError) and "1234.5" not in str(err.value)
    # an odometer from a frame domain too
    odometer = dp.c.make_fully_adaptive_composition(*space, dp.max_divergence())
    with pytest.raises(hd.SchemaMismatchError, match=f"column '{column}'"):
        hd.release(odometer, bad)


def test_release_of_a_member_is_the_measurement_output(data):
    q = make_private_count(SCHEMA, epsilon=1.0)
    assert abs(hd.release(q, data) - len(data)) < 200  # Laplace(1): far below 200 with overwhelming probability
    # a plain OpenDP domain is asked through its own member
    plain = (dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)) >> dp.m.then_laplace(1.0)
    with pytest.raises(hd.DataError, match="not a member"):
        hd.release(plain, float("nan"))


def test_the_error_hierarchy_separates_declarations_from_data():
    assert issubclass(hd.SchemaMismatchError, hd.DataError) and issubclass(hd.DataError, ValueError)
    assert issubclass(AccountingError, hd.DeclarationError) and not issubclass(hd.DataError, hd.DeclarationError)
    with pytest.raises(hd.DeclarationError):
        make_private_sum(SCHEMA, BMI, epsilon=-1.0)


# -- one accountant entry point -------------------------------------------------------------
def _dpsgd_trainer(noise: str = "discrete-gaussian"):
    from opendp_hybridad.dpsgd import DPSGD
    from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

    model = MLP([Dense(3, 4, 1.0, 1.0), Dense(4, 3, 1.0, 1.0)], [Tanh(), Identity()], SoftmaxCrossEntropy(),
                input_bound=1.0, label_bound=1.0)
    return DPSGD(model, noise_multiplier=1.2, batch_size=4, epochs=2, learning_rate=0.1, noise=noise)


def test_compose_epsilon_over_a_frame_measurement_and_a_dp_sgd_run_matches_the_accounting_by_hand():
    from opendp_hybridad.dpsgd import make_dp_sgd
    from opendp_hybridad.dpsgd.accounting import rdp_to_epsilon
    from opendp_hybridad.dpsgd.noise import STATISTICAL_DISTANCE_BOUND

    n = 40
    q = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    trainer = _dpsgd_trainer()
    run = make_dp_sgd(trainer, n)
    report = compose_epsilon([q, run], DELTA)
    # by hand: dp-accounting's RDP of the Laplace event plus the run's proven RDP curve (its lattice noise
    # has no PLD: none is reported), then the sampler's distance added to delta
    by_rdp = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    by_rdp.compose(dp_accounting.LaplaceDpEvent(accounting_of(q).noise_multiplier))
    curve = np.array(trainer.rdp_curve(n))
    eps_rdp = rdp_to_epsilon(RDP_ORDERS, by_rdp.rdp + curve, DELTA)
    assert report["epsilon_rdp"] == pytest.approx(eps_rdp, rel=1e-12) and report["epsilon_rdp"] >= eps_rdp * (1 - 1e-15)
    assert report["epsilon_pld"] == math.inf and "pld_note" in report
    steps = math.ceil(2 * n / 4)
    distance = Fraction(steps * trainer.model.num_parameters) * Fraction(STATISTICAL_DISTANCE_BOUND)
    exact_delta = Fraction(DELTA) + (1 + Fraction(math.exp(report["epsilon_rdp"]))) * distance
    assert report["statistical_distance"] >= distance and report["accountant_delta"] == DELTA
    # the total includes the extra delta (rounded up)
    assert Fraction(report["delta"]) >= exact_delta * (1 - Fraction(1, 10**12))
    assert report["delta"] == pytest.approx(float(exact_delta), rel=1e-9) and report["delta"] > DELTA
    # the run's plan is the same run: same curve, same distance
    assert compose_epsilon([q, trainer.plan(n)], DELTA) == report
    # alone, the run's total agrees with the trainer's own report
    alone = compose_epsilon([run], trainer.delta)
    own = trainer.epsilon(n)
    assert own["epsilon"] <= alone["epsilon_rdp"] <= own["epsilon"] * (1 + 1e-12)
    assert alone["delta"] == pytest.approx(own["delta"], rel=1e-9)


def test_opendp_noise_adds_no_extra_delta_and_mixed_relations_are_refused():
    from opendp_hybridad.dpsgd import make_dp_sgd

    exact = make_dp_sgd(_dpsgd_trainer("opendp"), 40)
    assert accounting_of(exact).statistical_distance == 0.0
    assert compose_epsilon([exact], DELTA)["delta"] == DELTA
    replace = make_private_sum(SCHEMA, BMI, dp.change_one_distance(), epsilon=0.5)
    with pytest.raises(AccountingError, match="different neighbouring relations"):
        compose_epsilon([replace, exact], DELTA)


def test_the_gaussian_dp_individual_filter_carries_its_zcdp_event():
    from opendp_hybridad.individual.measurement import make_individual_filter

    domain = make_frame_domain(SCHEMA)
    gdp = make_individual_filter(domain, dp.symmetric_distance(), budget=1.5, kind="gdp")
    record = accounting_of(gdp)
    assert isinstance(record.dp_event(), dp_accounting.ZCDpEvent) and record.dp_event().rho >= 1.5**2 / 2
    q = make_private_sum(SCHEMA, BMI, epsilon=0.5)
    report = compose_epsilon([q, gdp], DELTA)
    by_hand = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    by_hand.compose(dp_accounting.ComposedDpEvent([accounting_of(q).dp_event(), record.dp_event()]))
    assert report["epsilon_rdp"] == by_hand.get_epsilon(DELTA)
    assert report["epsilon_pld"] == math.inf  # dp-accounting's PLD has no zCDP event
    from opendp_hybridad.individual.measurement import then_individual_filter

    chained = (domain, dp.symmetric_distance()) >> then_individual_filter(budget=1.5, kind="gdp")
    assert chained.map(1) == gdp.map(1) and accounting_of(chained) == record
    renyi = make_individual_filter(domain, dp.symmetric_distance(), budget=1.0, kind="renyi", alpha=8.0)
    with pytest.raises(AccountingError, match="carries no dp-accounting event"):
        compose_epsilon([q, renyi], DELTA)


def test_plain_opendp_measurements_need_a_record_and_to_measure_keeps_it():
    plain = (dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)) >> dp.m.then_laplace(2.0)
    with pytest.raises(AccountingError, match="carries no dp-accounting event"):
        compose_epsilon([plain], DELTA)
    g = make_private_sum(SCHEMA, BMI, rho=0.3)
    approx = to_measure(g, "approx", delta=DELTA)
    assert accounting_of(approx) is accounting_of(g)
    eps, delta = approx.map(1)
    assert delta == DELTA and eps >= compose_epsilon([g], DELTA)["epsilon_pld"]


# -- features and the partial-constructor machinery -----------------------------------------
def test_the_library_asserts_features_and_enables_none_in_a_fresh_interpreter():
    script = """
import opendp.prelude as dp
from opendp.mod import GLOBAL_FEATURES, OpenDPException
import opendp_hybridad as hd
from opendp_hybridad.frame import make_private_sum
from opendp_hybridad.individual import IndividualFilter
schema = hd.Schema(a=(0, 1))
f = schema.function(schema.symbols()[0])
for attempt in (lambda: make_private_sum(schema, f, epsilon=1.0),
                lambda: IndividualFilter(None, schema, budget=1.0, kind="gdp")):
    try:
        attempt()
    except OpenDPException as exc:
        assert "not enabled" in str(exc) and "contrib" in str(exc), str(exc)
    else:
        raise SystemExit("no assertion error")
assert GLOBAL_FEATURES == set(), GLOBAL_FEATURES
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_only_opendp_compat_touches_the_private_partial_constructor():
    package = pathlib.Path(hd.__file__).parent
    users = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if "_PartialConstructor" in p.read_text())
    assert users == ["opendp_compat.py"]


def test_numpy_release_values_do_not_depend_on_the_pipeline_form(data):
    """The same sum through make_ and through then_: the exact transformation output is identical."""
    space = (make_frame_domain(SCHEMA), dp.symmetric_distance())
    assert (space >> then_sum_of(BMI))(data) == make_sum_of(*space, BMI)(data) == pytest.approx(
        float(np.sum(BMI.compile()(data))), rel=1e-12)
