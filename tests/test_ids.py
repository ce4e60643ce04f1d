"""The canonical typed id encoding (``individual/ids.py``, ``typed-v3``): one key per number, whatever its type.

Ground truth for numbers is exact rational equality (``Fraction``): two numeric ids get one key
exactly when they are equal as rationals, and :func:`id_keys` (vectorised for numeric columns)
gives exactly :func:`id_key`'s keys.
"""

from __future__ import annotations

import math
import numbers
import sys
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from helpers.hang_guard import finishes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from opendp_hybridad.errors import DataError
from opendp_hybridad.individual import LedgerError, LedgerParameters, PrivacyLedger, ids
from opendp_hybridad.individual.ids import id_key, id_keys

INF = math.inf


def exact(v):
    """The exact value of a real (or zero-imaginary complex) number: a Fraction, or +-inf."""
    if isinstance(v, (complex, np.complexfloating)):
        assert v.imag == 0
        v = v.real
    if isinstance(v, (bool, np.bool_)):
        raise TypeError("booleans are not numbers here")
    if isinstance(v, (int, np.integer)):
        return Fraction(int(v))
    if isinstance(v, Fraction):
        return v
    if isinstance(v, Decimal):
        return (-INF if v < 0 else INF) if v.is_infinite() else Fraction(v)
    if np.isinf(v):
        return -INF if v < 0 else INF
    return Fraction(*v.as_integer_ratio())  # float and numpy floats, longdouble included


def representations(value) -> list:
    """``value`` (a Fraction or +-inf) in every numeric type that holds it exactly."""
    out: list = []
    if isinstance(value, float):  # an infinity
        out += [value, np.float16(value), np.float32(value), np.longdouble(value), Decimal(value),
                complex(value, 0.0), np.complex64(value), np.clongdouble(value)]
        return out
    p, q = value.numerator, value.denominator
    out += [value, Fraction(2 * p, 2 * q)]  # the Fraction constructor reduces
    if q == 1:
        out += [p, Decimal(p), Decimal(p).scaleb(-3).quantize(Decimal(1).scaleb(-3)) if abs(p) < 10**20 else p]
        out += [Decimal((0 if p >= 0 else 1, (*map(int, str(abs(p))), 0, 0), -2))]  # trailing zeros
        for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
            info = np.iinfo(t)
            if info.min <= p <= info.max:
                out.append(t(p))
    try:
        f = p / q
    except OverflowError:
        f = None
    if f is not None and Fraction(f) == value:
        out += [f, np.float64(f), complex(f, 0.0), complex(f, -0.0), np.complex128(f), Decimal(f)]
        for t in (np.float16, np.float32, np.longdouble, np.complex64):
            with np.errstate(over="ignore"):
                cand = t(f)
            if not np.isinf(cand) and exact(cand) == value:
                out.append(cand)
    ld = np.longdouble(p) / np.longdouble(q) if abs(p) < 2**64 and q < 2**64 else None
    if ld is not None and np.isfinite(ld) and exact(ld) == value:
        out += [ld, np.clongdouble(ld)]
    if _only_2_and_5(q):  # a terminating decimal
        with localcontext() as ctx:
            ctx.prec = 2000
            d = Decimal(p) / Decimal(q)
        if Fraction(d) == value:
            out += [d, Decimal((d.as_tuple().sign, (*d.as_tuple().digits, 0), d.as_tuple().exponent - 1))]
    return [v for v in out if exact(v) == value]


def _only_2_and_5(q: int) -> bool:
    for f in (2, 5):
        while q % f == 0:
            q //= f
    return q == 1


