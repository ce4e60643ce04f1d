"""Adversarial audit of ``SpectralConv1d`` / ``SpectralConv2d`` (nn/parts/spectral_conv.py, commit 9ebd342).

Run: ``python bench/audits/attack_spectral_conv.py`` (about four minutes on 2 cores). Prints each check
with the claimed and the observed number; exits 1 if any claimed bound is violated, else 0.

Ground truth is independent of the library: exact rationals (``fractions``) for projections
(``r^2 I - G`` PSD by symmetric elimination), for layer outputs, input deltas and rows; the full
convolution operator built entry by entry and its float SVD (checked with a 1e-9 relative margin)
against ``sqrt(c) ||W_mat||_2``; 50-digit mpmath per-example gradients of whole models; scipy L-BFGS-B
over weights ``r U diag(s) V^T`` (``s`` in [0, 1]), biases, inputs and labels for K.

Configurations: strides > kernel (disjoint patches), padding, kernels as large as the (padded)
input, 1x1 kernels with many channels (wide ``W_mat``: in*k < out), rank-deficient kernels, odd shapes,
a conv after a conv (the transposed operator's bound is used).

Result at 9ebd342 (3a956e0): no violated bound. ``sqrt(c) ||W_mat||_2`` is attained (ratio 1.0) by
1x1 and disjoint-patch geometries, so the transposed-operator and ``||z||`` terms are tight there;
L-BFGS-B reaches 0.55-0.84 of K on single-conv models, 0.09 on conv -> conv (the product of
per-layer Lipschitz constants); computed rows sit about 1e-4 of e or closer to the 50-digit ones.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from fractions import Fraction as Fr

import mpmath as mp
import numpy as np
from scipy.optimize import minimize

warnings.filterwarnings("ignore")
np.seterr(all="ignore")

from opendp_hybridad.nn.layers import SoftmaxCrossEntropy, Tanh, TemperedCrossEntropy  # noqa: E402
from opendp_hybridad.nn.parts.dense import Dense  # noqa: E402
from opendp_hybridad.nn.parts.flatten import Flatten  # noqa: E402
from opendp_hybridad.nn.parts.lipschitz import SpectralDense  # noqa: E402
from opendp_hybridad.nn.parts.pooling import AvgPool2d  # noqa: E402
from opendp_hybridad.nn.parts.spectral_conv import SpectralConv1d, SpectralConv2d  # noqa: E402
from opendp_hybridad.nn.protocol import ActivationBound, DeltaBound  # noqa: E402
from opendp_hybridad.nn.sequential import Sequential  # noqa: E402

mp.mp.dps = 50
FAILS: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"[{'ok ' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILS.append(name)


# -- exact references ------------------------------------------------------------------------------------
def psd_at_most(W: np.ndarray, s: float) -> bool:
    """Exact ``||W||_2 <= s``: ``s^2 I - G`` PSD (G the smaller Gram matrix), symmetric elimination on fractions."""
    A = np.asarray(W, dtype=float)
    if A.shape[0] < A.shape[1]:
        A = A.T
    q = A.shape[1]
    cols = [[Fr(float(v)) for v in A[:, j]] for j in range(q)]
    M = [[(Fr(s) ** 2 if i == j else Fr(0)) - sum(a * b for a, b in zip(cols[i], cols[j], strict=True)) for j in range(q)]
         for i in range(q)]
    for k in range(q):
        p = M[k][k]
        if p < 0:
            return False
        if p == 0:
            if any(M[k][j] != 0 for j in range(k + 1, q)):
                return False
            continue
        for i in range(k + 1, q):
            f = M[i][k] / p
            for j in range(k, q):
                M[i][j] -= f * M[k][j]
    return True


def patch_index(layer, shape):
    """For each output position, the list of (flat input index or None for padding) in W_mat's column order."""
    C, sp = shape[0], shape[1:]
    grid = layer.output_shape(shape)[1:]
    out = []
    for pos in itertools.product(*(range(g) for g in grid)):
        idx = []
        for ch in range(C):
            for off in itertools.product(*(range(k) for k in layer.kernel_size)):
                coord = [p * s + o - pad for p, s, o, pad in zip(pos, layer.stride, off, layer.padding, strict=True)]
                if all(0 <= v < n for v, n in zip(coord, sp, strict=True)):
                    idx.append(int(np.ravel_multi_index((ch, *coord), shape)))
                else:
                    idx.append(None)
        out.append(idx)
    return out, grid


