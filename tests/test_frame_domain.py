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


# -- polars frames: one reader, the same policy as pandas ------------------------------------------

def _polars():
    return pytest.importorskip("polars")


def _as_polars(frame: pd.DataFrame, nan_to_null: bool):
    """A polars copy of a float pandas frame; missing values become polars null or stay NaN."""
    pl = _polars()
    return pl.DataFrame({name: pl.Series(name, frame[name].to_numpy(dtype=float), nan_to_null=nan_to_null)
                         for name in frame.columns})


def _prepared_equal(a, b) -> None:
    np.testing.assert_array_equal(a.kept, b.kept)
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        np.testing.assert_array_equal(a.columns[name], b.columns[name])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
                          st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()),
                          st.floats(-1e6, 1e6)), max_size=30),
       st.booleans())
def test_a_polars_copy_prepares_exactly_as_the_pandas_frame(rows, nan_to_null):
    df = pd.DataFrame(rows, columns=["age", "weight", "height"], dtype=float)
    expected = prepare_frame(df, schema())
    polars = _as_polars(df, nan_to_null)
    _prepared_equal(prepare_frame(polars, schema()), expected)
    _prepared_equal(prepare_frame(polars.lazy(), schema()), expected)


def test_polars_nulls_and_nan_are_both_missing_and_follow_each_policy():
    pl = _polars()
    frame = pl.DataFrame({"age": pl.Series([30.0, None, float("nan"), 60.0]),
                          "weight": pl.Series([None, float("nan"), 250.0, 10.0]),
                          "height": [1.7, 1.8, 1.6, 9.0], "note": ["a", "b", "c", "d"]})
    prepared = prepare_frame(frame, schema())
    np.testing.assert_array_equal(prepared.kept, [True, False, False, True])
    np.testing.assert_array_equal(prepared.columns["weight"], [70.0, 40.0])
    np.testing.assert_array_equal(prepared.columns["height"], [1.7, 2.2])
    with pytest.raises(SchemaMismatchError, match="column 'height' has missing values"):
        check_frame(frame.with_columns(height=pl.Series([1.7, None, 1.6, 1.5])), schema())
    with pytest.raises(SchemaMismatchError, match="column 'height' has missing values"):
        check_frame(frame.with_columns(height=pl.Series([1.7, float("nan"), 1.6, 1.5])), schema())


def test_polars_dtypes_are_accepted_and_refused_as_their_pandas_counterparts():
    pl = _polars()
    s = hd.Schema(x=hd.Field(0, 10, missing="impute", impute=1))
    accepted = [
        (pd.Series([3, None, 12], dtype="Int64"), pl.Series([3, None, 12], dtype=pl.Int64)),
        (pd.Series([3.5, np.nan, -1.0], dtype="float32"), pl.Series([3.5, None, -1.0], dtype=pl.Float32)),
        (pd.Series([3, 200, 0], dtype="uint8"), pl.Series([3, 200, 0], dtype=pl.UInt8)),
        (pd.Series([True, None, False], dtype="boolean"), pl.Series([True, None, False], dtype=pl.Boolean)),
        (pd.Series([None, None, None], dtype=object), pl.Series([None, None, None])),
        (pd.Series([2**62 + 1, 5, 7], dtype="int64"), pl.Series([2**62 + 1, 5, 7], dtype=pl.Int64)),
    ]
    for pandas_column, polars_column in accepted:
        expected = prepare_frame(pd.DataFrame({"x": pandas_column}), s)
        _prepared_equal(prepare_frame(pl.DataFrame({"x": polars_column}), s), expected)
        _prepared_equal(prepare_frame(pl.DataFrame({"x": polars_column}).lazy(), s), expected)
    refused = [
        (pd.Series(["1.5", str(SECRET), "x"], dtype=object), pl.Series(["1.5", str(SECRET), "x"], dtype=pl.Utf8)),
        (pd.Series(["1.5", "2", "x"], dtype="category"), pl.Series(["1.5", "2", "x"], dtype=pl.Categorical)),
        (pd.Series(pd.to_datetime(["2001-01-01"] * 3)), pl.Series(pd.to_datetime(["2001-01-01"] * 3))),
    ]
    for pandas_column, polars_column in refused:
        for data in (pd.DataFrame({"x": pandas_column}), pl.DataFrame({"x": polars_column}),
                     pl.DataFrame({"x": polars_column}).lazy()):
            with pytest.raises(SchemaMismatchError, match="column 'x' has dtype") as err:
                check_frame(data, s)
            assert "123456" not in str(err.value)


