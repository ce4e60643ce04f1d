"""Private sum at scale: the pandas path against the Dask engine on 1 and 2 worker processes.

    python bench/bench_scale.py [--rows 10000000 100000000] [--rounds 3] [--json bench/results/scale.json]
    python bench/bench_scale.py --markdown bench/results/scale.json   # the docs section, from the JSON

The data: three columns (age, weight, height; a few values outside the box, a few missing,
imputed by the schema) in partitions of ``--partition-rows`` rows, each generated from
``numpy.random.default_rng([seed, i])`` inside its partition, so the Dask frame is never
materialised on the driver; the pandas path needs one in-memory frame, filled from the same
generator partition by partition (the same data). The release: ``make_private_sum`` of
age-adjusted BMI ``a*w/h**2`` with epsilon 1 (pandas), ``make_private_dask_sum`` (Dask),
both built once; timed is one release (read, check, clamp, kernel, sum, noise).

Dask variants, each on a ``distributed.LocalCluster`` of that many worker processes (one
thread each): ``persisted`` (the partitions already in the workers' memory, as on a cluster
that holds the data; timed is the release alone) and ``streamed`` (each release generates
its partitions on the workers as it reads them). Before timing, the pandas and Dask
pre-noise sums are checked to agree within the stated float bound (the Dask sum's
``d_in = 0`` stability). Rounds are interleaved per cluster, after one warm-up; reported are
the min and the median and the ratio of medians to the pandas path at the same size.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys

import machine as bench_machine
import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.frame import dask_engine, make_frame_domain, make_private_sum, make_sum_of

dp.enable_features("contrib", "honest-but-curious")

SCHEMA = hd.Schema(a=hd.Field(18, 90, missing="impute", impute=40), w=hd.Field(40, 200, missing="impute", impute=70),
                   h=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
BMI = hd.RecordFunction("a*w/h**2", SCHEMA)
SEED = 20_261_201


def partition(i: int, rows: int, seed: int = SEED, variant: str = "") -> pd.DataFrame:
    """Partition ``i`` (``rows`` records), from its own generator: the same values wherever it is made.

    ``variant`` changes nothing but Dask's task keys, so a streamed frame never reads a persisted one's results.
    """
    rng = np.random.default_rng([seed, i])
    a, w, h = rng.uniform(10, 100, rows), rng.uniform(30, 220, rows), rng.uniform(1.3, 2.3, rows)
    w[rng.integers(0, max(rows, 1), rows // 1000)] = np.nan
    return pd.DataFrame({"a": a, "w": w, "h": h}, copy=False)


def sizes(rows: int, per: int) -> list[int]:
    return [min(per, rows - start) for start in range(0, rows, per)]


def pandas_frame(rows: int, per: int) -> pd.DataFrame:
    """The same partitions, written into one preallocated frame (no second copy on the driver)."""
    columns = {name: np.empty(rows) for name in ("a", "w", "h")}
    start = 0
    for i, m in enumerate(sizes(rows, per)):
        part = partition(i, m)
        for name in columns:
            columns[name][start:start + m] = part[name].to_numpy()
        start += m
    return pd.DataFrame(columns, copy=False)


def dask_frame(rows: int, per: int, variant: str):
    import dask.dataframe as dd

    return dd.from_map(partition, list(range(len(sizes(rows, per)))), sizes(rows, per), meta=partition(0, 0),
                       variant=variant)


def run(args) -> dict:
    from distributed import Client, LocalCluster, wait

    results = {**bench_machine.record(sys.argv), "rounds": args.rounds, "warmup": 1, "partition_rows": args.partition_rows,
               "load_before": bench_machine.load(), "sizes": []}
    for rows in args.rows:
        limit = rows
        private = make_private_sum(SCHEMA, BMI, epsilon=1.0, size_limit=limit)
        frame = pandas_frame(rows, args.partition_rows)
        exact_pandas = make_sum_of(make_frame_domain(SCHEMA, size_limit=limit), dp.symmetric_distance(), BMI)(frame)
        times = bench_machine.interleaved({"pandas": functools.partial(private, frame)}, args.rounds, 1)
        del frame
        gc.collect()
        entry = {"rows": rows, "partitions": len(sizes(rows, args.partition_rows)), "backend": BMI.compile().backend,
                 "variants": {}, "checks": []}
        domain = dask_engine.make_dask_frame_domain(SCHEMA, size_limit=limit)
        release = dask_engine.make_private_dask_sum(domain, BMI, epsilon=1.0)
        total = dask_engine.make_dask_sum_of(domain, dp.symmetric_distance(), BMI)
        for workers in args.workers:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                streamed = dask_frame(rows, args.partition_rows, "streamed")
                persisted = client.persist(dask_frame(rows, args.partition_rows, "persisted"))
                wait(persisted)
                pre_noise = total(persisted)
                bound = total.map(0)
                entry["checks"].append({"workers": workers, "difference": abs(pre_noise - exact_pandas), "bound": bound})
                if not abs(pre_noise - exact_pandas) <= bound:
                    raise AssertionError(f"pandas and Dask differ by more than the stated bound at {rows} rows")
                found = bench_machine.interleaved({f"dask {workers}w persisted": functools.partial(release, persisted),
                                                   f"dask {workers}w streamed": functools.partial(release, streamed)}, args.rounds, 1)
                times.update(found)
                del persisted
        entry["variants"] = bench_machine.summary(times, "pandas")
        results["sizes"].append(entry)
        for name, r in entry["variants"].items():
            print(f"{rows:>11,d} rows  {name:<22s} min {r['min_s']:7.3f} s  median {r['median_s']:7.3f} s  "
                  f"ratio of medians {r['ratio_of_medians']:.3f}", file=sys.stderr)
    results["partition_cost"] = partition_cost(args.partition_rows)
    results["load_after"] = bench_machine.load()
    return results


def partition_cost(rows: int) -> dict:
    """Seconds for one partition of ``rows`` records, in this process (min of 3): generating it, and the release's
    work on it (the Dask engine's partition task: read, check, impute, clamp, kernel, partial sum)."""
    import time

    spec = dask_engine._dask_spec(dask_engine.make_dask_frame_domain(SCHEMA, size_limit=10**12))
    plan = dask_engine._plan(spec, dp.symmetric_distance(), BMI, None, None, "auto")
    task = dask_engine._PartitionPass(spec.partition_domain(), [plan])

    def best(fn) -> float:
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return min(out)

    part = partition(0, rows)
    task(part)  # the kernel built once, as on a worker
    return {"rows": rows, "generate_s": best(lambda: partition(0, rows)), "task_s": best(lambda: task(part))}


def duration(seconds: float) -> str:
    """Seconds in the unit that reads best."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def paper_10b(cost: dict) -> str:
    """10 billion rows on paper: the per-partition task times the partitions, over worker threads."""
    partitions = 10**10 / cost["rows"]
    each = cost["task_s"]
    return (f"- On paper, 10 billion rows ({partitions:,.0f} partitions of {cost['rows']:,d} rows): one partition's task "
            f"took {each:.3f} s here (generating it {cost['generate_s']:.3f} s more), so a release is about "
            f"{duration(partitions * each / 2)} of task time on 2 worker threads, {duration(partitions * each / 100)} on "
            f"100 and {duration(partitions * each / 1000)} on 1,000 with the data already in the workers' memory (reading "
            f"it from storage adds its own time: generating it here would add {duration(partitions * cost['generate_s'] / 2)} "
            f"on 2), plus one partial sum per partition combined exactly on the driver.")


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" Private sum of `a*w/h**2` (epsilon 1), pandas path vs the Dask engine on a "
             f"LocalCluster of 1 and 2 worker processes (one thread each), partitions of {results['partition_rows']:,d} rows "
             f"generated in place; {results['rounds']} rounds after {results['warmup']} warm-up; ratio = median over the "
             "pandas path's median at the same size.", "",
             "| rows | variant | min s | median s | ratio of medians |", "|---:|---|---:|---:|---:|"]
    for entry in results["sizes"]:
        for name, r in entry["variants"].items():
            lines.append(f"| {entry['rows']:,d} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['ratio_of_medians']:.2f} |")
    lines.append("")
    for entry in results["sizes"]:
        for check in entry["checks"]:
            lines.append(f"- {entry['rows']:,d} rows, {check['workers']} worker(s): pandas and Dask pre-noise sums differ by "
                         f"{check['difference']:.3g}, within the stated bound {check['bound']:.3g}.")
    if "partition_cost" in results:
        lines.append(paper_10b(results["partition_cost"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 100_000_000])
    p.add_argument("--rounds", type=int, default=3, help="timed rounds")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes of each LocalCluster")
    p.add_argument("--partition-rows", type=int, default=5_000_000)
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
