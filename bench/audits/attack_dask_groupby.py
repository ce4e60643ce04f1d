"""Adversarial audit of the Dask group-by (opendp_hybridad/frame/dask_groupby.py).

Run: ``python bench/audits/attack_dask_groupby.py [--cases N] [--seed S]`` (about three minutes with the defaults on 2 shared cores).
Exits 1 if a released group sum is further from the exact sum than the stated bound, two neighbours' outputs
differ by more than the map says, a count differs from the exact count, a record lands in another group than its
own key says, or a member raises (or a non-member is accepted, or the two neighbours behave differently).

Ground truth, independent of the code under audit:

* each record's group by a plain loop over the public keys (``hash(v) == hash(k) and v == k``, any exception
  meaning "not this key"; None, NaN, pandas NA and NaT missing), not groupby.py's dict lookup;
* each record's computed value, the record evaluated alone by the kernel (a value that depends on its batch or
  partition is caught), and exact rationals (``fractions.Fraction``) for group sums, errors and distances;
* the stated bound from the module docstring, recomputed here in rationals:
  ``g N M + u N M (1 + g) + G TINY / 2`` per dataset (l1 over the groups), ``g = k u / (1 - k u)``,
  ``k = ceil(log2 N)``, ``u = 2^-53``.

Cases: random frames of up to ``size_limit`` rows (small limits, 3..40, so the slack is as small as it gets
relative to N M), values at and beyond the box, +-inf, NaN under the impute/drop/raise policies, -0.0, subnormals,
1 + 2^-52 patterns, huge cancelling pairs; keys of mixed types (1, True, 1.0, Decimal("1"), "1", np.int64(2), 2.0,
"a", None, NaN, pd.NA, an unhashable list, a key whose comparison raises, keys outside the public set), with Dask's
convert-string off (keys as they are) or on (keys turned into text by Dask: the truth is then read from the
partitions as delivered); each frame split into random partitions (empty ones, one row each, everything in one);
neighbours by adding, removing or replacing one record (moving it between groups, into or out of the key set),
each neighbour partitioned independently; l1 and l2 outputs, symmetric and change-one distances; the private
measurements' totality on the same pairs; the "raise" missing-key policy. Then a hill climb per declaration
(records' values, keys and the partition cuts changed one at a time, every record in some group) on the ratio of
the l1 error to the stated bound; it prints the largest ratio found. Most cases run on the synchronous
scheduler; a sample runs on a LocalCluster of 2 worker processes, whose outputs must equal the synchronous
scheduler's bit for bit (each partition's partials are the same computation; the exact combination does not
depend on the order of delivery).
"""

from __future__ import annotations

import argparse
import decimal
import itertools
import math
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
from opendp_hybridad.analysis.rounding import TINY  # noqa: E402
from opendp_hybridad.frame import dask_engine as de  # noqa: E402
from opendp_hybridad.frame import dask_groupby as dg  # noqa: E402
from opendp_hybridad.frame.aggregate import _SumPlan  # noqa: E402
from opendp_hybridad.frame.domain import make_frame_domain, prepare_frame  # noqa: E402
from opendp_hybridad.frame.groupby import make_grouped_sum_of  # noqa: E402

dp.enable_features("honest-but-curious", "contrib")

VIOLATIONS: list[str] = []
CASES = {"sums": 0, "counts": 0, "neighbour pairs": 0, "refused pairs": 0, "cluster": 0, "private pairs": 0, "climbs": 0}


def violation(message: str) -> None:
    VIOLATIONS.append(message)
    print("VIOLATION:", message)


class Loud:
    """A key value whose hash collides with "a" and whose comparison raises (picklable: defined at module level)."""

    def __hash__(self) -> int:
        return hash("a")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("SECRET")

    def __repr__(self) -> str:
        return "Loud()"


KEY_POOL: list[Any] = [1, True, 1.0, decimal.Decimal("1"), "1", np.int64(2), 2.0, "a", "b", "zz", None, float("nan"), pd.NA,
                       ["a"], Loud(), False, 0, -0.0, 3]
PUBLIC_KEY_SETS: list[list[Any]] = [["a", "b"], [1, "1", 2], [0, "a", 3, "b"], ["zz"], [2, "a"]]


def missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def true_group(value: Any, keys: list[Any]) -> int:
    """The record's group by a plain loop over the keys (not groupby.py's dict lookup)."""
    if missing(value):
        return -1
    for i, key in enumerate(keys):
        try:
            if hash(value) == hash(key) and (value is key or bool(value == key)):
                return i
        except Exception:  # a value that cannot be hashed or compared is not this key
            continue
    return -1


