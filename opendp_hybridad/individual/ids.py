"""One canonical, typed encoding of individual ids (the text the ledger hashes).

Encoding ``typed-v2`` (recorded in every ledger's parameters; a ledger made with another
encoding is refused; ``typed-v1`` keyed date-times by their unit-dependent text and could not
key unencodable strings or huge integers). Each value is named by a type tag and its value, per value (a row's
key never depends on other rows):

* ``n:`` numbers by numeric value. Integers (Python, numpy) by their decimal text; a float
  that is an integer is canonicalised to that integer (``1``, ``1.0``, ``numpy.int64(1)`` and
  ``1e20 == 10**20`` are one person, so an id column read as int64 in one run and float64 in
  the next keeps its budgets); other finite or infinite floats by ``repr`` (``n:2.5``).
  NaN is a missing id, not a person: the filter drops such rows before encoding, and
  :func:`id_key` refuses it.
* ``s:`` strings by their text (``"1"`` is another person than ``1``). A string that is not
  valid Unicode text (a lone surrogate) is keyed ``s~:`` and the hex of its
  ``surrogatepass`` UTF-8 bytes, so every string has a key and no key quotes an
  unencodable character.
* Integers too long for decimal text (Python refuses over 4,300 digits) are keyed
  ``n:0x`` and their hexadecimal digits.
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
  can only make such ids share a budget, i.e. over-charge them).

Encoding never raises on a member of a column (other than a missing id) and never quotes a
value in an error.

Ids of several kinds in one column (numbers and strings) are kept apart by their tags, not
refused: a refusal that depends on which other people are in the data would make the
filter answer one dataset and refuse its neighbour (see ``tests/test_individual_totality.py``).
"""

from __future__ import annotations

import datetime as _dt
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DataError

ENCODING = "typed-v2"

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


def id_keys(ids: pd.Series) -> pd.Series:
    """The canonical key of each id (vectorised for numeric columns; same keys as :func:`id_key`)."""
    kind = ids.dtype.kind if isinstance(ids.dtype, np.dtype) else "O"
    values = ids.to_numpy()
    if kind in "iu":
        return pd.Series(np.char.add("n:", values.astype(str)), dtype=object)
    if kind in "Mm":
        return pd.Series(_time_keys(values), dtype=object)
    if kind == "f":
        if np.isnan(values).any():
            raise DataError("a missing id (NaN) names nobody; drop such rows before encoding")
        out = np.char.add("n:", values.astype(str)).astype(object)
        integral = np.isfinite(values) & (np.floor(values) == values)
        small = integral & (np.abs(values) < 2.0**63)
        out[small] = np.char.add("n:", values[small].astype(np.int64).astype(str))
        rest = ~small
        out[rest] = [id_key(v) for v in values[rest]]
        return pd.Series(out, dtype=object)
    if kind == "b":
        return pd.Series(np.char.add("b:", values.astype(str)), dtype=object)
    return pd.Series([id_key(v) for v in values], dtype=object)


def _text(tag: str, text: str) -> str:
    """``tag:text``, or, for text with lone surrogates (no UTF-8 form), ``tag~:`` and its bytes in hex."""
    if text.isascii():
        return tag + ":" + text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return tag + "~:" + text.encode("utf-8", "surrogatepass").hex()
    return tag + ":" + text


def _int_key(value: int) -> str:
    try:
        return "n:" + str(value)
    except ValueError:  # over sys.get_int_max_str_digits() decimal digits
        return "n:0x" + format(value, "x")


def id_key(value: Any) -> str:
    """The canonical key of one id."""
    if isinstance(value, str):
        return _text("s", value)
    time = _time_key(value)  # before integers: numpy's timedelta64 is an integer type
    if time is not None:
        return time
    if isinstance(value, (bool, np.bool_)):
        return "b:" + str(bool(value))
    if isinstance(value, (int, np.integer)):
        return _int_key(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            raise DataError("a missing id (NaN) names nobody; drop such rows before encoding")
        if math.isfinite(v) and v.is_integer():
            return "n:" + str(int(v))
        return "n:" + repr(v)
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
