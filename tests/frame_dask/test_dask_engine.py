"""The Dask engine on a real ``distributed.LocalCluster`` of worker processes: same answers as pandas within the
stated float bound, exact rational checks of adversarial values spread over partitions, and the same refusals.

OpenDP draws its noise from the operating system's generator (it cannot be seeded), so the private releases are
compared through their pre-noise transformations and their accounting records; a release runs on the cluster too.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

import opendp.prelude as dp  # noqa: E402

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.accounting import accounting_of  # noqa: E402
from opendp_hybridad.analysis.rounding import TINY, UNIT_ROUNDOFF, gamma  # noqa: E402
from opendp_hybridad.frame import dask_engine as de  # noqa: E402
from opendp_hybridad.frame.aggregate import make_sum_of, make_sum_of_vector, sum_relaxation  # noqa: E402
from opendp_hybridad.frame.domain import make_frame_domain  # noqa: E402
from opendp_hybridad.frame.measurements import make_count_of, make_mean_of, make_private_sum  # noqa: E402
from opendp_hybridad.relations import feature_distance  # noqa: E402

SCHEMA = hd.Schema(a=(18, 90), w=hd.Field(40, 200, missing="impute", impute=70), h=hd.Field(1.4, 2.2, missing="drop"))
BMI = hd.RecordFunction("a*w/h**2", SCHEMA)
WEIGHT = hd.RecordFunction("w", SCHEMA)
SYM = dp.symmetric_distance()


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each: every partition is computed in another process than the driver's."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _people(n: int, seed: int = 7) -> pd.DataFrame:
    """Records with values outside the box, infinities and missing heights (dropped), in no particular order."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.uniform(0, 120, n), "w": rng.uniform(20, 260, n), "h": rng.uniform(1.0, 2.6, n),
                          "extra": rng.integers(0, 5, n)})
    frame.loc[rng.choice(n, n // 20, replace=False), "h"] = np.nan
    frame.loc[rng.choice(n, 5, replace=False), "w"] = np.inf
    frame.loc[rng.choice(n, 5, replace=False), "w"] = np.nan
    return frame


def _uneven(frame: pd.DataFrame, cuts: list[int]) -> object:
    """A Dask frame whose partitions are the given slices of ``frame`` (unequal sizes)."""
    bounds = [0, *cuts, len(frame)]
    return dd.from_delayed([_delayed_slice(frame.iloc[lo:hi]) for lo, hi in itertools.pairwise(bounds)],
                           meta=frame.iloc[:0])


def _delayed_slice(part: pd.DataFrame) -> object:
    import dask

    return dask.delayed(lambda p: p)(part.copy())


def test_same_answers_as_pandas_within_the_stated_bound(client):
    n = 20_000
    frame = _people(n)
    ddf = _uneven(frame, [1, 4_000, 4_001, 13_579])
    pandas_domain = make_frame_domain(SCHEMA, size_limit=n)
    dask_domain = de.make_dask_frame_domain(pandas_domain)
    kept = int(frame["h"].notna().sum())

    total = de.make_dask_sum_of(dask_domain, SYM, BMI)
    reference = make_sum_of(pandas_domain, SYM, BMI)
    # both computations are within half of the d_in = 0 stability of the exact sum of the same computed values
    assert abs(total(ddf) - reference(frame)) <= total.map(0)
    assert total.map(0) > reference.map(0) and total.map(3) > reference.map(3)

    count = de.make_dask_count_of(dask_domain, SYM)
    assert count(ddf) == make_count_of(pandas_domain, SYM)(frame) == kept
    assert count.map(2) == 2.0

    vector = de.make_dask_sum_of_vector(dask_domain, SYM, [BMI, WEIGHT], norm=1)
    pandas_vector = make_sum_of_vector(pandas_domain, SYM, [BMI, WEIGHT], norm=1)
    assert sum(abs(x - y) for x, y in zip(vector(ddf), pandas_vector(frame), strict=True)) <= vector.map(0)

    sized = make_frame_domain(SCHEMA, size_limit=n, size=kept)
    mean = de.make_dask_mean_of(de.make_dask_frame_domain(sized), SYM, BMI)
    assert abs(mean(ddf) - make_mean_of(sized, SYM, BMI)(frame)) <= mean.map(0)
    assert ((dask_domain, SYM) >> de.then_dask_sum_of(BMI))(ddf) == total(ddf)  # exact combination: no order effect
    # the partitions ran in the worker processes, on kernels rebuilt there from their source
    rebuilt = client.run(lambda: len(__import__("opendp_hybridad.frame.dask_engine", fromlist=["_"])._WORKER_KERNELS))
    assert len(rebuilt) == 2 and sum(rebuilt.values()) >= 2


def _exact_bound(n: int, max_abs: float) -> float:
    """The stated per-dataset bound from the module docstring: g n M + u n M (1 + g) + TINY / 2, g = gamma(ceil(log2 n))."""
    k = (n - 1).bit_length()
    g = Fraction(gamma(k))
    u = Fraction(UNIT_ROUNDOFF)
    return float(g * n * Fraction(max_abs) + u * n * Fraction(max_abs) * (1 + g) + Fraction(TINY) / 2)


@pytest.mark.parametrize("layout", ["one value a partition", "mixed partitions"])
def test_adversarial_values_against_exact_rational_sums(client, layout):
    big = 1e300
    schema = hd.Schema(x=(-big, big))
    identity = hd.RecordFunction("x", schema)
    values = [big, 1.0, -big, 1.0, 2.0**-1074, 1e-300, 1e16, -1e16, 3.0, -(2.0**-1074), big / 3, -big / 3, 0.5, 1e-17]
    frame = pd.DataFrame({"x": values})
    exact = sum((Fraction(v) for v in values), Fraction(0))
    n = len(values)
    domain = de.make_dask_frame_domain(schema, size_limit=n)
    total = de.make_dask_sum_of(domain, SYM, identity)
    if layout == "one value a partition":
        # each partial sum is exact, so the exact combination returns the correctly rounded exact sum
        ddf = _uneven(frame, list(range(1, n)))
        assert total(ddf) == float(exact) == 5.5
    else:
        # 1e300 and 1.0 share a partition, -1e300 and 1.0 another: the partials lose the ones, the bound holds
        ddf = _uneven(frame, [2, 4, 9])
        result = total(ddf)
        assert abs(Fraction(result) - exact) <= Fraction(_exact_bound(n, big))
        assert _exact_bound(n, big) <= total.map(0) / 2
    assert abs(total(ddf) - make_sum_of(make_frame_domain(schema, size_limit=n), SYM, identity)(frame)) <= total.map(0)


def test_relaxation_is_the_pandas_one_plus_one_rounding_per_dataset():
    n, m = 2**20, 7.5
    extra = de.reduction_relaxation(n, m)
    assert extra >= 2 * UNIT_ROUNDOFF * n * m and extra <= 2.000001 * UNIT_ROUNDOFF * n * m
    assert de.reduction_relaxation(0, m) == 0.0 == de.reduction_relaxation(n, 0.0)
    total = de.make_dask_sum_of(de.make_dask_frame_domain(SCHEMA, size_limit=n), SYM, WEIGHT)
    assert total.map(1) >= 200 + sum_relaxation(n, 200.0) + de.reduction_relaxation(n, 200.0)


def _refusal(transformation, data) -> str:
    with pytest.raises(Exception) as info:  # OpenDP wraps the user function's SchemaMismatchError
        transformation(data)
    return str(info.value)


def test_non_members_are_refused_with_the_pandas_errors(client):
    frame = _people(3_000, seed=3)
    strict = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))  # 'raise': a missing height is not allowed
    f = hd.RecordFunction("a*w/h**2", strict)
    t = de.make_dask_sum_of(de.make_dask_frame_domain(strict, size_limit=3_000), SYM, f)
    clean = frame.fillna({"h": 1.7, "w": 70.0})
    assert math.isfinite(t(_uneven(clean, [1_000, 2_000])))
    # a missing value in the last partition only: found by that partition's check, in the same pass
    late = clean.copy()
    late.loc[2_999, "h"] = np.nan
    message = _refusal(t, _uneven(late, [1_000, 2_000]))
    assert "SchemaMismatchError" in message and "column 'h' has missing values" in message
    # every partition is under the size limit, the total is not
    small = de.make_dask_sum_of(de.make_dask_frame_domain(strict, size_limit=2_500), SYM, f)
    assert "size limit 2500" in _refusal(small, _uneven(clean, [1_000, 2_000]))
    # a public kept size is a total too
    sized = de.make_dask_count_of(de.make_dask_frame_domain(SCHEMA, size_limit=3_000, size=10), SYM)
    assert "exactly 10 records" in _refusal(sized, _uneven(frame, [1_500]))
    # metadata: a missing column, a string column, a pandas frame: refused before any task
    assert "column 'w' is missing" in _refusal(t, dd.from_pandas(clean.drop(columns="w"), npartitions=2))
    text = clean.assign(a=clean["a"].map(lambda v: f"{v:.17g}"))
    message = _refusal(t, dd.from_pandas(text, npartitions=2))
    assert "column 'a' has dtype" in message and "{:.17g}".format(clean["a"].iloc[0]) not in message
    assert "expected a dask DataFrame" in _refusal(t, clean)
    domain = de.make_dask_frame_domain(strict)
    assert not domain.member(clean) and domain.member(dd.from_pandas(clean, npartitions=2))


