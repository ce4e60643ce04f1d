"""Adversarial audit of the update kernel's eight running sums of squares (1683159) and Dense's ball projection.

Run: ``python bench/audits/attack_update_kernel.py`` (about a minute). Exits 1 if a projected weight matrix
lies outside its certified set (Frobenius ball or box; bias box), or the kernel's sum/maximum is not
what it claims.

Ground truth: exact integers. Every float64 is ``m 2^e``; the squared Frobenius norm of the projected
weights is summed exactly as an integer multiple of ``2^-2148`` and compared with ``weight_bound^2`` the
same way (no float, no Fraction overhead on 10^6 entries).

Cases (both the compiled apply_step and the numpy project path, norm_ball True and False):
sizes 1..20, 23, 64, 127, 8192, 10^6; weights at the radius exactly (scaled by a correctly rounded
factor, then nudged one float out), just inside and outside, huge (1e150..1e200, squares that
overflow), tiny (1e-160, subnormal entries, all 2^-1074), entries whose squares all round down
(v = 1 + 2^-27 + 2^-52-style patterns, so the float sum sits below the exact one by about n u), one
large entry among many tiny ones, radii 1e-320..1e300, zero radius, steps that overflow; the kernel's
returned maximum vs the exact largest magnitude, and its sum vs the exact sum within gamma_(n+2).

Result: no projected matrix outside its set, the kernel's sum within gamma_(n+2) and its maximum exact.
Note (documentation, not soundness): ``Dense.apply_step``'s docstring ("the same weights as :meth:`project` of
the plain update") and update_kernel's ("both paths give the same weights") do not hold where the ball
projection shrinks: the kernel's sum of squares and ``project``'s ``np.dot`` are different summation orders, so
the shrink factors differ in the last bit (854 of 3000 random shrinking updates; the single running sum before
1683159 differed in 1206): the weights differ by ~1e-16 relative. Both land inside the ball.
"""

from __future__ import annotations

import math
import random
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")

from opendp_hybridad.analysis.rounding import gamma  # noqa: E402
from opendp_hybridad.nn import Dense  # noqa: E402
from opendp_hybridad.nn.update_kernel import compiled_subtract_scaled  # noqa: E402

VIOLATIONS: list[str] = []
SHIFT = 2148  # 2 * 1074: every square of a float is an integer multiple of 2^-2148


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg)


def shift(x: int, k: int) -> int:
    """x 2^k for an int whose low bits make it exact (subnormals: the mantissa carries trailing zeros)."""
    if k >= 0:
        return x << k
    assert x & ((1 << -k) - 1) == 0, "inexact shift"
    return x >> -k


def exact_sq_scaled(values: np.ndarray) -> int:
    """sum v^2 * 2^2148 exactly, as an int (vectorised mantissa/exponent split, then Python ints by group)."""
    v = np.abs(np.asarray(values, dtype=np.float64).reshape(-1))
    v = v[v != 0]
    if v.size == 0:
        return 0
    m, e = np.frexp(v)  # v = m 2^e, m in [1/2, 1)
    mi = (m * 2.0**53).astype(np.int64)  # exact: 53-bit integer mantissa
    ex = e.astype(np.int64) - 53 + 1074  # v = mi 2^(ex - 1074), ex >= 0
    total = 0
    for exp in np.unique(ex):
        sel = mi[ex == exp]
        # sum of squares of <= 2^53 integers: Python ints (object sum) for exactness
        s = sum(int(x) * int(x) for x in sel.tolist())
        total += shift(s, 2 * int(exp))
    return total


def sq_scaled(x: float) -> int:
    m, e = math.frexp(abs(x))
    if m == 0:
        return 0
    mi = int(m * 2**53)
    ex = e - 53 + 1074
    return shift(mi * mi, 2 * ex)


def check_projected(layer: Dense, W: np.ndarray, b: np.ndarray, label: str) -> None:
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        violation(f"{label}: non-finite projected weights")
        return
    if layer.norm_ball:
        if exact_sq_scaled(W) > sq_scaled(layer.weight_bound):
            violation(f"{label}: ||W||_F^2 exactly above weight_bound^2 = {layer.weight_bound!r}^2 (size {W.size})")
    elif np.abs(W).max(initial=0.0) > layer.weight_bound:
        violation(f"{label}: an entry above the box {layer.weight_bound!r}")
    if np.abs(b).max(initial=0.0) > layer.bias_bound:
        violation(f"{label}: a bias above {layer.bias_bound!r}")


