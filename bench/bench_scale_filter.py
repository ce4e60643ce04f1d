"""The individual filter on Dask at scale: set-up and two Rényi filter queries over each of ``--rows`` sizes.

    python bench/bench_scale_filter.py [--rows 10000000 100000000] [--rows-per-person 10]
        [--ledger-individuals 100000000] [--json bench/results/scale_filter.json]
    python bench/bench_scale_filter.py --markdown bench/results/scale_filter.json   # the docs rows, from the JSON

The data: age, weight, height (a few weights missing, imputed) and a person id drawn uniformly
from ``rows / --rows-per-person`` ids, so a person's rows lie in many partitions; partitions of
``--partition-rows`` rows, each generated from ``numpy.random.default_rng([seed, i])`` on the
worker that reads it (streamed: the frame is never materialised, on the driver or anywhere). A
:class:`~opendp_hybridad.individual.dask_filter.DaskIndividualFilter` (Rényi, alpha 8, budget 1,
``max_rows`` 8, so the people with more rows are cut across partitions) with a durable SQLite
ledger in a temporary directory runs on a ``distributed.LocalCluster`` of ``--workers`` worker
processes (one thread each). Timed once each: the set-up (the hashing pass on the workers, the
people's numbering) and two queries of ``a*w/h**2`` (the values pass, the buckets' per-person
sums, the charges, the ledger's charge, the total and OpenDP's noise; the first query writes
everyone into the ledger, the second updates them), the ledger's charge alone, and the peak
resident memory of the driver and every worker process together (sampled every 0.1 s).
Before that, on ``--check-rows`` rows, the Dask filter's pre-noise total and spent budgets are
checked equal, bit for bit, to the pandas filter's.

``--ledger-individuals N`` also charges the durable ledger alone for N people (random hashes),
twice. The 10-billion-row figures are on paper: the per-partition costs of each task, measured
in this process, times the partitions, over the worker threads, plus the ledger's per-person
cost from the largest run.
"""

from __future__ import annotations

import argparse
import contextlib
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


