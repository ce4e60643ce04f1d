"""The relation vocabulary: metrics round-trip, and each relation reads its own constant."""

from __future__ import annotations

import math

import opendp.prelude as dp
import pytest

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE, FeatureLevel, PerRecordBound, relation_of


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("honest-but-curious", "contrib")


@pytest.mark.parametrize("relation", [ADD_REMOVE, REPLACE_ONE, FeatureLevel(1), FeatureLevel(2), FeatureLevel(math.inf)])
def test_relations_round_trip_through_metrics_and_names(relation):
    assert relation_of(relation.metric()) == relation
    assert relation_of(relation.name) == relation
    assert relation_of(relation) is relation


def test_dp_accounting_names():
    import dp_accounting

    assert ADD_REMOVE.dp_accounting == dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    assert REPLACE_ONE.dp_accounting == dp_accounting.NeighboringRelation.REPLACE_ONE
    assert FeatureLevel(2).dp_accounting is None


def test_each_relation_reads_its_constant_brute_force():
    # f ranges over [-1, 3]; brute-force the largest change of one record's clamped value
    lower, upper = -1.0, 3.0
    values = [lower + k * (upper - lower) / 40 for k in range(41)]
    removal = max(abs(v) for v in values)
    replacement = max(abs(a - b) for a in values for b in values)
    bound = PerRecordBound(lower, upper, drops_records=False, lipschitz=lambda p: 0.5)
    assert bound.sensitivity(ADD_REMOVE) == (removal, math.inf)
    assert bound.sensitivity(REPLACE_ONE) == (replacement, math.inf)
    dropping = PerRecordBound(lower, upper, drops_records=True)
    assert dropping.sensitivity(REPLACE_ONE)[0] >= max(replacement, removal)
    slope, cap = bound.sensitivity(FeatureLevel(2))
    assert (slope, cap) == (0.5, replacement)
    with pytest.raises(DeclarationError):
        PerRecordBound(lower, upper).sensitivity(FeatureLevel(2))


def test_unknown_relation_is_refused():
    with pytest.raises(DeclarationError, match="unsupported neighbouring relation"):
        relation_of(dp.absolute_distance(T=float))
