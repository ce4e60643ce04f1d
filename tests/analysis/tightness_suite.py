"""A fixed suite of smooth functions of 1 to 20 fields with their true Lipschitz constants (issue 14).

Each case's truth ``K* = ||grad f(x*)||_2`` is the gradient norm at one point ``x*`` of the
box, evaluated at 80 digits (mpmath, from sympy's own derivatives, lambdified to mpmath:
no code of the library's analysis is used). It is therefore a *lower* bound of the true
``K = sup ||grad f||_2`` that is attained at ``x*``; a certificate below it is unsound, and
``certified / K*`` is at least the real over-estimation factor. The candidate points are

* ``closed form``: the argmax known analytically (stated per case), and
* ``multistart``: the box's centre, corners (all of them up to 10 fields, else 512 random)
  and random points, the best 12 polished by L-BFGS-B in float on sympy's lambdified
  ``||grad f||^2``, then a few Newton steps in mpmath (80 digits) on the free coordinates
  (those not at a bound), kept only if they raise the 80-digit value and stay in the box.

The method that gave the winning point is recorded (``Truth.how``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import mpmath
import numpy as np
import sympy as sp
from scipy import optimize

import opendp_hybridad as hd

DPS = 80


@dataclass
class TightCase:
    name: str
    build: Callable[..., sp.Expr]
    box: dict[str, tuple[float, float]]
    #: an analytic argmax (field values), when one is known
    closed_form: Callable[[], list[float]] | None = None
    note: str = ""
    #: in the fast test subset
    fast: bool = False
    tags: list[str] = field(default_factory=list)


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _box(prefix: str, n: int, lo: float, hi: float) -> dict[str, tuple[float, float]]:
    return dict.fromkeys(_names(prefix, n), (lo, hi))


def _weights(seed: int, shape: tuple[int, ...], scale: int = 100) -> np.ndarray:
    """Fixed small weights as exact decimals (k / 100), so the expression has rational constants."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(size=shape) * scale) / scale


def _mlp(act: Callable[[sp.Expr], sp.Expr], seed: int, widths: tuple[int, ...]) -> Callable[..., sp.Expr]:
    """A fixed-weight MLP ``x -> w_out . act(W x + b)`` (one hidden layer per width after the first)."""
    def build(*xs: sp.Expr) -> sp.Expr:
        h = list(xs)
        for layer, (a, b) in enumerate(itertools.pairwise(widths)):
            W = _weights(seed + layer, (b, a))
            bias = _weights(seed + 100 + layer, (b,), 10)
            z = [sum(sp.Rational(str(W[i, j])) * h[j] for j in range(a)) + sp.Rational(str(bias[i])) for i in range(b)]
            h = [act(v) for v in z]
        wo = _weights(seed + 200, (widths[-1],))
        return sum(sp.Rational(str(wo[i])) * h[i] for i in range(widths[-1]))
    return build


def _logsumexp_argmax(n: int) -> Callable[[], list[float]]:
    """The argmax of ``||softmax(x)||_2`` on ``[-1, 1]^n``: ``k`` fields at 1 and the rest at -1, the best ``k``.

    With ``s_i = e^(x_i)``, ``||softmax||^2 = sum s_i^2 / (sum s_i)^2``; along one coordinate it is
    ``(s^2 + A) / (s + B)^2``, whose derivative has the sign of ``s B - A``: falling, then rising, so its
    maximum over an interval is at an end. Fixing the coordinates one by one, the maximum over the box
    is at a vertex, and by symmetry a vertex's value depends only on how many fields are at 1. (The
    maximiser is not always one field at 1: ``k = 1`` for 10 fields, ``k = 2`` for 20.)
    """
    e = mpmath.e

    def value(k: int) -> mpmath.mpf:
        with mpmath.workdps(DPS):
            return mpmath.sqrt(k * e**2 + (n - k) / e**2) / (k * e + (n - k) / e)

    best = max(range(n + 1), key=value)
    return lambda: [1.0] * best + [-1.0] * (n - best)


_Q10 = _weights(7, (10, 10), 10)
_A10 = sp.Matrix(10, 10, lambda i, j: sp.Rational(str(_Q10[i, j] + _Q10[j, i])))


def _quadratic(*xs: sp.Expr) -> sp.Expr:
    x = sp.Matrix(xs)
    return (x.T * _A10 * x)[0, 0] / 2