def test_private_measurements_use_the_pandas_noise_path(client):
    n = 5_000
    frame = _people(n, seed=11)
    ddf = dd.from_pandas(frame, npartitions=3)
    private = de.make_private_dask_sum(SCHEMA, BMI, epsilon=1.0, size_limit=n)
    reference = make_private_sum(SCHEMA, BMI, epsilon=1.0, size_limit=n)
    ours, theirs = accounting_of(private), accounting_of(reference)
    assert ours.mechanism == theirs.mechanism == "laplace"
    # the same mechanism and calibration; the sensitivity is larger by the one-rounding term alone
    extra = de.reduction_relaxation(n, max(abs(BMI.range().lower), abs(BMI.range().upper)))
    assert theirs.sensitivity < ours.sensitivity <= (theirs.sensitivity + extra) * (1 + 2**-50)
    assert theirs.scale < ours.scale <= (theirs.scale + extra) * (1 + 2**-40)
    assert private.map(1) <= 1.0 and math.isfinite(private(ddf))
    gaussian = de.make_private_dask_sum_vector(SCHEMA, [BMI, WEIGHT], rho=0.5, size_limit=n)
    assert accounting_of(gaussian).mechanism == "gaussian" and len(gaussian(ddf)) == 2
    count = de.make_private_dask_count(SCHEMA, epsilon=1.0, size_limit=n)
    assert math.isfinite(count(ddf))
    lower, upper = BMI.range().lower, BMI.range().upper
    mean = de.make_private_dask_mean(SCHEMA, BMI, epsilon=1.0, size_limit=n)
    assert lower <= mean(ddf) <= upper and accounting_of(mean).parts is not None
    kept = int(frame["h"].notna().sum())
    fixed = de.make_private_dask_mean(SCHEMA, BMI, epsilon=1.0, size=kept, size_limit=n)
    assert math.isfinite(fixed(ddf))
    chained = de.make_dask_frame_domain(SCHEMA, size_limit=n), SYM
    assert (chained >> de.then_private_dask_sum(BMI, epsilon=1.0)).map(1) <= 1.0