def special(rng: random.Random, bound: float) -> float:
    options = [bound, -bound, bound * (1 - 2.0**-52), -bound * (1 - 2.0**-53), 5e-324, -5e-324, 2.0**-1022, 0.0, -0.0,
               float("nan"), float("inf"), -float("inf"), 1.0 + 2.0**-52, 1.0, 2.0**-53, bound * 2, -bound * 3, bound / 3,
               -bound / 7]
    return rng.choice(options) if rng.random() < 0.7 else rng.uniform(-1.2 * bound, 1.2 * bound)


def pieces(frame: pd.DataFrame, rng: random.Random, convert: bool) -> Any:
    """A Dask frame of random (possibly empty) slices of ``frame``; ``convert``: Dask's convert-string setting."""
    n = len(frame)
    k = rng.choice([1, 2, 3, 5, n + 2])
    cuts = sorted(rng.randint(0, n) for _ in range(k - 1))
    parts = [frame.iloc[lo:hi].copy() for lo, hi in itertools.pairwise([0, *cuts, n])]
    if rng.random() < 0.3:
        parts.insert(rng.randint(0, len(parts)), frame.iloc[:0].copy())
    with dask.config.set({"dataframe.convert-string": convert}):
        return dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=frame.iloc[:0], verify_meta=False)


def delivered(ddf: Any) -> list[pd.DataFrame]:
    """The partitions as Dask delivers them (on the synchronous scheduler): what the truth is computed from."""
    return list(dask.compute(*ddf.to_delayed(), scheduler="synchronous"))


def stated_bound(n: int, max_abs: float, groups: int) -> Fraction:
    k = (n - 1).bit_length()
    u = Fraction(1, 2**53)
    g = k * u / (1 - k * u)
    return g * n * Fraction(max_abs) + u * n * Fraction(max_abs) * (1 + g) + groups * Fraction(TINY) / 2


class Config:
    """One declaration: schema, function, size limit, keys, label policy; its transformations built once."""

    def __init__(self, schema: hd.Schema, expression: str, size_limit: int, keys: list[Any], policy: str):
        self.schema, self.size_limit, self.keys, self.policy = schema, size_limit, keys, policy
        self.function = hd.RecordFunction(expression, schema)
        self.pandas_domain = make_frame_domain(schema, size_limit=size_limit, labels={"g": policy})
        self.domain = de.make_dask_frame_domain(self.pandas_domain)
        self.plan = _SumPlan(self.pandas_domain, dp.symmetric_distance(), self.function, None, None)
        self.max_abs = max(abs(self.plan.lower), abs(self.plan.upper))
        self.sums = {}
        self.counts = {}
        for (name, metric), norm in itertools.product((("sym", dp.symmetric_distance()), ("change", dp.change_one_distance())),
                                                      (1, 2)):
            self.sums[name, norm] = dg.make_dask_grouped_sum_of(self.domain, metric, self.function, "g", keys, norm)
            self.counts[name, norm] = dg.make_dask_grouped_count_of(self.domain, metric, "g", keys, norm)
        self.reference = make_grouped_sum_of(self.pandas_domain, dp.symmetric_distance(), self.function, "g", keys)
        self.private = [dg.make_private_dask_grouped_sum(self.domain, self.function, by="g", keys=keys, epsilon=1.0),
                        dg.make_private_dask_grouped_count(self.domain, by="g", keys=keys, rho=1.0)]

    def truth(self, parts: list[pd.DataFrame]) -> tuple[bool, list[Fraction], list[int]]:
        """(member, exact group sums, exact counts) of the delivered partitions, independently of the code audited."""
        sums = [Fraction(0)] * len(self.keys)
        counts = [0] * len(self.keys)
        rows = 0
        for part in parts:
            rows += len(part)
            labels = part["g"].tolist()
            if self.policy == "raise" and any(missing(v) for v in labels):
                return False, [], []
            try:
                prepared = prepare_frame(part, self.pandas_domain)  # the fields' policies ('raise' refusals)
            except Exception:
                return False, [], []
            columns = list(prepared.columns.values())
            kept_labels = [v for v, keep in zip(labels, prepared.kept.tolist(), strict=True) if keep]
            for i, value in enumerate(kept_labels):
                group = true_group(value, self.keys)
                if group < 0:
                    continue
                record = [c[i:i + 1].copy() for c in columns]
                computed = float(self.plan.kernel.value_clamped(record, self.plan.lower, self.plan.upper)[0])
                sums[group] += Fraction(computed)
                counts[group] += 1
        return rows <= self.size_limit, sums, counts


