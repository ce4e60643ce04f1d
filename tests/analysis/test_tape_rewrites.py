"""The tape's softmax rewrites (exp ratios, ``c P - c P^2``): identities, so every enclosure must contain the
true value; checked against sympy's own expression evaluated at 50 digits (mpmath), never the tape.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.tape import Tape, _logistic_pairs, exp_ratio_form

X, Y, Z = sp.symbols("x y z", real=True)
S = sp.exp(X) + sp.exp(Y) + sp.exp(Z)

#: each one triggers a rewrite (asserted below); coefficients other than +-1, one pair alone, constants in the
#: sum, exponents k w, more exponentials than copies of S, fewer, and sums with other terms
CASES = [
    sp.exp(X) / S,
    sp.exp(X) / S - sp.exp(2 * X) / S**2,
    2 * sp.exp(X) / S - 2 * sp.exp(2 * X) / S**2,
    sp.Rational(-3, 7) * sp.exp(X) / S + sp.Rational(3, 7) * sp.exp(2 * X) / S**2,
    sp.exp(X) / S - 3 * sp.exp(2 * X) / S**2 + 2 * sp.exp(3 * X) / S**3,
    -sp.exp(X) * sp.exp(Y) / S**2 + 2 * sp.exp(2 * X) * sp.exp(Y) / S**3,
    2 * sp.exp(X) * sp.exp(Y) * sp.exp(Z) / S**3,
    sp.exp(X) * sp.exp(Y) / S,  # more exponentials than copies of S
    sp.exp(X) / S**2,  # fewer
    sp.exp(X / 3 + Y) / (1 + 2 * sp.exp(X) + sp.exp(-Y) / 5),
    X * sp.exp(Y) / (sp.Rational(1, 2) + sp.exp(Y) + sp.exp(Z)) + Z**2,
    sp.exp(X) / (1 + sp.exp(X) + sp.exp(Y)) - sp.exp(2 * X) / (1 + sp.exp(X) + sp.exp(Y)) ** 2 + X * Y,
    5 * X - 5 * X**2,  # c P - c P^2 with P a field
    3 / (1 + Y**2) - 3 / (1 + Y**2) ** 2,  # P = 1 / (1 + y^2)
]

_MP = {"sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)), "softplus": lambda v: mpmath.log(1 + mpmath.exp(v))}


def _rewritten(e: sp.Expr) -> bool:
    if isinstance(e, sp.Add):
        return _logistic_pairs(e) is not None or any(exp_ratio_form(t) is not None for t in e.args)
    return exp_ratio_form(e) is not None


def _check_encloses(exprs: list[sp.Expr], syms: list[sp.Symbol], lo: np.ndarray, hi: np.ndarray, seed: int) -> None:
    tape = Tape(syms, rewrite=True)
    outs = [tape.add_output(e) for e in exprs]
    rng = np.random.default_rng(seed)
    boxes_lo = lo + rng.random((40, len(syms))) * (hi - lo)
    boxes_hi = boxes_lo + rng.random((40, len(syms))) * (hi - boxes_lo) * rng.choice([0.0, 0.01, 1.0], size=(40, 1))
    L, H, B = iv.IntervalEvaluator(tape).evaluate(boxes_lo, boxes_hi)
    funcs = [sp.lambdify(syms, e, modules=[_MP, "mpmath"]) for e in exprs]
    with mpmath.workdps(50):
        for b in range(40):
            for t in (0.0, float(rng.random()), 1.0):
                point = [mpmath.mpf(float(a)) + mpmath.mpf(t) * (mpmath.mpf(float(c)) - mpmath.mpf(float(a)))
                         for a, c in zip(boxes_lo[b], boxes_hi[b], strict=True)]
                for e, o, fn in zip(exprs, outs, funcs, strict=True):
                    assert B[o][b] < 0, e
                    v = fn(*point)
                    assert L[o][b] <= v <= H[o][b], (e, b, v, L[o][b], H[o][b])


@pytest.mark.parametrize("k", range(len(CASES)))
def test_rewritten_enclosures_contain_the_truth(k: int):
    e = CASES[k]
    assert _rewritten(e)
    _check_encloses([e], [X, Y, Z], np.array([-3.0, -2.0, -4.0]), np.array([3.0, 2.5, 1.0]), seed=k)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_log_sum_exp_derivatives_enclosed(n: int):
    """sympy's gradient and Hessian of log-sum-exp (with weights and a constant): every entry enclosed."""
    schema = hd.Schema({f"v{i}": (-2.0 + i / 3, 1.5) for i in range(n)})
    xs = schema.symbols()
    f = schema.function(sp.log(sp.Rational(1, 3) + sum(sp.Rational(k + 1, 2) * sp.exp(sp.Rational(k + 2, 3) * v)
                                                        for k, v in enumerate(xs))))
    exprs = list(f.gradient().values()) + [h for row in f.hessian().tolist() for h in row if h != 0]
    lo = np.array([b[0] for b in schema.bounds()])
    hi = np.array([b[1] for b in schema.bounds()])
    _check_encloses(exprs, list(xs), lo, hi, seed=n)


