"""Sum of a certified expression: the stability map bounds every neighbouring pair, under each relation."""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opendp_hybridad as hd
from opendp_hybridad.frame import feature_distance, make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of, pairwise_sum, sum_relaxation, then_sum_of

dp.enable_features("contrib", "honest-but-curious")

BOX = {"age": (18.0, 90.0), "weight": (40.0, 200.0), "height": (1.4, 2.2)}
SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="drop"), weight=hd.Field(40, 200, missing="impute", impute=70),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
NO_DROP = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=40), weight=hd.Field(40, 200, missing="impute", impute=70),
                    height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))


def bmi(schema):
    a, w, h = schema.symbols()
    return schema.function(a * w / h**2)


F, F_NO_DROP = bmi(SCHEMA), bmi(NO_DROP)
RANGE = F.range()

# inside the box, outside it, at its corners (where BMI is extreme), and missing
inside = st.tuples(*[st.floats(lo, hi) for lo, hi in BOX.values()])
corner = st.tuples(*[st.sampled_from([lo, hi]) for lo, hi in BOX.values()])
wild = st.tuples(*[st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3)) for _ in BOX])
record = st.one_of(inside, corner, wild)


def frame(rows):
    return pd.DataFrame(rows, columns=list(BOX), dtype=float)


@settings(max_examples=80, deadline=None)
@given(st.lists(record, max_size=20), st.lists(record, min_size=1, max_size=3))
def test_symmetric_distance_add_remove(rows, added):
    t = (make_frame_domain(SCHEMA), dp.symmetric_distance()) >> then_sum_of(F, range_certificate=RANGE)
    change = abs(t(frame(rows + added)) - t(frame(rows)))
    assert change <= t.map(len(added))


@settings(max_examples=80, deadline=None)
@given(st.lists(record, min_size=1, max_size=20), st.data())
def test_change_one_distance_replace(rows, data):
    i = data.draw(st.integers(0, len(rows) - 1))
    new = data.draw(record)
    neighbour = [*rows[:i], new, *rows[i + 1:]]
    for schema, f in ((SCHEMA, F), (NO_DROP, F_NO_DROP)):
        t = make_sum_of(make_frame_domain(schema), dp.change_one_distance(), f)
        assert abs(t(frame(neighbour)) - t(frame(rows))) <= t.map(1)


@pytest.mark.parametrize("q", [1, 2, math.inf])
@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.one_of(inside, corner), min_size=1, max_size=10), data=st.data())
def test_feature_distance_moves_one_record(q, rows, data):
    t = make_sum_of(make_frame_domain(NO_DROP), feature_distance(q), F_NO_DROP)
    i = data.draw(st.integers(0, len(rows) - 1))
    direction = np.array(data.draw(st.tuples(*[st.floats(-1, 1) for _ in BOX])))
    r = data.draw(st.floats(0, 5))
    norm = np.linalg.norm(direction, ord=q)
    step = direction * (r / norm) if norm > 0 else direction * 0
    moved = tuple(np.asarray(rows[i]) + step)
    neighbour = [*rows[:i], moved, *rows[i + 1:]]
    assert abs(t(frame(neighbour)) - t(frame(rows))) <= t.map(r)


def test_the_constants_come_from_the_certificates_and_are_attained():
    sym = make_sum_of(make_frame_domain(SCHEMA), dp.symmetric_distance(), F)
    one = make_sum_of(make_frame_domain(NO_DROP), dp.change_one_distance(), F_NO_DROP)
    feat = make_sum_of(make_frame_domain(NO_DROP), feature_distance(2), F_NO_DROP)
    relax = sum_relaxation(2**32, RANGE.upper)
    assert sym.map(1) == pytest.approx(RANGE.upper + relax, rel=1e-15)
    assert one.map(1) >= RANGE.upper - RANGE.lower
    lip = F_NO_DROP.lipschitz().upper
    assert feat.map(0.01) >= 0.01 * lip and feat.map(0.01) <= 0.01 * lip * (1 + 1e-9) + relax
    assert feat.map(1e6) <= one.map(1) + relax  # capped by the width of the range
    # adding the extreme record attains the symmetric constant: it is tight, not just safe
    extreme = frame([(90.0, 200.0, 1.4)])
    assert sym(extreme) - sym(frame([])) >= 0.999999 * (sym.map(1) - relax)


def test_pairwise_sum_matches_fsum_closely_and_handles_edge_sizes():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 3, 7, 1000, 4097):
        x = rng.uniform(-1e3, 1e3, n)
        exact = math.fsum(x)
        bound = sum_relaxation(max(n, 2), 1e3) / 2
        assert abs(pairwise_sum(x) - exact) <= bound


def test_chains_with_opendp_noise_and_reports_privacy():
    meas = (make_frame_domain(SCHEMA), dp.symmetric_distance()) >> then_sum_of(F) >> dp.m.then_laplace(RANGE.upper)
    assert 1.0 <= meas.map(1) <= 1.001
    assert np.isfinite(meas(frame([(30, 70, 1.7)])))
    gauss = (make_frame_domain(SCHEMA), dp.symmetric_distance()) >> then_sum_of(F) >> dp.m.then_gaussian(RANGE.upper)
    assert gauss.map(1) == pytest.approx(0.5, rel=1e-3)


