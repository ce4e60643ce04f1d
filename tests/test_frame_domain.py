"""The frame domain: membership errors name columns and never values; clamping and missing-value policies."""

from __future__ import annotations

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opendp_hybridad as hd
from opendp_hybridad.frame import SchemaMismatchError, check_frame, make_frame_domain, prepare_frame

SECRET = 123456.789  # a value that must never appear in an error message


def schema():
    return hd.Schema(
        age=hd.Field(18, 90, missing="drop"),
        weight=hd.Field(40, 200, missing="impute", impute=70),
        height=hd.Field(1.4, 2.2),  # missing="raise"
    )


def frame(**overrides):
    data = {"age": [30.0, 45.0, 60.0], "weight": [70.0, 80.0, 90.0], "height": [1.7, 1.8, 1.6], "note": ["a", "b", "c"]}
    data.update(overrides)
    return pd.DataFrame(data)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (frame().drop(columns="height").assign(age=[SECRET, 1.0, 2.0]), "column 'height' is missing"),
        (frame(weight=["70", str(SECRET), "x"]), "column 'weight' has dtype"),
        (frame(height=[1.7, np.nan, SECRET]), "column 'height' has missing values"),
        ({"age": [SECRET]}, "expected a pandas DataFrame"),
    ],
)
def test_membership_errors_name_the_column_and_no_value(bad, fragment):
    with pytest.raises(SchemaMismatchError, match=fragment) as err:
        check_frame(bad, schema())
    assert str(SECRET) not in str(err.value) and "123456" not in str(err.value)


def test_out_of_box_values_are_clamped_including_a_height_in_the_weight_column():
    prepared = prepare_frame(frame(weight=[175.0, 1e9, -np.inf], age=[5.0, 200.0, np.inf], height=[1.0, 9.0, 1.5]), schema())
    np.testing.assert_array_equal(prepared.columns["weight"], [175.0, 200.0, 40.0])
    np.testing.assert_array_equal(prepared.columns["age"], [18.0, 90.0, 90.0])
    np.testing.assert_array_equal(prepared.columns["height"], [1.4, 2.2, 1.5])


def test_missing_values_follow_each_fields_policy():
    prepared = prepare_frame(frame(age=[30.0, np.nan, 60.0], weight=[np.nan, 80.0, None]), schema())
    np.testing.assert_array_equal(prepared.kept, [True, False, True])
    np.testing.assert_array_equal(prepared.columns["age"], [30.0, 60.0])
    np.testing.assert_array_equal(prepared.columns["weight"], [70.0, 70.0])  # imputed, then the dropped row removed
    assert prepared.rows == 2 and prepared.matrix().shape == (2, 3)


def test_nullable_and_integer_dtypes_are_accepted_and_an_empty_frame_is_a_member():
    nullable = frame(age=pd.array([30, None, 60], dtype="Int64"))
    np.testing.assert_array_equal(prepare_frame(nullable, schema()).kept, [True, False, True])
    empty = frame().iloc[0:0]
    assert prepare_frame(empty, schema()).rows == 0


def test_opendp_user_domain_checks_membership():
    dp.enable_features("contrib", "honest-but-curious")
    domain = make_frame_domain(schema())
    assert domain.member(frame())
    assert not domain.member(frame().drop(columns="age"))
    # the identifier encodes the schema, so different boxes do not chain
    other = hd.Schema(age=hd.Field(18, 91, missing="drop"), weight=hd.Field(40, 200, missing="impute", impute=70),
                      height=hd.Field(1.4, 2.2))
    assert str(make_frame_domain(other)) != str(domain)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
                          st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
                          st.floats(-1e6, 1e6)), max_size=30))
def test_prepared_values_always_lie_in_the_box(rows):
    df = pd.DataFrame(rows, columns=["age", "weight", "height"], dtype=float)
    prepared = prepare_frame(df, schema())
    for name, field in schema().fields.items():
        col = prepared.columns[name]
        assert col.shape == (prepared.rows,)
        assert np.all((col >= field.lower) & (col <= field.upper))


def test_object_columns_are_members_only_if_every_value_is_a_number():
    # a string past the first thousand rows, and an integer too large for a float64: not members,
    # refused by the membership check with an error naming the column (never an OverflowError)
    late_string = frame(age=[30.0] * 3).iloc[[0] * 1500].reset_index(drop=True)
    late_string["age"] = late_string["age"].astype(object)
    late_string.loc[1200, "age"] = "1.5"
    with pytest.raises(SchemaMismatchError, match="column 'age' has dtype"):
        check_frame(late_string, schema())
    huge = frame(weight=pd.Series([70, 10**400, 80], dtype=object))
    with pytest.raises(SchemaMismatchError, match="column 'weight' has dtype"):
        check_frame(huge, schema())
    numbers = frame(weight=pd.Series([70, 80.5, None], dtype=object))
    check_frame(numbers, schema())


def test_size_constraints_are_part_of_membership():
    dp.enable_features("contrib", "honest-but-curious")
    limited = make_frame_domain(schema(), size_limit=3)
    assert limited.member(frame()) and not limited.member(pd.concat([frame(), frame()]))
    with pytest.raises(SchemaMismatchError, match="size limit 3"):
        check_frame(pd.concat([frame(), frame()]), limited.descriptor)
    # an exact size counts the records kept after the missing-value policies
    kept_two = make_frame_domain(schema(), size=2)
    assert kept_two.member(frame(age=[30.0, np.nan, 60.0]))
    assert not kept_two.member(frame())
    assert str(kept_two) != str(make_frame_domain(schema()))


# -- issue 11: membership does not depend on where a value sits ------------------------------------
import decimal as _decimal  # noqa: E402

_ODD_VALUES = ["SENTINEL", b"1.5", "1.5", object(), None, pd.NA, np.nan, _decimal.Decimal("1.5"), 2**70, -(2**70),
               True, 1 + 2j, [1.0], np.datetime64("2001-01-01"), pd.Timestamp("2001-01-01"), np.float32(1.5),
               np.int64(3), 1.5, float("inf")]


def _membership(frame, schema) -> bool:
    try:
        hd.frame.check_frame(frame, schema)
    except hd.frame.SchemaMismatchError:
        return False
    return True


@pytest.mark.parametrize("value", _ODD_VALUES, ids=lambda v: type(v).__name__ + ":" + str(v)[:12])
@pytest.mark.parametrize("base", ["object", "Float64", "Int64", "category"])
def test_membership_is_the_same_at_row_3_and_row_1500(value, base):
    schema = hd.Schema(x=hd.Field(0, 10, missing="impute", impute=1))
    decisions = []
    for position in (3, 1500):
        values = [1] * 2000
        values[position] = value
        if base == "object":
            column = pd.Series(values, dtype=object)
        else:
            try:
                column = pd.Series(values, dtype=base)
            except (TypeError, ValueError, OverflowError):  # the value does not fit the dtype: an object column
                column = pd.Series(values, dtype=object)
        decisions.append(_membership(pd.DataFrame({"x": column}), schema))
    assert decisions[0] == decisions[1]