def adversarial_weights(rng: random.Random, nrng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    kind = rng.randrange(9)
    if kind == 0:
        W = nrng.standard_normal(size)
    elif kind == 1:  # squares that all round down: v^2 = 1 + 2^-26 + 2^-54-ish
        W = np.full(size, 1.0 + 2.0**-27 + 2.0**-52) * rng.choice([1.0, -1.0])
    elif kind == 2:
        W = np.full(size, 5e-324) * rng.randint(1, 1000)
    elif kind == 3:
        W = nrng.standard_normal(size) * 10.0 ** rng.choice([150, 160, 170, 200])
    elif kind == 4:
        W = nrng.standard_normal(size) * 1e-160
    elif kind == 5:
        W = nrng.standard_normal(size) * 1e-9
        W[rng.randrange(size)] = 1.0
    elif kind == 6:
        W = np.full(size, 1.0 / math.sqrt(size))
    elif kind == 7:
        W = nrng.uniform(-1, 1, size) * (1 + 2.0**-30)
    else:
        W = np.full(size, 3.0**0.5) * nrng.choice([-1.0, 1.0], size)
    # scale to the radius (or around it) when that is finite
    norm = float(np.sqrt(np.dot(W, W))) if np.all(np.isfinite(W)) else math.inf
    if math.isfinite(norm) and norm > 0 and rng.random() < 0.7:
        W = W * (radius / norm) * rng.choice([1.0, 1.0, 1 + 2.0**-52, 1 - 2.0**-52, 1 + 2.0**-40, 1.5, 0.999])
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(size)
            W[i] = np.nextafter(W[i], math.copysign(math.inf, W[i]) if W[i] != 0 else math.inf)
    return W


def check_kernel_sum(kernel, a: np.ndarray, step: np.ndarray, scale: float) -> None:
    out = np.empty_like(a)
    squares, largest = kernel(a, step, scale, out)
    if not math.isfinite(squares):
        return
    exact = exact_sq_scaled(out)
    n = out.size
    g = gamma(n + 2)
    # |computed - exact| <= gamma_(n+2) exact + n TINY (underflowing squares): scaled by 2^2148
    slack_num, slack_den = g.as_integer_ratio()
    sm, se = math.frexp(squares)
    comp_scaled = shift(int(sm * 2**53), se - 53 + SHIFT) if squares > 0 else 0
    if comp_scaled is not None:
        diff = abs(comp_scaled - exact)
        allowed = exact * slack_num // slack_den + n * (1 << (SHIFT - 1074)) + 1
        if diff > allowed:
            violation(f"kernel sum of squares off by more than gamma_(n+2): n {n}")
    true_max = float(np.abs(out).max(initial=0.0))
    if largest != true_max:
        violation(f"kernel max {largest!r} != {true_max!r} (n {n})")


def main() -> int:
    rng = random.Random(1683159)
    nrng = np.random.default_rng(1683159)
    kernel = compiled_subtract_scaled()
    if kernel is None:
        print("numba not installed: only the numpy path is checked")
    sizes = [*list(range(1, 21)), 23, 64, 127, 8192]
    cases = 0
    for _trial in range(900):
        size = rng.choice(sizes)
        radius = rng.choice([1.0, 0.8, 3.0, 1e-3, 1e-150, 1e-300, 1e-320, 5e-324, 1e100, 1e300, 0.0, 2.0**-1000])
        ball = rng.random() < 0.8
        rows = rng.choice([d for d in range(1, size + 1) if size % d == 0])
        layer = Dense(size // rows, rows, radius, rng.choice([0.5, 1e-300, 1e300]), norm_ball=ball)
        W = adversarial_weights(rng, nrng, size, radius if radius > 0 else 1.0).reshape(rows, size // rows)
        b = nrng.standard_normal(rows) * rng.choice([1.0, 1e300])
        step_W = adversarial_weights(rng, nrng, size, 1.0).reshape(rows, size // rows) * rng.choice([0.0, 1.0, -1.0])
        step_b = nrng.standard_normal(rows)
        scale = rng.choice([0.0, 0.1, 1.0, -1.0, 1e-300, 1e300])
        with np.errstate(all="ignore"):
            for project in (True,):
                try:
                    nW, nb = layer.apply_step(W, b, step_W.reshape(-1), step_b, scale, project)
                except Exception as exc:
                    violation(f"apply_step raised {exc!r} (size {size}, radius {radius})")
                    continue
                check_projected(layer, nW, nb, f"apply_step size {size} radius {radius!r} ball {ball}")
                pW, pb = layer.project(W - scale * step_W, b - scale * step_b)
                check_projected(layer, pW, pb, f"project size {size} radius {radius!r} ball {ball}")
                if np.all(np.isfinite(W - scale * step_W)) and not (np.array_equal(nW, pW) and np.array_equal(nb, pb)):
                    print(f"note: apply_step and project differ (size {size}, radius {radius!r})")
            if kernel is not None:
                check_kernel_sum(kernel, np.ascontiguousarray(W, dtype=np.float64).reshape(-1),
                                 np.ascontiguousarray(step_W, dtype=np.float64).reshape(-1), scale)
        cases += 1
    # big layers: 10^6 entries at the radius, squares rounding down
    for kind in range(3):
        size = 10**6
        layer = Dense(1000, 1000, 1.0, 1.0, norm_ball=True)
        if kind == 0:
            W = np.full(size, 1.0 + 2.0**-27 + 2.0**-52)
        elif kind == 1:
            W = nrng.standard_normal(size)
        else:
            W = np.full(size, 5e-324) * 7
        W = W * (1.0 / float(np.sqrt(np.dot(W, W)))) if kind < 2 else W
        W = W.reshape(1000, 1000)
        with np.errstate(all="ignore"):
            nW, nb = layer.apply_step(W, np.zeros(1000), np.zeros(size), np.zeros(1000), 0.0, True)
        check_projected(layer, nW, nb, f"10^6 entries kind {kind}")
        if kernel is not None:
            check_kernel_sum(kernel, W.reshape(-1).copy(), np.zeros(size), 0.0)
        cases += 1
    print(f"apply_step/project: {cases} cases, exact integer norms")
    print("violations:", len(VIOLATIONS))
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
