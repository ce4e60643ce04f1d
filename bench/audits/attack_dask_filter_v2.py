"""Second adversarial audit of the individual filter on Dask (opendp_hybridad/individual/dask_filter.py, bc91965:
per-row work and grouping on the workers, ids hashed per partition and persisted, people brought together in
B = min(partitions, MAX_BUCKETS) buckets, a SHA-256 digest of each partition's counted ids checked at every pass).

Run: ``python bench/audits/attack_dask_filter_v2.py`` (about two minutes on two loaded cores). Exits 1 on a
violation, printing each. Extends ``attack_dask_filter.py`` (which it does not repeat).

Ground truth: the pandas ``IndividualFilter`` on the concatenation of the partitions as each partition presents
them (ids as Python objects, so no dtype of the concatenation changes an id; fields as float64 with NaN for a
missing value): pre-noise totals (``exact_sum_vector``), ``spent()`` in order of first appearance, the reports,
``active()``, the ledger summary and the person numbering (``_hashes``, the ledger hashes in numbering order).

Cases:

1. fuzz (synchronous scheduler): each partition casts its own id column to a dtype that holds its values exactly
   (int64, uint64, Int64, float64, float32, category with its own categories, pyarrow int64 / double / string,
   ``str``, ``string[python]``, datetime64 in s / ms / us / ns, tz-aware in UTC and Asia/Kolkata, timedelta64,
   bool, boolean, object), id families: numbers (2**53 + 1, 2**64 - 1, -0.0, 1e20, inf, Decimal, Fraction,
   numpy scalars), strings, date-times (naive, aware: one instant in two zones), durations, booleans, mixed
   objects; missing ids of every kind (None, NaN, pd.NA, NaT, Decimal("NaN"), Decimal("sNaN")); fields cast per
   partition (float32, Float64 / Int64 with pd.NA, object); partitions: 1, several, empty, all ids missing, and
   65 to 90 partitions (B < partitions); ``MAX_BUCKETS`` monkeypatched to 1, 2, 3, 7; the ledger's hash
   weakened (monkeypatched ``IdHasher.keys``: many ids collide, all in bucket 0 or spread over buckets);
   ``id_column=None`` and an id column that is also a schema field; ``max_rows`` 1, 2, 3, 1024; a domain with a
   fixed kept ``size`` (right and wrong) and ``size_limit`` at and below the row count.
2. the threaded scheduler on a sample of the same cases.
3. targeted non-deterministic graphs and collisions: (a) without an id column, a partition that grows between the
   set-up's length pass and its hash pass; (b) the same ids, other values, between two queries; (c) the same ids,
   another row dropped by a missing-value policy, between two queries; (d) the persisted hashes lost and
   recomputed from a re-read that gives the rows in another order (simulated on the synchronous scheduler);
   (e) without an id column, positions whose hashes collide (``IdHasher.keys`` monkeypatched to 0); (f) ids whose
   typed keys, joined with NUL bytes, give the set-up's digest (``["a\\0s:b", "c"]`` then ``["a", "b\\0s:c"]``).
4. error messages of non-member partitions among many (a planted private value in a field and in an id).
5. a 2-process ``LocalCluster``: a sample of fuzz cases (no monkeypatch: the workers are other processes), and the
   lost-hashes case for real: the worker holding partition 0's persisted hashes is killed (SIGKILL) after the
   set-up, the scheduler recomputes them from a re-read of the partition, the query's own read matches the
   set-up's digest.

Result (bc91965, and HEAD bb98de2 with 557d8ab's ``first_rows``): fuzz (synchronous, threaded, cluster), 64
buckets under 65 and 70 partitions, bucket caps 1 to 7, collisions with an id column, every id dtype above and
the messages found no disagreement (about 100 comparisons bit for bit; a planted order or people mutation of the
bucket code is caught in the first cases). Violations:

* (a) the length pass and the hash pass are two reads and nothing compares them: positions overlap, two rows
  become one person and x=4 is never counted (total 11, 4 people), where the pandas filter on the frame every
  later pass reads gives 15 and 5 people; not refused. The row counts (``metas[i][0]``) are never compared with
  the set-up's either, so a partition that gains a dropped row later also shifts every later position unseen
  (a2: x=4 charged as position 2, the pandas filter on the frame read charges position 3).
* (b), (c) a query charges after the data changed: the digest covers the counted ids only, not their values nor
  which rows a policy keeps (each query is self-consistent; the docstring's "refused" claim does not hold).
* (d) and 5 (real cluster): a query pairs one read's values with another read's hashes: person a (x=5, in the
  total) is charged 1e-28 and person c (x=0) is charged 25. The persisted hashes are never checked against the
  set-up's digest (their own meta holds the digest of the read they came from), and the bucket check passes
  when the two swapped people are in different buckets.
* (e) collisions without an id column: the pandas filter does not cut at max_rows when ``id_column`` is None
  (``_index``: ``if id_column is not None``), the Dask buckets cut every person to one row: totals 7 vs 1.
  Reachable only by a 64-bit keyed-hash collision between positions.
* (f) the digest is not an injective encoding of the key sequence (NUL-joined, and a string key may hold NUL):
  the changed partition passes, the query is charged, and the 25 lands on the set-up's id ``"a\\0s:b"`` while
  person ``"a"``, whose x=5 is in the total, is charged nothing.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import itertools
import math
import os
import random
import signal
import sys
import time
import warnings
from decimal import Decimal

# the kernels' backend pinned (calibration and numba's compile cost seconds a function); both paths share the kernel
os.environ.setdefault("OPENDP_HYBRIDAD_BACKEND", "numpy")
from fractions import Fraction

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import opendp.prelude as dp  # noqa: E402

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.errors import SchemaMismatchError  # noqa: E402
from opendp_hybridad.frame.domain import FrameDomain  # noqa: E402
from opendp_hybridad.individual import dask_filter as DF  # noqa: E402, N812
from opendp_hybridad.individual.filter import IndividualFilter  # noqa: E402
from opendp_hybridad.individual.ledger import IdHasher, LedgerParameters, PrivacyLedger  # noqa: E402

dp.enable_features("contrib")

VIOLATIONS: list[str] = []
CASES: dict[str, int] = {}

SCHEMA = hd.Schema(x=(-5, 5), y=hd.Field(0, 3, missing="drop"), z=hd.Field(-1, 1, missing="impute", impute=0.5))
FX = hd.RecordFunction("x*y", SCHEMA)
FZ = hd.RecordFunction("z + x", SCHEMA)
FS = hd.RecordFunction("exp(x/3) * z + tanh(y)/3", SCHEMA)
ONE = hd.Schema(x=(-5, 5))
F1 = hd.RecordFunction("x", ONE)
CANARY = "PRIVATE-9c1e"


def count(name: str, k: int = 1) -> None:
    CASES[name] = CASES.get(name, 0) + k


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg, flush=True)


def from_parts(parts: list[pd.DataFrame]) -> dd.DataFrame:
    """A Dask frame whose partitions are exactly these pandas frames (their own dtypes kept)."""
    return dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=parts[0].iloc[:0], verify_meta=False)


# -- ids ---------------------------------------------------------------------------------------------------------
MISSING = [None, math.nan, pd.NA, pd.NaT, Decimal("NaN"), Decimal("sNaN"), np.float32("nan")]
NUMBERS = [1, 2, 3, 2**53, 2**53 + 1, 2**64 - 1, -7, -0.0, 0.0, 0, 1.0, 2.5, 1e20, 10**20, math.inf, Decimal("1.00"),
           Decimal("2.50"), Fraction(5, 2), np.int64(3), np.uint64(2**64 - 1), np.float32(0.1), 0.1, np.int8(-7)]
T0 = pd.Timestamp("2024-03-01 12:00:00")
TIMES = [T0, T0 + pd.Timedelta(seconds=1), T0 + pd.Timedelta(milliseconds=1), T0.to_pydatetime(),
         np.datetime64("2024-03-01T12:00:00", "s"), pd.Timestamp("1970-01-01")]
AWARE = [pd.Timestamp("2024-03-01 12:00:00", tz="UTC"), pd.Timestamp("2024-03-01 17:30:00", tz="Asia/Kolkata"),
         pd.Timestamp("2024-03-01 13:00:00", tz="UTC")]
DURATIONS = [pd.Timedelta(seconds=1), _dt.timedelta(milliseconds=1000), np.timedelta64(1000, "ms"), pd.Timedelta(0),
             pd.Timedelta(days=2)]
STRINGS = ["a", "b", "1", "é", "a\x00", ""]
BOOLS = [True, False, np.bool_(True)]
FAMILIES = {"numbers": NUMBERS, "strings": STRINGS, "times": TIMES, "aware": AWARE, "durations": DURATIONS,
            "bools": BOOLS, "mixed": [*NUMBERS[:8], *STRINGS[:3], T0, True, b"a", (1, 2)]}


def id_values(rng: random.Random, family: str, n: int) -> list:
    pool = FAMILIES[family]
    people = rng.sample(pool, min(len(pool), rng.randint(1, 6)))
    return [rng.choice(MISSING) if rng.random() < 0.12 else rng.choice(people) for _ in range(n)]


def _is_missing(v) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, Decimal):
        return v.is_nan()
    try:
        return bool(isinstance(v, (float, np.floating)) and v != v)
    except Exception:
        return False


def typed_ids(rng: random.Random, family: str, values: list) -> pd.Series:
    """The partition's id column in a dtype chosen at random among those that hold its values exactly."""
    present = [v for v in values if not _is_missing(v)]
    missing = len(present) < len(values)
    options = ["object"]
    clean = [None if _is_missing(v) else v for v in values]
    if family == "numbers":
        ints = [v for v in present if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))]
        if len(ints) == len(present):
            ivals = [int(v) for v in ints]
            if all(-2**63 <= v < 2**63 for v in ivals):
                options += ["Int64", "int64[pyarrow]"] + ([] if missing else ["int64"])
                if all(abs(v) <= 2**53 for v in ivals):
                    options += ["float64", "category"]
            if all(0 <= v < 2**64 for v in ivals) and not missing:
                options += ["uint64"]
        floats_ok = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                        and float(v) == v and (not isinstance(v, (int, np.integer)) or abs(int(v)) <= 2**53) for v in present)
        if floats_ok:
            options += ["float64", "double[pyarrow]", "Float64", "category"]
            if all(np.float32(v) == v for v in present):
                options += ["float32"]
    elif family == "strings":
        options += ["str", "string[python]", "category"]
    elif family == "times":
        options += ["datetime64[ns]", "datetime64[us]", "category"]
        if all(pd.Timestamp(v).microsecond == 0 and pd.Timestamp(v).nanosecond == 0 for v in present):
            options += ["datetime64[s]", "datetime64[ms]"]
    elif family == "aware":
        options += ["datetime64[ns, UTC]", "datetime64[us, Asia/Kolkata]"]
    elif family == "durations":
        options += ["timedelta64[ns]", "timedelta64[ms]"]
    elif family == "bools":
        options += ["boolean", "category"] + ([] if missing else ["bool"])
    kind = rng.choice(options)
    try:
        if kind == "object":
            out = pd.Series(np.empty(len(values), dtype=object), dtype=object)
            out[:] = values
            return out
        if kind in ("int64", "uint64", "bool", "float32"):
            return pd.Series(list(clean), dtype=kind)
        if kind == "float64":
            return pd.Series([math.nan if v is None else float(v) for v in clean], dtype="float64")
        if kind == "category":
            return pd.Series(pd.Categorical(clean))
        if kind.startswith("datetime64") and "," not in kind:
            return pd.Series(pd.to_datetime(pd.Series(clean, dtype=object)).astype(kind))
        if "," in kind:
            return pd.Series(pd.to_datetime(pd.Series(clean, dtype=object), utc=True)).dt.tz_convert(
                "UTC" if "UTC" in kind else "Asia/Kolkata").astype(kind)
        if kind.startswith("timedelta"):
            return pd.Series(pd.to_timedelta(pd.Series(clean, dtype=object))).astype(kind)
        return pd.Series(clean, dtype=kind)
    except Exception:  # a dtype that cannot hold them after all: objects
        out = pd.Series(np.empty(len(values), dtype=object), dtype=object)
        out[:] = values
        return out