def run(query: Any, frame: Any) -> tuple[Any, BaseException | None]:
    try:
        return query(frame), None
    except Exception as exc:
        return None, exc


def random_rows(rng: random.Random, config: Config, n: int) -> list[dict[str, Any]]:
    bound = max(max(abs(f.lower), abs(f.upper)) for f in config.schema.fields.values())
    return [{**{name: special(rng, bound) for name in config.schema.names}, "g": rng.choice(KEY_POOL)} for _ in range(n)]


def frame_of(rows: list[dict[str, Any]], config: Config) -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series([r[name] for r in rows], dtype=float) for name in config.schema.names})
    frame["g"] = pd.Series([r["g"] for r in rows], dtype=object)
    return frame


def check_pair(rng: random.Random, config: Config) -> None:
    n = rng.randint(0, config.size_limit - 1)
    rows = random_rows(rng, config, n)
    kind = rng.choice(["add", "remove", "replace"]) if n else "add"
    other = list(rows)
    if kind == "add":
        other.insert(rng.randint(0, n), random_rows(rng, config, 1)[0])
    elif kind == "remove":
        other.pop(rng.randrange(n))
    else:
        other[rng.randrange(n)] = random_rows(rng, config, 1)[0]
    convert = rng.random() < 0.3
    frames = [pieces(frame_of(data, config), rng, convert) for data in (rows, other)]
    outputs: dict[Any, list[Any]] = {}
    members = []
    for frame in frames:
        member, exact_sums, exact_counts = config.truth(delivered(frame))
        members.append(member)
        for key in config.sums:
            for label, query in (("sum", config.sums[key]), ("count", config.counts[key])):
                out, exc = run(query, frame)
                outputs.setdefault((label, *key), []).append(out)
                if member and exc is not None:
                    violation(f"member raised {type(exc).__name__}: {exc} ({label}, keys {config.keys})")
                    return
                if not member and exc is None:
                    violation(f"non-member accepted ({label}, keys {config.keys})")
                    return
                if not member:
                    if "SchemaMismatchError" not in repr(exc) and "SchemaMismatchError" not in str(exc):
                        violation(f"non-member refused with {type(exc).__name__}, not SchemaMismatchError: {exc}")
                    continue
                if label == "count":
                    CASES["counts"] += 1
                    if out != [float(c) for c in exact_counts]:
                        violation(f"counts {out} != exact {exact_counts} (keys {config.keys}, convert-string {convert})")
                    continue
                CASES["sums"] += 1
                error = sum((abs(Fraction(o) - e) for o, e in zip(out, exact_sums, strict=True)), Fraction(0))
                bound = stated_bound(config.size_limit, config.max_abs, len(config.keys))
                if error > bound:
                    violation(f"group sums {out} are {float(error)} from the exact sums > stated bound {float(bound)}")
                if Fraction(query.map(0)) < 2 * bound:
                    violation(f"map(0) = {query.map(0)} is below twice the stated bound {float(bound)}")
    if not all(members):
        CASES["refused pairs"] += 1
        return
    CASES["neighbour pairs"] += 1
    d_in = {"add": {"sym": 1}, "remove": {"sym": 1}, "replace": {"sym": 2, "change": 1}}[kind]
    for (label, name, norm), (left, right) in outputs.items():
        if name not in d_in:
            continue  # change-one relates frames of the same size only
        query = (config.sums if label == "sum" else config.counts)[name, norm]
        bound = Fraction(query.map(d_in[name]))
        diffs = [abs(Fraction(a) - Fraction(b)) for a, b in zip(left, right, strict=True)]
        too_far = sum(diffs) > bound if norm == 1 else sum(d * d for d in diffs) > bound * bound
        if too_far:
            violation(f"{label} l{norm} {name}: neighbours differ by {[float(d) for d in diffs]} > map({d_in[name]}) "
                      f"= {float(bound)}")
    for release in config.private:  # totality of the measurements on the same pair
        outcomes = [type(run(release, frame)[1]).__name__ for frame in frames]
        CASES["private pairs"] += 1
        if outcomes != ["NoneType", "NoneType"]:
            violation(f"a private release raised on members: {outcomes}")


def split(frame: pd.DataFrame, cuts: list[int]) -> Any:
    """A Dask frame of the slices of ``frame`` between the given cuts (keys kept as they are)."""
    bounds = [0, *sorted(min(c, len(frame)) for c in cuts), len(frame)]
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_delayed([dask.delayed(lambda p: p)(frame.iloc[lo:hi].copy()) for lo, hi in itertools.pairwise(bounds)],
                               meta=frame.iloc[:0], verify_meta=False)


