"""Overhead of progress reporting in DP-SGD: fit(progress=False) vs fit(progress=True).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_progress.py [--epochs 40] [--repeats 5]

Rounds interleaved (False, True, False, True, ...) after one warm-up of each; reports min and
median of each side and the ratio, and the machine. The data are synthetic (4000 x 16, a
16-32-2 MLP, batch 64, noise multiplier 1.0); ``seed`` fixes the noise for a like-for-like
comparison (a seeded run is not private).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import time

import numpy as np

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=float, default=40)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4000, 16))
    y = (x[:, 0] > 0).astype(int)
    model = MLP([Dense(16, 32, 1.0, 1.0), Dense(32, 2, 1.0, 1.0)], [Identity(), Identity()], SoftmaxCrossEntropy(),
                input_bound=4.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=64, epochs=args.epochs, learning_rate=0.5)

    def run(progress: bool) -> float:
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            trainer.fit(x, y, progress=progress, seed=1)
        return time.perf_counter() - t

    run(False)
    run(True)
    quiet, loud = [], []
    for _ in range(args.repeats):
        quiet.append(run(False))
        loud.append(run(True))
    print(f"machine: {platform.platform()}; {os.cpu_count()} cores; python {platform.python_version()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"progress=False min {min(quiet):.4f} median {statistics.median(quiet):.4f} s")
    print(f"progress=True  min {min(loud):.4f} median {statistics.median(loud):.4f} s")
    print(f"ratio of medians {statistics.median(loud) / statistics.median(quiet):.3f}, of mins {min(loud) / min(quiet):.3f}")


if __name__ == "__main__":
    main()
