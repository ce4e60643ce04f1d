"""Row map: certified per-record values as an OpenDP transformation that chains into OpenDP's own aggregates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opendp_hybridad as hd
from opendp_hybridad.frame import SchemaMismatchError, make_frame_domain
from opendp_hybridad.frame.rowmap import make_row_map, then_row_map

dp.enable_features("contrib", "honest-but-curious")

SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="drop"), weight=hd.Field(40, 200, missing="impute", impute=70),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
A, W, H = SCHEMA.symbols()
BMI = SCHEMA.function(A * W / H**2)
CERT = BMI.range()

value = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 250))
row = st.tuples(value, value, value)


def as_frame(rows):
    return pd.DataFrame(rows, columns=["age", "weight", "height"], dtype=float)


def test_row_map_values_match_the_kernel_and_lie_in_the_certified_range():
    t = make_row_map(make_frame_domain(SCHEMA), dp.symmetric_distance(), BMI, CERT)
    df = hd_frame = as_frame([(30, 70, 1.75), (95, 300, 1.0), (np.nan, 80, 1.8), (40, np.nan, np.inf)])
    out = np.array(t(df))
    expected = [30 * 70 / 1.75**2, 90 * 200 / 1.4**2, 40 * 70 / 2.2**2]  # clamped, dropped, imputed+clamped
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert np.all((out >= CERT.lower) & (out <= CERT.upper))
    assert t.map(3) == 3
    with pytest.raises(Exception, match="column 'height' is missing"):
        t(hd_frame.drop(columns="height"))


@settings(max_examples=60, deadline=None)
@given(st.lists(row, max_size=12), row, st.integers(0, 12))
def test_adding_one_record_changes_at_most_one_output_row(rows, extra, position):
    t = (make_frame_domain(SCHEMA), dp.symmetric_distance()) >> then_row_map(BMI, CERT)
    position = min(position, len(rows))
    neighbour = [*rows[:position], extra, *rows[position:]]
    a, b = Counter(t(as_frame(rows))), Counter(t(as_frame(neighbour)))
    symmetric_difference = sum(((a - b) + (b - a)).values())
    assert symmetric_difference <= t.map(1)


def test_chains_into_opendp_sum_and_noise():
    meas = (make_frame_domain(SCHEMA), dp.symmetric_distance()) >> then_row_map(BMI, CERT) >> dp.t.then_sum() >> dp.m.then_laplace(1e4)
    assert meas.map(1) >= max(abs(CERT.lower), abs(CERT.upper)) / 1e4
    release = meas(as_frame([(30, 70, 1.75)] * 10))
    assert np.isfinite(release)


def test_wrong_metric_or_schema_is_refused():
    other = hd.Schema(x=(0, 1))
    with pytest.raises(hd.DeclarationError, match="schema"):
        make_row_map(make_frame_domain(SCHEMA), dp.symmetric_distance(), other.function(other.x))
    with pytest.raises(hd.DeclarationError, match="change_one_distance"):
        make_row_map(make_frame_domain(SCHEMA), dp.change_one_distance(), BMI)
    with pytest.raises(SchemaMismatchError):
        from opendp_hybridad.frame import check_frame

        check_frame(pd.DataFrame({"age": ["x"]}), SCHEMA)
