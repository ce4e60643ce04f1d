"""Functions that try to break the certified bounds, with an independent reference search.

The reference never touches our code generator or interval code: it evaluates
sympy.lambdify'd closed forms (gradient from sympy.diff) at dense samples and
polishes the best ones with scipy. A certificate below its result is unsound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp
from scipy import optimize

import opendp_hybridad as hd


@dataclass
class Case:
    name: str
    build: Callable[..., sp.Expr]
    box: dict[str, tuple[float, float]]


def _tanh_net(x1, x2, a, b, c, d, e, f, g, h):
    return g * sp.tanh(a * x1 + b * x2 + c) + h * sp.tanh(d * x1 + e * x2 + f)


CASES: list[Case] = [
    Case("logistic map x(1-x)", lambda x: x * (1 - x), {"x": (0, 1)}),
    Case("x exp(-xy)", lambda x, y: x * sp.exp(-x * y), {"x": (-2, 3), "y": (-1, 2)}),
    Case("logistic loss, linear model", lambda w1, w2, b, x1, x2, y: sp.log(1 + sp.exp(-y * (w1 * x1 + w2 * x2 + b))),
         {"w1": (-2, 2), "w2": (-2, 2), "b": (-1, 1), "x1": (0, 1), "x2": (0, 1), "y": (-1, 1)}),
    Case("tanh network, 2-2-1", _tanh_net, dict.fromkeys(["x1", "x2", "a", "b", "c", "d", "e", "f", "g", "h"], (-1, 1))),
    Case("narrow bump", lambda x, c: sp.exp(-(((x - c) / sp.Rational(1, 100)) ** 2)), {"x": (-1, 1), "c": (-0.5, 0.5)}),
    Case("age-adjusted BMI", lambda a, w, h: a * w / h**2, {"a": (18, 90), "w": (40, 200), "h": (1.4, 2.2)}),
    Case("smoothed norm", lambda x, y: sp.sqrt(x**2 + y**2 + 1), {"x": (-3, 2), "y": (-1, 4)}),
    Case("sigmoid of linear", lambda x, y: hd.sigmoid(3 * x - 2 * y), {"x": (-2, 2), "y": (-2, 2)}),
    Case("cubic x^3 - 3x", lambda x: x**3 - 3 * x, {"x": (-2, 2)}),
    Case("quotient (x-y)^2/(1+z^2)", lambda x, y, z: (x - y) ** 2 / (1 + z**2), {"x": (-1, 2), "y": (0, 1), "z": (-2, 2)}),
    Case("max(x, y) z", lambda x, y, z: sp.Max(x, y) * z, {"x": (-1, 1), "y": (-1, 1), "z": (-2, 3)}),
    Case("|x - 0.3| y", lambda x, y: sp.Abs(x - sp.Rational(3, 10)) * y, {"x": (-1, 1), "y": (0.5, 2)}),
    Case("log(1 + x^2 + y^2)", lambda x, y: sp.log(1 + x**2 + y**2), {"x": (-2, 2), "y": (-2, 2)}),
    Case("tanh(xy + z)", lambda x, y, z: sp.tanh(x * y + z), {"x": (-2, 2), "y": (-2, 2), "z": (-1, 1)}),
    Case("Runge 1/(1+x^2)", lambda x: 1 / (1 + x**2), {"x": (-3, 3)}),
    Case("product of four", lambda x, y, z, w: x * y * z * w, {"x": (-1, 1), "y": (-1, 1), "z": (-1, 1), "w": (-1, 1)}),
    Case("Gaussian ridge x exp(-x^2-y^2)", lambda x, y: x * sp.exp(-(x**2) - y**2), {"x": (-2, 2), "y": (-2, 2)}),
    Case("continuous where", lambda x: hd.where(x > 0.5, x**2, x - 0.25), {"x": (-1, 2)}),
    Case("Rosenbrock", lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2, {"x": (-2, 2), "y": (-1, 3)}),
    Case("fractional power x^0.3 y", lambda x, y: x**0.3 * y, {"x": (0.5, 2), "y": (-1, 1)}),
    Case("softmax share", lambda x, y, z: sp.exp(x) / (sp.exp(x) + sp.exp(y) + sp.exp(z)), {"x": (-2, 2), "y": (-2, 2), "z": (-2, 2)}),
    Case("sum of eight squares", lambda *v: sum((vi - sp.Rational(1, 2)) ** 2 for vi in v), {f"v{i}": (-1, 1) for i in range(8)}),
    Case("tent min(x, 1-x) y", lambda x, y: sp.Min(x, 1 - x) * y, {"x": (0, 1), "y": (1, 3)}),
    Case("polynomial in five", lambda x1, x2, x3, x4, x5: (x1 + x2 * x3) ** 2 - x4 * x5,
         {f"x{i}": (-1.5, 1) for i in range(1, 6)}),
]


def function_of(case: Case) -> hd.RecordFunction:
    schema = hd.Schema(case.box)
    return schema.function(case.build(*schema.symbols()), name=case.name)


def reference_search(expr: sp.Expr, symbols, box, quantity: str, samples: int = 20000, starts: int = 5, seed: int = 0) -> float:
    """Largest value of ``quantity`` ('grad2', 'max', 'min' negated) found by sampling and local optimisation."""
    if quantity == "grad2":
        grads = [sp.diff(expr, s) for s in symbols]
        target = sp.sqrt(sum(g**2 for g in grads))
    elif quantity == "max":
        target = expr
    else:
        target = -expr
    fn = sp.lambdify(symbols, target, modules=[{"sigmoid": lambda x: 1 / (1 + np.exp(-x)),
                                                  "softplus": lambda x: np.logaddexp(0, x),
                                                  "Heaviside": lambda x, h0=0.5: np.heaviside(x, h0)}, "numpy"])
    lo = np.array([b[0] for b in box.values()], dtype=float)
    hi = np.array([b[1] for b in box.values()], dtype=float)
    rng = np.random.default_rng(seed)
    pts = lo + rng.random((samples, lo.size)) * (hi - lo)
    corners = lo + (rng.integers(0, 2, size=(min(2 ** lo.size, 1024), lo.size))) * (hi - lo)
    pts = np.vstack([pts, corners])
    with np.errstate(all="ignore"):
        vals = np.broadcast_to(np.asarray(fn(*pts.T), dtype=float), (pts.shape[0],)).copy()
    vals[~np.isfinite(vals)] = -np.inf
    best = float(vals.max())
    for i in np.argsort(vals)[-starts:]:
        def neg(x):
            with np.errstate(all="ignore"):
                v = float(fn(*np.clip(x, lo, hi)))
            return -v if np.isfinite(v) else np.inf
        res = optimize.minimize(neg, pts[i], method="L-BFGS-B", bounds=list(zip(lo, hi, strict=True)))
        if np.isfinite(res.fun):
            best = max(best, -float(res.fun))
    return best