CASES: list[TightCase] = [
    # -- the functions
    TightCase("logsumexp, 10 fields", lambda *x: sp.log(sum(sp.exp(v) for v in x)), _box("x", 10, -1, 1),
              closed_form=_logsumexp_argmax(10), note="argmax (1, -1, ..., -1): a vertex, best k", tags=["issue"]),
    TightCase("logsumexp, 20 fields", lambda *x: sp.log(sum(sp.exp(v) for v in x)), _box("x", 20, -1, 1),
              closed_form=_logsumexp_argmax(20), note="argmax (1, 1, -1, ..., -1): a vertex, best k", tags=["issue"]),
    TightCase("sqrt(sum of 15 squares + 1e-6)", lambda *x: sp.sqrt(sum(v**2 for v in x) + sp.Rational(1, 10**6)),
              _box("x", 15, -1, 1), closed_form=lambda: [1.0] * 15, note="|grad| = r / sqrt(r^2 + 1e-6), largest at a corner",
              tags=["issue"]),
    TightCase("Gaussian bump, 12 fields", lambda *x: sp.exp(-sum(v**2 for v in x) / 2), _box("x", 12, -2, 2),
              closed_form=lambda: [1.0] + [0.0] * 11, note="|grad| = r exp(-r^2/2), largest on the sphere r = 1",
              tags=["issue"]),
    TightCase("tanh MLP 4-3-1", _mlp(sp.tanh, 11, (4, 3, 1)), _box("x", 4, -1, 1), fast=True, tags=["issue", "mlp"]),
    TightCase("tanh MLP 8-6-1", _mlp(sp.tanh, 21, (8, 6, 1)), _box("x", 8, -1, 1), tags=["issue", "mlp"]),
    TightCase("tanh MLP 6-4-3-1", _mlp(sp.tanh, 31, (6, 4, 3, 1)), _box("x", 6, -1, 1), tags=["issue", "mlp"]),
    TightCase("sigmoid MLP 5-4-1", _mlp(hd.sigmoid, 41, (5, 4, 1)), _box("x", 5, -2, 2), fast=True, tags=["issue", "mlp"]),
    TightCase("sigmoid MLP 10-5-1", _mlp(hd.sigmoid, 51, (10, 5, 1)), _box("x", 10, -1, 1), tags=["issue", "mlp"]),
    # -- the attack suite's smooth cases (tests/suite.py)
    TightCase("logistic map x(1-x)", lambda x: x * (1 - x), {"x": (0, 1)}, closed_form=lambda: [0.0], fast=True),
    TightCase("x exp(-xy)", lambda x, y: x * sp.exp(-x * y), {"x": (-2, 3), "y": (-1, 2)}, fast=True),
    TightCase("logistic loss, linear model", lambda w1, w2, b, x1, x2, y: sp.log(1 + sp.exp(-y * (w1 * x1 + w2 * x2 + b))),
              {"w1": (-2, 2), "w2": (-2, 2), "b": (-1, 1), "x1": (0, 1), "x2": (0, 1), "y": (-1, 1)}, fast=True),
    TightCase("tanh network, 2-2-1", lambda x1, x2, a, b, c, d, e, f, g, h:
              g * sp.tanh(a * x1 + b * x2 + c) + h * sp.tanh(d * x1 + e * x2 + f),
              dict.fromkeys(["x1", "x2", "a", "b", "c", "d", "e", "f", "g", "h"], (-1, 1))),
    TightCase("narrow bump", lambda x, c: sp.exp(-(((x - c) / sp.Rational(1, 100)) ** 2)), {"x": (-1, 1), "c": (-0.5, 0.5)},
              closed_form=lambda: [0.5**0.5 / 100, 0.0], note="|grad| = 200 sqrt(2) t exp(-t^2) at t = 1/sqrt(2)"),
    TightCase("age-adjusted BMI", lambda a, w, h: a * w / h**2, {"a": (18, 90), "w": (40, 200), "h": (1.4, 2.2)},
              closed_form=lambda: [90.0, 200.0, 1.4], fast=True),
    TightCase("smoothed norm", lambda x, y: sp.sqrt(x**2 + y**2 + 1), {"x": (-3, 2), "y": (-1, 4)}, fast=True),
    TightCase("sigmoid of linear", lambda x, y: hd.sigmoid(3 * x - 2 * y), {"x": (-2, 2), "y": (-2, 2)},
              closed_form=lambda: [0.0, 0.0], note="sqrt(13)/4 where 3x - 2y = 0", fast=True),
    TightCase("cubic x^3 - 3x", lambda x: x**3 - 3 * x, {"x": (-2, 2)}, closed_form=lambda: [2.0], fast=True),
    TightCase("quotient (x-y)^2/(1+z^2)", lambda x, y, z: (x - y) ** 2 / (1 + z**2), {"x": (-1, 2), "y": (0, 1), "z": (-2, 2)},
              fast=True),
    TightCase("log(1 + x^2 + y^2)", lambda x, y: sp.log(1 + x**2 + y**2), {"x": (-2, 2), "y": (-2, 2)},
              closed_form=lambda: [1.0, 0.0], note="2r/(1+r^2), largest on the circle r = 1", fast=True),
    TightCase("tanh(xy + z)", lambda x, y, z: sp.tanh(x * y + z), {"x": (-2, 2), "y": (-2, 2), "z": (-1, 1)}, fast=True),
    TightCase("Runge 1/(1+x^2)", lambda x: 1 / (1 + x**2), {"x": (-3, 3)}, closed_form=lambda: [3**-0.5],
              note="2x/(1+x^2)^2 at x = 1/sqrt(3)", fast=True),
    TightCase("product of four", lambda x, y, z, w: x * y * z * w, {"x": (-1, 1), "y": (-1, 1), "z": (-1, 1), "w": (-1, 1)},
              closed_form=lambda: [1.0] * 4, fast=True),
    TightCase("Gaussian ridge x exp(-x^2-y^2)", lambda x, y: x * sp.exp(-(x**2) - y**2), {"x": (-2, 2), "y": (-2, 2)},
              closed_form=lambda: [0.0, 0.0], fast=True),
    TightCase("Rosenbrock", lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2, {"x": (-2, 2), "y": (-1, 3)}, fast=True),
    TightCase("fractional power x^0.3 y", lambda x, y: x**0.3 * y, {"x": (0.5, 2), "y": (-1, 1)}, fast=True),
    TightCase("softmax share", lambda x, y, z: sp.exp(x) / (sp.exp(x) + sp.exp(y) + sp.exp(z)),
              {"x": (-2, 2), "y": (-2, 2), "z": (-2, 2)}, fast=True),
    TightCase("sum of eight squares", lambda *v: sum((vi - sp.Rational(1, 2)) ** 2 for vi in v), _box("v", 8, -1, 1),
              closed_form=lambda: [-1.0] * 8, fast=True),
    TightCase("polynomial in five", lambda x1, x2, x3, x4, x5: (x1 + x2 * x3) ** 2 - x4 * x5, _box("x", 5, -1.5, 1)),
    # -- classical
    TightCase("quadratic form, 10 fields", _quadratic, _box("x", 10, -1, 1),
              note="||A x|| is convex: its maximum is at a vertex (all 1024 enumerated)", tags=["classical"]),
    TightCase("softplus sum, 20 fields", lambda *x: sum(hd.softplus(sp.Rational(k + 1, 10) * v) for k, v in enumerate(x)),
              _box("x", 20, -2, 2), closed_form=lambda: [2.0] * 20, tags=["classical"]),
    TightCase("Styblinski-Tang, 5 fields", lambda *x: sum(v**4 - 16 * v**2 + 5 * v for v in x) / 2, _box("x", 5, -5, 5),
              closed_form=lambda: [5.0] * 5, tags=["classical"]),
    TightCase("log-barrier, 6 fields", lambda *x: -sum(sp.log(2 - v) + sp.log(2 + v) for v in x), _box("x", 6, -1, 1),
              closed_form=lambda: [1.0] * 6, tags=["classical"]),
]


