"""One individual-filter query over a million individuals: durable SQLite ledger vs no ledger.

    python bench/bench_ledger.py [--individuals 1000000] [--repeats 5] [--small-query 1000]

Also reports the ledger's disk size (data file + WAL) after set-up and after each query,
and a query that charges only ``--small-query`` individuals (the others contribute 0):
its write is only the buckets it changes.

Both sides compute the same thing: per-individual contributions of age-adjusted BMI,
their Gaussian-DP charges, admission against each individual's budget, the correctly
rounded total over the admitted, and OpenDP Gaussian noise. "No ledger" keeps the
spent budgets in a numpy array in memory; "durable ledger" commits them to a SQLite
file (WAL, synchronous=FULL) before the answer is computed.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.individual import IndividualFilter
from opendp_hybridad.individual.filter import _gaussian

SIGMA, MU = 2000.0, 2.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--individuals", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--small-query", type=int, default=1000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n = args.individuals
    frame = pd.DataFrame({"age": rng.uniform(12, 18, n), "weight": rng.uniform(30, 120, n), "height": rng.uniform(1.3, 2.0, n)})
    schema = hd.Schema(age=hd.Field(12, 18), weight=hd.Field(25, 200), height=hd.Field(1.2, 2.2))
    a, w, h = schema.symbols()
    bmi = schema.function(a * w / h**2)
    def size(path: str) -> int:
        return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))

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

        timings = {"no ledger (numpy, in memory)": [], "durable SQLite ledger": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            no_ledger()
            timings["no ledger (numpy, in memory)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            durable.sum(bmi, SIGMA)
            timings["durable SQLite ledger"].append(time.perf_counter() - t)
            sizes.append(size(path))
        # a query that changes few individuals: charge k of them (0 for the others) through the ledger
        k = min(args.small_query, n)
        charges = np.zeros(n)
        charges[:k] = 1e-6
        before = size(path)
        t = time.perf_counter()
        durable.ledger.charge(durable._hashes, charges, label="small")
        small = time.perf_counter() - t
        small_growth = size(path) - before
    base = min(timings["no ledger (numpy, in memory)"])
    print(f"individuals: {n}; filter set-up (ids hashed once) {setup:.3f} s; first durable query {first:.3f} s")
    for name, ts in timings.items():
        print(f"  {name:<32s} {min(ts) * 1000:8.1f} ms   ratio {min(ts) / base:.3f}")
    mb = [f"{s / 1e6:.1f}" for s in sizes]
    print(f"ledger size (MB, data + WAL) after set-up, then after each query: {' '.join(mb)}")
    print(f"a query charging {k} of {n} individuals: {small * 1000:.1f} ms, ledger grew {small_growth / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