def operator_matrix(layer, W, shape):
    """The convolution (no bias) as a dense (out*P) x (C*prod(sp)) matrix, built entry by entry."""
    idx, _grid = patch_index(layer, shape)
    P = len(idx)
    Wm = np.asarray(W).reshape(layer.out_channels, -1)
    T = np.zeros((layer.out_channels * P, math.prod(shape)))
    for p, cols in enumerate(idx):
        for j, src in enumerate(cols):
            if src is not None:
                T[np.arange(layer.out_channels) * P + p, src] += Wm[:, j]
    return T


def exact_conv(layer, W, b, x, shape, num):
    idx, _grid = patch_index(layer, shape)
    Wm = [[num(float(v)) for v in row] for row in np.asarray(W).reshape(layer.out_channels, -1)]
    xf = [num(float(v)) for v in np.asarray(x).ravel()]
    z = [[sum((Wm[o][j] * xf[s] for j, s in enumerate(cols) if s is not None), num(0)) + num(float(b[o])) for cols in idx]
         for o in range(layer.out_channels)]
    return z, idx


def exact_conv_back(layer, W, d, idx, size, num):
    """(dx, dW rows, db) for d[o][p]."""
    Wm = [[num(float(v)) for v in row] for row in np.asarray(W).reshape(layer.out_channels, -1)]
    dx = [num(0)] * size
    for o in range(layer.out_channels):
        for p, cols in enumerate(idx):
            for j, s in enumerate(cols):
                if s is not None:
                    dx[s] += d[o][p] * Wm[o][j]
    return dx


def exact_conv_grad(layer, d, idx, xin, num):
    n = layer.patch_size
    gW = [[sum((d[o][p] * xin[cols[j]] for p, cols in enumerate(idx) if cols[j] is not None), num(0)) for j in range(n)]
          for o in range(layer.out_channels)]
    gb = [sum(d[o], num(0)) for o in range(layer.out_channels)]
    return gW, gb


def exact_model_row(model, params, x, y):
    """50-digit per-example gradient of [conv, tanh, (conv, tanh)*, (avgpool2d)?, flatten, dense] + (tempered) softmax CE."""
    num = mp.mpf
    shape = tuple(model.input_shape)
    a = [num(float(v)) for v in np.asarray(x).ravel()]
    tape = []
    for part, ps in zip(model.parts, params, strict=True):
        if isinstance(part, (SpectralConv1d, SpectralConv2d)):
            W, b = ps
            idx, grid = patch_index(part, shape)
            Wm = [[num(float(v)) for v in row] for row in np.asarray(W).reshape(part.out_channels, -1)]
            z = [[sum((Wm[o][j] * a[s] for j, s in enumerate(cols) if s is not None), num(0)) + num(float(b[o]))
                  for cols in idx] for o in range(part.out_channels)]
            tape.append(("conv", part, ps, a, idx, shape))
            a = [v for row in z for v in row]
            shape = (part.out_channels, *grid)
        elif part.describe() == "tanh":
            tape.append(("tanh", None, None, a, None, shape))
            a = [mp.tanh(v) for v in a]
        elif isinstance(part, AvgPool2d):
            k0, k1 = part.kernel_size
            C, H, Wd = shape
            g0, g1 = H // k0, Wd // k1
            out = []
            for c, i, j in itertools.product(range(C), range(g0), range(g1)):
                out.append(sum(a[c * H * Wd + (i * k0 + u) * Wd + j * k1 + v] for u in range(k0) for v in range(k1)) / (k0 * k1))
            tape.append(("pool", part, None, a, (g0, g1), shape))
            a, shape = out, (C, g0, g1)
        elif isinstance(part, Flatten):
            tape.append(("flat", None, None, a, None, shape))
            shape = (len(a),)
        else:
            W, b = ps
            Wm = [[num(float(v)) for v in row] for row in np.asarray(W)]
            tape.append(("dense", part, ps, a, None, shape))
            a = [sum(Wm[o][j] * a[j] for j in range(len(a))) + num(float(b[o])) for o in range(len(Wm))]
            shape = (len(a),)
    tau = mp.mpf(float(getattr(model.loss, "temperature", 1.0)))  # TemperedCrossEntropy: softmax(z / tau) - onehot
    a = [v / tau for v in a]
    m = max(a)
    ex = [mp.exp(v - m) for v in a]
    s = sum(ex)
    d = [e / s for e in ex]
    d[int(y)] -= 1
    rows = []
    for kind, part, ps, ain, extra, shp in reversed(tape):
        if kind == "dense":
            W = [[num(float(v)) for v in row] for row in np.asarray(ps[0])]
            rows.append([d[o] * ain[j] for o in range(len(W)) for j in range(len(ain))] + list(d))
            d = [sum(W[o][j] * d[o] for o in range(len(W))) for j in range(len(ain))]
        elif kind == "flat":
            pass
        elif kind == "tanh":
            d = [dv * (1 - mp.tanh(v) ** 2) for dv, v in zip(d, ain, strict=True)]
        elif kind == "pool":
            C, H, Wd = shp
            g0, g1 = extra
            k0, k1 = part.kernel_size
            nd = [num(0)] * (C * H * Wd)
            for t, (c, i, j) in enumerate(itertools.product(range(C), range(g0), range(g1))):
                for u, v in itertools.product(range(k0), range(k1)):
                    nd[c * H * Wd + (i * k0 + u) * Wd + j * k1 + v] = d[t] / (k0 * k1)
            d = nd
        else:
            P = len(extra)
            dm = [[d[o * P + p] for p in range(P)] for o in range(part.out_channels)]
            gW, gb = exact_conv_grad(part, dm, extra, ain, num)
            rows.append([v for row in gW for v in row] + gb)
            d = exact_conv_back(part, ps[0], dm, extra, len(ain), num)
    return [v for r in reversed(rows) for v in r]


