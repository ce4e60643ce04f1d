"""Adversarial audit of the Dask engine (opendp_hybridad/frame/dask_engine.py, 59d3259..9d76c33).

Run: ``python bench/audits/attack_dask.py`` (about a minute). Exits 1 if a stated bound is below the truth
or a member raises where its neighbour does not.

Ground truth: exact rationals (``fractions.Fraction``) of the per-record values the kernel computes (each
record also evaluated alone, so a value that depends on its batch or partition is caught), of the released
totals and of the stability maps' floats.

Cases: neighbouring datasets (add/remove one row, replace one row) each split into its own random
partitions (different counts and boundaries, empty partitions, one-row partitions, everything in one),
values at the clamping bounds, beyond them, +-inf, NaN under the impute/drop/raise policies, -0.0,
subnormals, huge cancelling pairs, 1 + 2^-52 patterns; small size_limit (1..64) so the float slack is as
small as it gets relative to N M. Checked: the sum (symmetric and change-one), the vector of sums in l1
and l2, the mean over a public size, the count; every released total within its own half of the slack of
the exact sum of the computed values; |T(D) - T(D')| <= map(d_in); a member never raises; the pandas
path's answer within the slack too. The synchronous scheduler for most cases, a threaded LocalCluster
(processes=False) for a sample, and a 2-process LocalCluster where each released total must equal, bit for bit,
the driver's own computation of the same partitions (tanh, exp, sqrt, log, sigmoid, softplus under the numpy,
numexpr, numba and auto backends; the kernel is rebuilt on the workers from its source).

Result: no violation. (Per-record values differ between backends, numpy vs numexpr/numba in about 1 of 4
records for tanh(x)/(1+y^2), but each kernel is position-independent and the backend is fixed on the
driver and shipped, so neighbours see the same per-record values.)
"""

from __future__ import annotations

import random
import sys
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

import itertools  # noqa: E402

import dask  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import opendp.prelude as dp  # noqa: E402

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.frame import dask_engine as de  # noqa: E402
from opendp_hybridad.frame.aggregate import _SumPlan, sum_relaxation  # noqa: E402
from opendp_hybridad.frame.domain import make_frame_domain  # noqa: E402

dp.enable_features("honest-but-curious", "contrib")

VIOLATIONS: list[str] = []
CASES = {"sum": 0, "vector": 0, "mean": 0, "count": 0, "refusals_both": 0}


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg)


def pieces(frame: pd.DataFrame, rng: random.Random) -> object:
    """A Dask frame of random (possibly empty) slices of ``frame``."""
    n = len(frame)
    k = rng.choice([1, 2, 3, 5, n + 2])
    cuts = sorted(rng.randint(0, n) for _ in range(k - 1))
    bounds = [0, *cuts, n]
    parts = [frame.iloc[lo:hi].copy() for lo, hi in itertools.pairwise(bounds)]
    if rng.random() < 0.3:
        parts.insert(rng.randint(0, len(parts)), frame.iloc[:0].copy())
    return dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=frame.iloc[:0])


def special(rng: random.Random, bound: float) -> float:
    c = rng.random()
    options = [bound, -bound, bound * (1 - 2.0**-52), -bound * (1 - 2.0**-53), 5e-324, -5e-324, 2.0**-1022, 0.0, -0.0,
               float("nan"), float("inf"), -float("inf"), 1.0 + 2.0**-52, 1.0, bound * 2, -bound * 3, 2.0**-53,
               bound / 3, -bound / 7]
    if c < 0.7:
        return rng.choice(options)
    return rng.uniform(-1.2 * bound, 1.2 * bound)


def exact_values(plan: _SumPlan, columns: list[np.ndarray]) -> list[Fraction]:
    """Per-record computed values, each record evaluated alone; compared with the batch's values."""
    whole = plan.kernel.value_clamped([c.copy() for c in columns], plan.lower, plan.upper)
    alone = [float(plan.kernel.value_clamped([c[i:i + 1].copy() for c in columns], plan.lower, plan.upper)[0])
             for i in range(len(columns[0]) if columns else 0)]
    for i, (a, b) in enumerate(zip(whole, alone, strict=False)):
        if not (a == b or (a != a and b != b)):
            violation(f"record {i} computed as {a!r} in its batch but {b!r} alone")
    return [Fraction(v) for v in alone]


def run(t, frame):
    try:
        return t(frame), None
    except Exception as exc:
        return None, exc


