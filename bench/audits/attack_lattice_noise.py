"""Audit of the lattice-noise fix (opendp_hybridad.lattice_noise, accounted(), compose_epsilon, pld_size).

What held (ground truth: mpmath, 50-80 digits, exact lattice sums / closed forms):
  * OpenDP 0.16 (rust/src/measurements/noise/nature/float): x rounded to the nearest multiple of 2^k,
    sensitivity (d_in + rounding_distance) * 2^-k (rational, not rounded up; 0 extra at the default
    k = get_min_k = -1074 for f64, -149 for f32), noise exactly discrete Laplace / Gaussian of scale
    scale * 2^-k, output x_mul_2k then cast (post-processing). Integers: k = 0, any other k refused.
  * laplace_distance_bound >= exact TV u(1-u)^2/(1+u^2) on widths 2^-40 .. 2^60 (and the float path
    for k in {0, 3, -5}); gaussian_distance_bound >= exact lattice-sum TV for sigma in [0.25, 1000]
    (ratio exact/bound -> 1 - 2.47/sigma, never above 1).
  * compose_epsilon's PLD after coarsening stays above exact Gaussian compositions (k sigma's) and the
    exact single Laplace.

Findings (each fixed; tests/test_audit_lattice_noise.py):
  1. accounted(m, mechanism=...) trusted a mechanism contradicting the map's measure: a Laplace (eps=10)
     accounted as a Gaussian reports eps_pld 4.25 at delta 0.85, exact 6.21; a Gaussian (sigma=1)
     accounted as a Laplace reports eps 0.5 at delta 1e-6 (exact ~ 4.4). A zCDP conversion of a
     Laplace was accepted as a Gaussian.
  2. accounted() on a chain took scale=/k=/coordinates= unchecked although the chain records its noise:
     float data cast to int before then_laplace(0.5) with k=-1074 (what "float data needs k" suggests)
     gave statistical_distance 5e-324; the noise is on the integers, exact TV 0.1295.
  3. pld_size.composition_discretization ignored SelfComposedDpEvent(LaplaceDpEvent) and anything nested
     in a SelfComposedDpEvent: SelfComposed(Laplace(1), 10^4) ran at 1e-4 with 33,786,056 points (8x the
     limit), 10^5 needs > 5 GB; SelfComposed(Laplace(100), 10^8) ran sparse (size ** count, never ends).

Run: python bench/audits/attack_lattice_noise.py (exit 1 while any finding reproduces).
"""

from __future__ import annotations

import math
import sys

import dp_accounting as dpa
import mpmath as mp
import opendp.prelude as dp

from opendp_hybridad import pld_size
from opendp_hybridad.accounting import accounted, accounting_of, compose_epsilon
from opendp_hybridad.errors import AccountingError

mp.mp.dps = 50
#: dp-accounting's PLD of SelfComposed(Laplace(1), 10^4) at interval 1e-4 (measured: 7.3 s)
MEASURED_POINTS_AT_1E4 = 33_786_056


def exact_laplace_tv(width: float) -> mp.mpf:
    u = mp.e ** (-1 / (2 * mp.mpf(width)))
    return u * (1 - u) ** 2 / (1 + u * u)


def exact_laplace_epsilon(b: float, delta: float) -> mp.mpf:
    """Pure Laplace, sensitivity 1: delta(eps) = 1 - e^((eps - 1/b) / 2)."""
    return 1 / mp.mpf(b) + 2 * mp.log(1 - mp.mpf(delta))


def exact_gaussian_epsilon(sigma: float, delta: float) -> mp.mpf:
    mu = 1 / mp.mpf(sigma)
    f = lambda e: mp.ncdf(-e / mu + mu / 2) - mp.e ** e * mp.ncdf(-e / mu - mu / 2) - delta  # noqa: E731
    lo, hi = mp.mpf(0), 50 * mu + 50
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return lo


def finding_mechanism() -> list[str]:
    out = []
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    cases = [("laplace b=0.1 as gaussian", dp.m.make_laplace(*space, scale=0.1), "gaussian", 0.85,
              exact_laplace_epsilon(0.1, 0.85)),
             ("gaussian sigma=1 as laplace", dp.m.make_gaussian(*space, scale=1.0), "laplace", 1e-6,
              exact_gaussian_epsilon(1.0, 1e-6))]
    for name, m, mechanism, delta, exact in cases:
        try:
            report = compose_epsilon([accounted(m, mechanism=mechanism, k=-1074)], delta)
        except AccountingError as exc:
            print(f"  {name}: refused ({exc})")
            continue
        eps = min(report["epsilon_pld"], report["epsilon_rdp"])
        print(f"  {name}: reported eps {eps:.4f} at delta {report['delta']:.3g}, exact {float(exact):.4f}")
        if eps < exact:
            out.append(name)
    return out


def finding_chain() -> list[str]:
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    chain = space >> dp.t.then_cast_default(int) >> dp.t.then_clamp((0, 10)) >> dp.t.then_sum() >> dp.m.then_laplace(0.5)
    exact = exact_laplace_tv(0.5)
    try:
        distance = accounting_of(accounted(chain, scale=0.5, k=-1074, coordinates=1)).statistical_distance
    except AccountingError as exc:
        print(f"  chain float->int->laplace(0.5) with k=-1074: refused ({exc})")
        distance = accounting_of(accounted(chain, scale=0.5, k=0, coordinates=1)).statistical_distance
    print(f"  chain statistical_distance {distance:.6g}, exact TV {float(exact):.6g}")
    return ["chain"] if distance < exact else []


def finding_pld_size() -> list[str]:
    out = []
    event = dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(1.0), 10**4)
    interval = pld_size.composition_discretization(event)
    predicted = MEASURED_POINTS_AT_1E4 * 1e-4 / interval
    print(f"  SelfComposed(Laplace(1), 1e4): interval {interval:.3g}, ~{predicted:,.0f} points (limit {pld_size.MAX_COMPOSED_POINTS:,})")
    if predicted > 1.01 * pld_size.MAX_COMPOSED_POINTS:
        out.append("self-composed laplace")
    nested = dpa.SelfComposedDpEvent(dpa.ComposedDpEvent([dpa.LaplaceDpEvent(1.0), dpa.GaussianDpEvent(1.0)]), 10**5)
    flat = dpa.ComposedDpEvent([dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(1.0), 10**5),
                                dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 10**5)])
    a, b = pld_size.composition_discretization(nested), pld_size.composition_discretization(flat)
    print(f"  SelfComposed(Composed([Laplace, Gaussian]), 1e5): {a:.3g}; flattened by hand: {b:.3g}")
    if a != b:
        out.append("nested self-composition")
    sparse = dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(100.0), 10**8)
    try:
        interval = pld_size.composition_discretization(sparse)
        points = 2 / 100 / interval + 2
        bits = 10**8 * math.log2(points)
        print(f"  SelfComposed(Laplace(100), 1e8): interval {interval:.3g}, {points:.0f} points a step, size**count {bits:.3g} bits")
        if points <= 1000 and bits > pld_size.MAX_SPARSE_POWER_BITS:
            out.append("sparse self-composition")
    except pld_size.PldTooLargeError:
        print("  SelfComposed(Laplace(100), 1e8): PLD refused (RDP stands)")
    return out


def main() -> int:
    dp.enable_features("contrib", "honest-but-curious")
    found = []
    print("1. mechanism against the measure")
    found += finding_mechanism()
    print("2. a chain's declared lattice")
    found += finding_chain()
    print("3. PLD size of self-compositions")
    found += finding_pld_size()
    print("understated / unsized:", found or "none")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
