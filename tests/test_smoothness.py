"""Smoothness classification and an adversarial sweep of non-smooth and tricky expressions.

Ground truth is mpmath at 80 digits at float points of the box, with every float
constant of the expression converted to the exact rational value of its double
(the value the tape encloses and the compiled kernel compares against). For each
expression: the certified range must contain every sampled value, and a certified
Lipschitz constant must bound every sampled difference quotient (pairs of adjacent
floats around each jump included), or the certificate must be refused.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis import smoothness
from opendp_hybridad.analysis.tape import Tape

DPS = 80


def _heaviside(a, h0=None):
    if a == 0:
        return mpmath.mpf(1) / 2 if h0 is None else mpmath.mpf(h0)
    return mpmath.mpf(1) if a > 0 else mpmath.mpf(0)


_MP = {
    "Heaviside": _heaviside,
    "sign": lambda a: mpmath.sign(a),
    "sigmoid": lambda a: 1 / (1 + mpmath.exp(-a)),
    "softplus": lambda a: mpmath.log(1 + mpmath.exp(a)),
}


def mp_function(f: hd.RecordFunction):
    """``f`` in mpmath (80 digits) with exact float constants: takes floats, returns mpf."""
    expr = f.expr.xreplace({c: sp.Rational(c) for c in f.expr.atoms(sp.Float)})
    fn = sp.lambdify(list(f.symbols), expr, modules=[_MP, "mpmath"])

    def call(*xs: float):
        with mpmath.workdps(DPS):
            return mpmath.mpf(fn(*[mpmath.mpf(float(v)) for v in xs]))

    return call


def _near(t: float, steps: int = 3) -> list[float]:
    """``t`` and its float neighbours, plus points at growing distances."""
    out = [t]
    lo = hi = t
    for _ in range(steps):
        lo, hi = math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf)
        out += [lo, hi]
    out += [t + s * d for d in (1e-300, 1e-20, 1e-12, 1e-6, 1e-3) for s in (-1, 1)]
    return out


def samples_1d(lo: float, hi: float, special: list[float], n: int = 801) -> np.ndarray:
    pts = list(np.linspace(lo, hi, n))
    for t in special:
        pts += _near(t)
    return np.unique(np.clip(np.array(pts, dtype=float), lo, hi))


X = sp.Symbol("x", real=True)
Y = sp.Symbol("y", real=True)
H = sp.Heaviside
R = sp.Rational

# (name, expression in x (and y), box, special points of x where it may jump or kink)
SWEEP_1D = [
    ("H(x) - H(-x)", H(X) - H(-X), [0.0]),
    ("H(x,1) + H(-x,1)", H(X, 1) + H(-X, 1), [0.0]),
    ("H(x,0) + H(-x,0)", H(X, 0) + H(-X, 0), [0.0]),
    ("H(x-0.5) + H(0.5-x)", H(X - 0.5) + H(0.5 - X), [0.5]),
    ("H(x-1/3,1) + H(1/3-x,1)", H(X - R(1, 3), 1) + H(R(1, 3) - X, 1), [1 / 3]),
    ("x (H(x,1) + H(-x,1))", X * (H(X, 1) + H(-X, 1)), [0.0]),
    ("sign(x)**2", sp.sign(X) ** 2, [0.0]),
    ("sign(x) x", sp.sign(X) * X, [0.0]),
    ("sign(x - 0.25)", sp.sign(X - 0.25), [0.25]),
    ("|x| sign(x)", sp.Abs(X) * sp.sign(X), [0.0]),
    ("|x - 0.3|", sp.Abs(X - 0.3), [0.3]),
    ("max(x,0) - max(-x,0)", sp.Max(X, 0) - sp.Max(-X, 0), [0.0]),
    ("min(x,0.2) + max(x,0.2)", sp.Min(X, 0.2) + sp.Max(X, 0.2), [0.2]),
    ("where(x > 1e-20, exp(x), 1)", hd.where(X > 1e-20, sp.exp(X), 1), [1e-20]),
    ("where(x > 1e-300, 1 + x, 1)", hd.where(X > 1e-300, 1 + X, 1), [1e-300]),
    ("where(x > 0.1, 10x, 1)", hd.where(X > 0.1, 10 * X, 1), [0.1]),
    ("where(x > 1/3, 3x, 1)", hd.where(R(1, 3) < X, 3 * X, 1), [1 / 3]),
    ("where(x > 0.5, x**2, x - 0.25)", hd.where(X > 0.5, X**2, X - 0.25), [0.5]),
    ("where(x >= 0, x**2, -x**2)", hd.where(X >= 0, X**2, -(X**2)), [0.0]),
    ("where(x > pi/4, x - pi/4, 0)", hd.where(sp.pi / 4 < X, X - sp.pi / 4, 0), [math.pi / 4]),
    ("where(x > sqrt(2)/2, x**2, 0.5)", hd.where(sp.sqrt(2) / 2 < X, X**2, 0.5), [math.sqrt(2) / 2]),
    ("where(x > sqrt(2)/2, x**2, 0.3)", hd.where(sp.sqrt(2) / 2 < X, X**2, 0.3), [math.sqrt(2) / 2]),
    ("nested where, continuous", hd.where(X > 0, hd.where(X > 0.5, 1, 2 * X), 0), [0.0, 0.5]),
    ("nested where, jump", hd.where(X > 0, hd.where(X > 0.5, 1, X), 0), [0.0, 0.5]),
    ("three pieces", sp.Piecewise((X, X < 0), (X**2, X < 1), (1, True)), [0.0, 1.0]),
    ("three pieces, jump at 1", sp.Piecewise((X, X < 0), (X**2, X < 1), (2, True)), [0.0, 1.0]),
    ("where(x**2 > 0.25, 1, 4x**2)", hd.where(X**2 > 0.25, 1, 4 * X**2), [-0.5, 0.5]),
    ("H(x - 2) + x (jump outside the box)", H(X - 2) + X, []),
    ("where(x > 5, 1, x) (jump outside the box)", hd.where(X > 5, 1, X), []),
    ("sigmoid(50 x) - H(x)", hd.sigmoid(50 * X) - H(X), [0.0]),
]


def _check_1d(f: hd.RecordFunction, special: list[float]):
    lo, hi = f.schema["x"].lower, f.schema["x"].upper
    pts = samples_1d(lo, hi, special)
    truth = mp_function(f)
    vals = [truth(p) for p in pts]
    checked = []
    try:
        rng = f.range(time_budget=0.4)
    except hd.UnboundedError:
        checked.append("range refused")
    else:
        assert all(rng.lower <= v <= rng.upper for v in vals), (rng.lower, rng.upper, min(vals), max(vals))
        checked.append("range")
    try:
        cert = f.lipschitz(time_budget=0.4)
    except hd.UnboundedError:
        checked.append("lipschitz refused")
    else:
        with mpmath.workdps(DPS):
            worst = max(abs(vals[i + 1] - vals[i]) / (mpmath.mpf(pts[i + 1]) - mpmath.mpf(pts[i])) for i in range(len(pts) - 1))
        assert worst <= cert.upper, (float(worst), cert.upper)
        checked.append("lipschitz")
    return checked


@pytest.mark.parametrize(("name", "expr", "special"), SWEEP_1D, ids=[c[0] for c in SWEEP_1D])
def test_sweep_1d_sound_or_refused(name, expr, special):
    f = hd.Schema(x=(-1, 1)).function(expr)
    _check_1d(f, special)


SWEEP_2D = [
    ("H(x-y,1) + H(y-x,1)", H(X - Y, 1) + H(Y - X, 1)),
    ("where(x > y, x, y)", hd.where(X > Y, X, Y)),
    ("where(x > y, x, y + 1e-20)", hd.where(X > Y, X, Y + 1e-20)),
    ("max(x, y) - min(x, y)", sp.Max(X, Y) - sp.Min(X, Y)),
    ("|x| + sign(y)**2", sp.Abs(X) + sp.sign(Y) ** 2),
    ("where(x + y > 0.1, x + y, 0.1)", hd.where(X + Y > 0.1, X + Y, 0.1)),
    ("where(x + y > 0.1, 10 (x + y), 1)", hd.where(X + Y > 0.1, 10 * (X + Y), 1)),
]


@pytest.mark.parametrize(("name", "expr"), SWEEP_2D, ids=[c[0] for c in SWEEP_2D])
def test_sweep_2d_sound_or_refused(name, expr):
    f = hd.Schema(x=(-1, 1), y=(-1, 1)).function(expr)
    truth = mp_function(f)
    rng_ = np.random.default_rng(1)
    grid = np.linspace(-1, 1, 41)
    pts = [np.array(p) for p in itertools.product(grid, grid)]
    # pairs straddling the diagonal and the line x + y = 0.1 by one float
    for t in rng_.uniform(-0.9, 0.9, 40):
        pts += [np.array([t, t]), np.array([math.nextafter(t, 2), t]), np.array([t, math.nextafter(t, 2)])]
        u = 0.1 - t
        pts += [np.array([t, u]), np.array([math.nextafter(t, 2), u]), np.array([math.nextafter(t, -2), u])]
    vals = [truth(*p) for p in pts]
    try:
        rng = f.range(time_budget=0.4)
    except hd.UnboundedError:
        pass
    else:
        assert all(rng.lower <= v <= rng.upper for v in vals)
    try:
        cert = f.lipschitz(time_budget=0.4)
    except hd.UnboundedError:
        return
    with mpmath.workdps(DPS):
        worst = mpmath.mpf(0)
        for i in range(len(pts) - 1):
            d = mpmath.sqrt(sum((mpmath.mpf(a) - mpmath.mpf(b)) ** 2 for a, b in zip(pts[i], pts[i + 1], strict=True)))
            if d > 0:
                worst = max(worst, abs(vals[i + 1] - vals[i]) / d)
    assert worst <= cert.upper


# -- the classification itself ----------------------------------------------------------------
def _ops(expr, symbols):
    tape = Tape(list(symbols))
    tape.add_output(expr)
    return {n.op for n in tape.nodes}


def test_every_op_the_tape_emits_is_classified():
    x, y = X, Y
    exprs = [x + y, x * y, -x, 1 / x, x**3, sp.sqrt(x), x**0.3, sp.exp(x), sp.log(x), sp.tanh(x), hd.sigmoid(x),
             hd.softplus(x), sp.Abs(x), sp.Min(x, y), sp.Max(x, y), H(x), sp.sign(x), sp.DiracDelta(x),
             sp.Piecewise((x, (x > 0) & (y < 1)), (y, (x <= y) | sp.Ne(x, 2)), (1, sp.Eq(x, y)), (2, y >= 1),
                          (0, sp.Not(sp.And(x > 0, y > 0), evaluate=False))),
             x ** y]
    seen = set().union(*(_ops(e, (x, y)) for e in exprs))
    assert seen <= set(smoothness.OP_CLASS)
    assert set(smoothness.OP_CLASS) - seen == set()  # the table lists nothing the tape never emits
    assert smoothness.OP_CLASS["abs"] == smoothness.CONTINUOUS
    assert smoothness.OP_CLASS["heaviside"] == smoothness.JUMP
    assert smoothness.OP_CLASS["exp"] == smoothness.SMOOTH


@pytest.mark.parametrize("fn", [sp.floor, sp.ceiling, sp.frac, lambda e: sp.Mod(e, 1)])
def test_step_functions_outside_the_table_are_refused_at_declaration(fn):
    with pytest.raises(hd.UnsupportedExpressionError):
        hd.Schema(x=(-1.5, 1.5)).function(fn(X) + 0 * X)


def test_a_jump_outside_the_box_is_smooth_on_it():
    s = hd.Schema(x=(-1, 1))
    (x,) = s.symbols()
    assert s.function(sp.Heaviside(x - 2) + x).lipschitz().upper == pytest.approx(1.0)
    assert s.function(sp.sign(x + 3) * x).lipschitz().upper == pytest.approx(1.0)


def test_smooth_masks_decide_per_box():
    tape = Tape([X])
    root = tape.add_output(sp.Abs(X) + H(X - 0.5))
    from opendp_hybridad.analysis.interval import IntervalEvaluator

    lo = np.array([[-1.0], [0.1], [0.6], [0.4]])
    hi = np.array([[-0.5], [0.3], [0.9], [0.6]])
    L, Hh, _ = IntervalEvaluator(tape).evaluate(lo, hi)
    (mask,) = smoothness.smooth_masks(tape, [root], L, Hh)
    assert mask.tolist() == [True, True, True, False]