# -- one key per value ----------------------------------------------------------------------------------
EQUAL_GROUPS = [
    [1, 1.0, np.int8(1), np.uint64(1), np.float16(1), np.float32(1), np.longdouble(1),
     Decimal("1"), Decimal("1.00"), Decimal("1E0"), Decimal("0.1E1"), Decimal("100E-2"), Fraction(1), Fraction(3, 3),
     complex(1, 0), np.complex64(1), np.clongdouble(1)],
    [2.5, np.float16(2.5), np.float32(2.5), np.longdouble(2.5), Decimal("2.5"), Decimal("2.50"), Decimal("25E-1"),
     Fraction(5, 2), complex(2.5, -0.0)],
    [0, -0, 0.0, -0.0, np.float16(-0.0), np.longdouble(-0.0), Decimal("0"), Decimal("-0.000"), Decimal("0E+99"),
     Decimal("-0E-99999999"), Fraction(0), complex(-0.0, 0.0)],
    [10**20, 1e20, Decimal("1E20"), Decimal("100000000000000000000.000"), Fraction(10**20), np.longdouble(1e20)],
    [2**63 + 1, np.uint64(2**63 + 1), np.longdouble(2**63) + np.longdouble(1), Decimal(2**63 + 1),
     Fraction(2**63 + 1)],
    [float(np.float32(0.1)), np.float32(0.1), np.longdouble(np.float32(0.1)), Decimal(float(np.float32(0.1))),
     Fraction(*np.float32(0.1).as_integer_ratio())],
    [0.1, np.longdouble(0.1), Decimal.from_float(0.1), Fraction(0.1)],
    [Fraction(1, 3), Fraction(-2, -6)],
    [np.longdouble(1) / np.longdouble(3), Fraction(*(np.longdouble(1) / np.longdouble(3)).as_integer_ratio())],
    [Decimal("0.1"), Decimal("0.10"), Fraction(1, 10)],
    [5e-324, np.longdouble(5e-324), Decimal.from_float(5e-324), Fraction(5e-324)],
    [INF, np.float16(INF), np.float32(INF), np.longdouble(INF), Decimal("Infinity"), complex(INF, 0)],
    [-INF, np.float32(-INF), np.longdouble(-INF), Decimal("-Infinity")],
    [10**5000, Decimal(10**5000), Fraction(10**5000), Decimal("1E5000")],
]


@pytest.mark.parametrize("group", EQUAL_GROUPS, ids=range(len(EQUAL_GROUPS)))
def test_equal_numbers_of_every_numeric_type_have_one_key(group):
    truth = {exact(v) for v in group}
    assert len(truth) == 1, "the group is not of one value"
    keys = {id_key(v) for v in group}
    assert len(keys) == 1, keys
    assert set(id_keys(pd.Series(group, dtype=object)).tolist()) == keys


def test_groups_of_unequal_numbers_have_unequal_keys():
    keys = [id_key(g[0]) for g in EQUAL_GROUPS]
    assert len(set(keys)) == len(keys)


def test_key_forms():
    assert id_key(1) == "n:1" and id_key(Decimal("1.00")) == "n:1" and id_key(-0.0) == "n:0"
    assert id_key(2.5) == id_key(Fraction(5, 2)) == id_key(Decimal("2.50")) == "n:2.5"
    assert id_key(np.float32(0.1)) == "n:0.10000000149011612"  # its exact value, a float64
    assert id_key(Decimal("0.1")) == "n:1/10" != id_key(0.1) == "n:0.1"  # two numbers
    assert id_key(np.float64(0.5)) == id_key(np.float32(0.5)) == "n:0.5"  # a float subclass, keyed as a float
    assert id_key(Fraction(-1, 3)) == "n:-1/3"
    assert id_key(INF) == id_key(Decimal("Infinity")) == "n:inf" and id_key(-INF) == "n:-inf"
    assert id_key(10**4300 - 1) == "n:" + "9" * 4300 and id_key(10**4300) == "n:0x" + format(10**4300, "x")
    assert id_key(1e-5) == "n:1e-05"
    assert id_key(True) == "b:True" != id_key(1) and id_key(np.bool_(False)) == "b:False"


