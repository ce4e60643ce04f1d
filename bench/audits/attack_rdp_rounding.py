"""Adversarial audit of the vectorised DP-SGD accounting (2a72bb8): add_up_array, conversion_offsets,
rdp_to_epsilon, DpSgdRdpCurve.rdp / .epsilon.

Run: ``python bench/audits/attack_rdp_rounding.py`` (about 30 seconds). Exits 1 if a reported figure is
below the truth.

Ground truth: ``fractions.Fraction`` for every ``add_up_array`` sum (the exact sum of the two floats;
an overflowing sum must come back as ``inf``, a negative one above the exact value); mpmath at 60 digits
for the Canonne-Kamath-Steinke 2020 Prop. 12 conversion of the exact RDP values
``units * unit_rdp`` (the unit RDP floats taken as exact): ``min_alpha r + log(1 - 1/alpha) - (log delta +
log alpha) / (alpha - 1)``, at least 0. Also compared: dp-accounting's ``compute_epsilon`` on the same
curve (a float figure from the same formula, with its own refinements), and the scalar loop that
2a72bb8 replaced.

Finding (a violation of a stated bound, pre-existing, low severity): ``DpSgdRdpCurve.rdp(steps)`` ("rounded up")
is below the exact ``units * unit_rdp`` at some orders once ``units`` passes 2^53: ``float(self.units(steps))``
rounds to nearest (down about half the time) before the product, and one ulp of ``up_array`` does not always
cover both roundings (26 of 300 step counts in [2^53, 2^62]; the ``mul_up(float(units), r)`` that 2a72bb8
replaced failed in 148). The epsilon built on it held in every case (the conversion offsets' library-function
padding is far larger than one ulp of r), and 2^53 steps is not a training run. Mend: the product of the
integer and the float exactly (``Fraction`` / ``round_up``), or ``up`` twice when ``units > 2^53``.

Cases: add_up_array on 200k random pairs from a pool of specials (+-0.0, subnormals, 2^-1022, the
largest float and its neighbours, +-inf, powers of two with their neighbours, values that cancel,
random magnitudes over the whole exponent range, mixed signs) plus a near-overflow sweep where TwoSum's
intermediates could overflow; rdp_to_epsilon on random curves (zeros, subnormals, huge, inf) and orders
(the package's, just above 1, huge, non-integers) and deltas from 1e-300 to 1; DpSgdRdpCurve over
noise multipliers 0.3..50, sampling rates 1e-6..1, steps 1..10^12, both samplings.
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from fractions import Fraction

import mpmath as mp
import numpy as np

warnings.filterwarnings("ignore")

from opendp_hybridad.analysis.rounding import add_up_array  # noqa: E402
from opendp_hybridad.dpsgd import accounting as acc  # noqa: E402
from opendp_hybridad.errors import AccountingError, DeclarationError  # noqa: E402

mp.mp.dps = 60
MAX = sys.float_info.max
VIOLATIONS: list[str] = []


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg)


def pool(rng: random.Random) -> float:
    specials = [0.0, -0.0, 5e-324, -5e-324, 1e-323, 2.0**-1022, -2.0**-1022, 2.0**-1022 - 5e-324, MAX, -MAX,
                math.nextafter(MAX, 0), -math.nextafter(MAX, 0), math.inf, -math.inf, 1.0, -1.0, 2.0**-53, -2.0**-53,
                1 + 2.0**-52, 2.0**1023, -2.0**1023, 2.0**970, -2.0**970, 3.0, 0.1, -0.1]
    c = rng.random()
    if c < 0.35:
        return rng.choice(specials)
    if c < 0.55:
        e = rng.randint(-1074, 1023)
        v = math.ldexp(rng.random() + 0.5, e) if e > -1070 else rng.randint(1, 8) * 5e-324
        return v if rng.random() < 0.5 else -v
    if c < 0.75:
        v = math.ldexp(1.0, rng.randint(-1074, 1023))
        for _ in range(rng.randint(-2, 2)):
            v = math.nextafter(v, math.inf)
        return v if rng.random() < 0.5 else -v
    return rng.uniform(-1e3, 1e3) * 10.0 ** rng.randint(-300, 300)


def check_add_up_array(rng: random.Random) -> int:
    n = 200_000
    a = np.array([pool(rng) for _ in range(n)])
    b = np.array([pool(rng) for _ in range(n)])
    # cancelling partners and near-overflow partners
    idx = rng.sample(range(n), 20_000)
    for i in idx[:10_000]:
        b[i] = -a[i] * (1 + rng.choice([0, 2.0**-52, -2.0**-53, 2.0**-30]))
    for i in idx[10_000:]:
        a[i] = rng.choice([MAX, -MAX, math.nextafter(MAX, 0), 2.0**1023 * 1.5])
        b[i] = rng.choice([-1.0, 1.0]) * math.ldexp(rng.random() + 0.5, rng.randint(960, 1023))
    s = add_up_array(a, b)
    s2 = add_up_array(b, a)
    bad = 0
    for x, y, r, r2 in zip(a.tolist(), b.tolist(), s.tolist(), s2.tolist(), strict=False):
        for out in (r, r2):
            if math.isinf(x) or math.isinf(y):
                if not (math.isnan(out) if (math.isinf(x) and math.isinf(y) and x != y) else out == x + y):
                    violation(f"add_up_array({x!r}, {y!r}) = {out!r} with an infinite input")
                    bad += 1
                continue
            exact = Fraction(x) + Fraction(y)
            if math.isnan(out):
                violation(f"add_up_array({x!r}, {y!r}) = nan")
                bad += 1
            elif math.isinf(out):
                if out < 0:
                    violation(f"add_up_array({x!r}, {y!r}) = -inf for a finite exact sum {float(exact)!r}")
                    bad += 1
            elif Fraction(out) < exact:
                violation(f"add_up_array({x!r}, {y!r}) = {out!r} below the exact sum {float(exact)!r}")
                bad += 1
            elif Fraction(out) > exact:
                # next float above at most: out must be the smallest float >= exact or its successor
                below = math.nextafter(out, -math.inf)
                below2 = math.nextafter(below, -math.inf)
                if math.isfinite(below2) and Fraction(below) >= exact and Fraction(below2) >= exact:
                    violation(f"add_up_array({x!r}, {y!r}) = {out!r} two floats above the exact sum (not a bug)")
    print(f"add_up_array: {2 * n} ordered pairs vs Fraction, {bad} below the exact sum")
    return bad


def exact_cks(orders, rdp, delta) -> mp.mpf:
    best = mp.inf
    for a, r in zip(orders, rdp, strict=False):
        a = mp.mpf(float(a))
        r = mp.mpf(r) if not math.isinf(r) else mp.inf
        if r == mp.inf:
            continue
        v = r + mp.log1p(-1 / a) - (mp.log(mp.mpf(delta)) + mp.log(a)) / (a - 1)  # log1p: 1 - 1/a is 1 at 60 digits for a = 1e300
        best = min(best, v)
    return max(mp.mpf(0), best)


def old_rdp_to_epsilon(orders, rdp, delta):
    """The scalar loop 2a72bb8 replaced (copied from its parent)."""
    from opendp_hybridad.analysis.rounding import add_down, add_up, div_down, div_up, libm_down, libm_up, sub_up

    log_delta_low = libm_down(math.log(delta))
    best = math.inf
    for alpha, r in zip(orders, rdp, strict=True):
        alpha, r = float(alpha), float(r)
        if not math.isfinite(r):
            continue
        shrink = libm_up(math.log1p(-div_down(1.0, alpha)))
        numerator = sub_up(-log_delta_low, libm_down(math.log(alpha)))
        tail = div_up(numerator, add_down(alpha, -1.0))
        best = min(best, add_up(add_up(r, shrink), tail))
    return max(0.0, best)


def check_rdp_to_epsilon(rng: random.Random) -> int:
    from opendp_hybridad.accounting import RDP_ORDERS

    bad = 0
    cases = 0
    order_sets = [list(RDP_ORDERS), [1 + 2.0**-52, 1.5, 2.0], [1.0000001, 1e6, 1e15, 1e300], [2.0, 3.0, 1e308],
                  [float(a) for a in range(2, 40)], [1 + 1e-9, 1 + 1e-3]]
    for _trial in range(1500):
        orders = rng.choice(order_sets)
        delta = rng.choice([1e-5, 1e-10, 1e-300, 5e-324, 0.5, 1.0, 1 - 2.0**-53, 10.0 ** -rng.uniform(0, 300)])
        kind = rng.random()
        rdp = []
        for _ in orders:
            c = rng.random()
            if kind < 0.2:
                rdp.append(rng.choice([0.0, -0.0, 5e-324, 2.0**-1022, 1e-300]))
            elif c < 0.1:
                rdp.append(math.inf)
            elif c < 0.2:
                rdp.append(rng.choice([MAX, 1e308, 2.0**1000]))
            else:
                rdp.append(10.0 ** rng.uniform(-20, 5))
        try:
            ours = acc.rdp_to_epsilon(orders, rdp, delta)
        except (AccountingError, DeclarationError):
            continue  # delta outside (0, 1) or an unusable order: a refusal is no figure
            continue
        cases += 1
        truth = exact_cks(orders, rdp, delta)
        if mp.mpf(ours) < truth:
            violation(f"rdp_to_epsilon({orders}, {rdp}, {delta!r}) = {ours!r} < exact {mp.nstr(truth, 20)}")
            bad += 1
        old = old_rdp_to_epsilon(orders, rdp, delta)
        if math.isfinite(old) and mp.mpf(old) < truth:
            print(f"note: the replaced loop was below the truth: {old!r} < {mp.nstr(truth, 20)}")
    print(f"rdp_to_epsilon: {cases} random curves vs mpmath CKS, {bad} below")
    return bad


def check_curves(rng: random.Random) -> int:
    from dp_accounting.rdp import rdp_privacy_accountant as rpa

    bad = 0
    cases = 0
    above = 0
    for _trial in range(40):
        sigma = rng.choice([0.3, 0.5, 0.8, 1.0, 1.1, 2.0, 5.0, 50.0, rng.uniform(0.4, 10)])
        n = rng.choice([100, 1000, 60_000, 10**6, 10**9])
        batch = min(n, rng.choice([1, 7, 64, 256, 4096, n]))
        sampling = rng.choice(["poisson", "poisson", "shuffle"])
        try:
            curve = acc.DpSgdRdpCurve(n, batch, sigma, sampling)
        except AccountingError as exc:
            print("refused", n, batch, sigma, sampling, exc)
            continue
        for steps in (1, 3, 1000, 10**6, 10**12, 2**53 + 1):
            for delta in (1e-5, 1e-9, 1.0 / n):
                rdp_curve = curve.rdp(steps)
                units = curve.units(steps)
                exact = [Fraction(units) * Fraction(float(r)) for r in curve.unit_rdp]
                for x, e in zip(rdp_curve.tolist(), exact, strict=False):
                    if not math.isinf(x) and Fraction(x) < e:
                        violation(f"DpSgdRdpCurve.rdp({steps}) {x!r} < exact {float(e)!r} (sigma {sigma}, q {curve.sampling_probability})")
                        bad += 1
                        break
                ours = curve.epsilon(steps, delta)
                with mp.workdps(60):
                    truth = exact_cks(curve.orders, [mp.mpf(e.numerator) / e.denominator for e in exact], delta)
                cases += 1
                if mp.mpf(ours) < truth:
                    violation(f"epsilon({steps}, {delta}) = {ours!r} < exact {mp.nstr(truth, 20)} (sigma {sigma}, n {n}, "
                              f"batch {batch}, {sampling})")
                    bad += 1
                reference = float(rpa.compute_epsilon(curve.orders, np.array([float(e) for e in exact]), delta)[0])
                if reference > ours:
                    above += 1
                    print(f"note: dp-accounting's compute_epsilon {reference!r} above ours {ours!r} on the same curve "
                          f"(sigma {sigma}, steps {steps}, delta {delta})")
    print(f"DpSgdRdpCurve: {cases} (curve, steps, delta) vs mpmath, {bad} below; dp-accounting above ours: {above}")
    return bad


def check_huge_step_counts(rng: random.Random) -> int:
    """units(steps) past 2^53: ``float(units)`` rounds (to nearest, so down half the time) before the product."""
    from opendp_hybridad.analysis.rounding import mul_up

    curve = acc.DpSgdRdpCurve(10**9, 1, 1e4, "poisson")
    bad = old_bad = eps_bad = 0
    example = None
    for _ in range(300):
        steps = rng.randint(2**53, 2**62)
        units = curve.units(steps)
        exact = [units * Fraction(float(r)) for r in curve.unit_rdp]
        got = curve.rdp(steps).tolist()
        old = [mul_up(float(units), float(r)) for r in curve.unit_rdp]  # the code 2a72bb8 replaced
        if any(Fraction(a) < e for a, e in zip(got, exact, strict=False)):
            bad += 1
            if example is None:
                i = next(i for i, (a, e) in enumerate(zip(got, exact, strict=False)) if Fraction(a) < e)
                example = (steps, float(curve.orders[i]), float(curve.unit_rdp[i]).hex(), got[i], float(exact[i]))
        if any(Fraction(a) < e for a, e in zip(old, exact, strict=False)):
            old_bad += 1
        truth = exact_cks(curve.orders, [mp.mpf(e.numerator) / e.denominator for e in exact], 1e-5)
        if mp.mpf(curve.epsilon(steps, 1e-5)) < truth:
            eps_bad += 1
    print(f"DpSgdRdpCurve.rdp at 300 step counts in [2^53, 2^62] (sigma 1e4, q 1e-9): {bad} curves with an entry below "
          f"the exact units * unit_rdp (the replaced mul_up code: {old_bad}); epsilon below the exact CKS: {eps_bad}")
    if bad:
        steps, order, r, got, ex = example
        violation(f"DpSgdRdpCurve(10**9, 1, 1e4).rdp({steps}) at order {order}: {got!r} < exact {ex!r} (unit rdp {r}): "
                  "float(units) rounds past 2^53 before up_array's one ulp; pre-existing (the replaced mul_up(float(units), r) "
                  f"had it in {old_bad} of the same cases); epsilon itself held ({eps_bad} below): the offsets' padding covers it")
    return bad + eps_bad


def main() -> int:
    rng = random.Random(72)
    check_add_up_array(rng)
    check_huge_step_counts(rng)
    check_rdp_to_epsilon(rng)
    check_curves(rng)
    print("violations:", len(VIOLATIONS))
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
