"""Group-by on the Dask engine, on a real ``distributed.LocalCluster`` of two worker processes: the pandas group-by's
counts exactly and its sums within the stated float bound for several partitionings (a group in every partition, a
group in one, missing keys, keys outside the public set, label columns of mixed and differing dtypes), adversarial
values spread over partitions against exact rational sums, maps equal to the pandas maps plus the stated relaxation,
and the pandas path's refusals.

OpenDP's noise cannot be seeded: the private releases are compared through their pre-noise transformations and
their accounting records; releases run on the cluster too.
"""

from __future__ import annotations

import decimal
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

import dask  # noqa: E402
import opendp.prelude as dp  # noqa: E402

# the engine tests' LocalCluster fixture (two worker processes, one thread each) and their partitioner
from test_dask_engine import _uneven, client  # noqa: E402, F401

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.accounting import accounting_of  # noqa: E402
from opendp_hybridad.analysis.rounding import TINY, UNIT_ROUNDOFF, add_up  # noqa: E402
from opendp_hybridad.errors import DeclarationError  # noqa: E402
from opendp_hybridad.frame import dask_engine as de  # noqa: E402
from opendp_hybridad.frame import dask_groupby as dg  # noqa: E402
from opendp_hybridad.frame.aggregate import sum_relaxation  # noqa: E402
from opendp_hybridad.frame.domain import make_frame_domain  # noqa: E402
from opendp_hybridad.frame.groupby import (  # noqa: E402
    make_grouped_count_of,
    make_grouped_sum_of,
    make_private_grouped_count,
    make_private_grouped_mean,
    make_private_grouped_sum,
)
from opendp_hybridad.relations import feature_distance  # noqa: E402

