"""Second adversarial audit of the Dask group-by (opendp_hybridad/frame/dask_groupby.py).

Run: ``python bench/audits/attack_dask_groupby_v2.py [--cases N] [--seed S] [--no-cluster]`` (about a minute
on 2 shared cores). Exits 1 when it finds a violation of the module's claims, printing each case:

* totality and errors: "no member makes a release fail", "a non-member raises SchemaMismatchError before any
  noise", "errors never contain a private value";
* the float bound: each dataset's pre-noise group sums within ``g N M + u N M (1 + g) + G TINY / 2`` (l1) of the
  exact (Fraction) group sums of the clamped values;
* neighbours (add/remove, replace: within a group, between groups, into a non-public key, into a missing key)
  whose outputs differ, computed exactly (l1, or l2 by comparing squares in rationals), by more than the map
  at ``d_in = 1``;
* the private mean's map below the sum of its sum's and count's maps.

What bench/audits/attack_dask_groupby.py already covers is not repeated (random mixed-key frames, hill climb on
the error ratio). This one goes where that audit did not:

1. Dask frames whose *graph* fails inside a partition task: a cast in the graph (``ddf["x"].astype(float)`` over
   text holding a private value), and Dask's own ``dataframe.convert-string`` (on by default), which in this Dask
   converts an object key column lazily, in the partition task, and raises on a ``bytes`` key that is not UTF-8.
   The polars reader (``domain.materialise``) turns a failing plan into a SchemaMismatchError without the
   message; the Dask readers let the task's exception through, message and all. A ``bytes`` key is an ordinary
   label value (the pandas group-by on the same records drops it as a non-public key), so one added record
   makes the release fail: the two neighbours are told apart with certainty. A ``str`` key with a lone surrogate
   (``os.fsdecode`` of a non-UTF-8 file name) does the same.
1c. End to end from pandas frames: one added record with a text key (outside the public set) turns an int64 key
   column into an object one, so ``dd.from_pandas`` under the default convert-string turns *every* key into text
   and no other record matches its int key any more (counts ``[25, 25] -> [0, 0]`` at ``d_in = 1``). The module
   is right about the frames Dask delivers (they differ in every key), but the default way of building a Dask
   frame from neighbouring pandas frames is not a stable step, which the docs do not say.
2. Label columns whose dtype differs from partition to partition (truth read from the partitions as delivered:
   with convert-string on, Dask converts an object partition only when the *metadata* is object, i.e. as the
   first partition of a ``from_delayed`` frame says) (categoricals with different categories, an
   int partition next to a bool, a float, a nullable Int64, a string[pyarrow] and an object one; datetimes as
   datetime64 and as objects; keys 1, 1.0, True, Decimal("1"), np.int64(1), np.float32(1)), grouped against an
   independent loop over the public keys (hash and ==, any exception meaning "not this key").
3. Many groups (up to 96 keys) with few records each, groups in one partition only, empty partitions, values
   cancelling across partitions (+M in one partition, -M(1 - 2^-52) in the next, the rest 2^-52-sized),
   subnormals, M huge (so that ``N M`` is near the overflow refusal); neighbours that move a record between
   two groups living in different partitions.
4. The private mean's composed map against its parts.
5. A few cases on a LocalCluster of 2 worker processes (bit-for-bit equal to the synchronous scheduler; a key
   whose unpickling fails is reported as a note: the module assumes keys survive pickling).
"""

from __future__ import annotations

import argparse
import decimal
import itertools
import random
import sys
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import opendp.prelude as dp  # noqa: E402

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.accounting import accounting_of  # noqa: E402
from opendp_hybridad.analysis.rounding import TINY  # noqa: E402
from opendp_hybridad.errors import SchemaMismatchError  # noqa: E402
from opendp_hybridad.frame import dask_engine as de  # noqa: E402
from opendp_hybridad.frame import dask_groupby as dg  # noqa: E402
from opendp_hybridad.frame.domain import make_frame_domain  # noqa: E402
from opendp_hybridad.frame.groupby import make_grouped_count_of, make_grouped_sum_of  # noqa: E402