def test_floats_are_keyed_by_their_exact_value_in_columns_of_every_width():
    """A float32 column and its float64 upcast are one set of people (typed-v2 keyed 0.1 vs 0.10000000149011612)."""
    f32 = np.array([0.1, 2.5, 3.0, 1e-40, 16777217.0, -0.0], dtype=np.float32)
    keys = id_keys(pd.Series(f32)).tolist()
    assert keys == [id_key(v) for v in f32] == [id_key(float(v)) for v in f32]
    assert keys == id_keys(pd.Series(f32.astype(np.float64))).tolist()
    assert keys == id_keys(pd.Series(f32.astype(np.longdouble))).tolist()
    assert keys[0] == "n:0.10000000149011612" and keys[-1] == "n:0"
    ledger = PrivacyLedger(":memory:", LedgerParameters("gdp", 1.0))
    as_decimal = pd.Series([Decimal(float(v)) for v in f32], dtype=object)
    hashes = ledger.hash_ids(pd.Series(f32))
    np.testing.assert_array_equal(hashes, ledger.hash_ids(pd.Series(f32.astype(np.float64))))
    np.testing.assert_array_equal(hashes, ledger.hash_ids(as_decimal))


def test_byte_strings_have_one_tag():
    group = [b"ab\x00c", bytearray(b"ab\x00c"), memoryview(b"ab\x00c"), np.bytes_(b"ab\x00c")]
    assert {id_key(v) for v in group} == {"x:61620063"}
    assert id_key(b"ab") not in (id_key("ab"), id_key("x:6162"), id_key(0x6162))
    assert id_keys(pd.Series(np.array([b"ab", b"c"]))).tolist() == ["x:6162", "x:63"]


def test_complex_numbers():
    assert id_key(1 + 2j) == id_key(np.complex64(1 + 2j)) == id_key(np.clongdouble(1 + 2j)) == "c:n:1,n:2"
    assert id_key(complex(0.5, -0.25)) == "c:n:0.5,n:-0.25"
    assert id_key(2j) != id_key(2) and id_key(1 + 2j) != id_key(2 + 1j)
    assert id_key(complex(3, 0)) == id_key(complex(3, -0.0)) == id_key(3)
    column = np.array([1 + 2j, 3, 0.5j], dtype=np.complex128)
    assert id_keys(pd.Series(column)).tolist() == [id_key(v) for v in column] == ["c:n:1,n:2", "n:3", "c:n:0,n:0.5"]


# -- key(a) == key(b) iff Fraction(a) == Fraction(b) ---------------------------------------------------------
BASES = st.one_of(
    st.integers(-4, 4).map(Fraction),
    st.integers().map(Fraction),
    st.integers(2**52, 2**66).map(Fraction),
    st.fractions(max_denominator=12),
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True).map(Fraction),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(Fraction),
    st.floats(width=16, allow_nan=False, allow_infinity=False).map(Fraction),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(Fraction),
    st.sampled_from([INF, -INF]),
)


@st.composite
def numeric_pairs(draw):
    a_value = draw(BASES)
    b_value = a_value if draw(st.booleans()) else draw(BASES)
    if draw(st.booleans()) and isinstance(b_value, Fraction):  # a near miss
        b_value = b_value + Fraction(draw(st.sampled_from([1, -1])), draw(st.sampled_from([2**64, 10**30, 3])))
    a = draw(st.sampled_from(representations(a_value)))
    b = draw(st.sampled_from(representations(b_value)))
    return a, b


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(numeric_pairs())
def test_two_numbers_share_a_key_exactly_when_they_are_equal(pair):
    a, b = pair
    assert (id_key(a) == id_key(b)) == (exact(a) == exact(b)), (type(a), type(b))
    value = exact(a)
    if isinstance(value, Fraction):  # the key is the value's, not the type's
        assert id_key(a) == id_key(value)


# -- vectorised == scalar ------------------------------------------------------------------------------------
def _check_vectorised(column: np.ndarray) -> None:
    keys = id_keys(pd.Series(column)).tolist()
    assert keys == [id_key(v) for v in column]
    assert keys == id_keys(pd.Series(list(column), dtype=object)).tolist()
    if column.dtype.kind == "f" and column.dtype.itemsize < 8:  # a narrow column and its exact upcast
        assert keys == id_keys(pd.Series(column.astype(np.float64))).tolist()
    if column.dtype.kind == "f":
        assert keys == id_keys(pd.Series(column.astype(np.longdouble))).tolist()
    if column.dtype.kind in "iu" and column.size and np.abs(column.astype(np.float64)).max() < 2**53:
        assert keys == id_keys(pd.Series(column.astype(np.float64))).tolist()