class TreeMemory:
    """Peak resident memory of this process and all its children (the LocalCluster's nannies and workers),
    sampled every 0.1 s in a thread: the whole run's footprint on the machine."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.me, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0
            for proc in [self.me, *self.me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self.stop.wait(0.1)

    def __enter__(self) -> TreeMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


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


def one_size(rows: int, individuals: int, args, tmp: str) -> dict:
    """Set-up and two queries of the Dask filter over ``rows`` generated rows of ``individuals`` people."""
    frame = dask_frame(rows, args.partition_rows, individuals)
    with TreeMemory() as memory:
        start = time.perf_counter()
        flt = DaskIndividualFilter(frame, SCHEMA, budget=1.0, alpha=8.0, id_column="person", max_rows=8,
                                   size_limit=rows, ledger=os.path.join(tmp, f"ledger{rows}.sqlite"))
        setup = time.perf_counter() - start
        charge_time: list[float] = []
        real_charge = flt.ledger.charge

        def timed_charge(*a, **k):
            t0 = time.perf_counter()
            out = real_charge(*a, **k)
            charge_time.append(time.perf_counter() - t0)
            return out

        flt.ledger.charge = timed_charge
        queries = []
        for label in ("first", "second"):  # the first writes everyone into the ledger; the second updates them
            start = time.perf_counter()
            flt.sum(BMI, SCALE, label=label)
            queries.append(time.perf_counter() - start)
    people = int(flt._m)
    ledger_bytes = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.startswith(f"ledger{rows}."))
    flt.ledger.close()
    out = {"rows": rows, "individuals": individuals, "partitions": len(sizes(rows, args.partition_rows)), "people": people,
           "buckets": flt._buckets, "setup_s": setup, "query_s": queries[0], "second_query_s": queries[1],
           "ledger_charge_s": charge_time[0], "second_ledger_charge_s": charge_time[1], "ledger_bytes": ledger_bytes,
           "peak_tree_mib": memory.peak / 2**20, "driver_peak_rss_mib": peak_rss_mib(),
           "admitted": flt.reports[-1].admitted}
    print(f"{rows:,d} rows, {people:,d} people: set-up {setup:.1f} s, queries {queries[0]:.1f} / {queries[1]:.1f} s "
          f"(ledger charge {charge_time[0]:.1f} / {charge_time[1]:.1f} s), peak memory of driver and workers "
          f"{out['peak_tree_mib']:.0f} MiB", file=sys.stderr)
    return out


def ledger_alone(individuals: int, tmp: str) -> dict:
    """The durable ledger's first and second charge of ``individuals`` people (random hashes), on the driver's disk."""
    from opendp_hybridad.individual.ledger import LedgerParameters, PrivacyLedger

    rng = np.random.default_rng(7)
    hashes = np.unique(rng.integers(0, 2**64 - 1, individuals, dtype=np.uint64))
    rng.shuffle(hashes)
    charges = rng.uniform(0.0, 0.1, hashes.size)
    path = os.path.join(tmp, "ledger_alone.sqlite")
    ledger = PrivacyLedger(path, LedgerParameters("renyi", 1.0, 8.0))
    with TreeMemory() as memory:
        times = []
        for label in ("first", "second"):
            t0 = time.perf_counter()
            ledger.charge(hashes, charges, label=label, noise_scale=1.0, worst_case_charge=1.0)
            times.append(time.perf_counter() - t0)
    size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.startswith("ledger_alone."))
    ledger.close()
    print(f"ledger alone, {hashes.size:,d} people: charges {times[0]:.1f} / {times[1]:.1f} s, "
          f"{size / 2**30:.2f} GiB, peak {memory.peak / 2**20:.0f} MiB", file=sys.stderr)
    return {"people": int(hashes.size), "first_charge_s": times[0], "second_charge_s": times[1], "bytes": size,
            "peak_mib": memory.peak / 2**20}


def partition_costs(args) -> dict:
    """Seconds per partition of ``--partition-rows`` rows for each task the filter runs (in this process, min of 3):
    the set-up's hashing pass, a query's values pass, and a bucket's sums per row."""
    from opendp_hybridad.frame.dask_engine import _ShippedKernel
    from opendp_hybridad.individual import dask_filter as dfm
    from opendp_hybridad.individual.ledger import IdHasher

    rows, individuals = args.partition_rows, max(1, args.partition_rows // 10)
    part = partition(0, rows, individuals)
    domain = dask_filter_domain()
    hash_pass = dfm._HashPass(domain, "person", IdHasher("0" * 16))
    loaded = hash_pass(part, 0)
    lo, hi = float(BMI.range().lower), float(BMI.range().upper)
    values_pass = dfm._ValuesPass(domain, "person", [_ShippedKernel(BMI.compile())], [(lo, hi)], 64)
    pieces = values_pass(part, loaded)[1:]
    sums = dfm._BucketSums(8, 1)

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    return {"rows": rows, "hash_pass_s": best(lambda: hash_pass(part, 0)), "values_pass_s": best(lambda: values_pass(part, loaded)),
            "bucket_s_per_row": best(lambda: sums(*[(p[0], p[1]) for p in pieces])) / rows}


def dask_filter_domain():
    from opendp_hybridad.frame.dask_engine import DaskFrameDomain

    return DaskFrameDomain(SCHEMA, 10**12, None, ()).partition_domain()


def paper_10b(costs: dict, ledger: dict | None, measured: list[dict], workers: int) -> dict:
    """10 billion rows of 1 billion people, on paper: the measured per-partition costs times the partitions,
    spread over ``workers`` worker threads, plus the driver's per-person costs scaled from the largest run."""
    rows, people = 10**10, 10**9
    partitions = rows / costs["rows"]
    largest = max(measured, key=lambda r: r["rows"])
    per_person_driver = largest["second_ledger_charge_s"] / largest["people"]  # the ledger's update dominates it
    out = {"rows": rows, "people": people, "partitions": partitions}
    for w in (workers, 100, 1000):
        setup = partitions * costs["hash_pass_s"] / w
        query = (partitions * costs["values_pass_s"] + rows * costs["bucket_s_per_row"]) / w
        out[f"{w}_workers"] = {"setup_s": setup, "query_workers_s": query}
    out["driver_query_s_per_person"] = per_person_driver
    out["driver_query_s"] = per_person_driver * people
    if ledger:
        out["ledger_gib"] = ledger["bytes"] / ledger["people"] * people / 2**30
    return out


def run(args) -> dict:
    from distributed import Client, LocalCluster

    results = {**bench_machine.record(sys.argv), "partition_rows": args.partition_rows, "workers": args.workers,
               "rows_per_person": args.rows_per_person, "load_before": bench_machine.load()}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster), tempfile.TemporaryDirectory() as tmp:
        per = max(1, args.check_rows // 4)
        results["check"] = check(args.check_rows, per, max(1, args.check_rows // 10))
        results["runs"] = [one_size(rows, max(1, rows // args.rows_per_person), args, tmp) for rows in args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        results["ledger_alone"] = ledger_alone(args.ledger_individuals, tmp) if args.ledger_individuals else None
    results["partition_costs"] = partition_costs(args)
    results["paper_10b"] = paper_10b(results["partition_costs"], results["ledger_alone"], results["runs"], args.workers)
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    c, costs, paper, led = results["check"], results["partition_costs"], results["paper_10b"], results["ledger_alone"]
    lines = [
        bench_machine.header(results) + f" Rényi individual-filter queries (`a*w/h**2`, alpha 8, max_rows 8, durable "
        f"SQLite ledger) on a LocalCluster of {results['workers']} worker processes (one thread each), partitions of "
        f"{results['partition_rows']:,d} rows generated on the workers, one person per {results['rows_per_person']} rows "
        "on average (ids uniform, so each person's rows lie in many partitions).", "",
        "| rows | people | buckets | set-up s | first query s | of which ledger s | second query s | of which ledger s "
        "| peak memory, driver and workers, MiB | ledger file MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        lines.append(f"| {r['rows']:,d} | {r['people']:,d} | {r['buckets']} | {r['setup_s']:.1f} | {r['query_s']:.1f} | "
                     f"{r['ledger_charge_s']:.1f} | {r['second_query_s']:.1f} | {r['second_ledger_charge_s']:.1f} | "
                     f"{r['peak_tree_mib']:,.0f} | {r['ledger_bytes'] / 2**20:,.0f} |")
    lines += ["", f"- Checked first on {c['rows']:,d} rows ({c['individuals']:,d} people, {c['partitions']} partitions, "
              f"{c['retired']} retired): pre-noise totals and spent budgets identical to the pandas filter's, bit for bit."]
    if led:
        lines.append(f"- The ledger alone at {led['people']:,d} people (random hashes, durable SQLite on the driver's "
                     f"disk): first charge {led['first_charge_s']:.1f} s, second {led['second_charge_s']:.1f} s, file "
                     f"{led['bytes'] / 2**30:.2f} GiB, peak memory {led['peak_mib']:,.0f} MiB.")
    w = results["workers"]
    largest = max(results["runs"], key=lambda r: r["rows"])
    scale = 10**10 / largest["rows"]
    whole_setup = largest["setup_s"] * scale * w  # worker-seconds, transfers and scheduling included
    whole_query = (largest["second_query_s"] - largest["second_ledger_charge_s"]) * scale * w
    lines += [f"- Per partition of {costs['rows']:,d} rows (one thread, in process): hashing pass {costs['hash_pass_s']:.2f} s, "
              f"values pass {costs['values_pass_s']:.2f} s, bucket sums {costs['bucket_s_per_row'] * 1e9:.0f} ns a row.",
              f"- On paper, 10 billion rows of 1 billion people ({paper['partitions']:,.0f} partitions): from the tasks' "
              f"own costs, set-up {paper[f'{w}_workers']['setup_s'] / 3600:.1f} h and the workers' share of a query "
              f"{paper[f'{w}_workers']['query_workers_s'] / 3600:.1f} h on {w} worker threads, "
              f"{paper['100_workers']['setup_s'] / 60:.1f} min and {paper['100_workers']['query_workers_s'] / 60:.1f} min "
              f"on 100; from the whole {largest['rows']:,d}-row run scaled linearly (Dask's transfers and scheduling "
              f"included), set-up {whole_setup / w / 3600:.1f} h and a query's worker share "
              f"{whole_query / w / 3600:.1f} h on {w}, {whole_setup / 100 / 60:.0f} min and {whole_query / 100 / 60:.0f} min "
              f"on 100 (if the cluster's network keeps up); the driver's share (per-person arrays and the ledger's update, "
              f"scaled from the largest run) about {paper['driver_query_s'] / 60:.0f} min a query"
              + (f", and a ledger of {paper['ledger_gib']:.0f} GiB." if "ledger_gib" in paper else "."), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 100_000_000])
    p.add_argument("--rows-per-person", type=int, default=10)
    p.add_argument("--ledger-individuals", type=int, default=0, help="also charge the ledger alone for this many people")
    p.add_argument("--partition-rows", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--check-rows", type=int, default=100_000)
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