# -- parametrisation ---------------------------------------------------------------------------------------
def dims(part):
    if isinstance(part, (SpectralConv1d, SpectralConv2d)):
        return part.out_channels, part.patch_size
    return part.out_features, part.in_features


def weighted(part):
    return isinstance(part, (SpectralConv1d, SpectralConv2d, SpectralDense, Dense))


def ortho(A):
    Q, R = np.linalg.qr(A)
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def space(model, rank=None):
    bounds = []
    for part in model.parts:
        if weighted(part):
            m, n = dims(part)
            q = min(m, n)
            bounds += [(None, None)] * (m * q + n * q) + [(0.0, 1.0)] * q + [(-part.bias_bound, part.bias_bound)] * m
    return bounds


def params_of(model, z, rank=None):
    params, k = [], 0
    for part, shp in zip(model.parts, model._shapes[:-1], strict=True):
        if not weighted(part):
            params.append(())
            continue
        m, n = dims(part)
        q = min(m, n)
        U = ortho(z[k:k + m * q].reshape(m, q) + 1e-3 * np.eye(m, q))
        k += m * q
        V = ortho(z[k:k + n * q].reshape(n, q) + 1e-3 * np.eye(n, q))
        k += n * q
        s = np.array(z[k:k + q])
        if rank is not None:
            s[rank:] = 0.0
        k += q
        b = z[k:k + m]
        k += m
        W = part.weight_bound * (U * s) @ V.T
        params.append(tuple(part.project_params((W.reshape(part.param_shapes(shp)[0]), b))))
    return params, k


