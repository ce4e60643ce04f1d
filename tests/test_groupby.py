"""Group-by over a public key set: per-group sums and counts against brute force, stability maps against
random neighbouring pairs (records added, removed, replaced within and across groups, moved feature-wise),
private releases that compose in OpenDP, pandas and polars read alike."""

from __future__ import annotations

import decimal
import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad.accounting import accounting_of
from opendp_hybridad.errors import DeclarationError, SchemaMismatchError
from opendp_hybridad.frame import check_frame, feature_distance, make_frame_domain, make_sum_of
from opendp_hybridad.frame.aggregate import sum_relaxation
from opendp_hybridad.frame.groupby import (
    GroupKeys,
    make_grouped_count_of,
    make_grouped_sum_of,
    make_private_grouped_count,
    make_private_grouped_mean,
    make_private_grouped_sum,
    then_grouped_count_of,
    then_grouped_sum_of,
    then_private_grouped_mean,
)
from opendp_hybridad.release import release

KEYS = ["a", "b", "c"]
SIZE_LIMIT = 400


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("contrib", "honest-but-curious")


def schema() -> hd.Schema:
    return hd.Schema(w=hd.Field(40, 200, missing="drop"), h=hd.Field(1.4, 2.2, missing="impute", impute=1.7))


def bmi(s: hd.Schema) -> hd.RecordFunction:
    w, h = s.symbols()
    return s.function(w / h**2)


def random_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    w = rng.uniform(20, 230, n)  # some outside the box: clamped
    h = rng.uniform(1.3, 2.3, n)
    w[rng.random(n) < 0.1] = np.nan  # dropped
    h[rng.random(n) < 0.1] = np.nan  # imputed
    g = rng.choice(np.array(["a", "b", "c", "d", None], dtype=object), n, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    return pd.DataFrame({"w": w, "h": h, "g": g})


def brute_force(frame: pd.DataFrame, keys: list) -> tuple[list[float], list[int]]:
    """Per-key sums of w/h^2 and counts, by hand: impute, drop, clamp, evaluate in Python, pandas groupby."""
    kept = frame[frame["w"].notna()].copy()
    w = kept["w"].clip(40, 200)
    h = kept["h"].fillna(1.7).clip(1.4, 2.2)
    kept["value"] = [wi / (hi * hi) for wi, hi in zip(w, h, strict=True)]
    groups = kept.groupby("g", dropna=True)["value"]
    sums = groups.apply(lambda v: math.fsum(v)).to_dict()
    counts = groups.size().to_dict()
    return [sums.get(k, 0.0) for k in keys], [int(counts.get(k, 0)) for k in keys]


def test_group_sums_and_counts_match_a_brute_force_pandas_groupby():
    rng = np.random.default_rng(7)
    frame = random_frame(rng, 300)
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    f = bmi(schema())
    keys = ["b", "zz", "a", "c"]  # output order is the given order; "zz" is absent from the data
    sums = make_grouped_sum_of(domain, dp.symmetric_distance(), f, "g", keys)(frame)
    counts = make_grouped_count_of(domain, dp.symmetric_distance(), "g", keys)(frame)
    expected_sums, expected_counts = brute_force(frame, keys)
    assert counts == [float(c) for c in expected_counts]
    assert sums[1] == 0.0
    np.testing.assert_allclose(sums, expected_sums, rtol=1e-12)
    # each group's sum is make_sum_of on that group's records, bit for bit (same values, same order)
    for key, total in zip(keys, sums, strict=True):
        assert total == make_sum_of(domain, dp.symmetric_distance(), f)(frame[frame["g"] == key])


def test_records_outside_the_key_set_or_with_a_missing_key_are_dropped_or_refused_by_policy():
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels={"g": "drop"})
    frame = pd.DataFrame({"w": [60.0, 70.0, 80.0, 90.0], "h": [1.7] * 4, "g": ["a", None, "d", np.nan]})
    assert make_grouped_count_of(domain, dp.symmetric_distance(), "g", KEYS)(frame) == [1.0, 0.0, 0.0]
    # under "raise" a missing key makes the frame a non-member: refused before any private computation
    strict = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels={"g": "raise"})
    assert not strict.member(frame) and strict.member(frame.iloc[[0, 2]])
    with pytest.raises(SchemaMismatchError, match="key column 'g' has missing keys"):
        release(make_private_grouped_count(strict, by="g", keys=KEYS, epsilon=1.0), frame)
    with pytest.raises(SchemaMismatchError, match="key column 'g' is missing"):
        release(make_private_grouped_count(domain, by="g", keys=KEYS, epsilon=1.0), frame.drop(columns="g"))
    # a value that cannot be compared with the keys is not a key, wherever it sits: no member makes it fail
    for position in (0, 3):
        odd = frame.assign(g=pd.Series(["a", "b", "c", "a"], dtype=object))
        odd.at[position, "g"] = ["SECRET"]
        assert make_grouped_count_of(domain, dp.symmetric_distance(), "g", KEYS)(odd) == [1.0, 1.0, 1.0]


