"""Adversarial audit of issue 14's second round: vertex enumeration, softmax rewrites, derivatives on the tape.

Run: ``python bench/audits/attack_tightness_v2.py [--quick]`` (about 20 seconds; 6 with --quick). Prints each check with the
certified and the true number; exits 1 if any certified bound is below its truth (or a certificate crashes).

Truths never use the library's analysis:

* quadratics: sympy's gradient evaluated in ``fractions`` at every vertex of the box (the exact maximum of
  the convex ``||grad f||``), with extreme coefficient scales (1e-150, 1e150), degenerate sides, and ends
  that are not short decimals;
* softmax / log-sum-exp with weights, constants and shifted boxes (differences up to 800, where the
  rewrite's ``exp(v - w)`` overflows): sympy's gradient at 50 digits (mpmath) at the box's corners and
  random points, the largest kept;
* small tanh / sigmoid / softplus networks large enough for the tape's derivatives (>= 40 nodes), with
  large (40) and tiny (1e-8) weights: the same 50-digit sampling.
"""

from __future__ import annotations

import itertools
import math
import sys
from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp

import opendp_hybridad as hd

VIOLATIONS: list[str] = []
_MP = {"sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)), "softplus": lambda v: mpmath.log(1 + mpmath.exp(v))}


def report(label: str, certified: float, truth) -> None:
    ok = truth is None or truth <= certified
    if not ok:
        VIOLATIONS.append(label)
    ratio = "" if truth is None or truth == 0 else f" ratio {certified / float(truth):.6f}"
    shown = float(truth) if truth is not None else None
    print(f"[{'held' if ok else 'VIOLATED'}] {label}: certified {certified!r}, truth {shown!r}{ratio}")


def sampled_truth(fn: hd.RecordFunction, rng: np.random.Generator, samples: int = 300) -> mpmath.mpf:
    syms = list(fn.symbols)
    grad = sp.lambdify(syms, list(fn.gradient().values()), modules=[_MP, "mpmath"])
    bounds = fn.schema.bounds()
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    n = len(syms)
    corners = list(itertools.product((0, 1), repeat=n)) if n <= 8 else [tuple(rng.integers(0, 2, n)) for _ in range(256)]
    pts = [lo + np.array(c) * (hi - lo) for c in corners] + [lo + rng.random(n) * (hi - lo) for _ in range(samples)]
    best = mpmath.mpf(0)
    with mpmath.workdps(50):
        for p in pts:
            v = grad(*[mpmath.mpf(float(t)) for t in np.clip(p, lo, hi)])
            best = max(best, mpmath.sqrt(mpmath.fsum(c**2 for c in v)))
    return best


def certify(label: str, fn: hd.RecordFunction, truth, budget: float = 0.5) -> None:
    try:
        cert = fn.lipschitz(time_budget=budget)
    except hd.UnboundedError as err:  # a refusal is not a violation (no bound claimed)
        print(f"[refused] {label}: {str(err)[:120]}")
        return
    except Exception as err:  # an audit reports every crash
        VIOLATIONS.append(f"{label} crashed: {type(err).__name__}")
        print(f"[CRASH] {label}: {type(err).__name__}: {err}")
        return
    report(label, cert.upper, truth)


def quadratics(rng: np.random.Generator, count: int) -> None:
    for case in range(count):
        n = int(rng.integers(1, 6))
        scale = [1.0, 1e-150, 1e150, 3e-308][case % 4]
        box = {}
        for i in range(n):
            a = float(rng.uniform(-3, 2))
            box[f"x{i}"] = (a, a) if rng.random() < 0.2 else (a, a + float(rng.uniform(1e-9, 4)))
        schema = hd.Schema(box)
        xs = schema.symbols()
        expr = sum(sp.Rational(int(rng.integers(-40, 41)), int(rng.integers(1, 9))) * sp.Float(scale) * xs[i] * xs[j]
                   for i in range(n) for j in range(i, n) if rng.random() < 0.7)
        expr += sum(sp.Rational(int(rng.integers(-9, 10)), 3) * v for v in xs)
        fn = schema.function(expr)
        grads = list(fn.gradient().values())
        best2, best1, besti = Fraction(0), Fraction(0), Fraction(0)
        for v in itertools.product(*[sorted({Fraction(lo), Fraction(hi)}) for lo, hi in schema.bounds()]):
            sub = {s: sp.Rational(x.numerator, x.denominator) for s, x in zip(xs, v, strict=True)}
            g = [Fraction(int(r.p), int(r.q)) for r in (sp.Rational(e.xreplace(sub)) for e in grads)]
            best2 = max(best2, sum(c * c for c in g))
            best1 = max(best1, sum(abs(c) for c in g))
            besti = max(besti, max(abs(c) for c in g))
        for norm, truth in ((2.0, best2), (1.0, best1), (math.inf, besti)):
            try:
                cert = fn.lipschitz(norm=norm, time_budget=0.5)
            except hd.UnboundedError:
                print(f"[refused] quadratic {case} K{norm}")
                continue
            ok = Fraction(cert.upper) ** 2 >= truth if norm == 2.0 else Fraction(cert.upper) >= truth
            if not ok:
                VIOLATIONS.append(f"quadratic {case} K{norm}")
            print(f"[{'held' if ok else 'VIOLATED'}] quadratic {case} (n={n}, scale {scale:g}) K{norm}: certified "
                  f"{cert.upper!r}, exact vertex max {float(truth) if norm != 2.0 else math.sqrt(truth)!r}")


def softmaxes(rng: np.random.Generator, count: int) -> None:
    for case in range(count):
        n = int(rng.integers(2, 5))
        shift = [0.0, 300.0, -300.0, 0.0][case % 4]
        spread = [1.0, 1.0, 1.0, 400.0][case % 4]
        box = {f"v{i}": (shift + spread * float(rng.uniform(-2, 0)), shift + spread * float(rng.uniform(0, 2)))
               for i in range(n)}
        schema = hd.Schema(box)
        xs = schema.symbols()
        w = [sp.Rational(int(rng.integers(1, 9)), 4) for _ in xs]
        if case % 2:
            terms = [wi * sp.exp(sp.Rational(int(rng.integers(1, 4)), 2) * v) for wi, v in zip(w, xs, strict=True)]
            expr = sp.log(sp.Rational(1, 2) + sum(terms))
        else:
            expr = sp.exp(xs[0]) / sum(wi * sp.exp(v) for wi, v in zip(w, xs, strict=True)) + xs[-1] / 3
        fn = schema.function(expr)
        certify(f"softmax {case} (n={n}, shift {shift:g}, spread {spread:g})", fn, sampled_truth(fn, rng))


def networks(rng: np.random.Generator, count: int) -> None:
    acts = [sp.tanh, hd.sigmoid, hd.softplus]
    for case in range(count):
        n = int(rng.integers(2, 5))
        width = int(rng.integers(3, 6))
        scale = [1.0, 40.0, 1e-8][case % 3]
        schema = hd.Schema({f"x{i}": (-1.0, float(rng.uniform(0.1, 1.5))) for i in range(n)})
        xs = schema.symbols()
        act = acts[case % 3]
        hidden = [act(sum(sp.Rational(int(rng.integers(-30, 31)), 10) * sp.Float(scale) * v for v in xs)
                      + sp.Rational(int(rng.integers(-9, 10)), 10)) for _ in range(width)]
        expr = sum(sp.Rational(int(rng.integers(-30, 31)), 10) * h for h in hidden)
        if case % 2:
            expr = sp.tanh(expr / 2)
        fn = schema.function(expr)
        certify(f"network {case} ({act.__name__}, n={n}, width {width}, scale {scale:g})", fn, sampled_truth(fn, rng))


def main(quick: bool) -> int:
    rng = np.random.default_rng(2026)
    k = 4 if quick else 12
    quadratics(rng, k)
    softmaxes(rng, k)
    networks(rng, k)
    print(f"\n{len(VIOLATIONS)} violation(s)")
    for v in VIOLATIONS:
        print("  ", v)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv))
