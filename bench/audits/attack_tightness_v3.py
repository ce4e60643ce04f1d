"""Adversarial audit of issue 14's tightness round (vertex enumeration, softmax rewrites, tape derivatives, budgets), v3.

Run: ``python bench/audits/attack_tightness_v3.py [--quick]`` (about 3 minutes on 2 cores shared with a benchmark). Prints each check;
exits 1 if a certified K, partial bound or range enclosure is below its truth, a witness exceeds its bound,
or a certificate crashes (a refusal, UnboundedError, is not a violation: no bound is claimed).

Truths never use the library's analysis:

* polynomials of degree <= 2 (including ones that only simplify to degree 2, e.g. ``(x+y)**2 - x**2``):
  the gradient from sympy evaluated in ``fractions`` at the box's vertices (the exact maximum of the convex
  ``||grad f||_p``; for d > 10 the 64 best float candidates re-evaluated exactly, which can only lower the
  truth), d up to 15 (the vertex path's 14-side threshold), mixed scales 1e-200..1e200, degenerate sides,
  boxes at +-1e308; ranges checked against exact values at vertices and random points;
* softmax-like expressions (shared shares, ``c P - c P^2`` with ``c < 0``, nested softmax, the same
  exponential twice in a numerator, ``exp(k w)/S^m`` with k above and below m, denominators with negative
  coefficients and constants, exp of large positive/negative arguments) and tanh/sigmoid/softplus networks
  (>= 40 tape nodes, extreme weights, shared hidden units, activations under powers): sympy's gradient in
  mpmath at 50 digits at vertices, random points and the ends of a float compass search from the best
  candidates;
* a 30-second random sweep of compositions of exp, tanh, sigmoid, softplus, softmax shares and ``c P - c P^2``
  pairs (593 functions in a 7-minute run when written: 0 violations);
* time budgets 0, -1 and 1e-4 s to 0.05 s on the same networks (a budget expiring mid-refinement must still
  return a bound at least the truth).
"""

# ruff: noqa: B023  (every lambda is called at once, inside its loop iteration, by guarded())
from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from fractions import Fraction

import mpmath
import numpy as np
import sympy as sp

import opendp_hybridad as hd

QUICK = "--quick" in sys.argv
VIOLATIONS: list[str] = []
_MP = {"sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)), "softplus": lambda v: mpmath.log1p(mpmath.exp(v))}
_NP = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "softplus": lambda v: np.logaddexp(0, v)}


def flag(label: str, text: str) -> None:
    VIOLATIONS.append(label)
    print(f"[VIOLATED] {label}: {text}")


def guarded(label: str, thunk):
    try:
        return thunk()
    except hd.UnboundedError as err:
        print(f"[refused] {label}: {str(err)[:100]}")
    except Exception as err:  # an audit reports every crash
        flag(label, f"crashed {type(err).__name__}: {str(err)[:200]}")
    return None


def norm_of(g, p):
    if p == 2.0:
        return mpmath.sqrt(mpmath.fsum(c * c for c in g))
    if p == 1.0:
        return mpmath.fsum(abs(c) for c in g)
    return max(abs(c) for c in g)