def test_declarations_are_checked():
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    with pytest.raises(DeclarationError, match="distinct"):
        GroupKeys("g", ["a", "a"])
    with pytest.raises(DeclarationError, match="cannot be missing"):
        GroupKeys("g", ["a", None])
    with pytest.raises(DeclarationError, match="non-empty"):
        GroupKeys("g", [])
    with pytest.raises(DeclarationError, match="non-empty"):
        GroupKeys("g", "ab")
    with pytest.raises(DeclarationError, match="field of the schema"):
        make_grouped_sum_of(domain, dp.symmetric_distance(), bmi(schema()), "w", [1.0])
    with pytest.raises(DeclarationError, match="field of the schema"):
        make_frame_domain(schema(), labels=["w"])
    with pytest.raises(DeclarationError, match="not declared in the frame domain"):
        make_grouped_sum_of(make_frame_domain(schema()), dp.symmetric_distance(), bmi(schema()), "g", KEYS)
    with pytest.raises(DeclarationError, match="missing-key policy"):
        make_frame_domain(schema(), labels={"g": "impute"})
    with pytest.raises(DeclarationError, match="the domain's"):
        make_private_grouped_sum(domain, bmi(schema()), by="g", keys=KEYS, missing_key="raise", epsilon=1.0)
    # from a Schema the domain is built with the key column and its policy
    built = make_private_grouped_sum(schema(), bmi(schema()), by="g", keys=KEYS, missing_key="raise", epsilon=1.0,
                                     size_limit=SIZE_LIMIT)
    assert built.input_domain.descriptor.label_policy("g") == "raise"
    with pytest.raises(DeclarationError, match="feature-level"):
        make_grouped_count_of(domain, feature_distance(2), "g", KEYS)
    with pytest.raises(DeclarationError, match="l1"):
        make_grouped_sum_of(domain, dp.symmetric_distance(), bmi(schema()), "g", KEYS, norm="inf")


# -- stability maps against brute force over neighbouring pairs -------------------------------------

def _norms(x: list[float], y: list[float]) -> tuple[float, float]:
    d = np.abs(np.subtract(x, y))
    return float(d.sum()), float(np.sqrt((d * d).sum()))


def _extreme_row(rng: np.random.Generator) -> dict:
    # corners of the box (|f| largest at w = 200, h = 1.4), missing values, keys in and out of the set
    return {"w": rng.choice([40.0, 200.0, np.nan, 500.0, rng.uniform(40, 200)]),
            "h": rng.choice([1.4, 2.2, np.nan, rng.uniform(1.4, 2.2)]),
            "g": rng.choice(np.array(["a", "b", "c", "d", None], dtype=object))}