def test_polars_membership_errors_name_the_column_and_the_size_constraints_hold():
    pl = _polars()
    frame_values = pd.DataFrame({"age": [30.0, np.nan, 60.0], "weight": [70.0, 80.0, 90.0], "height": [1.7, 1.8, 1.6]})
    frame = _as_polars(frame_values, nan_to_null=True)
    with pytest.raises(SchemaMismatchError, match="column 'height' is missing"):
        check_frame(frame.drop("height"), schema())
    with pytest.raises(SchemaMismatchError, match="column 'height' is missing"):
        check_frame(frame.lazy().drop("height"), schema())
    dp.enable_features("contrib", "honest-but-curious")
    assert make_frame_domain(schema(), size_limit=3).member(frame)
    assert not make_frame_domain(schema(), size_limit=2).member(frame.lazy())
    assert make_frame_domain(schema(), size=2).member(frame) and not make_frame_domain(schema(), size=3).member(frame)
    assert prepare_frame(frame.head(0), schema()).rows == prepare_frame(frame_values.iloc[0:0], schema()).rows == 0
    # a LazyFrame whose plan fails is not a member; polars' message (which may quote values) is not passed on
    failing = pl.LazyFrame({"age": ["SECRET"], "weight": [70.0], "height": [1.7]}).with_columns(pl.col("age").cast(pl.Float64))
    with pytest.raises(SchemaMismatchError, match="plan failed") as err:
        check_frame(failing, schema())
    assert "SECRET" not in str(err.value)


def test_polars_membership_does_not_depend_on_where_a_null_sits():
    pl = _polars()
    dp.enable_features("contrib", "honest-but-curious")
    s = hd.Schema(x=hd.Field(0, 10))  # missing="raise"
    for dtype in (pl.Float64, pl.Int64, pl.Boolean):
        decisions = []
        for position in (3, 1500):
            values = [1] * 2000
            values[position] = None
            column = pl.Series(values, dtype=dtype, strict=False)
            decisions.append(make_frame_domain(s).member(pl.DataFrame({"x": column})))
        assert decisions == [False, False]


def test_labels_are_part_of_membership_and_of_the_identifier():
    pl = _polars()
    dp.enable_features("contrib", "honest-but-curious")
    pandas = frame(sex=["f", None, "m"])
    polars = pl.from_pandas(pandas)
    dropping = make_frame_domain(schema(), labels=["sex"])
    raising = make_frame_domain(schema(), labels={"sex": "raise"})
    assert str(dropping) != str(raising) != str(make_frame_domain(schema()))
    for data in (pandas, polars, polars.lazy()):
        assert dropping.member(data) and not raising.member(data)
        with pytest.raises(SchemaMismatchError, match="key column 'sex' has missing keys"):
            check_frame(data, raising.descriptor)
    for data in (pandas.drop(columns="sex"), polars.drop("sex"), polars.lazy().drop("sex")):
        with pytest.raises(SchemaMismatchError, match="key column 'sex' is missing"):
            check_frame(data, dropping.descriptor)
    # a NaN key is missing too; labels never drop records from the kept count
    assert not raising.member(frame(sex=[1.0, np.nan, 2.0]))
    assert make_frame_domain(schema(), size=3, labels=["sex"]).member(pandas)
