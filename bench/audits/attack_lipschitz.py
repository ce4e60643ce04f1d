"""Adversarial audit of the Lipschitz parts: ``spectral_norm_up``, ``SpectralDense``, ``TemperedCrossEntropy``, ``clamp_inputs``.

Run: ``python bench/audits/attack_lipschitz.py`` (about two minutes on 2 cores). Prints each
check with the claimed and the observed number; exits 1 if any claimed bound is violated.

Ground truth is computed here, independently of the library: exact rational arithmetic
(``fractions``) for input norms and 1xN spectral norms, 60-digit mpmath eigenvalues of
``W^T W`` for spectral norms of bounds and of projected weights, 50-digit mpmath softmax and
gradients for the tempered loss and whole models, and scipy L-BFGS-B with restarts for the
per-example gradient norm over inputs in box and ball, labels and weights in the spectral ball.

Finding (a violation at 499a2b8, fixed concurrently by f61b11a, now a regression check):
``Sequential.clamp_inputs`` computed the shrink factor as ``down_array(max(target, 0) / N)``;
when ``target / N`` is 0 (a radius whose ``target`` is 0, ``R / ||x|| < 2^-1075``, or a row
whose squares overflow so that ``N = inf``), ``down(0) = -2^-1074``, so the row was multiplied
by a *negative* subnormal instead of 0: opposite sign, norm up to ``2^-1074 ||x||`` (about
``9e-16 sqrt(d)``), outside a smaller ball. The recursion starts from ``min(||box||, R)``, so
with a small temperature the exact gradient norm of such a clamped input was twice ``K``
(0.7071 vs 1.4142 below). The checks below fail on the old code and hold on f61b11a.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
import warnings
from fractions import Fraction as Fr

import mpmath as mp
import numpy as np

warnings.filterwarnings("ignore")
np.seterr(all="ignore")

from opendp_hybridad.analysis.rounding import norm2_up  # noqa: E402
from opendp_hybridad.nn.layers import Tanh, TemperedCrossEntropy  # noqa: E402
from opendp_hybridad.nn.parts.groupsort import GroupSort  # noqa: E402
from opendp_hybridad.nn.parts.lipschitz import SpectralDense, spectral_norm_up  # noqa: E402
from opendp_hybridad.nn.sequential import Sequential  # noqa: E402

TINY = 2.0**-1074
VIOLATIONS: list[str] = []
HELD: list[str] = []
NOTES: list[str] = []


def violated(severity: str, title: str, detail: str) -> None:
    VIOLATIONS.append(f"[{severity}] {title}")
    print(f"VIOLATION [{severity}] {title}\n    {detail}")


def held(title: str, detail: str = "") -> None:
    HELD.append(title)
    print(f"held: {title}" + (f"  ({detail})" if detail else ""))


def note(title: str, detail: str) -> None:
    NOTES.append(title)
    print(f"note (not a bound violation): {title}\n    {detail}")


def run(check) -> None:
    t0 = time.time()
    try:
        check()
    except Exception:  # an audit crash is reported, not a violation
        print(f"ERROR in {check.__name__}:\n{traceback.format_exc()}")
        VIOLATIONS.append(f"[audit error] {check.__name__}")
    print(f"    [{check.__name__}: {time.time() - t0:.1f}s]")


def exact_sq(a) -> Fr:
    return sum((Fr(float(v)) ** 2 for v in np.asarray(a, dtype=np.float64).ravel()), Fr(0))


def _log2(q: Fr) -> str:
    """``log2`` of a non-negative rational, to the nearest integer ('-inf' for 0): a subnormal square has no float."""
    return "-inf" if q == 0 else str(q.numerator.bit_length() - q.denominator.bit_length())


def smax_mp(W: np.ndarray) -> mp.mpf:
    """The largest singular value of the float matrix ``W`` (60 digits: eigenvalues of the exact Gram matrix)."""
    with mp.workdps(60):
        A = W if W.shape[1] <= W.shape[0] else W.T
        M = mp.matrix([[mp.mpf(float(v)) for v in row] for row in A])
        G = M.T * M
        if G.rows == 1:
            return mp.sqrt(G[0, 0])
        return mp.sqrt(max(max(mp.eigsy(G, eigvals_only=True)), 0))


# -- 1. clamp_inputs: the negative shrink factor (the finding) ------------------------------------------------
def check_clamp_negative_shrink() -> None:
    cases = [  # (d, R, box, x entry): the clamped row must lie in the box and in the ball ||x|| <= R
        (64, 0.0, 1.0, 1.0),  # R = 0: target 0 (499a2b8: every entry -2^-1074)
        (64, 5 * TINY, 1.0, 1.0),  # R below sqrt(d) TINY: target 0 (499a2b8: ||out|| = 8 TINY > 5 TINY)
        (2, 1e-300, 1e100, 1e100),  # R / ||x|| below 2^-1075 (499a2b8: entries -4.9e-224)
        (2, 1e-20, 1e308, 1e308),  # the squares overflow: N = inf (499a2b8: entries -4.9e-16)
    ]
    bad = 0
    for d, R, box, v in cases:
        model = Sequential([SpectralDense(d, 2)], TemperedCrossEntropy(1.0), input_bound=box, input_norm_bound=R)
        out = model.clamp_inputs(np.full((1, d), v))[0]
        sq = exact_sq(out)
        if sq > Fr(R) ** 2 or any(abs(Fr(float(o))) > Fr(box) for o in out) or (out[0] < 0 < v):
            bad += 1
            violated("medium", f"clamp_inputs lands outside the l2 ball or flips the sign (d={d}, R={R:g}, box={box:g}, x_j={v:g})",
                     f"output x_j = {out[0]!r}; exact ||out||^2 ~ 2^{_log2(sq)} vs R^2 ~ 2^{_log2(Fr(R) ** 2)} "
                     "(cause: down_array(0.0) = -2^-1074 as the shrink factor)")
    if not bad:
        held("clamp_inputs where target / N rounds to 0 (the 499a2b8 negative shrink)",
             f"{len(cases)} cases (R = 0, R = 5 TINY with d = 64, R / ||x|| < 2^-1075, overflowing rows): outputs 0")
    model = Sequential([SpectralDense(2, 2)], TemperedCrossEntropy(1.0), input_bound=1e300, input_norm_bound=1e300)
    out = model.clamp_inputs(np.array([[1e160, 0.0]]))[0]
    if out[0] != 1e160:
        note("clamp_inputs zeroes rows inside the ball whose squares overflow (sound, lossy)",
             f"R = box = 1e300: [1e160, 0] (norm 1e160 <= R) -> {out.tolist()}; a power-of-two scaled norm "
             "(rounding.norm2_up_rows) would keep rows up to the float range")


def check_clamp_breaks_k() -> None:
    """The clamped input outside the ball, fed to a model certified for the ball: exact gradient norm vs K."""
    for R, box, tau in [(1e-300, 1e300, 1e-30), (1e-300, 1e100, 1e-230)]:
        model = Sequential([SpectralDense(2, 2, weight_bound=1.0, bias_bound=0.0)], TemperedCrossEntropy(tau),
                           input_bound=box, input_norm_bound=R)
        x = model.clamp_inputs(np.array([[box, box]]))
        W, b = np.array([[1.0, 0.0], [0.0, -1.0]]), np.zeros(2)  # ||W||_2 = 1 exactly: in the declared set
        y = 0
        with mp.workdps(50):
            xs = [mp.mpf(float(v)) for v in x[0]]
            z = [xs[0], -xs[1]]
            v = [a / mp.mpf(tau) for a in z]
            top = max(v)
            e = [mp.exp(a - top) for a in v]
            p = [a / mp.fsum(e) for a in e]
            p[y] -= 1
            grad = mp.sqrt(mp.fsum(a * a for a in p) * (mp.fsum(a * a for a in xs) + 1))
        K = model.certified_bound().upper
        Kp = model.certified_bound([(W, b)]).upper
        computed = float(model.per_example_norms([(W, b)], x, np.array([y]))[0])
        if grad > K or grad > Kp:
            violated("medium", f"K below an exact per-example gradient norm of a clamped input (R={R:g}, box={box:g}, tau={tau:g})",
                     f"clamp_inputs([{box:g}, {box:g}]) = {x[0].tolist()} (||.|| ~ {float(np.abs(x).max()) * 1.414:.2e} > R); "
                     f"weights diag(1, -1), label 0: exact ||g|| = {mp.nstr(grad, 17)} (computed {computed!r}) "
                     f"> K = {K!r} (declared set), K(params) = {Kp!r}: ratio {float(grad / K):.4f}")
        else:
            held(f"K at a clamped input (R={R:g}, box={box:g}, tau={tau:g})",
                 f"exact {mp.nstr(grad, 10)} <= K {K!r}; 499a2b8: 1.4142 > K")


def check_clamp_exact() -> None:
    """Exact (Fractions) membership of clamp_inputs outputs where the shrink factor stays positive."""
    rng = np.random.default_rng(3)
    specials = [0.0, TINY, 3 * TINY, 2.0**-1022, 1e-300, 1e-160, 1e-154, 1.0, 1e154, 1e200, 1e300, np.inf, np.nan]
    checked = bad = 0
    for d in (1, 2, 7, 64, 500):
        for R in (0.0, TINY, 1e-320, 1e-300, 1e-160, 1e-8, 0.5, 1.0, 3.0, 1e150, 1e300):
            for box in (1.0, R, 1e150, "array"):
                boxv = np.abs(rng.choice([0.0, 1e-300, 0.3, 1.0, 1e10], d)) if box == "array" else box
                model = Sequential([SpectralDense(d, 2)], TemperedCrossEntropy(1.0), input_bound=boxv, input_norm_bound=R)
                x = rng.choice(specials, (24, d)) * rng.choice([1.0, -1.0], (24, d))
                x[:8] = rng.standard_normal((8, d)) * rng.choice([1e-320, 1e-160, 1.0, 1e100], (8, 1))
                x[8] = R / math.sqrt(d)
                out = model.clamp_inputs(x)
                bx = [Fr(float(b)) for b in model.input_bound.reshape(-1)]
                for row in out:
                    checked += 1
                    outside_box = any(abs(Fr(float(v))) > b for v, b in zip(row, bx, strict=True)) if np.isfinite(row).all() else True
                    if outside_box or exact_sq(row) > Fr(R) ** 2:
                        bad += 1
                        violated("medium", f"clamp_inputs outside box or ball (d={d}, R={R:g})", f"row {row[:4]}")
    if not bad:
        held("clamp_inputs lands in box and ball (exact rationals)",
             f"{checked} rows: d 1..500, R 0 and 2^-1074..1e300, scalar and array boxes, subnormal/huge/inf/NaN entries")


# -- 2. spectral_norm_up ---------------------------------------------------------------------------------------
def check_spectral_norm_up() -> None:
    rng = np.random.default_rng(1)
    cases = []
    for e in (-1074, -1060, -1022, -540, -300, 0, 300, 507, 509, 511, 1000, 1020):
        for shape in ((1, 1), (1, 7), (7, 1), (5, 3), (3, 5), (6, 6)):
            cases.append((f"gauss 2^{e} {shape}", np.ldexp(rng.standard_normal(shape), e)))
            cases.append((f"rank-1 2^{e} {shape}", np.ldexp(np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1])), e)))
    for _ in range(20):
        shape = tuple(int(s) for s in rng.integers(1, 8, 2))
        cases.append((f"mixed exponents {shape}", rng.standard_normal(shape) * np.ldexp(1.0, rng.integers(-1074, 1000, shape))))
    for k in (1, 3, 2**30):
        cases.append((f"{k} TINY block", np.full((4, 4), k * TINY)))
    for n in (2, 8, 16):
        Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        U, _ = np.linalg.qr(rng.standard_normal((n, n)))
        cases += [(f"orthogonal {n}", Q), (f"orthogonal {n} x1e150", Q * 1e150), (f"orthogonal {n} x1e-160", Q * 1e-160),
                  (f"near-equal singular values {n}", (Q * (1 + np.arange(n) * 1e-15)) @ U.T)]
    worst, where, bad = mp.inf, "", 0
    for name, W in cases:
        truth = smax_mp(W)
        for squarings in (1, 2, 12, 30):
            b = spectral_norm_up(W, squarings)
            if truth > b:
                bad += 1
                violated("high", f"spectral_norm_up below ||W||_2 ({name}, squarings {squarings})", f"{b!r} < {mp.nstr(truth, 20)}")
            elif truth > 0 and mp.mpf(b) / truth < worst:
                worst, where = mp.mpf(b) / truth, f"{name}, squarings {squarings}"
    # 1xN and Nx1 (exact: the norm of one vector), large N
    slack = Fr(10)
    for N in (10, 1000, 100000):
        for e in (-1074, -540, 0, 500):
            v = np.ldexp(rng.standard_normal(N), e)
            exact = exact_sq(v)
            for W in (v[None, :], v[:, None]):
                b = spectral_norm_up(W)
                if math.isfinite(b) and Fr(b) ** 2 < exact:
                    bad += 1
                    violated("high", f"spectral_norm_up below ||v|| ({W.shape}, 2^{e})", f"{b!r}")
                elif exact > 0 and math.isfinite(b):
                    slack = min(slack, Fr(b) ** 2 / exact - 1)
    if not bad:
        held("spectral_norm_up >= ||W||_2 (60-digit eigenvalues; exact for 1xN, Nx1)",
             f"{len(cases)} matrices x squarings 1/2/12/30 (entries 2^-1074..2^1020, rank-1, orthogonal, near-equal "
             f"singular values, mixed exponents), N up to 1e5; tightest bound/true = 1 + {mp.nstr(worst - 1, 3)} ({where}); "
             f"1xN: b^2/||v||^2 - 1 >= {float(slack):.2e}")


# -- 3. the projection ----------------------------------------------------------------------------------------
def check_projection() -> None:
    rng = np.random.default_rng(2)
    worst, where, bad, count = mp.inf, "", 0, 0
    for r in (1.0, 3.0, 1e-5, 1e-300, 7 * TINY, 1000 * TINY, 2.0**-1022, 1e300):
        for shape in ((1, 1), (1, 5), (5, 1), (3, 4), (4, 4)):
            for kind in ("rank-1", "gauss", "orthogonal"):
                for scale in (1 + 2**-52, 1.0000001, 2.0, 1e10):
                    if kind == "rank-1":
                        W = np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1]))
                    elif kind == "gauss":
                        W = rng.standard_normal(shape)
                    else:
                        Q, _ = np.linalg.qr(rng.standard_normal((max(shape), min(shape))))
                        W = Q if shape[0] >= shape[1] else Q.T
                    W = np.nan_to_num(W / float(smax_mp(W)) * r * scale, posinf=1.7e308, neginf=-1.7e308)
                    for orth in (0, 2):
                        layer = SpectralDense(shape[1], shape[0], weight_bound=r, bias_bound=1.0, orthogonalize=orth)
                        Wp, _ = layer.apply_step(W, np.zeros(shape[0]), np.zeros_like(W), np.zeros(shape[0]), 1.0, True)
                        s = smax_mp(Wp)
                        count += 1
                        if s > r:
                            bad += 1
                            violated("high", f"projection outside the spectral ball ({kind} {shape}, r={r:g}, orth={orth})",
                                     f"||W'||_2 = {mp.nstr(s, 20)} > {r!r}")
                        elif 1 - s / mp.mpf(r) < worst:
                            worst, where = 1 - s / mp.mpf(r), f"{kind} {shape} r={r:g} x{scale:g} orth={orth}"
    if not bad:
        held("SpectralDense.apply_step/project lands in ||W||_2 <= r (60 digits)",
             f"{count} projections, r from 7 TINY to 1e300, Björck 0/2; closest 1 - ||W'||/r = {mp.nstr(worst, 3)} ({where})")


# -- 4. the tempered loss ---------------------------------------------------------------------------------------
def check_tempered_loss() -> None:
    rng = np.random.default_rng(5)
    worst_err = worst_norm = 0.0
    bad = count = 0
    for tau in (TINY, 1e-300, 1e-10, 1e-3, 1.0, 1e5, 1e300, 1.7e308):
        loss = TemperedCrossEntropy(tau)
        for M in (TINY, 1e-300, 1e-3, 1.0, 300.0, 1e15, 1e300, 1.7e308):
            for m in (1, 2, 3, 10, 100):
                db, de = loss.delta_norm_bound(m, M, 1.0), loss.delta_error(m, M, 1.0)
                Z = M * rng.choice([-1.0, 1.0, 0.0, 0.5, -0.999999], (8, m))
                Z[0] = -M
                Z[0, 0] = M
                Z[1] = M
                Z[1, 0] = -M
                ys = rng.integers(0, m, 8)
                ys[0], ys[1] = 1 % m, 0
                D = loss.delta(Z, ys)
                with mp.workdps(50):
                    for i in range(8):
                        v = [mp.mpf(float(a)) / mp.mpf(tau) for a in Z[i]]
                        top = max(v)
                        e = [mp.exp(a - top) for a in v]
                        p = [a / mp.fsum(e) for a in e]
                        p[int(ys[i])] -= 1
                        norm = mp.sqrt(mp.fsum(a * a for a in p))
                        count += 1
                        if norm > db:
                            bad += 1
                            violated("high", f"tempered delta norm above its bound (tau={tau:g}, M={M:g}, m={m})", f"{norm} > {db}")
                        if db > 0:
                            worst_norm = max(worst_norm, float(norm / db))
                        if not np.isfinite(D[i]).all():
                            if math.isfinite(de):
                                bad += 1
                                violated("high", f"non-finite tempered delta with a finite error bound (tau={tau:g}, M={M:g})", f"{de}")
                            continue
                        err = mp.sqrt(mp.fsum((mp.mpf(float(D[i, j])) - p[j]) ** 2 for j in range(m)))
                        if err > de:
                            bad += 1
                            violated("high", f"tempered delta error above delta_error (tau={tau:g}, M={M:g}, m={m})", f"{err} > {de}")
                        if de > 0 and math.isfinite(de):
                            worst_err = max(worst_err, float(err / de))
    if not bad:
        held("TemperedCrossEntropy delta_norm_bound and delta_error (50-digit mpmath)",
             f"{count} logit vectors: tau 2^-1074..1.7e308, |z| 2^-1074..1.7e308, m 1..100; "
             f"max norm/bound {worst_norm:.16f}, max error/bound {worst_err:.3g}")


# -- 5. composed K (adversarial search) and e (50-digit rows) ---------------------------------------------------
def _model(cfg):
    n, h, m, r1, r2, bb, box, R, tau, act = cfg
    return Sequential([SpectralDense(n, h, weight_bound=r1, bias_bound=bb), Tanh() if act == "tanh" else GroupSort(2),
                       SpectralDense(h, m, weight_bound=r2, bias_bound=bb)], TemperedCrossEntropy(tau),
                      input_bound=box, input_norm_bound=R)


def _point(theta, cfg):
    n, h, m, r1, r2, bb, box, R = cfg[:8]
    parts, i = [], 0
    for rows, cols, r in ((h, n, r1), (m, h, r2)):
        M = theta[i:i + rows * cols].reshape(rows, cols)
        i += rows * cols
        s = np.linalg.svd(M, compute_uv=False)[0]
        W = M * (r / s) * (1 - 1e-12) if s > 0 else M  # on the sphere of the spectral ball (inside by 1e-12)
        parts.append((W, bb * np.tanh(theta[i:i + rows])))
        i += rows
    x = box * np.tanh(theta[i:i + n])
    nx = np.linalg.norm(x)
    if R is not None and nx > R:
        x = x * (R / nx) * (1 - 1e-12)
    return [parts[0], (), parts[1]], x


def check_composed_k() -> None:
    from scipy.optimize import minimize

    cfgs = [(3, 4, 3, 1.0, 1.0, 0.5, 1.0, 1.0, tau, act) for tau in (1e-3, 1.0, 1e3) for act in ("tanh", "groupsort")]
    cfgs += [(2, 4, 2, 3.0, 0.5, 0.0, 2.0, 0.3, 0.1, "groupsort"), (4, 2, 5, 0.7, 2.0, 1.0, 1.0, None, 10.0, "tanh")]
    rng = np.random.default_rng(0)
    report, bad = [], 0
    for cfg in cfgs:
        model = _model(cfg)
        n, h, m = cfg[:3]
        dim = n * h + h + h * m + m + n
        K = model.certified_bound().upper
        best = 0.0
        for restart in range(3):
            y = np.array([restart % m])

            def f(theta, y=y, model=model, cfg=cfg):
                params, x = _point(theta, cfg)
                g = model.per_example_norms(params, x[None, :], y)[0]
                return -g if np.isfinite(g) else 0.0

            res = minimize(f, rng.standard_normal(dim) * 2, method="L-BFGS-B", options={"maxiter": 150})
            best = max(best, -res.fun)
        if best > K:
            bad += 1
            violated("high", f"K below a searched gradient norm {cfg}", f"{best} > {K}")
        report.append(f"{cfg[-2]:g}/{cfg[-1]}: K/found {K / best:.4f}")
    if not bad:
        held("certified_bound(None).upper >= searched per-example gradient norms (L-BFGS-B, 3 restarts)", "; ".join(report))


def check_composed_rounding() -> None:
    rng = np.random.default_rng(7)
    worst, bad, count = 0.0, 0, 0
    for act in ("tanh", "groupsort"):
        for tau in (1e-300, 1e-3, 1.0, 1e100, 1e300):
            for r1, r2, bb, box, R in ((1.0, 1.0, 0.5, 1.0, 1.0), (1e100, 1e-100, 1e50, 1e10, 1e10), (1e-150, 1e150, 1e-160, 1.0, None)):
                cfg = (3, 4, 3, r1, r2, bb, box, R, tau, act)
                model = _model(cfg)
                declared = model.certified_bound()
                for trial in range(4):
                    params = model.project([tuple(p.witness_params(rng, s)) if i != 1 else ()
                                            for i, (p, s) in enumerate(zip(model.parts, model._shapes[:-1], strict=True))])
                    x = model.clamp_inputs(box * rng.choice([-1.0, 1.0], (1, 3)) * rng.random((1, 3)) ** 0.1)
                    y = trial % 3
                    g = model.per_example_gradients(params, x, np.array([y]))
                    computed = np.concatenate([g[0][0].ravel(), g[0][1].ravel(), g[2][0].ravel(), g[2][1].ravel()])
                    exact = _exact_row(params, x[0], y, tau, act)
                    with mp.workdps(50):
                        err = mp.sqrt(mp.fsum((mp.mpf(float(c)) - e) ** 2 for c, e in zip(computed, exact, strict=True)))
                        norm = mp.sqrt(mp.fsum(e * e for e in exact))
                    given = model.certified_bound(params)
                    count += 1
                    for tag, b in (("params", given), ("declared", declared)):
                        if norm > b.upper or err > b.rounding:
                            bad += 1
                            violated("high", f"K or e violated ({tag}) {cfg}", f"|g| {norm} vs {b.upper}; err {err} vs {b.rounding}")
                    if 0 < given.rounding < math.inf:
                        worst = max(worst, float(err / given.rounding))
    if not bad:
        held("K and e against 50-digit per-example gradients (SpectralDense-Tanh/GroupSort-SpectralDense-tempered CE)",
             f"{count} points, tau 1e-300..1e300, radii 1e-150..1e150; max err / e = {worst:.3g}")


def _exact_row(params, x, y, tau, act):
    (W1, b1), _, (W2, b2) = params
    h, n = W1.shape
    m = W2.shape[0]
    with mp.workdps(50):
        xs = [mp.mpf(float(v)) for v in x]
        z1 = [mp.fsum(mp.mpf(float(W1[i, j])) * xs[j] for j in range(n)) + mp.mpf(float(b1[i])) for i in range(h)]
        if act == "tanh":
            a1 = [mp.tanh(v) for v in z1]
            slope = [1 - mp.tanh(v) ** 2 for v in z1]
        else:
            a1, perm = [], []
            for k in range(0, h, 2):
                pair = [k, k + 1] if z1[k] <= z1[k + 1] else [k + 1, k]
                perm += pair
                a1 += [z1[pair[0]], z1[pair[1]]]
        z2 = [mp.fsum(mp.mpf(float(W2[i, j])) * a1[j] for j in range(h)) + mp.mpf(float(b2[i])) for i in range(m)]
        v = [a / mp.mpf(tau) for a in z2]
        top = max(v)
        e = [mp.exp(a - top) for a in v]
        d2 = [a / mp.fsum(e) for a in e]
        d2[y] -= 1
        da1 = [mp.fsum(mp.mpf(float(W2[i, j])) * d2[i] for i in range(m)) for j in range(h)]
        if act == "tanh":
            d1 = [da1[j] * slope[j] for j in range(h)]
        else:
            d1 = [mp.mpf(0)] * h
            for pos, src in enumerate(perm):
                d1[src] = da1[pos]
        return ([d1[i] * xs[j] for i in range(h) for j in range(n)] + d1
                + [d2[i] * a1[j] for i in range(m) for j in range(h)] + d2)


# -- 6. notes (fail-closed crashes, looseness) ---------------------------------------------------------------------
def check_notes() -> None:
    try:
        Sequential([SpectralDense(7, 2)], TemperedCrossEntropy(1.0), input_bound=1e308)
        held("a box with diagonal above the float range is declared")
    except OverflowError as exc:
        note("Sequential(input_bound=1e308, 7 inputs) raises OverflowError, not a DeclarationError",
             f"norm2_up: math.ldexp raises ({exc}) where its docstring and code expect inf; norm2_up([1.7e308] * 2) -> "
             f"{_safe(lambda: norm2_up([1.7e308, 1.7e308]))} (fail-closed: a crash, never a smaller bound)")
    W = np.ldexp(np.outer(np.ones(2000), np.ones(64)), -600)
    b = spectral_norm_up(W)
    note("spectral_norm_up is loose where squares underflow (sound)",
         f"2000x64 all-ones times 2^-600: ||W||_2 = {math.sqrt(2000 * 64) * 2.0**-600:.3e}, bound {b:.3e} "
         "(the Frobenius fallback's sqrt(2 n TINY)): a projection onto a radius below ~1e-159 zeroes such weights")


def _safe(fn):
    try:
        return repr(fn())
    except Exception as exc:  # the note reports what is raised
        return f"{type(exc).__name__}: {exc}"


def main() -> int:
    t0 = time.time()
    for check in (check_clamp_negative_shrink, check_clamp_breaks_k, check_clamp_exact, check_spectral_norm_up,
                  check_projection, check_tempered_loss, check_composed_k, check_composed_rounding, check_notes):
        run(check)
    print(f"\n{len(VIOLATIONS)} violation(s), {len(HELD)} check(s) held, {len(NOTES)} note(s) in {time.time() - t0:.0f}s")
    for v in VIOLATIONS:
        print("  " + v)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