def _check_pairs(transformations: dict, pairs: list[tuple[pd.DataFrame, pd.DataFrame]], d_in: int) -> dict:
    worst = {}
    for name, t in transformations.items():
        bound = t.map(d_in)
        observed = 0.0
        for x, y in pairs:
            l1, l2 = _norms(t(x), t(y))
            change = l1 if name.endswith("l1") else l2
            assert change <= bound, (name, change, bound)
            observed = max(observed, change)
        worst[name] = (observed, bound)
    return worst


def _transformations(metric, f, count: bool = True) -> dict:
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    out = {"sum l1": make_grouped_sum_of(domain, metric, f, "g", KEYS, 1),
           "sum l2": make_grouped_sum_of(domain, metric, f, "g", KEYS, 2)}
    if count:
        out.update({"count l1": make_grouped_count_of(domain, metric, "g", KEYS, 1),
                    "count l2": make_grouped_count_of(domain, metric, "g", KEYS, 2)})
    return out


def test_add_remove_stability_holds_on_random_neighbours():
    rng = np.random.default_rng(11)
    pairs = []
    for _ in range(60):
        x = random_frame(rng, int(rng.integers(0, 40)))
        y = pd.concat([x, pd.DataFrame([_extreme_row(rng)])], ignore_index=True)  # one record added
        pairs.append((x, y))
    worst = _check_pairs(_transformations(dp.symmetric_distance(), bmi(schema())), pairs, 1)
    # the bound is attained up to the float relaxation: adding the largest record to a group
    m = 200 / 1.4**2
    assert worst["sum l1"][1] >= m and worst["sum l1"][0] >= m - 1e-9
    assert worst["count l1"] == (1.0, 1.0)


def test_replace_one_stability_holds_when_records_move_between_groups():
    rng = np.random.default_rng(12)
    pairs = []
    for _ in range(80):
        x = random_frame(rng, int(rng.integers(1, 40)))
        y = x.copy()
        y.iloc[int(rng.integers(0, len(x)))] = pd.Series(_extreme_row(rng))
        pairs.append((x, y))
    # the worst move: the largest record leaves group a for group b (l1 = 2M, l2 = sqrt(2) M)
    corner = pd.DataFrame({"w": [200.0, 60.0], "h": [1.4, 1.8], "g": ["a", "c"]})
    pairs.append((corner, corner.assign(g=["b", "c"])))
    worst = _check_pairs(_transformations(dp.change_one_distance(), bmi(schema())), pairs, 1)
    m = 200 / 1.4**2
    assert worst["sum l1"][0] >= 2 * m - 1e-9 and worst["sum l2"][0] >= math.sqrt(2) * m - 1e-9
    assert worst["count l1"] == (2.0, 2.0) and worst["count l2"][0] == pytest.approx(math.sqrt(2))
    assert worst["count l2"][1] >= math.sqrt(2)


def test_replace_one_l2_covers_a_sign_changing_function_whose_width_exceeds_sqrt2_max():
    # f = w - 100 on [40, 200]: L = -60, U = 100, M = 100, W = 160 > sqrt(2) M; staying in one group moves it by W
    s = schema()
    w, _ = s.symbols()
    f = s.function(w - 100)
    domain = make_frame_domain(s, size_limit=SIZE_LIMIT, labels=["g"])
    t = make_grouped_sum_of(domain, dp.change_one_distance(), f, "g", KEYS, 2)
    x = pd.DataFrame({"w": [40.0, 70.0], "h": [1.7, 1.7], "g": ["a", "b"]})
    y = x.assign(w=[200.0, 70.0])
    change = _norms(t(x), t(y))[1]
    assert change == pytest.approx(160.0)
    assert change <= t.map(1)
    assert t.map(1) <= 160.0 + 2 * sum_relaxation(SIZE_LIMIT, 100.0) + 1e-9


