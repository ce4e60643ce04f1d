"""Adversarial audit of the per-step bound cached by rounded norms (a80cb11): Sequential.step_bound, MLP.step_bound,
rounding.round_up_to_slots, and the claim that every bound of chain_bound is nondecreasing in each weight norm.

Run: ``python bench/audits/attack_step_bound.py`` (about a minute). Exits 1 on a violation.

Ground truth: exact rationals (``fractions.Fraction``) for round_up_to_slots (result >= input, a slot
``j 2^k / n`` exactly, within ``1 + 1/n``, the smallest such) and for the per-example gradient norms
(squares of the float rows summed exactly), compared with ``(K + e)^2`` exactly (the computed row is
within ``e`` of the exact gradient whose norm is at most ``K``).

Cases:
* round_up_to_slots: 300k values (subnormals, powers of two and neighbours, the largest floats, random
  over the exponent range) for per_octave 1, 2, 16, 64, 2^20, 2^52, 2^60;
* monotonicity: for 11 architectures (Dense + Tanh/Sigmoid/TemperedSigmoid/ReLU/Identity, box and
  ball weight sets; Conv2d + AvgPool2d + Flatten + Dense; Embedding + Conv1d; Dense + GroupSort/MaxMin;
  SpectralDense; losses softmax CE, MSE, logistic, tempered CE) and weights at scales 1e-300..1e3 (also
  zero and subnormal weights), every norm that ``_weight_norms`` returns is raised alone (next float,
  its 64-slot value, x1.01, x2, x1e6, +inf) and then all together at random; every field of the bound
  (K, per_layer, rounding, norm_relative_error, norm_absolute_error) must not decrease;
* step_bound vs certified_bound at the same weights (every field of step's >= certified's), the cache
  (a second call at weights with other norms in the same slots), and K + e vs the largest computed
  per-example gradient norm found over box corners, random box points and labels (60 weights per model).
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from fractions import Fraction

import numpy as np

warnings.filterwarnings("ignore")

import contextlib  # noqa: E402

from opendp_hybridad.analysis.rounding import round_up_to_slots  # noqa: E402
from opendp_hybridad.nn import (  # noqa: E402
    MLP,
    Dense,
    Identity,
    Logistic,
    MeanSquaredError,
    ReLU,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    TemperedSigmoid,
)
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d  # noqa: E402
from opendp_hybridad.nn.parts.embedding import Embedding  # noqa: E402
from opendp_hybridad.nn.parts.flatten import Flatten  # noqa: E402
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d  # noqa: E402
from opendp_hybridad.nn.sequential import STEP_NORM_SLOTS, Sequential  # noqa: E402

VIOLATIONS: list[str] = []
MAX = sys.float_info.max


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg)


# -- round_up_to_slots ---------------------------------------------------------------------------------
def check_slots(rng: random.Random) -> None:
    values = [5e-324, 1e-323, 2.0**-1022, 2.0**-1022 - 5e-324, MAX, math.nextafter(MAX, 0), 1.0, math.nextafter(1.0, 2),
              math.nextafter(1.0, 0), 3.0, 0.1, 2.0**1023, 2.0**-1074 * 129, 2.0**-1074 * 127]
    for _ in range(43_000):
        c = rng.random()
        if c < 0.3:
            v = math.ldexp(1.0, rng.randint(-1074, 1023))
            for _ in range(rng.randint(-3, 3)):
                v = math.nextafter(v, math.inf)
        elif c < 0.5:
            v = rng.randint(1, 2**20) * 5e-324
        else:
            v = math.ldexp(rng.random() * 0.5 + 0.5, rng.randint(-1073, 1024))
        if 0 < v < math.inf:
            values.append(v)
    count = 0
    for n in (1, 2, 16, 64, 2**20, 2**52, 2**60):
        for v in values:
            r = round_up_to_slots(v, n)
            count += 1
            if r == math.inf:
                # only if the smallest slot >= v is past the largest float
                m, e = math.frexp(v)
                top = Fraction(math.ceil(Fraction(m) * 2 * n), 2 * n) * Fraction(2) ** e
                if top <= Fraction(MAX):
                    violation(f"round_up_to_slots({v!r}, {n}) = inf, the slot {float(top)!r} is a float")
                continue
            fv, fr = Fraction(v), Fraction(r)
            if fr < fv:
                violation(f"round_up_to_slots({v!r}, {n}) = {r!r} below the input")
                continue
            m, e = math.frexp(v)
            k = e - 1  # v in [2^k, 2^(k+1))
            step = Fraction(2) ** k / n
            j = fr / step
            if j.denominator != 1:
                # a result in the next octave must be a power of two there
                if fr != Fraction(2) ** (k + 1):
                    violation(f"round_up_to_slots({v!r}, {n}) = {r!r} is not a slot")
                continue
            if fr - step >= fv:
                violation(f"round_up_to_slots({v!r}, {n}) = {r!r} is not the smallest slot above")
            if fr > fv * (1 + Fraction(1, n)):
                violation(f"round_up_to_slots({v!r}, {n}) = {r!r} more than 1 + 1/n above")
    print(f"round_up_to_slots: {count} (value, per_octave) pairs, exact checks")


# -- models -----------------------------------------------------------------------------------------------
def models():
    from opendp_hybridad.nn.layers import TemperedCrossEntropy
    from opendp_hybridad.nn.parts.groupsort import GroupSort, MaxMin
    from opendp_hybridad.nn.parts.lipschitz import SpectralDense

    out = []
    for act, loss, o, ball in [(Tanh(), SoftmaxCrossEntropy(), 3, False), (Tanh(), SoftmaxCrossEntropy(), 3, True),
                               (Sigmoid(), MeanSquaredError(), 2, False), (TemperedSigmoid(3.0, 0.5, 1.2), Logistic(), 1, True),
                               (ReLU(), SoftmaxCrossEntropy(), 3, False), (Identity(), MeanSquaredError(), 2, True)]:
        parts = [Dense(4, 5, 0.8, 0.5, norm_ball=ball), act, Dense(5, o, 0.8, 0.5, norm_ball=ball)]
        out.append((f"dense-{act.name}-{loss.name}-ball={ball}",
                    Sequential(parts, loss, input_bound=np.array([1.5, 1.0, 0.5, 1.5]), label_bound=1.0)))
    out.append(("conv2d-pool-dense", Sequential([Conv2d(1, 3, 3, weight_bound=0.5), Tanh(), AvgPool2d(2), Flatten(),
                                                 Dense(3, 3, 0.5, 0.25)], SoftmaxCrossEntropy(), input_bound=1.0,
                                                input_shape=(1, 4, 4))))
    for ball in (False, True):
        parts = [Embedding(7, 3, weight_bound=0.5, norm_ball=ball, channels_first=True),
                 Conv1d(3, 2, 3, padding=1, weight_bound=0.5, bias_bound=0.25), Tanh(), AvgPool1d(2), Flatten(),
                 Dense(4, 3, 0.5, 0.25)]
        out.append((f"embedding-conv1d-ball={ball}", Sequential(parts, SoftmaxCrossEntropy(), input_bound=6.0, input_shape=(4,))))
    out.append(("groupsort", Sequential([Dense(4, 6, 1.0, 0.25, norm_ball=True), GroupSort(2), Dense(6, 6, 1.0, 0.25, norm_ball=True),
                                         MaxMin(), Flatten(), Dense(6, 3, 1.0, 0.25, norm_ball=True)], SoftmaxCrossEntropy(),
                                        input_bound=1.0)))
    try:
        out.append(("spectral-tempered-ce", Sequential([SpectralDense(4, 5, 1.0, 0.25), Tanh(), SpectralDense(5, 3, 1.0, 0.25)],
                                                       TemperedCrossEntropy(4.0), input_bound=1.0)))
    except Exception as exc:
        print("note: spectral model not built:", exc)
    return out


def fields(b) -> list[float]:
    return [float(b.upper), *[float(v) for v in b.per_layer], float(b.rounding), float(b.norm_relative_error),
            float(b.norm_absolute_error)]


def worse(new: list[float], old: list[float]) -> int | None:
    for i, (a, b) in enumerate(zip(new, old, strict=False)):
        if math.isnan(a) and not math.isnan(b):
            return i
        if a < b:
            return i
    return None


def scaled_params(seq, rng: np.random.Generator, scale: float):
    params = seq.init(rng)
    out = []
    for ps in params:
        new = []
        for p in ps:
            q = np.asarray(p, dtype=np.float64) * scale
            choice = rng.random()
            if choice < 0.1:
                q = np.zeros_like(q)
            elif choice < 0.2:
                q = np.where(rng.random(q.shape) < 0.5, 5e-324, q)
            new.append(q)
        out.append(tuple(new))
    return out


def raise_one(v: float, how: int, rng: random.Random) -> float:
    return [math.nextafter(v, math.inf), round_up_to_slots(v, STEP_NORM_SLOTS), v * 1.01, v * 2, v * 1e6, math.inf,
            v + rng.choice([5e-324, 1e-300, 1e-10, 1.0])][how]


def check_monotone(name: str, seq, rng: random.Random, nrng: np.random.Generator) -> int:
    cases = 0
    for _trial in range(12):
        scale = rng.choice([1.0, 1.0, 0.3, 1e-3, 1e-150, 1e-300, 5.0, 1e3])
        params = scaled_params(seq, nrng, scale)
        norms = seq._weight_norms(params)
        base = fields(seq._bound_from_norms(norms))
        for i, part in enumerate(norms):
            for j, v in enumerate(part):
                for how in range(7):
                    new = [list(p) for p in norms]
                    new[i][j] = raise_one(v, how, rng)
                    if not new[i][j] >= v:
                        continue
                    got = fields(seq._bound_from_norms(tuple(tuple(p) for p in new)))
                    cases += 1
                    k = worse(got, base)
                    if k is not None:
                        violation(f"{name}: raising norm {j} of part {i} from {v!r} to {new[i][j]!r} lowers field {k}: "
                                  f"{got[k]!r} < {base[k]!r} (norms {norms})")
                        return cases
        for _ in range(10):
            new = tuple(tuple(raise_one(v, rng.randrange(6), rng) if rng.random() < 0.5 else v for v in p) for p in norms)
            got = fields(seq._bound_from_norms(new))
            cases += 1
            k = worse(got, base)
            if k is not None:
                violation(f"{name}: raising several norms {norms} -> {new} lowers field {k}: {got[k]!r} < {base[k]!r}")
                return cases
        step = fields(seq.step_bound(params))
        cert = fields(seq.certified_bound(params))
        k = worse(step, cert)
        if k is not None:
            violation(f"{name}: step_bound field {k} {step[k]!r} < certified_bound's {cert[k]!r} at scale {scale}")
    return cases


def labels(seq, rng: np.random.Generator, count: int):
    loss, out = seq.loss, seq.output_features
    kind = loss.label_kind
    if kind == "class":
        return rng.integers(0, out, count)
    if kind == "binary":
        return rng.integers(0, 2, count).astype(float)
    return rng.choice([-1.0, 1.0], (count, out)) * seq.label_bound


def inputs(seq, rng: np.random.Generator, count: int) -> np.ndarray:
    box = np.broadcast_to(np.asarray(seq.input_bound, dtype=float), seq.input_shape)
    x = rng.uniform(-1, 1, (count, *seq.input_shape)) * box
    corners = rng.choice([-1.0, 1.0], (count // 2, *seq.input_shape)) * box
    x[: count // 2] = corners
    if hasattr(seq, "clamp_inputs"):
        x = seq.clamp_inputs(x)
    return x


def check_gradients(name: str, seq, rng: random.Random, nrng: np.random.Generator) -> int:
    found = 0.0
    cases = 0
    for _trial in range(60):
        scale = rng.choice([1.0, 1.0, 0.5, 3.0, 1e-3])
        params = scaled_params(seq, nrng, scale)
        with contextlib.suppress(Exception):
            params = seq.project(params) if hasattr(seq, "project") else params
        bound = seq.step_bound(params)
        K, e = Fraction(float(bound.upper)) if math.isfinite(bound.upper) else None, Fraction(float(bound.rounding)) \
            if math.isfinite(bound.rounding) else None
        if K is None or e is None:
            continue
        x, y = inputs(seq, nrng, 64), labels(seq, nrng, 64)
        grads = seq.per_example_gradients(params, x, y)
        rows = np.concatenate([g.reshape(x.shape[0], -1) for part in grads for g in part], axis=1)
        for row in rows:
            cases += 1
            sq = sum((Fraction(float(v)) ** 2 for v in row if v != 0), Fraction(0))
            found = max(found, math.sqrt(float(sq)) / float(bound.upper) if bound.upper > 0 else 0)
            if sq > (K + e) ** 2:
                violation(f"{name}: a computed per-example gradient of norm {math.sqrt(float(sq))!r} > K + e = "
                          f"{float(K + e)!r} (scale {scale})")
                return cases
    print(f"  {name}: {cases} per-example rows, largest norm / K = {found!r}")
    return cases


NOTES: list[str] = []


def check_mlp(nrng: np.random.Generator) -> None:
    """MLP.step_bound (its Sequential's, per layer) against MLP.certified_bound at the same weights."""
    from opendp_hybridad.nn import MLP

    count = 0
    for act, ball in [(Tanh(), False), (Sigmoid(), True), (TemperedSigmoid(3.0, 0.5, 1.2), False)]:
        mlp = MLP([Dense(4, 5, 0.8, 0.5, norm_ball=ball), Dense(5, 3, 0.8, 0.5, norm_ball=ball)], [act, Identity()],
                  SoftmaxCrossEntropy(), input_bound=np.array([1.5, 1.0, 0.5, 1.5]))
        for scale in (1.0, 1e-3, 1e-300, 7.0):
            params = [(W * scale, b * scale) for W, b in mlp.init(nrng)]
            step, cert = fields(mlp.step_bound(params)), fields(mlp.certified_bound(params))
            count += 1
            k = worse(step, cert)
            if k is not None:
                violation(f"MLP.step_bound field {k} {step[k]!r} < certified_bound's {cert[k]!r} ({act.name}, scale {scale})")
    print(f"  MLP.step_bound >= certified_bound: {count} weights")


def check_stale_cache() -> None:
    """The cache is keyed by the rounded norms only, and chain_bound also reads the model's declared boxes
    (label_bound, input_bound, input_norm_bound). They are read-only since this audit found a cached step
    bound that kept the old K after `model.label_bound = 100`: rebinding any of them must now be refused."""
    seq = Sequential([Dense(4, 5, 0.8, 0.5), Tanh(), Dense(5, 2, 0.8, 0.5)], MeanSquaredError(), input_bound=1.0,
                     label_bound=1.0)
    mlp = MLP([Dense(4, 5, 0.8, 0.5), Dense(5, 2, 0.8, 0.5)], [Tanh(), Identity()], MeanSquaredError(), input_bound=1.0)
    for model, name, value in [(seq, "label_bound", 100.0), (seq, "input_bound", np.full(4, 100.0)),
                               (seq, "input_norm_bound", 100.0), (mlp, "label_bound", 100.0),
                               (mlp, "input_bound", np.full(4, 100.0))]:
        try:
            setattr(model, name, value)
        except AttributeError:
            continue
        VIOLATIONS.append(f"{type(model).__name__}.{name} can be rebound after declaration: cached bounds would be over the old box")
        print("VIOLATION:", VIOLATIONS[-1])
    print("  declared boxes are read-only on Sequential and MLP")


def main() -> int:
    rng = random.Random(80)
    nrng = np.random.default_rng(80)
    check_slots(rng)
    total = 0
    for name, seq in models():
        total += check_monotone(name, seq, rng, nrng)
    print(f"monotonicity: {total} raised-norm bounds compared field by field")
    for name, seq in models():
        check_gradients(name, seq, rng, nrng)
    check_stale_cache()
    check_mlp(nrng)
    print("violations:", len(VIOLATIONS), "notes:", len(NOTES))
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