dp.enable_features("honest-but-curious", "contrib")

VIOLATIONS: list[str] = []
NOTES: list[str] = []
COUNT = {"checks": 0}
SECRET = "SECRET-4711"


def violation(message: str) -> None:
    VIOLATIONS.append(message)
    print("VIOLATION:", message)


def note(message: str) -> None:
    NOTES.append(message)
    print("note:", message)


def parts_frame(parts: list[pd.DataFrame]) -> Any:
    """A Dask frame whose partitions are exactly ``parts`` (their own dtypes), metadata from the first."""
    return dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=parts[0].iloc[:0], verify_meta=False)


def outcome(query: Any, frame: Any) -> tuple[Any, BaseException | None]:
    try:
        return query(frame), None
    except Exception as exc:
        return None, exc


def is_schema_mismatch(exc: BaseException) -> bool:
    """SchemaMismatchError itself, or OpenDP's exception carrying it (user callbacks are wrapped by OpenDP)."""
    return isinstance(exc, SchemaMismatchError) or "SchemaMismatchError" in str(exc)


def innermost(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if "Error" in line or "Exception" in line]
    return lines[-1][:160] if lines else type(exc).__name__


# -- ground truth -------------------------------------------------------------------------------------------

def missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(value != value)  # NaN (float, numpy, Decimal quiet NaN), NaT
    except Exception:
        return False


def true_group(value: Any, keys: list[Any]) -> int:
    if missing(value):
        return -1
    for i, key in enumerate(keys):
        try:
            if hash(value) == hash(key) and bool(value == key):
                return i
        except Exception:
            continue
    return -1


def exact_groups(parts: list[pd.DataFrame], keys: list[Any], lo: float, hi: float) -> tuple[list[Fraction], list[int]]:
    sums, counts = [Fraction(0)] * len(keys), [0] * len(keys)
    for part in parts:
        for x, g in zip(part["x"].tolist(), part["g"].tolist(), strict=True):
            i = true_group(g, keys)
            if i >= 0:
                sums[i] += Fraction(min(max(float(x), lo), hi))
                counts[i] += 1
    return sums, counts


def stated_bound(n: int, max_abs: float, groups: int) -> Fraction:
    k = (n - 1).bit_length() if n > 1 else 0
    u = Fraction(1, 2**53)
    g = k * u / (1 - k * u)
    m = Fraction(max_abs)
    return g * n * m + u * n * m * (1 + g) + groups * Fraction(TINY) / 2


def distance(a: list[float], b: list[float], p: int) -> Fraction:
    diffs = [Fraction(x) - Fraction(y) for x, y in zip(a, b, strict=True)]
    if p == 1:
        return sum((abs(d) for d in diffs), Fraction(0))
    return sum((d * d for d in diffs), Fraction(0))  # compared with map^2


# -- 1. graphs that fail inside a partition --------------------------------------------------------------------

SCHEMA = hd.Schema(x=hd.Field(-1, 1))
F = hd.RecordFunction("x", SCHEMA)
KEYS = ["a", "b"]


def queries(size_limit: int = 100) -> list[tuple[str, Any]]:
    dom = de.make_dask_frame_domain(SCHEMA, size_limit=size_limit, labels={"g": "drop"})
    sym = dp.symmetric_distance()
    return [("grouped sum", dg.make_dask_grouped_sum_of(dom, sym, F, "g", KEYS)),
            ("grouped count", dg.make_dask_grouped_count_of(dom, sym, "g", KEYS)),
            ("private grouped count", dg.make_private_dask_grouped_count(dom, sym, by="g", keys=KEYS, epsilon=1.0))]