def as_objects(series: pd.Series) -> pd.Series:
    """The values a partition presents, as Python objects (what the ground truth's id column holds)."""
    out = np.empty(len(series), dtype=object)
    out[:] = list(series.astype(object))
    return pd.Series(out, dtype=object)


def typed_field(rng: random.Random, values: np.ndarray) -> pd.Series:
    kind = rng.choice(["float64", "float64", "float32", "Float64", "object", "double[pyarrow]"])
    if kind == "float32":
        return pd.Series(values.astype(np.float32))
    if kind == "object":
        return pd.Series(list(values), dtype=object)
    if kind in ("Float64", "double[pyarrow]"):
        return pd.Series([None if math.isnan(v) else float(v) for v in values], dtype=kind)
    return pd.Series(values)


def field_float64(series: pd.Series) -> np.ndarray:
    return np.array([math.nan if (v is None or v is pd.NA or (isinstance(v, float) and v != v)) else float(v)
                     for v in series.astype(object)], dtype=np.float64)


def make_parts(rng: random.Random, n: int, family: str, id_in_field: bool,
               many: bool = False) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Random partitions (each with its own dtypes) and the ground-truth concatenation."""
    nrng = np.random.default_rng(rng.randint(0, 2**31))
    x = nrng.uniform(-7, 7, n)
    y = nrng.uniform(-1, 4, n)
    z = nrng.uniform(-2, 2, n)
    y[nrng.random(n) < 0.1] = np.nan
    z[nrng.random(n) < 0.1] = np.nan
    x[nrng.random(n) < 0.03] = np.inf
    if id_in_field:
        x = np.round(x)  # the id is x itself: few people, each with several rows
    ids = id_values(rng, family, n)
    k = rng.randint(65, 90) if many else rng.choice([1, 1, 2, 3, 5, 9])
    cuts = sorted(rng.randint(0, n) for _ in range(k - 1))
    parts, truths = [], []
    for lo, hi in itertools.pairwise([0, *cuts, n]):
        sl = slice(lo, hi)
        vals = ids[sl]
        if rng.random() < 0.1:
            vals = [rng.choice(MISSING) for _ in vals]  # a partition whose ids are all missing
        part = pd.DataFrame({"x": typed_field(rng, x[sl]), "y": typed_field(rng, y[sl]), "z": typed_field(rng, z[sl])})
        part["person"] = typed_ids(rng, family, vals).array
        if rng.random() < 0.2:
            part.index = pd.RangeIndex(len(part)) * 7 + rng.randint(0, 5)  # indexes that overlap between partitions
        parts.append(part)
        truths.append(pd.DataFrame({"x": field_float64(part["x"]), "y": field_float64(part["y"]),
                                    "z": field_float64(part["z"]), "person": as_objects(part["person"])}))
    truth = pd.concat(truths, ignore_index=True)
    assert truth["person"].dtype == object
    return parts, truth


# -- comparison ---------------------------------------------------------------------------------------------------
def outcome(flt, queries):
    out = [("hashes", flt._hashes.tolist()), ("m", flt._m)]
    for functions, scale in queries:
        out.append(("total", flt.exact_sum_vector(functions, scale).tolist()))
        out.append(("spent", flt.spent().tolist()))
        out.append(("report", repr(flt.reports[-1])))
    out.append(("active", flt.active()))
    out.append(("summary", {k: v for k, v in flt.ledger.summary().items() if k in ("retired", "queries", "members")}))
    return out


def attempt(make):
    try:
        return "ok", make()
    except SchemaMismatchError as e:
        return "refused", str(e)
    except Exception as e:  # the outcome is compared
        return "raised", f"{type(e).__name__}: {e}"


class WeakHash:
    """Monkeypatch ``IdHasher.keys`` (both paths call it): few distinct hashes, so different ids collide."""

    def __init__(self, mode: str):
        self.mode, self.saved = mode, None

    def __enter__(self):
        self.saved = IdHasher.keys
        saved, mode = self.saved, self.mode

        def keys(hasher, keys):
            h = saved(hasher, keys)
            if mode == "const":  # every id one hash
                return np.zeros_like(h)
            if mode == "bucket0":  # every hash < 2**32: one bucket, 5 values
                return h % np.uint64(5)
            return (h % np.uint64(5)) << np.uint64(32) | np.uint64(7)  # 5 values spread over buckets

        IdHasher.keys = keys
        return self

    def __exit__(self, *exc):
        IdHasher.keys = self.saved


class Buckets:
    def __init__(self, b):
        self.b, self.saved = b, None

    def __enter__(self):
        self.saved = DF.MAX_BUCKETS
        if self.b is not None:
            DF.MAX_BUCKETS = self.b

    def __exit__(self, *exc):
        DF.MAX_BUCKETS = self.saved


def salted(kw):
    """One ledger salt for both paths: the hashes (and the numbering) are compared, not only their order."""
    from opendp_hybridad.analysis.rounding import mul_down

    budget = kw["budget"] if kw["kind"] == "renyi" else mul_down(kw["budget"], kw["budget"])
    return LedgerParameters(kw["kind"], budget, kw.get("alpha") if kw["kind"] == "renyi" else None)


def fuzz(rng: random.Random, cases: int, label: str, local: bool = True) -> None:
    """``local``: the monkeypatches (bucket cap, weak hash) reach the tasks (not on a process cluster)."""
    fams = list(FAMILIES)
    found = 0
    for case in range(cases):
        n = rng.randint(0, 50)
        family = rng.choice(fams)
        id_in_field = rng.random() < 0.1
        parts, truth = make_parts(rng, n, family, id_in_field, many=local and rng.random() < 0.2)
        id_column = "x" if id_in_field else rng.choice(["person", "person", "person", None])
        kw = rng.choice([{"kind": "renyi", "alpha": 3.0, "budget": 2.0}, {"kind": "gdp", "budget": 1.5}])
        kw = {**kw, "id_column": id_column, "max_rows": rng.choice([1, 2, 3, 1024])}
        size_mode = rng.choice(["limit", "limit", "limit", "tight", "under", "size", "size_wrong"])
        kept = int(truth["y"].notna().sum())
        if size_mode == "limit":
            schema, kw["size_limit"] = SCHEMA, 200
        elif size_mode == "tight":
            schema, kw["size_limit"] = SCHEMA, max(1, n)
        elif size_mode == "under":
            schema, kw["size_limit"] = SCHEMA, max(1, n - 1)
        else:
            schema = FrameDomain(SCHEMA, 200, kept + (1 if size_mode == "size_wrong" else 0))
        queries = [([FX], rng.choice([2.0, 5.0, 20.0])), ([FX, FZ, FS], 6.0), ([FS], 3.0)]
        # more partitions than buckets: a small cap (64 buckets with 65+ partitions is case 1b; 5,000 tasks a pass)
        buckets = rng.choice([1, 2, 3, 7]) if len(parts) > 12 else rng.choice([None, None, 1, 2, 3, 7])
        # a weak hash without an id column is case 3(e) (a collision there is counted differently)
        weak = rng.choice([None, None, None, "bucket0", "spread"]) if local and id_column is not None else None
        if not local:
            buckets = None
        ledger_salt = PrivacyLedger(":memory:", salted(kw)).salt

        def run(make_frame, cls, kw=kw, schema=schema, queries=queries, ledger_salt=ledger_salt):
            ledger = PrivacyLedger(":memory:", salted(kw))
            ledger.salt = ledger_salt
            return attempt(lambda: outcome(cls(make_frame(), schema, ledger=ledger, **kw), queries))

        with Buckets(buckets), WeakHash(weak) if weak else _Null():
            st, expected = run(lambda truth=truth: truth, IndividualFilter)
            got_st, got = run(lambda parts=parts: from_parts(parts), DF.DaskIndividualFilter)
        count(f"fuzz_{label}")
        if st != got_st or (st == "ok" and got != expected) or (st == "raised"):
            violation(f"{label} case {case}: family {family}, {len(parts)} partitions, B cap {buckets}, weak hash {weak}, "
                      f"size {size_mode}, {kw}, id dtypes {[str(p['person'].dtype) for p in parts][:6]}: pandas {st} "
                      f"{_diff(expected, got)} vs dask {got_st}")
            found += 1
            if found >= 3:
                return
        if st == "refused":
            count(f"fuzz_{label}_refused_both")


def many_partitions(rng: random.Random) -> None:
    """1b. the default cap (64 buckets) with 65 and 70 partitions, one person in every partition."""
    for k in (65, 70):
        parts = [pd.DataFrame({"x": [rng.uniform(-7, 7), rng.uniform(-7, 7)], "y": [1.0, rng.choice([np.nan, 2.0])],
                               "z": [0.0, np.nan], "person": pd.Series([0, rng.choice([i, None, 2**53 + 1])],
                                                                        dtype=object)}) for i in range(k)]
        truth = pd.concat(parts, ignore_index=True)
        kw = {"kind": "renyi", "alpha": 3.0, "budget": 50.0, "id_column": "person", "max_rows": 40, "size_limit": 500}
        queries = [([FX, FZ], 4.0), ([FS], 2.0)]
        salt = PrivacyLedger(":memory:", salted(kw)).salt

        def ledger(salt=salt, kw=kw):
            out = PrivacyLedger(":memory:", salted(kw))
            out.salt = salt
            return out

        st, expected = attempt(lambda truth=truth, kw=kw, queries=queries, ledger=ledger: outcome(
            IndividualFilter(truth, SCHEMA, ledger=ledger(), **kw), queries))
        got_st, got = attempt(lambda parts=parts, kw=kw, queries=queries, ledger=ledger: outcome(
            DF.DaskIndividualFilter(from_parts(parts), SCHEMA, ledger=ledger(), **kw), queries))
        count("many_partitions")
        if st != got_st or got != expected:
            violation(f"{k} partitions, 64 buckets: pandas {st} vs dask {got_st}: {_diff(expected, got)}")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _diff(a, b):
    if isinstance(a, str) or isinstance(b, str):
        return f"{str(a)[:300]} / {str(b)[:300]}"
    for x, y in zip(a, b, strict=False):
        if x != y:
            return f"first difference {str(x)[:300]} / {str(y)[:300]}"
    return "(lengths differ)"


# -- targeted non-deterministic graphs ----------------------------------------------------------------------------
KW1 = {"budget": 100.0, "alpha": 2.0, "size_limit": 100}


def flaky(reads, *parts_by_read):
    """A delayed partition whose n-th read (1-based) is ``parts_by_read[min(n, len) - 1]``."""
    def read():
        reads["n"] += 1
        return parts_by_read[min(reads["n"], len(parts_by_read)) - 1]
    return dask.delayed(read, pure=False)()


def offsets_then_hashes() -> None:
    """(a) id_column=None: partition 0 has 2 rows at the length pass and 3 at every later read."""
    reads = {"n": 0}
    two, three = pd.DataFrame({"x": [1.0, 2.0]}), pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    frame = dd.from_delayed([flaky(reads, two, three), dask.delayed(lambda: pd.DataFrame({"x": [4.0, 5.0]}))()],
                            meta=two.iloc[:0], verify_meta=False)
    st, got = attempt(lambda: (lambda f: (f.exact_sum_vector([F1], 1.0).tolist(), f.spent().tolist(), f._m))(
        DF.DaskIndividualFilter(frame, ONE, **KW1)))
    ref = IndividualFilter(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0]}), ONE, **KW1)
    want = (ref.exact_sum_vector([F1], 1.0).tolist(), ref.spent().tolist(), ref._m)
    count("targeted")
    if st == "ok" and got != want:
        violation(f"(a) no id column, partition 0 read with 2 rows by the set-up's length pass and 3 rows by every "
                  f"later read (hash pass and query): not refused; Dask (total, spent, people) {got} vs the pandas "
                  f"filter on the frame the hash pass and the query read {want}: partition 1's first row gets position "
                  f"2 (partition 0's third row's), the two rows are one person and x=4 is never counted")


def grows_by_a_dropped_row() -> None:
    """(a2) id_column=None: partition 0 gains a row that y's policy drops after the set-up (same kept positions,
    same digest, more rows): the positions of every later partition shift in the frame, not in the ledger."""
    base = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 1.0], "z": [0.0, 0.0]})
    grown = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 1.0, np.nan], "z": [0.0, 0.0, 0.0]})
    last = pd.DataFrame({"x": [4.0], "y": [1.0], "z": [0.0]})
    reads = {"n": 0}
    frame = dd.from_delayed([flaky(reads, base, base, grown), dask.delayed(lambda: last)()], meta=base.iloc[:0],
                            verify_meta=False)
    ledger = PrivacyLedger(":memory:", LedgerParameters("renyi", 100.0, 2.0))
    flt = DF.DaskIndividualFilter(frame, SCHEMA, budget=100.0, alpha=2.0, ledger=ledger, size_limit=10)
    st, _ = attempt(lambda: flt.exact_sum_vector([FX], 1.0).tolist())
    twin = PrivacyLedger(":memory:", LedgerParameters("renyi", 100.0, 2.0))
    twin.salt = ledger.salt
    ref = IndividualFilter(pd.concat([grown, last], ignore_index=True), SCHEMA, budget=100.0, alpha=2.0, ledger=twin,
                           size_limit=10)
    ref.exact_sum_vector([FX], 1.0)
    count("targeted")
    if st == "ok" and flt._hashes.tolist() != ref._hashes.tolist():
        violation("(a2) no id column, partition 0 gains a row dropped by y's policy after the set-up (same digest, "
                  "one more row): charged, not refused; the row x=4 is charged as position 2 (the set-up's) where "
                  "the pandas filter on the frame the query read charges position 3")


def values_change() -> None:
    """(b) the same ids, other values, between two queries; (c) the same ids, another row dropped."""
    meta = pd.DataFrame({"x": pd.Series(dtype=float), "person": pd.Series(dtype="int64")})
    reads = {"n": 0}
    first = pd.DataFrame({"x": [1.0, 0.0], "person": [1, 2]})
    later = pd.DataFrame({"x": [5.0, 0.0], "person": [1, 2]})
    frame = dd.from_delayed([flaky(reads, first, first, later)], meta=meta, verify_meta=False)
    flt = DF.DaskIndividualFilter(frame, ONE, id_column="person", **KW1)
    t1 = flt.exact_sum_vector([F1], 1.0).tolist()
    st, t2 = attempt(lambda: flt.exact_sum_vector([F1], 1.0).tolist())
    count("targeted")
    if st == "ok":
        violation(f"(b) the same ids with other values at the second query (a non-deterministic graph): charged, "
                  f"not refused; totals {t1} then {t2}, spent {flt.spent().tolist()}: no single frame gives both "
                  f"answers (the pandas filter on either read gives [1.0] twice or [5.0] twice)")
    fmeta = pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float), "z": pd.Series(dtype=float),
                          "person": pd.Series(dtype="int64")})
    reads = {"n": 0}
    a = pd.DataFrame({"x": [5.0, 1.0], "y": [np.nan, 1.0], "z": [0.0, 0.0], "person": [1, 1]})
    b = pd.DataFrame({"x": [5.0, 1.0], "y": [1.0, np.nan], "z": [0.0, 0.0], "person": [1, 1]})
    frame = dd.from_delayed([flaky(reads, a, a, b)], meta=fmeta, verify_meta=False)
    flt = DF.DaskIndividualFilter(frame, SCHEMA, id_column="person", **KW1)
    t1 = flt.exact_sum_vector([FX], 1.0).tolist()
    st, t2 = attempt(lambda: flt.exact_sum_vector([FX], 1.0).tolist())
    count("targeted")
    if st == "ok":
        violation(f"(c) the same ids, another row dropped by y's missing-value policy at the second query: charged, "
                  f"not refused; totals {t1} then {t2}")


def digest_collision() -> None:
    """(f) the digest joins the typed id keys with NUL bytes, and a string id's key may hold NUL: the ids
    ["a\\0s:b", "c"] and ["a", "b\\0s:c"] give one byte stream, so a partition that changes from one to the
    other between the set-up and a query passes the check, and the query's values are charged to the set-up's ids."""
    meta = pd.DataFrame({"x": pd.Series(dtype=float), "person": pd.Series(dtype=object)})
    before = pd.DataFrame({"x": [5.0, 0.0], "person": ["a\0s:b", "c"]})
    after = pd.DataFrame({"x": [5.0, 0.0], "person": ["a", "b\0s:c"]})
    reads = {"n": 0}
    frame = dd.from_delayed([flaky(reads, before, after)], meta=meta, verify_meta=False)
    flt = DF.DaskIndividualFilter(frame, ONE, id_column="person", **KW1)
    st, total = attempt(lambda: flt.exact_sum_vector([F1], 1.0).tolist())
    count("targeted")
    if st == "ok":
        charged_a = float(flt.ledger.spent(flt.hashes_of(["a"]))[0])
        violation(f"(f) a partition's ids change from {before['person'].tolist()!r} to {after['person'].tolist()!r} "
                  f"between the set-up and the query (same digest: keys joined by NUL): charged, not refused; total "
                  f"{total} holds person 'a''s x=5 but the ledger charges 'a' {charged_a:.3g} (the 25 went to the "
                  f"set-up's id 'a\\0s:b'); spent {flt.spent().tolist()}")


def _ids_in_two_buckets(ledger: PrivacyLedger, buckets: int) -> tuple[int, int]:
    h = ledger.hash_ids(pd.Series(list(range(1, 64))))
    b = DF._buckets_of(h, buckets)
    return 1 + int(np.flatnonzero(b == 0)[0]), 1 + int(np.flatnonzero(b == 1)[0])


def lost_hashes_simulated() -> None:
    """(d) the persisted hashes recomputed from a re-read (rows in another order); the query's read is the set-up's."""
    ledger = PrivacyLedger(":memory:", LedgerParameters("renyi", 100.0, 2.0))
    a, c = _ids_in_two_buckets(ledger, 2)
    meta = pd.DataFrame({"x": pd.Series(dtype=float), "person": pd.Series(dtype="int64")})
    reads = {"n": 0}
    orig = pd.DataFrame({"x": [5.0, 0.0], "person": [a, c]})
    swapped = pd.DataFrame({"x": [0.0, 5.0], "person": [c, a]})
    frame = dd.from_delayed([flaky(reads, orig, swapped, orig),
                             dask.delayed(lambda: pd.DataFrame({"x": [0.0], "person": [1000]}))()], meta=meta,
                            verify_meta=False)
    flt = DF.DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, id_column="person", ledger=ledger, size_limit=10)
    task = DF._HashPass(flt._partition_domain, "person", flt.ledger.hasher())
    flt._loaded = list(dask.persist(*[dask.delayed(task, pure=False)(p, 0) for p in flt._frame.to_delayed()]))
    st, total = attempt(lambda: flt.exact_sum_vector([F1], 1.0).tolist())
    spent = dict(zip([a, c, 1000], flt.spent().tolist(), strict=True))
    count("targeted")
    if st == "ok" and spent[a] < 25.0:
        violation(f"(d) persisted hashes recomputed from a re-read with rows [{c}, {a}] (the set-up read [{a}, {c}]), "
                  f"the query's read equal to the set-up's: total {total} holds person {a}'s x=5, person {a} is "
                  f"charged {spent[a]:.3g} < the true RDP loss 25 and person {c} (x=0) is charged {spent[c]:.3g}")


def collisions_without_id() -> None:
    """(e) without an id column every row is a person (max_rows 1); two positions whose hashes collide."""
    frame = pd.DataFrame({"x": [1.0, 2.0, 4.0]})
    with WeakHash("const"):
        ref = IndividualFilter(frame, ONE, **KW1)
        want = (ref.exact_sum_vector([F1], 1.0).tolist(), ref.spent().tolist())
        flt = DF.DaskIndividualFilter(from_parts([frame.iloc[:2], frame.iloc[2:]]), ONE, **KW1)
        got = (flt.exact_sum_vector([F1], 1.0).tolist(), flt.spent().tolist())
    count("targeted")
    if got != want:
        violation(f"(e) no id column, the three positions' hashes collide (IdHasher.keys monkeypatched to 0): pandas "
                  f"(total, spent) {want} (no max_rows cut without an id column: the colliding rows all count) vs Dask "
                  f"{got} (the buckets cut every person to max_rows = 1 row)")


# -- messages -----------------------------------------------------------------------------------------------------
def messages(rng: random.Random) -> None:
    good = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 1.0], "z": [0.0, 0.0], "person": [1, 2]})
    plants = [("x", pd.Series([1.0, CANARY], dtype=object)),
              ("y", pd.Series([CANARY, 1.0], dtype=object)),
              ("x", pd.Series([1.0, math.nan]))]
    for column, series in plants:
        bad = good.copy()
        bad[column] = series
        bad["person"] = pd.Series([CANARY + "-id", 7], dtype=object)
        parts = [good.copy() for _ in range(rng.randint(3, 70))]
        parts.insert(rng.randint(0, len(parts)), bad)
        st, msg = attempt(lambda parts=parts: DF.DaskIndividualFilter(
            from_parts(parts), SCHEMA, budget=1.0, alpha=2.0, id_column="person").exact_sum_vector([FX], 1.0))
        count("messages")
        if st != "refused" or CANARY in str(msg):
            violation(f"non-member partition ({column}): {st}: {msg}")


# -- cluster ------------------------------------------------------------------------------------------------------
COUNTER = f"/tmp/attack_dask_filter_v2_{os.getpid()}.count"


def _bump(path: str) -> int:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
        f.flush()
        return n


def _read_in_order(a: int, c: int, path: str) -> pd.DataFrame:
    """Rows [a, c], except at the second read (a re-read after a lost worker): [c, a] (an unordered source)."""
    if _bump(path) == 2:
        return pd.DataFrame({"x": [0.0, 5.0], "person": [c, a]})
    return pd.DataFrame({"x": [5.0, 0.0], "person": [a, c]})


def _other_partition() -> pd.DataFrame:
    return pd.DataFrame({"x": [0.0], "person": [1000]})


def _reads() -> str:
    with open(COUNTER) as f:
        return f.read()


def lost_worker(client) -> None:
    with open(COUNTER, "w") as f:
        f.write("0")
    ledger = PrivacyLedger(":memory:", LedgerParameters("renyi", 100.0, 2.0))
    a, c = _ids_in_two_buckets(ledger, 2)
    meta = pd.DataFrame({"x": pd.Series(dtype=float), "person": pd.Series(dtype="int64")})
    frame = dd.from_delayed([dask.delayed(_read_in_order, pure=False)(a, c, COUNTER),
                             dask.delayed(_other_partition, pure=False)()], meta=meta)
    flt = DF.DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, id_column="person", ledger=ledger, size_limit=10)
    key = flt._loaded[0].key
    holder = next(iter(client.who_has()[key]))
    pid = client.run(os.getpid, workers=[holder])[holder]
    os.kill(pid, signal.SIGKILL)  # the worker holding partition 0's persisted hashes is lost
    for _ in range(120):  # the scheduler recomputes them from a re-read (the second read)
        time.sleep(0.25)
        if _reads() == "2" and client.who_has().get(key):
            break
    st, total = attempt(lambda: flt.exact_sum_vector([F1], 1.0).tolist())
    reads = _reads()
    spent = dict(zip([a, c, 1000], flt.spent().tolist(), strict=True))
    count("cluster_lost_worker")
    if st == "ok" and spent[a] < 25.0:
        violation(f"LocalCluster, a worker killed after the set-up (its persisted hashes recomputed from a re-read "
                  f"that gives the rows in another order; reads {reads}): the query's read matches the set-up's "
                  f"digest, total {total} holds person {a}'s x=5, person {a} is charged {spent[a]:.3g} < 25, person "
                  f"{c} (x=0) {spent[c]:.3g}")
    else:
        print(f"   lost worker: {st} {total}, reads {reads}, spent {spent}")
    os.unlink(COUNTER)


def main() -> int:
    t0 = time.time()
    rng = random.Random(20261202)
    with dask.config.set(scheduler="synchronous"), dask.config.set({"dataframe.convert-string": False}):
        print("1. fuzz vs the pandas filter (synchronous)", flush=True)
        fuzz(rng, 85, "sync")
        print(f"   {time.time() - t0:.0f} s", flush=True)
        print("1b. 65 and 70 partitions, 64 buckets", flush=True)
        many_partitions(rng)
        print(f"   {time.time() - t0:.0f} s", flush=True)
        print("3. non-deterministic graphs", flush=True)
        offsets_then_hashes()
        grows_by_a_dropped_row()
        values_change()
        lost_hashes_simulated()
        collisions_without_id()
        digest_collision()
        print("4. messages", flush=True)
        messages(rng)
    with dask.config.set(scheduler="threads", num_workers=2), dask.config.set({"dataframe.convert-string": False}):
        print("2. fuzz (threaded)", flush=True)
        fuzz(random.Random(5), 10, "threads")
    print(f"   {time.time() - t0:.0f} s", flush=True)
    print("5. 2-process LocalCluster", flush=True)
    try:
        import distributed
    except ImportError:
        print("   distributed not installed: skipped")
    else:
        import logging

        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                           silence_logs=logging.CRITICAL)
        with distributed.Client(cluster) as client, dask.config.set({"dataframe.convert-string": False}):
            fuzz(random.Random(11), 5, "cluster", local=False)
            lost_worker(client)
        cluster.close()
    print("cases:", CASES)
    print(f"{len(VIOLATIONS)} violation(s) in {time.time() - t0:.0f} s")
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