def function_of(case: TightCase) -> hd.RecordFunction:
    schema = hd.Schema(case.box)
    return schema.function(case.build(*schema.symbols()), name=case.name)


@dataclass
class Truth:
    value: mpmath.mpf          # ||grad f(point)||_2 at 80 digits
    point: list[float]
    how: str


def _grad_exprs(case: TightCase) -> tuple[list[sp.Symbol], list[sp.Expr]]:
    syms = [sp.Symbol(n, real=True) for n in case.box]
    expr = case.build(*syms)
    return syms, [sp.diff(expr, s) for s in syms]


_MP_NS = {"sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)), "softplus": lambda x: mpmath.log(1 + mpmath.exp(x))}
_NP_NS = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softplus": lambda x: np.logaddexp(0, x)}


def true_lipschitz(case: TightCase, seed: int = 0, starts: int = 12, samples: int = 4000, newton: bool = True) -> Truth:
    """``max ||grad f(x)||_2`` over the candidate points, evaluated at 80 digits (a lower bound of K, attained)."""
    syms, grads = _grad_exprs(case)
    n = len(syms)
    sq = sum(g**2 for g in grads)
    f_np = sp.lambdify(syms, sq, modules=[_NP_NS, "numpy"])
    g_mp = sp.lambdify(syms, grads, modules=[_MP_NS, "mpmath"])
    lo = np.array([b[0] for b in case.box.values()], dtype=float)
    hi = np.array([b[1] for b in case.box.values()], dtype=float)

    def exact(x) -> mpmath.mpf:
        with mpmath.workdps(DPS):
            v = g_mp(*[mpmath.mpf(float(t)) for t in x])
            return mpmath.sqrt(mpmath.fsum(c**2 for c in v))

    candidates: list[tuple[np.ndarray, str]] = []
    if case.closed_form is not None:
        candidates.append((np.array(case.closed_form(), dtype=float), "closed form"))
    if case.name.startswith("quadratic form"):
        for c in itertools.product((0, 1), repeat=n):
            candidates.append((lo + np.array(c) * (hi - lo), "vertex enumeration"))
    rng = np.random.default_rng(seed)
    corners = (np.array(np.meshgrid(*[[0, 1]] * n)).reshape(n, -1).T if n <= 10
               else rng.integers(0, 2, size=(512, n)))
    pts = np.vstack([0.5 * (lo + hi), lo + corners * (hi - lo), lo + rng.random((samples, n)) * (hi - lo)])
    with np.errstate(all="ignore"):
        vals = np.broadcast_to(np.asarray(f_np(*pts.T), dtype=float), (pts.shape[0],)).copy()
    vals[~np.isfinite(vals)] = -np.inf

    def neg(x: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            v = float(f_np(*np.clip(x, lo, hi)))
        return -v if np.isfinite(v) else np.inf

    for i in np.argsort(vals)[-starts:]:
        res = optimize.minimize(neg, pts[i], method="L-BFGS-B", bounds=list(zip(lo, hi, strict=True)))
        candidates.append((np.clip(res.x, lo, hi), "multistart"))
        candidates.append((pts[i], "multistart"))
    scored = [(exact(x), x, how) for x, how in candidates]
    best_v, best_x, best_how = max(scored, key=lambda t: t[0])
    if newton:
        x, v = _newton_polish(syms, grads, best_x, lo, hi, exact)
        if v > best_v:
            best_v, best_x, best_how = v, x, best_how + " + mpmath Newton"
    return Truth(best_v, [float(t) for t in best_x], best_how)


def _newton_polish(syms, grads, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, exact, steps: int = 4):
    """A few 80-digit Newton steps on the stationarity of ||grad f||^2 in the coordinates not at a bound.

    The result is a float point (so the truth stays a value at a representable point) whose 80-digit
    value is returned; the caller keeps it only if it is larger.
    """
    free = [i for i in range(len(syms)) if lo[i] < x0[i] < hi[i]]
    if not free or len(free) > 6:
        return x0, exact(x0)
    sq = sum(g**2 for g in grads)
    d1 = [sp.diff(sq, syms[i]) for i in free]
    d2 = [[sp.diff(a, syms[j]) for j in free] for a in d1]
    f1 = sp.lambdify(syms, d1, modules=[_MP_NS, "mpmath"])
    f2 = sp.lambdify(syms, d2, modules=[_MP_NS, "mpmath"])
    x = [mpmath.mpf(float(t)) for t in x0]
    with mpmath.workdps(DPS):
        for _ in range(steps):
            try:
                step = mpmath.lu_solve(mpmath.matrix(f2(*x)), mpmath.matrix(f1(*x)))
            except (ZeroDivisionError, ValueError):
                break
            for k, i in enumerate(free):
                x[i] -= step[k]
    xf = np.array([float(t) for t in x])
    if not (np.all(xf >= lo) and np.all(xf <= hi)):
        return x0, exact(x0)
    return xf, exact(xf)
