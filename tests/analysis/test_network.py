"""The slope-vertex bound of activation networks (:mod:`opendp_hybridad.analysis.network`) against 50-digit truth.

The truth never uses the library's analysis: sympy's own gradient of the network, lambdified to mpmath
at 50 digits, at random points and a grid of each box (every such value is a lower bound of the
supremum over the box, so a bound below one is a proven violation). Boxes include tiny, huge, width-0
sides and sides touching 0. Each check is also run on a deliberately broken variant (one vertex only:
the slopes' upper ends), which must be caught.
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis.certify import GradientObjective, _norm_upper
from opendp_hybridad.analysis.interval import IntervalEvaluator
from opendp_hybridad.analysis.network import SlopeVertices
from opendp_hybridad.analysis.tape import Tape

ACTS = {"tanh": sp.tanh, "sigmoid": hd.sigmoid, "softplus": hd.softplus}


def _weight(rng: np.random.Generator, scale: float = 1.5) -> sp.Rational:
    return sp.Rational(str(np.round(rng.normal() * scale, 2)))


def _network(rng: np.random.Generator, n: int, widths: tuple[int, ...], act: str, skip: bool) -> tuple[sp.Expr, list[sp.Symbol]]:
    """``w . act(W_L ... act(W_1 x + b_1) ...)`` with rational weights; ``skip``: each layer also sees the fields."""
    xs = sp.symbols(f"x0:{n}", real=True)
    h: list[sp.Expr] = list(xs)
    for width in widths:
        extra = (lambda: sum(_weight(rng, 0.3) * x for x in xs)) if skip and h[0] != xs[0] else (lambda: 0)
        z = [sum(_weight(rng) * v for v in h) + _weight(rng, 0.5) + extra()
             for _ in range(width)]
        h = [ACTS[act](v) for v in z]
    return sum(_weight(rng) * v for v in h) + _weight(rng, 0.2) * xs[0], list(xs)


def _boxes(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for kind in range(6):
        a = rng.uniform(-2, 1.5, n)
        if kind == 0:
            w = rng.uniform(0.1, 2.5, n)
        elif kind == 1:  # tiny
            w = np.full(n, 1e-9)
        elif kind == 2:  # width 0 sides
            w = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.1, 1, n))
        elif kind == 3:  # touching 0
            a = np.where(rng.random(n) < 0.5, 0.0, -rng.uniform(0.1, 1, n))
            w = np.abs(a) + rng.uniform(0, 1, n)
        elif kind == 4:  # huge: the slopes saturate
            a = np.full(n, -30.0)
            w = np.full(n, 60.0)
        else:  # a single point
            w = np.zeros(n)
        out.append((a, a + w))
    return out


def _truth_points(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, samples: int = 40) -> np.ndarray:
    n = lo.size
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=n)))[:64]
    grid = np.array(list(itertools.product((0.0, 0.5, 1.0), repeat=min(n, 3))))
    grid = np.hstack([grid, np.full((grid.shape[0], n - grid.shape[1]), 0.5)])
    unit = np.vstack([corners, grid, rng.random((samples, n))])
    return np.clip(lo + unit * (hi - lo), lo, hi)


def _true_norms(expr: sp.Expr, xs: list[sp.Symbol], points: np.ndarray, p: float) -> list[mpmath.mpf]:
    grad = sp.lambdify(xs, [sp.diff(expr, x) for x in xs], modules=[{"sigmoid": lambda t: 1 / (1 + mpmath.exp(-t)),
                                                                       "softplus": lambda t: mpmath.log(1 + mpmath.exp(t))},
                                                                      "mpmath"])
    out = []
    with mpmath.workdps(50):
        for x in points:
            g = [abs(v) for v in grad(*[mpmath.mpf(float(t)) for t in x])]
            out.append(max(g) if p == np.inf else mpmath.sqrt(mpmath.fsum(v**2 for v in g)))
    return out


def _vertex_bound(sv: SlopeVertices, tape: Tape, lo: np.ndarray, hi: np.ndarray, p: float, one_vertex: bool = False) -> float:
    L, H, _ = IntervalEvaluator(tape).evaluate(lo[None, :], hi[None, :])
    s_lo, s_hi = sv.slopes(L, H)
    if one_vertex:  # the broken variant: the slopes' upper ends only
        s_lo = s_hi
    vm = sv.magnitudes(s_lo, s_hi)
    return float(_norm_upper(vm.reshape(-1, vm.shape[2]).T, p).max())


def _violations(seed: int, one_vertex: bool = False) -> int:
    rng = np.random.default_rng(seed)
    act = list(ACTS)[seed % 3]
    n = 2 + seed % 3
    widths = ((3,), (3, 2), (2, 2, 2), (4,))[seed % 4]
    expr, xs = _network(rng, n, widths, act, skip=seed % 2 == 1)
    tape = Tape(xs)
    root = tape.add_output(expr)
    sv = SlopeVertices.detect(tape, root)
    assert sv is not None and len(sv.units) == sum(widths)
    bad = 0
    for lo, hi in _boxes(rng, n):
        pts = _truth_points(lo, hi, rng)
        for p in (2.0, np.inf):
            bound = _vertex_bound(sv, tape, lo, hi, p, one_vertex)
            truth = max(_true_norms(expr, xs, pts, p))
            bad += truth > bound
    return bad


@pytest.mark.parametrize("seed", range(8))
def test_vertex_bound_encloses_50_digit_gradient_norms(seed: int):
    assert _violations(seed) == 0


def test_broken_variant_is_caught():
    # one vertex (every slope at its upper end) is not a bound: the cancellations between units are lost
    assert sum(_violations(seed, one_vertex=True) for seed in range(8)) > 0


def test_objective_with_vertices_encloses_truth_on_boxes():
    """The objective's bound (interval, mean-value and vertex bounds combined) on sub-boxes of a suite-like network."""
    rng = np.random.default_rng(5)
    expr, xs = _network(rng, 4, (4, 3), "tanh", skip=False)
    schema = hd.Schema(dict.fromkeys([str(x) for x in xs], (-1, 1)))
    fn = schema.function(expr.subs(dict(zip(xs, schema.symbols(), strict=True))))
    ob = GradientObjective(fn, 2.0)
    assert ob.vertices is not None
    for lo, hi in _boxes(rng, 4):
        lo, hi = np.clip(lo, -1, 1), np.clip(hi, -1, 1)
        lo = np.minimum(lo, hi)
        bound = float(ob.enclose(lo[None, :], hi[None, :]).upper[0])
        truth = max(_true_norms(expr, xs, _truth_points(lo, hi, rng), 2.0))
        assert truth <= bound


def test_detection_refuses_non_networks():
    x, y = sp.symbols("x y", real=True)
    for expr in (x * y + sp.tanh(x), sp.tanh(x * y), sp.exp(x) + y, x + 2 * y):
        tape = Tape([x, y])
        assert SlopeVertices.detect(tape, tape.add_output(expr)) is None
    rng = np.random.default_rng(0)
    big, xs = _network(rng, 2, (11,), "tanh", skip=False)  # 2^11 vertices: left to the general path
    tape = Tape(xs)
    assert SlopeVertices.detect(tape, tape.add_output(big)) is None


def test_detection_leaves_wide_networks_with_many_units_to_the_general_path():
    # a box costs about n^2 2^h here (audit attack_network_bound.py): past n 2^h = 4096 the path is not taken
    rng = np.random.default_rng(1)
    wide, xs = _network(rng, 20, (8,), "tanh", skip=False)  # 20 * 2^8 = 5120
    tape = Tape(xs)
    assert SlopeVertices.detect(tape, tape.add_output(wide)) is None
    edge, xs = _network(rng, 8, (9,), "tanh", skip=False)  # 8 * 2^9 = 4096
    tape = Tape(xs)
    assert SlopeVertices.detect(tape, tape.add_output(edge)) is not None