SCHEMA = hd.Schema(w=hd.Field(40, 200, missing="drop"), h=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
BMI = hd.RecordFunction("w/h**2", SCHEMA)
SYM = dp.symmetric_distance()
CHANGE = dp.change_one_distance()
KEYS = ["b", "zz", "a", "c"]  # output order is the given order; "zz" never occurs

pytestmark = pytest.mark.usefixtures("client")  # every test here runs with the cluster up (one per module)


def _records(n: int, seed: int = 7) -> pd.DataFrame:
    """Values outside the box, dropped and imputed values; keys: "a", "b" everywhere, "c" only in rows 100..139,
    "d" (not a public key) and missing keys (None, NaN)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(20, 230, n)
    w[rng.random(n) < 0.1] = np.nan  # dropped
    h = rng.uniform(1.3, 2.3, n)
    h[rng.random(n) < 0.1] = np.nan  # imputed
    g = rng.choice(np.array(["a", "b", "d", None, np.nan], dtype=object), n, p=[0.4, 0.35, 0.1, 0.1, 0.05])
    g[100:140] = "c"
    return pd.DataFrame({"w": w, "h": h, "g": g})


def _stated_bound(n: int, max_abs: float, groups: int) -> Fraction:
    """The module's per-dataset bound, recomputed here: g N M + u N M (1 + g) + G TINY / 2, g = k u / (1 - k u)."""
    k = math.ceil(math.log2(n)) if n > 1 else 0
    u = Fraction(1, 2**53)
    g = k * u / (1 - k * u)
    return g * n * Fraction(max_abs) + u * n * Fraction(max_abs) * (1 + g) + groups * Fraction(TINY) / 2


LAYOUTS = {
    "one partition": [],
    "uneven, c inside one partition": [1, 37, 250, 251, 999],
    "c cut across three partitions": [110, 120, 130, 600],
    "empty partitions": [0, 0, 400, 400, 1_200],
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_counts_equal_and_sums_within_the_bound_of_the_pandas_groupby(layout):
    n = 1_500
    frame = _records(n)
    ddf = _uneven(frame, LAYOUTS[layout])
    pandas_domain = make_frame_domain(SCHEMA, size_limit=n, labels=["g"])
    domain = de.make_dask_frame_domain(pandas_domain)
    total = dg.make_dask_grouped_sum_of(domain, SYM, BMI, "g", KEYS)
    count = dg.make_dask_grouped_count_of(domain, SYM, "g", KEYS)
    reference_total = make_grouped_sum_of(pandas_domain, SYM, BMI, "g", KEYS)
    reference_count = make_grouped_count_of(pandas_domain, SYM, "g", KEYS)
    computed = ddf.compute()  # the frame as the partitions deliver it (Dask turned the keys into strings)

    counts = count(ddf)
    assert counts == reference_count(computed) == reference_count(frame)
    kept = frame["w"].notna()
    assert counts == [float((kept & (frame["g"] == key)).sum()) for key in KEYS]  # by hand: None, NaN and "d" dropped
    assert counts[1] == 0.0 and counts[3] > 0

    sums = total(ddf)
    assert sums[1] == 0.0
    # both are within their half of the d_in = 0 map of the exact group sums of the same computed values
    assert sum(abs(x - y) for x, y in zip(sums, reference_total(frame), strict=True)) <= total.map(0)
    # each group is within the bound of the Dask plain sum over that group's records (the same computed values)
    alone = de.make_dask_sum_of(de.make_dask_frame_domain(SCHEMA, size_limit=n), SYM, BMI)
    for key, value in zip(["b", "a", "c"], [sums[0], sums[2], sums[3]], strict=True):
        assert abs(value - alone(ddf[ddf["g"] == key])) <= alone.map(0)


def test_a_group_spread_over_partitions_combines_exactly():
    # group "a" is 1 + 2^-53 + 2^-53 + 2^-1074, one record in each of four partitions: a float sum of the partials
    # in that order loses the halves (ties to even); combined exactly they give the correctly rounded exact sum
    schema = hd.Schema(x=(-4, 4))
    identity = hd.RecordFunction("x", schema)
    values = [1.0, 2.0**-52, 2.0**-53, -1.0, 2.0**-53, 3.0, 0.5, -(2.0**-1074), 2.0**-1074]
    keys = ["a", "b", "a", "b", "a", "b", "zz", "b", "a"]
    frame = pd.DataFrame({"x": values, "g": keys})
    domain = de.make_dask_frame_domain(schema, size_limit=len(values), labels=["g"])
    total = dg.make_dask_grouped_sum_of(domain, SYM, identity, "g", ["a", "b"])
    exact = [sum((Fraction(v) for v, k in zip(values, keys, strict=True) if k == key), Fraction(0)) for key in "ab"]
    spread = total(_uneven(frame, [2, 4, 7]))
    assert spread == [float(e) for e in exact] == [1.0 + 2.0**-52, 2.0]
    assert total(_uneven(frame, list(range(1, len(values))))) == spread  # one record a partition: the same
    # the pandas group-by (one pairwise sum per group) and one Dask partition give 1.0: within the map of each other
    pandas_domain = make_frame_domain(schema, size_limit=len(values), labels=["g"])
    whole = make_grouped_sum_of(pandas_domain, SYM, identity, "g", ["a", "b"])(frame)
    assert whole[0] == 1.0 == total(_uneven(frame, []))[0]
    assert sum(abs(x - y) for x, y in zip(spread, whole, strict=True)) <= total.map(0)


@pytest.mark.parametrize("cuts", [[2, 4, 9], [1, 2, 3, 5, 8, 13], [7]], ids=["three", "many", "two"])
def test_adversarial_values_against_exact_rational_group_sums(cuts):
    big = 1e300
    schema = hd.Schema(x=(-big, big))
    identity = hd.RecordFunction("x", schema)
    values = [big, 1.0, -big, 1.0, 2.0**-1074, 1e-300, 1e16, -1e16, 3.0, -(2.0**-1074), big / 3, -big / 3, 0.5, 1e-17,
              -big, big]
    keys = ["a", "a", "a", "b", "b", "a", "b", "b", "a", "a", "b", "a", "c", "a", "b", "b"]
    frame = pd.DataFrame({"x": values, "g": keys})
    n, groups = len(values), ["a", "b", "c"]
    domain = de.make_dask_frame_domain(schema, size_limit=n, labels=["g"])
    total = dg.make_dask_grouped_sum_of(domain, SYM, identity, "g", groups)
    exact = [sum((Fraction(v) for v, k in zip(values, keys, strict=True) if k == key), Fraction(0)) for key in groups]
    result = total(_uneven(frame, cuts))
    error = sum(abs(Fraction(r) - e) for r, e in zip(result, exact, strict=True))
    bound = _stated_bound(n, big, len(groups))
    assert error <= bound
    assert float(bound) <= total.map(0) / 2  # the map covers the stated bound for both neighbours
    l2 = dg.make_dask_grouped_sum_of(domain, SYM, identity, "g", groups, norm=2)
    assert l2(_uneven(frame, cuts)) == result and l2.map(0) == total.map(0)  # ||e||_2 <= ||e||_1: the same bound


def test_maps_are_the_pandas_maps_plus_the_stated_relaxation():
    n = 10_000
    pandas_domain = make_frame_domain(SCHEMA, size_limit=n, labels=["g"])
    domain = de.make_dask_frame_domain(pandas_domain)
    extra = dg.grouped_reduction_relaxation(n, BMI.range().upper, len(KEYS))
    assert extra == de.reduction_relaxation(n, BMI.range().upper, roundings=len(KEYS))
    # closed form: 2 u N M (1 + g) + G TINY, rounded up by a hair at most
    k = math.ceil(math.log2(n))
    u = Fraction(UNIT_ROUNDOFF)
    closed = 2 * u * n * Fraction(BMI.range().upper) * (1 + k * u / (1 - k * u)) + len(KEYS) * Fraction(TINY)
    assert closed <= Fraction(extra) <= closed * (1 + Fraction(1, 2**50))
    assert BMI.range().lower > 0  # M = max(|L|, |U|) = U
    for metric in (SYM, CHANGE):
        for norm in (1, 2):
            ours = dg.make_dask_grouped_sum_of(domain, metric, BMI, "g", KEYS, norm=norm)
            theirs = make_grouped_sum_of(pandas_domain, metric, BMI, "g", KEYS, norm=norm)
            for d_in in (0, 1, 2, 7):
                assert ours.map(d_in) == add_up(theirs.map(d_in), extra)
            counted = dg.make_dask_grouped_count_of(domain, metric, "g", KEYS, norm=norm)
            reference = make_grouped_count_of(pandas_domain, metric, "g", KEYS, norm=norm)
            assert [counted.map(d) for d in (0, 1, 3)] == [reference.map(d) for d in (0, 1, 3)]
    # the plain sum's relaxation counts one rounding; G group totals count G (visible where M is subnormal)
    tiny_schema = hd.Schema(x=(0, 2.0**-1074 * 8))
    x = hd.RecordFunction("x", tiny_schema)
    tiny = de.make_dask_frame_domain(tiny_schema, size_limit=4, labels=["g"])
    grouped = dg.make_dask_grouped_sum_of(tiny, SYM, x, "g", list(range(50)))
    plain = make_grouped_sum_of(make_frame_domain(tiny_schema, size_limit=4, labels=["g"]), SYM, x, "g", list(range(50)))
    assert grouped.map(0) - plain.map(0) >= 50 * TINY
    # the plain Dask sum's relaxation is unchanged
    assert de.reduction_relaxation(n, 7.5) == de.reduction_relaxation(n, 7.5, roundings=1)
    assert de.reduction_relaxation(n, 7.5) >= 2 * UNIT_ROUNDOFF * n * 7.5 and sum_relaxation(n, 7.5) > 0


class _Loud:
    """A key value whose hash collides with the public key "a" and whose comparison raises (picklable)."""

    def __hash__(self) -> int:
        return hash("a")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("SECRET")


def test_mixed_and_differing_label_dtypes_group_value_by_value():
    # with Dask's convert-string off, object keys reach the partitions as they are; each partition has its own dtype
    parts = [pd.DataFrame({"w": [60.0, 70.0, 80.0], "h": 1.7, "g": pd.Series([1, 2, 1], dtype="int64")}),
             pd.DataFrame({"w": [60.0] * 8, "h": 1.7,
                           "g": pd.Series([True, "1", 1.0, None, decimal.Decimal("1"), ["x"], _Loud(), "a"], dtype=object)}),
             pd.DataFrame({"w": [90.0, 100.0, 110.0], "h": 1.7, "g": pd.Series([1.0, np.nan, 2.0], dtype="float64")}),
             pd.DataFrame({"w": [120.0, 130.0], "h": 1.7, "g": pd.Series(["1", "b"], dtype="category")})]
    with dask.config.set({"dataframe.convert-string": False}):
        # verify_meta=False: the partitions' dtypes differ from the metadata's (what a user's loader may deliver)
        ddf = dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=parts[1].iloc[:0], verify_meta=False)
    keys = [1, "1", 2, "a"]
    domain = de.make_dask_frame_domain(SCHEMA, size_limit=20, labels=["g"])
    counts = dg.make_dask_grouped_count_of(domain, SYM, "g", keys)(ddf)
    # by hand: 1 <- 1, 1, True, 1.0, Decimal(1), 1.0; "1" <- "1", "1"; 2 <- 2, 2.0; "a" <- "a" (the loud key is not "a")
    assert counts == [6.0, 2.0, 2.0, 1.0]
    pandas_domain = make_frame_domain(SCHEMA, size_limit=20, labels=["g"])
    whole = pd.concat(parts, ignore_index=True)  # object dtype: every value as it was
    assert counts == make_grouped_count_of(pandas_domain, SYM, "g", keys)(whole)
    sums = dg.make_dask_grouped_sum_of(domain, SYM, BMI, "g", keys)(ddf)
    reference = make_grouped_sum_of(pandas_domain, SYM, BMI, "g", keys)(whole)
    assert sum(abs(x - y) for x, y in zip(sums, reference, strict=True)) <= dg.make_dask_grouped_sum_of(
        domain, SYM, BMI, "g", keys).map(0)


def test_convert_string_keys_group_as_the_computed_frame():
    # Dask's default turns an object key column into text when the frame is built: the computed frame's keys are texts
    frame = pd.DataFrame({"w": [60.0, 70.0, 80.0, 90.0], "h": 1.7, "g": pd.Series([1, "1", None, 2], dtype=object)})
    with dask.config.set({"dataframe.convert-string": True}):
        ddf = dd.from_pandas(frame, npartitions=2)
    domain = de.make_dask_frame_domain(SCHEMA, size_limit=10, labels=["g"])
    counts = dg.make_dask_grouped_count_of(domain, SYM, "g", [1, "1", "2"])(ddf)
    reference = make_grouped_count_of(make_frame_domain(SCHEMA, size_limit=10, labels=["g"]), SYM, "g", [1, "1", "2"])
    assert counts == reference(ddf.compute()) == [0.0, 2.0, 1.0]
    assert reference(frame) == [1.0, 1.0, 0.0]  # the source frame differs: Dask changed the keys, not the group-by


def _refusal(transformation, data) -> str:
    with pytest.raises(Exception) as info:  # OpenDP wraps the user function's SchemaMismatchError
        transformation(data)
    return str(info.value)


def _exploding(frame: pd.DataFrame) -> object:
    """A Dask frame with ``frame``'s metadata whose partitions raise if any task runs."""
    def boom() -> pd.DataFrame:
        raise RuntimeError("a task ran")

    return dd.from_delayed([dask.delayed(boom)()], meta=frame.iloc[:0])


def test_non_members_are_refused_with_the_pandas_errors():
    frame = _records(600, seed=3).fillna({"g": "a", "w": 70.0})
    strict = de.make_dask_frame_domain(SCHEMA, size_limit=600, labels={"g": "raise"})
    t = dg.make_dask_grouped_sum_of(strict, SYM, BMI, "g", KEYS)
    c = dg.make_dask_grouped_count_of(strict, SYM, "g", KEYS)
    assert len(t(_uneven(frame, [200, 400]))) == len(KEYS)
    # a missing key in the last partition only: refused by that partition's check, in the same pass
    late = frame.copy()
    late.loc[599, "g"] = None
    for query in (t, c):
        message = _refusal(query, _uneven(late, [200, 400]))
        assert "SchemaMismatchError" in message and "key column 'g' has missing keys" in message
    # every partition is under the size limit, the total is not
    small = dg.make_dask_grouped_count_of(de.make_dask_frame_domain(SCHEMA, size_limit=500, labels=["g"]), SYM, "g", KEYS)
    assert "size limit 500" in _refusal(small, _uneven(frame, [200, 400]))
    # a public kept size is a total too
    sized = dg.make_dask_grouped_count_of(de.make_dask_frame_domain(SCHEMA, size_limit=600, size=10, labels=["g"]), SYM,
                                          "g", KEYS)
    assert "exactly 10 records" in _refusal(sized, _uneven(frame, [300]))
    # metadata: checked before any task (a task here would raise RuntimeError)
    assert "key column 'g' is missing" in _refusal(t, _exploding(frame.drop(columns="g")))
    assert "column 'w' is missing" in _refusal(c, _exploding(frame.drop(columns="w")))
    text = frame.assign(w=frame["w"].map(lambda v: f"{v:.17g}"))
    message = _refusal(t, _exploding(text))
    assert "column 'w' has dtype" in message and "a task ran" not in message
    assert "{:.17g}".format(frame["w"].iloc[0]) not in message
    assert "expected a dask DataFrame" in _refusal(t, frame)
    assert not strict.member(frame) and strict.member(dd.from_pandas(frame, npartitions=2))


def test_declarations_the_engine_refuses():
    domain = de.make_dask_frame_domain(SCHEMA, labels=["g"])
    with pytest.raises(DeclarationError, match="feature-level"):
        dg.make_dask_grouped_sum_of(domain, feature_distance(2), BMI, "g", KEYS)
    with pytest.raises(DeclarationError, match="feature-level"):
        dg.make_dask_grouped_count_of(domain, feature_distance(2), "g", KEYS)
    with pytest.raises(DeclarationError, match="Dask frame domain"):
        dg.make_dask_grouped_sum_of(make_frame_domain(SCHEMA, labels=["g"]), SYM, BMI, "g", KEYS)
    with pytest.raises(DeclarationError, match="not declared"):
        dg.make_dask_grouped_sum_of(de.make_dask_frame_domain(SCHEMA), SYM, BMI, "g", KEYS)
    with pytest.raises(DeclarationError, match="not declared"):
        dg.make_dask_grouped_count_of(de.make_dask_frame_domain(SCHEMA), SYM, "g", KEYS)
    with pytest.raises(DeclarationError, match="distinct"):
        dg.make_dask_grouped_count_of(domain, SYM, "g", ["a", "a"])
    with pytest.raises(DeclarationError, match="l1"):
        dg.make_dask_grouped_sum_of(domain, SYM, BMI, "g", KEYS, norm="inf")
    with pytest.raises(DeclarationError, match="overflow"):
        huge = hd.Schema(x=(-1e300, 1e300))  # 2^32 (the default size_limit) times 1e300 is not finite
        dg.make_dask_grouped_sum_of(de.make_dask_frame_domain(huge, labels=["g"]), SYM, hd.RecordFunction("x", huge), "g",
                                    KEYS)
    with pytest.raises(DeclarationError, match="missing-key policy"):
        dg.make_private_dask_grouped_count(domain, by="g", keys=KEYS, missing_key="raise", epsilon=1.0)


def test_private_releases_use_the_pandas_noise_path():
    n = 2_000
    frame = _records(n, seed=11)
    ddf = _uneven(frame, [500, 1_300])
    private = dg.make_private_dask_grouped_sum(SCHEMA, BMI, by="g", keys=KEYS, epsilon=1.0, size_limit=n)
    reference = make_private_grouped_sum(SCHEMA, BMI, by="g", keys=KEYS, epsilon=1.0, size_limit=n)
    ours, theirs = accounting_of(private), accounting_of(reference)
    assert ours.mechanism == theirs.mechanism == "laplace"
    extra = dg.grouped_reduction_relaxation(n, BMI.range().upper, len(KEYS))
    assert theirs.sensitivity < ours.sensitivity <= (theirs.sensitivity + extra) * (1 + 2**-50)
    assert private.map(1) <= 1.0 and len(private(ddf)) == len(KEYS)
    gaussian = dg.make_private_dask_grouped_count(SCHEMA, by="g", keys=KEYS, rho=0.5, size_limit=n)
    pandas_gaussian = accounting_of(make_private_grouped_count(SCHEMA, by="g", keys=KEYS, rho=0.5, size_limit=n))
    assert accounting_of(gaussian).mechanism == "gaussian" == pandas_gaussian.mechanism
    assert accounting_of(gaussian).sensitivity == pandas_gaussian.sensitivity  # exact counts: the pandas map
    assert all(math.isfinite(v) for v in gaussian(ddf))
    mean = dg.make_private_dask_grouped_mean(SCHEMA, BMI, by="g", keys=KEYS, epsilon=1.0, size_limit=n)
    pandas_mean = make_private_grouped_mean(SCHEMA, BMI, by="g", keys=KEYS, epsilon=1.0, size_limit=n)
    assert [p.mechanism for p in accounting_of(mean).parts] == [p.mechanism for p in accounting_of(pandas_mean).parts]
    assert accounting_of(mean).parts[1].scale == accounting_of(pandas_mean).parts[1].scale  # the counts: same map
    assert all(BMI.range().lower <= v <= BMI.range().upper for v in mean(ddf))
    chained = de.make_dask_frame_domain(SCHEMA, size_limit=n, labels=["g"]), SYM
    assert (chained >> dg.then_private_dask_grouped_sum(BMI, by="g", keys=KEYS, epsilon=1.0)).map(1) <= 1.0
    assert (chained >> dg.then_private_dask_grouped_mean(BMI, by="g", keys=KEYS, rho=1.0)).map(1) <= 1.0
    then_counts = (chained >> dg.then_dask_grouped_count_of("g", KEYS))(ddf)
    assert then_counts == make_grouped_count_of(make_frame_domain(SCHEMA, size_limit=n, labels=["g"]), SYM, "g", KEYS)(
        ddf.compute())
    then_sums = (chained >> dg.then_dask_grouped_sum_of(BMI, "g", KEYS))(ddf)
    assert then_sums == dg.make_dask_grouped_sum_of(chained[0], SYM, BMI, "g", KEYS)(ddf)  # exact: no order effect


def test_neighbours_stay_within_the_map():
    rng = np.random.default_rng(5)
    n = 300
    base = _records(n, seed=5)
    domain = de.make_dask_frame_domain(SCHEMA, size_limit=n + 1, labels=["g"])
    for replace, norm in ((False, 1), (False, 2), (True, 1), (True, 2)):
        metric = CHANGE if replace else SYM
        total = dg.make_dask_grouped_sum_of(domain, metric, BMI, "g", KEYS, norm=norm)
        count = dg.make_dask_grouped_count_of(domain, metric, "g", KEYS, norm=norm)
        checked = 0
        for _ in range(3):
            row = pd.DataFrame({"w": [rng.uniform(20, 230)], "h": [rng.uniform(1.3, 2.3)],
                                "g": pd.Series([rng.choice(["a", "b", "c", "d"])], dtype=object)})
            if not replace:
                other = pd.concat([base, row], ignore_index=True)
            else:  # the record at a random position replaced, possibly moving between groups
                other = base.copy()
                other.iloc[int(rng.integers(n))] = row.iloc[0]
            left = _uneven(base, sorted(rng.integers(0, n, 3).tolist()))
            right = _uneven(other, sorted(rng.integers(0, len(other), 4).tolist()))
            for query in (total, count):
                a, b = np.array(query(left)), np.array(query(right))
                assert np.linalg.norm(a - b, ord=norm) <= query.map(1)  # one record added, or one replaced
            checked += 1
        assert checked == 3


def test_total_on_neighbours():
    from helpers.totality import assert_total_on_neighbours

    base = _records(200, seed=9)
    odd = [{"w": np.inf, "h": 1.7, "g": ["SECRET"]}, {"w": 80.0, "h": np.nan, "g": _Loud()},
           {"w": np.nan, "h": 0.0, "g": decimal.Decimal("sNaN")}, {"w": 50.0, "h": np.inf, "g": float("nan")}]
    domain = de.make_dask_frame_domain(SCHEMA, size_limit=len(base) + 1, labels=["g"])
    releases = [dg.make_private_dask_grouped_sum(domain, BMI, by="g", keys=KEYS, epsilon=1.0),
                dg.make_private_dask_grouped_count(domain, by="g", keys=KEYS, rho=1.0),
                dg.make_private_dask_grouped_mean(domain, BMI, by="g", keys=KEYS, epsilon=1.0)]
    pairs = []
    with dask.config.set({"dataframe.convert-string": False}):
        for row in odd:  # the added record lands in the last partition, its key as it is
            grown = pd.concat([base, pd.DataFrame([row]).astype({"g": object})], ignore_index=True)
            pairs.append((_uneven(base, [50, 120]), _uneven(grown, [50, 120])))
    for release in releases:
        assert assert_total_on_neighbours(release, pairs) == len(odd)


def test_a_partition_that_cannot_be_computed_is_refused_without_its_message():
    # adversarial review: a column whose metadata says float64 but whose task fails to convert quoted the private value
    from opendp_hybridad.errors import SchemaMismatchError

    schema = hd.Schema(x=hd.Field(-1, 1))
    src = pd.DataFrame({"x": pd.Series(["0.5", "SECRET-4711"], dtype=object), "g": ["a", "b"]})
    with dask.config.set({"dataframe.convert-string": False}):
        frame = dd.from_pandas(src, npartitions=1)
        frame["x"] = frame["x"].astype("float64")
    grouped = de.make_dask_frame_domain(schema, size_limit=100, labels={"g": "drop"})
    plain = de.make_dask_frame_domain(schema, size_limit=100)
    for query in (dg.make_dask_grouped_count_of(grouped, dp.symmetric_distance(), "g", ["a", "b"]),
                  dg.make_dask_grouped_sum_of(grouped, dp.symmetric_distance(), hd.RecordFunction("x", schema), "g",
                                              ["a", "b"]),
                  de.make_dask_sum_of(plain, dp.symmetric_distance(), hd.RecordFunction("x", schema))):
        with pytest.raises(Exception) as info:
            query(frame)
        assert "SECRET" not in str(info.value) and "could not be computed" in str(info.value)
        assert isinstance(info.value, SchemaMismatchError) or "SchemaMismatchError" in str(info.value)
