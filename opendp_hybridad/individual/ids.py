"""One canonical, typed encoding of individual ids (the text the ledger hashes).

Encoding ``typed-v3`` (recorded in every ledger's parameters; a ledger made with another
encoding is refused, its message naming both encodings). ``typed-v1`` keyed date-times by their
unit-dependent text and could not key unencodable strings or huge integers; ``typed-v2`` keyed
only ``int`` and ``float`` by value, so ``1``, ``Decimal("1.00")`` and ``Fraction(1)`` were three
people, and a float32 column's ``0.1`` was keyed ``0.1`` by :func:`id_keys` but
``0.10000000149011612`` per value. Each value is named by a type tag and its value, per value
(a row's key never depends on other rows):

* ``n:`` real numbers by their exact value, whatever their type: Python ``int`` and ``float``,
  numpy integers and floats of every width (``float16`` to ``longdouble``),
  ``decimal.Decimal``, ``fractions.Fraction`` (and other registered ``numbers.Integral`` /
  ``numbers.Rational`` types). Two numbers have one key exactly when they are equal as
  rationals (``Fraction(a) == Fraction(b)``), so an id column read as int64, float64, float32,
  a SQL NUMERIC or parquet decimal (``Decimal("1.00")``) or as fractions keeps each person's
  budget. The key of a value ``x``:

  - an integer: ``n:`` and its decimal digits (``1``, ``1.0``, ``numpy.int64(1)``,
    ``Decimal("1E0")``, ``Fraction(1)`` and ``1e20 == 10**20`` are ``n:1`` / ``n:100000000000000000000``);
    an integer of more than 4,300 decimal digits (Python's default limit on decimal text)
    is ``n:0x`` and its hexadecimal digits. The choice depends on the value only, never on
    ``sys.set_int_max_str_digits``.
  - a non-integer exactly equal to a float64: ``n:`` and ``repr`` of that float (``n:2.5`` for
    ``2.5``, ``Decimal("2.50")``, ``Fraction(5, 2)``; ``n:0.10000000149011612`` for
    ``numpy.float32(0.1)``; ``n:1e-05``).
  - any other non-integer: ``n:p/q``, the reduced fraction (``n:1/3``, ``n:1/10`` for
    ``Decimal("0.1")``, which is not the float ``0.1``; each part in hex past 4,300 digits).
  - ``n:inf`` and ``n:-inf`` for infinities of any type. ``-0.0`` is ``n:0``.

  NaN of any type (float, numpy, ``Decimal("NaN")``/``sNaN``, a complex with a NaN part) is a
  missing id, not a person: the filter drops such rows before encoding
  (:func:`missing_ids`), and :func:`id_key` refuses it. Exactness comes from
  ``as_integer_ratio()`` and the ``Decimal`` digits, never from ``float()`` of a
  ``longdouble`` or ``Decimal``.
* ``dec:`` a ``Decimal`` whose digits reach beyond 10**5000 or below 10**-5000 (after trailing
  zeros are dropped): ``dec:`` and its normalised text ``[-]<digits>E<exponent>`` (digits
  without trailing zeros). Its exact value could take seconds and gigabytes to compute
  (``Decimal("1E1000000000")`` is 14 characters), so it is not computed; such a value is keyed
  apart from an equal ``int``, ``Fraction`` or ``longdouble`` (only these absurd values can be,
  and two equal Decimals still share a key).
* ``c:`` a complex number with a nonzero imaginary part: ``c:`` and the ``n:`` keys of its real
  and imaginary parts, joined by a comma (``c:n:1,n:-2.5``), for Python and numpy complex of
  any width. A complex with a zero imaginary part is the real number it equals (``1+0j == 1``
  in Python, and a real column cast to complex keeps its keys), so it is keyed ``n:``.
* ``x:`` byte strings (``bytes``, ``bytearray``, ``memoryview``, ``numpy.bytes_``) by the hex
  of their bytes: ``b"ab"`` and ``bytearray(b"ab")`` are one person, never the string ``"ab"``.
* ``s:`` strings by their text (``"1"`` is another person than ``1``). A string that is not
  valid Unicode text (a lone surrogate) is keyed ``s~:`` and the hex of its
  ``surrogatepass`` UTF-8 bytes, so every string has a key and no key quotes an
  unencodable character.
* ``t:`` date-times (numpy ``datetime64`` columns and scalars, pandas ``Timestamp``, Python
  ``datetime``) by their exact integer nanoseconds since 1970-01-01 (UTC for time-zone aware
  ones), and ``d:`` durations (``timedelta64``, ``Timedelta``, ``timedelta``) by their exact
  integer nanoseconds: the column's unit (``[s]``, ``[us]``, ``[ns]``, which pandas picks from
  the other rows or its version) never changes a person's key. A value finer than a
  nanosecond is written as a reduced fraction ``p/q`` of nanoseconds; a duration in months
  or years (no fixed length) as ``d:<months>mo``. NaT is a missing id, like NaN.
* ``b:`` booleans, their own tag (``True`` is neither ``1`` nor ``"True"``).
* anything else by its type and ``str()``: ``module.qualname:text`` (text that is not valid
  Unicode as above, in hex; a value whose ``str()`` fails is keyed by its type alone, which
  can only make such ids share a budget, i.e. over-charge them). A number type whose
  conversion fails falls back to this too.

Encoding never raises on a member of a column (other than a missing id) and never quotes a
value in an error. :func:`id_keys` gives exactly :func:`id_key`'s keys; it is vectorised for
integer, float (any width) and boolean columns (a pandas nullable or categorical column
whose ``to_numpy()`` is one of those included), and goes value by value for the rest.

Ids of several kinds in one column (numbers and strings) are kept apart by their tags, not
refused: a refusal that depends on which other people are in the data would make the
filter answer one dataset and refuse its neighbour (see ``tests/test_individual_totality.py``).
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DataError

ENCODING = "typed-v3"

#: integers of at most this many decimal digits are keyed in decimal, longer ones in hex
_MAX_DIGITS = 4300
_DECIMAL_LIMIT = 10**_MAX_DIGITS
#: a Decimal is keyed by exact value only if its digits lie within 10**-CAP .. 10**CAP
_DECIMAL_CAP = 5000

_MISSING = "a missing id (NaN) names nobody; drop such rows before encoding"

#: nanoseconds per numpy time unit (months and years have no fixed length)
_NS_PER_UNIT = {"W": 7 * 86400 * 10**9, "D": 86400 * 10**9, "h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9,
                "ms": 10**6, "us": 10**3, "ns": 1, "ps": Fraction(1, 10**3), "fs": Fraction(1, 10**6),
                "as": Fraction(1, 10**9)}


def _time_keys(values: np.ndarray) -> np.ndarray:
    """``t:``/``d:`` keys of a datetime64 or timedelta64 array (exact nanoseconds, whatever the unit)."""
    if np.isnat(values).any():
        raise DataError("a missing id (NaT) names nobody; drop such rows before encoding")
    tag = "t:" if values.dtype.kind == "M" else "d:"
    unit, count = np.datetime_data(values.dtype)
    if unit in ("Y", "M"):
        if tag == "t:":  # calendar units: the first day of the year or month is exact in days
            return _time_keys(values.astype("datetime64[D]"))
        months = values.view(np.int64).astype(object) * (count * (12 if unit == "Y" else 1))
        return np.array([f"d:{m}mo" for m in months], dtype=object)
    factor = _NS_PER_UNIT[unit] * count
    ints = values.view(np.int64)
    if factor == 1:
        return np.char.add(tag, ints.astype(str)).astype(object)
    out = []
    for i in ints.tolist():
        ns = Fraction(i) * factor
        out.append(f"{tag}{ns.numerator}" if ns.denominator == 1 else f"{tag}{ns.numerator}/{ns.denominator}")
    return np.array(out, dtype=object)


def _time_key(value: Any) -> str | None:
    """The key of a date-time or duration scalar, or None if ``value`` is neither."""
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return str(_time_keys(np.array([value]))[0])
    if isinstance(value, _dt.datetime):
        return str(_time_keys(np.array([pd.Timestamp(value).to_datetime64()]))[0])
    if isinstance(value, _dt.timedelta):
        return str(_time_keys(np.array([pd.Timedelta(value).to_timedelta64()]))[0])
    return None


def _object_array(keys: list[str]) -> np.ndarray:
    out = np.empty(len(keys), dtype=object)
    out[:] = keys
    return out


def _float_keys(values: np.ndarray) -> np.ndarray:
    """Keys of a float array of any width, exactly :func:`id_key`'s (vectorised where the value allows)."""
    if values.dtype.itemsize < 8:
        values = values.astype(np.float64)  # exact: every float16/float32 is a float64
    if np.isnan(values).any():
        raise DataError(_MISSING)
    small = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2.0**63)
    if small.all():  # the usual id column: integers (read as float because of a missing value elsewhere)
        return _object_array(["n:" + str(i) for i in values.astype(np.int64).tolist()])
    out = np.empty(values.shape, dtype=object)
    out[small] = ["n:" + str(i) for i in values[small].astype(np.int64).tolist()]
    rest = np.flatnonzero(~small)
    other = values[rest]
    with np.errstate(over="ignore"):  # a longdouble past float64's range becomes inf: not exact, keyed below
        as64 = other.astype(np.float64)
    # longdouble: only its values that are a float64 take the float64 path
    exact = as64.astype(values.dtype) == other if values.dtype.itemsize > 8 else np.ones(other.shape, dtype=bool)
    # a non-integer float64 (or an infinity, or an integer past 2**63) is keyed as its float
    out[rest[exact]] = [_float_key(v) for v in as64[exact].tolist()]
    out[rest[~exact]] = [id_key(v) for v in other[~exact]]
    return out


