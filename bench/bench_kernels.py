"""Compiled BMI kernels against hand-written numpy, side by side in one run.

    python bench/bench_kernels.py [--rows 10000000] [--repeats 7]

Reports the best-of-N wall time of each variant and its ratio to hand-written
numpy; the fused numexpr backend is measured too when installed.
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
from timing import best_of

import opendp_hybridad as hd
from opendp_hybridad.compile import available_backends


def hand_value(a, w, h):
    return a * w / h**2


def hand_norm(a, w, h):
    return np.sqrt(4 * a**2 * w**2 + h**2 * (a**2 + w**2)) / h**3


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
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

    results = {"rows": args.rows, "repeats": args.repeats, "machine": platform.machine(), "cpus": __import__("os").cpu_count()}
    for quantity, hand, ours in (("value", hand_value, "value"), ("gradient_norm", hand_norm, "gradient_norm")):
        # interleave the variants so that machine noise hits them alike
        timings = {"hand-written numpy": [], **{f"compiled ({b})": [] for b in kernels}}
        for _ in range(args.repeats):
            timings["hand-written numpy"].append(best_of(lambda hand=hand: hand(a, w, h), 1))
            for b, k in kernels.items():
                fn = getattr(k, ours)
                timings[f"compiled ({b})"].append(best_of(lambda fn=fn: fn(a=a, w=w, h=h), 1))
        base = min(timings["hand-written numpy"])
        results[quantity] = {name: {"seconds": min(t), "ratio_to_numpy": min(t) / base} for name, t in timings.items()}
    print(json.dumps(results, indent=2))
    print()
    for quantity in ("value", "gradient_norm"):
        for name, r in results[quantity].items():
            print(f"{quantity:>14s}  {name:<22s} {r['seconds'] * 1000:9.1f} ms   ratio {r['ratio_to_numpy']:.3f}")
    return results


if __name__ == "__main__":
    main()