def search_K(model, name, starts, maxiter, seed, rank=None):
    rng = np.random.default_rng(seed)
    box = float(np.max(model.input_bound))
    bounds = space(model) + [(-box, box)] * math.prod(model.input_shape)
    K = model.certified_bound().upper
    best, best_at = 0.0, None
    classes = model.output_features
    for _, label in itertools.product(range(starts), range(classes)):
        z0 = np.array([rng.uniform(lo, hi) if lo is not None else rng.standard_normal() for lo, hi in bounds])
        k0 = len(bounds) - math.prod(model.input_shape)
        z0[k0:] = box * np.sign(rng.standard_normal(len(z0) - k0))  # start at a corner
        y = np.array([label])

        def f(z, y=y):
            ps, k = params_of(model, z, rank)
            return -float(model.per_example_norms(ps, z[k:].reshape(1, *model.input_shape), y)[0])

        res = minimize(f, z0, method="L-BFGS-B", bounds=bounds, options={"maxiter": maxiter})
        for z in (z0, res.x):
            ps, k = params_of(model, z, rank)
            x = np.clip(z[k:], -box, box).reshape(1, *model.input_shape)
            v = float(model.per_example_norms(ps, x, y)[0])
            at = model.certified_bound(ps).upper
            if v > at:
                report(f"{name}: K at given weights", False, f"norm {v!r} > certified_bound(params).upper {at!r}")
            if v > best:
                best, best_at = v, (ps, x, label)
    return K, best, best_at


def models():
    ce, tce = SoftmaxCrossEntropy(), TemperedCrossEntropy(2.0)
    out = []
    # 1x1 kernel, many channels: W_mat 6 x 1 (wide in the sense in*k < out)
    out.append(("1x1 wide 1->6 (1d)", Sequential([SpectralConv1d(1, 6, 1, weight_bound=2.0, bias_bound=0.3), Tanh(), Flatten(),
                                                   SpectralDense(18, 3, 2.0, 0.3)], ce, input_bound=1.0, input_shape=(1, 3))))
    # kernel as large as the input, P = 1
    out.append(("k = input (2d)", Sequential([SpectralConv2d(2, 3, (3, 2), weight_bound=1.5, bias_bound=0.2), Tanh(), Flatten(),
                                              SpectralDense(3, 2, 1.5, 0.2)], ce, input_bound=1.0, input_shape=(2, 3, 2))))
    # stride > kernel: disjoint patches (c = 1); odd sizes
    out.append(("stride 3 > k 2 (2d)", Sequential([SpectralConv2d(1, 2, 2, stride=3, weight_bound=3.0, bias_bound=0.5), Tanh(),
                                                   Flatten(), SpectralDense(8, 3, 3.0, 0.5)], tce, input_bound=1.0,
                                                  input_shape=(1, 5, 5))))
    # kernel larger than the input, padding 2, stride 2, odd shapes
    out.append(("k 5 > L 3, pad 2, stride 2 (1d)", Sequential([SpectralConv1d(2, 3, 5, stride=2, padding=2, weight_bound=2.0,
                                                                              bias_bound=0.25), Tanh(), Flatten(),
                                                               SpectralDense(6, 2, 2.0, 0.25)], ce, input_bound=1.0,
                                                              input_shape=(2, 3))))
    # conv after conv (the transposed operator's sqrt(c) S enters the delta of the first conv), Dense box head
    out.append(("conv -> conv stride 1 then 2 (1d)", Sequential([SpectralConv1d(1, 3, 3, padding=1, weight_bound=2.0, bias_bound=0.2),
                                                                 Tanh(), SpectralConv1d(3, 2, 3, stride=2, padding=1, weight_bound=2.0,
                                                                                        bias_bound=0.2), Tanh(), Flatten(),
                                                                 Dense(6, 2, 1.0, 0.2)], ce, input_bound=1.0,
                                                                input_shape=(1, 5))))
    # 2d conv -> conv with padding, 1x1 wide second conv, avgpool
    out.append(("conv2d -> 1x1 conv 2->5, pool (2d)", Sequential([SpectralConv2d(1, 2, 2, padding=1, weight_bound=2.0, bias_bound=0.2),
                                                                  Tanh(), SpectralConv2d(2, 5, 1, weight_bound=2.0, bias_bound=0.2),
                                                                  Tanh(), AvgPool2d(2), Flatten(), SpectralDense(20, 2, 2.0, 0.2)],
                                                                 tce, input_bound=1.0, input_shape=(1, 4, 4))))
    return out


