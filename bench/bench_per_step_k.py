"""Training with per-step K (the bound at the current weights) against global K and a non-private numpy loop.

    python bench/bench_per_step_k.py [--batches 64 256] [--epochs 4] [--rounds 3] [--json bench/results/per_step_k.json]
    python bench/bench_per_step_k.py --markdown bench/results/per_step_k.json   # the docs section, from the JSON

A 64-128-10 tanh MLP learns a random linear teacher on 12,800 synthetic rows (inputs in the box
[-1/8, 1/8]^64, as in bench_dpsgd), Poisson batches, learning rate 0.5, noise multiplier 1, auto
mode with clip 3. Variants, each a whole ``fit`` (plan, batches, bounds, noise, updates): global K
(the bound over the declared weight set, weights projected back onto it) and per-step K
(``granularity="step"``: the bound at the current weights, cached by norm slots, its noise table
cached by scale) and clip mode (every step clips at C, the bound never computed: what per-step K costs
once its bound exceeds C, as it does here from the first steps, the weights growing unprojected), each
unseeded as a private run is (a seed would draw the Poisson batches from numpy's
PCG64 instead of the operating system's generator: reproducible, not private, and about 2x slower
per selection); and a non-private loop over the same number of batches of the same size
(``gradient_sum`` and the update in numpy). Reported: seconds per step (min and median over the
rounds, interleaved after one warm-up), the ratio of medians to the non-private loop, and how many
noise tables each per-step run built (each is an exact 128-bit alias table, built once per scale
and process: the warm-up run fills the cache, so timed runs show the steady state). Also recorded
(and shown when the JSON has them): per-step K's median over global K's, and how many times each
per-step run computed the certified chain bound (the plan's global bound once, then each step whose
rounded weight norms left their slots; the other steps read the cache) and how many of its steps clipped
(``K_t > C``: such a step computes the per-example norms, as clip mode does, on top of the bound).
"""

from __future__ import annotations

import argparse
import sys

import machine as bench_machine
import numpy as np

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.dpsgd import noise as noise_module
from opendp_hybridad.dpsgd import plan as plan_module
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

N = 12_800


def _measure(batch: int, x: np.ndarray, y: np.ndarray, args) -> dict:
    model = MLP([Dense(64, 128, 0.05, 0.05, norm_ball=True), Dense(128, 10, 0.05, 0.05, norm_ball=True)], [Tanh(), Identity()],
                SoftmaxCrossEntropy(), input_bound=1 / 8)
    trainers = {name: DPSGD(model, noise_multiplier=1.0, batch_size=batch, epochs=args.epochs, learning_rate=0.5,
                            clip=3.0, granularity=granularity, mode=mode)
                for name, mode, granularity in (("global K", "auto", "global"), ("per-step K", "auto", "step"),
                                                ("clip mode", "clip", "global"))}
    steps = trainers["global K"].plan(N).steps
    builds: list[int] = []
    recomputations: list[int] = []
    chain = model._seq._bound_from_norms  # counted: one call per recomputation of the chain bound (a cache miss)
    calls = [0]

    def counted(norms):
        calls[0] += 1
        return chain(norms)

    model._seq._bound_from_norms = counted
    clipped = [0]
    step_bounds = plan_module.GradientSum.at

    def counted_at(summer, params):  # counted: the steps whose bound says to clip
        bounds = step_bounds(summer, params)
        clipped[0] += bool(bounds.clip)
        return bounds

    plan_module.GradientSum.at = counted_at
    clipped_steps: list[int] = []

    def fit(name: str, trainer: DPSGD) -> None:
        before, before_calls, before_clipped = noise_module._table.cache_info().misses, calls[0], clipped[0]
        trainer.fit(x, y)  # unseeded: batches and initial weights from the CSPRNG, as in a private run
        if name == "per-step K":
            builds.append(noise_module._table.cache_info().misses - before)
            recomputations.append(calls[0] - before_calls)
            clipped_steps.append(clipped[0] - before_clipped)

    def non_private() -> None:
        params = model.init(np.random.default_rng(1))
        order = np.random.default_rng(2)
        for _ in range(steps):
            members = order.integers(0, N, batch)
            g = model.gradient_sum(params, x[members], y[members], clip=None)
            params = [(W - 0.5 * gW / batch, b - 0.5 * gb / batch) for (W, b), (gW, gb) in zip(params, g, strict=True)]

    variants = {"non-private numpy loop": non_private, **{name: (lambda n=name, t=t: fit(n, t)) for name, t in trainers.items()}}
    try:
        times = bench_machine.interleaved(variants, args.rounds, 1)
    finally:
        plan_module.GradientSum.at = step_bounds
    v = bench_machine.summary({k: [t / steps for t in ts] for k, ts in times.items()}, "non-private numpy loop")
    for name, r in v.items():
        print(f"batch {batch:>4d} {name:<24s} min {r['min_s'] * 1e3:7.3f} median {r['median_s'] * 1e3:7.3f} ms/step  "
              f"ratio {r['ratio_of_medians']:.2f}")
    over_global = v["per-step K"]["median_s"] / v["global K"]["median_s"]
    over_clip = v["per-step K"]["median_s"] / v["clip mode"]["median_s"]
    print(f"    noise tables built by per-step runs (warm-up first): {builds}")
    print(f"    chain bounds computed by per-step runs (warm-up first; the plan's global one included): {recomputations}, "
          f"{steps} steps each")
    print(f"    per-step K over global K (ratio of medians): {over_global:.2f}; over clip mode: {over_clip:.2f}")
    print(f"    steps that clipped in per-step runs (warm-up first): {clipped_steps}, {steps} steps each")
    return {"batch": batch, "steps": steps, "variants": v, "tables_built_per_run": builds,
            "chain_recomputations_per_run": recomputations, "per_step_over_global": over_global,
            "per_step_over_clip": over_clip, "clipped_steps_per_run": clipped_steps,
            "load_after": bench_machine.load()}