def test_declarations_the_engine_refuses():
    domain = de.make_dask_frame_domain(SCHEMA)
    with pytest.raises(hd.DeclarationError, match="feature-level"):
        de.make_dask_sum_of(domain, feature_distance(2), BMI)
    with pytest.raises(hd.DeclarationError, match="Dask frame domain"):
        de.make_dask_sum_of(make_frame_domain(SCHEMA), SYM, BMI)
    with pytest.raises(hd.DeclarationError, match="size_limit"):
        de.make_dask_frame_domain(make_frame_domain(SCHEMA, size_limit=10), size_limit=11)


def test_total_on_neighbours(client):
    from helpers.totality import assert_total_on_neighbours

    base = _people(400, seed=5).drop(columns="extra")
    odd = [{"a": 0.0, "w": np.inf, "h": 1.7}, {"a": 1e308, "w": -np.inf, "h": np.nan}, {"a": -1e308, "w": np.nan, "h": 0.0},
           {"a": 50.0, "w": 80.0, "h": np.inf}]
    limit = len(base) + 1
    domain = de.make_dask_frame_domain(SCHEMA, size_limit=limit)
    releases = [de.make_private_dask_sum(domain, BMI, epsilon=1.0), de.make_private_dask_count(domain, epsilon=1.0),
                de.make_private_dask_mean(domain, BMI, epsilon=1.0),
                de.make_private_dask_sum_vector(domain, [BMI, WEIGHT], rho=1.0)]
    pairs = []
    for row in odd:  # the added record lands in the last partition
        grown = pd.concat([base, pd.DataFrame([row])], ignore_index=True)
        pairs.append((_uneven(base, [100, 250]), _uneven(grown, [100, 250])))
    for release in releases:
        assert assert_total_on_neighbours(release, pairs) == len(odd)


def test_features_are_asserted_never_enabled():
    from opendp.mod import GLOBAL_FEATURES

    domain = de.make_dask_frame_domain(SCHEMA)
    enabled = set(GLOBAL_FEATURES)
    GLOBAL_FEATURES.clear()
    try:
        for build in (lambda: de.make_dask_frame_domain(SCHEMA), lambda: de.make_dask_sum_of(domain, SYM, BMI),
                      lambda: de.make_private_dask_count(SCHEMA, epsilon=1.0)):
            with pytest.raises(Exception, match="honest-but-curious"):
                build()
        assert not GLOBAL_FEATURES  # nothing was enabled on the user's behalf
    finally:
        GLOBAL_FEATURES.update(enabled)


def test_parquet_with_arrow_dtypes(client, tmp_path):
    # what a cluster reads: parquet files, here with pyarrow-backed (nullable) columns and several files
    pytest.importorskip("pyarrow")
    frame = _people(6_000, seed=13).drop(columns="extra")
    for i, start in enumerate(range(0, len(frame), 2_000)):
        frame.iloc[start:start + 2_000].convert_dtypes(dtype_backend="pyarrow").to_parquet(tmp_path / f"part{i}.parquet")
    ddf = dd.read_parquet(str(tmp_path / "*.parquet"))
    pandas_domain = make_frame_domain(SCHEMA, size_limit=len(frame))
    total = de.make_dask_sum_of(de.make_dask_frame_domain(pandas_domain), SYM, BMI)
    assert abs(total(ddf) - make_sum_of(pandas_domain, SYM, BMI)(frame)) <= total.map(0)
