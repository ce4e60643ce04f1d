"""The individual filter on Dask, on a real ``distributed.LocalCluster`` of two worker processes: the pandas filter's
answers, charges, admissions and ledger records bit for bit, for several partitionings of the same data (one person
spread over every partition, ``max_rows`` cut across partitions, missing ids, huge, tiny and cancelling values), the
ledger committed before any answer, and the same refusals (naming the column, never a value).

OpenDP's noise cannot be seeded: answers are compared through ``exact_sum_vector`` (the pre-noise totals, charged
as a query is) and the ledgers; one noisy query runs on the cluster too.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.errors import DeclarationError, SchemaMismatchError  # noqa: E402
from opendp_hybridad.individual import filter as filter_module  # noqa: E402
from opendp_hybridad.individual.charges import float_allowance  # noqa: E402
from opendp_hybridad.individual.dask_filter import DaskIndividualFilter  # noqa: E402
from opendp_hybridad.individual.filter import IndividualFilter  # noqa: E402

SCHEMA = hd.Schema(x=(-5, 5), y=hd.Field(0, 3, missing="drop"), z=hd.Field(-1, 1, missing="impute", impute=0.5))
XY = hd.RecordFunction("x*y", SCHEMA)
Z = hd.RecordFunction("z + x", SCHEMA)
HUGE = hd.Schema(v=(-1e100, 1e100))  # squares of sums stay finite: the charges are finite
V = hd.RecordFunction("v", HUGE)
SMALL = hd.Schema(v=(-1000, 1000))
W = hd.RecordFunction("v", SMALL)


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each: every partition is computed in another process than the driver's."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _uneven(frame: pd.DataFrame, cuts: list[int]) -> object:
    """A Dask frame whose partitions are the given slices of ``frame`` (unequal sizes, empty ones allowed)."""
    import dask

    bounds = [0, *cuts, len(frame)]
    return dd.from_delayed([dask.delayed(lambda p: p)(frame.iloc[lo:hi].copy()) for lo, hi in itertools.pairwise(bounds)],
                           meta=frame.iloc[:0])


def _records(n: int = 600, seed: int = 3) -> pd.DataFrame:
    """Values outside the box, missing ids, dropped and imputed values; person 0 has a row in every slice of 20 rows."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(-7, 7, n), "y": rng.uniform(-1, 4, n), "z": rng.uniform(-2, 2, n),
                          "person": rng.integers(1, 60, n).astype(float)})
    frame.loc[::20, "person"] = 0.0  # in every partition of every partitioning below
    frame.loc[rng.choice(n, 40, replace=False), "person"] = np.nan  # belongs to nobody
    frame.loc[rng.choice(n, 30, replace=False), "y"] = np.nan  # dropped
    frame.loc[rng.choice(n, 30, replace=False), "z"] = np.nan  # imputed
    frame.loc[rng.choice(n, 3, replace=False), "x"] = np.inf  # clamped
    return frame


PARTITIONINGS = [[], [1, 2, 3], [100, 101, 350], [37, 74, 111, 148, 185, 222, 259, 296, 333, 370, 407, 444, 481, 518, 555],
                 [0, 0, 599]]


def _compare(pandas_filter: IndividualFilter, dask_filter: DaskIndividualFilter, queries: list) -> None:
    """Each query charged on both; pre-noise totals, per-person spent and reports equal, bit for bit."""
    for functions, scale in queries:
        expected = pandas_filter.exact_sum_vector(functions, scale)
        got = dask_filter.exact_sum_vector(functions, scale)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(dask_filter.spent(), pandas_filter.spent())  # people in order of first appearance
        assert dask_filter.reports[-1] == pandas_filter.reports[-1]
    assert dask_filter.active() == pandas_filter.active()
    assert dask_filter.ledger.summary()["retired"] == pandas_filter.ledger.summary()["retired"]


@pytest.mark.parametrize("cuts", PARTITIONINGS)
def test_same_charges_admissions_and_totals_as_pandas_for_every_partitioning(client, cuts):
    frame = _records()
    queries = [([XY], 30.0), ([XY, Z], 20.0), ([Z], 15.0), ([XY], 10.0), ([XY, Z], 10.0)]
    for kind, alpha, budget in (("renyi", 4.0, 3.0), ("gdp", None, 2.0)):
        kwargs = {"budget": budget, "kind": kind, "alpha": alpha, "id_column": "person", "max_rows": 7, "size_limit": 1000}
        reference = IndividualFilter(frame, SCHEMA, **kwargs)
        distributed_filter = DaskIndividualFilter(_uneven(frame, cuts), SCHEMA, **kwargs)
        _compare(reference, distributed_filter, queries)
        assert 0 < reference.active() < reference._m == 60  # some people retired (admissions differ between people), some not


