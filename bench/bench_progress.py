"""Overhead of progress reporting in DP-SGD: fit(progress=False) vs fit(progress=True).

    python bench/bench_progress.py [--epochs 40] [--repeats 15] [--json bench/results/progress.json]
    python bench/bench_progress.py --markdown bench/results/progress.json   # the docs section, from the JSON

Rounds interleaved (False, True, False, True, ...) after one warm-up of each; reports min and
median of each side and the ratio, and the machine; with one BLAS thread and with the default
threads (``--threads``). The data are synthetic (4000 x 16, a
16-32-2 MLP, batch 64, noise multiplier 1.0); ``seed`` fixes the noise for a like-for-like
comparison (a seeded run is not private).

Because the two sides differ by well under the run-to-run noise of a shared machine, the bench
also measures the progress-only work itself, in the same ``fit(progress=True)`` runs: every call
that exists only because ``progress=True`` (tqdm's bar: creation, ``update``, ``set_postfix_str``,
``write``, ``close``; the proven epsilon of each progress line from the cached RDP curve) is
timed where it happens, by wrapping those functions for one run, and summed. Attributed overhead =
that sum over the median ``progress=False`` run time: a direct measurement of what the ratio of
medians estimates.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time

import machine as bench_machine
import numpy as np

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.dpsgd.accounting import DpSgdRdpCurve
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy


def run(args) -> dict:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4000, 16))
    y = (x[:, 0] > 0).astype(int)
    model = MLP([Dense(16, 32, 1.0, 1.0), Dense(32, 2, 1.0, 1.0)], [Identity(), Identity()], SoftmaxCrossEntropy(),
                input_bound=4.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=64, epochs=args.epochs, learning_rate=0.5)

    def fit(progress: bool) -> None:
        with contextlib.redirect_stderr(io.StringIO()):
            trainer.fit(x, y, progress=progress, seed=1)

    def attributed(progress: bool) -> tuple[float, int]:
        """Seconds spent in tqdm's and the RDP curve's calls during one fit, and how many calls."""
        from tqdm import tqdm

        spent, calls = [0.0], [0]
        targets = [(tqdm, name) for name in ("__init__", "update", "set_postfix_str", "write", "close")]
        targets.append((DpSgdRdpCurve, "epsilon"))
        originals = [(owner, name, owner.__dict__[name]) for owner, name in targets]

        def timed(fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[0] += time.perf_counter() - start
                    calls[0] += 1
            return wrapper

        for owner, name, fn in originals:
            if isinstance(fn, classmethod):
                setattr(owner, name, classmethod(timed(fn.__func__)))
            else:  # a function or (tqdm's __init__) a functools.partialmethod: bind it as Python would
                setattr(owner, name, timed(lambda self, *a, _fn=fn, _owner=owner, **k: _fn.__get__(self, _owner)(*a, **k)))
        try:
            fit(progress)
        finally:
            for owner, name, fn in originals:
                setattr(owner, name, fn)
        return spent[0], calls[0]

    results = {**bench_machine.record(sys.argv), "epochs": args.epochs, "rounds": args.repeats, "warmup": 1,
               "load_before": bench_machine.load(), "runs": []}
    for label in args.threads:
        with bench_machine.threads(bench_machine.THREAD_SETTINGS[label]) as counts:
            times = bench_machine.interleaved({"progress=False": lambda: fit(False), "progress=True": lambda: fit(True)},
                                              args.repeats, 1)
            v = bench_machine.summary(times, "progress=False")
            # the end-of-run report reads the same curve with progress off: the difference is the progress lines' share
            on = [attributed(True) for _ in range(5)]
            off = [attributed(False) for _ in range(5)]
            seconds = statistics.median(s for s, _ in on) - statistics.median(s for s, _ in off)
            samples = [(s, c - off[0][1]) for s, c in on]
            share = seconds / v["progress=False"]["median_s"]
            results["runs"].append({"threads": label, "thread_counts": counts, "load_after": bench_machine.load(), "variants": v,
                                    "attributed_s": seconds, "attributed_calls": samples[0][1], "attributed_share": share})
            print(f"threads {label:>7s} progress-only calls: {samples[0][1]}, {seconds * 1e3:.2f} ms per run "
                  f"(median of 5 runs), {100 * share:.2f}% of the median progress=False run")
            for name, r in v.items():
                print(f"threads {label:>7s} {name:<15s} min {r['min_s']:.4f} median {r['median_s']:.4f} s, "
                      f"ratio of medians {r['ratio_of_medians']:.3f}, of mins {r['ratio_of_mins']:.3f}")
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" `DPSGD.fit` for {results['epochs']:g} epochs (4000 x 16 synthetic rows, a 16-32-2 "
             f"MLP, batch 64, noise multiplier 1.0, seeded noise) with and without progress reporting; {results['rounds']} rounds "
             f"after {results['warmup']} warm-up, interleaved; ratio = progress=True over progress=False.", "",
             "| threads | progress | min s | median s | ratio of medians | ratio of mins |", "|---|---|---:|---:|---:|---:|"]
    for run in results["runs"]:
        for name, r in run["variants"].items():
            lines.append(f"| {run['threads']} | {name.split('=')[1]} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                         f"{r['ratio_of_medians']:.3f} | {r['ratio_of_mins']:.3f} |")
    attributed = [run for run in results["runs"] if "attributed_s" in run]
    if attributed:
        lines += ["", "Progress-only work, timed where it happens in `fit(progress=True)` (tqdm's calls and the progress lines' "
                  "epsilons, less what the same calls cost with progress off; median of 5 runs):", "",
                  "| threads | calls | ms per run | share of the median progress=False run |", "|---|---:|---:|---:|"]
        for run in attributed:
            lines.append(f"| {run['threads']} | {run['attributed_calls']} | {run['attributed_s'] * 1e3:.2f} | "
                         f"{100 * run['attributed_share']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=float, default=40)
    p.add_argument("--repeats", type=int, default=31, help="timed rounds")
    p.add_argument("--threads", nargs="+", default=["1", "default"], choices=list(bench_machine.THREAD_SETTINGS))
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
