"""DP-SGD parts, side by side.

    python bench/bench_dpsgd.py

(b) One step of ``auto`` mode with K <= C (no per-example norms, default table-sampler
    noise, update and projection) against a non-private numpy step (same batched gradient
    sum and update, no noise), over batch sizes; and OpenDP's own sampler for scale.
    The float margin is how much the noise's sensitivity exceeds the exact one to cover
    the float64 sum with any BLAS (``computed_sum_sensitivity``).
(c) Building the per-example kernels and the certified bound (with the forward error
    ``e``) for MLPs from about 10 thousand to 2.5 million parameters (global bound, and
    per-step bound with given weights); the paper's prototype took about 60 hours at 2.5 million.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import opendp.prelude as dp
from timing import best_of

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

dp.enable_features("contrib")  # noise="opendp" draws with OpenDP's Gaussian; the library only asserts the feature


def step_comparison(width: int = 128, batches: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048), repeats: int = 7) -> None:
    rng = np.random.default_rng(0)
    model = MLP([Dense(64, width, 0.05, 0.05, norm_ball=True), Dense(width, 10, 0.05, 0.05, norm_ball=True)],
                [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1 / 8)
    params = model.init(rng)
    size = model.num_parameters
    print(f"(b) 64-{width}-10 tanh MLP, {size} parameters; auto mode, K <= C = 3 (no per-example norms); "
          "private step = DPSGD.step (gradient sum, noise, update, projection onto the weight set)")
    print(f"    {'batch':>6s} {'non-private ms':>15s} {'private ms':>11s} {'ratio':>6s} {'noise us/coord':>15s} {'float margin':>13s}")
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

        # interleaved, best of several rounds, so drift hits both alike
        rounds = [(best_of(non_private, 1), best_of(private, 1), best_of(noise_alone, 1)) for _ in range(repeats * 20)]
        base, ours, alone = (min(v) for v in zip(*rounds, strict=True))
        margin = noise.sum_sensitivity / trainer.sensitivity - 1  # S + 2 N e + 2 N gamma_N (S + e), relative to S
        print(f"    {batch:>6d} {base * 1000:>15.3f} {ours * 1000:>11.3f} {ours / base:>6.2f} {alone / size * 1e6:>15.4f} {margin:>13.2e}")
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=256, epochs=1, learning_rate=0.1, mode="auto", clip=3.0, noise="opendp")
    opendp_noise = trainer.noise_function(size)
    t = best_of(lambda: opendp_noise(np.zeros(size)), 3)
    print(f"    OpenDP's own sampler (noise='opendp', grid 2^-30 of the std) for the same {size} coordinates: {t * 1000:.1f} ms "
          f"({t / size * 1e6:.1f} us per coordinate)")


def build_times() -> None:
    print("(c) building kernels + certified bound")
    print(f"    {'parameters':>12s} {'layers':>18s} {'global bound ms':>16s} {'per-step bound ms':>18s}   (K; e: row's float error)")
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
              f"   (K = {bound.upper:.3g}, e = {bound.rounding:.2g})")


if __name__ == "__main__":
    step_comparison()
    build_times()