def test_softmax_share_is_tighter_than_without_the_rewrite():
    e = sp.exp(X) / S
    box_lo, box_hi = np.array([[-1.0, -1.0, -1.0]]), np.array([[1.0, 1.0, 1.0]])
    widths = []
    for rewrite in (True, False):
        tape = Tape([X, Y, Z], rewrite=rewrite)
        o = tape.add_output(e)
        L, H, _ = iv.IntervalEvaluator(tape).evaluate(box_lo, box_hi)
        widths.append((L[o][0], H[o][0]))
    # rewritten: 1 / (1 + exp(y - x) + exp(z - x)), the exact image [1 / (1 + 2 e^2), 1 / (1 + 2 e^-2)]
    exact = (1 / (1 + 2 * mpmath.e**2), 1 / (1 + 2 * mpmath.e**-2))
    assert widths[0][0] <= exact[0] and widths[0][1] >= exact[1]
    assert widths[0][1] - widths[0][0] <= (exact[1] - exact[0]) * (1 + 1e-9)
    assert widths[0][1] - widths[0][0] < 0.5 * (widths[1][1] - widths[1][0])


def test_overflowing_rewrite_falls_back_to_the_plain_tape():
    """exp(y - x) overflows on this box (y - x reaches 750) where exp(x), exp(y) and (exp(x) + exp(y))^2 do not:
    the certificates still come (from the plain tape), and the rewrite is off by default (the point enclosures
    of released values never depend on it)."""
    schema = hd.Schema(x=(-400.0, -360.0), y=(340.0, 350.0))
    x, y = schema.symbols()
    f = schema.function(sp.exp(x) / (sp.exp(x) + sp.exp(y)))
    assert not Tape([x, y]).rewrite
    plain = Tape([x, y], rewrite=True)
    plain.add_output(sp.exp(x) + y)
    assert plain.rewritten == 0
    rewritten = Tape([x, y], rewrite=True)
    rewritten.add_output(f.expr)
    assert rewritten.rewritten == 1
    rng = f.range(time_budget=0.5)
    assert rng.lower >= 0 and rng.upper <= 1e-300  # the share is below e^(x - y) <= e^-700
    cert = f.lipschitz(time_budget=0.5)
    assert cert.witness.value <= cert.upper < 1e-290  # finite (the plain tape is loose here, but a bound)


def test_suite_logsumexp_certificate_above_truth():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from tightness_suite import TightCase, function_of, true_lipschitz

    case = TightCase("logsumexp, 4 fields", lambda *x: sp.log(sum(sp.exp(v) for v in x)),
                     dict.fromkeys(["a", "b", "c", "d"], (-1.0, 1.0)))
    truth = true_lipschitz(case, starts=4, samples=800)
    cert = function_of(case).lipschitz(time_budget=1.0)
    assert truth.value <= cert.upper