def test_max_rows_cut_across_partitions_keeps_the_first_rows_in_frame_order(client):
    # person 1's rows 0..9 lie in partitions [0, 3), [3, 5), [5, 10): with max_rows = 4 the cut falls inside the
    # second partition; a per-partition cut (4 of each) would count rows 0..3, 3..4 and 5..8
    values = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    frame = pd.DataFrame({"v": values, "person": [1] * 10})
    flt = DaskIndividualFilter(_uneven(frame, [3, 5]), SMALL, budget=1e9, alpha=2.0, id_column="person", max_rows=4,
                               size_limit=100)
    assert flt.exact_sum_vector([W], 1.0)[0] == 15.0
    reference = IndividualFilter(frame, SMALL, budget=1e9, alpha=2.0, id_column="person", max_rows=4, size_limit=100)
    _compare(reference, DaskIndividualFilter(_uneven(frame, [3, 5]), SMALL, budget=1e9, alpha=2.0, id_column="person",
                                             max_rows=4, size_limit=100), [([W], 1.0)])


def test_huge_tiny_and_cancelling_values_of_one_person_across_partitions(client):
    # one person's values cancel (1e100 - 1e100) around tiny ones, each in another partition: the sequential sum in
    # frame order is the pandas path's float, whatever the partitioning; an exact sum of per-partition partials
    # would give another float here (the tiny values survive it), so the test fails if partials were combined
    huge = [1e100, 5e-324, 1e-300, -1e100, 2.5e-310, 3.0, -1e100, 1e100]
    frame = pd.DataFrame({"v": [*huge, 7.0, -1.0, 2.0], "person": ["a"] * 8 + ["b", "b", "c"]})
    kwargs = {"budget": 1e12, "kind": "gdp", "id_column": "person", "max_rows": 16, "size_limit": 64}
    sequential = 0.0
    for v in huge:
        sequential += v
    assert sequential != float(sum(map(Fraction, huge)))  # the two ways of summing differ on this data
    for cuts in ([], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [4, 9]):
        reference = IndividualFilter(frame, HUGE, **kwargs)
        flt = DaskIndividualFilter(_uneven(frame, cuts), HUGE, **kwargs)
        _compare(reference, flt, [([V], 1e102)])
        total = flt.exact_sum_vector([V], 1e102)[0]
        assert total == sequential + 8.0 == 8.0  # a's sum is the sequential 0.0; correctly rounded it would be 3.0
        exact = Fraction(sequential) + Fraction(6.0) + Fraction(2.0)  # s_a + s_b + s_c, exactly
        assert abs(Fraction(total) - exact) <= Fraction(float_allowance(64, 16, 1e100)) / 2


def test_missing_ids_are_dropped_and_ids_are_keyed_by_value_across_partitions(client):
    # 1 (int-valued float in one partition) and Decimal-free equal numbers across partitions are one person
    frame = pd.DataFrame({"v": [1.0, 2.0, 4.0, 8.0, 16.0], "person": [1.0, np.nan, 1.0, 2.0, np.nan]})
    flt = DaskIndividualFilter(_uneven(frame, [1, 2, 3]), SMALL, budget=1e9, alpha=2.0, id_column="person",
                               size_limit=10)
    assert flt.exact_sum_vector([W], 1.0)[0] == 13.0  # rows with a missing id belong to nobody
    assert flt.spent().shape == (2,)
    np.testing.assert_array_equal(flt.hashes_of([1, 2]), flt._hashes)  # the int ids key the float column's people


