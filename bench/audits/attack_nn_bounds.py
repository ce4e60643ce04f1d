"""Adversarial audit of the certified bounds of the nn parts (Sequential, Dense, Conv, pooling, embedding, ...).

Run: ``python bench/audits/attack_nn_bounds.py`` (a few minutes on 2 cores). Prints each
check with the claimed and the observed number; exits 1 if any claimed bound is violated.

Ground truth is computed here, independently of the library: exact rational arithmetic
(``fractions``) for norms of projected weights and for gradients of identity/MSE models,
float64 recomputation in other summation orders, and adversarial maximisation
(scipy L-BFGS-B with restarts) of per-example gradient norms over the declared boxes.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
import warnings
from fractions import Fraction as Fr

import numpy as np

warnings.filterwarnings("ignore")
np.seterr(all="ignore")

from opendp_hybridad.nn import layers as nn_layers  # noqa: E402
from opendp_hybridad.nn.layers import (  # noqa: E402
    Identity,
    Logistic,
    MeanSquaredError,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    TemperedSigmoid,
)
from opendp_hybridad.nn.parts.conv import Conv1d, Conv2d  # noqa: E402
from opendp_hybridad.nn.parts.dense import Dense  # noqa: E402
from opendp_hybridad.nn.parts.embedding import Embedding  # noqa: E402
from opendp_hybridad.nn.parts.flatten import Flatten  # noqa: E402
from opendp_hybridad.nn.parts.groupsort import GroupSort, MaxMin  # noqa: E402
from opendp_hybridad.nn.parts.pooling import AvgPool1d, AvgPool2d  # noqa: E402
from opendp_hybridad.nn.sequential import Sequential  # noqa: E402

VIOLATIONS: list[str] = []
HELD: list[str] = []


def violated(severity: str, title: str, detail: str) -> None:
    VIOLATIONS.append(f"[{severity}] {title}")
    print(f"VIOLATION [{severity}] {title}\n    {detail}")


def held(title: str, detail: str = "") -> None:
    HELD.append(title)
    print(f"held: {title}" + (f"  ({detail})" if detail else ""))


def exact_sq(a) -> Fr:
    return sum((Fr(float(v)) ** 2 for v in np.asarray(a, dtype=np.float64).ravel()), Fr(0))


def fr_sqrt_ratio(num_sq: Fr, den: float) -> float:
    """sqrt(num_sq) / den as a float (the ratio formed exactly, so nothing overflows or underflows)."""
    return math.sqrt(float(num_sq / Fr(den) ** 2)) if den > 0 else math.inf


def run(check) -> None:
    t = time.perf_counter()
    try:
        check()
    except Exception:  # an audit reports, it never stops half-way
        print(f"ERROR in {check.__name__}:\n{traceback.format_exc()}")
    print(f"    ({check.__name__}: {time.perf_counter() - t:.1f}s)")


# ----------------------------------------------------------------------------------------------
# 1. Frobenius-ball projection when the float sum of squares underflows (claim 3)
# ----------------------------------------------------------------------------------------------
def check_ball_projection_underflow() -> None:
    """Dense._ball_shrink reads fl(sum W_ij^2) with no allowance for squares that underflow.

    Entries of 1.5e-162 square to 2.25e-324 < TINY/2, which rounds to 0: the float sum of
    squares is 0, the "upper bound" on ||W|| is up(sqrt(TINY)) = 2.2e-162, and a W of n such
    entries (exact norm sqrt(n) 1.5e-162) passes as inside a ball of radius 3e-162.
    The same proxy projects Conv and Embedding weights.
    """
    wb = 3e-162
    cases = [
        ("Dense(10->10, ball 3e-162).project", Dense(10, 10, wb, 0.0, True), np.full((10, 10), 1.5e-162)),
        ("Conv1d(4->5,k=5, ball 3e-162).project_params", Conv1d(4, 5, 5, weight_bound=wb, bias_bound=0.0, norm_ball=True),
         np.full((5, 4, 5), 1.5e-162)),
        ("Embedding(20x5, ball 3e-162).project_params", Embedding(20, 5, weight_bound=wb, norm_ball=True), np.full((20, 5), 1.5e-162)),
    ]
    for name, part, W in cases:
        if isinstance(part, Dense):
            outs = {"project": part.project(W, np.zeros(W.shape[0]))[0]}
            for comp in (True, False):
                nn_layers._USE_COMPILED_UPDATE = comp
                outs[f"apply_step(compiled={comp})"] = part.apply_step(np.zeros_like(W), np.zeros(W.shape[0]), -W.ravel(),
                                                                       np.zeros(W.shape[0]), 1.0, True)[0]
            nn_layers._USE_COMPILED_UPDATE = True
        elif isinstance(part, Embedding):
            outs = {"project_params": part.project_params((W,))[0]}
        else:
            outs = {"project_params": part.project_params((W, np.zeros(W.shape[0])))[0]}
        for how, out in outs.items():
            ratio = fr_sqrt_ratio(exact_sq(out), wb)
            if exact_sq(out) > Fr(wb) ** 2:
                violated("medium", f"{name} via {how}: result outside the Frobenius ball (squares underflow)",
                         f"claimed ||W||_F <= {wb:g}; exact ||W||_F = {ratio:.4g} x the radius (fractions)")
            else:
                held(f"{name} via {how}")

    # consequence: K is violated by a factor ~5 on a model over that ball
    n = 100
    model = Sequential([Dense(n, 1, weight_bound=wb, bias_bound=0.0, norm_ball=True)], MeanSquaredError(),
                       input_bound=1.0, label_bound=0.0)
    W0 = np.full((1, n), 1.5e-162)
    params = [model.parts[0].project(W0, np.zeros(1))]
    K = model.certified_bound().upper
    # exact gradient at x = ones (a box corner), y = 0: z = W x, g_W = z x, g_b = z
    Wp = params[0][0]
    z = sum(Fr(float(w)) for w in Wp.ravel())
    g_sq = z * z * (n + 1)
    ratio = fr_sqrt_ratio(g_sq, K)
    comp = float(model.per_example_norms(params, np.ones((1, n)), np.zeros((1, 1)))[0])
    if g_sq > Fr(K) ** 2:
        violated("medium", "K over a tiny Frobenius ball: projected weights escape the ball, so ||g|| > K",
                 f"Dense({n}->1, ball {wb:g}, bias 0), MSE, label_bound 0, x = ones: K = {K:.6g}; "
                 f"exact ||g|| = {ratio:.4g} K (computed {comp:.6g})")
    else:
        held("K over tiny ball after projection", f"ratio {ratio:.3g}")


# ----------------------------------------------------------------------------------------------
# 2. Frobenius-ball projection when fl(radius / norm) underflows or the squares overflow
# ----------------------------------------------------------------------------------------------
def check_ball_projection_negative_shrink() -> None:
    """``down(down(r / N) (1 - 8u))`` is ``-2 TINY`` (not 0) when ``r / N`` underflows to 0.

    W is then multiplied by a negative subnormal: entries ``|W_ij| 1e-323``, which lie
    outside a ball of small radius (r = 1e-300 with |W_ij| = 1e100; r = 1e-30 with
    |W_ij| = 1e300, whose squares overflow). Signs are flipped too.
    """
    for wb, val in [(1e-300, 1e100), (1e-30, 1e300), (1e-200, 1e150)]:
        d = Dense(3, 4, weight_bound=wb, bias_bound=1.0, norm_ball=True)
        W = np.full((4, 3), val)
        shrink = d._ball_shrink(float(np.dot(W.ravel(), W.ravel())), W.size)
        for comp in (True, False):
            nn_layers._USE_COMPILED_UPDATE = comp
            W2 = d.apply_step(np.zeros((4, 3)), np.zeros(4), -W.ravel(), np.zeros(4), 1.0, True)[0]
            s = exact_sq(W2)
            if s > Fr(wb) ** 2:
                violated("low", f"Dense ball r={wb:g}, step to |W_ij|={val:g} (compiled={comp}): projection lands outside",
                         f"shrink factor {shrink!r} (negative); claimed ||W||_F <= {wb:g}, exact ||W||_F = "
                         f"{fr_sqrt_ratio(s, wb):.4g} x the radius")
            else:
                held(f"Dense ball r={wb:g}, |W_ij|={val:g} (compiled={comp})")
        nn_layers._USE_COMPILED_UPDATE = True
    # the same rule in Sequential.clamp_inputs (the input ball)
    model = Sequential([Dense(4, 1)], MeanSquaredError(), input_bound=1e200, input_norm_bound=1e-150)
    c = model.clamp_inputs(np.full((1, 4), 1e200))
    s = exact_sq(c)
    if s > Fr(1e-150) ** 2:
        violated("low", "Sequential.clamp_inputs (box 1e200, ball 1e-150): a row whose squares overflow lands outside the ball",
                 f"claimed ||x|| <= 1e-150; got x = {c[0].tolist()} (||x|| = {math.sqrt(float(s)):.4g})")
    else:
        held("clamp_inputs overflow")
    c = model.clamp_inputs(np.array([[np.nan, 0.0, 0.0, 0.0]]))
    if not np.all(np.isfinite(c)):
        violated("low", "Sequential.clamp_inputs passes NaN through (docstring: maps any input into the box and the ball)",
                 f"clamp_inputs([nan, 0, 0, 0]) = {c[0].tolist()}")


# ----------------------------------------------------------------------------------------------
# 3. Box projection with a non-finite step (claim 3)
# ----------------------------------------------------------------------------------------------
def check_box_projection_nan() -> None:
    """``Dense.project``: ``np.abs(W).max() > bound`` is False when W holds a NaN, so nothing is clipped."""
    d = Dense(2, 2, weight_bound=1.0, bias_bound=1.0)
    step_W, step_b = np.array([np.nan, 1.0, 2.0, 3.0]), np.array([np.inf, 5.0])
    for comp in (True, False):
        nn_layers._USE_COMPILED_UPDATE = comp
        W, b = d.apply_step(np.zeros((2, 2)), np.zeros(2), step_W, step_b, 1.0, True)
        finite_out = [float(v) for v in np.concatenate([W.ravel(), b]) if np.isfinite(v) and abs(v) > 1.0]
        nonfinite = int(np.sum(~np.isfinite(W))) + int(np.sum(~np.isfinite(b)))
        if finite_out or nonfinite:
            violated("low", f"Dense box projection with one NaN in the step (compiled={comp})",
                     f"W = {W.ravel().tolist()}, b = {b.tolist()}: {len(finite_out)} finite entries outside the box, "
                     f"{nonfinite} non-finite entries kept")
        else:
            held(f"box projection NaN step compiled={comp}")
    nn_layers._USE_COMPILED_UPDATE = True


# ----------------------------------------------------------------------------------------------
# 4. DP-SGD applies the box but not the declared input ball
# ----------------------------------------------------------------------------------------------
def check_dpsgd_ball() -> None:
    """``Sequential(input_norm_bound=R)``: K starts from ``min(||box||, R)``; DP-SGD must apply ``clamp_inputs``."""
    from opendp_hybridad.dpsgd.sgd import DPSGD

    model = Sequential([Dense(4, 1, weight_bound=1.0, bias_bound=0.0)], MeanSquaredError(), input_bound=1.0,
                       input_norm_bound=0.5, label_bound=0.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, mode="bound")
    x = np.ones((4, 4))
    y = np.zeros((4, 1))
    xc, yc = trainer._check(x, y, 4, 4)
    params = [(np.ones((1, 4)), np.zeros(1))]
    norms = model.per_example_norms(params, xc, yc)
    K = trainer.bound.upper
    if norms.max() > K * (1 + 1e-9):
        violated("high", "DPSGD (bound mode) trains on examples outside the declared input ball (clip to box only)",
                 f"input_norm_bound 0.5, box 1: after DPSGD._check ||x|| = {np.linalg.norm(xc[0]):.3g}; "
                 f"K = {K:.6g}, ||g|| = {norms.max():.6g} at weights inside the set")
    else:
        held("DPSGD applies the input ball", f"max ||g|| {norms.max():.4g} <= K {K:.4g}")


# ----------------------------------------------------------------------------------------------
# 5. Kernels: norms without materialising == materialised; clipped sums == sum of clipped rows
# ----------------------------------------------------------------------------------------------
def _configs():
    rng = np.random.default_rng(1)
    out = []
    # (name, parts, input_shape, loss, integer inputs?)
    out.append(("conv1d k=L s=1 p=0 1ch", [Conv1d(1, 3, 7), Tanh(), Flatten(), Dense(3, 2)], (1, 7), SoftmaxCrossEntropy(), False))
    out.append(("conv1d k=3 s=2 p=1", [Conv1d(2, 4, 3, stride=2, padding=1), Sigmoid(), Flatten(), Dense(16, 1)], (2, 8),
                Logistic(), False))
    out.append(("conv1d 1x1 many ch (ghost)", [Conv1d(16, 16, 1), Tanh(), Flatten(), Dense(16 * 2, 3)], (16, 2),
                MeanSquaredError(), False))
    out.append(("conv1d k=5 s=3 p=2 odd", [Conv1d(3, 2, 5, stride=3, padding=2), Identity(), Flatten(), Dense(8, 2)], (3, 11),
                MeanSquaredError(), False))
    out.append(("conv2d s=(2,3) p=(1,0)", [Conv2d(2, 3, (3, 2), stride=(2, 3), padding=(1, 0)), Tanh(), AvgPool2d((2, 1)),
                                           Flatten(), Dense(3 * 1 * 2, 2)], (2, 5, 6), SoftmaxCrossEntropy(), False))
    out.append(("conv2d 1x1 ghost, deep", [Conv2d(8, 8, 1), Tanh(), Conv2d(8, 8, 1), Tanh(), Conv2d(8, 4, 2, stride=2),
                                           Flatten(), Dense(4, 2)], (8, 2, 2), SoftmaxCrossEntropy(), False))
    out.append(("conv1d stride>kernel + pool", [Conv1d(2, 3, 2, stride=4), TemperedSigmoid(), AvgPool1d(3), Flatten(),
                                                Dense(3, 1)], (2, 14), Logistic(), False))
    out.append(("embedding repeated idx", [Embedding(5, 3), Tanh(), Flatten(), Dense(18, 2)], (6,), SoftmaxCrossEntropy(), True))
    out.append(("embedding->conv1d", [Embedding(4, 3, channels_first=True), Conv1d(3, 2, 3, padding=1), Tanh(), Flatten(),
                                      Dense(10, 1)], (5,), MeanSquaredError(), True))
    out.append(("embedding->groupsort", [Embedding(4, 4), Flatten(), GroupSort(4), Dense(12, 2)], (3,), SoftmaxCrossEntropy(), True))
    out.append(("dense maxmin dense", [Dense(6, 8), MaxMin(), Dense(8, 2)], (6,), SoftmaxCrossEntropy(), False))
    return out, rng


def check_kernels() -> None:
    configs, rng = _configs()
    worst_norm, worst_sum = 0.0, 0.0
    for name, parts, shape, loss, integer in configs:
        input_bound = 4.0 if integer else 1.0
        model = Sequential(parts, loss, input_shape=shape, input_bound=input_bound, label_bound=1.0)
        for trial in range(3):
            params = [tuple(p.witness_params(rng, s)) for p, s in zip(model.parts, model._shapes[:-1], strict=True)]
            B = 7
            if integer:
                x = rng.integers(0, 2 if trial == 0 else 5, (B, *shape)).astype(float)  # many repeats
            else:
                x = np.where(rng.random((B, *shape)) < 0.5, -1.0, 1.0) * (rng.random((B, *shape)) if trial else 1.0)
            y = model.sample_labels(rng, B)
            mat = model.per_example_gradients(params, x, y)
            rows = np.concatenate([np.concatenate([g.reshape(B, -1) for g in part], axis=1) if part else np.zeros((B, 0))
                                   for part in mat], axis=1)
            mat_norms = np.sqrt((rows * rows).sum(axis=1))
            fast = model.per_example_norms(params, x, y)
            rel = float(np.max(np.abs(fast - mat_norms) / np.maximum(mat_norms, 1e-300)))
            worst_norm = max(worst_norm, rel)
            for C in (None, float(np.median(mat_norms)), 1e-3):
                if C is None:
                    expect = rows.sum(axis=0)
                else:
                    f = np.minimum(1.0, C / np.maximum(mat_norms, 1e-300))
                    expect = (rows * f[:, None]).sum(axis=0)
                got = np.empty(model.num_parameters)
                model.gradient_sum(params, x, y, clip=C, out=got)
                # other batch compositions: one example at a time, reversed order
                one = np.zeros(model.num_parameters)
                for i in range(B):
                    tmp = np.empty(model.num_parameters)
                    model.gradient_sum(params, x[i:i + 1], y[i:i + 1], clip=C, out=tmp)
                    one += tmp
                scale = max(float(np.abs(rows).sum()), 1e-300)
                d = max(float(np.abs(got - expect).max()), float(np.abs(one - expect).max())) / scale
                worst_sum = max(worst_sum, d)
                if d > 1e-12:
                    violated("medium", f"kernels {name}: gradient_sum(clip={C}) != sum of clipped rows", f"relative diff {d:.3g}")
            if rel > 1e-10:
                violated("medium", f"kernels {name}: per_example_norms != materialised norms", f"relative diff {rel:.3g}")
    held("kernels: per_example_norms == materialised; gradient_sum (clip None/median/1e-3, batch of 7 and one by one) == sum "
         "of (clipped) rows", f"{len(configs)} configs x 3 draws; worst rel norm diff {worst_norm:.2g}, sum diff {worst_sum:.2g}")


# ----------------------------------------------------------------------------------------------
# 6. K against adversarial maximisation; e against a float64 recomputation in other orders
# ----------------------------------------------------------------------------------------------
def check_K_adversarial() -> None:
    from scipy.optimize import minimize

    configs, rng = _configs()
    worst = 0.0
    deadline = time.perf_counter() + 150
    for name, parts, shape, loss, integer in configs:
        model = Sequential(parts, loss, input_shape=shape, input_bound=4.0 if integer else 1.0, label_bound=1.0)
        bound = model.certified_bound()
        K = bound.upper
        if not (K == K and K >= 0):
            violated("medium", f"{name}: K is NaN or negative", repr(K))
            continue
        shapes_p = [model._param_shapes[i] for i in range(len(model.parts))]
        [sum(math.prod(s) for s in ps) for ps in shapes_p]
        nx = math.prod(shape)

        def unpack(v, model=model, shapes_p=shapes_p, nx=nx, shape=shape):
            params, off = [], nx
            for p, ps in zip(model.parts, shapes_p, strict=True):
                arrs = []
                for s in ps:
                    k = math.prod(s)
                    arrs.append(v[off:off + k].reshape(s))
                    off += k
                params.append(project_into(p, tuple(arrs)))
            return v[:nx].reshape(1, *shape), params

        def project_into(p, arrs):
            if not arrs:
                return ()
            return tuple(p.project_params(arrs))

        best = 0.0
        for _restart in range(3 if time.perf_counter() < deadline else 0):
            y = model.sample_labels(rng, 1)
            w0 = [tuple(p.witness_params(rng, s)) for p, s in zip(model.parts, model._shapes[:-1], strict=True)]
            x0 = model.input_bound * np.where(rng.random(shape) < 0.5, -1.0, 1.0)
            v0 = np.concatenate([x0.ravel()] + [a.ravel() for ps in w0 for a in ps])
            if integer:
                xs = rng.integers(0, int(model.input_bound.max()) + 1, (1, *shape)).astype(float)
                xs[:] = xs.flat[0]  # all indices equal: the tight case of the embedding bound
                v0[:nx] = xs.ravel()

            def neg(v, model=model, y=y, unpack=unpack):
                x, params = unpack(v)
                x = model.clamp_inputs(x)
                return -float(model.per_example_norms(params, x, y)[0])

            # indices are not continuous: optimise the weights only
            box = [(v0[i], v0[i]) for i in range(nx)] if integer else [(-float(b), float(b)) for b in model.input_bound.ravel()]
            for p, ps in zip(model.parts, shapes_p, strict=True):
                for s in ps:
                    wb = getattr(p, "bias_bound", 0.0) if (len(s) == 1 and len(ps) == 2) else getattr(p, "weight_bound", 1.0)
                    box += [(-wb, wb)] * math.prod(s)
            res = minimize(neg, v0, method="L-BFGS-B", bounds=box, options={"maxiter": 60, "maxfun": 1500})
            best = max(best, -res.fun, -neg(v0))
        ratio = best / K if K > 0 else math.inf
        worst = max(worst, ratio)
        if best > K + bound.rounding:
            violated("high", f"{name}: adversarial ||g|| exceeds K", f"K = {K:.6g}, found {best:.6g}")
        else:
            print(f"    {name}: K = {K!r}, e = {bound.rounding:.3g}, best adversarial ||g|| = {best!r} ({ratio:.6f} K)")
    held("K >= adversarial per-example gradient norms (L-BFGS-B, 3 restarts from box corners / set extremes)",
         f"worst ratio {worst:.3f}")


def _exact_conv1d_identity_grad(W, b, V, c, x, y, stride, pad):
    """Exact (fractions) per-example gradient of x -> Dense(flatten(conv1d(x))) with MSE, identity activations."""
    Cout, Cin, k = W.shape
    L = x.shape[1]
    xp = [[Fr(0)] * pad + [Fr(float(v)) for v in x[ci]] + [Fr(0)] * pad for ci in range(Cin)]
    P = (L + 2 * pad - k) // stride + 1
    Wf = [[[Fr(float(W[o, ci, j])) for j in range(k)] for ci in range(Cin)] for o in range(Cout)]
    z = [[sum((Wf[o][ci][j] * xp[ci][p * stride + j] for ci in range(Cin) for j in range(k)), Fr(0)) + Fr(float(b[o]))
          for p in range(P)] for o in range(Cout)]
    flat = [z[o][p] for o in range(Cout) for p in range(P)]
    Vf = [[Fr(float(v)) for v in row] for row in V]
    out = [sum((Vf[m][i] * flat[i] for i in range(len(flat))), Fr(0)) + Fr(float(c[m])) for m in range(len(V))]
    dout = [out[m] - Fr(float(y[m])) for m in range(len(V))]
    gV = [[dout[m] * flat[i] for i in range(len(flat))] for m in range(len(V))]
    gc = dout
    dflat = [sum((Vf[m][i] * dout[m] for m in range(len(V))), Fr(0)) for i in range(len(flat))]
    dz = [[dflat[o * P + p] for p in range(P)] for o in range(Cout)]
    gW = [[[sum((dz[o][p] * xp[ci][p * stride + j] for p in range(P)), Fr(0)) for j in range(k)] for ci in range(Cin)]
          for o in range(Cout)]
    gb = [sum(dz[o], Fr(0)) for o in range(Cout)]
    return [v for o in gW for ci in o for v in ci] + gb + [v for row in gV for v in row] + gc


def check_rounding_exact() -> None:
    """e (``ModelBound.rounding``) and ``row_error(C)`` against exact rational gradients, with matmuls in other orders."""
    import opendp_hybridad.nn.parts.conv as conv_mod
    import opendp_hybridad.nn.parts.dense as dense_mod

    rng = np.random.default_rng(7)
    orders = {
        "numpy": np.matmul,
        "reversed": lambda a, b: np.matmul(a[..., ::-1], b[..., ::-1, :]),
        "longdouble-then-round": lambda a, b: np.matmul(a.astype(np.longdouble), b.astype(np.longdouble)).astype(np.float64),
    }
    worst = 0.0
    for cin, cout, k, stride, pad, L in [(1, 1, 5, 1, 0, 5), (2, 3, 3, 2, 1, 7), (1, 2, 2, 3, 2, 6), (3, 2, 1, 1, 0, 4)]:
        conv = Conv1d(cin, cout, k, stride=stride, padding=pad, weight_bound=1.0, bias_bound=1.0)
        P = (L + 2 * pad - k) // stride + 1
        model = Sequential([conv, Identity(), Flatten(), Dense(cout * P, 2, weight_bound=1.0, bias_bound=1.0)], MeanSquaredError(),
                           input_shape=(cin, L), input_bound=1.0, label_bound=1.0)
        bound = model.certified_bound()
        for trial in range(3):
            W = rng.choice([-1.0, 1.0], (cout, cin, k)) * (rng.random((cout, cin, k)) if trial else 1.0)
            b = rng.choice([-1.0, 1.0], cout)
            V = rng.choice([-1.0, 1.0], (2, cout * P)) * (1 - rng.random((2, cout * P)) * 2.0**-30)
            c = rng.choice([-1.0, 1.0], 2)
            params = [(W, b), (), (), (V, c)]
            x = np.where(rng.random((1, cin, L)) < 0.5, -1.0, 1.0) * (1 - rng.random((1, cin, L)) * 2.0**-20)
            y = np.where(rng.random((1, 2)) < 0.5, -1.0, 1.0)
            exact = _exact_conv1d_identity_grad(W, b, V, c, x[0], y[0], stride, pad)
            for oname, mm in orders.items():
                conv_mod._matmul = mm
                dense_mod._matmul = mm
                try:
                    got = np.empty(model.num_parameters)
                    model.gradient_sum(params, x, y, out=got)
                finally:
                    conv_mod._matmul = np.matmul
                    dense_mod._matmul = np.matmul
                err_sq = sum(((Fr(float(g)) - e) ** 2 for g, e in zip(got, exact, strict=True)), Fr(0))
                err = math.sqrt(float(err_sq))
                worst = max(worst, err / bound.rounding)
                if err_sq > Fr(bound.rounding) ** 2:
                    violated("high", f"conv1d(cin={cin},cout={cout},k={k},s={stride},p={pad}) {oname}: computed row off by more than e",
                             f"e = {bound.rounding:.4g}, exact error {err:.4g}")
    held("e >= ||computed row - exact row|| (fractions) for conv1d+dense identity/MSE models, 3 matmul orders",
         f"worst error/e = {worst:.3g}")


def check_rounding_tanh_mpmath() -> None:
    """e for dense-tanh-dense-softmax (and sigmoid, tempered sigmoid) against 50-digit mpmath gradients at the float weights."""
    import mpmath as mp

    mp.mp.dps = 50
    rng = np.random.default_rng(11)
    worst = 0.0
    for act, f, df in [(Tanh(), mp.tanh, lambda z: 1 - mp.tanh(z) ** 2),
                       (Sigmoid(), lambda z: 1 / (1 + mp.exp(-z)), lambda z: mp.exp(-z) / (1 + mp.exp(-z)) ** 2)]:
        for n_in, n_h, wb in [(3, 4, 1.0), (8, 6, 3.0), (2, 2, 20.0)]:
            model = Sequential([Dense(n_in, n_h, wb, wb), act, Dense(n_h, 3, wb, wb)], SoftmaxCrossEntropy(), input_bound=1.0)
            e = model.certified_bound().rounding
            for _ in range(4):
                W1 = rng.uniform(-wb, wb, (n_h, n_in))
                b1 = rng.uniform(-wb, wb, n_h)
                W2 = rng.uniform(-wb, wb, (3, n_h))
                b2 = rng.uniform(-wb, wb, 3)
                x = np.where(rng.random((1, n_in)) < .5, -1.0, 1.0)
                y = rng.integers(0, 3, 1)
                params = [(W1, b1), (), (W2, b2)]
                got = np.empty(model.num_parameters)
                model.gradient_sum(params, x, y, out=got)
                def M(a):
                    return mp.matrix([[mp.mpf(float(v)) for v in row] for row in np.atleast_2d(a)])
                z1 = M(W1) * M(x).T + M(b1).T
                a1 = mp.matrix([f(z1[i]) for i in range(n_h)])
                z2 = M(W2) * a1 + M(b2).T
                ex = [mp.exp(z2[i]) for i in range(3)]
                p_ = [v / sum(ex) for v in ex]
                d2 = mp.matrix([p_[i] - (1 if i == int(y[0]) else 0) for i in range(3)])
                v1 = M(W2).T * d2
                d1 = mp.matrix([v1[i] * df(z1[i]) for i in range(n_h)])
                exact = [d1[i] * mp.mpf(float(x[0, j])) for i in range(n_h) for j in range(n_in)] + [d1[i] for i in range(n_h)]
                exact += [d2[i] * a1[j] for i in range(3) for j in range(n_h)] + [d2[i] for i in range(3)]
                err = float(mp.sqrt(sum((mp.mpf(float(g)) - v) ** 2 for g, v in zip(got, exact, strict=True))))
                worst = max(worst, err / e)
                if err > e:
                    violated("high", f"dense-{act.name}-dense (wb={wb}): computed row off by more than e",
                             f"e = {e:.4g}, mpmath error {err:.4g}")
    held("e >= ||computed row - exact row|| (50-digit mpmath) for dense-tanh/sigmoid-dense-softmax", f"worst error/e = {worst:.3g}")


# ----------------------------------------------------------------------------------------------
# 7. Bounds never NaN or negative, over extreme declarations
# ----------------------------------------------------------------------------------------------
def check_bounds_total() -> None:
    bad = []
    count = 0
    for wb in (0.0, 5e-324, 1e-300, 1e-8, 1.0, 1e150, 1e300, 1.7e308):
        for ib in (0.0, 1e-300, 1.0, 1e200):
            for ball in (False, True):
                for acts in ([Tanh()], [Sigmoid()], [Identity()], [TemperedSigmoid(1e300, 1e300, 1e300)]):
                    models = [
                        Sequential([Conv1d(2, 3, 3, stride=2, padding=1, weight_bound=wb, bias_bound=wb, norm_ball=ball), *acts,
                                    AvgPool1d(2), Flatten(), Dense(6, 2, wb, wb, ball)], SoftmaxCrossEntropy(),
                                   input_shape=(2, 9), input_bound=ib),
                        Sequential([Embedding(5, 3, weight_bound=wb, norm_ball=ball), *acts, Flatten(), Dense(12, 1, wb, wb, ball)],
                                   MeanSquaredError(), input_shape=(4,), input_bound=ib, label_bound=ib),
                        Sequential([Dense(3, 4, wb, wb, ball), *acts, Dense(4, 1, wb, wb, ball)], Logistic(), input_bound=ib),
                    ]
                    for m in models:
                        for bnd in (m.certified_bound(), m.rounding_bound(m.init(np.random.default_rng(0)))):
                            count += 1
                            vals = {"upper": bnd.upper, "rounding": bnd.rounding, "rel": bnd.norm_relative_error,
                                    "abs": bnd.norm_absolute_error, "row_error(1)": bnd.row_error(1.0),
                                    "row_error(1e-80)": bnd.row_error(1e-80)}
                            vals.update({f"per_layer[{i}]": v for i, v in enumerate(bnd.per_layer)})
                            for key, v in vals.items():
                                if not (v >= 0):
                                    bad.append(f"wb={wb:g} ib={ib:g} ball={ball} {acts[0].name}: {key} = {v!r}")
    if bad:
        violated("low", "a bound came out NaN or negative", "; ".join(bad[:5]) + f" ({len(bad)} in all)")
    else:
        held("no NaN/negative bound", f"{count} bound records over weight bounds 0..1.7e308, input boxes 0..1e200, box/ball")


def main() -> int:
    for check in (check_ball_projection_underflow, check_ball_projection_negative_shrink, check_box_projection_nan,
                  check_dpsgd_ball, check_kernels, check_rounding_exact, check_rounding_tanh_mpmath, check_bounds_total,
                  check_K_adversarial):
        run(check)
    print(f"\n{len(VIOLATIONS)} violation(s), {len(HELD)} checks held")
    for v in VIOLATIONS:
        print("  " + v)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
