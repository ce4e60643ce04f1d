"""The Lagrangian bound of outer functions of separable sums (:mod:`opendp_hybridad.analysis.separable`).

Truth never uses the library's analysis: sympy's own gradient, lambdified to mpmath at 50 digits, at the
box's vertices (all of them for few fields), random points and each field's grid; every such value is a
lower bound of the supremum, so a bound below one is a proven violation. Logsumexp has a closed-form
maximum (the best vertex, see ``tightness_suite._logsumexp_argmax``), against which tightness is checked.
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import sympy as sp
from tightness_suite import _MP_NS

import opendp_hybridad as hd
from opendp_hybridad.analysis import separable
from opendp_hybridad.analysis.branch_and_bound import maximize
from opendp_hybridad.analysis.certify import GradientObjective

TERMS = {
    "exp": lambda x, a: sp.exp(a * x),
    "softplus": lambda x, a: hd.softplus(a * x + sp.Rational(1, 3)),
    "square": lambda x, a: a * x**2 + x,
    "log1p2": lambda x, a: sp.log(1 + a**2 * x**2),
    "tanh": lambda x, a: sp.tanh(a * x - sp.Rational(1, 5)),
    "cube": lambda x, a: a * x**3,
}
OUTERS = {  # each defined and smooth on the range its sum can take (checked: the declaration refuses otherwise)
    "log": lambda t: sp.log(t),
    "sqrt": lambda t: sp.sqrt(t),
    "tanh": lambda t: sp.tanh(t),
    "square": lambda t: t**2,
    "exp-neg": lambda t: sp.exp(-t / 4),
    "reciprocal": lambda t: 1 / t,
}
POSITIVE = {"exp", "softplus", "log1p2"}  # terms whose sum is > 0 (log, sqrt and 1/t need that; a constant adds 1)


def _gradients(expr: sp.Expr, syms: list[sp.Symbol], box: list[tuple[float, float]], rng: np.random.Generator,
               all_vertices_upto: int = 8, corners: int = 256, samples: int = 200) -> list[list[mpmath.mpf]]:
    """sympy's gradient at 50 digits at the box's vertices (all of them up to ``all_vertices_upto`` fields, else
    random ones) and random points: each a value the supremum is at least."""
    grads = sp.lambdify(syms, [sp.diff(expr, s) for s in syms], modules=[_MP_NS, "mpmath"])
    lo = np.array([b[0] for b in box])
    hi = np.array([b[1] for b in box])
    n = len(syms)
    points = [lo + np.array(c) * (hi - lo) for c in itertools.product((0, 1), repeat=n)] if n <= all_vertices_upto else \
        [lo + rng.integers(0, 2, n) * (hi - lo) for _ in range(corners)]
    points += [lo + rng.random(n) * (hi - lo) for _ in range(samples)]
    with mpmath.workdps(50):
        return [list(grads(*[mpmath.mpf(float(v)) for v in p])) for p in points]


def _truth_lower(expr: sp.Expr, syms: list[sp.Symbol], box: list[tuple[float, float]], rng: np.random.Generator) -> mpmath.mpf:
    """The largest ``||grad f||_2`` found (a lower bound of K)."""
    with mpmath.workdps(50):
        return max(mpmath.sqrt(mpmath.fsum(c**2 for c in g)) for g in _gradients(expr, syms, box, rng))


def _case(rng: np.random.Generator, n: int, outer: str, terms: list[str], widths: str) -> tuple[hd.Schema, sp.Expr]:
    box = {}
    for i in range(n):
        if widths == "tiny":
            c = float(np.round(rng.uniform(-1, 1), 3))
            box[f"x{i}"] = (c, c + 1e-9)
        elif widths == "point" and i == 0:
            box[f"x{i}"] = (0.25, 0.25)
        else:
            a = float(np.round(rng.uniform(-2, 1), 2))
            box[f"x{i}"] = (a, a + float(np.round(rng.uniform(0.1, 2.5), 2)))
    schema = hd.Schema(**box)
    xs = schema.symbols()
    coefficients = [sp.Rational(str(np.round(rng.uniform(0.2, 1.5), 2))) for _ in range(n)]
    inner = sum(TERMS[terms[i % len(terms)]](x, a) for i, (x, a) in enumerate(zip(xs, coefficients, strict=True))) + 1
    return schema, OUTERS[outer](inner)


CASES = [(seed, n, outer, terms, widths)
         for seed, (n, outer, terms, widths) in enumerate([
             (3, "log", ["exp"], "wide"), (5, "log", ["exp", "softplus"], "wide"), (4, "sqrt", ["log1p2", "exp"], "wide"),
             (3, "tanh", ["tanh", "square"], "wide"), (4, "square", ["cube", "tanh"], "wide"), (3, "exp-neg", ["square"], "wide"),
             (4, "reciprocal", ["exp", "softplus"], "wide"), (6, "log", ["exp"], "tiny"), (3, "tanh", ["cube"], "point"),
             (12, "log", ["exp", "softplus", "log1p2"], "wide"), (5, "sqrt", ["softplus"], "wide"),
             (2, "tanh", ["exp"], "wide"), (7, "square", ["tanh"], "wide"),
         ])]


@pytest.mark.parametrize("seed,n,outer,terms,widths", CASES)
def test_the_bound_is_never_below_the_truth(seed, n, outer, terms, widths):
    rng = np.random.default_rng(seed)
    schema, expr = _case(rng, n, outer, terms, widths)
    fn = schema.function(expr)
    found = separable.find_separable(fn)
    assert found is not None, expr
    bound = separable.separable_bound(fn, found)
    if bound is None:  # an enclosure failed: no claim made
        pytest.skip("no enclosure")
    truth = _truth_lower(expr, list(fn.symbols), schema.bounds(), rng)
    assert truth <= bound.upper, (expr, schema.bounds(), float(truth), bound.upper)
    # and the certificate that uses it as a cap is at least the truth too
    cert = fn.lipschitz(time_budget=0.5)
    assert truth <= cert.upper


@pytest.mark.parametrize("pieces,sub_intervals", [(1, 1), (3, 2), (2, 64)])
@pytest.mark.parametrize("seed,n,outer,terms,widths", CASES[:7])
def test_the_bound_holds_for_any_number_of_pieces_and_sub_intervals(monkeypatch, seed, n, outer, terms, widths, pieces,
                                                                      sub_intervals):
    # the argument holds for any partition; coarse ones make each end's role visible (a piece's lower end
    # for lambda >= 0, its upper end below 0, each sub-interval's ends in h): a swapped end fails here
    monkeypatch.setattr(separable, "PIECES", pieces)
    monkeypatch.setattr(separable, "SUB_INTERVALS", sub_intervals)
    rng = np.random.default_rng(seed)
    schema, expr = _case(rng, n, outer, terms, widths)
    fn = schema.function(expr)
    bound = separable.separable_bound(fn, separable.find_separable(fn))
    if bound is None:
        pytest.skip("no enclosure")
    truth = _truth_lower(expr, list(fn.symbols), schema.bounds(), rng)
    assert truth <= bound.upper, (expr, float(truth), bound.upper)


@pytest.mark.parametrize("n", [10, 20])
def test_logsumexp_is_within_one_percent_of_its_closed_form(n):
    schema = hd.Schema(**dict.fromkeys([f"x{i}" for i in range(n)], (-1, 1)))
    fn = schema.function(sp.log(sum(sp.exp(x) for x in schema.symbols())))
    bound = separable.separable_bound(fn, separable.find_separable(fn))
    e = mpmath.e
    with mpmath.workdps(50):
        truth = max(mpmath.sqrt(k * e**2 + (n - k) / e**2) / (k * e + (n - k) / e) for k in range(n + 1))
    assert truth <= bound.upper <= 1.01 * truth
    # the certificate keeps it: the search stops at the cap, not at its own (looser) enclosure
    cert = fn.lipschitz(time_budget=1.0)
    assert truth <= cert.upper <= 1.01 * truth
    assert cert.witness.value <= truth


def test_shapes_that_are_not_an_outer_function_of_a_separable_sum_are_left_to_the_general_path():
    schema = hd.Schema(x=(-1, 1), y=(0, 2), z=(1, 3))
    x, y, z = schema.symbols()
    for expr in (sp.log(sp.exp(x) + sp.exp(x * y) + z),   # a term with two fields
                 sp.log(sp.exp(x) + sp.exp(y)) + z,        # a field outside the sum
                 sp.log(sp.exp(x) + sp.exp(y) + sp.exp(z)) * x,
                 sp.log(sp.Abs(x) + sp.exp(y) + z),        # a kink: the chain rule needs smooth terms
                 sp.exp(x) + sp.exp(y) + z**2):             # the sum itself (psi' = 1): nothing to gain
        assert separable.find_separable(schema.function(expr)) is None, expr
    found = separable.find_separable(schema.function(sp.sqrt(2 + sp.exp(x) + y**2 + 3 * y + sp.tanh(z))))
    assert found is not None and found.terms[1] == y**2 + 3 * y and found.constant == 2


def test_maximize_keeps_a_cap_and_starts_from_given_points():
    schema = hd.Schema(x=(-1, 1), y=(-1, 1))
    x, y = schema.symbols()
    fn = schema.function(sp.log(sp.exp(x) + sp.exp(y)))
    objective = GradientObjective(fn, 2.0)
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    free = maximize(objective, lo, hi, time_budget=0.3, tolerance=1e-9)
    capped = maximize(objective, lo, hi, time_budget=0.3, tolerance=1e-9, cap=free.upper * 0.75 + free.witness_value * 0.25,
                      points=np.array([[1.0, -1.0]]))
    assert capped.upper == min(free.upper, free.upper * 0.75 + free.witness_value * 0.25)
    e = mpmath.e
    with mpmath.workdps(30):
        top = float(mpmath.sqrt(e**2 + e**-2) / (e + 1 / e))
    assert capped.witness_value >= top * (1 - 1e-12)  # the given point (the argmax) is the witness's start


def _partials_lower(expr: sp.Expr, syms: list[sp.Symbol], box: list[tuple[float, float]], rng: np.random.Generator) -> list:
    """The largest ``|df/dx_j|`` found per field (lower bounds of each partial's supremum)."""
    found = _gradients(expr, syms, box, rng, all_vertices_upto=6, corners=128, samples=100)
    return [max(abs(g[j]) for g in found) for j in range(len(syms))]


@pytest.mark.parametrize("seed,n,outer,terms,widths", [c for c in CASES if c[1] <= 7])
def test_partials_through_the_separable_sum_are_never_below_the_truth(seed, n, outer, terms, widths):
    rng = np.random.default_rng(seed)
    schema, expr = _case(rng, n, outer, terms, widths)
    fn = schema.function(expr)
    found = separable.find_separable(fn)
    truths = _partials_lower(expr, list(fn.symbols), schema.bounds(), rng)
    for j, name in enumerate(fn.names):
        h = separable.partial_function(fn, found, j)
        if h is not None:  # the 2-d function's range bounds the partial: its certified range, both ends
            r = h.range(time_budget=0.3)
            assert truths[j] <= max(r.upper, -r.lower), (expr, name)
    parts = fn.partial_bounds(time_budget=0.3)
    for j, name in enumerate(fn.names):
        assert truths[j] <= parts[name].upper, (expr, name, float(truths[j]), parts[name].upper)


def test_logsumexp_partials_are_the_largest_softmax_share():
    schema = hd.Schema(**dict.fromkeys([f"x{i}" for i in range(20)], (-1, 1)))
    fn = schema.function(sp.log(sum(sp.exp(x) for x in schema.symbols())))
    e = mpmath.e
    with mpmath.workdps(50):
        truth = e / (e + 19 / e)  # one field at 1, the rest at -1
    for cert in fn.partial_bounds().values():
        assert truth <= cert.upper <= 1.001 * truth and cert.converged