def test_partitions_with_different_id_dtypes_keep_each_id_exact(client):
    # int64 2**53 + 1 in one partition, float64 2**53 in another: concatenated as float64 they would be one person
    import dask

    left = pd.DataFrame({"v": [1.0, 2.0], "person": np.array([2**53 + 1, 5], dtype=np.int64)})
    right = pd.DataFrame({"v": [4.0, 8.0], "person": np.array([2.0**53, 5.0])})
    frame = dd.from_delayed([dask.delayed(lambda p: p)(left), dask.delayed(lambda p: p)(right)], meta=left.iloc[:0],
                            verify_meta=False)
    flt = DaskIndividualFilter(frame, SMALL, budget=1e9, alpha=2.0, id_column="person", size_limit=10)
    assert flt.spent().shape == (3,)  # 2**53 + 1, 5 (int and float: one person) and 2**53
    np.testing.assert_array_equal(np.sort(flt._hashes), np.sort(flt.hashes_of([2**53 + 1, 5, 2**53])))
    assert flt.exact_sum_vector([W], 1.0)[0] == 15.0


def test_without_an_id_column_every_row_is_a_person_numbered_by_global_position(client):
    frame = _records(120)
    kwargs = {"budget": 1.0, "alpha": 3.0, "size_limit": 200}
    reference = IndividualFilter(frame, SCHEMA, **kwargs)
    flt = DaskIndividualFilter(_uneven(frame, [10, 60, 61]), SCHEMA, **kwargs)
    _compare(reference, flt, [([XY], 2.0), ([XY], 1.0)])
    kept = np.flatnonzero(frame["y"].notna().to_numpy())
    np.testing.assert_array_equal(flt._hashes, flt.hashes_of(kept))  # ids are positions in the whole frame


def test_the_ledger_is_committed_before_any_answer(client, tmp_path, monkeypatch):
    path = str(tmp_path / "ledger.sqlite")
    flt = DaskIndividualFilter(_uneven(_records(), [200, 400]), SCHEMA, budget=5.0, alpha=2.0, id_column="person",
                               ledger=path, size_limit=1000)
    seen = []
    gaussian = filter_module._gaussian

    def checked(scale, k):  # called with the pre-noise totals already computed, before the answer is released
        with sqlite3.connect(path) as other:  # another connection sees committed transactions only
            seen.append(other.execute("SELECT count(*) FROM queries").fetchone()[0])
        return gaussian(scale, k)

    monkeypatch.setattr(filter_module, "_gaussian", checked)
    answer = flt.sum(XY, 2.0, label="q1")
    flt.sum_vector([XY, Z], 2.0, label="q2")
    assert seen == [1, 2] and math.isfinite(answer)
    flt.ledger.close()


def test_a_vector_query_reads_the_partitions_once_and_bad_functions_are_refused_as_in_pandas(client, monkeypatch):
    frame = _records(200)
    kwargs = {"budget": 5.0, "alpha": 2.0, "id_column": "person", "size_limit": 1000}
    reference = IndividualFilter(frame, SCHEMA, **kwargs)
    flt = DaskIndividualFilter(_uneven(frame, [70, 140]), SCHEMA, **kwargs)
    passes = []
    real = flt._pass
    monkeypatch.setattr(flt, "_pass", lambda task: passes.append(task) or real(task))
    _compare(reference, flt, [([XY, Z, XY], 40.0)])
    assert len(passes) == 1
    other = hd.RecordFunction("v", SMALL)  # another schema's function: refused before any pass or charge
    for f in (reference, flt):
        with pytest.raises(DeclarationError, match="RecordFunction over the filter's schema"):
            f.exact_sum_vector([XY, other], 40.0)
    assert len(passes) == 1 and flt.ledger.summary()["queries"] == 1


def test_neighbours_one_person_added_or_removed_both_release(client):
    frame = _records()
    without = frame[frame["person"] != 5.0].reset_index(drop=True)
    for data in (frame, without):
        flt = DaskIndividualFilter(_uneven(data, [100, 300]), SCHEMA, budget=2.0, alpha=2.0, id_column="person",
                                   size_limit=len(frame))
        assert np.isfinite(flt.sum_vector([XY, Z], 2.0)).all()


