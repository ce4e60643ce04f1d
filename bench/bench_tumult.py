"""Private sum at scale: the Dask engine against Tumult Analytics on its own Spark, rounds interleaved.

    bash bench/setup_tumult.sh                 # once: Tumult Analytics in .venv-tumult (Python 3.11, Java 17)
    python bench/bench_tumult.py [--rows 10000000 100000000] [--map-rows 1000000] [--rounds 3] \
        [--json bench/results/tumult.json]
    python bench/bench_tumult.py --markdown bench/results/tumult.json   # the docs section, from the JSON

Ours: ``make_private_dask_sum`` of age-adjusted BMI ``a*w/h**2`` (``bench_scale``'s schema and data,
epsilon 1, Laplace) on a ``distributed.LocalCluster`` of 2 worker processes (one thread each),
partitions generated on the workers at every release (``bench_scale``'s "dask 2w streamed").
Tumult: ``bench/tumult_worker.py`` in ``.venv-tumult``, a long-lived subprocess with a Spark
``local[2]`` session (so its JVM stays warm and the rounds interleave with ours), data generated
by ``spark.range`` with seeded ``rand`` columns of the same distributions, regenerated at every
release (streamed), the same number of partitions; one release is ``Session.from_dataframe``
(``PureDPBudget(1)``, ``AddOneRow``) and ``session.evaluate`` of a ``QueryBuilder`` sum with
``mechanism="laplace"`` and ``low, high`` = the range the project's certificate gives
(``BMI.range()``, read here and sent to the worker), collected. Two Tumult variants:

- ``tumult map``: ``replace_null_and_nan`` (the schema's imputation values), ``map`` adding
  ``bmi`` from the inputs clamped to the schema's box, ``sum``. Tumult's map is a Python
  function per row (``rdd.map`` with a per-row domain check), so it runs at ``--map-rows``
  (default 1M rows) beside ours at the same size; its cost per row is reported.
- ``tumult precomputed``: the same imputed, clamped ``bmi`` computed with Spark column functions
  before the session (a row-wise function of the record, so add-or-remove-one-row is preserved);
  Tumult's query is the sum alone. Run at every ``--rows``.

Rounds: per size, one warm-up round and then ``--rounds`` rounds, each running ours and then
Tumult's (A, B, A, B, ...); min, median and the ratio of medians (Tumult's over ours) are
reported. Checks, untimed: the two generators draw different values, so the pre-noise sums are
compared statistically: ours (``make_dask_sum_of`` on the same frame) and Spark's exact sum of
the same clamped values must differ by at most 6 standard deviations of the difference of two
independent sums of ``n`` values (``6 sqrt(2 n) s``, ``s`` from Spark's sum of squares); each
noisy answer must lie within 40 Laplace scales (``max(|L|, |U|) / epsilon``) of its own side's
pre-noise sum (probability ``exp(-40)`` of a false alarm). The peak resident memory of the
Tumult worker's process tree (Python, JVM, Spark's Python workers), sampled every 0.2 s, is
recorded against the machine's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import machine as bench_machine

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TUMULT_PYTHON = os.path.join(ROOT, ".venv-tumult", "bin", "python")
WORKER = os.path.join(HERE, "tumult_worker.py")
OURS = "dask 2w streamed"
EPSILON = 1.0
NOISE_SCALES = 40  # a noisy answer farther than this many Laplace scales from its pre-noise sum has probability e^-40
SIGMAS = 6  # the pre-noise sums of the two generators may differ by this many standard deviations


class Tumult:
    """The worker subprocess: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, driver_memory: str):
        if not os.path.exists(TUMULT_PYTHON):
            raise SystemExit(f"no Tumult venv at {TUMULT_PYTHON}: run `bash bench/setup_tumult.sh` first")
        self.scratch = tempfile.mkdtemp(prefix="bench-tumult-")  # Spark's derby/warehouse files land here, not in the repo
        self.log = open(os.path.join(self.scratch, "worker.log"), "w")  # noqa: SIM115 (open while the worker runs)
        self.proc = subprocess.Popen([TUMULT_PYTHON, WORKER, "--driver-memory", driver_memory], cwd=self.scratch,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self._read()  # "ready"
        self.peak_rss = 0
        self._sampling = False

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Tumult worker ended; see {self.scratch}/worker.log")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"Tumult worker: {answer.get('error')}")
        return answer

    def __call__(self, op: str, **fields) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def tree_rss(self) -> int:
        """Resident bytes of the worker and all its descendants (the JVM, Spark's Python workers)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            total = 0
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process may end while the tree is read
                    total += p.memory_info().rss
            return total
        except psutil.Error:
            return 0

    def sample(self) -> None:
        while self._sampling:
            self.peak_rss = max(self.peak_rss, self.tree_rss())
            time.sleep(0.2)

    def release(self, **fields) -> dict:
        """One timed release, the process tree's memory sampled meanwhile."""
        self._sampling = True
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        try:
            return self("release", **fields)
        finally:
            self._sampling = False
            sampler.join()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def interleaved(variants: dict, rounds: int, warmup: int) -> tuple[dict[str, list[float]], dict[str, list]]:
    """A, B, A, B, ...: each variant once per round; the warm-up rounds are not kept. Returns times and outputs."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, list] = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
                outputs[name].append(out)
    return times, outputs


def run(args) -> dict:
    import bench_scale as scale
    import opendp.prelude as dp
    from distributed import Client, LocalCluster

    from opendp_hybridad.frame import dask_engine

    dp.enable_features("contrib", "honest-but-curious")
    certificate = scale.BMI.range()
    low, high = float(certificate.lower), float(certificate.upper)
    scale_b = max(abs(low), abs(high)) / EPSILON  # the Laplace scale of both sides, up to our rounding allowance
    tumult = Tumult(args.driver_memory)
    results = {**bench_machine.record(sys.argv), "tumult": tumult("info"), "rounds": args.rounds, "warmup": 1,
               "partition_rows": args.partition_rows, "epsilon": EPSILON, "bounds": [low, high],
               "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
               "load_before": bench_machine.load(), "sizes": []}
    import dask
    import distributed

    results["machine"]["dask"], results["machine"]["distributed"] = dask.__version__, distributed.__version__
    plan = [(rows, "precomputed") for rows in args.rows] + [(rows, "map") for rows in args.map_rows]
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster):
            for rows, variant in plan:
                per = min(args.partition_rows, -(-rows // 2))  # at least 2 partitions: both engines have 2 cores to use
                partitions = len(scale.sizes(rows, per))
                domain = dask_engine.make_dask_frame_domain(scale.SCHEMA, size_limit=rows)
                release = dask_engine.make_private_dask_sum(domain, scale.BMI, epsilon=EPSILON)
                total = dask_engine.make_dask_sum_of(domain, dp.symmetric_distance(), scale.BMI)
                frame = scale.dask_frame(rows, per, "streamed")
                ours_exact = total(frame)
                spark = tumult("exact", rows=rows, partitions=partitions, seed=scale.SEED, mode="streamed")
                name = f"tumult {variant} streamed"
                fields = {"rows": rows, "partitions": partitions, "seed": scale.SEED, "mode": "streamed", "epsilon": EPSILON,
                          "low": low, "high": high, "variant": variant}
                tumult.peak_rss = 0
                times, outputs = interleaved({OURS: functools.partial(release, frame),
                                              name: functools.partial(tumult.release, **fields)}, args.rounds, 1)
                n = spark["count"]
                sd = math.sqrt(max(spark["sum_squares"] / n - (spark["sum"] / n) ** 2, 0.0))
                tolerance = SIGMAS * math.sqrt(2 * n) * sd
                noisy_ours = [float(x) for x in outputs[OURS]]
                noisy_tumult = [o["answer"] for o in outputs[name]]
                check = {"ours_pre_noise": ours_exact, "spark_pre_noise": spark["sum"], "difference": abs(ours_exact - spark["sum"]),
                         "tolerance": tolerance, "sd": sd, "spark_missing_w": spark["missing_w"],
                         "ours_noisy": noisy_ours, "tumult_noisy": noisy_tumult, "laplace_scale": scale_b,
                         "noise_ours_max": max(abs(x - ours_exact) for x in noisy_ours),
                         "noise_tumult_max": max(abs(x - spark["sum"]) for x in noisy_tumult)}
                if not check["difference"] <= tolerance:
                    raise AssertionError(f"{rows} rows: the pre-noise sums differ by {check['difference']:.6g}, "
                                         f"more than {SIGMAS} standard deviations ({tolerance:.6g})")
                for side in ("ours", "tumult"):
                    if not check[f"noise_{side}_max"] <= NOISE_SCALES * scale_b * 1.01:  # 1%: our outward-rounded scale
                        raise AssertionError(f"{rows} rows: a noisy answer of {side} is over {NOISE_SCALES} scales away")
                summary = bench_machine.summary(times, OURS)
                parts = {"session_s": [o["session_s"] for o in outputs[name]], "evaluate_s": [o["evaluate_s"] for o in outputs[name]]}
                entry = {"rows": rows, "partitions": partitions, "partition_rows": per, "tumult_variant": variant, "variants": summary,
                         "tumult_parts": {k: statistics.median(v) for k, v in parts.items()},
                         "tumult_peak_rss_gib": round(tumult.peak_rss / 2**30, 2),
                         "tumult_per_million_rows_s": summary[name]["median_s"] / (rows / 1e6), "check": check}
                results["sizes"].append(entry)
                for vname, r in summary.items():
                    print(f"{rows:>11,d} rows  {vname:<28s} min {r['min_s']:8.3f} s  median {r['median_s']:8.3f} s  "
                          f"ratio of medians {r['ratio_of_medians']:.2f}", file=sys.stderr, flush=True)
                print(f"{'':>16s}Tumult peak RSS {entry['tumult_peak_rss_gib']} GiB; pre-noise difference "
                      f"{check['difference']:.4g} (tolerance {tolerance:.4g})", file=sys.stderr, flush=True)
    finally:
        tumult.close()
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    t = results["tumult"]
    low, high = results["bounds"]
    lines = [bench_machine.header(results) + f" Dask {results['machine'].get('dask', '?')}. Tumult Analytics "
             f"{t['tmlt.analytics']} (tmlt.core {t['tmlt.core']}) on Spark {t['spark']} `{t['master']}` "
             f"(driver memory {t['driver_memory']}, Java {t['java']}, Python {t['python']}, numpy {t['numpy']}, "
             f"pandas {t['pandas']}) in its own venv; {results['memory_gib']} GiB of memory. Private sum of "
             f"`a*w/h**2`, epsilon {results['epsilon']:g}, Laplace, clamped to the certified range "
             f"[{low:.6g}, {high:.6g}]; the same number of partitions on both sides (at most "
             f"{results['partition_rows']:,d} rows, at least 2 partitions), generated at each release; "
             f"{results['rounds']} rounds after {results['warmup']} warm-up, ours and Tumult's "
             "alternating; ratio = Tumult's median over ours at the same size.", "",
             "| rows | partitions | variant | min s | median s | ratio of medians | Tumult s per 1M rows | Tumult peak RSS GiB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for entry in results["sizes"]:
        for name, r in entry["variants"].items():
            tumult_side = name != OURS
            lines.append(f"| {entry['rows']:,d} | {entry['partitions']} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                         f"{r['ratio_of_medians']:.1f} | "
                         + (f"{entry['tumult_per_million_rows_s']:.3f} | {entry['tumult_peak_rss_gib']:.1f} |" if tumult_side
                            else "| |"))
    lines.append("")
    for entry in results["sizes"]:
        c = entry["check"]
        lines.append(f"- {entry['rows']:,d} rows ({entry['tumult_variant']}): pre-noise sums {c['ours_pre_noise']:.6g} "
                     f"(ours) and {c['spark_pre_noise']:.6g} (Spark's, same clamped values) differ by {c['difference']:.3g}, "
                     f"within {SIGMAS} standard deviations of two independent samples ({c['tolerance']:.3g}); noisy answers "
                     f"within {max(c['noise_ours_max'], c['noise_tumult_max']) / c['laplace_scale']:.1f} Laplace scales of "
                     f"their pre-noise sums. Tumult's session build {entry['tumult_parts']['session_s']:.3f} s, "
                     f"evaluate {entry['tumult_parts']['evaluate_s']:.3f} s (medians).")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="*", default=[10_000_000, 100_000_000],
                   help="sizes for Tumult's precomputed-column variant")
    p.add_argument("--map-rows", type=int, nargs="*", default=[1_000_000],
                   help="sizes for Tumult's map variant (a Python function per row)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds")
    p.add_argument("--partition-rows", type=int, default=5_000_000)
    p.add_argument("--driver-memory", default="8g", help="Spark driver memory (local mode: all of Spark's heap)")
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
