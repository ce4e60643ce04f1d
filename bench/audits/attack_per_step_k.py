"""Adversarial audit of per-step K with float-only outward rounding (rounding.py: TwoProduct instead of Fraction).

Run: ``python bench/audits/attack_per_step_k.py [--quick]`` (about 15 s on an idle core; ``--quick`` about 5 s).
Exits 1 on a violation, 0 when none is found.

The claim under attack: ``mul_up``/``mul_down``, ``div_up``/``div_down`` and ``sqrt_up``/``sqrt_down``
now decide their one outward step from an error-free transformation (Dekker's TwoProduct, or an fma;
Sterbenz for the residual of a quotient or a root), falling back to exact rationals only where a result
leaves the normal range (``|result| < 2^-1021``); their results are those of the exact comparison, so
the per-step bound (``Sequential.step_bound`` / ``MLP.step_bound``, read by ``GradientSum.at``) is never
below the one computed with exact rational rounding.

Ground truth: ``fractions.Fraction`` (every product, quotient and square compared exactly) and, for the
chain, the same chain with every rounding decision forced onto the exact rational path (the sign
helpers answer None), which is the former implementation; mpmath at 80 digits for a spot check of the
Fraction reference itself on square roots.

Cases:
* arithmetic: products, quotients and roots of operands drawn to be hard: near-ties (``1 + k 2^-52``
  scaled over the exponent range), short mantissas (exact results), subnormal operands with normal
  results, results on both sides of the hand-over point ``2^-1021`` and of ``2^-1022``, the largest
  floats (products that just do or do not overflow), huge x tiny, random over every binade; every
  result must be the exact result rounded outward (the smallest float not below it, for ``_up``);
* the chain: the models of ``attack_step_bound.py`` (dense with five activations and three losses, box
  and ball weight sets, conv + pooling, embedding + conv1d, group sort, spectral) and the bench's
  64-128-10 MLP, at weights scaled from 2^-1070 to 1e3 (with zeroed and subnormal entries, and
  norms right at slot edges), hill-climbed: each round perturbs the weights that made the fast and the
  exact bound differ most (relative, any field) and keeps the worst; every field of the fast bound
  (K, per-layer terms, forward error, the clipping norm's errors) must be >= the exact one, for
  ``certified_bound(params)``, ``step_bound(params)`` and the global bound;
* a seeded per-step DP-SGD run (bench MLP, learning rate 0.5) replayed with exact rounding: the
  ``StepBound`` of every step (sensitivity, error, clipping) must not be below the exact one.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import warnings
from collections.abc import Iterator
from fractions import Fraction

import mpmath as mp
import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from opendp_hybridad.analysis import rounding as rd  # noqa: E402
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh  # noqa: E402

mp.mp.dps = 80
MAX = sys.float_info.max
TINY = 2.0**-1074
VIOLATIONS: list[str] = []


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg)


@contextlib.contextmanager
def exact_rounding() -> Iterator[None]:
    """Every product, quotient and root compared in exact rationals (the former implementation), caches emptied."""
    saved = {name: getattr(rd, name) for name in ("_product_error_sign", "_quotient_error_sign", "_square_excess_sign")}
    caches = (rd.underflow_allowance, rd.root_up, rd.gamma_factor_up, rd._float_norm_constants, rd.gamma)
    try:
        for name in saved:
            setattr(rd, name, lambda *args: None)
        for c in caches:
            c.cache_clear()
        yield
    finally:
        for name, f in saved.items():
            setattr(rd, name, f)
        for c in caches:
            c.cache_clear()


# -- the arithmetic ------------------------------------------------------------------------------------------
def operand(rng: random.Random) -> float:
    c = rng.random()
    if c < 0.2:  # near-ties over the exponent range
        v = math.ldexp(1.0 + rng.randint(-16, 16) * 2.0**-52, rng.randint(-1080, 1020))
    elif c < 0.35:  # short mantissas: exact products and quotients
        v = math.ldexp(rng.randint(1, 2**12), rng.randint(-1086, 1010))
    elif c < 0.45:  # subnormals
        v = rng.randint(1, 2**52 - 1) * TINY
    elif c < 0.55:  # around the hand-over point, 2^-1022, the top of the range
        base = rng.choice([2.0**-1021, 2.0**-1022, MAX, 2.0**1023, 2.0**-537, 2.0**512, 1.0])
        v = base
        for _ in range(rng.randint(0, 3)):
            v = math.nextafter(v, rng.choice([0.0, math.inf]))
    elif c < 0.6:
        v = rng.choice([0.0, -0.0, 1.0, 3.0, 0.1, 1 / 3])
    else:  # any binade
        v = math.ldexp(rng.random() * 0.5 + 0.5, rng.randint(-1073, 1024))
    if not math.isfinite(v):
        v = MAX
    return -v if rng.random() < 0.5 else v


def paired(rng: random.Random) -> tuple[float, float]:
    """A pair whose product or quotient lands where the path hands over or overflows, often."""
    a = operand(rng)
    c = rng.random()
    if c < 0.3 and a != 0:
        target = rng.choice([2.0**-1021, 2.0**-1022, MAX, 2.0**-1074 * rng.randint(1, 9), 1.0])
        b = target / a if math.isfinite(target / a) and target / a != 0 else operand(rng)
        for _ in range(rng.randint(0, 2)):
            b = math.nextafter(b, rng.choice([0.0, math.inf]))
        return a, b if math.isfinite(b) else operand(rng)
    return a, operand(rng)


def up_ref(x: Fraction) -> float:
    return rd.round_up(x)


def not_below(v: float, x: Fraction) -> bool:
    return v == math.inf or (v != -math.inf and Fraction(v) >= x)


def not_above(v: float, x: Fraction) -> bool:
    return v == -math.inf or (v != math.inf and Fraction(v) <= x)


def down_ref(x: Fraction) -> float:
    return rd.round_down(x)


def check_arithmetic(count: int, rng: random.Random) -> None:
    products = quotients = roots = stepped = 0
    for _ in range(count):
        a, b = paired(rng)
        A, B = Fraction(a), Fraction(b)
        if math.isfinite(a * b):
            products += 1
            got_up, got_down = rd.mul_up(a, b), rd.mul_down(a, b)
            if got_up != up_ref(A * B) or not not_below(got_up, A * B):
                violation(f"mul_up({a!r}, {b!r}) = {got_up!r}, exact rounding up gives {up_ref(A * B)!r}")
            if got_down != down_ref(A * B) or not not_above(got_down, A * B):
                violation(f"mul_down({a!r}, {b!r}) = {got_down!r}, exact rounding down gives {down_ref(A * B)!r}")
            stepped += got_up != a * b
        if b != 0 and math.isfinite(a / b):
            quotients += 1
            got_up, got_down = rd.div_up(a, b), rd.div_down(a, b)
            if got_up != up_ref(A / B) or not not_below(got_up, A / B):
                violation(f"div_up({a!r}, {b!r}) = {got_up!r}, exact rounding up gives {up_ref(A / B)!r}")
            if got_down != down_ref(A / B) or not not_above(got_down, A / B):
                violation(f"div_down({a!r}, {b!r}) = {got_down!r}, exact rounding down gives {down_ref(A / B)!r}")
        x = abs(a)
        roots += 1
        r_up, r_down = rd.sqrt_up(x), rd.sqrt_down(x)
        if Fraction(r_up) ** 2 < Fraction(x) or (r_up > 0 and Fraction(math.nextafter(r_up, 0)) ** 2 >= Fraction(x)):
            violation(f"sqrt_up({x!r}) = {r_up!r} is not the smallest float whose square is >= x")
        if Fraction(r_down) ** 2 > Fraction(x) or Fraction(math.nextafter(r_down, math.inf)) ** 2 <= Fraction(x):
            violation(f"sqrt_down({x!r}) = {r_down!r} is not the largest float whose square is <= x")
    # the Fraction reference itself, on roots, against mpmath
    for _ in range(2000):
        x = abs(operand(rng))
        root = mp.sqrt(mp.mpf(x))
        if mp.mpf(rd.sqrt_up(x)) < root or mp.mpf(rd.sqrt_down(x)) > root:
            violation(f"sqrt_up/sqrt_down({x!r}) do not enclose mpmath's root")
    print(f"arithmetic: {products} products ({stepped} stepped up), {quotients} quotients, {roots} roots, "
          "each compared with the exact result rounded outward")


# -- the chain -------------------------------------------------------------------------------------------------
def bench_mlp() -> MLP:
    return MLP([Dense(64, 128, 0.05, 0.05, norm_ball=True), Dense(128, 10, 0.05, 0.05, norm_ball=True)], [Tanh(), Identity()],
               SoftmaxCrossEntropy(), input_bound=1 / 8)


def builders():
    from attack_step_bound import models

    names = [name for name, _ in models()]
    out = [(name, (lambda i=i: models()[i][1])) for i, name in enumerate(names)]
    out.append(("bench-mlp-64-128-10", bench_mlp))
    return out


def fields(b) -> list[float]:
    return [float(b.upper), *[float(v) for v in b.per_layer], float(b.rounding), float(b.norm_relative_error),
            float(b.norm_absolute_error)]


def gap(fast: list[float], exact: list[float]) -> float:
    """How far below the exact field the fast one is, relative (positive: a violation); NaN vs number counts as below."""
    worst = -math.inf
    for f, e in zip(fast, exact, strict=True):
        if math.isnan(f) or math.isnan(e):
            if math.isnan(f) != math.isnan(e):
                return math.inf
            continue
        if f == e:
            worst = max(worst, 0.0)
        elif math.isinf(e) or math.isinf(f):
            worst = max(worst, math.inf if f < e else -1.0)
        else:
            worst = max(worst, (e - f) / max(abs(e), 1e-300))
    return worst


def perturb(params, rng: np.random.Generator, scale: float):
    out = []
    for ps in params:
        new = []
        for p in ps:
            q = np.array(p, dtype=np.float64)
            c = rng.random()
            if c < 0.1:
                q = np.zeros_like(q)
            elif c < 0.2:
                q = np.where(rng.random(q.shape) < 0.3, rng.choice([TINY, -TINY, 3 * TINY]), q)
            elif c < 0.4:
                q = q * (1 + rng.standard_normal(q.shape) * 2.0**-rng.integers(1, 50))
            elif c < 0.5:
                # move one norm onto a slot edge: scale the array so its Frobenius norm is a slot value
                n = float(np.sqrt((q * q).sum()))
                if n > 0 and math.isfinite(n):
                    q = q * (rd.round_up_to_slots(n, 64) / n)
            else:
                q = q + rng.standard_normal(q.shape) * scale
            new.append(q)
        out.append(tuple(new))
    return out


def bounds(model, params) -> list[list[float]]:
    return [fields(model.certified_bound(params)), fields(model.step_bound(params))]


def check_chain(rounds: int, rng: random.Random, nrng: np.random.Generator) -> None:
    compared = equal = 0
    worst_overall = -math.inf
    for name, build in builders():
        fast_model, exact_model = build(), build()
        with exact_rounding():
            global_exact = fields(exact_model.certified_bound())
        global_fast = fields(fast_model.certified_bound())
        if gap(global_fast, global_exact) > 0:
            violation(f"{name}: the global bound {global_fast} is below the exact one {global_exact}")
        for scale in (1.0, 1e-3, 30.0, 1e3, 1e-150, 2.0**-1070):
            base = fast_model.init(nrng)
            params = [tuple(np.asarray(p, dtype=np.float64) * scale for p in ps) for ps in base]
            best_gap = -math.inf
            for _ in range(rounds):
                candidate = perturb(params, nrng, scale * rng.choice([1e-3, 0.1, 1.0]))
                fast = bounds(fast_model, candidate)
                with exact_rounding():
                    exact = bounds(exact_model, candidate)
                for f, e in zip(fast, exact, strict=True):
                    compared += 1
                    g = gap(f, e)
                    equal += f == e
                    if g > 0:
                        violation(f"{name} (scale {scale:g}): fast bound {f} below the exact {e}")
                    if g >= best_gap:  # hill-climb: keep the weights where the fast bound came closest to falling short
                        best_gap, params = g, candidate
            worst_overall = max(worst_overall, best_gap)
    print(f"chain: {compared} bounds compared field by field with the exact-rational chain, {equal} identical; "
          f"largest relative shortfall found {worst_overall:g} (0 = never below)")


def check_training(steps_limit: int) -> None:
    """Replay a seeded per-step run: each step's plan bounds with fast and with exact rounding."""
    from opendp_hybridad.dpsgd import DPSGD

    rng = np.random.default_rng(0)
    n = 3200
    x = rng.uniform(-1 / 8, 1 / 8, (n, 64))
    y = (x @ rng.standard_normal((64, 10))).argmax(axis=1)
    trainer = DPSGD(bench_mlp(), noise_multiplier=1.0, batch_size=64, epochs=steps_limit * 64 / n, learning_rate=0.5,
                    mode="auto", clip=3.0, granularity="step")
    plan = trainer.plan(n)
    trajectory = []
    at = plan.gradient_sum.at

    def recording(params):
        trajectory.append([tuple(np.array(a) for a in part) for part in params])
        return at(params)

    object.__setattr__(plan.gradient_sum, "at", recording)
    trainer.run(plan, x, y, seed=1, insecure_noise_seed=2)
    exact_plan = DPSGD(bench_mlp(), noise_multiplier=1.0, batch_size=64, epochs=steps_limit * 64 / n, learning_rate=0.5,
                       mode="auto", clip=3.0, granularity="step").plan(n)
    fast_plan = DPSGD(bench_mlp(), noise_multiplier=1.0, batch_size=64, epochs=steps_limit * 64 / n, learning_rate=0.5,
                      mode="auto", clip=3.0, granularity="step").plan(n)
    distinct = set()
    for step, params in enumerate(trajectory):
        fast = fast_plan.gradient_sum.at(params)
        with exact_rounding():
            exact = exact_plan.gradient_sum.at(params)
        distinct.add(fast)
        if fast.sensitivity < exact.sensitivity or fast.error < exact.error or (exact.clip and not fast.clip):
            violation(f"training step {step}: fast {fast} below exact {exact}")
    print(f"training: {len(trajectory)} steps of a seeded per-step run replayed, {len(distinct)} distinct step bounds, "
          "each compared with exact rounding")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    rng = random.Random(14)
    nrng = np.random.default_rng(14)
    check_arithmetic(20_000 if args.quick else 150_000, rng)
    check_chain(4 if args.quick else 12, rng, nrng)
    check_training(40 if args.quick else 150)
    print("violations:", len(VIOLATIONS))
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
