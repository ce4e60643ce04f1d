"""Adversarial audit of the individual filter on Dask (opendp_hybridad/individual/dask_filter.py, f531659..2e222aa).

Run: ``python bench/audits/attack_dask_filter.py`` (about a minute). Exits 1 on a violation.

Ground truth: the pandas ``IndividualFilter`` on the same rows in the same order (pre-noise totals through
``exact_sum_vector``, per-person ``spent()`` in order of first appearance, ``reports``, ``active()``, the
ledger summary), and, where the pandas path cannot be run on the partitions' concatenation, the ids' exact
values (``fractions.Fraction``) and each person's true loss ``alpha s_i^2 / (2 sigma^2)``.

Cases:

1. fuzz (synchronous scheduler): random frames (drop / impute / clamped values, missing ids), ids of mixed
   types (ints, floats, 2**53+1, -0.0, Decimal, Fraction, numpy ints, strings, bytes, None, NaN, pd.NA) under
   several column dtypes (object, float64, int64, Int64, category, str, pyarrow int64), max_rows 1..3 and
   1024, several random partitionings each (empty and one-row partitions), renyi and gdp, 3 queries each
   (scalar and vector);
2. per-partition categorical id columns whose categories differ in dtype (int64 in one partition, float64 in
   another): ``_concatenated`` joins them with ``pd.concat`` since every categorical's ``str(dtype)`` is
   ``"category"``, which casts ``2**53+1`` to ``2**53`` (two people merged);
3. a frame whose rows are the same multiset at every pass but in another order within a partition (a
   non-deterministic graph that keeps the counts): ids of the load pass are paired with values of the
   query's pass;
4. Dask's own ``dataframe.convert-string`` (default on): ``dd.from_pandas`` of an object id column turns
   ``1``, ``Decimal("1.00")`` and ``"1"`` into text, so the Dask filter's people differ from the pandas
   filter's on the source frame (and a durable ledger shared between the two paths keys a person twice);
5. neighbours (one person's rows added in random partitions, ids of odd types): raises on one and not the
   other; error messages checked for a planted private value;
6. the ledger: nothing charged when a pass fails;
7. a 2-process ``LocalCluster``: a sample of fuzz cases, the categorical case, and one id object (whose ``str`` holds
   its address) in two partitions, which comes back from the workers as two objects.

Result (2e222aa): fuzz, neighbours, messages and the failed-pass ledger check found nothing (228 fuzz
comparisons bit for bit, 21 on the cluster). Violations: (2) categorical partitions merge 2**53+1 with 2**53
(``_concatenated`` compares ``str(dtype)``, "category" for all); (3) a reordering graph pairs one row's id
with another row's value (the layout check counts rows only); (4) from_pandas's string conversion splits a
person against the pandas filter on the source frame (Dask's doing, outside the stated claim, but the same
ledger keys a person differently on the two paths); (7) an identity-keyed id object is split by pickling.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import warnings
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import opendp.prelude as dp  # noqa: E402

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.errors import SchemaMismatchError  # noqa: E402
from opendp_hybridad.individual.dask_filter import DaskIndividualFilter  # noqa: E402
from opendp_hybridad.individual.filter import IndividualFilter  # noqa: E402

dp.enable_features("contrib")

VIOLATIONS: list[str] = []
CASES = {"fuzz": 0, "fuzz_refused_both": 0, "neighbours": 0, "messages": 0, "cluster": 0}

SCHEMA = hd.Schema(x=(-5, 5), y=hd.Field(0, 3, missing="drop"), z=hd.Field(-1, 1, missing="impute", impute=0.5))
FX = hd.RecordFunction("x*y", SCHEMA)
FZ = hd.RecordFunction("z + x", SCHEMA)
ONE = hd.Schema(x=(-5, 5))
F1 = hd.RecordFunction("x", ONE)


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg)


NOTES: list[str] = []


def note(msg: str) -> None:
    """Outside the filter's claim (documented in docs/scale.md): Dask's own conversion of the data, or ids
    whose key is not a function of their value (ids.py keys such objects by type and text)."""
    NOTES.append(msg)
    print("NOTE:", msg)


def split(frame: pd.DataFrame, cuts: list[int], verify: bool = True, per_part=None) -> dd.DataFrame:
    bounds = [0, *cuts, len(frame)]
    parts = [frame.iloc[lo:hi].copy() for lo, hi in itertools.pairwise(bounds)]
    if per_part is not None:
        parts = [per_part(p) for p in parts]
    return dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=parts[0].iloc[:0], verify_meta=verify)


def random_cuts(rng: random.Random, n: int) -> list[int]:
    k = rng.choice([0, 1, 2, 3, 5, 9])
    return sorted(rng.randint(0, n) for _ in range(k))


POOL = [1, 2, 3, 2**53 + 1, 2**53, -0.0, 0.0, 1.5, Decimal("1.00"), Decimal("2.5"), Fraction(5, 2), np.int64(3),
        np.uint64(2**63 + 5), "1", "a", b"a", None, float("nan"), pd.NA, 10**30, np.float32(0.1), 0.1]


def id_column(rng: random.Random, n: int) -> tuple[str, pd.Series]:
    kind = rng.choice(["object", "float64", "int64", "Int64", "category", "str", "int64[pyarrow]"])
    if kind == "object":
        return kind, pd.Series([rng.choice(POOL) for _ in range(n)], dtype=object)
    ints = [rng.choice([1, 2, 3, 4, 2**53 + 1, 2**53, -7]) for _ in range(n)]
    if kind == "float64":
        return kind, pd.Series([float(v) if rng.random() > 0.1 else math.nan for v in ints], dtype="float64")
    if kind == "int64":
        return kind, pd.Series(ints, dtype="int64")
    if kind == "Int64":
        return kind, pd.Series([v if rng.random() > 0.1 else None for v in ints], dtype="Int64")
    if kind == "category":
        return kind, pd.Series([v if rng.random() > 0.1 else None for v in ints], dtype="category")
    if kind == "str":
        return kind, pd.Series([str(v) if rng.random() > 0.1 else None for v in ints], dtype="str")
    return kind, pd.Series([v if rng.random() > 0.1 else None for v in ints], dtype="int64[pyarrow]")


def records(rng: random.Random, n: int) -> tuple[str, pd.DataFrame]:
    nrng = np.random.default_rng(rng.randint(0, 2**31))
    kind, ids = id_column(rng, n)
    frame = pd.DataFrame({"x": nrng.uniform(-7, 7, n), "y": nrng.uniform(-1, 4, n), "z": nrng.uniform(-2, 2, n)})
    frame["person"] = ids.to_numpy() if kind == "object" else ids.array
    for col in ("y", "z"):
        frame.loc[nrng.random(n) < 0.1, col] = np.nan
    frame.loc[nrng.random(n) < 0.03, "x"] = np.inf
    return kind, frame


def outcome(flt, queries):
    out = []
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
    except Exception as e:  # the outcome is compared
        return "raised", f"{type(e).__name__}: {e}"


def fuzz(rng: random.Random, cases: int, label: str) -> None:
    for case in range(cases):
        n = rng.randint(1, 60)
        kind, frame = records(rng, n)
        max_rows = rng.choice([1, 2, 3, 1024])
        kw = rng.choice([{"kind": "renyi", "alpha": 3.0, "budget": 2.0}, {"kind": "gdp", "budget": 1.5}])
        kw = {**kw, "id_column": rng.choice(["person", "person", None]), "max_rows": max_rows, "size_limit": 200}
        queries = [([FX], rng.choice([2.0, 5.0, 20.0])), ([FX, FZ], 6.0), ([FZ], 3.0)]
        st, expected = attempt(lambda frame=frame, kw=kw, queries=queries: outcome(IndividualFilter(frame, SCHEMA, **kw),
                                                                                    queries))
        for _ in range(3):
            cuts = random_cuts(rng, n)
            got_st, got = attempt(lambda cuts=cuts, frame=frame, kw=kw, queries=queries:
                                  outcome(DaskIndividualFilter(split(frame, cuts), SCHEMA, **kw), queries))
            CASES["fuzz"] += 1
            if st != got_st or (st == "ok" and got != expected):
                violation(f"{label} case {case}: id dtype {kind}, cuts {cuts}, {kw}: pandas {st} {str(expected)[:300]} "
                          f"vs dask {got_st} {str(got)[:300]}")
                return
            if st == "raised":
                CASES["fuzz_refused_both"] += 1


def mixed_categories() -> None:
    """Categorical partitions with int64 and float64 categories: pd.concat casts the ints to float64."""
    src = pd.DataFrame({"x": [4.0, -4.0, 1.0], "person": pd.Series([2**53 + 1, 2**53, 0.5], dtype=object)})
    kw = {"budget": 100.0, "alpha": 2.0, "id_column": "person", "size_limit": 10}
    truth = IndividualFilter(src, ONE, **kw)
    total_truth = truth.exact_sum_vector([F1], 1.0)
    for cuts in ([1], [2]):
        frame = split(src, cuts, verify=False, per_part=lambda p: p.astype({"person": "category"}))
        flt = DaskIndividualFilter(frame, ONE, **kw)
        total = flt.exact_sum_vector([F1], 1.0)
        # exact: every id keeps its own value in its partition (int64 categories hold 2**53+1 exactly)
        people = len({Fraction(v) for v in src["person"]})
        if flt._m != people or flt.spent().tolist() != truth.spent().tolist():
            violation(f"categorical ids, cuts {cuts}: the partitions hold {people} distinct ids (2**53+1 exact in its "
                      f"int64 categories) but the Dask filter numbers {flt._m} people; spent {flt.spent().tolist()} vs "
                      f"the pandas filter on the same rows (object ids) {truth.spent().tolist()}; totals "
                      f"{total.tolist()} vs {total_truth.tolist()}; person 2**53+1 (value 4) is charged "
                      f"{float(flt.spent()[0]):.3g} < true loss {2.0 * 16 / 2:.3g}")


def reordered_between_passes() -> None:
    """Same rows at every pass, another order within the partition: ids of one pass, values of another."""
    src = pd.DataFrame({"x": [5.0, 0.0, 0.0, 0.0], "person": [1, 2, 3, 4]})
    calls = {"n": 0}

    def order(p: pd.DataFrame) -> pd.DataFrame:
        calls["n"] += 1
        return p if calls["n"] % 2 else p.iloc[::-1]

    frame = dd.from_pandas(src, npartitions=1).map_partitions(order, meta=src.iloc[:0])
    kw = {"budget": 100.0, "alpha": 2.0, "id_column": "person", "size_limit": 10}
    flt = DaskIndividualFilter(frame, ONE, **kw)
    try:
        total = flt.exact_sum_vector([F1], 1.0)[0]
    except SchemaMismatchError:
        # fixed: every pass returns a digest of its partitions' counted rows; another order is refused before any charge
        if any(float(v) != 0.0 for v in flt.spent()):
            violation(f"a refused pass (rows reordered) charged someone: {flt.spent().tolist()}")
        print("   refused before any charge (the rows' digest changed between passes)")
        return
    true_loss = 2.0 * 25.0 / 2.0
    charged = float(flt.spent()[0])  # person 1, the only one with a nonzero value
    if total == 5.0 and charged < true_loss:
        violation(f"rows reordered between passes (same rows, same counts): total {total} includes person 1's 5.0 "
                  f"but person 1 is charged {charged} < true RDP loss {true_loss}; spent {flt.spent().tolist()}")


def convert_string() -> None:
    """dd.from_pandas with Dask's default convert-string: object ids become text, people differ from pandas'."""
    src = pd.DataFrame({"x": [3.0, 3.0, -3.0], "person": pd.Series([1, Decimal("1.00"), "1"], dtype=object)})
    kw = {"budget": 100.0, "alpha": 2.0, "id_column": "person", "size_limit": 10}
    with dask.config.set({"dataframe.convert-string": True}):
        frame = dd.from_pandas(src, npartitions=2)
        flt = DaskIndividualFilter(frame, ONE, **kw)
        flt.exact_sum_vector([F1], 1.0)
        ref = IndividualFilter(src, ONE, **kw)
        ref.exact_sum_vector([F1], 1.0)
        got, want = flt.spent().tolist(), ref.spent().tolist()
        if got != want:
            note(f"dd.from_pandas (convert-string on, Dask's default) of ids [1, Decimal('1.00'), '1']: Dask filter "
                      f"spent {got} vs pandas filter on the source frame {want}: person 1 (values 3, 3) split into two "
                      f"keys ('1' merged with the string '1', '1.00' alone); frame dtype {frame.person.dtype}")


def neighbours(rng: random.Random, cases: int) -> None:
    canary = "PRIVATE-4f2a"
    for case in range(cases):
        n = rng.randint(2, 30)
        _, base = records(rng, n)
        odd = rng.choice([*POOL, canary, object()])
        rows = pd.DataFrame({"x": [rng.uniform(-9, 9)], "y": [rng.choice([1.0, np.nan])], "z": [0.3], "person": [odd]})
        pos = sorted(rng.sample(range(n + 1), 1))
        try:
            plus = pd.concat([base.iloc[:pos[0]], rows, base.iloc[pos[0]:]], ignore_index=True)
        except Exception:  # a pyarrow column cannot hold the odd id: both frames as objects
            base = base.astype({"person": object})
            plus = pd.concat([base.iloc[:pos[0]], rows, base.iloc[pos[0]:]], ignore_index=True)
        kw = {"budget": 2.0, "alpha": 3.0, "id_column": "person", "max_rows": 2, "size_limit": n + 1}
        res = []
        for frame in (base, plus):
            for cuts in (random_cuts(rng, len(frame)), []):
                res.append(attempt(lambda frame=frame, cuts=cuts, kw=kw: DaskIndividualFilter(split(frame, cuts, verify=False),
                                                                                             SCHEMA, **kw)
                                   .exact_sum_vector([FX], 3.0).tolist()))
        CASES["neighbours"] += 1
        if len({r[0] for r in res}) > 1:
            violation(f"neighbours case {case} (added id {odd!r} at {pos}): outcomes {[r[0] for r in res]}: {res}")
            return
        for st, msg in res:
            if st == "raised" and canary in msg:
                violation(f"error message quotes a private value: {msg}")
    # a private value in a numeric column: the message must not quote it
    bad = pd.DataFrame({"x": pd.Series([1.0, "PRIVATE-77"], dtype=object), "y": [1.0, 1.0], "z": [0.0, 0.0],
                        "person": [1, 2]})
    for cuts in ([], [1]):
        st, msg = attempt(lambda cuts=cuts: DaskIndividualFilter(split(bad, cuts, verify=False), SCHEMA, budget=1.0,
                                                                 alpha=2.0, id_column="person").exact_sum_vector([FX], 1.0))
        CASES["messages"] += 1
        if st == "raised" and "PRIVATE-77" in msg:
            violation(f"error message quotes a private value: {msg}")


def ledger_windows() -> None:
    src = pd.DataFrame({"x": [1.0, 2.0, 3.0], "person": [1, 2, 1]})
    calls = {"n": 0}

    def fail_second_query(p: pd.DataFrame) -> pd.DataFrame:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost")
        return p

    frame = dd.from_pandas(src, npartitions=1).map_partitions(fail_second_query, meta=src.iloc[:0])
    flt = DaskIndividualFilter(frame, ONE, budget=100.0, alpha=2.0, id_column="person", size_limit=10)
    flt.exact_sum_vector([F1], 1.0)
    before = flt.spent().tolist()
    st, _ = attempt(lambda: flt.exact_sum_vector([F1], 1.0))
    if st != "raised" or flt.spent().tolist() != before or flt.ledger.summary().get("queries") != 1:
        violation(f"a failed pass changed the ledger: {before} -> {flt.spent().tolist()}, {flt.ledger.summary()}")


class Badge:
    """An id object without a value-based ``str`` (keyed by ``module.qualname:str()``, which holds its address)."""


def identity_ids_across_processes() -> None:
    """One id object in two partitions: pickled to two workers it comes back as two objects, two keys."""
    badge = Badge()
    src = pd.DataFrame({"x": [4.0, 4.0], "person": pd.Series([badge, badge], dtype=object)})
    kw = {"budget": 1000.0, "alpha": 2.0, "id_column": "person", "size_limit": 10}
    ref = IndividualFilter(src, ONE, **kw)
    ref.exact_sum_vector([F1], 1.0)
    flt = DaskIndividualFilter(split(src, [1]), ONE, **kw)
    try:
        flt.exact_sum_vector([F1], 1.0)
    except SchemaMismatchError:
        # an id keyed by its address changes key when a worker unpickles it: the rows' digest differs between
        # passes and the query is refused before any charge; such ids are outside what the filter keys by value
        note("an id object keyed by its address (no value-based str) is refused on a process cluster: its key "
             "changes between passes")
        if any(float(v) != 0.0 for v in flt.spent()):
            violation(f"a refused pass charged someone: {flt.spent().tolist()}")
        return
    if flt.spent().tolist() != ref.spent().tolist():
        note(f"one id object in two partitions on a process cluster: Dask filter spent {flt.spent().tolist()} vs "
                  f"pandas {ref.spent().tolist()} (one person, values 4 + 4, split into two charged 16 each < 64)")


def main() -> int:
    rng = random.Random(20261201)
    with dask.config.set(scheduler="synchronous"), dask.config.set({"dataframe.convert-string": False}):
        print("1. fuzz vs pandas filter (synchronous)")
        fuzz(rng, 70, "sync")
        print("2. categorical id partitions with int64 / float64 categories")
        mixed_categories()
        print("3. same rows, reordered within a partition between passes")
        reordered_between_passes()
        print("5. neighbours and error messages")
        neighbours(rng, 60)
        print("6. ledger: a failed pass charges nothing")
        ledger_windows()
    with dask.config.set(scheduler="synchronous"):
        print("4. dask's default convert-string on dd.from_pandas")
        convert_string()
    print("7. 2-process LocalCluster")
    try:
        import distributed
    except ImportError:
        print("   distributed not installed: skipped")
    else:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        with distributed.Client(cluster), dask.config.set({"dataframe.convert-string": False}):
            before = len(VIOLATIONS)
            fuzz(random.Random(7), 6, "cluster")
            mixed_categories()
            identity_ids_across_processes()
            CASES["cluster"] = 6 * 3 + 3
            print(f"   cluster violations: {len(VIOLATIONS) - before}")
        cluster.close()
    print("cases:", CASES)
    print(f"{len(VIOLATIONS)} violation(s), {len(NOTES)} note(s)")
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
