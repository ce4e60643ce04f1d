"""Per-example clipped gradient sums: opendp-hybridad's per-layer kernels against Opacus (PyTorch, CPU).

    pip install torch==2.13.0 opacus && python bench/bench_opacus.py [--batch 256] [--repeats 20] [--json bench/results/opacus.json]
    python bench/bench_opacus.py --markdown bench/results/opacus.json   # the docs section, from the JSON

Same network (64-128-10, tanh, softmax cross-entropy), same batch, same clip norm.
Ours: ``MLP.gradient_sum(clip=C)`` (norms as ||delta|| ||a||, the clipped sum as one
product per layer). Opacus: hooks (``GradSampleModule``: per-sample gradients, then
clipping in ``DPOptimizer``) and ghost clipping (``grad_sample_mode="ghost"``) when
available. Noise is off on both sides (it is measured elsewhere). Every variant once per
round, rounds interleaved after two warm-up rounds, with one BLAS/torch thread and with the
default threads; reports min and median, examples per second and the ratio of medians.
"""

from __future__ import annotations

import argparse
import sys

import machine as bench_machine
import numpy as np

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

OURS = "opendp-hybridad (per-layer kernels, numpy)"


def main(args) -> dict:
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    B = args.batch
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (B, 64))
    y = rng.integers(0, 10, B)
    model = MLP([Dense(64, 128, 1.0, 1.0), Dense(128, 10, 1.0, 1.0)], [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    params = model.init(rng)
    C = float(np.median(model.per_example_norms(params, x, y)))  # half the examples are clipped

    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(params[0][0]))
        net[0].bias.copy_(torch.tensor(params[0][1]))
        net[2].weight.copy_(torch.tensor(params[1][0]))
        net[2].bias.copy_(torch.tensor(params[1][1]))
    xt, yt = torch.tensor(x), torch.tensor(y)
    gsm = GradSampleModule(net, loss_reduction="sum")
    optimizer = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=B,
                            loss_reduction="sum")
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    def hooks():
        optimizer.zero_grad()
        loss_fn(gsm(xt), yt).backward()
        optimizer.pre_step()  # per-sample clipping and summation, no noise

    hooks()
    # same answer before timing: the clipped sums agree (Opacus divides by norm + 1e-6, hence the tolerance)
    ours_sum = model.gradient_sum(params, x, y, clip=C)
    np.testing.assert_allclose(net[0].weight.summed_grad.numpy() if hasattr(net[0].weight, "summed_grad") else
                               gsm._module[0].weight.summed_grad.numpy(), ours_sum[0][0], rtol=1e-5, atol=1e-5)
    variants = {"opendp-hybridad (per-layer kernels, numpy)": lambda: model.gradient_sum(params, x, y, clip=C),
                "Opacus hooks (GradSampleModule)": hooks}
    skipped = []
    try:
        from opacus import PrivacyEngine

        net2 = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)).double()
        data = torch.utils.data.TensorDataset(xt, yt)
        loader = torch.utils.data.DataLoader(data, batch_size=B)
        engine = PrivacyEngine()
        m2, opt2, crit2, _ = engine.make_private(module=net2, optimizer=torch.optim.SGD(net2.parameters(), lr=0.0),
                                                 criterion=torch.nn.CrossEntropyLoss(reduction="sum"), data_loader=loader,
                                                 noise_multiplier=0.0, max_grad_norm=C, grad_sample_mode="ghost",
                                                 poisson_sampling=False, loss_reduction="sum")

        def ghost():
            opt2.zero_grad()
            crit2(m2(xt), yt).backward()
            opt2.pre_step()

        ghost()
        variants["Opacus ghost clipping"] = ghost
    except Exception as exc:
        skipped.append(f"ghost clipping: {type(exc).__name__}: {exc}")
        print(f"(ghost clipping not measured: {type(exc).__name__}: {exc})")
    import opacus

    results = {**bench_machine.record(sys.argv), "batch": B, "clip": C, "rounds": args.repeats, "warmup": 2,
               "load_before": bench_machine.load(), "skipped": skipped, "runs": []}
    print(f"batch {B}, 64-128-10 tanh, clip {C:.3f} (the median norm), float64, torch {torch.__version__}, opacus {opacus.__version__}")
    for label in args.threads:
        with bench_machine.threads(bench_machine.THREAD_SETTINGS[label]) as counts:
            v = bench_machine.summary(bench_machine.interleaved(variants, args.repeats, 2), OURS)
            results["runs"].append({"threads": label, "thread_counts": counts, "load_after": bench_machine.load(), "variants": v})
            for name, r in v.items():
                print(f"  threads {label:>7s} {name:<44s} median {r['median_s'] * 1000:8.3f} ms   "
                      f"{B / r['median_s']:12,.0f} examples/s   ratio to ours {r['ratio_of_medians']:6.2f}")
    results["load_after"] = bench_machine.load()
    return results


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" Per-example clipped gradient sum, 64-128-10 tanh MLP, softmax cross-entropy, "
             f"batch {results['batch']}, clip {results['clip']:.3f} (the median norm), float64 on both sides, noise off; "
             f"{results['rounds']} rounds after {results['warmup']} warm-up, interleaved; ratio = peer median / our median "
             "(above 1: ours faster).", "",
             "| threads | variant | min ms | median ms | examples/s (median) | peer / ours (medians) |", "|---|---|---:|---:|---:|---:|"]
    for run in results["runs"]:
        for name, r in run["variants"].items():
            lines.append(f"| {run['threads']} | {name} | {r['min_s'] * 1e3:.3f} | {r['median_s'] * 1e3:.3f} | "
                         f"{results['batch'] / r['median_s']:,.0f} | {r['ratio_of_medians']:.2f} |")
    if results["skipped"]:
        lines += ["", "Not measured: " + "; ".join(results["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def cli() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20, help="timed rounds")
    p.add_argument("--threads", nargs="+", default=["1", "default"], choices=list(bench_machine.THREAD_SETTINGS))
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), main, markdown)


if __name__ == "__main__":
    cli()