def test_feature_level_stability_holds_when_one_records_fields_move():
    rng = np.random.default_rng(13)
    s = schema()
    f = bmi(s)
    domain = make_frame_domain(s, size_limit=SIZE_LIMIT, labels=["g"])
    r = 0.5
    transformations = {"sum l1": make_grouped_sum_of(domain, feature_distance(2), f, "g", KEYS, 1),
                       "sum l2": make_grouped_sum_of(domain, feature_distance(2), f, "g", KEYS, 2)}
    pairs = []
    for _ in range(40):
        x = random_frame(rng, int(rng.integers(1, 30))).assign(w=lambda d: d["w"].fillna(100.0))
        y = x.copy()
        i = int(rng.integers(0, len(x)))
        direction = rng.normal(size=2)
        step = r * direction / np.linalg.norm(direction)
        y.loc[i, "w"] = x.loc[i, "w"] + step[0]
        if not np.isnan(x.loc[i, "h"]):  # a missing value never moves
            y.loc[i, "h"] = x.loc[i, "h"] + step[1]
        pairs.append((x, y))
    for name, t in transformations.items():
        bound = t.map(r)
        for a, b in pairs:
            l1, l2 = _norms(t(a), t(b))
            assert (l1 if name.endswith("l1") else l2) <= bound


# -- private releases --------------------------------------------------------------------------------

def test_private_grouped_releases_are_measurements_that_compose():
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    f = bmi(schema())
    frame = random_frame(np.random.default_rng(5), 50)
    total = make_private_grouped_sum(domain, f, by="g", keys=KEYS, epsilon=0.5)
    count = make_private_grouped_count(domain, by="g", keys=KEYS, epsilon=0.25)
    gaussian = make_private_grouped_sum(domain, f, dp.change_one_distance(), by="g", keys=KEYS, rho=0.1)
    assert isinstance(total, dp.Measurement) and isinstance(gaussian, dp.Measurement)
    assert total.map(1) <= 0.5 and count.map(1) <= 0.25 and gaussian.map(1) <= 0.1
    # the noise is calibrated to the grouped sensitivity, read back from OpenDP's own map
    sensitivity = make_grouped_sum_of(domain, dp.symmetric_distance(), f, "g", KEYS, 1).map(1)
    record = accounting_of(total)
    assert record.sensitivity == sensitivity and record.scale >= sensitivity / 0.5
    l2 = make_grouped_sum_of(domain, dp.change_one_distance(), f, "g", KEYS, 2).map(1)
    assert accounting_of(gaussian).sensitivity == l2
    composed = dp.c.make_composition([total, count])
    assert composed.map(1) == pytest.approx(0.75)
    released = composed(frame)
    assert len(released) == 2 and all(len(v) == len(KEYS) for v in released)
    assert all(math.isfinite(v) for part in released for v in part)


def test_private_grouped_mean_lands_within_its_tail_bound_of_the_true_means():
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    f = bmi(schema())
    frame = random_frame(np.random.default_rng(3), 300)
    epsilon = 1e4  # small noise, so the tail bound is a sharp check of the post-processing
    mean = make_private_grouped_mean(domain, f, by="g", keys=KEYS, epsilon=epsilon)
    assert isinstance(mean, dp.Measurement) and mean.map(1) <= epsilon
    sum_part, count_part = accounting_of(mean).parts
    sums, counts = brute_force(frame, KEYS)
    alpha = 1e-10  # per Laplace draw: P(|X| > b ln(1/alpha)) = alpha; 12 draws, so failure < 2e-9
    ts, tc = sum_part.scale * math.log(1 / alpha), count_part.scale * math.log(1 / alpha)
    released = mean(frame)
    for value, s, c in zip(released, sums, counts, strict=True):
        assert c > tc
        # |(s + e1)/(c + e2) - s/c| <= (|e1| + |s/c| |e2|) / (c - |e2|)
        assert abs(value - s / c) <= (ts + abs(s / c) * tc) / (c - tc) + 1e-9


