"""DP-SGD parts, side by side.

    python bench/bench_dpsgd.py

(b) One step of ``auto`` mode with K <= C (no per-example norms, OpenDP noise) against
    a non-private numpy step (same batched gradient sum and update, no noise), and the
    split of our step between gradient and noise.
(c) Building the per-example kernels and the certified bound for MLPs from about
    10 thousand to 2.5 million parameters (global bound, and per-step bound with
    given weights); the paper's prototype took about 60 hours at 2.5 million.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from timing import best_of

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh


def step_comparison(batch: int = 256, width: int = 128, repeats: int = 5) -> None:
    rng = np.random.default_rng(0)
    model = MLP([Dense(64, width, 0.05, 0.05, norm_ball=True), Dense(width, 10, 0.05, 0.05, norm_ball=True)],
                [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1 / 8)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=batch, epochs=1, learning_rate=0.1, mode="auto", clip=3.0)
    assert not trainer.clipping_needed, "the example needs K <= C"
    params = model.init(rng)
    x = rng.uniform(-1 / 8, 1 / 8, (batch, 64))
    y = rng.integers(0, 10, batch)
    size = model.num_parameters
    noise = trainer.noise_measurement(size)

    def non_private():
        g = model.gradient_sum(params, x, y, clip=None)
        return [(W - 0.1 * gW / batch, b - 0.1 * gb / batch) for (W, b), (gW, gb) in zip(params, g, strict=True)]

    def private():
        g = model.gradient_sum(params, x, y, clip=None)
        flat = np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in g])
        noisy = np.asarray(noise(flat.tolist()))
        return noisy

    def best(fn):
        return best_of(fn, repeats)

    from opendp_hybridad.dpsgd.noise import gaussian_noise_for

    table = gaussian_noise_for(trainer.sensitivity, trainer.noise_multiplier, size)

    def private_table():
        g = model.gradient_sum(params, x, y, clip=None)
        flat = np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in g])
        return table(flat)

    base, ours, ours_table = best(non_private), best(private), best(private_table)
    grad_only = best(lambda: model.gradient_sum(params, x, y, clip=None))
    print(f"(b) {size} parameters, batch {batch}, K = {trainer.bound.upper:.3f} <= C = 3 (no norms computed)")
    print(f"    non-private numpy step {base * 1000:.2f} ms; auto-mode private step {ours * 1000:.2f} ms; ratio {ours / base:.1f}")
    print(f"    of which the gradient sum {grad_only * 1000:.2f} ms and OpenDP noise {(ours - grad_only) * 1000:.2f} ms "
          f"({(ours - grad_only) / size * 1e6:.1f} us per coordinate)")
    print(f"    with the table-inversion discrete Gaussian: private step {ours_table * 1000:.2f} ms; ratio {ours_table / base:.2f} "
          f"(noise {(ours_table - grad_only) / size * 1e6:.2f} us per coordinate, statistical distance "
          f"{table.statistical_distance:.2e} per coordinate)")


def build_times() -> None:
    print("(c) building kernels + certified bound")
    print(f"    {'parameters':>12s} {'layers':>18s} {'global bound ms':>16s} {'per-step bound ms':>18s}")
    rng = np.random.default_rng(0)
    for widths in ([64, 128, 10], [256, 256, 256, 10], [512, 512, 512, 512, 10], [784, 1024, 1024, 512, 10],
                   [1024, 1024, 1024, 1024, 10], [1024, 1536, 1024, 10]):
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
        print(f"    {model.num_parameters:>12,d} {'-'.join(map(str, widths)):>18s} {build * 1000:>16.3f} {per_step * 1000:>18.3f}"
              f"   (K = {bound.upper:.3g})")


if __name__ == "__main__":
    step_comparison()
    build_times()
