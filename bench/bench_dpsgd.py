"""DP-SGD parts, side by side.

    python bench/bench_dpsgd.py [--batches 64 ... 2048] [--rounds 60] [--json bench/results/dpsgd.json]
    python bench/bench_dpsgd.py --markdown bench/results/dpsgd.json   # the docs section, from the JSON

(b) runs with one BLAS thread and with the default threads (``--threads``).

(b) One step of ``auto`` mode with K <= C (no per-example norms, default table-sampler
    noise, update and projection) against a non-private numpy step (same batched gradient
    sum and update, no noise), over batch sizes; and OpenDP's own sampler for scale. The
    noise alone and the update with projection are timed too: with the non-private step they
    bound the private step's ratio.
    The float margin is how much the noise's sensitivity exceeds the exact one to cover
    the float64 sum with any BLAS (``computed_sum_sensitivity``).
(c) Building the per-example kernels and the certified bound (with the forward error
    ``e``) for MLPs from about 10 thousand to 2.5 million parameters (global bound, and
    per-step bound with given weights); the paper's prototype took about 60 hours at 2.5 million.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import machine as bench_machine
import numpy as np
import opendp.prelude as dp
from timing import best_of

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

dp.enable_features("contrib")  # noise="opendp" draws with OpenDP's Gaussian; the library only asserts the feature


def step_comparison(width: int = 128, batches: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048), rounds: int = 60,
                    thread_settings: tuple[str, ...] = ("1", "default")) -> dict:
    rng = np.random.default_rng(0)
    model = MLP([Dense(64, width, 0.05, 0.05, norm_ball=True), Dense(width, 10, 0.05, 0.05, norm_ball=True)],
                [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1 / 8)
    params = model.init(rng)
    size = model.num_parameters
    out = {"network": f"64-{width}-10 tanh MLP", "parameters": size, "rounds": rounds, "runs": []}
    print(f"(b) 64-{width}-10 tanh MLP, {size} parameters; auto mode, K <= C = 3 (no per-example norms); "
          "private step = DPSGD.step (gradient sum, noise, update, projection onto the weight set)")
    print(f"    {'threads':>7s} {'batch':>6s} {'non-private ms':>15s} {'private ms':>11s} {'ratio':>6s} {'noise us/coord':>15s} "
          f"{'float margin':>13s}")
    setups = []
    for batch in batches:
        trainer = DPSGD(model, noise_multiplier=1.0, batch_size=batch, epochs=1, learning_rate=0.1, mode="auto", clip=3.0)
        assert not trainer.clipping_needed, "the example needs K <= C"
        noise = trainer.noise_function(size)
        x = rng.uniform(-1 / 8, 1 / 8, (batch, 64))
        y = rng.integers(0, 10, batch)

        def non_private(x=x, y=y, batch=batch):
            g = model.gradient_sum(params, x, y, clip=None)
            return [(W - 0.1 * gW / batch, b - 0.1 * gb / batch) for (W, b), (gW, gb) in zip(params, g, strict=True)]

        def private(x=x, y=y, trainer=trainer, noise=noise):
            return trainer.step(params, x, y, noise)

        zeros = np.zeros(size)

        def noise_alone(noise=noise, flat=zeros):
            return noise(flat)

        released = noise(zeros)

        # what DPSGD.step does after the noise (the projection flag read once, as step keeps it between steps)
        def update_and_projection(trainer=trainer, released=released, projects=trainer._projects):
            direction, scale = trainer.optimizer.update(released, trainer.batch_size, None, trainer.optimizer.init(size))
            return model.apply_step(params, direction, trainer.schedule(0) * scale, project=projects)

        margin = noise.sum_sensitivity / trainer.sensitivity - 1  # S + 2 N e + 2 N gamma_N (S + e), relative to S
        insecure = np.random.default_rng(1)

        def numpy_gaussian(rng=insecure):  # for scale: numpy's own float Gaussian (not a secure or exact sampler)
            return rng.standard_normal(size)

        setups.append((batch, {"non-private step": non_private, "private step": private, "noise alone": noise_alone,
                               "update and projection": update_and_projection, "numpy standard_normal": numpy_gaussian}, margin))
    for label in thread_settings:
        with bench_machine.threads(bench_machine.THREAD_SETTINGS[label]) as counts:
            for batch, variants, margin in setups:
                # interleaved rounds, so drift hits every variant alike
                load_before = bench_machine.load()
                v = bench_machine.summary(bench_machine.interleaved(variants, rounds, 2), "non-private step")
                out["runs"].append({"threads": label, "thread_counts": counts, "batch": batch, "load_before": load_before,
                                    "load_after": bench_machine.load(), "variants": v,
                                    "noise_us_per_coordinate": v["noise alone"]["median_s"] / size * 1e6, "float_margin": margin})
                print(f"    {label:>7s} {batch:>6d} {v['non-private step']['median_s'] * 1000:>15.3f} "
                      f"{v['private step']['median_s'] * 1000:>11.3f} {v['private step']['ratio_of_medians']:>6.2f} "
                      f"{out['runs'][-1]['noise_us_per_coordinate']:>15.4f} {margin:>13.2e}")
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=256, epochs=1, learning_rate=0.1, mode="auto", clip=3.0, noise="opendp")
    opendp_noise = trainer.noise_function(size)
    t = best_of(lambda: opendp_noise(np.zeros(size)), 3)
    out["opendp_noise_s"] = t
    print(f"    OpenDP's own sampler (noise='opendp', grid 2^-30 of the std) for the same {size} coordinates: {t * 1000:.1f} ms "
          f"({t / size * 1e6:.1f} us per coordinate)")
    return out


MODELS = ([64, 128, 10], [256, 256, 256, 10], [512, 512, 512, 512, 10], [784, 1024, 1024, 512, 10],
          [1024, 1024, 1024, 1024, 10], [1024, 1536, 1024, 10])


def build_times(models: int | None = None) -> list[dict]:
    print("(c) building kernels + certified bound")
    print(f"    {'parameters':>12s} {'layers':>18s} {'global bound ms':>16s} {'per-step bound ms':>18s}   (K; e: row's float error)")
    rng = np.random.default_rng(0)
    rows = []
    for widths in MODELS[:models]:
        t = time.perf_counter()
        layers = [Dense(i, o, 0.05, 0.05, norm_ball=True) for i, o in itertools.pairwise(widths)]
        model = MLP(layers, [Tanh()] * (len(layers) - 1) + [Identity()], SoftmaxCrossEntropy(), input_bound=0.1)
        bound = model.certified_bound()
        build = time.perf_counter() - t
        params = [(rng.standard_normal((layer.out_features, layer.in_features)) * 0.01, np.zeros(layer.out_features))
                  for layer in layers]
        t = time.perf_counter()
        model.certified_bound(params)
        per_step = time.perf_counter() - t
        rows.append({"layers": "-".join(map(str, widths)), "parameters": model.num_parameters, "global_bound_s": build,
                     "per_step_bound_s": per_step, "K": bound.upper, "e": bound.rounding})
        print(f"    {model.num_parameters:>12,d} {'-'.join(map(str, widths)):>18s} {build * 1000:>16.3f} {per_step * 1000:>18.3f}"
              f"   (K = {bound.upper:.3g}, e = {bound.rounding:.2g})")
    return rows


def _median_us(variants: dict, name: str) -> str:
    """A variant's median in microseconds, or a dash for results recorded before it was timed."""
    return f"{variants[name]['median_s'] * 1e6:.1f}" if name in variants else "-"