def test_then_forms_chain_from_the_domain_and_metric():
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    f = bmi(schema())
    frame = random_frame(np.random.default_rng(2), 40)
    chained = (domain, dp.symmetric_distance()) >> then_grouped_sum_of(f, "g", KEYS)
    assert chained(frame) == make_grouped_sum_of(domain, dp.symmetric_distance(), f, "g", KEYS)(frame)
    counted = (domain, dp.change_one_distance()) >> then_grouped_count_of("g", KEYS, 2)
    assert math.sqrt(2) <= counted.map(1) <= math.sqrt(2) * (1 + 1e-15)  # sqrt(2) rounded up
    noisy = chained >> dp.m.then_laplace(1000.0)
    assert len(noisy(frame)) == len(KEYS)
    private = (domain, dp.symmetric_distance()) >> then_private_grouped_mean(f, by="g", keys=KEYS, epsilon=1.0)
    assert isinstance(private, dp.Measurement) and private.map(1) <= 1.0 and len(private(frame)) == len(KEYS)


# -- polars --------------------------------------------------------------------------------------------

def test_polars_frames_group_exactly_as_their_pandas_copy():
    pl = pytest.importorskip("polars")
    rng = np.random.default_rng(21)
    frame = random_frame(rng, 200)
    domain = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels=["g"])
    f = bmi(schema())
    # nulls in the fields and the key, NaN in a field: the same records dropped and imputed
    polars = pl.DataFrame({"w": pl.Series(frame["w"].tolist(), dtype=pl.Float64, nan_to_null=True),
                           "h": pl.Series(frame["h"].tolist(), dtype=pl.Float64, nan_to_null=False),
                           "g": pl.Series([None if pd.isna(v) else v for v in frame["g"]], dtype=pl.String)})
    for metric in (dp.symmetric_distance(), dp.change_one_distance()):
        total = make_grouped_sum_of(domain, metric, f, "g", KEYS)
        count = make_grouped_count_of(domain, metric, "g", KEYS)
        expected = total(frame), count(frame)
        for data in (polars, polars.lazy(), polars.with_columns(pl.col("g").cast(pl.Categorical))):
            assert (total(data), count(data)) == expected
    with pytest.raises(SchemaMismatchError, match="key column 'g' is missing"):
        check_frame(polars.drop("g"), domain)
    strict = make_frame_domain(schema(), size_limit=SIZE_LIMIT, labels={"g": "raise"})
    assert not strict.member(polars) and not strict.member(polars.lazy())
    assert strict.member(polars.filter(pl.col("g").is_not_null()))


class _SignallingKey:
    def __hash__(self) -> int:
        return hash("a")  # collides with a public key, then its comparison raises

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("SECRET")


_ODD_KEYS = [decimal.Decimal("sNaN"), decimal.Decimal("NaN"), _SignallingKey(), ["a"], np.array([1, 2]), pd.NA, pd.NaT,
             float("nan"), 1 + 2j, b"a", object()]


@pytest.mark.parametrize("value", _ODD_KEYS, ids=lambda v: type(v).__name__)
def test_no_key_value_makes_a_member_fail_and_nothing_depends_on_its_position(value):
    f = bmi(schema())
    decisions, outputs = [], []
    for position in (4, 1500):  # both replace an "a"
        keys = ["a", "b"] * 1000
        keys[position] = value
        frame = pd.DataFrame({"w": 60.0, "h": 1.7, "g": pd.Series(keys, dtype=object)})
        strict = make_frame_domain(schema(), size_limit=4000, labels={"g": "raise"})
        decisions.append(strict.member(frame))
        lenient = make_frame_domain(schema(), size_limit=4000, labels={"g": "drop"})
        outputs.append((make_grouped_count_of(lenient, dp.symmetric_distance(), "g", ["a", "b"])(frame),
                        make_grouped_sum_of(lenient, dp.symmetric_distance(), f, "g", ["a", "b"])(frame)))
    assert decisions[0] == decisions[1]
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == [999.0, 1000.0]  # the odd value replaced an "a" and is not a key
