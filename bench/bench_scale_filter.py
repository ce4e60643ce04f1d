"""The individual filter on Dask at scale: one Rényi filter query over ``--rows`` records of ``--individuals`` people.

    python bench/bench_scale_filter.py [--rows 10000000] [--individuals 1000000] [--json bench/results/scale_filter.json]
    python bench/bench_scale_filter.py --markdown bench/results/scale_filter.json   # the docs rows, from the JSON

The data: age, weight, height (a few weights missing, imputed) and a person id drawn uniformly
from ``--individuals`` ids, so a person's rows lie in many partitions; partitions of
``--partition-rows`` rows, each generated from ``numpy.random.default_rng([seed, i])`` on the
worker that reads it (the frame is never materialised on the driver). A
:class:`~opendp_hybridad.individual.dask_filter.DaskIndividualFilter` (Rényi, alpha 8, budget 1,
``max_rows`` 8, so the people with more rows are cut across partitions) with a durable SQLite
ledger in a temporary directory runs on a ``distributed.LocalCluster`` of ``--workers`` worker
processes (one thread each). Timed once each: the set-up (the load pass: ids to the driver,
hashed, numbered, cut) and one query of ``a*w/h**2`` (the values pass, the per-person sums,
the charges, the ledger's charge, the total and OpenDP's noise), the ledger's charge alone, and
the driver's peak resident memory (``ru_maxrss``; the scheduler runs in the driver process).
Before that, on ``--check-rows`` rows, the Dask filter's pre-noise total and spent budgets are
checked equal, bit for bit, to the pandas filter's.

The 100M-individual estimate scales the measured per-individual ledger time and file size and
the per-row driver memory linearly (the ledger's charge is a sort and a bucket rewrite per
person, SQLite on the driver's disk).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import machine as bench_machine
import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.individual.dask_filter import DaskIndividualFilter
from opendp_hybridad.individual.filter import IndividualFilter

dp.enable_features("contrib", "honest-but-curious")

SCHEMA = hd.Schema(a=hd.Field(18, 90, missing="impute", impute=40), w=hd.Field(40, 200, missing="impute", impute=70),
                   h=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
BMI = hd.RecordFunction("a*w/h**2", SCHEMA)
SEED = 20_261_202
SCALE = 500_000.0  # the query's noise scale: 8 rows of the largest BMI (73.5k) cost 4 (73.5k / SCALE)^2 < 0.09 of 1


def partition(i: int, rows: int, individuals: int, seed: int = SEED) -> pd.DataFrame:
    """Partition ``i``: ``rows`` records from its own generator (the same values wherever it is made)."""
    rng = np.random.default_rng([seed, i])
    a, w, h = rng.uniform(10, 100, rows), rng.uniform(30, 220, rows), rng.uniform(1.3, 2.3, rows)
    w[rng.integers(0, max(rows, 1), rows // 1000)] = np.nan
    person = rng.integers(0, individuals, rows)
    return pd.DataFrame({"a": a, "w": w, "h": h, "person": person}, copy=False)


def sizes(rows: int, per: int) -> list[int]:
    return [min(per, rows - start) for start in range(0, rows, per)]


def dask_frame(rows: int, per: int, individuals: int):
    import dask.dataframe as dd

    parts = sizes(rows, per)
    return dd.from_map(partition, list(range(len(parts))), parts, [individuals] * len(parts),
                       meta=partition(0, 0, individuals))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def check(rows: int, per: int, individuals: int) -> dict:
    """The Dask filter against the pandas filter on the same data: totals and spent budgets bit for bit."""
    frame = pd.concat([partition(i, m, individuals) for i, m in enumerate(sizes(rows, per))], ignore_index=True)
    kwargs = {"budget": 1.0, "alpha": 8.0, "id_column": "person", "max_rows": 8, "size_limit": rows}
    reference = IndividualFilter(frame, SCHEMA, **kwargs)
    flt = DaskIndividualFilter(dask_frame(rows, per, individuals), SCHEMA, **kwargs)
    same = True
    for scale in (60_000.0, 40_000.0):  # smaller scales: some people are retired
        same &= bool((reference.exact_sum_vector([BMI], scale) == flt.exact_sum_vector([BMI], scale)).all())
    same &= bool((reference.spent() == flt.spent()).all()) and reference.active() == flt.active()
    if not same:
        raise AssertionError("the Dask filter differs from the pandas filter")
    return {"rows": rows, "individuals": individuals, "partitions": len(sizes(rows, per)), "identical": same,
            "retired": int(reference._m - reference.active())}


def run(args) -> dict:
    from distributed import Client, LocalCluster

    results = {**bench_machine.record(sys.argv), "rows": args.rows, "individuals": args.individuals,
               "partition_rows": args.partition_rows, "workers": args.workers, "load_before": bench_machine.load()}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster), tempfile.TemporaryDirectory() as tmp:
        per = max(1, args.check_rows // 4)
        results["check"] = check(args.check_rows, per, max(1, args.check_rows // 10))
        rss_before = peak_rss_mib()
        frame = dask_frame(args.rows, args.partition_rows, args.individuals)
        start = time.perf_counter()
        flt = DaskIndividualFilter(frame, SCHEMA, budget=1.0, alpha=8.0, id_column="person", max_rows=8,
                                   size_limit=args.rows, ledger=os.path.join(tmp, "ledger.sqlite"))
        setup = time.perf_counter() - start
        charge_time: list[float] = []
        real_charge = flt.ledger.charge

        def timed_charge(*a, **k):
            t0 = time.perf_counter()
            out = real_charge(*a, **k)
            charge_time.append(time.perf_counter() - t0)
            return out

        flt.ledger.charge = timed_charge
        start = time.perf_counter()
        flt.sum(BMI, SCALE, label="bmi")
        query = time.perf_counter() - start
        people = int(flt._m)
        ledger_bytes = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        results.update({"partitions": len(sizes(args.rows, args.partition_rows)), "people": people,
                        "counted_rows": int(flt._codes.size), "setup_s": setup, "query_s": query,
                        "ledger_charge_s": charge_time[0], "ledger_bytes": ledger_bytes,
                        "driver_peak_rss_mib": peak_rss_mib(), "driver_rss_before_mib": rss_before,
                        "admitted": flt.reports[-1].admitted})
        flt.ledger.close()
    per_person_s, per_person_bytes = results["ledger_charge_s"] / people, ledger_bytes / people
    results["estimate_100M_individuals"] = {"ledger_charge_s": per_person_s * 1e8, "ledger_gib": per_person_bytes * 1e8 / 2**30}
    results["load_after"] = bench_machine.load()
    print(f"{args.rows:,d} rows, {people:,d} people: set-up {setup:.1f} s, query {query:.1f} s (ledger charge "
          f"{results['ledger_charge_s']:.1f} s), driver peak RSS {results['driver_peak_rss_mib']:.0f} MiB", file=sys.stderr)
    return results


def markdown(results: dict) -> str:
    est = results["estimate_100M_individuals"]
    c = results["check"]
    return "\n".join([
        bench_machine.header(results) + f" One Rényi individual-filter query (`a*w/h**2`, alpha 8, max_rows 8, durable "
        f"SQLite ledger) on a LocalCluster of {results['workers']} worker processes (one thread each), partitions of "
        f"{results['partition_rows']:,d} rows generated on the workers.", "",
        "| rows | people | set-up s | query s | of which ledger charge s | driver peak RSS MiB | ledger file MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {results['rows']:,d} | {results['people']:,d} | {results['setup_s']:.1f} | {results['query_s']:.1f} | "
        f"{results['ledger_charge_s']:.1f} | {results['driver_peak_rss_mib']:.0f} | {results['ledger_bytes'] / 2**20:.0f} |",
        "",
        f"- Checked first on {c['rows']:,d} rows ({c['individuals']:,d} people, {c['partitions']} partitions, "
        f"{c['retired']} retired): pre-noise totals and spent budgets identical to the pandas filter's, bit for bit.",
        f"- Scaled linearly to 100M individuals: the ledger's first charge about {est['ledger_charge_s'] / 60:.0f} min and "
        f"{est['ledger_gib']:.1f} GiB of SQLite on the driver.", ""])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--individuals", type=int, default=1_000_000)
    p.add_argument("--partition-rows", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--check-rows", type=int, default=100_000)
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