# -- checks -----------------------------------------------------------------------------------------------
def check_projection():
    rng = np.random.default_rng(0)
    worst = 0
    bad = []
    configs = [(SpectralConv1d, 1, 7, 1), (SpectralConv2d, 1, 9, (1, 1)), (SpectralConv1d, 3, 2, 5), (SpectralConv2d, 2, 3, (3, 2)),
               (SpectralConv2d, 1, 5, (2, 2))]
    n = 0
    for (cls, C, out, k), r, kind, orth, e in itertools.product(configs, [1e-3, 0.7, 3.0, 1e4], ["gauss", "rank1", "dup"],
                                                               [0, 2], [-300, 0, 40]):
        layer = cls(C, out, k, weight_bound=r, bias_bound=0.5, orthogonalize=orth)
        shape = layer.param_shapes(())[0]
        m, q = out, layer.patch_size
        if kind == "gauss":
            Wm = rng.standard_normal((m, q))
        elif kind == "rank1":
            Wm = np.outer(rng.standard_normal(m), rng.standard_normal(q))
        else:  # equal singular values (orthogonal times a constant), just above r
            Wm = ortho(rng.standard_normal((max(m, q), min(m, q))))
            Wm = (Wm if m >= q else Wm.T) * (r * (1 + 1e-15)) * 2.0 ** (e / 40)
        Wm = np.ldexp(Wm, e)
        W2, b2 = layer.project_params((Wm.reshape(shape), np.linspace(-3, 3, out)))
        n += 1
        ok = psd_at_most(np.asarray(W2).reshape(out, -1), r) and np.abs(b2).max() <= 0.5 and np.isfinite(W2).all()
        if not ok:
            bad.append((cls.__name__, C, out, k, r, kind, orth, e))
        # and the certified S at these weights is >= the exact norm
        S = layer.weight_norms((W2, b2))[4]
        if not psd_at_most(np.asarray(W2).reshape(out, -1), S):
            bad.append(("S", cls.__name__, C, out, k, r, kind, orth, e))
        worst += 0
    report("projection lands in the spectral ball (exact PSD) and S >= ||W_mat||_2", not bad,
           f"{n} projections (wide/tall/rank-1/equal singular values, r 1e-3..1e4, exponents -300..40, Bjorck 0/2); bad: {bad[:3]}")


def check_operator_and_c():
    """||T||_2 <= sqrt(c) ||W_mat||_2 for the whole convolution operator T (float SVD, 1e-9 margin), many geometries."""
    rng = np.random.default_rng(1)
    worst, bad, n = 0.0, [], 0
    for nd in (1, 2):
        for _ in range(150):
            C, out = int(rng.integers(1, 4)), int(rng.integers(1, 6))
            k = tuple(int(v) for v in rng.integers(1, 5, nd))
            st = tuple(int(v) for v in rng.integers(1, 5, nd))
            pad = tuple(int(v) for v in rng.integers(0, 3, nd))
            sp = tuple(int(v) for v in rng.integers(1, 8, nd))
            if any(s + 2 * p < kk for s, p, kk in zip(sp, pad, k, strict=True)):
                continue
            cls = SpectralConv1d if nd == 1 else SpectralConv2d
            layer = cls(C, out, k if nd == 2 else k[0], stride=st, padding=pad, weight_bound=1.0)
            shape = (C, *sp)
            for kind in ("orth", "shift"):
                m, q = out, layer.patch_size
                if kind == "orth":
                    Wm = ortho(rng.standard_normal((max(m, q), min(m, q))))
                    Wm = Wm if m >= q else Wm.T
                else:  # all filters equal constant kernels: the worst case for overlapping patches
                    Wm = np.ones((m, q)) / math.sqrt(m * q)
                T = operator_matrix(layer, Wm.reshape(layer.param_shapes(shape)[0]), shape)
                op = np.linalg.norm(T, 2)
                s = np.linalg.norm(Wm, 2)
                _, c, _ = layer._geometry(shape)
                ratio = op / (math.sqrt(c) * s)
                worst = max(worst, ratio)
                n += 1
                if ratio > 1 + 1e-9:
                    bad.append((nd, C, out, k, st, pad, sp, c, op, s))
    report("||conv operator||_2 <= sqrt(c) ||W_mat||_2 (c from _overlap)", not bad,
           f"{n} geometries (strides 1-4, pad 0-2, kernels up to 4 incl. > input); max ratio {worst:.12f}; bad: {bad[:2]}")


