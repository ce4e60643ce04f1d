"""Symmetry reduction in branch and bound: the groups are proven, the canonical form is one per orbit,
and a certificate with the reduction never falls below the truth (computed here without the library:
closed forms at known maximisers, in mpmath, and brute force over a grid)."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis import certify as certify_module
from opendp_hybridad.analysis.branch_and_bound import maximize
from opendp_hybridad.analysis.certify import GradientObjective, RangeObjective
from opendp_hybridad.analysis.symmetry import canonical, symmetric_groups
from opendp_hybridad.symbolic.schema import Field


def _fn(text_or_build, box: dict[str, tuple[float, float]]) -> hd.RecordFunction:
    schema = hd.Schema(box)
    xs = schema.symbols()
    return hd.RecordFunction(text_or_build(*xs), schema, name="f")


def _groups(fn: hd.RecordFunction, fixed: int | None = None) -> list[list[int]]:
    return symmetric_groups(fn.expr, list(fn.symbols), [fn.schema.fields[n] for n in fn.names], fixed)


def test_groups_found_only_where_the_expression_and_the_box_are_symmetric():
    box = dict.fromkeys(["a", "b", "c", "d"], (-1.0, 2.0))
    assert _groups(_fn(lambda a, b, c, d: sp.log(sp.exp(a) + sp.exp(b) + sp.exp(c) + sp.exp(d)), box)) == [[0, 1, 2, 3]]
    assert _groups(_fn(lambda a, b, c, d: a * b + c - d, box)) == [[0, 1]]
    assert _groups(_fn(lambda a, b, c, d: a - b + 2 * c - 3 * d, box)) == []
    # (a, c) and (b, d) swap together only: not a transposition group, so nothing
    assert _groups(_fn(lambda a, b, c, d: a * b + c * d - a * d, box)) == []
    # the same expression over a box whose sides differ: not a symmetry of the box
    uneven = {"a": (-1.0, 2.0), "b": (-1.0, 3.0), "c": (-1.0, 2.0), "d": (-1.0, 2.0)}
    assert _groups(_fn(lambda a, b, c, d: a + b + c + d, uneven)) == [[0, 2, 3]]
    # a declaration that differs only in its missing-value policy keeps the field out
    fields = [Field(-1.0, 2.0), Field(-1.0, 2.0, missing="drop"), Field(-1.0, 2.0)]
    xs = sp.symbols("a b c", real=True)
    assert symmetric_groups(xs[0] + xs[1] + xs[2], xs, fields) == [[0, 2]]
    # a partial's own field is never permuted
    assert _groups(_fn(lambda a, b, c, d: a + b + c + d, box), fixed=1) == [[0, 2, 3]]


def test_canonical_form_is_one_per_orbit_and_a_permutation():
    rng = np.random.default_rng(3)
    groups = [[0, 2, 3], [1, 4]]
    pieces = np.array([[-1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [-0.5, 0.0], [0.0, 1.0]])
    for _ in range(200):
        choice = pieces[rng.integers(0, len(pieces), 5)]
        lo, hi = choice[:, 0][None, :].copy(), choice[:, 1][None, :].copy()
        perm = np.arange(5)
        for g in groups:
            perm[g] = rng.permutation(g)
        clo, chi = canonical(lo.copy(), hi.copy(), groups)
        plo, phi = canonical(lo[:, perm].copy(), hi[:, perm].copy(), groups)
        assert np.array_equal(clo, plo) and np.array_equal(chi, phi)
        for g in groups:  # the same intervals, reordered within the group
            before = sorted(zip(lo[0, g], hi[0, g], strict=True))
            after = sorted(zip(clo[0, g], chi[0, g], strict=True))
            assert before == after


def _softmax_norm_at(point: list[float]) -> mpmath.mpf:
    with mpmath.workdps(50):
        e = [mpmath.e ** mpmath.mpf(v) for v in point]
        total = mpmath.fsum(e)
        return mpmath.sqrt(mpmath.fsum((v / total) ** 2 for v in e))


@pytest.mark.parametrize("n", [3, 6, 10])
def test_logsumexp_certificate_with_the_reduction_is_sound_and_tighter(n):
    box = {f"x{i}": (-1.0, 1.0) for i in range(n)}
    fn = _fn(lambda *x: sp.log(sum(sp.exp(v) for v in x)), box)
    assert _groups(fn) == [list(range(n))]
    # the maximiser: one field at 1, the rest at -1 (||softmax||_2 is Schur-convex); every other vertex
    # checked as well, so the truth does not rest on that claim
    truth = max(_softmax_norm_at([1.0] * k + [-1.0] * (n - k)) for k in range(n + 1))
    lo, hi = np.full(n, -1.0), np.full(n, 1.0)
    kwargs = {"time_budget": 1000.0, "max_boxes": 600, "polish": False}
    with_groups = maximize(GradientObjective(fn, 2.0), lo, hi, symmetric=[list(range(n))], **kwargs)
    without = maximize(GradientObjective(fn, 2.0), lo, hi, **kwargs)
    assert mpmath.mpf(with_groups.upper) >= truth
    assert mpmath.mpf(without.upper) >= truth
    assert with_groups.upper <= without.upper
    # and through the public certificate (groups found by the library itself)
    assert mpmath.mpf(fn.lipschitz(time_budget=1.0).upper) >= truth


def test_range_with_two_mirrored_peaks_keeps_the_peak_off_the_canonical_order():
    # symmetric in (a, b); the maxima sit at (0.7, -0.4) and (-0.4, 0.7): a reduction that dropped
    # the wrong half of an orbit, or sorted the wrong way, would miss both
    box = {"a": (-1.0, 1.0), "b": (-1.0, 1.0)}

    def bump(a, b):
        return sp.exp(-20 * ((a - sp.Rational(7, 10)) ** 2 + (b + sp.Rational(2, 5)) ** 2)) + \
            sp.exp(-20 * ((b - sp.Rational(7, 10)) ** 2 + (a + sp.Rational(2, 5)) ** 2))

    fn = _fn(bump, box)
    assert _groups(fn) == [[0, 1]]
    cert = fn.range()
    grid = np.linspace(-1, 1, 801)
    A, B = np.meshgrid(grid, grid)
    values = np.exp(-20 * ((A - 0.7) ** 2 + (B + 0.4) ** 2)) + np.exp(-20 * ((B - 0.7) ** 2 + (A + 0.4) ** 2))
    assert cert.upper >= values.max() and cert.lower <= values.min()
    with mpmath.workdps(50):  # the exact value at a peak (the other bump adds a little)
        peak = mpmath.e ** 0 + mpmath.e ** (-20 * ((mpmath.mpf(-0.4) - mpmath.mpf(0.7)) ** 2 + (mpmath.mpf(0.7) + mpmath.mpf(0.4)) ** 2))
    assert mpmath.mpf(cert.upper) >= peak


def test_partial_bound_excludes_its_own_field_from_the_group():
    # d/da of a * (b + c) + b * c ... symmetric in (b, c) only once a is fixed; |df/da| = |b + c| <= 4
    box = dict.fromkeys(["a", "b", "c"], (-1.0, 2.0))
    fn = _fn(lambda a, b, c: a * b + a * c + b * c, box)
    assert _groups(fn) == [[0, 1, 2]]
    assert _groups(fn, fixed=0) == [[1, 2]]
    bound = fn.partial_bounds()["a"]
    assert bound.upper >= 4.0 and bound.upper <= 4.0 * (1 + 1e-3) + 1e-9


def test_unequal_sides_ignore_a_claimed_group():
    # a group whose sides differ is dropped by maximize itself: here the maximum of a - b on
    # [0, 1] x [0, 3] (1 at a = 1, b = 0) would be lost if the box were "sorted"
    fn = _fn(lambda a, b: a - b, {"a": (0.0, 1.0), "b": (0.0, 3.0)})
    res = maximize(RangeObjective(fn, +1.0), np.array([0.0, 0.0]), np.array([1.0, 3.0]), symmetric=[[0, 1]],
                   time_budget=5.0)
    assert res.upper >= 1.0


def test_library_uses_the_groups_it_finds(monkeypatch):
    calls: list[list[list[int]]] = []
    original = certify_module._symmetry

    def spy(fn, fixed=None):
        groups = original(fn, fixed)
        calls.append(groups)
        return groups

    monkeypatch.setattr(certify_module, "_symmetry", spy)
    fn = _fn(lambda *x: sp.sqrt(1 + sum(sp.tanh(v) ** 2 for v in x)), dict.fromkeys(["p", "q", "r"], (-2.0, 1.0)))
    cert = fn.lipschitz(time_budget=2.0)
    assert [0, 1, 2] in calls[-1]
    # truth: brute force on a grid (a lower bound of the supremum), which the certificate must not fall below
    grid = np.linspace(-2, 1, 61)
    best = 0.0
    for p, q, r in itertools.product(grid, repeat=3):
        t = np.tanh([p, q, r])
        s = math.sqrt(1 + float(np.sum(t**2)))
        g = t * (1 - t**2) / s
        best = max(best, float(np.linalg.norm(g)))
    assert cert.upper >= best


class _WithheldWitness:
    """A range objective with every point value withheld: only the partition's bound is tested."""

    def __init__(self, fn: hd.RecordFunction):
        self.inner = RangeObjective(fn, +1.0)

    def enclose(self, lo, hi):
        from opendp_hybridad.analysis.branch_and_bound import BoxBounds

        b = self.inner.enclose(lo, hi)
        return BoxBounds(b.upper, b.bad, b.split_score, np.full(lo.shape[0], -np.inf), b.shrink)

    def value(self, points):
        return np.full(points.shape[0], -np.inf)

    def lower_bound(self, points):
        return np.full(points.shape[0], -np.inf)

    def explain(self, bad):
        return self.inner.explain(bad)


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_one_ulp_side_is_never_split_onto_itself(symmetric):
    # audit attack_symmetry.py: on a side one ulp wide the rounded midpoint is an end, so one "child" was
    # the parent itself; with the reduction that child's key was already seen and the box left the
    # partition (a bound below the truth). The truth here is exact: f(c, c, 3e6) = 0 in rationals.
    X, M = 2.0**22, 10**6
    c = sp.Rational(X + 0.25 + math.ulp(X))  # an odd mantissa, between the floats a one-ulp box keeps
    schema = hd.Schema({"x0": (X, X + 1.0), "x1": (X, X + 1.0), "x2": (3.0 * M, 3.0 * M)})
    x0, x1, x2 = schema.symbols()
    fn = hd.RecordFunction(-sp.Abs(x0 - c) - sp.Abs(x1 - c) + x2 / 3 - M, schema, name="f")
    assert fn.expr.xreplace({x0: c, x1: c, x2: 3 * M}) == 0
    lo, hi = certify_module._box_arrays(fn)
    groups = [[0, 1]] if symmetric else []
    res = maximize(_WithheldWitness(fn), lo, hi, tolerance=0.0, time_budget=1.0, symmetric=groups)
    assert sp.Rational(res.upper) >= 0
    assert sp.Rational(certify_module.certify_range(fn, tolerance=0.0, time_budget=1.0).upper) >= 0
