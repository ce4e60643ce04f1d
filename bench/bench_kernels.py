"""Compiled BMI kernels against hand-written numpy, side by side in one run.

    python bench/bench_kernels.py [--rows 10000000] [--repeats 7] [--json bench/results/kernels.json]
    python bench/bench_kernels.py --markdown bench/results/kernels.json   # the docs section, from the JSON

Every variant once per round, rounds interleaved after one warm-up round; reports the min and
median of each variant and the ratios of medians (and of mins) to hand-written numpy; every
compiled backend installed (numpy, numexpr, numba) is measured. The kernels are elementwise
(no BLAS), so there is one thread setting: numexpr's own threads are in the machine record.
"""

from __future__ import annotations

import argparse
import sys

import machine as bench_machine
import numpy as np

import opendp_hybridad as hd
from opendp_hybridad.compile import available_backends


def hand_value(a, w, h):
    return a * w / h**2


def hand_norm(a, w, h):
    return np.sqrt(4 * a**2 * w**2 + h**2 * (a**2 + w**2)) / h**3


NAMES = {"value": "value", "gradient_norm": "gradient norm"}


def run(args) -> dict:
    rng = np.random.default_rng(0)
    a = rng.uniform(18, 90, args.rows)
    w = rng.uniform(40, 200, args.rows)
    h = rng.uniform(1.4, 2.2, args.rows)
    schema = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    sa, sw, sh = schema.symbols()
    bmi = schema.function(sa * sw / sh**2)
    kernels = {b: bmi.compile(backend=b) for b in available_backends()}
    for k in kernels.values():  # same answers before timing anything
        np.testing.assert_allclose(k(a=a[:1000], w=w[:1000], h=h[:1000]), hand_value(a[:1000], w[:1000], h[:1000]), rtol=1e-13)
        np.testing.assert_allclose(k.gradient_norm(a=a[:1000], w=w[:1000], h=h[:1000]), hand_norm(a[:1000], w[:1000], h[:1000]), rtol=1e-12)

    results = {**bench_machine.record(sys.argv), "rows": args.rows, "rounds": args.repeats, "warmup": 1,
               "load_before": bench_machine.load(), "kernels": {}}
    for quantity, hand, ours in (("value", hand_value, "value"), ("gradient_norm", hand_norm, "gradient_norm")):
        # interleave the variants so that machine noise hits them alike
        variants = {"hand-written numpy": lambda hand=hand: hand(a, w, h)}
        for b, k in kernels.items():
            fn = getattr(k, ours)
            variants[f"compiled, {b} backend"] = lambda fn=fn: fn(a=a, w=w, h=h)
        results["kernels"][quantity] = bench_machine.summary(bench_machine.interleaved(variants, args.repeats, 1),
                                                             "hand-written numpy")
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" {results['rows']:,} rows, {results['rounds']} rounds after "
             f"{results['warmup']} warm-up, the variants interleaved in one process; ratios to hand-written numpy "
             "(below 1: faster).", "",
             "| kernel | variant | min ms | median ms | ratio of medians | ratio of mins |", "|---|---|---:|---:|---:|---:|"]
    for quantity, rows in results["kernels"].items():
        for name, r in rows.items():
            ratio = f"{r['ratio_of_medians']:.3f}"
            lines.append(f"| {NAMES[quantity]} | {name} | {bench_machine.ms(r['min_s'])} | {bench_machine.ms(r['median_s'])} | "
                         f"{'**' + ratio + '**' if r['ratio_of_medians'] < 0.9 else ratio} | {r['ratio_of_mins']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds")
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