def error_ratio(config: Config, rows: list[dict[str, Any]], cuts: list[int]) -> float:
    """|released group sums - exact group sums|_1 / the stated bound, for one frame and partitioning (0 for a non-member)."""
    frame = split(frame_of(rows, config), cuts)
    member, exact_sums, _ = config.truth(delivered(frame))
    if not member:
        return 0.0
    out = config.sums["sym", 1](frame)
    error = sum((abs(Fraction(o) - e) for o, e in zip(out, exact_sums, strict=True)), Fraction(0))
    return float(error / stated_bound(config.size_limit, config.max_abs, len(config.keys)))


def climb(rng: random.Random, config: Config, steps: int) -> float:
    """Hill-climb on the error ratio: change one record's values or key, or one cut, keep what does not lower it."""
    rows = random_rows(rng, config, config.size_limit)
    for row in rows:
        row["g"] = rng.choice(config.keys)  # every record in some group: N terms, the most the bound allows
    cuts = [rng.randint(0, len(rows)) for _ in range(rng.randint(0, 4))]
    best = error_ratio(config, rows, cuts)
    for _ in range(steps):
        new_rows, new_cuts = [dict(r) for r in rows], list(cuts)
        move = rng.random()
        if move < 0.5:
            new_rows[rng.randrange(len(rows))].update(random_rows(rng, config, 1)[0], g=rng.choice(config.keys))
        elif move < 0.8:
            new_rows[rng.randrange(len(rows))]["g"] = rng.choice(config.keys)
        elif new_cuts and rng.random() < 0.5:
            new_cuts[rng.randrange(len(new_cuts))] = rng.randint(0, len(rows))
        else:
            new_cuts.append(rng.randint(0, len(rows)))
        ratio = error_ratio(config, new_rows, new_cuts)
        if ratio >= best:
            rows, cuts, best = new_rows, new_cuts, ratio
    CASES["climbs"] += 1
    if best > 1:
        violation(f"a group sum {best} times the stated bound from the exact one: {rows}, cuts {cuts}")
    return best


def check_cluster(rng: random.Random, config: Config, client: Any) -> None:
    """The same partitions on 2 worker processes and on the synchronous scheduler: the same outputs, bit for bit."""
    rows = random_rows(rng, config, rng.randint(1, config.size_limit))
    frame = pieces(frame_of(rows, config), rng, convert=False)
    member, _, _ = config.truth(delivered(frame))
    if not member:
        return
    for query in (config.sums["sym", 1], config.counts["change", 2]):
        on_cluster = query(frame)
        with dask.config.set(scheduler="synchronous"):
            local = query(frame)
        CASES["cluster"] += 1
        if on_cluster != local or any(math.copysign(1, a) != math.copysign(1, b) for a, b in zip(on_cluster, local, strict=True)):
            violation(f"the cluster's output {on_cluster} differs from the synchronous scheduler's {local}")


def configs() -> list[Config]:
    wide = hd.Schema(x=hd.Field(-1e300, 1e300, missing="impute", impute=1.0))
    unit = hd.Schema(x=hd.Field(-1, 1, missing="drop"), y=hd.Field(0, 2, missing="impute", impute=0.5))
    strict = hd.Schema(x=(-4, 4))
    out = []
    for i, keys in enumerate(PUBLIC_KEY_SETS):
        out.append(Config(wide, "x", [3, 8, 40][i % 3], keys, "drop"))
        out.append(Config(unit, "x*y + 2**-52", [5, 16, 33][i % 3], keys, "drop"))
        out.append(Config(unit, "tanh(x) * exp(y)", [4, 17][i % 2], keys, "drop"))
    out.append(Config(strict, "x", 12, [1, "a", 2], "raise"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10, help="neighbour pairs per declaration")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--steps", type=int, default=40, help="hill-climbing steps per search")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    declared = configs()
    with dask.config.set(scheduler="synchronous"):
        for config in declared:
            for _ in range(args.cases):
                check_pair(rng, config)
        worst = max(climb(rng, config, args.steps) for config in declared if config.policy == "drop"
                    for _ in range(2))
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for config in declared[:6]:
            for _ in range(3):
                check_cluster(rng, config, client)
    print("cases:", ", ".join(f"{name} {count}" for name, count in CASES.items()))
    print(f"largest |released - exact| / stated bound found by the searches: {worst:.3g}")
    if VIOLATIONS:
        print(f"{len(VIOLATIONS)} violation(s)")
        return 1
    print("no violation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