def id_keys(ids: pd.Series) -> pd.Series:
    """The canonical key of each id (vectorised for numeric columns; same keys as :func:`id_key`)."""
    values = np.asarray(ids.to_numpy())
    kind = values.dtype.kind
    if kind in "iu":
        return pd.Series(_object_array(["n:" + str(i) for i in values.tolist()]), dtype=object)
    if kind in "Mm":
        return pd.Series(_time_keys(values), dtype=object)
    if kind == "f":
        return pd.Series(_float_keys(values), dtype=object)
    if kind == "b":
        return pd.Series(np.where(values, "b:True", "b:False").astype(object), dtype=object)
    return pd.Series(_object_array([id_key(v) for v in values]), dtype=object)


def _text(tag: str, text: str) -> str:
    """``tag:text``, or, for text with lone surrogates (no UTF-8 form), ``tag~:`` and its bytes in hex."""
    if text.isascii():
        return tag + ":" + text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return tag + "~:" + text.encode("utf-8", "surrogatepass").hex()
    return tag + ":" + text


def _digits(value: int) -> str:
    """An integer's decimal text (at most 4,300 digits, whatever the interpreter's limit), else ``0x`` and hex."""
    if -_DECIMAL_LIMIT < value < _DECIMAL_LIMIT:
        try:
            return str(value)
        except ValueError:  # sys.set_int_max_str_digits set below 4,300: write it in chunks
            sign, value = ("-", -value) if value < 0 else ("", value)
            chunks = []
            while value:
                value, chunk = divmod(value, 10**600)
                chunks.append(f"{chunk:0600d}")
            return sign + "".join(reversed(chunks)).lstrip("0")
    return "0x" + format(value, "x")