def markdown(results: dict) -> str:
    s = results["step"]
    lines = [bench_machine.header(results) + f" (b) One DP-SGD step of {s['network']} ({s['parameters']:,} parameters), auto "
             "mode with K <= C = 3 (no per-example norms): `DPSGD.step` (gradient sum, table-sampler noise, update, projection) "
             f"against a non-private numpy step (same gradient sum and update, no noise); {s['rounds']} rounds after 2 warm-up, "
             "interleaved; ratio = private median / non-private median. Noise floor = (non-private + noise alone) / non-private, "
             "medians: the ratio a step would have if the noise draw were its only cost beyond the non-private step. numpy's "
             "own `standard_normal` for the same coordinates (a float Gaussian, neither secure nor exact) is timed for scale. "
             "Update and projection: the optimizer step and the projection onto the certified weight set that `DPSGD.step` "
             "runs after the noise (the non-private step's update is a plain numpy subtraction). "
             "The float margin is how much the noise's sensitivity exceeds the exact one to cover the float64 sum with any BLAS.", "",
             "| threads | batch | non-private min ms | non-private median ms | private min ms | private median ms | "
             "ratio of medians | noise alone us | noise floor | update and projection us | numpy standard_normal us | float margin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["runs"]:
        v = r["variants"]
        n, p, noise = v["non-private step"], v["private step"], v["noise alone"]
        floor = (n["median_s"] + noise["median_s"]) / n["median_s"]
        lines.append(f"| {r['threads']} | {r['batch']} | {n['min_s'] * 1e3:.3f} | {n['median_s'] * 1e3:.3f} | {p['min_s'] * 1e3:.3f} | "
                     f"{p['median_s'] * 1e3:.3f} | {p['ratio_of_medians']:.2f} | {noise['median_s'] * 1e6:.1f} | {floor:.2f} | "
                     f"{_median_us(v, 'update and projection')} | {v['numpy standard_normal']['median_s'] * 1e6:.1f} | "
                     f"{r['float_margin']:.2e} |")
    lines += ["", f"OpenDP's own sampler (`noise='opendp'`, grid 2^-30 of the std) for the same {s['parameters']:,} coordinates: "
              f"{s['opendp_noise_s'] * 1e3:.1f} ms, best of 3 ({s['opendp_noise_s'] / s['parameters'] * 1e6:.1f} us per coordinate).",
              "", "(c) Building the per-example kernels and the certified bound (one run each, default threads):", "",
              "| parameters | layers | global bound ms | per-step bound ms | K | e |", "|---:|---|---:|---:|---:|---:|"]
    for r in results["build"]:
        lines.append(f"| {r['parameters']:,} | {r['layers']} | {r['global_bound_s'] * 1e3:.3f} | {r['per_step_bound_s'] * 1e3:.3f} | "
                     f"{r['K']:.3g} | {r['e']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", nargs="+", default=["1", "default"], choices=list(bench_machine.THREAD_SETTINGS))
    p.add_argument("--models", type=int, default=None, help="only the first N models of (c)")
    bench_machine.add_output_options(p)

    def run(args) -> dict:
        results = {**bench_machine.record(sys.argv), "load_before": bench_machine.load()}
        results["step"] = step_comparison(batches=tuple(args.batches), rounds=args.rounds, thread_settings=tuple(args.threads))
        results["build"] = build_times(args.models)
        results["load_after"] = bench_machine.load()
        return results

    bench_machine.render_or_run(p.parse_args(), run, markdown)
