"""The total variation bounds between OpenDP's lattice noise and rounded continuous noise
(opendp_hybridad.lattice_noise), checked against exact lattice sums (mpmath, 50 digits)."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath as mp
import opendp.prelude as dp
import pytest

from opendp_hybridad.accounting import AccountingError, accounted, accounting_of, compose_epsilon
from opendp_hybridad.lattice_noise import (
    _exp_neg_bounds,
    gaussian_distance_bound,
    laplace_distance_bound,
    lattice_noise_distance,
    noise_coordinates,
    opendp_default_k,
    transformation_noise_lattice,
)

mp.mp.dps = 50
TINY = math.ldexp(1.0, -1074)


def _mp(value: Fraction | float) -> mp.mpf:
    value = Fraction(value)
    return mp.mpf(value.numerator) / value.denominator


def exact_laplace_tv(b: Fraction) -> mp.mpf:
    """TV of the discrete Laplace exp(-|j|/b) on Z and round(continuous Laplace(b)), by a lattice sum."""
    b = _mp(b)
    x = 1 / (2 * b)
    radius = int(140 * b) + 20  # the tail beyond holds less than e^-140
    discrete = [mp.tanh(x) * mp.e ** (-abs(j) / b) for j in range(-radius, radius + 1)]
    rounded = [(mp.e ** ((abs(j) + mp.mpf(1) / 2) / -b) * (mp.e ** (1 / b) - 1) / 2 if j else 1 - mp.e ** -x)
               for j in range(-radius, radius + 1)]
    return mp.fsum(abs(p - r) for p, r in zip(discrete, rounded, strict=True)) / 2


def exact_gaussian_tv(sigma: Fraction) -> mp.mpf:
    """TV of the discrete Gaussian N_Z(0, sigma^2) and round(N(0, sigma^2)), by a lattice sum."""
    s = _mp(sigma)
    radius = int(45 * s) + 10  # exp(-45^2 / 2) beyond
    weights = [mp.e ** (-mp.mpf(j) ** 2 / (2 * s * s)) for j in range(-radius, radius + 1)]
    total = mp.fsum(weights)
    cells = [mp.ncdf((j + mp.mpf(1) / 2) / s) - mp.ncdf((j - mp.mpf(1) / 2) / s) for j in range(-radius, radius + 1)]
    return mp.fsum(abs(w / total - c) for w, c in zip(weights, cells, strict=True)) / 2


# -- the algebra the bounds rest on ------------------------------------------------------------
@pytest.mark.parametrize("x", ["0.001", "0.1", "0.5", "1", "2.5", "7"])
def test_the_laplace_identity_and_inequalities(x):
    x = mp.mpf(x)
    u = mp.e ** -x
    # TV = 1/2 [(tanh x - 1 + u) + 2 (sinh x - tanh x) / (e^2x - 1)], and the two halves are equal
    first = mp.tanh(x) - 1 + u
    second = 2 * (mp.sinh(x) - mp.tanh(x)) / (mp.e ** (2 * x) - 1)
    assert mp.almosteq(first, second, rel_eps=mp.mpf(10) ** -40)
    assert mp.almosteq(first, u * (1 - u) ** 2 / (1 + u * u), rel_eps=mp.mpf(10) ** -40)
    assert first <= x * x / 2 and second <= mp.cosh(x) - 1
    if x <= 1:
        assert mp.cosh(x) - 1 <= x * x


@pytest.mark.parametrize("x", [Fraction(0), Fraction(1, 10**9), Fraction(1, 3), Fraction(1), Fraction(7, 2), Fraction(40),
                               Fraction(1000), Fraction(5000)])
def test_exp_is_enclosed_by_rationals(x):
    lo, hi = _exp_neg_bounds(x)
    exact = mp.e ** -_mp(x)
    assert _mp(lo) <= exact <= _mp(hi)
    if 0 < x <= 100:
        assert hi - lo <= hi * Fraction(1, 10**30)


# -- the bounds against exact lattice sums -------------------------------------------------------
WIDTHS = [Fraction(1, 4), Fraction(1, 3), Fraction(1, 2), Fraction(3, 4), Fraction(1), Fraction(3, 2), Fraction(2),
          Fraction(3), Fraction(6), Fraction(20)]


@pytest.mark.parametrize("b", WIDTHS)
def test_the_laplace_bound_is_the_exact_tv_rounded_up(b):
    exact = exact_laplace_tv(b)
    bound = lattice_noise_distance("laplace", float(b), 0)
    assert _mp(laplace_distance_bound(b)) >= exact and _mp(bound) >= exact
    assert _mp(bound) <= exact * (1 + mp.mpf(10) ** -12)  # the exact form: tight
    assert bound <= float(1 / (8 * b * b))  # and never above x^2 / 2


@pytest.mark.parametrize("sigma", [Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(2), Fraction(3), Fraction(6),
                                   Fraction(20)])
def test_the_gaussian_bound_covers_the_exact_tv_within_ten_times(sigma):
    exact = exact_gaussian_tv(sigma)
    bound = lattice_noise_distance("gaussian", float(sigma), 0)
    assert _mp(gaussian_distance_bound(sigma)) >= exact and _mp(bound) >= exact
    assert _mp(bound) <= 10 * exact


def test_the_gaussian_bound_formula_as_stated():
    for sigma in (1, 2, 6, 20):
        s = mp.mpf(sigma)
        q = mp.e ** (-2 * mp.pi**2 * s * s)
        stated = ((4 * mp.e ** -0.5 / s + 6 / s**2) / (24 * s * mp.sqrt(2 * mp.pi)) + 2 * q / (1 - q)) / 2
        assert stated <= _mp(gaussian_distance_bound(Fraction(sigma))) <= stated * (1 + mp.mpf(10) ** -15)
        # theta - 1 by Poisson summation, against the lattice sum
        lattice = mp.fsum(mp.e ** (-mp.mpf(j) ** 2 / (2 * s * s)) for j in range(-50 * sigma, 50 * sigma + 1))
        excess = lattice / (s * mp.sqrt(2 * mp.pi)) - 1
        assert excess <= 2 * q / (1 - q) + mp.mpf(10) ** -45  # (50-digit sums)
        assert sigma > 1 or excess >= q  # at sigma 1 the excess is real: about 2q


def test_tiny_widths_are_at_most_one_and_zero_width_is_one():
    for mechanism in ("laplace", "gaussian"):
        assert lattice_noise_distance(mechanism, 0.0, 0) == 1.0
        assert 0 < lattice_noise_distance(mechanism, 0.01, 0) <= 1.0
    assert lattice_noise_distance("laplace", 0.3, 0) <= 0.14  # the exact form peaks near 0.135


# -- rounding up at any width ------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_huge_and_tiny_widths_round_up_and_are_monotone(mechanism):
    scales = [1e300, 1.0, 2.0**-500, 2.0**-1000, 2.0**-1060, 1000 * TINY, 20 * TINY, 6 * TINY, 2 * TINY, TINY]
    distances = [lattice_noise_distance(mechanism, s, -1074) for s in scales]
    assert all(d > 0 for d in distances), distances  # a positive bound never becomes 0.0
    assert distances == sorted(distances)  # narrower noise, larger (or equal) distance
    assert distances[0] == distances[1] == TINY  # 2^-2148 and below: the smallest subnormal
    # 2^-1000 at k = -1074 is 2^74 units: about 2^-150, representable, so rounded up and not flushed
    bound = (laplace_distance_bound if mechanism == "laplace" else gaussian_distance_bound)(Fraction(2) ** 74)
    assert Fraction(distances[3]) >= bound and distances[3] <= float(bound) * (1 + 2**-50)


def test_the_k_shifts_the_width():
    assert lattice_noise_distance("gaussian", 6.0, 0) == lattice_noise_distance("gaussian", 6 * 2.0**-30, -30)
    assert lattice_noise_distance("laplace", 0.75, -2) == lattice_noise_distance("laplace", 3.0, 0)


def test_coordinates_multiply_and_cap_at_one():
    one = lattice_noise_distance("gaussian", 6.0, 0)
    assert lattice_noise_distance("gaussian", 6.0, 0, coordinates=10) >= 10 * one * (1 - 2**-50)
    assert Fraction(lattice_noise_distance("gaussian", 6.0, 0, coordinates=10)) >= 10 * gaussian_distance_bound(Fraction(6))
    assert lattice_noise_distance("laplace", 1.0, 0, coordinates=1000) == 1.0
    assert lattice_noise_distance("laplace", 1.0, 0, coordinates=0) == 0.0
    # one rounding for all coordinates: 3 x 2^-2150 is still the smallest subnormal
    assert lattice_noise_distance("gaussian", 1.0, -1074, coordinates=3) == TINY


def test_bad_arguments_are_refused():
    with pytest.raises(AccountingError, match="mechanism"):
        lattice_noise_distance("exponential", 1.0, 0)
    with pytest.raises(AccountingError, match="scale"):
        lattice_noise_distance("laplace", -1.0, 0)
    with pytest.raises(AccountingError, match="integers"):
        lattice_noise_distance("laplace", 1.0, 0.5)


# -- OpenDP's lattice, where the measurement is built ----------------------------------------------
def test_opendp_default_lattices():
    assert opendp_default_k("f64") == -1074 and opendp_default_k("f32") == -149 and opendp_default_k("i32") == 0
    # OpenDP's outputs lie on those lattices
    lap = dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=3 * TINY)
    assert all((lap(0.0) / TINY).is_integer() for _ in range(20))
    assert noise_coordinates(dp.vector_domain(dp.atom_domain(T=float, nan=False), size=4)) == 4
    with pytest.raises(AccountingError, match="coordinates="):
        noise_coordinates(dp.vector_domain(dp.atom_domain(T=float, nan=False)))


def test_the_float_frame_case_is_negligible_but_positive():
    import opendp_hybridad as hd
    from opendp_hybridad.frame import make_frame_domain
    from opendp_hybridad.frame.aggregate import make_sum_of_vector
    from opendp_hybridad.frame.measurements import make_private_mean, make_private_sum, make_private_sum_vector

    schema = hd.Schema(x=hd.Field(0, 10), y=hd.Field(-1, 1))
    x, y = schema.symbols()
    domain = make_frame_domain(schema, size_limit=100)
    total = accounting_of(make_private_sum(domain, schema.function(x), epsilon=1.0))
    assert total.statistical_distance == TINY
    functions = [schema.function(x), schema.function(y), schema.function(x * y)]
    vector = accounting_of(make_private_sum_vector(domain, functions, rho=0.5))
    assert transformation_noise_lattice(make_sum_of_vector(domain, dp.symmetric_distance(), functions, 2)) == (-1074, 3)
    assert vector.statistical_distance == lattice_noise_distance("gaussian", vector.scale, -1074, 3) == TINY
    mean = accounting_of(make_private_mean(domain, schema.function(x), epsilon=1.0))
    assert mean.statistical_distance == 2 * TINY == sum(p.statistical_distance for p in mean.parts)
    report = compose_epsilon([make_private_sum(domain, schema.function(x), epsilon=1.0)], 1e-6)
    assert report["statistical_distance"] == TINY and report["delta"] == math.nextafter(1e-6, 1.0)


def test_accounted_needs_the_float_lattice_and_reads_the_integer_one():
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    with pytest.raises(AccountingError, match=r"pass k= \(OpenDP's default.*-1074"):
        accounted(space >> dp.m.then_gaussian(2.0))
    record = accounting_of(accounted(space >> dp.m.then_gaussian(2.0), k=-1074))
    assert record.statistical_distance == TINY
    with pytest.raises(AccountingError, match="2\\^-1074, not 2\\^-3"):
        accounted(space >> dp.m.then_gaussian(2.0), k=-3)
    coarse = accounting_of(accounted(dp.m.make_laplace(*space, scale=1.0, k=-1), k=-1))
    assert coarse.statistical_distance == lattice_noise_distance("laplace", 1.0, -1)
    integer = accounting_of(accounted(dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=2.0), d_in=2))
    assert integer.statistical_distance == pytest.approx(float(exact_laplace_tv(Fraction(2))), rel=1e-12)
    with pytest.raises(AccountingError, match="k is 0"):
        accounted(dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=2.0), k=-3)
    # a vector: its size, or coordinates= when the domain does not fix it
    sized = dp.vector_domain(dp.atom_domain(T=int), size=5), dp.l2_distance(T=int)
    assert accounting_of(accounted(dp.m.make_gaussian(*sized, scale=6.0), d_in=6)).statistical_distance == \
        lattice_noise_distance("gaussian", 6.0, 0, 5)
    unsized = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    with pytest.raises(AccountingError, match="coordinates="):
        accounted(dp.m.make_gaussian(*unsized, scale=6.0), d_in=6)
    assert accounting_of(accounted(dp.m.make_gaussian(*unsized, scale=6.0), d_in=6, coordinates=7)).statistical_distance == \
        lattice_noise_distance("gaussian", 6.0, 0, 7)


def test_accounted_on_a_chain_needs_the_noise_declared():
    chain = dp.t.make_sum(dp.vector_domain(dp.atom_domain(bounds=(0, 1))), dp.symmetric_distance()) >> dp.m.then_laplace(1.0)
    with pytest.raises(AccountingError, match="scale=, k= and coordinates="):
        accounted(chain)
    record = accounting_of(accounted(chain, scale=1.0, k=0, coordinates=1))
    assert record.statistical_distance == lattice_noise_distance("laplace", 1.0, 0)


def test_grouped_releases_count_one_draw_per_key_and_the_mean_sums_its_parts():
    import opendp_hybridad as hd
    from opendp_hybridad.frame import make_frame_domain
    from opendp_hybridad.frame.groupby import make_grouped_count_of, make_private_grouped_count, make_private_grouped_mean

    schema = hd.Schema(x=hd.Field(0, 10))
    (x,) = schema.symbols()
    domain = make_frame_domain(schema, size_limit=100, labels=["g"])
    keys = ["a", "b", "c", "d"]
    assert transformation_noise_lattice(make_grouped_count_of(domain, dp.symmetric_distance(), "g", keys)) == (-1074, 4)
    counts = accounting_of(make_private_grouped_count(domain, by="g", keys=keys, rho=0.5))
    assert counts.statistical_distance == lattice_noise_distance("gaussian", counts.scale, -1074, 4) == TINY
    mean = accounting_of(make_private_grouped_mean(domain, schema.function(x), by="g", keys=keys, epsilon=1.0))
    assert mean.statistical_distance == 2 * TINY == sum(p.statistical_distance for p in mean.parts)