def _int_key(value: int) -> str:
    return "n:" + _digits(value)


def _ratio_key(p: int, q: int) -> str:
    """The key of the reduced fraction ``p/q`` (``q > 0``)."""
    if q == 1:
        return "n:" + _digits(p)
    if q & (q - 1) == 0:  # a power of two: the value may be a float64
        try:
            f = p / q  # correctly rounded
        except OverflowError:
            pass
        else:
            if f.as_integer_ratio() == (p, q):
                return "n:" + repr(f)
    return "n:" + _digits(p) + "/" + _digits(q)


def _float_key(v: float) -> str:
    """The key of a Python float (a float64)."""
    if v != v:
        raise DataError(_MISSING)
    if v.is_integer():  # false for infinities
        return "n:" + _digits(int(v))
    return "n:" + repr(v)  # a non-integer (its own float64) or an infinity


def _decimal_key(value: Decimal) -> str:
    if value.is_nan():  # quiet or signalling: never compared, so nothing signals
        raise DataError(_MISSING)
    if value.is_infinite():
        return "n:-inf" if value.is_signed() else "n:inf"
    if value.is_zero():
        return "n:0"
    sign, digits, exponent = value.as_tuple()
    if exponent >= -_DECIMAL_CAP and exponent + len(digits) - 1 <= _DECIMAL_CAP:  # the usual case
        return _ratio_key(*value.as_integer_ratio())
    text = "".join(map(str, digits))
    stripped = text.rstrip("0")
    exponent += len(text) - len(stripped)  # the exponent of the lowest nonzero digit
    if exponent >= -_DECIMAL_CAP and exponent + len(stripped) - 1 <= _DECIMAL_CAP:
        p, q = Decimal((sign, tuple(map(int, stripped)), exponent)).as_integer_ratio()
        return _ratio_key(p, q)
    return "dec:" + ("-" if sign else "") + stripped + "E" + str(exponent)