def check_layer_maps():
    """Layer maps at spectral extreme points and rank-deficient weights, exact rationals: ||z||, ||dx|| and errors."""
    rng = np.random.default_rng(2)
    layers = [(SpectralConv1d(1, 6, 1, weight_bound=2.0, bias_bound=0.3), (1, 5)),
              (SpectralConv2d(2, 3, (3, 2), weight_bound=1.5, bias_bound=0.2), (2, 3, 2)),
              (SpectralConv2d(1, 2, 2, stride=3, weight_bound=3.0, bias_bound=0.5), (1, 5, 5)),
              (SpectralConv1d(2, 3, 5, stride=2, padding=2, weight_bound=2.0), (2, 3)),
              (SpectralConv2d(3, 7, 1, weight_bound=1.0, bias_bound=0.1), (3, 3, 2)),
              (SpectralConv2d(1, 4, 3, stride=2, padding=1, weight_bound=5.0), (1, 5, 4))]
    bad, n, tight = [], 0, 0.0
    for layer, shape in layers:
        m, q = layer.out_channels, layer.patch_size
        for kind in ("orth", "rank1"):
            if kind == "orth":
                Wm = ortho(rng.standard_normal((max(m, q), min(m, q))))
                Wm = (Wm if m >= q else Wm.T) * layer.weight_bound
            else:
                u, v = rng.standard_normal(m), rng.standard_normal(q)
                Wm = np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v)) * layer.weight_bound
            W, b = layer.project_params((Wm.reshape(layer.param_shapes(shape)[0]), layer.bias_bound * np.sign(rng.standard_normal(m))))
            # inputs: the top right singular vector of the operator scaled (worst case for ||z||), and box corners
            T = operator_matrix(layer, W, shape)
            _, _, Vt = np.linalg.svd(T)
            xs = [Vt[0].reshape(shape), np.sign(Vt[0]).reshape(shape), np.sign(rng.standard_normal(shape))]
            for x in xs:
                x = np.asarray(x, dtype=float)[None]
                xn = math.sqrt(sum(Fr(float(v)) ** 2 for v in x.ravel())) * (1 + 1e-12)
                inp = ActivationBound(shape, xn, float(np.abs(x).max()), 0.0)
                z, cache = layer.forward((W, b), x)
                U, _, _ = np.linalg.svd(T)
                delta = U[:, 0].reshape(z.shape)  # worst case for the transposed operator
                dn = math.sqrt(sum(Fr(float(v)) ** 2 for v in delta.ravel())) * (1 + 1e-12)
                gx = layer.backward((W, b), x, cache, delta)
                gW, gb = layer.per_example_gradients((W, b), x, cache, delta)
                ez, idx = exact_conv(layer, W, b, x[0], shape, Fr)
                dm = [[Fr(float(v)) for v in row] for row in delta.reshape(m, -1)]
                ex = exact_conv_back(layer, W, dm, idx, math.prod(shape), Fr)
                xf = [Fr(float(v)) for v in x.ravel()]
                eW, eb = exact_conv_grad(layer, dm, idx, xf, Fr)
                for ns in (layer.weight_norms((W, b)), layer.weight_norms(None)):
                    out = layer.forward_bound(inp, ns)
                    d = DeltaBound(z.shape[1:], dn, 0.0)
                    back = layer.backward_bound(inp, d, ns)
                    grad = layer.gradient_bound(inp, d, ns)
                    zz = sum(v * v for row in ez for v in row)
                    xx = sum(v * v for v in ex)
                    gg = sum(v * v for row in eW for v in row) + sum(v * v for v in eb)
                    ez_err = math.sqrt(float(sum((Fr(float(a)) - e) ** 2 for a, e in zip(z[0].reshape(m, -1).ravel(),
                                                                                     [v for row in ez for v in row], strict=True))))
                    ex_err = math.sqrt(float(sum((Fr(float(a)) - e) ** 2 for a, e in zip(gx[0].ravel(), ex, strict=True))))
                    row = np.concatenate([gW[0].ravel(), gb[0]])
                    er = [v for r_ in eW for v in r_] + eb
                    eg_err = math.sqrt(float(sum((Fr(float(a)) - e) ** 2 for a, e in zip(row, er, strict=True))))
                    n += 1
                    tight = max(tight, math.sqrt(float(xx)) / back.norm, math.sqrt(float(zz)) / out.norm)
                    checks = [zz <= Fr(out.norm) ** 2, xx <= Fr(back.norm) ** 2, gg <= Fr(grad.squared),
                              ez_err <= out.error, ex_err <= back.error, eg_err <= grad.error,
                              float(np.abs(z).max()) <= out.computed_unit]
                    if not all(checks):
                        bad.append((layer.describe(), kind, checks))
    report("layer maps (||z||, ||dx||, ||g||^2 and their errors) on odd geometries, exact rationals", not bad,
           f"{n} cases; tightest exact/claimed ratio {tight:.6f}; bad: {bad[:2]}")


