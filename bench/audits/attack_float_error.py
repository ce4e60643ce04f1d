"""Adversarial audit of point_width_bound / point_values against 80-digit mpmath at float points.

    python bench/audits/attack_float_error.py
"""
from __future__ import annotations

import math
import sys

import mpmath as mp
import numpy as np
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis.float_error import point_values, point_width_bound

mp.mp.dps = 80
CASES = [
    ("1e16*x - 1e16*y", {"x": (0.1, 0.1 + 1e-15), "y": (0.1, 0.1 + 1e-15)}),
    ("(x - 0.1)*(x - 0.1)*1e30", {"x": (0.09, 0.11)}),
    ("x*y - y*x", {"x": (-1e150, 1e150), "y": (-1e150, 1e150)}),
    ("exp(x) - exp(y)", {"x": (700, 709), "y": (700, 709)}),
    ("log(x) - log(y)", {"x": (5e-324, 1e-300), "y": (1e-300, 1)}),
    ("1/(x - y)", {"x": (2, 3), "y": (0, 1)}),
    ("sigmoid(x) - sigmoid(y)", {"x": (-745, 745), "y": (-745, 745)}),
    ("softplus(x) - x", {"x": (-800, 800)}),
    ("tanh(x)*1e300 - tanh(y)*1e300", {"x": (-20, 20), "y": (-20, 20)}),
    ("where(x*y > 0.1, x*y, 0.1)", {"x": (0, 1), "y": (0, 1)}),
    ("where(x > 0.1, 1e10, 0)", {"x": (0, 1)}),
    ("max(x, y)*1e300 - min(x, y)*1e300", {"x": (0, 1.5), "y": (0, 1.5)}),
    ("x**0.5 - y**0.5", {"x": (0, 1e-300), "y": (0, 1)}),
    ("x**2.5*y**(1/3)", {"x": (0, 1e100), "y": (0, 1e-100)}),
    ("sqrt(x*x + y*y) - x", {"x": (1e150, 1e154), "y": (0, 1)}),
    ("abs(x - y) * 1e308", {"x": (0, 1), "y": (0, 1)}),
]


def main() -> int:
    rng = np.random.default_rng(1)
    bad = 0
    for text, box in CASES:
        schema = hd.Schema(box)
        f = hd.RecordFunction(text, schema)
        w = point_width_bound(f)
        names = list(box)
        lo = np.array([box[n][0] for n in names], float)
        hi = np.array([box[n][1] for n in names], float)
        u = rng.random((400, len(names)))
        pts = np.clip(lo + u * (hi - lo), lo, hi)
        pts = np.vstack([pts, lo, hi, np.clip(np.nextafter(pts[:20], np.inf), lo, hi)])
        mids = point_values(f, [pts[:, k] for k in range(len(names))])
        worst = 0.0
        for p, m in zip(pts, mids, strict=False):
            sub = {sp.Symbol(n): sp.Rational(float(v)) for n, v in zip(names, p, strict=False)}
            sub = {s: sub[sp.Symbol(str(s))] for s in f.expr.free_symbols}
            try:
                r = mp.mpf(sp.N(f.expr.subs(sub), 60))
            except (TypeError, ValueError):
                continue
            if not np.isfinite(m):
                continue
            err = float(abs(mp.mpf(float(m)) - r))
            worst = max(worst, err)
            if math.isfinite(w) and err > w / 2 * (1 + 1e-9) + 1e-320:
                bad += 1
                print(f"  UNSOUND {text} at {p.tolist()}: mid {m!r} real {mp.nstr(r, 20)} err {err:.3e} > W/2 {w / 2:.3e}")
                break
        print(f"{text:40s} W={w:.3e} worst |mid-real|={worst:.3e}")
    return bad


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