def attack_failing_graphs() -> None:
    print("== 1. Dask graphs that fail inside a partition")
    # (a) a cast in the user's graph: the metadata says float64, the partition's text holds a private value
    source = pd.DataFrame({"x": pd.Series(["0.5", SECRET], dtype=object), "g": ["a", "b"]})
    with dask.config.set({"dataframe.convert-string": False}):
        frame = dd.from_pandas(source, npartitions=1)
        frame["x"] = frame["x"].astype("float64")
    for name, query in queries():
        COUNT["checks"] += 1
        out, exc = outcome(query, frame)
        if exc is None:
            violation(f"[cast in graph] {name}: a frame whose partition cannot be computed was answered: {out}")
        elif SECRET in str(exc) or not is_schema_mismatch(exc):
            violation(f"[cast in graph] {name}: raised {type(exc).__name__} ({innermost(exc)!r}); "
                      f"private value in the message: {SECRET in str(exc)}; expected a SchemaMismatchError without it")

    # (b) Dask's convert-string (on by default) and a bytes key that is not UTF-8: one added record, a key outside
    # the public set that the pandas group-by simply drops, makes the whole release fail
    rows = pd.DataFrame({"x": [0.5, 0.25, -0.5], "g": pd.Series(["a", "b", "a"], dtype=object)})
    pandas_dom = make_frame_domain(SCHEMA, size_limit=100, labels={"g": "drop"})
    reference = make_grouped_count_of(pandas_dom, dp.symmetric_distance(), "g", KEYS)
    # a bytes key that is not UTF-8, and a str key with a lone surrogate (what os.fsdecode gives for such a file name)
    for bad, shown, quoted in ((b"id-\xff" + SECRET.encode(), "b'id-\\xff...'", ("0xff",)),
                               ("caf\udce9-" + SECRET, "'caf\\udce9...'", ("udce9",))):
        added = pd.concat([rows, pd.DataFrame({"x": [0.75], "g": pd.Series([bad], dtype=object)})], ignore_index=True)
        for convert in (None, True, False):  # None: Dask's default
            settings = {} if convert is None else {"dataframe.convert-string": convert}
            with dask.config.set(settings):
                d0, d1 = dd.from_pandas(rows, npartitions=2), dd.from_pandas(added, npartitions=2)
            label = "default" if convert is None else f"convert-string={convert}"
            for name, query in queries():
                COUNT["checks"] += 1
                out0, exc0 = outcome(query, d0)
                _out1, exc1 = outcome(query, d1)
                failed = exc1 if exc1 is not None else exc0
                if (exc0 is None) != (exc1 is None) and convert is not False and is_schema_mismatch(failed) \
                        and SECRET not in str(failed):
                    # docs/scale.md, "Dask's string conversion": the conversion runs in the partition tasks, a key
                    # it cannot convert makes D' uncomputable, hence not a member, refused without its message
                    note(f"[key {shown}, {label}] {name}: D' cannot be computed under Dask's string conversion and is "
                         f"refused as a non-member (documented), without the private value")
                elif (exc0 is None) != (exc1 is None):
                    violation(f"[key {shown}, {label}] {name}: neighbours (one record with that key added, not a "
                              f"public key) behave differently: D -> {out0}, D' -> {type(failed).__name__} "
                              f"({innermost(failed)!r}); the pandas group-by on D' answers {reference(added)}")
                for exc in (exc0, exc1):
                    if exc is not None and any(q in str(exc) for q in quoted):
                        note(f"[key {shown}, {label}] {name}: the error quotes a character of the private key and "
                             f"its position ({innermost(exc)!r})")