def test_refusals_name_the_column_never_a_value(client):
    frame = _records(100)
    secret = 987654.321
    bad = frame.copy()
    strict = hd.Schema(x=(-5, 5), y=hd.Field(0, 3, missing="drop"), z=(-1, 1))  # z: missing values refused
    bad.loc[70, "z"] = np.nan
    bad.loc[71, "x"] = secret
    with pytest.raises(SchemaMismatchError, match="column 'z'") as info:
        DaskIndividualFilter(_uneven(bad, [50]), strict, budget=1.0, alpha=2.0, id_column="person", size_limit=1000)
    assert "987654" not in str(info.value)
    with pytest.raises(SchemaMismatchError, match="'nobody'"):
        DaskIndividualFilter(_uneven(frame, [50]), SCHEMA, budget=1.0, alpha=2.0, id_column="nobody", size_limit=1000)
    with pytest.raises(SchemaMismatchError, match="dask DataFrame"):
        DaskIndividualFilter(frame, SCHEMA, budget=1.0, alpha=2.0, id_column="person")
    # every partition under the size limit, the whole frame over it: refused before any charge
    with pytest.raises(SchemaMismatchError, match="size limit 99"):
        DaskIndividualFilter(_uneven(frame, [50]), SCHEMA, budget=1.0, alpha=2.0, id_column="person", size_limit=99)
    flt = DaskIndividualFilter(_uneven(frame, [50]), SCHEMA, budget=1.0, alpha=2.0, id_column="person", size_limit=100)
    with pytest.raises(DeclarationError, match="pandas"):
        flt.record_columns()
    assert flt.ledger.summary()["queries"] == 0


def test_categorical_ids_whose_categories_differ_by_partition_keep_each_id_exact(client):
    # adversarial review: every categorical prints as "category", so the partitions were concatenated by pandas,
    # which cast int64 categories with float64 ones to float64 and merged 2**53 + 1 with 2**53 (their values cancelled)
    import dask

    left = pd.DataFrame({"v": [4.0], "person": pd.Series([2**53 + 1], dtype=np.int64).astype("category")})
    right = pd.DataFrame({"v": [1.0, -4.0], "person": pd.Series([0.5, 2.0**53]).astype("category")})
    frame = dd.from_delayed([dask.delayed(lambda p: p)(left), dask.delayed(lambda p: p)(right)], meta=left.iloc[:0],
                            verify_meta=False)
    flt = DaskIndividualFilter(frame, SMALL, budget=1e9, alpha=2.0, id_column="person", size_limit=10)
    assert flt.spent().shape == (3,)
    flt.exact_sum_vector([W], 1.0)
    assert np.all(flt.spent() > 0.5)  # merged, 2**53 + 1 and 2**53 would have cancelled to about 1e-28


def test_rows_reordered_between_passes_are_refused_before_any_charge(client):
    # adversarial review: with only the row counts checked, a graph that gave the same rows in another order at the
    # query's pass charged one person's value to another; each pass now returns a digest of its counted rows
    src = pd.DataFrame({"v": [5.0, 0.0, 0.0, 0.0], "person": [1, 2, 3, 4]})
    calls = {"n": 0}

    def order(p: pd.DataFrame) -> pd.DataFrame:
        calls["n"] += 1
        return p if calls["n"] % 2 else p.iloc[::-1]

    import dask

    with dask.config.set(scheduler="synchronous"):  # the counter lives in this process
        frame = dd.from_pandas(src, npartitions=1).map_partitions(order, meta=src.iloc[:0])
        flt = DaskIndividualFilter(frame, SMALL, budget=100.0, alpha=2.0, id_column="person", size_limit=10)
        with pytest.raises(SchemaMismatchError, match="changed between passes"):
            flt.exact_sum_vector([W], 1.0)
    assert np.all(flt.spent() == 0.0)


@pytest.mark.parametrize("buckets", [1, 2, 5])
def test_any_number_of_buckets_gives_the_pandas_answers(client, monkeypatch, buckets):
    # each person's rows meet in one bucket, in frame order, whatever the number of buckets: a bucket rule that
    # split a person (or an order that was not the frame's) would change the max_rows cut or a sequential sum
    from opendp_hybridad.individual import dask_filter

    monkeypatch.setattr(dask_filter, "MAX_BUCKETS", buckets)
    frame = _records()
    kwargs = {"budget": 3.0, "alpha": 4.0, "id_column": "person", "max_rows": 5, "size_limit": 1000}
    flt = DaskIndividualFilter(_uneven(frame, PARTITIONINGS[3]), SCHEMA, **kwargs)
    assert flt._buckets == buckets
    _compare(IndividualFilter(frame, SCHEMA, **kwargs), flt, [([XY, Z], 20.0), ([XY], 10.0), ([Z], 8.0)])