NUMERIC_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                  np.float16, np.float32, np.float64, np.bool_]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC_DTYPES).flatmap(
    lambda t: hnp.arrays(t, st.integers(0, 30), elements=hnp.from_dtype(np.dtype(t), allow_nan=False)
                         if np.dtype(t).kind == "f" else None)))
def test_vectorised_keys_are_the_per_value_keys(column):
    _check_vectorised(column)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=False), st.integers(-(2**64), 2**64)), max_size=20),
       st.sampled_from([1, 3, 10, 2**70, 2**-70]))
def test_vectorised_longdouble_keys_are_the_per_value_keys(values, divisor):
    column = np.array([np.longdouble(v) for v in values], dtype=np.longdouble) / np.longdouble(divisor)
    _check_vectorised(column[~np.isnan(column)])


@pytest.mark.parametrize("column", [
    np.array([5e-324, -5e-324, 2.2250738585072014e-308, -0.0, 0.0, 2.0**53 + 2, 2.0**63, -(2.0**63), 2.0**64,
              1e300, -1e308, np.inf, -np.inf, 0.5, 1 / 3, 123456789.125]),
    np.array([np.float16(6e-8), np.float16(-0.0), np.float16(65504), np.float16(np.inf), np.float16(0.1)]),
    np.array([1e-45, 1.1754942e-38, -0.0, 16777217, 0.1, np.inf], dtype=np.float32),
    np.array([2**63 + 1, 2**64 - 1, 0], dtype=np.uint64),
    np.array([2**53 + 1, -(2**63), 2**63 - 1], dtype=np.int64),
    np.array([np.longdouble(2) ** 63 + 1, np.longdouble(2) ** -16445, np.longdouble(1) / 3, np.longdouble(-0.0),
              np.longdouble(np.inf), np.longdouble(0.1), np.longdouble(2) ** 16000, np.longdouble(7)]),
], ids=["float64", "float16", "float32", "uint64", "int64", "longdouble"])
def test_vectorised_keys_on_edge_values(column):
    _check_vectorised(column)


def test_an_integer_and_a_float_of_different_value_stay_apart():
    ints, floats = np.array([2**53 + 1]), np.array([float(2**53 + 1)])  # the float is 2**53
    assert id_keys(pd.Series(ints))[0] == "n:9007199254740993" != id_keys(pd.Series(floats))[0]
    assert id_keys(pd.Series(floats))[0] == "n:9007199254740992"


def test_nullable_and_categorical_columns_keep_the_per_value_keys():
    for series in [pd.Series([1, 2**62], dtype="Int64"), pd.Series([0.5, 2.0], dtype="Float64"),
                   pd.Series([True, False], dtype="boolean"), pd.Series([3, 1, 3], dtype="category"),
                   pd.Series([Decimal("1.0"), Decimal("2.50")], dtype=object)]:
        assert id_keys(series).tolist() == [id_key(v) for v in series.tolist()]


def test_a_parquet_decimal_column_keeps_the_int_and_float_columns_keys():
    pa = pytest.importorskip("pyarrow")
    decimal = pd.Series([Decimal("1.00"), Decimal("2.50"), Decimal("-7.00")], dtype=pd.ArrowDtype(pa.decimal128(10, 2)))
    assert id_keys(decimal).tolist() == id_keys(pd.Series([1.0, 2.5, -7.0])).tolist() == ["n:1", "n:2.5", "n:-7"]
    assert id_keys(pd.Series([1, 2], dtype=pd.ArrowDtype(pa.int64()))).tolist() == ["n:1", "n:2"]


# -- totality, no values in errors, denial of service ----------------------------------------------------------
NANS = [math.nan, np.float16("nan"), np.float32("nan"), np.longdouble("nan"), Decimal("NaN"), Decimal("-NaN"),
        Decimal("sNaN"), complex(math.nan, 0), complex(1, math.nan), np.complex64(complex(math.nan, 1)),
        np.clongdouble(complex(1, math.nan))]