def check_models():
    for i, (name, model) in enumerate(models()):
        K = model.certified_bound().upper
        e_global = model.certified_bound().rounding
        found = 0.0
        for rank in (None, 1):
            _, best, at = search_K(model, name, starts=1, maxiter=15, seed=10 + i, rank=rank)
            if best > found:
                found, where = best, at
        witnessed = model.witness(model.certified_bound(), samples=256, seed=i).witness_value
        # exact 50-digit norm at the best point found, and e at those weights against the exact row
        ps, x, label = where
        rowx = exact_model_row(model, ps, x[0], label)
        exact_norm = float(mp.sqrt(sum(v * v for v in rowx)))
        grads = model.per_example_gradients(ps, x, np.array([label]))
        row = np.concatenate([g[0].ravel() for part in grads for g in part])
        gap = float(mp.sqrt(sum((mp.mpf(float(c)) - v) ** 2 for c, v in zip(row, rowx, strict=True))))
        e = model.certified_bound(ps).rounding
        ok = exact_norm <= K and max(found, witnessed) <= K and gap <= e <= e_global
        report(f"{name}: K and e", ok, f"K = {K:.6g}, L-BFGS-B max {found:.6g} (ratio {found / K:.4f}), witness {witnessed:.6g}, "
               f"50-digit norm at max {exact_norm:.6g}; |row - exact| = {gap:.3g} <= e(params) = {e:.3g} <= e = {e_global:.3g}")


def check_large_cancelling_e():
    """e at large weights with nearly cancelling taps, inputs at corners and random: 50-digit rows, every label."""
    rng = np.random.default_rng(7)
    worst = 0.0
    bad = []
    for name, model in models():
        for _ in range(2):
            ps = []
            for part, shp in zip(model.parts, model._shapes[:-1], strict=True):
                if not weighted(part):
                    ps.append(())
                    continue
                m, n = dims(part)
                base = rng.standard_normal((m, n))
                base[:, 1:] = base[:, :1] * (-1 + 1e-7 * rng.standard_normal((m, n - 1))) if n > 1 else base[:, 1:]
                ps.append(tuple(part.project_params((base.reshape(part.param_shapes(shp)[0]) * 1e3,
                                                     part.bias_bound * np.sign(rng.standard_normal(m))))))
            e = model.certified_bound(ps).rounding
            x = np.where(rng.random((3, *model.input_shape)) < 0.5, -1.0, 1.0) * rng.choice([1.0, 0.37], (3, *model.input_shape))
            for lab in range(model.output_features):
                y = np.full(3, lab)
                grads = model.per_example_gradients(ps, x, y)
                for i in range(3):
                    row = np.concatenate([g[i].ravel() for part in grads for g in part])
                    ex = exact_model_row(model, ps, x[i], lab)
                    gap = float(mp.sqrt(sum((mp.mpf(float(c)) - v) ** 2 for c, v in zip(row, ex, strict=True))))
                    worst = max(worst, gap / e)
                    if gap > e:
                        bad.append((name, gap, e))
    report("e covers 50-digit rows at projected large nearly-cancelling weights", not bad, f"max gap/e {worst:.3g}; bad: {bad[:2]}")


def main() -> int:
    for check in (check_projection, check_operator_and_c, check_layer_maps, check_models, check_large_cancelling_e):
        try:
            check()
        except Exception as exc:  # a crash is reported, not a silent pass
            report(check.__name__, False, f"raised {type(exc).__name__}: {exc}")
    print(f"\n{len(FAILS)} violated bound(s)" + (f": {FAILS}" if FAILS else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