def test_the_driver_holds_per_person_arrays_only(client):
    # 2,000 rows of 20 people: no array the filter keeps on the driver has a row per record
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.uniform(-5, 5, 2000), "y": rng.uniform(0, 3, 2000), "z": rng.uniform(-1, 1, 2000),
                          "person": rng.integers(0, 20, 2000)})
    flt = DaskIndividualFilter(_uneven(frame, [500, 1000, 1500]), SCHEMA, budget=5.0, alpha=2.0, id_column="person",
                               max_rows=200, size_limit=5000)
    flt.exact_sum_vector([XY, Z], 30.0)

    def arrays(value):
        if isinstance(value, np.ndarray):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from arrays(v)

    held = [a for v in vars(flt).values() for a in arrays(v)]
    assert held and max(a.shape[0] for a in held) == flt._m == 20
    assert flt._codes is None and flt._columns is None


def test_ids_are_hashed_once_at_set_up_not_at_each_query(client, monkeypatch):
    import dask

    from opendp_hybridad.individual.ledger import IdHasher

    calls = []
    real = IdHasher.ids
    monkeypatch.setattr(IdHasher, "ids", lambda self, ids: calls.append(len(ids)) or real(self, ids))
    frame = _records(300)
    with dask.config.set(scheduler="synchronous"):  # the counter lives in this process
        flt = DaskIndividualFilter(_uneven(frame, [100, 200]), SCHEMA, budget=5.0, alpha=2.0, id_column="person",
                                   size_limit=1000)
        hashed = len(calls)
        flt.exact_sum_vector([XY], 30.0)
        flt.exact_sum_vector([Z], 30.0)
    assert hashed == 3 and len(calls) == 3  # one call per partition, at set-up only


def test_make_individual_filter_over_a_dask_domain_charges_as_the_pandas_measurement(client, tmp_path):
    import opendp.prelude as dp

    from opendp_hybridad.frame import make_frame_domain
    from opendp_hybridad.frame.dask_engine import make_dask_frame_domain
    from opendp_hybridad.individual.ledger import LedgerParameters, PrivacyLedger
    from opendp_hybridad.individual.measurement import IndividualQuery, individual_distance, make_individual_filter

    dp.enable_features("contrib", "honest-but-curious")
    frame = _records()
    spent = []
    for name, domain, data in (("pandas", make_frame_domain(SCHEMA, size_limit=1000), frame),
                               ("dask", make_dask_frame_domain(SCHEMA, size_limit=1000), _uneven(frame, [100, 300]))):
        path = str(tmp_path / f"{name}.sqlite")
        meas = make_individual_filter(domain, individual_distance("person"), kind="renyi", alpha=4.0, budget=3.0,
                                      ledger=path, id_column="person", max_rows=7)
        assert meas.map(1)(4.0) == 3.0
        queryable = meas(data)
        for functions, scale in (([XY], 10.0), ([XY, Z], 8.0)):
            assert np.isfinite(queryable(IndividualQuery(tuple(functions), noise_scale=scale))).all()
        ledger = PrivacyLedger.open(path, LedgerParameters("renyi", 3.0, 4.0))
        spent.append(np.sort(ledger.spent()))
        ledger.close()
    np.testing.assert_array_equal(spent[0], spent[1])
    assert spent[0].max() > 0


# -- regressions from the second adversarial review (bench/audits/attack_dask_filter_v2.py) ---------------------------
ONE = hd.Schema(x=(-5, 5))
X = hd.RecordFunction("x", ONE)


def _flaky(reads: dict, *by_read: pd.DataFrame):
    """A delayed partition whose n-th read is ``by_read[min(n, len) - 1]``."""
    import dask

    def read() -> pd.DataFrame:
        reads["n"] += 1
        return by_read[min(reads["n"], len(by_read)) - 1]

    return dask.delayed(read, pure=False)()


def _refused_before_any_charge(flt: DaskIndividualFilter) -> None:
    with pytest.raises(SchemaMismatchError, match="changed between passes"):
        flt.exact_sum_vector([X], 1.0)
    assert flt.ledger.summary()["queries"] == 0


