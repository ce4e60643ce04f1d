"""The clipped per-example gradient sum on a 1.07M-parameter MLP against a hand-written numpy gradient (no privacy).

    python bench/bench_gradient_sum.py [--batches 256 1024] [--rounds 15] [--json bench/results/gradient_sum.json]
    python bench/bench_gradient_sum.py --markdown bench/results/gradient_sum.json   # the docs section, from the JSON

Network 784-1024-256-10 (1,068,810 parameters), tanh, softmax cross-entropy, float64. Variants:
the batch's plain gradient written by hand in numpy (forward, backward, one product per layer:
what a non-private step computes); ``MLP.gradient_sum(clip=None)`` (ours, no clipping); and
``MLP.gradient_sum(clip=C)`` with C the median per-example norm, so half the examples are clipped
(ours: per-example norms as ||delta|| ||a||, then the clipped sum as one product per layer, rows in
equal blocks of rows, each product written in place); and the same clipped sum into a preallocated
``out`` (what DP-SGD calls: one flat vector reused every step), and the unclipped sum into ``out``
(its floor: what is left is the clipping, each example's norm and factor). Every variant once per round, rounds
interleaved after two warm-up rounds, with one BLAS thread and with the default threads; min, median
and the ratio of medians to numpy. The issue's goal: the clipped sum at most 1.0x the hand-written
numpy gradient.

What is compared: the numpy gradient and ours with ``out=None`` both allocate their results (8.5 MB
here); ours into ``out`` does not, as in DP-SGD. Each timed call is preceded by an untimed call of the
same variant (``interleaved(settle=True)``), so each is timed in its own steady state: what the
previous variant allocated and freed (glibc returns a large free top of the heap to the system, and
the next call faults those pages in again, about 2.5 us per 4 KiB page on the reference VM) is not
charged to the next one. Within a variant's own calls such faults do count: with ``out=None``, the
fresh result plus a block's temporaries can exceed glibc's trim threshold, and each call then faults
its pages in again (about 3,700 faults, 9 ms, per 256-row call on the reference machine), which the
``out`` variant does not pay.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import machine as bench_machine
import numpy as np

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

WIDTHS = (784, 1024, 256, 10)
NUMPY = "hand-written numpy gradient (no clipping, no privacy)"


def numpy_gradient(params, x, y):
    """Plain batched backpropagation for tanh layers and a softmax cross-entropy output."""
    acts = [x]
    for i, (W, b) in enumerate(params):
        z = acts[-1] @ W.T + b
        acts.append(np.tanh(z) if i < len(params) - 1 else z)
    z = acts[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    delta = p
    grads = []
    for i in range(len(params) - 1, -1, -1):
        grads.append((delta.T @ acts[i], delta.sum(axis=0)))
        if i:
            delta = (delta @ params[i][0]) * (1.0 - acts[i] ** 2)
    return grads[::-1]


def run(args) -> dict:
    rng = np.random.default_rng(0)
    layers = [Dense(i, o, 1.0, 1.0) for i, o in itertools.pairwise(WIDTHS)]
    model = MLP(layers, [Tanh()] * (len(layers) - 1) + [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    params = model.init(rng)
    results = {**bench_machine.record(sys.argv), "network": "-".join(map(str, WIDTHS)), "parameters": model.num_parameters,
               "rounds": args.rounds, "warmup": 2, "settle": True, "threaded_blocks": True, "load_before": bench_machine.load(), "runs": []}
    for batch in args.batches:
        x = rng.uniform(-1, 1, (batch, WIDTHS[0]))
        y = rng.integers(0, WIDTHS[-1], batch)
        C = float(np.median(model.per_example_norms(params, x, y)))
        # the same answer before timing: ours unclipped is numpy's gradient up to rounding
        ours = model.gradient_sum(params, x, y, clip=None)
        for (gW, gb), (nW, nb) in zip(ours, numpy_gradient(params, x, y), strict=True):
            np.testing.assert_allclose(gW, nW, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(gb, nb, rtol=1e-9, atol=1e-9)
        out = np.empty(model.num_parameters)
        variants = {NUMPY: lambda x=x, y=y: numpy_gradient(params, x, y),
                    "ours, no clipping": lambda x=x, y=y: model.gradient_sum(params, x, y, clip=None),
                    "ours, clipped at the median norm": lambda x=x, y=y, C=C: model.gradient_sum(params, x, y, clip=C),
                    "ours, no clipping, into out":
                        lambda x=x, y=y, out=out: model.gradient_sum(params, x, y, clip=None, out=out),
                    "ours, clipped at the median norm, into out (DP-SGD)":
                        lambda x=x, y=y, C=C, out=out: model.gradient_sum(params, x, y, clip=C, out=out)}
        for label in args.threads:
            with bench_machine.threads(bench_machine.THREAD_SETTINGS[label]) as counts:
                v = bench_machine.summary(bench_machine.interleaved(variants, args.rounds, 2, settle=True), NUMPY)
            results["runs"].append({"batch": batch, "threads": label, "thread_counts": counts, "clip": C, "variants": v,
                                    "load_after": bench_machine.load()})
            for name, r in v.items():
                print(f"batch {batch:>5d} threads {label:>7s} {name:<55s} min {r['min_s'] * 1e3:8.2f} median "
                      f"{r['median_s'] * 1e3:8.2f} ms  ratio {r['ratio_of_medians']:.2f}")
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" Gradient sums on the {results['network']} tanh MLP ({results['parameters']:,} "
             f"parameters), softmax cross-entropy, float64; {results['rounds']} rounds after {results['warmup']} warm-up, "
             "interleaved, each timed call after an untimed one of the same variant; "
             "ratio = median over the hand-written numpy gradient's median (below 1: ours faster). "
             + ("Ours keeps the caller's BLAS threads when the batch is one block of at least 2^22 rows times parameters "
                "(batch 256 here) and runs BLAS on one thread otherwise (batch 1024: four blocks, the later ones added "
                "through scipy's BLAS, a second thread pool; threadpoolctl, in nn/sequential.py)." if results.get("threaded_blocks")
                else "Ours ran BLAS on one thread whatever the setting (threadpoolctl, in nn/sequential.py)."), "",
             "| batch | threads | variant | min ms | median ms | ratio of medians |", "|---:|---|---|---:|---:|---:|"]
    for run in results["runs"]:
        for name, r in run["variants"].items():
            lines.append(f"| {run['batch']} | {run['threads']} | {name} | {r['min_s'] * 1e3:.2f} | {r['median_s'] * 1e3:.2f} | "
                         f"{r['ratio_of_medians']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", nargs="+", default=["1", "default"], choices=list(bench_machine.THREAD_SETTINGS))
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
