"""Adversarial audit: hand-made expressions and boxes run through the fuzzer's 70-digit reference.

    python bench/audits/attack_certificates.py            # all cases
    python bench/audits/attack_certificates.py 3 7        # selected case indices
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import sympy as sp
from fuzz.ground_truth import run_expression

import opendp_hybridad as hd

x, y, z = sp.symbols("x y z", real=True)
H, Pw = sp.Heaviside, sp.Piecewise
F = sp.Float
TINY = 5e-324


def W(c, a, b):
    return Pw((a, c), (b, True))


CASES = [
    # jumps/kinks whose derivatives cancel or that hide behind algebra
    (H(x) + H(-x), {"x": (-1, 1)}),
    (H(x) * x + H(-x) * (-x), {"x": (-1, 1)}),
    (sp.sign(x) * x, {"x": (-1, 1)}),
    (sp.sign(x) ** 2, {"x": (-1, 1)}),
    (W(x > y, x, y) - sp.Max(x, y), {"x": (0, 1), "y": (0, 1)}),
    (W(x > sp.sqrt(2) / 2, x, F(0.7071067811865476)), {"x": (0, 1)}),
    (W(x > sp.pi / 4, sp.sin(x) if False else x, sp.pi / 4), {"x": (0, 1)}),
    (W(x > 1e-300, x * 1e300, 1.0), {"x": (0, 1e-290)}),
    (W(x > 5e-324, 1.0, 0.0), {"x": (0, 1e-320)}),
    (W(x * y > 0.25, x * y, 0.25), {"x": (0.1, 1), "y": (0.1, 1)}),
    (W(x * y > 0.3, x * y, 0.3 + 1e-17), {"x": (0.1, 1), "y": (0.1, 1)}),
    (W(x + y > 0.3, x + y, 0.3), {"x": (0, 0.2), "y": (0, 0.2)}),
    (W(x + y > 0.1 + 0.2, 1.0, 0.0), {"x": (0, 0.2), "y": (0, 0.2)}),
    (W(x > 0.5, W(y > 0.5, x + y, x + 0.5), W(y > 0.5, 0.5 + y, 1.0)), {"x": (0, 1), "y": (0, 1)}),
    (W(x > 0.5, 2 * x - 1, 0) + W(x < 0.5, 1 - 2 * x, 0), {"x": (0, 1)}),
    (W(x ** 2 > 0.5, x ** 2, 0.5), {"x": (-1, 1)}),
    (W(x ** 3 - x > 0, x ** 3 - x, 0), {"x": (-2, 2)}),
    (W(2 * x > 1, x, 0.5), {"x": (0, 1)}),
    (W(x / 3 > 0.1, 3 * x, 0.9), {"x": (0, 1)}),
    (W(x / 3 > sp.Rational(1, 10), x / 3, sp.Rational(1, 10)), {"x": (0, 1)}),
    (W(x > 1e300, x, 1e300), {"x": (-1.7e308, 1.7e308)}),
    (W(1e300 * x > 1, 1e300 * x, 1), {"x": (0, 1)}),
    (W(x > 0.5, 1e16 * (x - 0.5), 0), {"x": (0, 1)}),
    (sp.Min(x, 1 - x) * 1e308, {"x": (0, 1)}),
    (sp.Abs(x - 0.1) + sp.Abs(x - 0.2) - sp.Abs(x - 0.15), {"x": (0, 0.3)}),
    (sp.Max(x, y, z) - sp.Min(x, y, z), {"x": (0, 1), "y": (0, 1), "z": (0, 1)}),
    (sp.Min(sp.Max(x, 0.1), 0.1 + 2**-50), {"x": (0, 1)}),
    # cancellation / dynamic range
    ((x + 1e16) - 1e16, {"x": (0, 1)}),
    (sp.exp(x) - 1 - x, {"x": (-1e-8, 1e-8)}),
    (sp.log(1 + x) - x, {"x": (-1e-9, 1e-9)}),
    (x * y - y * x + x, {"x": (1e-300, 1e300), "y": (-1, 1)}),
    (sp.exp(x), {"x": (700, 709.78)}),
    (sp.exp(x) - sp.exp(x - 1e-10), {"x": (700, 709)}),
    (sp.log(x), {"x": (5e-324, 1e-300)}),
    (1 / x, {"x": (1e-308, 1)}),
    (1 / x, {"x": (5e-324, 1e-320)}),
    (sp.sqrt(x), {"x": (0, 1e-300)}),
    (x ** sp.Rational(1, 3), {"x": (0, 1)}),
    (x ** F(0.5), {"x": (0, 4)}),
    (x ** F(2.5), {"x": (0, 1e120)}),
    (x ** sp.Rational(7, 3), {"x": (1e-200, 1e100)}),
    (x ** y, {"x": (0.5, 2), "y": (-3, 3)}),
    (x ** y, {"x": (1e-300, 1e-200), "y": (0.5, 1)}),
    ((1 + x) ** (1 / x), {"x": (1e-12, 1e-6)}),
    (x ** 5 - y ** 5, {"x": (1e60, 1e61), "y": (1e60, 1e61)}),
    (x * x * x - x ** 3, {"x": (-1e100, 1e100)}),
    (x ** 2 - 2 * x * y + y ** 2 - (x - y) ** 2, {"x": (-1e150, 1e150), "y": (-1e150, 1e150)}),
    # library functions at extremes
    (hd.sigmoid(x), {"x": (-800, -700)}),
    (hd.sigmoid(x) - 1, {"x": (30, 40)}),
    (hd.softplus(x), {"x": (-800, -700)}),
    (hd.softplus(x) - x, {"x": (30, 800)}),
    (sp.tanh(x) - 1, {"x": (15, 25)}),
    (sp.tanh(x), {"x": (-1e-310, 1e-310)}),
    (hd.sigmoid(x) * (1 - hd.sigmoid(x)), {"x": (-750, 750)}),
    (sp.log(hd.sigmoid(x)), {"x": (-800, 40)}),
    (sp.log(1 - hd.sigmoid(x)), {"x": (-40, 36)}),
    (sp.log(sp.tanh(x)), {"x": (1e-300, 20)}),
    # tiny / huge boxes
    (x * y, {"x": (1e300, 1.7e308), "y": (1e-300, 1e-290)}),
    (x + y, {"x": (1e308, 1.7976931348623157e308), "y": (0, 1e308)}),
    (x - y, {"x": (1.7e308, 1.7976931348623157e308), "y": (-1.7976931348623157e308, -1.7e308)}),
    (x * 1e-300 * 1e-300, {"x": (1, 2)}),
    (sp.sqrt(x ** 2 + y ** 2), {"x": (1e200, 1e300), "y": (1e200, 1e300)}),
    (sp.sqrt(x ** 2 + y ** 2), {"x": (1e-200, 1e-160), "y": (1e-200, 1e-160)}),
    (x, {"x": (0.1, 0.1 + 2**-52)}),
    (1e300 * x * y, {"x": (1e-300, 2e-300), "y": (1e300, 1e300)}),
]


def main(selected: list[int]) -> int:
    bad = 0
    for i, (expr, box) in enumerate(CASES):
        if selected and i not in selected:
            continue
        names = list(box)
        syms = [sp.Symbol(n, real=True) for n in names]
        t = time.perf_counter()
        res = run_expression(expr, syms, names, [box[n] for n in names], tolerance=1e-3, time_budget=1.0,
                             case_timeout=40, truth_timeout=40)
        dt = time.perf_counter() - t
        outs = " ".join(f"{k}={v.split(':')[-1]}" for k, v in res.outcomes.items())
        print(f"[{i}] {expr}  box={box}  ({dt:.1f}s) {outs} status={res.status}")
        for f in res.findings:
            if f.kind in ("unsound", "crash", "timeout", "nonfinite"):
                bad += 1
            print(f"     FINDING {f.kind} {f.quantity}: cert={f.certified} true={f.true} at={f.witness} {f.detail[:300]}")
    return bad


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]]) and 1)
