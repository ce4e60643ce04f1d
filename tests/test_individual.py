"""Individual filters and their ledger: invariants, crash safety, sharing, bad input, OpenDP form."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opendp_hybridad as hd
from opendp_hybridad.individual import IndividualFilter, LedgerError, LedgerParameters, PrivacyLedger

HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
sys.path.insert(0, HELPERS)
import workload  # noqa: E402

SCHEMA = hd.Schema(x=hd.Field(-1, 1, missing="impute", impute=0), y=hd.Field(0, 2))
X, Y = SCHEMA.symbols()
FUNCTIONS = [SCHEMA.function(X * Y), SCHEMA.function(Y**2), SCHEMA.function(hd.sigmoid(3 * X) + Y)]
value = st.floats(-3, 3)
rows = st.lists(st.tuples(value, st.floats(0, 2), st.integers(0, 6)), min_size=1, max_size=25)


def frame(data):
    return pd.DataFrame(data, columns=["x", "y", "person"])


# -- ledger invariants ---------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1.5), min_size=5, max_size=5), min_size=1, max_size=12))
def test_no_recorded_loss_ever_exceeds_the_budget_and_retirement_is_final(charges):
    ledger = PrivacyLedger(":memory:", LedgerParameters("renyi", 2.0, 4.0))
    hashes = np.arange(1, 6, dtype=np.uint64)
    retired = np.zeros(5, dtype=bool)
    expected = np.zeros(5)
    for step in charges:
        step = np.array(step)
        admitted = ledger.charge(hashes, step)
        assert not np.any(admitted & retired)  # once out, out for good
        expected += np.where(admitted, step, 0.0)
        retired |= ~admitted
        spent = ledger.spent(hashes)
        assert np.all(spent <= 2.0)
        assert np.all(spent >= expected)  # recorded (rounded up) covers every admitted charge
        assert np.all(spent <= expected * (1 + 1e-12) + 1e-300 * len(charges))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows, st.integers(0, 6), st.lists(st.integers(0, 2), min_size=3, max_size=10))
def test_an_individual_who_left_changes_no_later_answer(data, person, sequence):
    df = frame(data)
    without = df[df.person != person]
    if without.empty or (df.person == person).sum() == 0:
        return
    kw = {"kind": "renyi", "alpha": 4.0, "budget": 0.5, "id_column": "person"}
    with_p = IndividualFilter(df, SCHEMA, **kw)
    without_p = IndividualFilter(without, SCHEMA, **kw)
    p_hash = with_p.hashes_of([person])
    left = False
    for q in sequence:
        a = with_p.exact_sum_vector([FUNCTIONS[q]], 0.8)
        b = without_p.exact_sum_vector([FUNCTIONS[q]], 0.8)
        if left:
            assert a.tobytes() == b.tobytes()  # bit-identical
        left = left or bool(with_p.ledger.retired(p_hash)[0])
    # and everyone else was charged exactly the same in both worlds
    others = pd.Series(sorted(set(without.person)))
    np.testing.assert_array_equal(with_p.ledger.spent(with_p.hashes_of(others)),
                                  without_p.ledger.spent(without_p.hashes_of(others)))


def test_charges_follow_each_individuals_own_contribution():
    df = frame([(0.5, 2.0, 0), (0.5, 2.0, 0), (0.0, 1.0, 1), (-1.0, 0.0, 2)])
    flt = IndividualFilter(df, SCHEMA, kind="gdp", budget=10.0, id_column="person")
    flt.exact_sum_vector([FUNCTIONS[0]], 2.0)
    spent = flt.ledger.spent(flt.hashes_of([0, 1, 2]))
    # person 0: (0.5*2 + 0.5*2)^2 / 4 = 1; person 1: 0; person 2: 0 (all up to the float allowance)
    assert spent[0] == pytest.approx(1.0, rel=1e-5)  # plus the float allowance (u * size_limit * max|f|)
    assert spent[1] < 1e-6 and spent[2] < 1e-6
    report = flt.reports[-1]
    assert report.worst_case_charge >= (1024 * 2) ** 2 / 4  # max_rows * max|f|, squared over sigma^2


# -- durability ------------------------------------------------------------------------------
def _expected_spent(released: int) -> np.ndarray:
    flt = workload.make_filter(":memory:")
    fs = workload.query_functions()
    for k in range(released):
        flt.exact_sum_vector([fs[k % len(fs)]], workload.QUERIES_SCALE)
    return flt.spent()


@pytest.mark.parametrize("kill_after", [0.8, 1.6, 2.4])
def test_a_killed_process_loses_no_spent_budget(tmp_path, kill_after):
    path = str(tmp_path / "ledger.sqlite")
    proc = subprocess.Popen([sys.executable, os.path.join(HELPERS, "ledger_worker.py"), path, "10000", "crash"],
                            stdout=subprocess.PIPE, text=True)
    released = 0
    deadline = time.time() + kill_after + 120  # the worker's start-up (imports) can be slow on a loaded machine
    start = None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        released = int(line.split()[1])
        start = start or time.time()
        if time.time() - start >= kill_after:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert released > 0
    reopened = workload.make_filter(path)  # same parameters: continues where it stopped
    assert np.all(reopened.spent() >= _expected_spent(released))
    assert np.all(reopened.spent() <= workload.BUDGET)


def test_two_processes_sharing_a_ledger_never_spend_the_same_budget_twice(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    workload.make_filter(path)  # create it once
    procs = [subprocess.Popen([sys.executable, os.path.join(HELPERS, "ledger_worker.py"), path, "12", "share"])
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    shared = workload.make_filter(path)
    assert shared.ledger.summary()["queries"] == 24
    # each individual's charge per query type is fixed by their data
    fs = workload.query_functions()
    probe = workload.make_filter(":memory:")
    per_type = []
    for f in fs:
        _, sensitivity, _ = probe._contributions([f])
        per_type.append(probe._loss(sensitivity, workload.QUERIES_SCALE))
    all_charges = sum(per_type[k % 3] for k in range(12)) * 2  # 24 queries, 8 of each type
    spent = shared.spent()
    retired = shared.ledger.retired(shared._hashes)
    assert np.all(spent <= workload.BUDGET)
    assert retired.any() and (~retired).any()  # both kinds of individual are checked
    # never retired: admitted to all 24 queries, so every charge must be on record (a lost
    # update would drop some); retired: their next charge no longer fitted
    np.testing.assert_allclose(spent[~retired], all_charges[~retired], rtol=1e-9)
    biggest = np.max(per_type, axis=0)
    assert np.all(spent[retired] > workload.BUDGET - biggest[retired])


# -- bad input --------------------------------------------------------------------------------
def test_rows_with_a_missing_id_belong_to_nobody_and_a_missing_id_column_is_refused():
    df = pd.DataFrame({"x": [0.1, 0.2], "y": [1.0, 1.0], "person": [1, None]})
    flt = IndividualFilter(df, SCHEMA, kind="gdp", budget=1.0, id_column="person")
    assert flt._m == 1  # the row without an id is dropped, as a missing value under "drop"
    assert flt.exact_sum_vector([FUNCTIONS[0]], 1.0)[0] == pytest.approx(0.1)
    with pytest.raises(hd.HybridADError, match="id column 'who' is missing"):
        IndividualFilter(df, SCHEMA, kind="gdp", budget=1.0, id_column="who")


@pytest.mark.parametrize("budget", [0, -1, float("inf"), float("nan")])
def test_a_budget_that_is_not_positive_is_refused(budget):
    with pytest.raises(hd.HybridADError, match="positive"):
        IndividualFilter(frame([(0.1, 1.0, 0)]), SCHEMA, kind="gdp", budget=budget)


def test_foreign_corrupted_and_mismatched_ledgers_are_refused_without_reset(tmp_path):
    real = tmp_path / "real.sqlite"
    ledger = PrivacyLedger(str(real), LedgerParameters("renyi", 2.0, 8.0))
    ledger.charge(np.array([7], dtype=np.uint64), np.array([1.5]))
    ledger.close()
    key = (tmp_path / "real.sqlite.key").read_bytes()  # a valid key next to each bad file: the file itself is judged
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    (tmp_path / "foreign.sqlite.key").write_bytes(key)
    with pytest.raises(LedgerError, match="not an opendp-hybridad ledger"):
        PrivacyLedger(str(foreign), LedgerParameters("gdp", 1.0))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    (tmp_path / "junk.sqlite.key").write_bytes(key)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        PrivacyLedger(str(junk), LedgerParameters("gdp", 1.0))
    with pytest.raises(LedgerError, match="key file"):  # a database without its key file
        PrivacyLedger(str(real), LedgerParameters("renyi", 2.0, 8.0), key_path=tmp_path / "absent.key")
    with pytest.raises(LedgerError, match="never reset"):
        PrivacyLedger(str(real), LedgerParameters("renyi", 3.0, 8.0))
    with pytest.raises(LedgerError, match="never reset"):
        PrivacyLedger(str(real), LedgerParameters("gdp", 2.0))
    again = PrivacyLedger(str(real), LedgerParameters("renyi", 2.0, 8.0))
    assert again.spent(np.array([7], dtype=np.uint64))[0] >= 1.5


def test_the_ledger_stores_no_ids_or_values(tmp_path):
    path = tmp_path / "l.sqlite"
    df = pd.DataFrame({"x": [0.123456], "y": [1.5], "person": ["alice-secret-id"]})
    flt = IndividualFilter(df, SCHEMA, kind="gdp", budget=5.0, id_column="person", ledger=str(path))
    flt.sum(FUNCTIONS[0], 1.0)
    flt.ledger.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"alice-secret-id" not in raw and b"0.123456" not in raw


# -- OpenDP form --------------------------------------------------------------------------------
def test_the_filter_is_an_opendp_measurement_returning_a_queryable():
    import opendp.prelude as dp

    from opendp_hybridad.frame import make_frame_domain
    from opendp_hybridad.individual.measurement import IndividualQuery, make_individual_filter

    dp.enable_features("contrib", "honest-but-curious")
    space = (make_frame_domain(SCHEMA), dp.symmetric_distance())
    renyi = make_individual_filter(*space, kind="renyi", alpha=8.0, budget=2.0)
    curve = renyi.map(1)
    assert curve(8.0) == 2.0 and curve(2.0) == 2.0 and math.isinf(curve(9.0))
    queryable = renyi(frame([(0.1, 1.0, 0), (0.5, 2.0, 1)]))
    answer = queryable(IndividualQuery((FUNCTIONS[0], FUNCTIONS[1]), noise_scale=5.0))
    assert len(answer) == 2 and all(np.isfinite(answer))
    gdp = make_individual_filter(*space, kind="gdp", budget=1.0)
    assert gdp.map(1) >= 0.5
    with pytest.raises(Exception, match="group privacy"):
        gdp.map(2)


# -- noisy gradient descent ------------------------------------------------------------------------
def test_noisy_gradient_descent_with_the_filter_learns_and_keeps_every_budget():
    from opendp_hybridad.datasets import load_bdims
    from opendp_hybridad.individual.gradient_descent import noisy_gradient_descent

    data = load_bdims()
    data = data.assign(y=2.0 * data.sex - 1.0)[["height", "weight", "y"]]
    schema = hd.Schema(height=hd.Field(1.4, 2.2, missing="drop"), weight=hd.Field(40, 200, missing="drop"),
                       y=hd.Field(-1, 1), w1=hd.Field(-5, 5), w2=hd.Field(-5, 5), b=hd.Field(-5, 5))
    h, wt, y, w1, w2, b = schema.symbols()
    loss = schema.function(hd.softplus(-y * (w1 * (h - 1.7) * 10 + w2 * (wt - 70) / 15 + b)))
    start = {"w1": 0.0, "w2": 0.0, "b": 0.0}
    result = noisy_gradient_descent(data, loss, start, steps=30, learning_rate=2.0, noise_scale=5.0, clip=1.0,
                                    budget=2.0, kind="gdp", normaliser=500.0)  # a public constant near the size

    def mean_loss(params):
        cols = {**{c: data[c].to_numpy() for c in ("height", "weight", "y")},
                **{k: np.full(len(data), v) for k, v in params.items()}}
        return float(loss.compile().value(cols).mean())

    assert mean_loss(result.parameters) < 0.8 * mean_loss(start)
    spent = result.filter.spent()
    assert np.all(spent <= 4.0)  # mu^2 = 4
    assert len(result.history) == 30 and set(result.history[0]) == {"step", "w1", "w2", "b"}
    # each step charged every active person at most (clip / sigma)^2 plus the float allowance
    assert all(r.max_charge <= (1.0 / 5.0) ** 2 * (1 + 1e-4) for r in result.filter.reports)


def test_report_summarises_and_plots(tmp_path):
    flt = IndividualFilter(frame([(0.5, 2.0, 0), (0.0, 1.0, 1), (-1.0, 0.5, 2)]), SCHEMA, kind="renyi", alpha=4.0,
                           budget=1.0, id_column="person")
    for _ in range(3):
        flt.sum(FUNCTIONS[0], 1.0)
    pytest.importorskip("matplotlib")
    summary = flt.report(str(tmp_path / "report.png"))
    assert summary["individuals"] == 3 and summary["active"] == flt.active()
    assert len(summary["queries"]) == 3 and (tmp_path / "report.png").stat().st_size > 1000
    assert summary["spent_fraction_quantiles"]["max"] <= 1.0
