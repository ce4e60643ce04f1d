"""Audit: OpenDP's noise is DISCRETE (a lattice 2^k; Z for integer data), accounted as CONTINUOUS in dp-accounting.

OpenDP 0.16's make_laplace / make_gaussian sample a discrete Laplace / discrete Gaussian on the lattice
2^k (k = -1074 by default for floats, the integers for int data). accounting.noise_accounting and
accounted() describe them as dp-accounting's continuous LaplaceDpEvent / GaussianDpEvent. Their
zCDP agrees (Canonne-Kamath-Steinke 2020), but the privacy profile delta(eps) does not: with few
lattice units of noise the discrete mechanism's delta(eps) is LARGER, so compose_epsilon understates.

Ground truth: exact sums over the lattice (mpmath, 50 digits; CKS Theorem 7 for the Gaussian, the
closed form P(X <= 0)(1 - e^(eps - D/b)) for the Laplace), cross-checked with dp-accounting's own
discrete-mechanism PLDs.

The fix (opendp_hybridad.lattice_noise): each record declares the total variation distance between
OpenDP's lattice noise and the rounded continuous noise, and compose_epsilon's total delta
(delta + (1 + e^eps) * distance) covers the exact discrete delta at the reported epsilon; the
continuous epsilon alone stays below the exact one. Run: python bench/audits/attack_discrete_noise.py
(exit 1 while the reported (epsilon, total delta) is understated).
"""

from __future__ import annotations

import math
import sys

import mpmath as mp
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.accounting import accounted, compose_epsilon
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.measurements import make_private_sum

mp.mp.dps = 50
UNIT = math.ldexp(1.0, -1074)  # OpenDP's default float lattice


def discrete_gaussian_delta(sigma: int, sensitivity: int, eps: mp.mpf) -> mp.mpf:
    """Exact delta(eps) of N_Z(0, sigma^2) vs N_Z(sensitivity, sigma^2): sum over the lattice."""
    s2, radius = 2 * mp.mpf(sigma) ** 2, 40 * sigma + sensitivity + 10
    weight = {x: mp.e ** (-mp.mpf(x) ** 2 / s2) for x in range(-radius - sensitivity, radius + sensitivity + 1)}
    total = mp.fsum(weight[x] for x in range(-radius, radius + 1))
    return mp.fsum(max(mp.mpf(0), weight[x] - mp.e ** eps * weight[x - sensitivity])
                   for x in range(-radius, radius + 1)) / total


def epsilon_at(delta_of, delta: float, low: float = 0.0, high: float = 20.0) -> mp.mpf:
    lo, hi = mp.mpf(low), mp.mpf(high)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def discrete_laplace_delta(b: float, sensitivity: int, eps: mp.mpf) -> mp.mpf:
    """Exact delta(eps) of the discrete Laplace exp(-|x|/b) on Z at ``sensitivity``: P(X <= 0)(1 - e^(eps - D/b))^+."""
    b = mp.mpf(b)
    p0 = 1 / (1 + mp.e ** (-1 / b))
    return p0 * max(mp.mpf(0), 1 - mp.e ** (eps - sensitivity / b))


def understated(report: dict, exact_delta) -> bool:
    """Whether the reported total delta falls below the exact discrete delta at either reported epsilon."""
    return any(mp.mpf(report["delta"]) < exact_delta(mp.mpf(report[key])) for key in ("epsilon_pld", "epsilon_rdp"))


def discrete_laplace_epsilon(b: float, sensitivity: int, delta: float) -> float:
    """Exact epsilon at delta of the discrete Laplace exp(-|x|/b) on Z for b = 0.5, D = 2: loss D/b on x <= 0, <= 0 elsewhere."""
    p0 = 1 / (1 + math.exp(-1 / b))  # P(X <= 0): the whole region where the loss is D/b
    return sensitivity / b + math.log(1 - delta / p0)


def main() -> int:
    dp.enable_features("contrib", "honest-but-curious")
    failed = False

    # 1. accounted() on OpenDP's integer Gaussian: sigma 6, d_in 6 (noise multiplier 1), delta 1e-6
    g = accounted(dp.m.make_gaussian(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=6.0), d_in=6)
    report = compose_epsilon([g], 1e-6)
    exact = epsilon_at(lambda e: discrete_gaussian_delta(6, 6, e), 1e-6)
    print(f"int Gaussian sigma 6, d_in 6, delta 1e-6: epsilon_pld {report['epsilon_pld']:.6f}, "
          f"epsilon_rdp {report['epsilon_rdp']:.6f}, exact {mp.nstr(exact, 8)}; "
          f"exact delta at epsilon_pld {mp.nstr(discrete_gaussian_delta(6, 6, mp.mpf(report['epsilon_pld'])), 8)}, "
          f"reported total delta {report['delta']:.6g}")
    failed |= understated(report, lambda eps: discrete_gaussian_delta(6, 6, eps))

    # 2. accounted() on OpenDP's integer Laplace: scale 0.5, d_in 2, delta 0.1 (both accountants under)
    lap = accounted(dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=0.5), d_in=2)
    report = compose_epsilon([lap], 0.1)
    exact_l = discrete_laplace_epsilon(0.5, 2, 0.1)
    print(f"int Laplace scale 0.5, d_in 2, delta 0.1: epsilon_pld {report['epsilon_pld']:.6f}, "
          f"epsilon_rdp {report['epsilon_rdp']:.6f}, exact {exact_l:.6f}, reported total delta {report['delta']:.6g}")
    failed |= understated(report, lambda eps: discrete_laplace_delta(0.5, 2, eps))

    # 3. a frame sum whose scale is a few float lattice units (subnormal): f = x on [0, 6 * 2^-1074]
    s = hd.Schema(x=hd.Field(0, 6 * UNIT))
    (x,) = s.symbols()
    m = make_private_sum(make_frame_domain(s, size_limit=1), s.function(x), rho=0.5)
    released = [m(pd.DataFrame({"x": [6 * UNIT]})) / UNIT for _ in range(5)]
    report = compose_epsilon([m], 1e-6)
    print(f"frame sum, scale 6 lattice units (outputs {released}): epsilon_pld {report['epsilon_pld']:.6f} "
          f"vs exact {mp.nstr(exact, 8)}, reported total delta {report['delta']:.6g}")
    failed |= understated(report, lambda eps: discrete_gaussian_delta(6, 6, eps))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