def check_sum_case(rng: random.Random, schema, function, size_limit: int, metric, relation: str) -> None:
    bound = max(abs(f.upper) for f in schema.fields.values())
    names = schema.names
    n = rng.randint(0, size_limit - (1 if relation == "add" else 0))
    rows = [{name: special(rng, bound) for name in names} for _ in range(n)]
    if relation == "add":
        other = list(rows)
        other.insert(rng.randint(0, n), {name: special(rng, bound) for name in names})
        d_in = 1
    else:
        if n == 0:
            return
        other = list(rows)
        other[rng.randrange(n)] = {name: special(rng, bound) for name in names}
        d_in = 2 if metric == "sym" else 1
    input_metric = dp.symmetric_distance() if metric == "sym" else dp.change_one_distance()
    pdomain = make_frame_domain(schema, size_limit=size_limit)
    domain = de.make_dask_frame_domain(pdomain)
    t = de.make_dask_sum_of(domain, input_metric, function)
    plan = _SumPlan(pdomain, input_metric, function, None, None)
    M = max(abs(plan.lower), abs(plan.upper))
    half_slack = Fraction(sum_relaxation(size_limit, M)) / 2 + Fraction(de.reduction_relaxation(size_limit, M)) / 2
    outs = []
    for data in (rows, other):
        frame = pd.DataFrame(data, columns=names, dtype=float)
        out, exc = run(t, pieces(frame, rng))
        # membership by the pandas reader
        try:
            cols = plan.inputs(frame)
            member = True
        except Exception:
            member = False
        if member and exc is not None:
            violation(f"member raised {exc!r}: {data}")
            return
        if not member and exc is None:
            violation(f"non-member accepted: {data}")
            return
        if not member:
            outs.append(None)
            continue
        exact = sum(exact_values(plan, cols), Fraction(0))
        if abs(Fraction(out) - exact) > half_slack:
            violation(f"total {out!r} is {float(abs(Fraction(out) - exact))} from the exact {float(exact)} > half slack: {data}")
        pandas_out = plan.total(plan.inputs(frame))
        if abs(Fraction(pandas_out) - exact) > half_slack:
            violation(f"pandas total off: {data}")
        outs.append(out)
    CASES["sum"] += 1
    if outs[0] is None or outs[1] is None:
        if (outs[0] is None) != (outs[1] is None):
            pass  # one non-member: no claim
        else:
            CASES["refusals_both"] += 1
        return
    bound_out = Fraction(t.map(d_in))
    if abs(Fraction(outs[0]) - Fraction(outs[1])) > bound_out:
        violation(f"|T(D)-T(D')| = {float(abs(Fraction(outs[0]) - Fraction(outs[1])))} > map({d_in}) = {float(bound_out)}: "
                  f"{rows} vs {other}")


def check_vector(rng: random.Random, schema, functions, size_limit: int) -> None:
    names = schema.names
    bound = max(abs(f.upper) for f in schema.fields.values())
    n = rng.randint(0, size_limit - 1)
    rows = [{name: special(rng, bound) for name in names} for _ in range(n)]
    other = list(rows)
    other.insert(rng.randint(0, n), {name: special(rng, bound) for name in names})
    pdomain = make_frame_domain(schema, size_limit=size_limit)
    domain = de.make_dask_frame_domain(pdomain)
    for norm in (1, 2):
        t = de.make_dask_sum_of_vector(domain, dp.symmetric_distance(), functions, norm)
        outs = []
        for data in (rows, other):
            frame = pd.DataFrame(data, columns=names, dtype=float)
            out, exc = run(t, pieces(frame, rng))
            if exc is not None:
                if "missing values" not in str(exc):
                    violation(f"vector raised {exc!r}")
                outs.append(None)
                continue
            outs.append([Fraction(v) for v in out])
        CASES["vector"] += 1
        if None in outs:
            continue
        diffs = [abs(a - b) for a, b in zip(*outs, strict=False)]
        bound_out = Fraction(t.map(1))
        bad = sum(diffs) > bound_out if norm == 1 else sum(d * d for d in diffs) > bound_out * bound_out
        if bad:
            violation(f"vector l{norm}: {diffs} > {float(bound_out)}")


def check_mean(rng: random.Random, schema, function, size: int, size_limit: int) -> None:
    names = schema.names
    bound = max(abs(f.upper) for f in schema.fields.values())

    def clean():
        return {name: special(rng, bound) if rng.random() < 0.8 else float(rng.choice([-1, 1])) * bound for name in names}

    rows = []
    while len(rows) < size:
        r = clean()
        if all(v == v for v in r.values()):
            rows.append(r)
    other = list(rows)
    r = clean()
    while not all(v == v for v in r.values()):
        r = clean()
    other[rng.randrange(size)] = r
    pdomain = make_frame_domain(schema, size_limit=size_limit, size=size)
    domain = de.make_dask_frame_domain(pdomain)
    t = de.make_dask_mean_of(domain, dp.symmetric_distance(), function)
    outs = []
    for data in (rows, other):
        frame = pd.DataFrame(data, columns=names, dtype=float)
        out, exc = run(t, pieces(frame, rng))
        if exc is not None:
            violation(f"mean member raised {exc!r}: {data}")
            return
        outs.append(Fraction(out))
    CASES["mean"] += 1
    if abs(outs[0] - outs[1]) > Fraction(t.map(2)):
        violation(f"mean: |diff| {float(abs(outs[0] - outs[1]))} > map(2) {t.map(2)}")