# -------------------------------------------------------------------------------------------- truths
class Truth:
    """Sampled 50-digit truths of ||grad f||_p, |df/dx_j| and f over the box."""

    def __init__(self, fn, rng, samples=200, search=6):
        self.fn = fn
        syms = list(fn.symbols)
        self.n = len(syms)
        grads = list(fn.gradient().values())
        self.mp_g = sp.lambdify(syms, grads, modules=[_MP, "mpmath"])
        self.mp_f = sp.lambdify(syms, fn.expr, modules=[_MP, "mpmath"])
        self.np_g = sp.lambdify(syms, grads, modules=[_NP, "numpy"])
        b = fn.schema.bounds()
        self.lo = np.array([t[0] for t in b], float)
        self.hi = np.array([t[1] for t in b], float)
        n = self.n
        corners = (list(itertools.product((0, 1), repeat=n)) if n <= 7
                   else [tuple(rng.integers(0, 2, n)) for _ in range(128)])
        pts = [self.lo + np.array(c) * (self.hi - self.lo) for c in corners]
        pts += [self.lo + rng.random(n) * (self.hi - self.lo) for _ in range(samples)]
        # edges: one coordinate free, the rest at a vertex
        for _ in range(samples // 4):
            c = self.lo + rng.integers(0, 2, n) * (self.hi - self.lo)
            k = int(rng.integers(0, n))
            c[k] = self.lo[k] + rng.random() * (self.hi[k] - self.lo[k])
            pts.append(c)
        self.pts = [np.clip(p, self.lo, self.hi) for p in pts]
        self.search = search
        self._cache = {}

    def _fnorm(self, p, comp, x):
        with np.errstate(all="ignore"):
            g = np.array([float(v) for v in np.broadcast_to(np.array(self.np_g(*x), dtype=float), (self.n,))])
        if comp is not None:
            return abs(g[comp])
        return float(np.linalg.norm(g, {2.0: 2, 1.0: 1, math.inf: np.inf}[p]))

    def _mp(self, p, comp, x):
        with mpmath.workdps(50):
            try:
                g = self.mp_g(*[mpmath.mpf(float(t)) for t in x])
            except (ZeroDivisionError, ValueError, OverflowError):
                return None
            if not isinstance(g, (list, tuple)):
                g = [g]
            return abs(g[comp]) if comp is not None else norm_of(g, p)

    def grad(self, p=2.0, comp=None):
        key = (p, comp)
        if key in self._cache:
            return self._cache[key]
        scored = []
        for x in self.pts:
            v = self._fnorm(p, comp, x)
            scored.append((v if math.isfinite(v) else -1.0, x))
        scored.sort(key=lambda t: -t[0])
        cands = [x for _, x in scored[:self.search]]
        # compass search in floats from the best candidates (truth candidates only; valued at 50 digits)
        ends = []
        for x0 in cands:
            x = x0.copy()
            fx = self._fnorm(p, comp, x)
            step = 0.25 * (self.hi - self.lo)
            for _ in range(40):
                moved = False
                for k in range(self.n):
                    for s in (1, -1):
                        y = x.copy()
                        y[k] = min(max(y[k] + s * step[k], self.lo[k]), self.hi[k])
                        fy = self._fnorm(p, comp, y)
                        if math.isfinite(fy) and fy > fx:
                            x, fx, moved = y, fy, True
                if not moved:
                    step = step / 2
            ends.append(x)
        best = mpmath.mpf(0)
        for x in [x for _, x in scored[:3 * self.search]] + ends:
            v = self._mp(p, comp, x)
            if v is not None and v > best:
                best = v
        self._cache[key] = best
        return best

    def values(self):
        out = []
        with mpmath.workdps(50):
            for x in self.pts[:150]:
                with contextlib.suppress(ZeroDivisionError, ValueError, OverflowError):
                    out.append((mpmath.mpf(self.mp_f(*[mpmath.mpf(float(t)) for t in x])), x))
        return out


def check_all(label, fn, rng, norms=(2.0, 1.0, math.inf), budget=0.5, partials=True, rng_check=True, samples=200):
    truth = Truth(fn, rng, samples=samples)
    for p in norms:
        cert = guarded(f"{label} K{p}", lambda: fn.lipschitz(norm=p, time_budget=budget))
        if cert is None:
            continue
        t = truth.grad(p)
        ok = t <= cert.upper
        wit = cert.witness.value
        wit_ok = wit is None or not math.isfinite(wit) or wit <= cert.upper
        # the witness is a proven lower bound at its point: it must not exceed the truth there either
        wpt = np.array([cert.witness.point[nm] for nm in fn.names], float)
        if not ((wpt >= truth.lo) & (wpt <= truth.hi)).all():
            flag(f"{label} K{p} witness", f"witness point {wpt.tolist()} outside the box")
        tw = truth._mp(p, None, wpt)
        wt_ok = tw is None or wit is None or not math.isfinite(wit) or wit <= tw * (1 + mpmath.mpf(2) ** -40) + mpmath.mpf(10) ** -300
        if not (ok and wit_ok and wt_ok):
            flag(f"{label} K{p}", f"certified {cert.upper!r}, truth {float(t)!r}, witness {wit!r} (true value there "
                 f"{float(tw) if tw is not None else None!r})")
        else:
            r = float(cert.upper / t) if t > 0 else float("nan")
            print(f"[held] {label} K{p}: {cert.upper:.10g} truth {float(t):.10g} ratio {r:.6f}")
    if partials:
        pb = guarded(f"{label} partials", lambda: fn.partial_bounds(time_budget=budget / 2))
        if pb is not None:
            for j, nm in enumerate(fn.names):
                t = truth.grad(math.inf, j)
                c = pb[nm]
                if t > c.upper or (c.witness.value is not None and math.isfinite(c.witness.value) and c.witness.value > c.upper):
                    flag(f"{label} d/d{nm}", f"certified {c.upper!r}, truth {float(t)!r}, witness {c.witness.value!r}")
            print(f"[held?] {label} partials checked")
    if rng_check:
        rc = guarded(f"{label} range", lambda: fn.range(time_budget=budget))
        if rc is not None:
            vals = truth.values()
            bad = [(float(v), x) for v, x in vals if v < rc.lower or v > rc.upper]
            if bad or rc.lower > rc.upper:
                flag(f"{label} range", f"[{rc.lower!r}, {rc.upper!r}] misses f={bad[0][0]!r} at {bad[0][1].tolist()}"
                     if bad else f"empty [{rc.lower}, {rc.upper}]")
            else:
                print(f"[held] {label} range [{rc.lower:.6g}, {rc.upper:.6g}] over {len(vals)} points")


# -------------------------------------------------------------------------------------------- quadratics
def exact_vertex_truth(fn, norm, comp=None, exact_limit=10):
    syms = list(fn.symbols)
    grads = list(fn.gradient().values())
    poly_grads = [sp.Poly(sp.nsimplify(g, rational=True) if g.atoms(sp.Float) else g, *syms) for g in grads]
    # affine: g_j = sum_k A_jk x_k + b_j, read exactly
    A, b = [], []
    for pg in poly_grads:
        row = [Fraction(0)] * len(syms)
        bj = Fraction(0)
        for monom, c in pg.terms():
            c = Fraction(int(sp.Rational(c).p), int(sp.Rational(c).q))
            if sum(monom) == 0:
                bj += c
            else:
                row[monom.index(1)] += c
        A.append(row)
        b.append(bj)
    bounds = fn.schema.bounds()
    ends = [sorted({Fraction(lo), Fraction(hi)}) for lo, hi in bounds]
    n = len(syms)
    rows = range(n) if comp is None else [comp]
    if comp is not None or norm == math.inf:
        best = Fraction(0)
        for j in rows:
            up = b[j] + sum(max(A[j][k] * e for e in ends[k]) for k in range(n))
            dn = b[j] + sum(min(A[j][k] * e for e in ends[k]) for k in range(n))
            best = max(best, up, -dn)
        return best
    moving = [k for k in range(n) if len(ends[k]) == 2]
    verts = itertools.product(*[ends[k] for k in range(n)])
    if len(moving) > exact_limit:  # float screen, exact on the best
        Af = np.array([[float(a) for a in r] for r in A])
        bf = np.array([float(v) for v in b])
        cand = []
        for bits in itertools.product((0, 1), repeat=len(moving)):
            v = [e[0] for e in ends]
            for s, k in zip(bits, moving, strict=False):
                v[k] = ends[k][s]
            cand.append(v)
        V = np.array([[float(t) for t in v] for v in cand])
        with np.errstate(all="ignore"):
            G = V @ Af.T + bf
            sc = np.linalg.norm(G, {2.0: 2, 1.0: 1}[norm], axis=1)
        order = np.argsort(-sc)[:64]
        verts = [cand[i] for i in order]
    best = Fraction(0)
    for v in verts:
        g = [b[j] + sum(A[j][k] * v[k] for k in range(n) if A[j][k]) for j in range(n)]
        best = max(best, sum(c * c for c in g) if norm == 2.0 else sum(abs(c) for c in g))
    return best


def _show(t: Fraction, root: bool) -> float:
    """A float for printing (never compared): inf beyond the float range."""
    v = mpmath.mpf(t.numerator) / t.denominator
    v = mpmath.sqrt(v) if root else v
    return float(v) if abs(v) < 1.7e308 else math.inf


def check_quadratic(label, fn, rng, range_points=60):
    for p in (2.0, 1.0, math.inf):
        cert = guarded(f"{label} K{p}", lambda: fn.lipschitz(norm=p, time_budget=0.5))
        if cert is None:
            continue
        t = exact_vertex_truth(fn, p)
        up = Fraction(cert.upper)
        ok = (up * up >= t) if p == 2.0 else up >= t
        wv = cert.witness.value
        if wv is not None and math.isfinite(wv) and wv > cert.upper:
            ok = False
        shown = _show(t, p == 2.0)
        if not ok:
            flag(f"{label} K{p}", f"certified {cert.upper!r}, exact {shown!r}, witness {wv!r}")
        else:
            print(f"[held] {label} K{p}: {cert.upper:.12g} exact {shown:.12g} ({cert.boxes} boxes)")
    pb = guarded(f"{label} partials", lambda: fn.partial_bounds(time_budget=0.3))
    if pb is not None:
        for j, nm in enumerate(fn.names):
            t = exact_vertex_truth(fn, math.inf, comp=j)
            if Fraction(pb[nm].upper) < t:
                flag(f"{label} d/d{nm}", f"certified {pb[nm].upper!r}, exact {_show(t, False)!r}")
        print(f"[held?] {label} partials checked")
    rc = guarded(f"{label} range", lambda: fn.range(time_budget=0.5))
    if rc is not None:
        syms = list(fn.symbols)
        e = fn.expr
        e = e.xreplace({f: sp.Rational(f) for f in e.atoms(sp.Float)})
        bounds = fn.schema.bounds()
        len(syms)
        pts = []
        for _ in range(range_points):
            if rng.random() < 0.5:
                pts.append([lo if rng.random() < 0.5 else hi for lo, hi in bounds])
            else:
                pts.append([lo + rng.random() * (hi - lo) for lo, hi in bounds])
        lo_c, hi_c = Fraction(rc.lower), Fraction(rc.upper)
        for x in pts:
            v = e.xreplace({s: sp.Rational(float(t)) for s, t in zip(syms, x, strict=False)})
            v = Fraction(int(sp.Rational(v).p), int(sp.Rational(v).q))
            if not lo_c <= v <= hi_c:
                flag(f"{label} range", f"[{rc.lower!r}, {rc.upper!r}] misses exact f={_show(v, False)!r} at {x}")
                break
        else:
            print(f"[held] {label} range [{rc.lower:.6g}, {rc.upper:.6g}]")


def quadratics(rng):
    # simplifies-to-quadratic forms and degenerate sides
    s = hd.Schema(x=hd.Field(-2.5, 3.1), y=hd.Field(0.7, 0.7), z=hd.Field(-1e-3, 2e-3))
    x, y, z = s.symbols()
    forms = [(x + y) ** 2 - x ** 2, x * (y + 1) - x * y, (x + y + z) ** 2 - (x - y - z) ** 2, (x - z) * (x + z) - x ** 2,
             ((x + 1) ** 3 - x ** 3) / 3, x * y * z - x * y * z + 7 * z ** 2, (2 * x + 3 * y) ** 2 - 4 * x * (x + 3 * y),
             sp.Rational(1, 3) * x ** 2 - sp.Float(1 / 3) * x ** 2 + z * 1e-17]
    for k, e in enumerate(forms):
        check_quadratic(f"quad-form{k} {e}", s.function(e), rng)
    # mixed scales / cancellations / edges of the float range
    for case, (scale_a, scale_b, width) in enumerate([(1e200, 1e-200, 1.0), (1e-200, 1e200, 1e-100), (1.0, 1.0, 1e300),
                                                        (1e-160, 1e-160, 1e150), (3.0, -3.0, 1e-300), (1e150, 1e150, 1e-150)]):
        n = 4
        box = {f"x{i}": ((-width, width) if i % 2 else (width / 3, width)) for i in range(n)}
        if case == 2:
            box["x0"] = (-1.7976931348623157e308, -1e308)
        sch = hd.Schema(box)
        xs = sch.symbols()
        expr = sum(sp.Float(scale_a * float(rng.uniform(-3, 3))) * xs[i] * xs[j] for i in range(n) for j in range(i, n))
        expr += sum(sp.Float(scale_b * float(rng.uniform(-3, 3))) * v for v in xs)
        # cancellation: a huge term and its negative, leaving a tiny quadratic
        expr += sp.Float(1e100) * xs[0] * xs[1] - sp.Float(1e100) * xs[0] * xs[1]
        check_quadratic(f"quad-scale{case}", sch.function(expr), rng)
    # 13-15 fields around the vertex path's threshold (14 sides)
    for n in ([13, 14, 15] if not QUICK else [14, 15]):
        box = {f"x{i}": (float(rng.uniform(-3, 0)), float(rng.uniform(0.1, 3))) for i in range(n)}
        box["x0"] = (0.5, 0.5)  # one degenerate side: 14 sides for n = 15
        sch = hd.Schema(box)
        xs = sch.symbols()
        expr = sum(sp.Rational(int(rng.integers(-9, 10)), int(rng.integers(1, 7))) * xs[i] * xs[(i + 1) % n] for i in range(n))
        expr += sum(sp.Rational(int(rng.integers(-5, 6)), 2) * v ** 2 for v in xs[::3])
        expr += sum(sp.Rational(int(rng.integers(-9, 10)), 7) * v for v in xs)
        check_quadratic(f"quad-d{n}", sch.function(expr), rng, range_points=30)
    # indefinite: range max interior (range only through point checks)
    s2 = hd.Schema(u=hd.Field(-1, 1), v=hd.Field(-1, 1))
    u, v = s2.symbols()
    check_quadratic("quad-saddle", s2.function(3 * u - 3 * u ** 2 + v - 7 * v ** 2 + u * v), rng)


# -------------------------------------------------------------------------------------------- softmaxes
def softmaxes(rng):
    cases = []
    for shift, spread in [(0.0, 1.0), (0.0, 6.0), (-300.0, 2.0), (300.0, 2.0), (-720.0, 3.0)]:
        sch = hd.Schema({f"v{i}": (shift - spread * float(rng.uniform(0.2, 1)), shift + spread * float(rng.uniform(0.2, 1)))
                         for i in range(3)})
        v0, v1, v2 = sch.symbols()
        S = sp.exp(v0) + sp.exp(v1) + sp.exp(v2)
        P = sp.exp(v0) / S
        tag = f"shift{shift:g}/{spread:g}"
        cases += [
            (f"share {tag}", sch, P),
            (f"-3P+3P^2 {tag}", sch, -3 * P + 3 * P ** 2 + v1 / 10),
            (f"2P-2P^2 {tag}", sch, 2 * sp.exp(v0) / S - 2 * sp.exp(2 * v0) / S ** 2),
            (f"exp(v0)^2/S {tag}", sch, sp.exp(v0) * sp.exp(v0) / S),
            (f"exp(3v0)/S^2 {tag}", sch, sp.exp(3 * v0) / S ** 2),
            (f"exp(v0)/S^2 {tag}", sch, sp.exp(v0) / S ** 2),
            (f"exp(v0+v1)/S^2 {tag}", sch, sp.exp(v0) * sp.exp(v1) / S ** 2),
            (f"shared {tag}", sch, P + P ** 2 - v2 * P + sp.exp(v1) / S),
            (f"lse {tag}", sch, sp.log(S)),
        ]
    sch = hd.Schema(v0=(-1.0, 2.0), v1=(-2.0, 0.5), v2=(-0.3, 0.3))
    v0, v1, v2 = sch.symbols()
    S = sp.exp(v0) + sp.exp(v1) + sp.exp(v2)
    cases += [
        ("negative-coeff denominator", sch, sp.exp(v0) / (sp.Integer(3) - sp.exp(v1)) + v2),
        ("constant in S", sch, sp.exp(v0) / (sp.Rational(1, 2) + sp.exp(v0) + 2 * sp.exp(-v1))),
        ("nested softmax", sch, sp.exp(sp.exp(v0) / S) / (sp.exp(sp.exp(v0) / S) + sp.exp(sp.exp(v1) / S))),
        ("exp(-v0)/S", sch, sp.exp(-v0) / S),
        ("exp(v0/2)/S", sch, sp.exp(v0 / 2) / S),
        ("v1*exp(v0)/S", sch, v1 * sp.exp(v0) / S - 5 * v1 * sp.exp(2 * v0) / S ** 2),
        ("-c P + c P^2, c = 1/3, shared", sch, -sp.Rational(1, 3) * sp.exp(v0) / S + sp.Rational(1, 3) * sp.exp(2 * v0) / S ** 2
         + sp.exp(v0) / S),
        ("P - P^2 of exp", sch, 4 * sp.exp(v0) - 4 * sp.exp(2 * v0) + v1),
        ("sqrt pair", hd.Schema(a=(0.0, 2.0), b=(0.1, 1.0)), None),
        ("sigmoid slope", sch, hd.sigmoid(3 * v0 - v1) * (1 - hd.sigmoid(3 * v0 - v1)) * v2),
        ("softmax 2 weights", sch, (2 * sp.exp(2 * v0) - sp.exp(v1)) / (sp.exp(2 * v0) + 5 * sp.exp(v1) + sp.exp(-v2))),
    ]
    # unevaluated products (the public API keeps them): more exponential copies than powers of S (the shared-exponent
    # split), repeated factors, pairs written with a repeated exp, two different sums in one denominator
    S3 = sp.exp(v0) + 2 * sp.exp(v1) + sp.exp(-v2) + sp.Rational(1, 3)
    M = lambda *a: sp.Mul(*a, evaluate=False)  # noqa: E731
    cases += [
        ("uneval exp(v0) exp(v1)/S", sch, M(sp.exp(v0), sp.exp(v1), sp.Pow(S3, -1))),
        ("uneval exp(v0) exp(v0)/S", sch, M(sp.exp(v0), sp.exp(v0), sp.Pow(S3, -1))),
        ("uneval exp(2v0) exp(v0)/S^3", sch, M(sp.exp(2 * v0), sp.exp(v0), sp.Pow(S3, -3))),
        ("uneval exp(v0) exp(v1) exp(v2)/S^2", sch, M(sp.exp(v0), sp.exp(v1), sp.exp(v2), sp.Pow(S3, -2))),
        ("uneval -2P + 2 exp exp/S^2", sch, sp.Add(M(-2, sp.exp(v0), sp.Pow(S3, -1)),
                                                  M(2, sp.exp(v0), sp.exp(v0), sp.Pow(S3, -2)), evaluate=False)),
        ("uneval two sums", sch, M(sp.exp(v0), sp.Pow(sp.Add(sp.exp(v0), sp.exp(v1), evaluate=False), -1),
                                   sp.Pow(sp.Add(sp.exp(v1), sp.exp(v2), evaluate=False), -1))),
    ]
    for label, sch, e in cases:
        if e is None:
            a, b = sch.symbols()
            e = 3 * sp.sqrt(a) - 3 * a + b
        fn = guarded(label, lambda: sch.function(e))
        if fn is None:
            continue
        check_all(label, fn, rng, norms=(2.0, math.inf) if QUICK else (2.0, 1.0, math.inf), budget=0.4, samples=120)


# -------------------------------------------------------------------------------------------- networks
def network(rng, n_in, hidden, weight_scale, act, power=None, share=False):
    sch = hd.Schema({f"x{i}": (float(rng.uniform(-2, -0.1)), float(rng.uniform(0.1, 2))) for i in range(n_in)})
    xs = sch.symbols()
    acts = {"tanh": sp.tanh, "sigmoid": hd.sigmoid, "softplus": hd.softplus}
    layer = list(xs)
    for width in hidden:
        nxt = []
        for _ in range(width):
            pre = sum(sp.Float(weight_scale * float(rng.normal())) * h for h in layer) + sp.Float(float(rng.normal()))
            a = acts[act if act != "mix" else ["tanh", "sigmoid", "softplus"][int(rng.integers(0, 3))]](pre)
            if power is not None:
                a = a ** power
            nxt.append(a)
        if share:  # a hidden unit reused in two places downstream
            nxt.append(nxt[0] * nxt[-1])
        layer = nxt
    out = sum(sp.Float(float(rng.normal())) * h for h in layer)
    return sch, out


def networks(rng):
    specs = [
        ("tanh w40", {"n_in": 3, "hidden": [5, 3], "weight_scale": 40.0, "act": "tanh"}),
        ("sigmoid w1e-8", {"n_in": 3, "hidden": [5, 3], "weight_scale": 1e-8, "act": "sigmoid"}),
        ("sigmoid w200", {"n_in": 2, "hidden": [6, 3], "weight_scale": 200.0, "act": "sigmoid"}),
        ("mix shared", {"n_in": 3, "hidden": [4, 3], "weight_scale": 2.0, "act": "mix", "share": True}),
        ("tanh^3", {"n_in": 3, "hidden": [4, 3], "weight_scale": 3.0, "act": "tanh", "power": 3}),
        ("sigmoid^-1", {"n_in": 2, "hidden": [5, 3], "weight_scale": 1.5, "act": "sigmoid", "power": -1}),
        ("softplus^(1/2)", {"n_in": 3, "hidden": [5, 2], "weight_scale": 1.0, "act": "softplus", "power": sp.Rational(1, 2)}),
        ("softplus^(3/2) w1e3", {"n_in": 2, "hidden": [5, 2], "weight_scale": 1e3, "act": "softplus", "power": sp.Rational(3, 2)}),
        ("tanh^2 w1e-150", {"n_in": 3, "hidden": [5, 3], "weight_scale": 1e-150, "act": "tanh", "power": 2}),
    ]
    if QUICK:
        specs = specs[::2]
    built = []
    for label, kw in specs:
        sch, e = network(rng, **kw)
        fn = guarded(label, lambda: sch.function(e))
        if fn is None:
            continue
        built.append((label, fn))
        check_all(f"net {label}", fn, rng, norms=(2.0, math.inf), budget=0.5, samples=120)
    return built


def budgets(rng, built):
    for label, fn in built[:4]:
        truth = Truth(fn, rng, samples=150)
        t = truth.grad(2.0)
        for b in (0.0, -1.0, 1e-4, 1e-3, 0.01, 0.05):
            start = time.perf_counter()
            cert = guarded(f"budget {b} {label}", lambda: fn.lipschitz(norm=2, time_budget=b, tolerance=1e-9))
            took = time.perf_counter() - start
            if cert is None:
                continue
            if t > cert.upper or (cert.witness.value is not None and cert.witness.value > cert.upper):
                flag(f"budget {b} {label}", f"certified {cert.upper!r}, truth {float(t)!r}, witness {cert.witness.value!r}")
            else:
                print(f"[held] budget {b} {label}: {cert.upper:.6g} truth {float(t):.6g} ({took:.3f} s)")
            pc = guarded(f"budget {b} {label} partial", lambda: fn.partial_bounds(time_budget=b, tolerance=1e-9))
            if pc is not None:
                for j, nm in enumerate(fn.names):
                    tj = truth.grad(math.inf, j)
                    if tj > pc[nm].upper:
                        flag(f"budget {b} {label} d/d{nm}", f"certified {pc[nm].upper!r}, truth {float(tj)!r}")
            rc = guarded(f"budget {b} {label} range", lambda: fn.range(time_budget=b, tolerance=1e-9))
            if rc is not None:
                for v, x in truth.values()[:60]:
                    if not rc.lower <= v <= rc.upper:
                        flag(f"budget {b} {label} range", f"[{rc.lower!r}, {rc.upper!r}] misses {float(v)!r} at {x.tolist()}")
                        break


# -------------------------------------------------------------------------------------------- point boxes, wide boxes
def point_boxes(rng):
    """Width-0 boxes: the range must contain the 50-digit value of each primitive at its point."""
    mp = {
        "exp": (sp.exp, mpmath.exp, (-745.0, 709.0)), "log": (sp.log, mpmath.log, None),
        "tanh": (sp.tanh, mpmath.tanh, (-30.0, 30.0)), "sigmoid": (hd.sigmoid, _MP["sigmoid"], (-800.0, 800.0)),
        "softplus": (hd.softplus, _MP["softplus"], (-800.0, 800.0)), "sqrt": (sp.sqrt, mpmath.sqrt, None),
        "x^7": (lambda v: v ** 7, lambda v: v ** 7, (-1e40, 1e40)), "x^pi": (lambda v: v ** sp.pi, lambda v: v ** mpmath.pi, None),
        "x^(1/3)": (lambda v: v ** sp.Rational(1, 3), mpmath.cbrt, None), "1/x": (lambda v: 1 / v, lambda v: 1 / v, None),
        "sigmoid slope": (lambda v: hd.sigmoid(v) * (1 - hd.sigmoid(v)), lambda v: _MP["sigmoid"](v) * (1 - _MP["sigmoid"](v)),
                          (-700.0, 700.0)),
    }
    count = 0
    with mpmath.workdps(60):
        for name, (f, g, span) in mp.items():
            for i in range(12 if QUICK else 25):
                if span is None:
                    a = float(10.0 ** rng.uniform(-300, 300)) if i % 2 else float(rng.uniform(1e-3, 10))
                else:
                    a = float(rng.uniform(*span)) if i % 3 else float(rng.uniform(-3, 3))
                sch = hd.Schema(x=hd.Field(a, a))
                (x,) = sch.symbols()
                rc = guarded(f"point {name} at {a!r}", lambda: sch.function(f(x)).range(time_budget=0.05))
                if rc is None:
                    continue
                v = g(mpmath.mpf(a))
                count += 1
                if not rc.lower <= v <= rc.upper:
                    flag(f"point {name} at {a!r}", f"[{rc.lower!r}, {rc.upper!r}] misses {mpmath.nstr(v, 20)}")
    print(f"[held] point boxes: {count} enclosures checked")


def tiny_quadratics(rng):
    """Gradients far below the smallest subnormal: K must stay >= the exact value (never rounded to 0)."""
    for a, lo, hi in [(1e-200, 1e-200, 2e-200), (1e-300, 1e-30, 3e-30), (5e-324, 1.0, 2.0), (1e-170, 1e-170, 1e-160)]:
        sch = hd.Schema(x=hd.Field(lo, hi), y=hd.Field(lo, hi))
        x, y = sch.symbols()
        for k, e in enumerate([a * x * y, a * x * y + a * x ** 2, a * x ** 2 - a * y ** 2]):
            check_quadratic(f"tiny quad {a:g} [{lo:g}, {hi:g}] #{k}", sch.function(e), rng, range_points=12)


def wide_boxes(rng):
    """Ends at +-1e308 / +-max: the truth from a sub-box where the slopes live (its sup is a lower bound)."""
    big_m = 1.7976931348623157e308
    for wide in (1e308, big_m, 1e154):
        big = hd.Schema(x0=(-wide, wide), x1=(0.0, 1.0), x2=(-1.0, 0.0))
        small = hd.Schema(x0=(-30.0, 30.0), x1=(0.0, 1.0), x2=(-1.0, 0.0))
        for act in ("tanh", "sigmoid"):
            xs = big.symbols()
            layer = list(xs)
            fns = {"tanh": sp.tanh, "sigmoid": hd.sigmoid}
            for width in (5, 3):
                layer = [fns[act](sum(sp.Float(float(rng.normal())) * h for h in layer) + sp.Float(float(rng.normal())))
                         for _ in range(width)]
            e = sum(sp.Float(float(rng.normal())) * h for h in layer)
            fb = guarded("wide", lambda: big.function(e))
            if fb is None:
                continue
            fs = small.function(e.xreplace(dict(zip(big.symbols(), small.symbols(), strict=True))))
            truth = Truth(fs, rng, samples=120)
            for p in (2.0, math.inf):
                cert = guarded(f"wide {wide:g} {act} K{p}", lambda: fb.lipschitz(norm=p, time_budget=0.3))
                if cert is None:
                    continue
                t = truth.grad(p)
                if t > cert.upper:
                    flag(f"wide {wide:g} {act} K{p}", f"certified {cert.upper!r}, sub-box truth {float(t)!r}")
                else:
                    print(f"[held] wide {wide:g} {act} K{p}: {cert.upper:.6g} sub-box truth {float(t):.6g}")
            pb = guarded(f"wide {wide:g} {act} partials", lambda: fb.partial_bounds(time_budget=0.2))
            if pb is not None:
                for j, nm in enumerate(fb.names):
                    tj = truth.grad(math.inf, j)
                    if tj > pb[nm].upper:
                        flag(f"wide {wide:g} {act} d/d{nm}", f"certified {pb[nm].upper!r}, sub-box truth {float(tj)!r}")
            rc = guarded(f"wide {wide:g} {act} range", lambda: fb.range(time_budget=0.3))
            if rc is not None:
                for v, x in truth.values()[:60]:
                    if not rc.lower <= v <= rc.upper:
                        flag(f"wide {wide:g} {act} range", f"[{rc.lower!r}, {rc.upper!r}] misses {float(v)!r} at {x.tolist()}")
                        break


# -------------------------------------------------------------------------------------------- random sweep
def random_sweep(rng, seconds: float) -> None:
    """Random compositions of exp, tanh, sigmoid, softplus, softmax shares and c P - c P^2 pairs on 2-3 fields."""

    def term(xs, depth):
        r = int(rng.integers(0, 9))
        if depth == 0 or r == 0:
            v = xs[int(rng.integers(0, len(xs)))]
            return sp.Rational(int(rng.integers(-5, 6)) or 1, int(rng.integers(1, 4))) * v + sp.Rational(int(rng.integers(-3, 4)), 2)
        a = term(xs, depth - 1)
        if r == 1:
            return sp.exp(a)
        if r == 2:
            return sp.tanh(a)
        if r == 3:
            return hd.sigmoid(a)
        if r == 4:
            s = sum(sp.Integer(int(rng.integers(1, 4))) * sp.exp(term(xs, 0)) for _ in range(int(rng.integers(2, 4))))
            return sp.exp(term(xs, 0)) / s
        if r == 5:
            share = sp.exp(xs[0]) / sum(sp.exp(v) for v in xs)
            c = sp.Rational(int(rng.integers(-4, 5)) or 1, 2)
            return c * share - c * share ** 2 + a
        if r == 6:
            return a * term(xs, depth - 1)
        if r == 7:
            return a + term(xs, depth - 1)
        return hd.softplus(a)

    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        d = int(rng.integers(2, 4))
        sch = hd.Schema({f"v{i}": (float(rng.uniform(-2, 0)), float(rng.uniform(0, 2))) for i in range(d)})
        e = term(sch.symbols(), 3)
        if not e.free_symbols:
            continue
        fn = guarded(str(e)[:60], lambda: sch.function(e))
        if fn is None:
            continue
        count += 1
        check_all(f"random {count} {str(fn.expr)[:70]}", fn, rng, norms=(2.0, math.inf), budget=0.5, samples=80)
    print(f"[held?] random sweep: {count} functions")


def main() -> int:
    rng = np.random.default_rng(20261202)
    t0 = time.perf_counter()
    quadratics(rng)
    tiny_quadratics(rng)
    point_boxes(rng)
    wide_boxes(rng)
    print(f"-- quadratics, point and wide boxes {time.perf_counter() - t0:.1f} s")
    softmaxes(rng)
    print(f"-- softmaxes {time.perf_counter() - t0:.1f} s")
    built = networks(rng)
    print(f"-- networks {time.perf_counter() - t0:.1f} s")
    budgets(rng, built)
    print(f"-- budgets {time.perf_counter() - t0:.1f} s")
    random_sweep(np.random.default_rng(77), 8.0 if QUICK else 30.0)
    print(f"-- random sweep {time.perf_counter() - t0:.1f} s")
    print(f"\n{len(VIOLATIONS)} violation(s)")
    for v in VIOLATIONS:
        print("  -", v)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
