"""Quadratic functions (affine gradient): K from the box's vertices, checked in exact rational arithmetic.

The truths here never use the library's analysis: the gradient is sympy's, evaluated in ``fractions``
at every vertex (the exact maximum of a convex function over a box) and, for the convexity claim
itself, at random interior points at 50 digits (none may beat the certificate).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis import vertex


def _random_quadratic(rng: np.random.Generator, n: int, scale: float = 1.0) -> tuple[hd.RecordFunction, list[sp.Symbol]]:
    box = {}
    for i in range(n):
        kind = rng.integers(4)
        if kind == 0:  # a zero-width side
            a = float(np.round(rng.uniform(-3, 3), 3))
            box[f"x{i}"] = (a, a)
        elif kind == 1:  # ends that are not short decimals (the vertex products round)
            a = float(rng.uniform(-3, 1))
            box[f"x{i}"] = (a, a + float(rng.uniform(1e-6, 4)))
        else:
            a = float(np.round(rng.uniform(-3, 2), 2))
            box[f"x{i}"] = (a, float(np.round(a + rng.uniform(0.1, 3), 2)))
    schema = hd.Schema(box)
    xs = schema.symbols()
    expr = sp.Integer(0)
    for i in range(n):
        for j in range(i, n):
            if rng.random() < 0.6:
                expr += sp.Rational(int(rng.integers(-50, 51)), int(rng.integers(1, 12))) * sp.Float(scale) * xs[i] * xs[j]
        if rng.random() < 0.7:
            expr += sp.Rational(int(rng.integers(-30, 31)), 7) * xs[i]
    expr += sp.Rational(int(rng.integers(-5, 6)), 3)
    return schema.function(expr), list(xs)


def _exact_grad(fn: hd.RecordFunction, point: list[Fraction]) -> list[Fraction]:
    """sympy's gradient at a rational point, exactly (declared constants are exact rationals)."""
    sub = {s: sp.Rational(p.numerator, p.denominator) for s, p in zip(fn.symbols, point, strict=True)}
    out = []
    for g in fn.gradient().values():
        r = sp.Rational(g.xreplace(sub))
        out.append(Fraction(int(r.p), int(r.q)))
    return out


def _exact_vertex_max(fn: hd.RecordFunction, norm: float, component: int | None = None) -> Fraction:
    """max over all vertices of ||grad f||_norm^2 (norm 2), ||.||_1, ||.||_inf or |df/dx_component| (exact)."""
    bounds = fn.schema.bounds()
    best = Fraction(-1)
    for v in itertools.product(*[sorted({Fraction(lo), Fraction(hi)}) for lo, hi in bounds]):
        g = _exact_grad(fn, list(v))
        if component is not None:
            val = abs(g[component])
        elif norm == 2.0:
            val = sum(x * x for x in g)
        elif norm == 1.0:
            val = sum(abs(x) for x in g)
        else:
            val = max(abs(x) for x in g)
        best = max(best, val)
    return best


def test_affine_gradient_is_read_exactly():
    schema = hd.Schema(x=(-1, 1), y=(0, 2), z=(-3, -1))
    x, y, z = schema.symbols()
    g = vertex.affine_gradient(schema.function(3 * x**2 - x * y / 7 + 0.1 * z + 5))
    third = Fraction(1, 7)
    expected = [[6, -third, 0], [-third, 0, 0], [0, 0, 0]]
    assert expected == g.A
    assert g.b == [0, 0, Fraction(0.1)]  # the double 0.1, exactly
    # not quadratic: no affine gradient
    for e in [x**3, x * y * z, sp.exp(x), x**0.5 * y, (x + y) ** 3, sp.Abs(x) * y, 1 / (1 + x**2), sp.sqrt(2) * x**2]:
        assert vertex.affine_gradient(schema.function(e)) is None, e
    # products of affine pieces of total degree 2 are found without expanding the user's expression
    assert vertex.affine_gradient(schema.function((x + y) ** 2 - x**2)) is not None