def check_count(rng: random.Random, schema, size_limit: int) -> None:
    names = schema.names
    n = rng.randint(0, size_limit - 1)
    rows = [{name: special(rng, 1.0) for name in names} for _ in range(n)]
    other = list(rows)
    other.insert(rng.randint(0, n), {name: special(rng, 1.0) for name in names})
    domain = de.make_dask_frame_domain(make_frame_domain(schema, size_limit=size_limit))
    t = de.make_dask_count_of(domain, dp.symmetric_distance())
    outs = []
    for data in (rows, other):
        frame = pd.DataFrame(data, columns=names, dtype=float)
        out, exc = run(t, pieces(frame, rng))
        outs.append(None if exc is not None else out)
    CASES["count"] += 1
    if None not in outs and abs(outs[0] - outs[1]) > t.map(1):
        violation(f"count {outs} > {t.map(1)}")


def check_worker_determinism(rng: random.Random, client) -> int:
    """On worker processes: the released total must equal, bit for bit, the driver's own computation of the same
    partitions (the shipped kernel rebuilt there, pairwise_sum per partition, the exact combination)."""

    schema = hd.Schema(x=hd.Field(-3.0, 3.0, missing="impute", impute=0.5), y=hd.Field(-2.0, 2.0, missing="drop"))
    exprs = ["tanh(x)/(1+y**2)", "sqrt(x*x+y*y) + exp(-x*x)", "sigmoid(x)*y", "log(1+x**2)*softplus(y)"]
    cases = 0
    for expr in exprs:
        f = hd.RecordFunction(expr, schema)
        for backend in ("numpy", "numexpr", "numba", "auto"):
            try:
                f.compile(backend=backend)
            except Exception:
                continue
            n = rng.randint(1, 3000)
            frame = pd.DataFrame({"x": [special(rng, 3.0) for _ in range(n)], "y": [special(rng, 2.0) for _ in range(n)]})
            frame.loc[frame.sample(frac=0.05, random_state=rng.randint(0, 99)).index, "y"] = np.nan
            pdomain = make_frame_domain(schema, size_limit=4000)
            t = de.make_dask_sum_of(de.make_dask_frame_domain(pdomain), dp.symmetric_distance(), f, backend=backend)
            k = rng.choice([1, 2, 3, 7])
            cuts = sorted(rng.randint(0, n) for _ in range(k - 1))
            bounds = [0, *cuts, n]
            parts = [frame.iloc[lo:hi].copy() for lo, hi in itertools.pairwise(bounds)]
            ddf = dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=frame.iloc[:0])
            got = t(ddf)
            plan = _SumPlan(pdomain, dp.symmetric_distance(), f, None, None, backend)
            partials = [plan.total(plan.inputs(p)) for p in parts]
            expected = de.exact_total(np.array(partials))
            cases += 1
            if got != expected:
                violation(f"worker total {got!r} != the driver's computation {expected!r} ({expr}, {backend}): "
                          "a record computed differently on a worker")
    return cases


def main() -> int:
    rng = random.Random(20261201)
    big = 1e300
    schemas = [
        (hd.Schema(x=(-big, big)), "x"),
        (hd.Schema(x=hd.Field(-big, big, missing="impute", impute=big)), "x"),
        (hd.Schema(x=hd.Field(-1.0, 1.0, missing="drop"), y=hd.Field(-3.0, 3.0, missing="impute", impute=-3.0)), "x*y"),
        (hd.Schema(x=hd.Field(-1.0, 1.0, missing="drop")), "x"),
        (hd.Schema(x=hd.Field(-2.0**-1000, 2.0**-1000, missing="impute", impute=0.0)), "x"),
        (hd.Schema(x=(0.0, 1.0), y=(0.0, 1.0)), "x + y/3"),
    ]
    functions = [(s, hd.RecordFunction(expr, s)) for s, expr in schemas]
    with dask.config.set(scheduler="synchronous"):
        for trial in range(140):
            schema, f = functions[trial % len(functions)]
            size_limit = rng.choice([1, 2, 3, 4, 7, 8, 9, 16, 33, 64])
            check_sum_case(rng, schema, f, size_limit, rng.choice(["sym", "c1"]), rng.choice(["add", "replace"]))
        for trial in range(18):
            schema, f = functions[trial % len(functions)]
            g = hd.RecordFunction(" + ".join(schema.names) + " * 0.5", schema)
            check_vector(rng, schema, [f, g], rng.choice([2, 5, 16]))
        for trial in range(18):
            schema, f = functions[trial % len(functions)]
            if any(fl.missing == "drop" for fl in schema.fields.values()):
                continue
            check_mean(rng, schema, f, rng.choice([1, 2, 3, 7]), 16)
        for _trial in range(12):
            check_count(rng, hd.Schema(x=hd.Field(-1.0, 1.0, missing="drop")), rng.choice([1, 4, 9]))
    # a sample on a threaded LocalCluster
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster):
        for trial in range(16):
            schema, f = functions[trial % len(functions)]
            check_sum_case(rng, schema, f, rng.choice([3, 8, 17]), "sym", rng.choice(["add", "replace"]))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        CASES["worker_bitwise"] = check_worker_determinism(rng, client)
    print("cases:", CASES)
    print("violations:", len(VIOLATIONS))
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