def attack_dtype_flip() -> None:
    """One added record with a text key (outside the public set) turns an int key column into an object one; Dask's
    default convert-string then turns every key of the frame into text, so no other record matches its int key."""
    print("== 1c. one record flips the key column's dtype; Dask's default convert-string re-keys every record")
    n = 50
    rows = pd.DataFrame({"x": [0.5] * n, "g": [1 + (i % 2) for i in range(n)]})  # int64 keys 1 and 2
    added = pd.concat([rows, pd.DataFrame({"x": [0.5], "g": ["x"]})], ignore_index=True)  # object column now
    for convert in (None, False):
        settings = {} if convert is None else {"dataframe.convert-string": convert}
        label = "default" if convert is None else f"convert-string={convert}"
        with dask.config.set(settings):
            d0, d1 = dd.from_pandas(rows, npartitions=3), dd.from_pandas(added, npartitions=3)
        for metric, p in ((dp.symmetric_distance(), 1), (dp.symmetric_distance(), 2)):
            dom = de.make_dask_frame_domain(SCHEMA, size_limit=100, labels={"g": "drop"})
            for name, query in (("grouped count", dg.make_dask_grouped_count_of(dom, metric, "g", [1, 2], p)),
                                ("grouped sum", dg.make_dask_grouped_sum_of(dom, metric, F, "g", [1, 2], p))):
                COUNT["checks"] += 1
                (o0, x0), (o1, x1) = outcome(query, d0), outcome(query, d1)
                if x0 is not None or x1 is not None:
                    violation(f"[dtype flip, {label}] {name}: raised {x0 or x1!r}")
                    continue
                d = distance(o0, o1, p)
                limit = Fraction(query.map(1)) ** p
                if d > limit and convert is None:
                    # docs/scale.md, "Dask's string conversion": the guarantee is for the frame Dask delivers, and
                    # from_pandas with the conversion on is not a per-record step (documented, with the way out)
                    note(f"[dtype flip, {label}] {name} l{p}: end to end from the pandas frames the outputs differ by "
                         f"{float(d)} > map(1) {float(limit)}; the delivered frames differ in every key (documented)")
                elif d > limit:
                    violation(f"[dtype flip, {label}] {name} l{p}: dd.from_pandas(D) -> {o0}, dd.from_pandas(D + one "
                              f"record keyed 'x') -> {o1}: distance{'^2' if p == 2 else ''} {float(d)} > map(1)"
                              f"{'^2' if p == 2 else ''} {float(limit)} (end to end from the pandas frames; the Dask "
                              f"frames' delivered records differ in every key)")


# -- 2. label dtypes differing per partition ---------------------------------------------------------------------

def odd_partitions(rng: random.Random) -> tuple[list[Any], list[pd.DataFrame]]:
    """Partitions whose key columns have different dtypes; the public keys and the partitions."""
    ts = pd.Timestamp("2021-03-04 05:06:07")
    keys = rng.choice([[1, "a", 2], [ts, "a"], [1, 0], ["a", "b", "c"], [decimal.Decimal("2.5"), 7]])
    column_makers = [
        lambda: pd.Series([1, 2, 1, 3], dtype="int64"),
        lambda: pd.Series([True, False, True, True], dtype=bool),
        lambda: pd.Series([1.0, 2.5, np.nan, 0.0], dtype="float64"),
        lambda: pd.Series([1, None, 2, 0], dtype="Int64"),
        lambda: pd.Series([True, None, False, True], dtype="boolean"),
        lambda: pd.Series(["a", "b", None, "1"], dtype="string[pyarrow]"),
        lambda: pd.Series(["a", "c", "b", "a"], dtype="category"),
        lambda: pd.Series(pd.Categorical(["b", "b", "a", None], categories=["b", "a", "q"])),
        lambda: pd.Series(pd.Categorical([1, 2, 1, 1], categories=[2, 1])),
        lambda: pd.Series(pd.Categorical([ts, ts, pd.NaT, ts])),
        lambda: pd.Series([ts, pd.NaT, ts, ts]),
        lambda: pd.Series([ts.to_pydatetime(), np.datetime64(ts.value, "ns"), "a", ts], dtype=object),
        lambda: pd.Series([ts.tz_localize("UTC"), ts, ts, pd.NaT], dtype=object),
        lambda: pd.Series([1, 1.0, True, decimal.Decimal("1")], dtype=object),
        lambda: pd.Series([np.int64(1), np.float32(1.0), np.uint8(2), np.bool_(True)], dtype=object),
        lambda: pd.Series([decimal.Decimal("2.50"), decimal.Decimal("NaN"), 7.0, np.int16(7)], dtype=object),
        lambda: pd.Series([pd.NA, float("nan"), None, pd.NaT], dtype=object),
        lambda: pd.Series([[1], {"a": 1}, "a", 1], dtype=object),
        lambda: pd.Series([], dtype="int64"),
    ]
    parts = []
    for _ in range(rng.randint(1, 6)):
        g = rng.choice(column_makers)()
        x = pd.Series([rng.uniform(-1.5, 1.5) for _ in range(len(g))], dtype="float64")
        parts.append(pd.DataFrame({"x": x, "g": g}))
    return list(keys), parts


