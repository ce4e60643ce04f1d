"""Training with per-step K (the bound at the current weights) against global K and a non-private numpy loop.

    python bench/bench_per_step_k.py [--batches 64 256] [--epochs 4] [--rounds 7] [--json bench/results/per_step_k.json]
    python bench/bench_per_step_k.py --markdown bench/results/per_step_k.json   # the docs section, from the JSON

A 64-128-10 tanh MLP learns a random linear teacher on 12,800 synthetic rows (inputs in the box
[-1/8, 1/8]^64, as in bench_dpsgd), Poisson batches, learning rate 0.5, noise multiplier 1, auto
mode with clip 3. Variants, each a whole ``fit`` (plan, batches, bounds, noise, updates): global K
(the bound over the declared weight set, weights projected back onto it); per-step K
(``granularity="step"``: the bound at the current weights' norms rounded up to slots, each step's
result read off nearby ones where they prove it, dpsgd/nearby_bounds.py, its noise table cached by
scale), at learning rate 0.5, where the weights grow unprojected and the bound exceeds C after the
first steps (those steps clip, as clip mode's), and at 0.05, where it stays below C for most of
the run; clip mode (every step clips at C, the bound never computed). Each runs unseeded as a
private run does (a seed would draw the Poisson batches from numpy's PCG64 instead of the
operating system's generator: reproducible, not private, and about 2x slower per selection). The
baseline is a non-private loop over the same number of batches of the same size (``gradient_sum``
and the update in numpy). Reported: seconds per step (min and median over the rounds, interleaved
after one warm-up), the ratio of medians to the non-private loop; for each per-step variant, its
median over global K's and clip mode's, how many of its steps clipped (``K_t > C``), how many
chain bounds it computed (the plan's global one, the steps not read off nearby results, and the
coarse bounds of clipping steps' ``e``), and how many noise tables it built (each an exact
128-bit alias table, built once per scale and process: the warm-up run fills the cache, so timed
runs show the steady state).
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


#: the per-step variants: (name, learning rate); the others run at LEARNING_RATE
LEARNING_RATE = 0.5
PER_STEP = (("per-step K", LEARNING_RATE), ("per-step K, learning rate 0.05", 0.05))


def _measure(batch: int, x: np.ndarray, y: np.ndarray, args) -> dict:
    model = MLP([Dense(64, 128, 0.05, 0.05, norm_ball=True), Dense(128, 10, 0.05, 0.05, norm_ball=True)], [Tanh(), Identity()],
                SoftmaxCrossEntropy(), input_bound=1 / 8)

    def trainer(mode: str, granularity: str, lr: float = LEARNING_RATE) -> DPSGD:
        return DPSGD(model, noise_multiplier=1.0, batch_size=batch, epochs=args.epochs, learning_rate=lr, clip=3.0,
                     granularity=granularity, mode=mode)

    trainers = {"global K": trainer("auto", "global"), **{name: trainer("auto", "step", lr) for name, lr in PER_STEP},
                "clip mode": trainer("clip", "global")}
    steps = trainers["global K"].plan(N).steps
    chain = model._seq._bound_from_norms  # counted: one call per chain bound computed (a cache miss, slot or coarse)
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
    stats: dict[str, dict[str, list[int]]] = {name: {"tables": [], "chains": [], "clipped": []} for name, _ in PER_STEP}

    def fit(name: str, trainer: DPSGD) -> None:
        before, before_calls, before_clipped = noise_module._table.cache_info().misses, calls[0], clipped[0]
        trainer.fit(x, y)  # unseeded: batches and initial weights from the CSPRNG, as in a private run
        if name in stats:
            stats[name]["tables"].append(noise_module._table.cache_info().misses - before)
            stats[name]["chains"].append(calls[0] - before_calls)
            stats[name]["clipped"].append(clipped[0] - before_clipped)

    def non_private() -> None:
        params = model.init(np.random.default_rng(1))
        order = np.random.default_rng(2)
        for _ in range(steps):
            members = order.integers(0, N, batch)
            g = model.gradient_sum(params, x[members], y[members], clip=None)
            params = [(W - LEARNING_RATE * gW / batch, b - LEARNING_RATE * gb / batch)
                      for (W, b), (gW, gb) in zip(params, g, strict=True)]

    variants = {"non-private numpy loop": non_private, **{name: (lambda n=name, t=t: fit(n, t)) for name, t in trainers.items()}}
    try:
        times = bench_machine.interleaved(variants, args.rounds, 1)
    finally:
        plan_module.GradientSum.at = step_bounds
        model._seq._bound_from_norms = chain
    v = bench_machine.summary({k: [t / steps for t in ts] for k, ts in times.items()}, "non-private numpy loop")
    for name, r in v.items():
        print(f"batch {batch:>4d} {name:<32s} min {r['min_s'] * 1e3:7.3f} median {r['median_s'] * 1e3:7.3f} ms/step  "
              f"ratio {r['ratio_of_medians']:.2f}")
    per_step = {}
    for name, _ in PER_STEP:
        per_step[name] = {"tables_built_per_run": stats[name]["tables"], "chain_computations_per_run": stats[name]["chains"],
                          "clipped_steps_per_run": stats[name]["clipped"],
                          "over_global": v[name]["median_s"] / v["global K"]["median_s"],
                          "over_clip": v[name]["median_s"] / v["clip mode"]["median_s"]}
        print(f"    {name}: noise tables built (warm-up first) {stats[name]['tables']}; chain bounds computed (the plan's "
              f"global one included) {stats[name]['chains']}; steps that clipped {stats[name]['clipped']}, {steps} steps "
              f"each; over global K {per_step[name]['over_global']:.2f}, over clip mode {per_step[name]['over_clip']:.2f}")
    parts = _part_costs(model, chain)
    print(f"    one chain bound {parts['chain_us']:.1f} us, one step's rounded norms {parts['step_norms_us']:.1f} us (medians)")
    return {"batch": batch, "steps": steps, "variants": v, "per_step": per_step, "parts_us": parts,
            "load_after": bench_machine.load()}


def _part_costs(model: MLP, chain, calls: int = 500, rounds: int = 9) -> dict[str, float]:
    """Median microseconds of what a per-step step adds to a global-K one: the weights' rounded norms (every step) and
    the chain bound at them (the steps not read off nearby results)."""
    import time

    params = model.init(np.random.default_rng(3))
    norms = model.step_norms(params)

    def median_us(f) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                f()
            times.append((time.perf_counter() - start) / calls * 1e6)
        return float(np.median(times))

    return {"chain_us": median_us(lambda: chain(norms)), "step_norms_us": median_us(lambda: model.step_norms(params))}


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
        for name, r in run["per_step"].items():
            lines.append(f"- batch {run['batch']}, {name}: over global K {r['over_global']:.2f}, over clip mode "
                         f"{r['over_clip']:.2f} (ratios of medians); steps that clipped (its bound above C) "
                         f"{', '.join(map(str, r['clipped_steps_per_run']))}; chain bounds computed (the plan's global one "
                         f"included) {', '.join(map(str, r['chain_computations_per_run']))}; noise tables built "
                         f"{', '.join(map(str, r['tables_built_per_run']))} (of {run['steps']} steps; warm-up run first).")
        if "parts_us" in run:
            lines.append(f"- batch {run['batch']}: one chain bound {run['parts_us']['chain_us']:.1f} us, one step's rounded "
                         f"weight norms {run['parts_us']['step_norms_us']:.1f} us (medians of 9 rounds of 500 calls).")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--rounds", type=int, default=7)
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