@pytest.mark.parametrize("seed", range(12))
def test_vertex_k_against_exact_vertices(seed: int):
    rng = np.random.default_rng(seed)
    fn, _ = _random_quadratic(rng, int(rng.integers(1, 7)), scale=[1.0, 1e-150, 1e150][seed % 3])
    for norm in (2.0, 1.0, math.inf):
        cert = fn.lipschitz(norm=norm)
        truth = _exact_vertex_max(fn, norm)
        upper = Fraction(cert.upper)
        if norm == 2.0:
            assert upper * upper >= truth  # exact: never below
            assert cert.upper <= math.sqrt(float(truth)) * (1 + 1e-12) + 1e-300
        else:
            assert upper >= truth
            assert cert.upper <= float(truth) * (1 + 1e-12) + 1e-300
        assert cert.witness.value <= cert.upper
        assert cert.converged
    for j, (name, part) in enumerate(fn.partial_bounds().items()):
        truth = _exact_vertex_max(fn, math.inf, component=j)
        assert Fraction(part.upper) >= truth, name
        assert part.upper <= float(truth) * (1 + 1e-12) + 1e-300


@pytest.mark.parametrize("seed", range(4))
def test_no_interior_point_beats_the_vertex_bound(seed: int):
    """The convexity argument itself: 50-digit gradient norms at random points of the box stay below K."""
    rng = np.random.default_rng(100 + seed)
    fn, syms = _random_quadratic(rng, 5)
    cert = fn.lipschitz()
    grad = sp.lambdify(syms, list(fn.gradient().values()), modules="mpmath")
    bounds = fn.schema.bounds()
    with mpmath.workdps(50):
        for _ in range(300):
            pt = [mpmath.mpf(lo) + mpmath.mpf(float(rng.random())) * (mpmath.mpf(hi) - mpmath.mpf(lo)) for lo, hi in bounds]
            v = grad(*pt)
            assert mpmath.sqrt(mpmath.fsum(c**2 for c in v)) <= cert.upper


def test_wide_quadratic_falls_back_and_stays_sound():
    # more sides than the enumeration takes: the general path answers (still above the exact vertex maximum)
    n = vertex.MAX_VERTEX_SIDES + 2
    schema = hd.Schema({f"x{i}": (-1, 1) for i in range(n)})
    xs = schema.symbols()
    g = vertex.affine_gradient(schema.function(sum((xs[i] - xs[i + 1]) ** 2 for i in range(n - 1))))
    lo, hi = -np.ones(n), np.ones(n)
    assert vertex.certify_affine(g, lo, hi, 2.0) is None
    # the linear rows are exact at any width
    res = vertex.certify_affine(g, lo, hi, math.inf)
    assert res is not None and res.upper == 8.0


def test_a_gradient_beyond_the_float_range_is_refused_not_infinite():
    # 1e300 x y on this box: df/dx = 1e300 y = 1e600 (audit attack_certificates.py case 64: K_inf was inf)
    schema = hd.Schema(x=(1e-300, 2e-300), y=(1e300, 1e300))
    x, y = schema.symbols()
    fn = schema.function(1e300 * x * y)
    g = vertex.affine_gradient(fn)
    lo, hi = np.array([1e-300, 1e300]), np.array([2e-300, 1e300])
    assert vertex.certify_affine(g, lo, hi, math.inf) is None
    assert vertex.certify_affine(g, lo, hi, math.inf, component=0) is None
    assert vertex.certify_affine(g, lo, hi, 2.0) is None
    with pytest.raises(hd.UnboundedError):
        fn.lipschitz(norm=math.inf, time_budget=0.2)


def test_suite_quadratic_form_is_exact():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from tightness_suite import CASES, function_of

    case = next(c for c in CASES if c.name.startswith("quadratic form"))
    fn = function_of(case)
    cert = fn.lipschitz()
    truth = _exact_vertex_max(fn, 2.0)
    assert Fraction(cert.upper) ** 2 >= truth
    assert cert.upper <= math.sqrt(float(truth)) * (1 + 1e-12)