def attack_label_dtypes(rng: random.Random, cases: int) -> None:
    print("== 2. label dtypes differing per partition")
    for case in range(cases):
        keys, parts = odd_partitions(rng)
        dom = de.make_dask_frame_domain(SCHEMA, size_limit=200, labels={"g": "drop"})
        sym = dp.symmetric_distance()
        sums_q = dg.make_dask_grouped_sum_of(dom, sym, F, "g", keys)
        counts_q = dg.make_dask_grouped_count_of(dom, sym, "g", keys)
        frame = parts_frame(parts)
        # the records as the partitions deliver them (convert-string may turn object keys into text: documented)
        delivered = list(dask.compute(*frame.to_delayed()))
        truth_sums, truth_counts = exact_groups(delivered, keys, -1.0, 1.0)
        COUNT["checks"] += 1
        s, exc = outcome(sums_q, frame)
        c, exc2 = outcome(counts_q, frame)
        if exc is not None or exc2 is not None:
            bad = exc or exc2
            violation(f"[label dtypes #{case}] keys {keys!r}, partition dtypes {[str(p['g'].dtype) for p in parts]}: "
                      f"a member raised {type(bad).__name__} ({innermost(bad)!r})")
            continue
        if [int(v) for v in c] != truth_counts:
            violation(f"[label dtypes #{case}] keys {keys!r}: counts {c} != independent loop {truth_counts} "
                      f"(partitions {[p['g'].tolist() for p in parts]})")
        err = sum((abs(Fraction(a) - b) for a, b in zip(s, truth_sums, strict=True)), Fraction(0))
        if err > stated_bound(200, 1.0, len(keys)):
            violation(f"[label dtypes #{case}] sums {s} off the exact sums by {float(err)}")


# -- 3. float bound and neighbours ----------------------------------------------------------------------------

EPS = 2.0**-52


def value_pool(m: float) -> list[float]:
    return [m, -m, m * (1 - EPS), -m * (1 - EPS), m * EPS, -m * EPS, m / 3, -m / 3, m * 0.5 * (1 + EPS),
            5e-324, -5e-324, 2.2250738585072014e-308, 0.0, -0.0, 1.5 * m, -7 * m, m * (1 - 2**-30)]


class Declaration:
    def __init__(self, m: float, size_limit: int, groups: int, relation: str, p: int):
        self.m, self.size_limit, self.groups, self.relation, self.p = m, size_limit, groups, relation, p
        self.schema = hd.Schema(x=hd.Field(-m, m))
        self.function = hd.RecordFunction("x", self.schema)
        self.keys = [f"k{i}" for i in range(groups)]
        metric = dp.symmetric_distance() if relation == "sym" else dp.change_one_distance()
        dom = de.make_dask_frame_domain(self.schema, size_limit=size_limit, labels={"g": "drop"})
        self.query = dg.make_dask_grouped_sum_of(dom, metric, self.function, "g", self.keys, p)
        self.count = dg.make_dask_grouped_count_of(dom, metric, "g", self.keys, p)
        pdom = make_frame_domain(self.schema, size_limit=size_limit, labels={"g": "drop"})
        self.pandas = make_grouped_sum_of(pdom, metric, self.function, "g", self.keys, p)
        self.d_out = Fraction(self.query.map(1))
        self.d_out_count = Fraction(self.count.map(1))

    def __repr__(self) -> str:
        return f"M={self.m!r} N={self.size_limit} G={self.groups} {self.relation} l{self.p}"


