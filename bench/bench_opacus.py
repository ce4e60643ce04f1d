"""Per-example clipped gradient sums: opendp-hybridad's per-layer kernels against Opacus (PyTorch, CPU).

    pip install torch==2.13.0 opacus && python bench/bench_opacus.py [--batch 256] [--repeats 20]

Same network (64-128-10, tanh, softmax cross-entropy), same batch, same clip norm.
Ours: ``MLP.gradient_sum(clip=C)`` (norms as ||delta|| ||a||, the clipped sum as one
product per layer). Opacus: hooks (``GradSampleModule``: per-sample gradients, then
clipping in ``DPOptimizer``) and ghost clipping (``grad_sample_mode="ghost"``) when
available. Noise is off on both sides (it is measured elsewhere). Reports examples per
second and the ratio.
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import best_of

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
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
    ours = best_of(lambda: model.gradient_sum(params, x, y, clip=C), args.repeats)

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
    opacus_hooks = best_of(hooks, args.repeats)
    results = {"opendp-hybridad (per-layer kernels, numpy)": ours, "Opacus hooks (GradSampleModule)": opacus_hooks}
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
        results["Opacus ghost clipping"] = best_of(ghost, args.repeats)
    except Exception as exc:
        print(f"(ghost clipping not measured: {type(exc).__name__}: {exc})")
    print(f"batch {B}, 64-128-10 tanh, clip {C:.3f} (the median norm), float64, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, t in results.items():
        print(f"  {name:<44s} {t * 1000:8.3f} ms   {B / t:12,.0f} examples/s   ratio to ours {t / ours:6.2f}")


if __name__ == "__main__":
    main()
