"""Audit of the group-by (frame/groupby.py): a record's group depends on that record's key alone.

Found: GroupKeys.codes matched keys with pandas' ``Index.get_indexer`` on the column as it was, so
whether a value equalled a key depended on the column's dtype, which the OTHER records decide: in a
bool column ``True`` was not the key ``1``, in an object column it was. Adding one record with key
``1`` (or an unhashable key, which sent the column to the value-by-value fallback) moved every
``True`` record into the group: a count changed by n + 1 under a stability map of 1. Fixed: one rule,
value by value (Python's hash and ==). Reproducer: bench/audits/attack_groupby.py.
Ground truth: brute force on two neighbouring frames (D and D plus one row, D's rows unchanged).
"""

from __future__ import annotations

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.groupby import GroupKeys, make_grouped_count_of, make_grouped_sum_of


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("contrib", "honest-but-curious")


def _space():
    s = hd.Schema(x=hd.Field(0, 1))
    (x,) = s.symbols()
    return s, s.function(x), make_frame_domain(s, size_limit=100, labels=["g"])


def _plus_one(frame: pd.DataFrame, key: object) -> pd.DataFrame:
    return pd.concat([frame, pd.DataFrame({"x": [0.5], "g": pd.Series([key], dtype=object)})], ignore_index=True)


@pytest.mark.parametrize(("keys", "column", "extra"), [
    ((1,), [True] * 10, 1),
    ((1,), [True] * 10, [1]),  # an unhashable key in the neighbour
    ((0.0,), [False] * 10, 0.0),
    ((1, 2), [True, False, 2] * 4, "x"),
], ids=["bool-vs-int", "bool-vs-unhashable", "bool-vs-float", "object-vs-object"])
def test_one_added_record_moves_group_outputs_by_at_most_the_map(keys, column, extra):
    _, f, domain = _space()
    frame = pd.DataFrame({"x": [0.5] * len(column), "g": column})
    neighbour = _plus_one(frame, extra)
    for t in (make_grouped_count_of(domain, dp.symmetric_distance(), "g", list(keys)),
              make_grouped_sum_of(domain, dp.symmetric_distance(), f, "g", list(keys))):
        a, b = np.array(t(frame)), np.array(t(neighbour))
        assert np.abs(a - b).sum() <= t.map(1)


def test_a_keys_match_does_not_depend_on_the_columns_dtype():
    keys = GroupKeys("g", [1, "a", 2.5])
    values = [True, 1, 1.0, np.int64(1), "a", 2.5, np.float32(2.5), False, "1", b"a"]
    expected = [0, 0, 0, 0, 1, 2, 2, -1, -1, -1]
    as_object = keys.codes(pd.DataFrame({"g": pd.Series(values, dtype=object)}))
    assert as_object.tolist() == expected
    # each value alone, in a column of its own natural dtype: the same position
    for value, position in zip(values, expected, strict=True):
        assert keys.codes(pd.DataFrame({"g": [value] * 3})).tolist() == [position] * 3


def test_keys_equal_under_python_equality_are_refused_as_duplicates():
    for keys in ([1, True], [0.0, -0.0], [1, 1.0]):
        with pytest.raises(DeclarationError, match="distinct"):
            GroupKeys("g", keys)


def test_polars_bool_keys_group_as_their_pandas_copy():
    pl = pytest.importorskip("polars")
    _, _, domain = _space()
    frame = pd.DataFrame({"x": [0.5] * 6, "g": [True, False, True, True, False, True]})
    polars = pl.DataFrame({"x": frame["x"].tolist(), "g": frame["g"].tolist()})
    t = make_grouped_count_of(domain, dp.symmetric_distance(), "g", [1, 0])
    assert t(frame) == t(polars) == [4.0, 2.0]