def random_records(rng: random.Random, decl: Declaration, n: int) -> list[tuple[float, Any]]:
    pool = value_pool(decl.m)
    key_pool = [*decl.keys, "out", None, float("nan")]
    favourite = rng.sample(decl.keys, min(3, len(decl.keys)))
    rows = []
    for _ in range(n):
        g = rng.choice(favourite) if rng.random() < 0.6 else rng.choice(key_pool)
        x = rng.choice(pool) if rng.random() < 0.8 else rng.uniform(-decl.m, decl.m)
        rows.append((x, g))
    return rows


def cancelling_records(rng: random.Random, decl: Declaration, n: int) -> list[tuple[float, Any]]:
    """One group's +M, -M(1-2^-52) and tiny terms, interleaved so each partition's partial is large and they cancel."""
    key = rng.choice(decl.keys)
    rows: list[tuple[float, Any]] = []
    for i in range(n):
        if i % 3 == 0:
            rows.append((decl.m, key))
        elif i % 3 == 1:
            rows.append((-decl.m * (1 - EPS), key))
        else:
            rows.append((rng.choice([decl.m * EPS, -decl.m * EPS / 2, 5e-324, decl.m * 2**-40]), key))
    return rows


def cut(rng: random.Random, rows: list[tuple[float, Any]]) -> list[pd.DataFrame]:
    n = len(rows)
    style = rng.choice(["one", "singletons", "random", "empties", "one-per-group"])
    if style == "one":
        bounds = [0, n]
    elif style == "singletons":
        bounds = list(range(n + 1))
    elif style == "empties":
        inner = sorted(rng.choice([0, n, rng.randint(0, n)]) for _ in range(rng.randint(1, 5)))
        bounds = [0, *inner, n]
    else:
        bounds = [0, *sorted(rng.randint(0, n) for _ in range(rng.randint(1, 6))), n]
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        chunk = rows[lo:hi]
        parts.append(pd.DataFrame({"x": pd.Series([r[0] for r in chunk], dtype="float64"),
                                   "g": pd.Series([r[1] for r in chunk], dtype=object)}))
    if not parts:
        parts = [pd.DataFrame({"x": pd.Series([], dtype="float64"), "g": pd.Series([], dtype=object)})]
    if style == "one-per-group":
        parts = []
        for key in dict.fromkeys(str(r[1]) for r in rows):
            chunk = [r for r in rows if str(r[1]) == key]
            parts.append(pd.DataFrame({"x": pd.Series([r[0] for r in chunk], dtype="float64"),
                                       "g": pd.Series([r[1] for r in chunk], dtype=object)}))
        parts = parts or [pd.DataFrame({"x": pd.Series([], dtype="float64"), "g": pd.Series([], dtype=object)})]
    return parts


def neighbour(rng: random.Random, decl: Declaration, rows: list[tuple[float, Any]]) -> tuple[str, list[tuple[float, Any]]]:
    rows = list(rows)
    if decl.relation == "sym":
        if rows and rng.random() < 0.5:
            i = rng.randrange(len(rows))
            return f"remove #{i} {rows[i]!r}", rows[:i] + rows[i + 1:]
        if len(rows) >= decl.size_limit:
            return "remove last", rows[:-1]
        i = rng.randint(0, len(rows))
        new = (rng.choice(value_pool(decl.m)), rng.choice(decl.keys))
        return f"add {new!r} at {i}", [*rows[:i], new, *rows[i:]]
    if not rows:
        return "same", rows
    i = rng.randrange(len(rows))
    target = rng.choice([rng.choice(decl.keys), "out", None, rows[i][1]])
    new = (rng.choice(value_pool(decl.m)), target)
    old = rows[i]
    rows[i] = new
    return f"replace #{i} {old!r} -> {new!r}", rows


