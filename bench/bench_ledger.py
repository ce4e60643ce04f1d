"""One individual-filter query over a million individuals: durable SQLite ledger vs no ledger.

    python bench/bench_ledger.py [--individuals 1000000] [--repeats 5] [--small-query 1000]

Prints the machine, then: the filter's set-up (ids hashed once), the first durable query
(everyone new to the ledger), ``--repeats`` later queries with and without the ledger (min
and median of each, and their ratio), the ledger's disk size (data file + WAL) after set-up
and after each query, and a charge that changes only ``--small-query`` people, chosen at
random each repeat (the others are charged 0): the ledger's cost of a query that changes
few people, with the disk growth it caused.

Both sides of the later queries compute the same thing: per-individual contributions of
age-adjusted BMI, their Gaussian-DP charges, admission against each individual's budget,
the correctly rounded total over the admitted, and OpenDP Gaussian noise. "No ledger" keeps
the spent budgets in a numpy array in memory; "durable ledger" commits them to a SQLite
file (WAL, synchronous=FULL) before the answer is computed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sqlite3
import statistics
import tempfile
import time

import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.individual import IndividualFilter
from opendp_hybridad.individual.filter import _gaussian

SIGMA, MU = 2000.0, 2.0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; python {platform.python_version()}; "
            f"sqlite {sqlite3.sqlite_version}; numpy {np.__version__}")


def size(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def stats(ts: list[float]) -> tuple[float, float]:
    return min(ts), statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--individuals", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--small-query", type=int, default=1000)
    args = p.parse_args()
    dp.enable_features("contrib")  # the benchmark is the user here: OpenDP's Gaussian noise
    print(f"machine: {machine()}", flush=True)
    rng = np.random.default_rng(0)
    n = args.individuals
    frame = pd.DataFrame({"age": rng.uniform(12, 18, n), "weight": rng.uniform(30, 120, n), "height": rng.uniform(1.3, 2.0, n)})
    schema = hd.Schema(age=hd.Field(12, 18), weight=hd.Field(25, 200), height=hd.Field(1.2, 2.2))
    a, w, h = schema.symbols()
    bmi = schema.function(a * w / h**2)

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ledger.sqlite"
        t = time.perf_counter()
        durable = IndividualFilter(frame, schema, kind="gdp", budget=MU, ledger=path)
        setup = time.perf_counter() - t
        sizes = [size(path)]
        t = time.perf_counter()
        durable.sum(bmi, SIGMA)  # first query: every individual is new to the ledger
        first = time.perf_counter() - t
        sizes.append(size(path))

        # the same query with no ledger: spent budgets in memory
        mem = IndividualFilter(frame, schema, kind="gdp", budget=MU, ledger=":memory:")
        spent = np.zeros(n)
        noise = _gaussian(SIGMA, 1)

        def no_ledger() -> float:
            sums, sensitivity, _ = mem._contributions([bmi])
            charges = mem._loss(sensitivity, SIGMA)
            admitted = spent + charges <= MU * MU
            spent[admitted] += charges[admitted]
            return float(noise(np.array([math.fsum(sums[admitted, 0])]))[0])

        sides = ("no ledger (numpy, in memory)", "durable SQLite ledger")
        timings: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.repeats):
            t = time.perf_counter()
            no_ledger()
            timings[sides[0]].append(time.perf_counter() - t)
            t = time.perf_counter()
            durable.sum(bmi, SIGMA)
            timings[sides[1]].append(time.perf_counter() - t)
            sizes.append(size(path))
        # queries that change few people: charge k random people (0 for the others) through the ledger
        k = min(args.small_query, n)
        small, growth = [], []
        for _ in range(args.repeats):
            charges = np.zeros(n)
            charges[rng.choice(n, k, replace=False)] = 1e-6
            before = size(path)
            t = time.perf_counter()
            durable.ledger.charge(durable._hashes, charges, label="small")
            small.append(time.perf_counter() - t)
            growth.append(size(path) - before)
        summary = durable.ledger.summary()
    print(f"individuals: {n}; ledger: {summary['individuals']} people, {summary['queries']} queries")
    print(f"filter set-up (ids hashed once) {setup:.3f} s; first durable query (all new) {first:.3f} s")
    base_min, base_median = stats(timings[sides[0]])
    for side, ts in timings.items():
        lo, med = stats(ts)
        print(f"  {side:<30s} min {lo * 1000:9.1f} ms  median {med * 1000:9.1f} ms  "
              f"ratio min {lo / base_min:6.2f}  median {med / base_median:6.2f}")
    lo, med = stats(small)
    print(f"a charge changing {k} random people of {n}: min {lo * 1000:.1f} ms, median {med * 1000:.1f} ms; "
          f"ledger grew {max(growth) / 1e6:.3f} MB at most (WAL pages are reused after each checkpoint)")
    print(f"ledger size (MB, data + WAL) after set-up, then after each query: {' '.join(f'{s / 1e6:.1f}' for s in sizes)}")


if __name__ == "__main__":
    main()