# -- vectors of sums ------------------------------------------------------------------
def _functions(schema):
    a, w, h = schema.symbols()
    return [schema.function(a * w / h**2), schema.function(w - 100), schema.function(hd.sigmoid(a / 10 - 4))]


@pytest.mark.parametrize("norm", [1, 2])
@settings(max_examples=40, deadline=None)
@given(rows=st.lists(record, max_size=12), added=st.lists(record, min_size=1, max_size=2), data=st.data())
def test_vector_of_sums_under_each_relation(norm, rows, added, data):
    from opendp_hybridad.frame import make_sum_of_vector

    sym = make_sum_of_vector(make_frame_domain(SCHEMA), dp.symmetric_distance(), _functions(SCHEMA), norm)
    diff = np.subtract(sym(frame(rows + added)), sym(frame(rows)))
    assert np.linalg.norm(diff, ord=norm) <= sym.map(len(added))
    one = make_sum_of_vector(make_frame_domain(NO_DROP), dp.change_one_distance(), _functions(NO_DROP), norm)
    base = rows + added
    i = data.draw(st.integers(0, len(base) - 1))
    neighbour = [*base[:i], data.draw(record), *base[i + 1:]]
    diff = np.subtract(one(frame(neighbour)), one(frame(base)))
    assert np.linalg.norm(diff, ord=norm) <= one.map(1)


def test_vector_sensitivity_is_the_norm_of_the_coordinates():
    from opendp_hybridad.frame import make_sum_of_vector

    fs = _functions(SCHEMA)
    l2 = make_sum_of_vector(make_frame_domain(SCHEMA), dp.symmetric_distance(), fs, 2)
    l1 = make_sum_of_vector(make_frame_domain(SCHEMA), dp.symmetric_distance(), fs, 1)
    per = [make_sum_of(make_frame_domain(SCHEMA), dp.symmetric_distance(), f).map(1) for f in fs]
    assert l2.map(1) == pytest.approx(math.sqrt(sum(x * x for x in per)), rel=1e-12)
    assert l1.map(1) == pytest.approx(sum(per), rel=1e-12)
    assert l2.map(1) >= math.sqrt(sum(x * x for x in per))


# -- float evaluation error under the feature relation (from the second review) ----------------
def test_feature_relation_covers_float_evaluation_error_near_a_cancellation():
    import sympy

    schema = hd.Schema(a=hd.Field(0, 1))
    (a,) = schema.symbols()
    f = schema.function(sympy.sqrt(a + 10**15) - sympy.Rational(31622776601683793, 10**9))
    x, y = 0.0625 - 1e-9, 0.0625 + 1e-9
    for q in (1, 2, math.inf):
        for backend in ("numpy", "numexpr"):
            t = make_sum_of(make_frame_domain(schema), feature_distance(q), f, backend=backend)
            change = abs(t(pd.DataFrame({"a": [x]})) - t(pd.DataFrame({"a": [y]})))
            assert change <= t.map(y - x)


def test_point_width_bound_covers_point_enclosures_and_their_distance_to_the_real_value():
    import mpmath
    import sympy
    from suite import CASES, function_of

    from opendp_hybridad.analysis.float_error import point_values, point_width_bound

    mpmath.mp.dps = 50
    for case in CASES[:12]:
        f = function_of(case)
        bound = point_width_bound(f)
        rng = np.random.default_rng(5)
        lo = np.array([b[0] for b in case.box.values()])
        hi = np.array([b[1] for b in case.box.values()])
        pts = lo + rng.random((200, lo.size)) * (hi - lo)
        mids = point_values(f, [pts[:, j] for j in range(lo.size)])
        exact = sympy.lambdify(list(f.symbols), f.expr, modules=[{"sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
                                                                   "softplus": lambda v: mpmath.log(1 + mpmath.exp(v)),
                                                                   "Heaviside": lambda v, h0=0.5: 1 if v > 0 else (0 if v < 0 else h0)},
                                                                  "mpmath"])
        for k in range(0, 200, 20):
            real = exact(*[mpmath.mpf(float(v)) for v in pts[k]])
            ulp = abs(float(real)) * 2.0**-52 + 2.0**-1074
            assert abs(mpmath.mpf(mids[k]) - real) <= bound / 2 + ulp, case.name


def test_maps_never_return_nan_and_object_columns_of_numbers_are_members():
    schema = hd.Schema(a=hd.Field(0, 1, missing="drop"))
    const = schema.function(schema.a * 0 + 1)
    t = make_sum_of(make_frame_domain(schema), feature_distance(2), const)
    assert not math.isnan(t.map(math.inf))
    empty = pd.DataFrame([], columns=["a"])  # object dtype
    assert make_sum_of(make_frame_domain(schema), dp.symmetric_distance(), const)(empty) == 0.0
    mixed = pd.concat([pd.DataFrame({"a": pd.array([0.5, None], dtype="Float64")}), pd.DataFrame({"a": [0.2]})])
    assert make_sum_of(make_frame_domain(schema), dp.symmetric_distance(), schema.function(schema.a))(mixed) == pytest.approx(0.7)
