"""Certification speed and tightness.

    python bench/bench_certify.py [--repeats 20] [--time-budget 2] [--json bench/results/certify.json]
    python bench/bench_certify.py --markdown bench/results/certify.json   # the docs section, from the JSON

1. BMI (a in [18, 90], w in [40, 200], h in [1.4, 2.2]): time to certify K from
   a freshly declared function (differentiation, lowering, branch and bound,
   witness polish), and K against the exact 13120.0107015588.
2. The attack suite of tests/suite.py: per function, the certified K, the best
   value an independent search found (dense sampling + L-BFGS-B on sympy
   lambdify), and their ratio. A ratio below 1 would be a soundness bug.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import machine as bench_machine
from suite import CASES, function_of, reference_search

import opendp_hybridad as hd

BMI_K = 13120.0107015588


def bmi_timing(repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        schema = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
        a, w, h = schema.symbols()
        cert = schema.function(a * w / h**2).lipschitz()
        times.append(time.perf_counter() - t)
    print(f"BMI: K <= {cert.upper!r}  (exact {BMI_K}, factor {cert.upper / BMI_K:.15f})")
    print(f"     witness {cert.witness.value!r} at {cert.witness.point}")
    print(f"     declare + certify: median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over {repeats} runs")
    return {"K": cert.upper, "exact": BMI_K, "witness": cert.witness.value, "repeats": repeats, "times_s": times,
            "min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}


def suite(time_budget: float, cases: int | None = None) -> list[dict]:
    print(f"\n{'function':<34s} {'n':>2s} {'certified K':>14s} {'found':>14s} {'ratio':>9s} {'conv':>5s} {'boxes':>8s} {'time s':>7s}")
    worst = 0.0
    rows = []
    for case in CASES[:cases]:
        f = function_of(case)
        cert = f.lipschitz(time_budget=time_budget)
        found = reference_search(f.expr, list(f.symbols), case.box, "grad2")
        ratio = cert.upper / found
        worst = max(worst, ratio)
        flag = "" if ratio >= 1 - 1e-12 else "  UNSOUND"
        print(f"{case.name:<34s} {len(case.box):>2d} {cert.upper:>14.6g} {found:>14.6g} {ratio:>9.5f} "
              f"{'yes' if cert.converged else 'no':>5s} {cert.boxes:>8d} {cert.elapsed:>7.2f}{flag}")
        rows.append({"name": case.name, "n": len(case.box), "certified": cert.upper, "found": float(found), "ratio": ratio,
                     "converged": bool(cert.converged), "boxes": cert.boxes, "seconds": cert.elapsed})
    print(f"loosest ratio {worst:.4f}")
    return rows


def markdown(results: dict) -> str:
    b = results["bmi"]
    lines = [bench_machine.header(results) + " BMI with a in [18, 90], w in [40, 200], h in [1.4, 2.2]: "
             f"K <= {b['K']!r}, exact {b['exact']} (factor 1 + {b['K'] / b['exact'] - 1:.1e}); declaring the function and "
             f"certifying K takes {b['median_s'] * 1e3:.1f} ms median, {b['min_s'] * 1e3:.1f} ms min, {b['max_s'] * 1e3:.0f} ms "
             f"worst (the first run pays for lazy imports) over {b['repeats']} runs. Attack suite: time budget "
             f"{results['time_budget']} s per certificate.", "",
             "| function | inputs | certified K | found | ratio | converged | boxes | s |", "|---|---:|---:|---:|---:|:-:|---:|---:|"]
    for r in results["suite"]:
        name = r["name"].replace("|", "\\|")
        lines.append(f"| {name} | {r['n']} | {r['certified']:.6g} | {r['found']:.6g} | {r['ratio']:.5f} | "
                     f"{'yes' if r['converged'] else 'no'} | {r['boxes']} | {r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--time-budget", type=float, default=2.0)
    p.add_argument("--cases", type=int, default=None, help="only the first N cases of the attack suite")
    bench_machine.add_output_options(p)

    def run(args) -> dict:
        results = {**bench_machine.record(sys.argv), "load_before": bench_machine.load(), "time_budget": args.time_budget}
        results["bmi"] = bmi_timing(args.repeats)
        results["suite"] = suite(args.time_budget, args.cases)
        results["load_after"] = bench_machine.load()
        return results

    bench_machine.render_or_run(p.parse_args(), run, markdown)