def run(args) -> dict:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1 / 8, 1 / 8, (N, 64))
    teacher = rng.standard_normal((64, 10))
    y = (x @ teacher).argmax(axis=1)
    results = {**bench_machine.record(sys.argv), "rounds": args.rounds, "warmup": 1, "epochs": args.epochs,
               "load_before": bench_machine.load(), "runs": []}
    for batch in args.batches:
        results["runs"].append(_measure(batch, x, y, args))
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" Whole training runs ({results['epochs']:g} epochs of 12,800 synthetic rows, "
             f"64-128-10 tanh MLP, auto mode, clip 3, noise multiplier 1), per step; {results['rounds']} rounds after "
             f"{results['warmup']} warm-up, interleaved; ratio = median over the non-private loop's median.", "",
             "| batch | steps | variant | min ms/step | median ms/step | ratio of medians |", "|---:|---:|---|---:|---:|---:|"]
    for run in results["runs"]:
        for name, r in run["variants"].items():
            lines.append(f"| {run['batch']} | {run['steps']} | {name} | {r['min_s'] * 1e3:.3f} | {r['median_s'] * 1e3:.3f} | "
                         f"{r['ratio_of_medians']:.2f} |")
    lines.append("")
    for run in results["runs"]:
        lines.append(f"- batch {run['batch']}: noise tables built by the per-step runs, warm-up first: "
                     f"{', '.join(map(str, run['tables_built_per_run']))}.")
        if "chain_recomputations_per_run" in run:  # recorded since the float-only rounding (older JSON: not shown)
            lines.append(f"- batch {run['batch']}: per-step K over global K (ratio of medians) "
                         f"{run['per_step_over_global']:.2f}; chain bounds computed by the per-step runs (the plan's global "
                         f"one included), warm-up first: {', '.join(map(str, run['chain_recomputations_per_run']))} "
                         f"(of {run['steps']} steps).")
        if "clipped_steps_per_run" in run:
            lines.append(f"- batch {run['batch']}: steps on which per-step K clipped (its bound above C), warm-up first: "
                         f"{', '.join(map(str, run['clipped_steps_per_run']))} (of {run['steps']}); per-step K over clip "
                         f"mode (ratio of medians) {run['per_step_over_clip']:.2f}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--rounds", type=int, default=3)
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