def _real_key(value: Any) -> str | None:
    """The ``n:`` (or ``dec:``) key of a real number, or None if ``value`` is not one this knows."""
    if isinstance(value, float):
        return _float_key(float(value))  # numpy.float64 is a float, whose repr is not a float's
    if isinstance(value, np.floating):
        if value.dtype.itemsize <= 8:
            return _float_key(float(value))  # exact: float16/32/64 widen to float64
        if np.isnan(value):
            raise DataError(_MISSING)
        if np.isinf(value):
            return "n:-inf" if value < 0 else "n:inf"
        return _ratio_key(*value.as_integer_ratio())  # exact, never float() of a longdouble
    if isinstance(value, (int, np.integer)):
        return _int_key(int(value))
    if isinstance(value, Decimal):
        return _decimal_key(value)
    if isinstance(value, Fraction):
        return _ratio_key(value.numerator, value.denominator)  # reduced, denominator > 0
    if isinstance(value, numbers.Integral):
        return _int_key(int(value))
    if isinstance(value, numbers.Rational):
        p, q = int(value.numerator), int(value.denominator)
        if q == 0:
            return None
        if q < 0:
            p, q = -p, -q
        g = math.gcd(p, q)
        return _ratio_key(p // g, q // g)
    return None


def _number_key(value: Any) -> str | None:
    """The key of a real or complex number, or None if ``value`` is neither (or its type misbehaves)."""
    try:
        if isinstance(value, (complex, np.complexfloating)):
            re, im = value.real, value.imag
            if np.isnan(re) or np.isnan(im):
                raise DataError(_MISSING)
            if im == 0:  # the real number it equals (1+0j == 1)
                return _real_key(re)
            return "c:" + str(_real_key(re)) + "," + str(_real_key(im))
        return _real_key(value)
    except DataError:
        raise
    except Exception:  # a number type whose conversion fails: keyed by type and text instead
        return None


def id_key(value: Any) -> str:
    """The canonical key of one id."""
    kind = type(value)
    if kind is int:
        return _int_key(value)
    if kind is float:
        return _float_key(value)
    if isinstance(value, str):
        return _text("s", value)
    time = _time_key(value)  # before integers: numpy's timedelta64 is an integer type
    if time is not None:
        return time
    if isinstance(value, (bool, np.bool_)):
        return "b:" + str(bool(value))
    number = _number_key(value)
    if number is not None:
        return number
    if isinstance(value, (bytes, bytearray, memoryview)):  # numpy.bytes_ is bytes
        try:
            return "x:" + value.hex()
        except Exception:  # noqa: S110 - a released memoryview: keyed by its type below
            pass
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    try:
        text = str(value)
    except Exception:
        return name + "!"
    if not isinstance(text, str):
        return name + "!"
    return _text(name, text)



def missing_ids(ids: pd.Series) -> np.ndarray:
    """Which ids are missing (NaN, None, NaT, a NaN Decimal), without raising on any value.

    ``Series.isna`` can raise on exotic values (``Decimal("sNaN")`` signals on comparison);
    then each value is checked on its own. A value whose check fails is not missing (it is
    encoded like any other id), so no member frame makes this raise.
    """
    try:
        return np.asarray(ids.isna().to_numpy(), dtype=bool)
    except Exception:  # an exotic value: decide value by value
        return np.array([_is_missing(v) for v in ids.tolist()], dtype=bool)


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except Exception:  # noqa: S110 - fall through to the value's own NaN test
        pass
    is_nan = getattr(value, "is_nan", None)
    try:
        return bool(is_nan()) if callable(is_nan) else False
    except Exception:
        return False