def test_values_that_change_under_the_same_ids_are_refused():
    import dask

    reads = {"n": 0}
    first, later = pd.DataFrame({"x": [1.0, 0.0], "person": [1, 2]}), pd.DataFrame({"x": [5.0, 0.0], "person": [1, 2]})
    with dask.config.set(scheduler="synchronous"):
        frame = dd.from_delayed([_flaky(reads, first, later)], meta=first.iloc[:0], verify_meta=False)
        _refused_before_any_charge(DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, id_column="person",
                                                        size_limit=10))


def test_ids_whose_keys_join_into_one_byte_stream_are_told_apart():
    # "a\0s:b", "c" and "a", "b\0s:c": NUL-joined keys gave one digest, so the query's values went to the set-up's ids
    import dask

    reads = {"n": 0}
    before = pd.DataFrame({"x": [5.0, 0.0], "person": ["a\0s:b", "c"]})
    after = pd.DataFrame({"x": [5.0, 0.0], "person": ["a", "b\0s:c"]})
    with dask.config.set(scheduler="synchronous", **{"dataframe.convert-string": False}):
        frame = dd.from_delayed([_flaky(reads, before, after)], meta=before.iloc[:0], verify_meta=False)
        _refused_before_any_charge(DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, id_column="person",
                                                        size_limit=10))


def test_positions_from_another_read_than_the_hashes_are_refused():
    # no id column: the length pass saw 2 rows in partition 0, later reads 3, so positions overlapped
    import dask

    reads = {"n": 0}
    two, three = pd.DataFrame({"x": [1.0, 2.0]}), pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    with dask.config.set(scheduler="synchronous"):
        frame = dd.from_delayed([_flaky(reads, two, three), dask.delayed(lambda: pd.DataFrame({"x": [4.0, 5.0]}))()],
                                meta=two.iloc[:0], verify_meta=False)
        with pytest.raises(SchemaMismatchError, match="changed between passes"):
            DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, size_limit=10)


def test_persisted_hashes_recomputed_from_another_read_are_refused():
    # a lost worker's persisted hashes are recomputed from a re-read with the rows swapped; the query's own read is
    # the set-up's: pairing the two charged one person's value to another (simulated by re-persisting the hashes)
    import dask

    from opendp_hybridad.individual import dask_filter

    reads = {"n": 0}
    original = pd.DataFrame({"x": [5.0, 0.0], "person": [1, 2]})
    swapped = pd.DataFrame({"x": [0.0, 5.0], "person": [2, 1]})
    with dask.config.set(scheduler="synchronous"):
        frame = dd.from_delayed([_flaky(reads, original, swapped, original)], meta=original.iloc[:0],
                                verify_meta=False)
        flt = DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, id_column="person", size_limit=10)
        task = dask_filter._HashPass(flt._partition_domain, "person", flt.ledger.hasher())
        flt._loaded = list(dask.persist(*[dask.delayed(task, pure=False)(p, 0) for p in flt._frame.to_delayed()]))
        _refused_before_any_charge(flt)


def test_without_an_id_column_colliding_positions_are_one_person_on_both_paths(monkeypatch):
    # a 64-bit collision (forced here): rows with one hash are one person, cut to max_rows = 1, on pandas and Dask alike
    import dask

    from opendp_hybridad.individual.ledger import IdHasher

    monkeypatch.setattr(IdHasher, "keys", lambda self, keys: np.zeros(len(keys), dtype=np.uint64))
    frame = pd.DataFrame({"x": [1.0, 2.0, 4.0]})
    reference = IndividualFilter(frame, ONE, budget=100.0, alpha=2.0, size_limit=10)
    with dask.config.set(scheduler="synchronous"):
        flt = DaskIndividualFilter(_uneven(frame, [2]), ONE, budget=100.0, alpha=2.0, size_limit=10)
        _compare(reference, flt, [([X], 1.0)])
    assert reference.exact_sum_vector([X], 1.0)[0] == 1.0  # the first row only


def test_max_rows_beyond_the_limit_is_refused_at_declaration_whatever_the_data():
    from opendp_hybridad.individual.filter import MAX_ROWS_LIMIT

    for data in (pd.DataFrame({"x": [1.0], "person": [1]}), pd.DataFrame({"x": [], "person": []})):
        with pytest.raises(DeclarationError, match="max_rows"):
            IndividualFilter(data, ONE, budget=1.0, alpha=2.0, id_column="person", max_rows=MAX_ROWS_LIMIT + 1)
