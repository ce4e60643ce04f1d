"""Audit of per-step K read off nearby results (commit 0dfa953, dpsgd/nearby_bounds.py).

The claims: (1) SOUND: a non-clipping step's sensitivity bounds every exact per-example gradient
at the current (public) weights over the declared boxes, and its ``e`` bounds the computed rows'
forward error (clipped rows where the step clips); (2) SAME RESULT: under the rule that every
quantity of the chain bound is nondecreasing in each norm, ``GradientSum.at`` gives what
``_step_at`` (then ``_clipping_step`` where it says CLIPS) gives; decisions read public weights only.

Checks (every registered part kind with parameters: dense, conv2d, spectral_conv2d, spectral_dense,
embedding; parameter-free: activation (tanh, sigmoid, tempered sigmoid with negative scale and
offset), avgpool2d, flatten, maxmin; losses softmax CE, MSE, logistic, tempered CE):

A. the chain's fields (K, e, the norm errors, row_error with and without clipping) are nondecreasing
   when norms are raised by slots, from 0, or by a few ulps (float monotonicity);
B. random walks of slot-rounded norms through a NearbyStepBounds (capacities 2, 8, 64) against computing
   every step, auto (several C) and bound mode;
C. seeded DPSGD runs (granularity="step"; auto with small and large learning rates, bound; SGD with
   momentum and weight decay, Adam): each at() against computing, against the certified bound at the
   unrounded weights (K and e), and a sampled per-example norm (a lower bound of the truth);
D. crafted weights: all zero, subnormal, at and around 2^-30 (the coarse floor), powers of two,
   huge (1e150 to 1e300, squares overflowing), subnormal biases: no exception, the same as computing, sound;
E. NearbyStepBounds edge cases: NaN and inf norms, a new shape, eviction, parameter-free models;
F. a GradientSum derived with dataclasses.replace (a public frozen dataclass): the cache field is an
   init field, so the variant shares the original's cache. FINDING at 0dfa953: a bound-mode plan's
   entries (S = min(K_t, global K)) answer an auto-mode variant's at() at weights outside the declared
   set: S = 1.4702 where computing gives 7.25, the certified K there is 7.017 and a sampled per-example
   gradient already has norm 2.69 (unsound for that variant). The library itself never copies a
   GradientSum (DPSGD builds a fresh one per plan), so DPSGD.run is not affected.

Run: python bench/audits/attack_nearby_bounds.py (exit status 1 while any check finds a violation).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings

import numpy as np

from opendp_hybridad.analysis.rounding import round_up_to_slots
from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.dpsgd.nearby_bounds import CLIPS, NearbyStepBounds
from opendp_hybridad.dpsgd.optim import SGD, Adam
from opendp_hybridad.dpsgd.plan import StepBound
from opendp_hybridad.nn import (
    MLP,
    Dense,
    Flatten,
    Identity,
    Logistic,
    MeanSquaredError,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    TemperedSigmoid,
)
from opendp_hybridad.nn.layers import TemperedCrossEntropy
from opendp_hybridad.nn.parts.conv import Conv2d
from opendp_hybridad.nn.parts.embedding import Embedding
from opendp_hybridad.nn.parts.groupsort import MaxMin
from opendp_hybridad.nn.parts.lipschitz import SpectralDense
from opendp_hybridad.nn.parts.pooling import AvgPool2d
from opendp_hybridad.nn.parts.spectral_conv import SpectralConv2d

warnings.filterwarnings("ignore", category=RuntimeWarning)
VIOLATIONS: list[str] = []
FIELDS = ("upper", "rounding", "norm_relative_error", "norm_absolute_error")


def violation(text: str) -> None:
    VIOLATIONS.append(text)
    if len(VIOLATIONS) <= 20:
        print("  VIOLATION:", text)


def slot(v: float) -> float:
    return round_up_to_slots(v, 64)


def models() -> dict:
    return {
        "mlp": MLP([Dense(8, 16, 0.05, 0.05, norm_ball=True), Dense(16, 3, 0.05, 0.05, norm_ball=True)], [Tanh(), Identity()],
                   SoftmaxCrossEntropy(), input_bound=0.5),
        "cnn": Sequential([Conv2d(1, 2, 3, padding=1, weight_bound=1.0, bias_bound=0.5, norm_ball=True), Tanh(), AvgPool2d(2),
                           Flatten(), Dense(8, 3, 2.0, 0.5, norm_ball=True)], SoftmaxCrossEntropy(), input_bound=1.0,
                          input_shape=(1, 4, 4)),
        "cnn_mse": Sequential([Conv2d(2, 4, 3, padding=1, weight_bound=1.0, bias_bound=0.5), Sigmoid(), AvgPool2d(2), Flatten(),
                               Dense(16, 3, 2.0, 0.5), TemperedSigmoid(-1.5, 3.0, -0.7), Dense(3, 2, 1.0, 1.0)], MeanSquaredError(),
                              input_bound=1.0, label_bound=2.0, input_shape=(2, 4, 4)),
        "spectral": Sequential([SpectralConv2d(1, 2, 3, padding=1, weight_bound=1.0, bias_bound=0.5), Tanh(), Flatten(),
                                SpectralDense(32, 4, 1.0, 0.5), MaxMin(), SpectralDense(4, 3, 1.0, 0.5)], TemperedCrossEntropy(4.0),
                               input_bound=1.0, input_shape=(1, 4, 4)),
        "embedding": Sequential([Embedding(10, 4, 0.5), Tanh(), Flatten(), Dense(12, 1, 1.0, 1.0)], Logistic(), input_shape=(3,),
                                input_bound=9.0),
        "lipschitz": Sequential([SpectralDense(6, 8, 2.0, 0.5), Tanh(), SpectralDense(8, 5, 2.0, 0.5)], TemperedCrossEntropy(0.3),
                                input_bound=1.0),
    }


def data(name: str, model, n: int, rng):
    if name == "embedding":
        x = rng.integers(0, 10, (n, *model.input_shape)).astype(float)
    else:
        x = rng.uniform(-1, 1, (n, *model.input_shape)) * np.max(model.input_bound)
    kind, m = model.loss.label_kind, model.output_features
    if kind == "class":
        return x, rng.integers(0, m, n)
    if kind == "binary":
        return x, rng.integers(0, 2, n).astype(float)
    return x, rng.uniform(-1, 1, (n, m))


def expected(summer, norms):
    computed = summer._step_at(norms)
    return summer._clipping_step(norms) if computed is CLIPS else computed


# -- A ------------------------------------------------------------------------------------------------------
def check_monotone(ms) -> None:
    print("A. chain bound nondecreasing in each norm (slot raises, raises from 0, ulp raises)")
    rng = np.random.default_rng(0)
    for name, m in ms.items():
        base0 = m.step_norms(m.init(rng))
        count = 0
        for trial in range(300):
            scale = 2.0 ** rng.uniform(-30, 30) if trial % 3 == 0 else 2.0 ** rng.uniform(-3, 6)
            base = tuple(tuple(0.0 if rng.random() < 0.1 else slot(max(v, 1e-3) * scale * 2.0 ** rng.uniform(-2, 2)) for v in p)
                         for p in base0)
            raised = [list(p) for p in base]
            for p in raised:
                for j in range(len(p)):
                    if rng.random() < 0.3:
                        v = p[j]
                        if v == 0:
                            p[j] = slot(2.0 ** rng.uniform(-60, 2))
                        elif trial % 2:
                            p[j] = slot(v * (1 + rng.choice([1, 2, 3, 64, 200]) / 64))
                        else:
                            for _ in range(int(rng.integers(1, 4))):
                                p[j] = math.nextafter(p[j], math.inf)
            raised = tuple(tuple(p) for p in raised)
            lo, hi = m.bound_at(base), m.bound_at(raised)
            for f in FIELDS:
                if not getattr(hi, f) >= getattr(lo, f):
                    violation(f"A {name}: {f} {getattr(lo, f)!r} at {base} > {getattr(hi, f)!r} at larger {raised}")
            for c in (None, 1e-3, 0.5, 3.0, 1e3):
                if not hi.row_error(c) >= lo.row_error(c):
                    violation(f"A {name}: row_error({c}) decreases from {base} to {raised}")
            count += 1
        print(f"  {name}: {count} pairs")


# -- B ------------------------------------------------------------------------------------------------------
def check_walks(ms) -> None:
    print("B. random walks of rounded norms through NearbyStepBounds against computing")
    for name, model in ms.items():
        if name == "spectral":  # no finite e over its declared set (maxmin after a computed input): DPSGD refuses auto/bound
            continue
        for mode, clip in (("auto", 0.5), ("auto", 2.0), ("auto", 10.0), ("bound", 1.0)):
            rng = np.random.default_rng(11)
            summer = DPSGD(model, noise_multiplier=1.0, batch_size=32, epochs=1, learning_rate=0.1, mode=mode, clip=clip,
                           granularity="step").plan(320).gradient_sum
            current = [list(p) for p in model.step_norms(model.init(rng))]
            cache = NearbyStepBounds(capacity=int(rng.choice([2, 8, 64])))
            for _ in range(700):
                for p in current:
                    for j in range(len(p)):
                        if rng.random() < 0.5:
                            k, v = int(rng.integers(-3, 4)), p[j]
                            if v == 0:
                                v = 2.0**-20 if k > 0 else 0.0
                            else:
                                v = slot(v * (1 + k / 64)) if k >= 0 else slot(v / (1 - k / 64) * (1 - 1e-12))
                            if rng.random() < 0.01:
                                v = slot(v * 2.0 ** rng.uniform(-3, 3))
                            p[j] = 0.0 if rng.random() < 0.005 else v
                norms = tuple(tuple(p) for p in current)
                known = cache.read(norms)
                if known is None:
                    known = summer._step_at(norms)
                    cache.add(norms, known)
                got = summer._clipping_step(norms) if known is CLIPS else known
                want = expected(summer, norms)
                if got != want:
                    violation(f"B {name} {mode} C={clip}: read {got} where computing gives {want} at {norms}")
            print(f"  {name} {mode} C={clip} capacity {cache.capacity}: {cache.reads}")


# -- C ------------------------------------------------------------------------------------------------------
def check_runs(ms) -> None:
    print("C. seeded per-step DPSGD runs: at() against computing, the certified bound and sampled gradients")
    settings = [("auto", 0.01, 2.0, None, 2.0), ("auto", 0.003, 50.0, SGD(momentum=0.9), 3.0), ("bound", 0.05, 3.0, Adam(), 1.0),
                ("auto", 0.2, 1.5, SGD(weight_decay=0.5), 0.5), ("auto", 2.0, 5.0, Adam(), 0.3)]
    for name, model in ms.items():
        if name == "spectral":
            continue
        for mode, lr, clip, opt, nm in settings:
            rng = np.random.default_rng(3)
            x, y = data(name, model, 256, rng)
            trainer = DPSGD(model, noise_multiplier=nm, batch_size=32, epochs=12, learning_rate=lr, mode=mode, clip=clip,
                            granularity="step", optimizer=opt)
            plan = trainer.plan(len(x))
            summer = plan.gradient_sum
            at = summer.at
            seen = []

            def recording(params, at=at, summer=summer, seen=seen, model=model, mode=mode, clip=clip, name=name):
                bounds = at(params)
                seen.append(bounds)
                norms = summer.model.step_norms(params)
                want = expected(summer, norms)
                if bounds != want:
                    violation(f"C {name} {mode}: step {len(seen)} at() {bounds} where computing gives {want}")
                cert = model.certified_bound(params)
                if not bounds.clip:
                    cap = clip if mode == "auto" else summer.bound.upper
                    if not bounds.sensitivity >= min(cert.upper, cap):
                        violation(f"C {name} {mode}: step {len(seen)} S {bounds.sensitivity} below the certified {cert.upper}")
                    if len(seen) % 40 == 1:
                        w = model.witness(model.certified_bound(params), params, samples=256, seed=len(seen)).witness_value
                        if not w <= bounds.sensitivity:
                            violation(f"C {name} {mode}: step {len(seen)} S {bounds.sensitivity} below a sampled gradient {w}")
                row = cert.row_error(clip if bounds.clip else None)
                if not bounds.error >= row:
                    violation(f"C {name} {mode}: step {len(seen)} e {bounds.error} below the certified {row}")
                return bounds

            object.__setattr__(summer, "at", recording)
            _, history = trainer.run(plan, x, y, seed=3, insecure_noise_seed=4)
            print(f"  {name} {mode} lr={lr} C={clip} {type(opt).__name__}: {len(seen)} steps, "
                  f"{sum(b.clip for b in seen)} clipping, reads {summer.nearby.reads}, stopped {history.stopped}")


# -- D ------------------------------------------------------------------------------------------------------
def check_weights(ms) -> None:
    print("D. crafted weights (zero, subnormal, around 2^-30, powers of two, huge): same as computing, sound")
    scales = [0.0, 5e-324, 1e-310, 2.0**-40, 2.0**-30, 2.0**-30 * (1 + 2.0**-52), 2.0**-31, 0.5, 1.0, 2.0, 2.0 - 2.0**-50, 1e3,
              1e30, 1e150, 1e200, 1e300]
    for name in ("mlp", "cnn", "embedding", "lipschitz"):
        model = ms[name]
        checked = 0
        for mode, clip in (("auto", 1e-6), ("auto", 0.3), ("auto", 5.0), ("bound", 1.0)):
            summer = DPSGD(model, noise_multiplier=1.0, batch_size=32, epochs=1, learning_rate=0.1, mode=mode, clip=clip,
                           granularity="step").plan(320).gradient_sum
            p0 = model.init(np.random.default_rng(0))
            for scale in scales:
                for variant in range(2):
                    params = [tuple(a * scale for a in part) for part in p0]
                    if variant:
                        params = [tuple(a if k == 0 else np.full_like(a, 5e-324) for k, a in enumerate(part)) for part in params]
                    try:
                        got = summer.at(params)
                    except Exception as error:
                        violation(f"D {name} {mode} C={clip} scale {scale}: at() raised {type(error).__name__}: {error}")
                        continue
                    want = expected(summer, summer.model.step_norms(params))
                    cert = model.certified_bound(params)
                    cap = clip if mode == "auto" else summer.bound.upper
                    if got != want:
                        violation(f"D {name} scale {scale}: at() {got} where computing gives {want}")
                    if not got.clip and not got.sensitivity >= min(cert.upper, cap):
                        violation(f"D {name} scale {scale}: S {got.sensitivity} below the certified {cert.upper}")
                    if not got.error >= cert.row_error(clip if got.clip else None):
                        violation(f"D {name} scale {scale}: e {got.error} below {cert.row_error(clip if got.clip else None)}")
                    checked += 1
        print(f"  {name}: {checked} weight sets")


# -- E ------------------------------------------------------------------------------------------------------
def check_cache_edges() -> None:
    print("E. NearbyStepBounds: NaN and inf norms, a new shape, eviction, no parameters")
    A, B = StepBound(False, 1.0, 1e-12), StepBound(False, 1.0625, 1e-12)
    nan, inf = math.nan, math.inf
    c = NearbyStepBounds()
    c.add(((1.0, 2.0), ()), A)
    c.add(((1.5, 2.5), ()), A)
    c.add(((0.5, 0.5), ()), CLIPS)
    for norms, want in [(((nan, 2.25), ()), None), (((1.25, nan), ()), None), (((inf, 3.0), ()), CLIPS), (((0.4, inf), ()), None),
                        (((1.25, 2.25), ()), CLIPS)]:
        got = c.read(norms)
        if got != want:
            violation(f"E read {norms}: {got}, expected {want}")
    c = NearbyStepBounds()
    c.add(((1.0, 2.0),), A)
    c.add(((inf, inf),), A)  # an entry at infinite norms
    if c.read(((1.5, 1e308),)) != A:
        violation("E a sandwich up to an infinite entry was missed")
    c = NearbyStepBounds(capacity=2)
    c.add(((1.0,),), A)
    c.add(((2.0,),), A)
    c.add(((3.0,),), B)
    if c.read(((1.0,),)) is not None or c.read(((1.5,),)) is not None or c.read(((2.5,),)) is not None:
        violation("E an evicted entry (or a sandwich across different results) answered")
    c.add(((1.0, 1.0),), B)
    if c.read(((2.0,),)) is not None:
        violation("E an entry of the old shape answered after a new shape")
    c = NearbyStepBounds()
    c.add(((), ()), A)  # a model without parameters: every slot is below and above the empty vector
    got = c.read(((),))
    if got is not None and got != A:
        violation(f"E a parameter-free key read {got}")
    print("  done")


# -- F ------------------------------------------------------------------------------------------------------
def check_derived_plan(ms) -> None:
    print("F. a GradientSum derived with dataclasses.replace must not answer from the original's cache")
    model = ms["mlp"]
    original = DPSGD(model, noise_multiplier=1.0, batch_size=32, epochs=1, learning_rate=0.1, mode="bound", clip=1.0,
                     granularity="step").plan(320).gradient_sum
    params = [(W * 40.0, b + 0.3) for W, b in model.init(np.random.default_rng(0))]  # public weights outside the declared set
    first = original.at(params)
    variant = dataclasses.replace(original, mode="auto", clip_norm=100.0)
    got = variant.at(params)
    want = expected(variant, variant.model.step_norms(params))
    cert = model.certified_bound(params).upper
    sampled = model.witness(model.certified_bound(params), params, samples=4096, seed=1).witness_value
    print(f"  bound-mode plan: {first}; auto variant (C = 100): {got}; computing: {want}; certified K {cert:.4g}, "
          f"sampled per-example norm {sampled:.4g}; shared cache: {variant.nearby is original.nearby}")
    if got != want:
        violation(f"F the variant's at() gave {got} where computing gives {want}")
    if not got.clip and not got.sensitivity >= sampled:
        violation(f"F the variant's sensitivity {got.sensitivity} is below a sampled per-example gradient norm {sampled} (unsound)")


def main() -> int:
    start = time.time()
    ms = models()
    check_monotone(ms)
    check_walks(ms)
    check_runs(ms)
    check_weights(ms)
    check_cache_edges()
    check_derived_plan(ms)
    print(f"{len(VIOLATIONS)} violation(s) in {time.time() - start:.0f} s")
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
