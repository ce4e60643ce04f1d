"""The first-layer (z-space) bound of activation networks (:mod:`opendp_hybridad.analysis.network_zspace`).

Truth as in test_network.py: sympy's own gradient lambdified to mpmath at 50 digits, at corners, a grid and
random points of the box (each a lower bound of the supremum, so a bound below one is a violation).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy as sp
from test_network import ACTS, _network, _true_norms, _truth_points

from opendp_hybridad.analysis.branch_and_bound import maximize
from opendp_hybridad.analysis.network import SlopeVertices
from opendp_hybridad.analysis.network_zspace import FirstLayerObjective
from opendp_hybridad.analysis.tape import Tape


def _case(seed: int):
    """A network whose first layer is narrower than its fields, on a random box."""
    rng = np.random.default_rng(100 + seed)
    act = list(ACTS)[seed % 3]
    n = 3 + seed % 4
    widths = ((n - 1,), (n - 1, 2), (2, 3), (n - 2, 2, 2))[seed % 4]
    expr, xs = _network(rng, n, widths, act, skip=seed % 5 == 4)
    lo = rng.uniform(-2, 0.5, n)
    hi = lo + rng.uniform(0.2, 2.5, n)
    if seed % 6 == 5:  # a side of width 0
        hi[0] = lo[0]
    return rng, expr, xs, lo, hi, FirstLayerObjective.detect(_vertices(expr, xs), lo, hi)


def _vertices(expr: sp.Expr, xs: list[sp.Symbol]) -> SlopeVertices | None:
    tape = Tape(xs)
    return SlopeVertices.detect(tape, tape.add_output(expr))


def _z_of(z: FirstLayerObjective, xs_values: np.ndarray) -> list[list[mpmath.mpf]]:
    """``c + W x`` at 50 digits from the coefficients' enclosures (their ends bracket the exact value)."""
    out = []
    with mpmath.workdps(50):
        for x in xs_values:
            row = []
            for i in range(z.m):
                lo = mpmath.mpf(z.c_lo[i]) + mpmath.fsum(min(mpmath.mpf(z.W_lo[i, k]) * mpmath.mpf(x[k]),
                                                             mpmath.mpf(z.W_hi[i, k]) * mpmath.mpf(x[k])) for k in range(z.n))
                hi = mpmath.mpf(z.c_hi[i]) + mpmath.fsum(max(mpmath.mpf(z.W_lo[i, k]) * mpmath.mpf(x[k]),
                                                             mpmath.mpf(z.W_hi[i, k]) * mpmath.mpf(x[k])) for k in range(z.n))
                row.append((lo, hi))
            out.append(row)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_the_search_over_z_bounds_the_50_digit_gradient_norms(seed: int):
    rng, expr, xs, lo, hi, z = _case(seed)
    assert z is not None and z.m < z.n
    # known_lower 0: the search refines (and drops boxes) until its budget ends, as in a certificate (review: without a
    # finite value to compare with, it stopped at the root box)
    res = maximize(z, z.root_lo, z.root_hi, time_budget=0.3, polish=False, known_lower=0.0)
    assert res.boxes > 1
    truth = max(_true_norms(expr, xs, _truth_points(lo, hi, rng, samples=60), 2.0))
    assert truth <= res.upper


@pytest.mark.parametrize("seed", range(12))
def test_a_box_around_z_of_a_point_is_never_empty_and_bounds_its_gradient(seed: int):
    rng, expr, xs, lo, hi, z = _case(seed)
    points = _truth_points(lo, hi, rng, samples=30)
    norms = _true_norms(expr, xs, points, 2.0)
    for x, exact, norm in zip(points, _z_of(z, points), norms, strict=True):
        # the smallest float box holding the exact z(x) (ends rounded outward), and a slightly wider one
        b_lo = np.array([float(mpmath.mpf(a)) for a, _ in exact])
        b_hi = np.array([float(mpmath.mpf(b)) for _, b in exact])
        b_lo, b_hi = np.nextafter(b_lo, -np.inf), np.nextafter(b_hi, np.inf)
        for pad in (0.0, 1e-6):
            blo, bhi = (b_lo - pad)[None, :], (b_hi + pad)[None, :]
            assert not z._empty(blo, bhi)[0], (x, blo, bhi)
            assert norm <= z.enclose(blo, bhi).upper[0]


def test_boxes_beyond_the_zonotope_are_found_empty():
    # completeness check of the separating directions: a small box just past a facet, inside the root box
    found = 0
    for seed in range(12):
        _, _, _, lo, hi, z = _case(seed)
        corners = lo + np.array(np.meshgrid(*[[0.0, 1.0]] * z.n)).reshape(z.n, -1).T * (hi - lo)
        W = 0.5 * (z.W_lo + z.W_hi)
        c = 0.5 * (z.c_lo + z.c_hi)
        images = corners @ W.T + c
        for y in z.directions[:50]:
            top = images[np.argmax(images @ y)]
            outside = top + 0.05 * y * (1 + np.abs(top).max())
            if np.all(outside > z.root_lo) and np.all(outside < z.root_hi):
                box = (outside - 1e-4)[None, :], (outside + 1e-4)[None, :]
                assert z._empty(*box)[0]
                found += 1
    assert found > 20


def test_a_support_below_the_truth_is_caught():
    # the broken variant: the zonotope's support lowered by a tenth prunes boxes that hold z(x)
    caught = 0
    for seed in range(6):
        rng, _, _, lo, hi, z = _case(seed)
        z.support_up = z.support_up - 0.1 * np.abs(z.support_up)
        points = _truth_points(lo, hi, rng, samples=30)
        for exact in _z_of(z, points):
            b_lo = np.nextafter(np.array([float(a) for a, _ in exact]), -np.inf)
            b_hi = np.nextafter(np.array([float(b) for _, b in exact]), np.inf)
            caught += bool(z._empty(b_lo[None, :], b_hi[None, :])[0])
    assert caught > 0


def test_detection_needs_a_first_layer_narrower_than_the_fields():
    rng = np.random.default_rng(0)
    for n, widths, expect in ((3, (3,), False), (3, (4, 2), False), (4, (3,), True), (5, (2, 6), True)):
        expr, xs = _network(rng, n, widths, "tanh", skip=False)
        assert (FirstLayerObjective.detect(_vertices(expr, xs), -np.ones(n), np.ones(n)) is not None) is expect
    x, y = sp.symbols("x y", real=True)
    assert FirstLayerObjective.detect(_vertices(x * y + sp.tanh(x), [x, y]), -np.ones(2), np.ones(2)) is None
    assert FirstLayerObjective.detect(None, -np.ones(2), np.ones(2)) is None


def test_the_certificate_of_a_narrowing_network_is_sound_and_tight():
    from tightness_suite import CASES, function_of, true_lipschitz

    case = next(c for c in CASES if c.name == "sigmoid MLP 10-5-1")
    truth = true_lipschitz(case, newton=False)
    cert = function_of(case).lipschitz(time_budget=2.0)
    assert truth.value <= cert.upper
    assert cert.witness.value <= cert.upper
    assert math.isfinite(cert.upper) and cert.upper <= 1.25 * float(truth.value)
