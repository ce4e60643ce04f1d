"""Private sum of age-adjusted BMI over 10 million rows, end to end, against hand-written numpy.

    python bench/bench_private_sum.py [--rows 10000000] [--repeats 5]

Ours: ``make_private_sum`` on a pandas DataFrame (schema checks, clamping to the
box, missing-value policy, compiled kernel, clamping to the certified range,
pairwise sum, OpenDP Laplace noise). Hand-written numpy: the same clamped sum,
computed from the same DataFrame, with no privacy at all. Best of N, interleaved.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.accounting import accounting_of
from opendp_hybridad.frame import make_frame_domain, make_private_sum, make_sum_of

dp.enable_features("contrib", "honest-but-curious")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "age": rng.uniform(10, 95, args.rows),       # some outside the box, to be clamped
        "weight": rng.uniform(35, 210, args.rows),
        "height": rng.uniform(1.3, 2.3, args.rows),
    })
    schema = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=30), weight=hd.Field(40, 200, missing="impute", impute=70),
                       height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
    a, w, h = schema.symbols()
    bmi = schema.function(a * w / h**2)
    lo, hi = bmi.range().lower, bmi.range().upper
    query = make_private_sum(schema, bmi, epsilon=1.0)
    exact = make_sum_of(make_frame_domain(schema), dp.symmetric_distance(), bmi)
    # the same query with the plain numpy backend (what a machine without numexpr runs)
    query_numpy = make_private_sum(schema, bmi, epsilon=1.0, backend="numpy")

    def numpy_clamped_sum() -> float:
        age = np.clip(frame["age"].to_numpy(), 18, 90)
        weight = np.clip(frame["weight"].to_numpy(), 40, 200)
        height = np.clip(frame["height"].to_numpy(), 1.4, 2.2)
        return float(np.clip(age * weight / height**2, lo, hi).sum())

    reference = numpy_clamped_sum()
    assert abs(exact(frame) - reference) <= 1e-9 * abs(reference), "the pipeline computes a different sum"
    variants = (("hand-written numpy (clamped sum, no privacy)", numpy_clamped_sum),
                ("opendp-hybridad private sum (numexpr backend)", lambda: query(frame)),
                ("opendp-hybridad private sum (numpy backend)", lambda: query_numpy(frame)),
                ("opendp-hybridad sum transformation only", lambda: exact(frame)))
    timings: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):
        for name, fn in variants:
            t = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t)
    base = min(timings["hand-written numpy (clamped sum, no privacy)"])
    print(f"rows: {args.rows}, best of {args.repeats}, noise scale {accounting_of(query).scale:.1f}, backend {bmi.compile().backend}")
    for name, ts in timings.items():
        print(f"  {name:<46s} {min(ts) * 1000:8.1f} ms   ratio {min(ts) / base:.3f}")


if __name__ == "__main__":
    main()