def check_dataset(decl: Declaration, rows: list[tuple[float, Any]], parts: list[pd.DataFrame]) -> list[float] | None:
    out, exc = outcome(decl.query, parts_frame(parts))
    COUNT["checks"] += 1
    if exc is not None:
        violation(f"[{decl}] member raised {type(exc).__name__} ({innermost(exc)!r}); rows {rows!r}")
        return None
    truth, _ = exact_groups(list(dask.compute(*parts_frame(parts).to_delayed())), decl.keys, -decl.m, decl.m)
    err = sum((abs(Fraction(a) - b) for a, b in zip(out, truth, strict=True)), Fraction(0))
    bound = stated_bound(decl.size_limit, decl.m, decl.groups)
    if err > bound:
        violation(f"[{decl}] l1 error {float(err)!r} > stated bound {float(bound)!r}; rows {rows!r}, "
                  f"cuts {[len(p) for p in parts]}")
    whole = pd.concat(parts, ignore_index=True)
    ref = decl.pandas(whole)
    diff = sum((abs(Fraction(a) - Fraction(b)) for a, b in zip(out, ref, strict=True)), Fraction(0))
    if diff > 2 * bound:
        violation(f"[{decl}] Dask vs pandas on the computed frame differ by {float(diff)!r} > {float(2 * bound)!r}")
    return out


def attack_numbers(rng: random.Random, cases: int) -> None:
    print("== 3. float bound and neighbours")
    decls = [Declaration(m, n, g, rel, p)
             for (m, n, g) in [(1.0, 24, 96), (3.5, 40, 7), (1e300, 30, 5), (2.0**-1060, 16, 3), (1e-300, 20, 40)]
             for rel in ("sym", "change") for p in (1, 2)]
    worst = 0.0
    for _case in range(cases):
        decl = rng.choice(decls)
        n = rng.randint(0, decl.size_limit)
        rows = cancelling_records(rng, decl, n) if rng.random() < 0.35 else random_records(rng, decl, n)
        what, rows2 = neighbour(rng, decl, rows)
        rows2 = rows2[:decl.size_limit]
        parts1, parts2 = cut(rng, rows), cut(rng, rows2)
        out1 = check_dataset(decl, rows, parts1)
        out2 = check_dataset(decl, rows2, parts2)
        if out1 is None or out2 is None:
            continue
        d = distance(out1, out2, decl.p)
        limit = decl.d_out if decl.p == 1 else decl.d_out * decl.d_out
        if d > limit:
            violation(f"[{decl}] neighbours ({what}) differ by {float(d)!r} (l{decl.p}{'^2' if decl.p == 2 else ''}) "
                      f"> map(1) {float(decl.d_out)!r}{'^2' if decl.p == 2 else ''}; rows {rows!r}")
        if limit > 0:
            worst = max(worst, float(d / limit))
        c1, e1 = outcome(decl.count, parts_frame(parts1))
        c2, e2 = outcome(decl.count, parts_frame(parts2))
        if e1 is None and e2 is None:
            dc = distance(c1, c2, decl.p)
            climit = decl.d_out_count if decl.p == 1 else decl.d_out_count ** 2
            if dc > climit:
                violation(f"[{decl}] counts of neighbours ({what}) differ by {float(dc)} > {float(climit)}")
    print(f"   largest neighbour distance / map(1): {worst:.3g}")


# -- 4. the private mean's map --------------------------------------------------------------------------------

def attack_mean() -> None:
    print("== 4. the private mean's composed map")
    for budget in ({"epsilon": 1.0}, {"epsilon": 0.3}, {"rho": 0.5}):
        for metric in (dp.symmetric_distance(), dp.change_one_distance()):
            for d_in in (1, 2):
                for share in (0.5, 0.1, 0.9):
                    COUNT["checks"] += 1
                    key, total = next(iter(budget.items()))
                    mean = dg.make_private_dask_grouped_mean(SCHEMA, F, metric, by="g", keys=KEYS, d_in=d_in,
                                                             size_limit=60, count_share=share, **budget)
                    count_share = total * share
                    s = dg.make_private_dask_grouped_sum(SCHEMA, F, metric, by="g", keys=KEYS, d_in=d_in, size_limit=60,
                                                         **{key: total - count_share})
                    c = dg.make_private_dask_grouped_count(SCHEMA, metric, by="g", keys=KEYS, d_in=d_in, size_limit=60,
                                                           **{key: count_share})
                    m = float(mean.map(d_in))
                    parts = float(s.map(d_in)) + float(c.map(d_in))
                    if m > total * (1 + 1e-12) or m < parts * (1 - 1e-9):
                        violation(f"[mean {budget} {metric} d_in={d_in} share={share}] map {m} vs budget {total}, "
                                  f"parts {parts}")
                    record = accounting_of(mean)
                    if float(getattr(record, "d_in", d_in)) != d_in:
                        violation(f"[mean {budget}] accounting record's d_in {record.d_in} != {d_in}")


