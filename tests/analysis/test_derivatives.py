"""Gradients and Hessians differentiated on the tape (analysis/derivatives.py) against sympy's, at 50 digits.

The truth is sympy's own derivative of the declared expression, lambdified to mpmath: every enclosure
the tape's derivative nodes give on a box must contain its value at points of that box.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.certify import GradientObjective, _box_arrays
from opendp_hybridad.analysis.derivatives import FloatTape, derivative_tape

_MP = {"sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)), "softplus": lambda v: mpmath.log(1 + mpmath.exp(v))}
_UNARY = [sp.tanh, hd.sigmoid, hd.softplus, sp.exp, lambda u: sp.log(2 + u**2), lambda u: sp.sqrt(1 + u**2),
          lambda u: (3 + u) ** sp.Rational(3, 10), lambda u: (2 + u) ** sp.Float(-0.7), lambda u: 1 / (3 + u), lambda u: u**3]


def _random_smooth(rng: np.random.Generator) -> hd.RecordFunction:
    n = int(rng.integers(1, 5))
    box = {}
    for i in range(n):
        a = float(np.round(rng.uniform(-1, 0.5), 2))
        box[f"x{i}"] = (a, float(np.round(a + rng.uniform(0.05, 1.0), 2)))
    schema = hd.Schema(box)
    xs = list(schema.symbols())
    h = xs
    for _ in range(int(rng.integers(1, 3))):  # a small random network with mixed activations
        width = int(rng.integers(1, 4))
        z = [sum(sp.Rational(int(rng.integers(-20, 21)), 10) * v for v in h) + sp.Rational(int(rng.integers(-5, 6)), 10)
             for _ in range(width)]
        h = [_UNARY[int(rng.integers(len(_UNARY)))](v) for v in z]
    expr = sum(sp.Rational(int(rng.integers(-20, 21)), 10) * v for v in h)
    if rng.random() < 0.5:
        expr = expr * xs[0] + xs[-1] ** 2
    return schema.function(expr)


def _check(fn: hd.RecordFunction, seed: int, component: int | None = None) -> None:
    built = derivative_tape(fn, component)
    assert built is not None
    tape, y, rows = built
    syms = list(fn.symbols)
    grads = list(fn.gradient().values())
    hess = fn.hessian().tolist()
    wanted = list(range(len(syms))) if component is None else [component]
    pairs = [(y[r], grads[j]) for r, j in enumerate(wanted)]
    pairs += [(rows[r][k], hess[j][k]) for r, j in enumerate(wanted) for k in range(len(syms))]
    lo, hi = _box_arrays(fn)
    rng = np.random.default_rng(seed)
    m = 12
    blo = lo + rng.random((m, lo.size)) * (hi - lo)
    bhi = blo + rng.random((m, lo.size)) * (hi - blo) * rng.choice([0.0, 0.1, 1.0], size=(m, 1))
    L, H, B = iv.IntervalEvaluator(tape).evaluate(blo, bhi)
    funcs = [sp.lambdify(syms, e, modules=[_MP, "mpmath"]) for _, e in pairs]
    floats = FloatTape(tape, y)
    with mpmath.workdps(50):
        for b in range(m):
            for t in (0.0, float(rng.random()), 1.0):
                pt = [mpmath.mpf(float(a)) + mpmath.mpf(t) * (mpmath.mpf(float(c)) - mpmath.mpf(float(a)))
                      for a, c in zip(blo[b], bhi[b], strict=True)]
                for (node, e), f in zip(pairs, funcs, strict=True):
                    v = f(*pt)
                    if node is None:  # structurally zero: sympy's derivative must be 0 too
                        assert v == 0, e
                        continue
                    if B[node][b] >= 0:
                        continue  # not enclosed (a box reaching a domain edge): never used as a bound
                    assert L[node][b] <= v <= H[node][b], (str(e)[:80], b, v, L[node][b], H[node][b])
        # the float evaluation (witness search only) is close to the truth
        pts = blo[:4]
        got = floats(*[pts[:, k] for k in range(lo.size)])
        for r, j in enumerate(wanted):
            f = sp.lambdify(syms, grads[j], modules=[_MP, "mpmath"])
            for p in range(4):
                want = float(f(*[mpmath.mpf(float(v)) for v in pts[p]]))
                assert abs(got[r][p] - want) <= 1e-9 * (1 + abs(want))


@pytest.mark.parametrize("seed", range(10))
def test_tape_derivatives_enclose_sympys(seed: int):
    rng = np.random.default_rng(seed)
    fn = _random_smooth(rng)
    _check(fn, seed)
    _check(fn, seed, component=int(rng.integers(len(fn.names))))


@pytest.mark.parametrize("k", range(len(_UNARY)))
def test_each_rule_encloses_sympys(k: int):
    """Every derivative rule alone and composed with itself (second derivatives of each slope)."""
    schema = hd.Schema(x=(-0.8, 0.6), y=(-0.5, 0.9))
    x, y = schema.symbols()
    act = _UNARY[k]
    _check(schema.function(act(2 * x - y + sp.Rational(3, 10)) * y + act(act(x * y) / 2)), k)


def test_suite_networks_match_sympy_enclosures():
    """On the issue's networks the tape's derivatives are exactly as tight as sympy's (same root-box bound)."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from tightness_suite import CASES, function_of

    for name in ("tanh MLP 4-3-1", "sigmoid MLP 5-4-1"):
        case = next(c for c in CASES if c.name == name)
        fn = function_of(case)
        _check(fn, 0)
        lo, hi = _box_arrays(fn)
        ours = GradientObjective(fn, 2.0, tape_derivatives=True)
        theirs = GradientObjective(fn, 2.0, tape_derivatives=False)
        assert ours.enc.tape is not theirs.enc.tape
        a = ours.enclose(lo[None, :], hi[None, :]).upper[0]
        b = theirs.enclose(lo[None, :], hi[None, :]).upper[0]
        assert a <= b * (1 + 1e-9)


def test_non_smooth_functions_keep_sympys_derivatives():
    schema = hd.Schema(x=(-1, 1), y=(0, 2))
    x, y = schema.symbols()
    assert derivative_tape(schema.function(sp.Abs(x) * sp.tanh(y))) is None
    assert derivative_tape(schema.function(sp.Max(x, y) + sp.tanh(x))) is None
    assert derivative_tape(schema.function(sp.tanh(x * y))) is not None