@pytest.mark.parametrize("nan", NANS, ids=repr)
def test_nan_of_any_type_is_a_missing_id(nan):
    assert ids.missing_ids(pd.Series([nan, 1], dtype=object)).tolist() == [True, False]
    with pytest.raises(DataError) as raised:
        id_key(nan)
    assert str(raised.value) == "a missing id (NaN) names nobody; drop such rows before encoding"


class _BadIntegral:
    def __int__(self):
        raise RuntimeError("SECRET 7")

    def __index__(self):
        raise RuntimeError("SECRET 7")

    def __str__(self):
        return "bad"


class _ZeroDenominator:
    numerator, denominator = 1, 0


numbers.Integral.register(_BadIntegral)
numbers.Rational.register(_ZeroDenominator)


def test_a_number_type_that_misbehaves_is_keyed_not_raised():
    assert id_key(_BadIntegral()).endswith("_BadIntegral:bad")
    assert "_ZeroDenominator" in id_key(_ZeroDenominator())
    released = memoryview(b"ab")
    released.release()
    assert "memoryview" in id_key(released)


def test_keys_do_not_depend_on_the_interpreters_digit_limit():
    values = [10**1000, -(10**4299), 10**4300, Fraction(1, 3**2000), Decimal("1E4000")]
    default = [id_key(v) for v in values]
    old = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(640)
        assert [id_key(v) for v in values] == default
        sys.set_int_max_str_digits(0)
        assert [id_key(v) for v in values] == default
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.parametrize("text", ["1E1000000", "-1E-1000000", "9.99E999999999", "1E-999999999", "0E999999999",
                                  "1" * 20000 + "E-20000", "1" + "0" * 10000 + "1E-5000"])
def test_decimals_with_absurd_exponents_are_keyed_fast(text):
    value = Decimal(text)
    key = finishes(lambda: id_key(value))  # exact arithmetic on 10**999999999 would never finish
    assert len(key) < len(text) + 40


def test_decimals_past_the_exact_range_are_keyed_by_normalised_text():
    assert id_key(Decimal("1E1000000")) == id_key(Decimal("10E999999")) == id_key(Decimal("1.000E+1000000"))
    assert id_key(Decimal("1E1000000")) == "dec:1E1000000" != id_key(Decimal("1E1000001"))
    assert id_key(Decimal("-12.5E-100000")) == "dec:-125E-100001"
    assert id_key(Decimal("0E999999999")) == "n:0"
    # within the range, exact: the largest and smallest in range are keyed by value
    assert id_key(Decimal("1E5000")) == id_key(10**5000) and id_key(Decimal("1E-5000")) == id_key(Fraction(1, 10**5000))
    assert id_key(Decimal("1" + "0" * 20000 + "E-20000")) == id_key(1)  # trailing zeros are not digits


def test_id_keys_of_numeric_columns_are_the_keys_value_by_value():
    # the column path is vectorised (its speed is bench material); here it must agree with id_key exactly
    n = 20_000
    column = np.arange(n, dtype=np.int64) * 7919
    for series in (pd.Series(column), pd.Series(column.astype(np.float64)), pd.Series(column + 0.5),
                   pd.Series((column % 65536).astype(np.float32))):
        assert list(id_keys(series)) == [id_key(v) for v in series.tolist()]


# -- the ledger -----------------------------------------------------------------------------------------------
def test_a_ledger_made_with_typed_v2_is_refused_naming_both_encodings(tmp_path):
    assert ids.ENCODING == "typed-v3"
    path = str(tmp_path / "l.sqlite")
    PrivacyLedger.create(path, LedgerParameters("gdp", 1.0, id_encoding="typed-v2")).close()
    with pytest.raises(LedgerError) as raised:
        PrivacyLedger(path, LedgerParameters("gdp", 1.0))
    message = str(raised.value)
    assert "'typed-v2'" in message and "'typed-v3'" in message and "\n" not in message
    assert "never reset" in message