# -- 5. a LocalCluster ---------------------------------------------------------------------------------------

class BrokenUnpickle:
    """A key value that pickles but does not come back equal (its unpickling raises, quoting a value)."""

    def __init__(self, secret: str):
        self.secret = secret

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (int, (self.secret,))

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return False


def attack_cluster(rng: random.Random, cases: int) -> None:
    from distributed import Client, LocalCluster

    print("== 5. LocalCluster (2 processes)")
    decl = Declaration(3.5, 40, 7, "change", 1)
    frames = []
    for _ in range(cases):
        rows = random_records(rng, decl, rng.randint(0, 40))
        frames.append((rows, cut(rng, rows)))
    with dask.config.set(scheduler="synchronous"):
        sync = [decl.query(parts_frame(parts)) for _, parts in frames]
    broken = pd.DataFrame({"x": [0.5, 0.5], "g": pd.Series(["a", BrokenUnpickle(SECRET)], dtype=object)})
    rows = pd.DataFrame({"x": [0.5, 0.25, -0.5], "g": pd.Series(["a", "b", "a"], dtype=object)})
    added = pd.concat([rows, pd.DataFrame({"x": [0.75], "g": pd.Series([b"\xff"], dtype=object)})], ignore_index=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster), dask.config.set(scheduler=None):
        for (rows_i, parts), expected in zip(frames, sync, strict=True):
            COUNT["checks"] += 1
            out, exc = outcome(decl.query, parts_frame(parts))
            if exc is not None or out != expected:
                violation(f"[cluster] {out} (or {exc!r}) != synchronous {expected}; rows {rows_i!r}")
        name, query = queries()[0]
        out, exc = outcome(query, parts_frame([broken.iloc[:1], broken.iloc[1:]]))
        if exc is not None:
            note(f"[cluster] a label value whose unpickling fails: {type(exc).__name__}, private value in the "
                 f"message: {SECRET in str(exc)} (outside the module's assumption that keys survive pickling)")
        d0, d1 = dd.from_pandas(rows, npartitions=2), dd.from_pandas(added, npartitions=2)
        COUNT["checks"] += 1
        (o0, x0), (_o1, x1) = outcome(query, d0), outcome(query, d1)
        if (x0 is None) != (x1 is None) and is_schema_mismatch(x1 or x0) and SECRET not in str(x1 or x0):
            note(f"[cluster, default convert-string] {name}: D' (+ one record keyed b'\\xff') cannot be computed and "
                 f"is refused as a non-member (documented)")
        elif (x0 is None) != (x1 is None):
            violation(f"[cluster, default convert-string] {name}: D -> {o0}, D' (+ one record keyed b'\\xff') -> "
                      f"{type(x1 or x0).__name__} ({innermost(x1 or x0)!r})")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with dask.config.set(scheduler="synchronous"):
        attack_failing_graphs()
        attack_dtype_flip()
        for convert in (False, True):
            with dask.config.set({"dataframe.convert-string": convert}):
                attack_label_dtypes(rng, max(20, args.cases // 6))
        attack_numbers(rng, args.cases)
        attack_mean()
    if not args.no_cluster:
        attack_cluster(rng, 6)
    print(f"\n{COUNT['checks']} checks, {len(VIOLATIONS)} violations, {len(NOTES)} notes")
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
