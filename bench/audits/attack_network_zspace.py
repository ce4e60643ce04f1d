"""Adversarial audit of the first-layer (z-space) bound of activation networks (commit 5cf94a1, ``analysis/network_zspace.py``).

Run: ``python bench/audits/attack_network_zspace.py [--quick] [--seed=N]`` (about 3 minutes by default on 2 shared
cores, 75 s with ``--quick``). Prints each check; exits 1 if any of these is found:

* ``_empty`` drops a box that holds ``z(x)`` for some ``x`` in the box of fields: boxes built around the exact
  ``z(x)`` (Fractions; float weights converted exactly, ends rounded outward by exact comparison) at vertices of
  ``X`` that maximise a facet normal's ``y . z`` (the zonotope's support point), touching ``z(x)`` at a corner and
  extending outward along ``y`` by widths 0, 1e-300, 1e-15, 1, 1e200;
* ``enclose`` on such a box is below the 700-digit ``||grad f(x)||`` (sympy's own gradient, mpmath);
* a box the branch and bound over ``z`` drops (recorded by wrapping ``_empty``) is not proven disjoint from the
  interval zonotope ``{c + W x}`` by an exact (Fraction) check of one of the flagged directions;
* the search over ``z`` (``maximize`` with ``known_lower`` 0 and near the truth, so that it refines) returns a bound
  below a sampled 700-digit truth;
* ``fn.lipschitz(norm=2)`` (the cap's only consumer) at budgets 0, 1e-4, 0.05, 0.5 is below the truth, or crashes.

Truths: the Truth class of ``attack_network_bound.py`` (vertices, random, edge points, compass search), with the
mpmath evaluation at 700 digits instead of 50: at 50 digits ``tanh(1e100*x0 + x1 - 1e100*x2)`` at (-1, 1, -1)
evaluates its argument to 0 instead of 1 (the 1 is lost), so the 50-digit "truth" 1.41e100 is ABOVE the real
gradient norm 5.94e99 there and flagged a correct enclosure (a false positive of the older harness, not a
library fault). Networks: targeted (near-parallel first-layer rows 1e-3..1e-16 apart, offsets 1e6..2^60, weights
1e-300 / subnormal 1e-310, 5e-324 / 1e-160 / 1e3..1e300 / mixed scales, boxes +-1e300 and +-1e-300, m = n-1,
n = 12 with m = 2..5, rank-deficient and zero-column W, width-0 sides, tanh of tanh, softplus chains, skip
connections and direct field terms) and a seeded random sweep (1-3 layers, Rational / Float / pi-E-sqrt weights,
collinear and duplicate first-layer arguments, random / width-0 / tiny / huge / signed / touching-0 boxes).

Findings when written (default run): no violation. Notes (not soundness faults): ``maximize`` reports
``converged`` after the root box alone when neither a witness nor ``known_lower`` is finite
(``upper - (-inf) <= max(tol * inf, atol)`` is ``inf <= inf``), so the z-search of ``_first_layer_cap`` is the root
box's bound whenever the 256 random points give no finite proven value, and the unit test
``test_the_search_over_z_bounds_the_50_digit_gradient_norms`` (no ``known_lower``) evaluates one box per case:
the branch and bound and the ``_empty`` pruning are never exercised by it.
"""

# ruff: noqa: E402
from __future__ import annotations

import importlib.util
import sys
import time
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import sympy as sp

QUICK = "--quick" in sys.argv
SEED = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--seed=")), "20261202"))
SWEEP_SECONDS = 15.0 if QUICK else 90.0
PRUNE_SECONDS = 10.0 if QUICK else 40.0

_spec = importlib.util.spec_from_file_location("attack_network_bound", Path(__file__).with_name("attack_network_bound.py"))
_anb = importlib.util.module_from_spec(_spec)
_argv, sys.argv = sys.argv, sys.argv[:1]
_spec.loader.exec_module(_anb)
sys.argv = _argv

import opendp_hybridad as hd
from opendp_hybridad.analysis.branch_and_bound import maximize
from opendp_hybridad.analysis.network import SlopeVertices
from opendp_hybridad.analysis.network_zspace import FirstLayerObjective
from opendp_hybridad.analysis.tape import Tape
from opendp_hybridad.symbolic.functions import sigmoid, softplus

mpmath.mp.dps = 60
DPS = 700
ACT = {"tanh": sp.tanh, "sigmoid": sigmoid, "softplus": softplus}
VIOLATIONS: list[str] = []
QUIET = [False]  # set while the harness checks itself on deliberately broken pieces
STATS = {"networks": 0, "touch_boxes": 0, "dropped": 0, "zsearch": 0, "certs": 0}


def flag(label: str, text: str) -> None:
    VIOLATIONS.append(label)
    if not QUIET[0]:
        print(f"[VIOLATED] {label}: {text}", flush=True)


class Truth(_anb.Truth):
    """The older audit's sampled truth, evaluated at 700 digits (huge weights cancel inside unit arguments)."""

    def mp_at(self, x):
        with mpmath.workdps(DPS):
            try:
                g = self.mp_g(*[mpmath.mpf(float(t)) for t in x])
            except (ZeroDivisionError, ValueError, OverflowError):
                return None
            if not isinstance(g, (list, tuple)):
                g = [g]
            return [mpmath.mpf(v) for v in g]


def grad_norm(truth: Truth, x) -> mpmath.mpf | None:
    g = truth.mp_at(x)
    if g is None:
        return None
    with mpmath.workdps(DPS):
        return mpmath.sqrt(mpmath.fsum(c * c for c in g))


def repro(expr, lo, hi) -> str:
    return f"expr={sp.srepr(expr)[:500]} box={list(zip(np.asarray(lo).tolist(), np.asarray(hi).tolist(), strict=True))}"


# ------------------------------------------------------------------------------------------------ builders
def _r(v) -> sp.Expr:
    return v if isinstance(v, sp.Basic) else sp.Rational(Fraction(v))


def build(rows, consts, acts, outw, n, layer2=None, direct=None):
    xs = list(sp.symbols(f"x0:{n}", real=True))
    first = [sum(_r(w) * x for w, x in zip(row, xs, strict=True)) + _r(c) for row, c in zip(rows, consts, strict=True)]
    hs = [ACT[a](A) for a, A in zip(acts, first, strict=True)]
    if layer2:
        hs = [ACT[a](sum(_r(w) * v for w, v in zip(ws, hs, strict=True)) + _r(b)) for a, ws, b in layer2]
    out = sum(_r(w) * v for w, v in zip(outw, hs, strict=True))
    if direct:
        out += _r(direct[1]) * xs[direct[0]]
    return out, xs, first


def weight(rng, scale, kind):
    v = float(rng.normal(0, scale))
    if kind == "rat":
        return sp.Rational(Fraction(v).limit_denominator(10**6))
    if kind == "irr":
        return sp.Rational(Fraction(v).limit_denominator(100)) * [sp.sqrt(2), sp.pi, sp.E][int(rng.integers(0, 3))]
    return sp.Float(v)


def random_network(rng, n, m, depth, scale, kind):
    xs = list(sp.symbols(f"x0:{n}", real=True))
    dead = int(rng.integers(0, n)) if rng.random() < 0.3 else -1
    first = []
    for i in range(m):
        if i > 0 and rng.random() < 0.25:  # collinear rows
            first.append(sp.expand(int(rng.integers(2, 4)) * first[0]))
        else:
            first.append(sum(weight(rng, scale, kind) * xs[k] for k in range(n) if k != dead) + weight(rng, scale / 2, kind))
    acts = list(ACT)
    h = []
    for A in first:
        h.append(ACT[acts[int(rng.integers(0, 3))]](A))
        if rng.random() < 0.25:  # the same argument under a second activation
            h.append(ACT[acts[int(rng.integers(0, 3))]](A))
    for _ in range(depth - 1):
        new = []
        for _ in range(int(rng.integers(1, 4))):
            arg = sum(weight(rng, 1.0, kind) * v for v in h) + weight(rng, 0.5, kind)
            if rng.random() < 0.3:  # a skip connection
                arg += weight(rng, 0.3, kind) * xs[int(rng.integers(0, n))]
            new.append(ACT[acts[int(rng.integers(0, 3))]](arg))
        h = new
    out = sum(weight(rng, 1.0, kind) * v for v in h)
    if rng.random() < 0.3:
        out += weight(rng, 0.3, kind) * xs[int(rng.integers(0, n))]
    return out, xs, first


def random_box(rng, n):
    style = int(rng.integers(0, 7))
    lo = rng.uniform(-2, 0.5, n)
    if style == 0:
        hi = lo + rng.uniform(0.1, 2.5, n)
    elif style == 1:
        hi = lo + np.where(rng.random(n) < 0.4, 0.0, rng.uniform(0.1, 2, n))
    elif style == 2:
        hi = lo + 1e-9
    elif style == 3:
        lo = -np.full(n, 10.0 ** int(rng.integers(3, 300)))
        hi = -lo
    elif style == 4:
        lo = rng.uniform(0, 1, n)
        hi = lo + rng.uniform(0.1, 3, n)
    elif style == 5:
        hi = -rng.uniform(0, 1, n)
        lo = hi - rng.uniform(0.1, 3, n)
    else:
        lo = np.where(rng.random(n) < 0.5, 0.0, -rng.uniform(0.1, 1, n))
        hi = np.where(lo == 0, rng.uniform(0.1, 1, n), 0.0)
    return lo, hi


# ------------------------------------------------------------------------------------------------ checks
def z_objective(expr, xs, lo, hi):
    tape = Tape(list(xs))
    return FirstLayerObjective.detect(SlopeVertices.detect(tape, tape.add_output(expr)), lo, hi)


def exact_rows(z, first, xs):
    """The sympy argument (exact: Floats as their binary Rationals) of each row of z, matched by coefficients."""
    out = [None] * z.m
    w_mid, c_mid = 0.5 * (z.W_lo + z.W_hi), 0.5 * (z.c_lo + z.c_hi)
    for A in [sp.expand(a) for a in first] + [sp.expand(-a) for a in first]:
        A = A.xreplace({f: sp.Rational(f) for f in A.atoms(sp.Float)})
        a = np.array([float(A.coeff(s)) for s in xs])
        c = float(A.subs(dict.fromkeys(xs, 0)))
        for i in range(z.m):
            if out[i] is None and np.allclose(w_mid[i], a, rtol=1e-12, atol=0) and np.isclose(c_mid[i], c, rtol=1e-12, atol=0):
                out[i] = A
                break
    return out


def _down(v: sp.Expr) -> float:
    f = float(v)
    return float(np.nextafter(f, -np.inf)) if sp.Float(f, 80) > v else f


def _up(v: sp.Expr) -> float:
    f = float(v)
    return float(np.nextafter(f, np.inf)) if sp.Float(f, 80) < v else f


def check_touch(label, z, rows, xs, lo, hi, truth, rng, max_dirs, widths):
    if any(r is None for r in rows):
        return
    Y = z.directions
    picks = rng.permutation(Y.shape[0])[:max_dirs] if Y.shape[0] else np.zeros(0, dtype=int)
    targets = []
    for d in picks:  # the vertex of X maximising y . z: z(x) is the zonotope's support point in direction y
        yw = [sum(sp.Rational(Fraction(float(Y[d, i]))) * rows[i].coeff(s) for i in range(z.m)) for s in xs]
        targets.append((np.where(np.array([float(v) > 0 for v in yw]), hi, lo), [d]))
    targets += [(lo + rng.random(len(lo)) * (hi - lo), list(picks[:4])) for _ in range(4)]
    for x, dirs in targets:
        sub = {s: sp.Rational(Fraction(float(t))) for s, t in zip(xs, x, strict=True)}
        zx = [sp.N(A.subs(sub), 80) for A in rows]
        zlo, zhi = np.array([_down(v) for v in zx]), np.array([_up(v) for v in zx])
        boxes = [(zlo, zhi)]
        for d in dirs:
            y = Y[d]
            for w in widths:
                boxes.append((np.minimum(np.where(y >= 0, zlo, zhi - w), zlo), np.maximum(np.where(y >= 0, zlo + w, zhi), zhi)))
        b_lo, b_hi = np.array([b[0] for b in boxes]), np.array([b[1] for b in boxes])
        with np.errstate(all="ignore"):
            empty = z._empty(b_lo, b_hi)
            upper = z.enclose(b_lo, b_hi).upper
        norm = grad_norm(truth, x)
        for j in range(len(boxes)):
            STATS["touch_boxes"] += 1
            if empty[j]:
                flag(f"{label} _empty", f"drops a box holding z(x), x={x.tolist()} box={b_lo[j].tolist()}..{b_hi[j].tolist()}")
            elif norm is not None and not norm <= upper[j]:
                flag(f"{label} enclose", f"{upper[j]!r} < ||grad f(x)|| {mpmath.nstr(norm, 20)} at x={x.tolist()}")


def _support(z, y) -> Fraction:
    yf = [Fraction(float(v)) for v in y]
    total = sum((max(yf[i] * Fraction(float(z.c_lo[i])), yf[i] * Fraction(float(z.c_hi[i]))) for i in range(z.m)), Fraction(0))
    for k in range(z.n):
        s_lo = sum(min(yf[i] * Fraction(float(z.W_lo[i, k])), yf[i] * Fraction(float(z.W_hi[i, k]))) for i in range(z.m))
        s_hi = sum(max(yf[i] * Fraction(float(z.W_lo[i, k])), yf[i] * Fraction(float(z.W_hi[i, k]))) for i in range(z.m))
        xl, xh = Fraction(float(z.x_lo[k])), Fraction(float(z.x_hi[k]))
        total += max(s_lo * xl, s_lo * xh, s_hi * xl, s_hi * xh)
    return total


def check_pruned(label, z, budget, max_check=120):
    """Every box the z-search drops, proven disjoint from the interval zonotope exactly (Fractions)."""
    dropped = []
    original = FirstLayerObjective._empty

    def recording(self, lo, hi):
        e = original(self, lo, hi)
        dropped.extend((lo[j].copy(), hi[j].copy()) for j in np.nonzero(e)[0])
        return e

    FirstLayerObjective._empty = recording
    try:
        with np.errstate(all="ignore"):
            maximize(z, z.root_lo, z.root_hi, time_budget=budget, polish=False, known_lower=0.0)
    except hd.UnboundedError:
        pass
    finally:
        FirstLayerObjective._empty = original
    STATS["dropped"] += len(dropped)
    cache: dict[int, Fraction] = {}
    for lo, hi in dropped[:max_check]:
        with np.errstate(all="ignore"):
            candidates = np.nonzero(lo @ z._Y_pos + hi @ z._Y_neg > z.support_up)[0]
        proven = False
        for d in candidates:
            if d not in cache:
                cache[d] = _support(z, z.directions[d])
            yf = [Fraction(float(v)) for v in z.directions[d]]
            if sum(yf[i] * Fraction(float(lo[i] if yf[i] >= 0 else hi[i])) for i in range(z.m)) > cache[d]:
                proven = True
                break
        if not proven:
            flag(f"{label} pruning", f"dropped box not disjoint from the zonotope by any flagged direction: {lo.tolist()}..{hi.tolist()}")
    return len(dropped)


def check_search(label, z, truth, lo, hi, budgets):
    t, x = truth.sup(lo, hi, 2.0)
    for b in budgets:
        for known in (0.0, float(t) * (1 - 1e-9)):
            STATS["zsearch"] += 1
            try:
                with np.errstate(all="ignore"):
                    res = maximize(z, z.root_lo, z.root_hi, time_budget=b, polish=False, known_lower=known)
            except hd.UnboundedError:
                continue
            if not t <= res.upper:
                flag(f"{label} z-search", f"{res.upper!r} (budget {b}, known_lower {known}) < truth {mpmath.nstr(t, 20)} at {x.tolist()}")
    return t, x


def check_certs(label, expr, xs, lo, hi, t, x, budgets):
    schema = hd.Schema({f"x{i}": (float(a), float(b)) for i, (a, b) in enumerate(zip(lo, hi, strict=True))})
    fn = schema.function(expr.xreplace(dict(zip(xs, schema.symbols(), strict=True))))
    got = []
    for b in budgets:
        STATS["certs"] += 1
        try:
            cert = fn.lipschitz(norm=2, time_budget=b)
        except hd.UnboundedError:
            got.append("refused")
            continue
        except Exception as err:  # an audit reports every crash
            flag(f"{label} K crash", f"{type(err).__name__}: {str(err)[:200]}; {repro(expr, lo, hi)}")
            continue
        got.append(f"{cert.upper:.6g}")
        if not t <= cert.upper:
            flag(f"{label} K", f"certified {cert.upper!r} (budget {b}) < truth {mpmath.nstr(t, 20)} at {x.tolist()}; "
                 + repro(expr, lo, hi))
    return got


def run(label, expr, xs, first, lo, hi, rng, budgets=(1e-4, 0.2), cert_budgets=(0.0, 1e-4, 0.05, 0.5),
        max_dirs=24, widths=(0.0, 1e-300, 1e-15, 1.0, 1e200), prune=0.0):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    z = z_objective(expr, xs, lo, hi)
    if z is None:
        print(f"[not taken] {label}")
        return
    STATS["networks"] += 1
    truth = Truth(expr, xs, rng, samples=60, search=2)
    check_touch(label, z, exact_rows(z, first, xs), xs, lo, hi, truth, rng, max_dirs, widths)
    dropped = check_pruned(label, z, prune) if prune > 0 else 0
    t, x = check_search(label, z, truth, lo, hi, budgets)
    got = check_certs(label, expr, xs, lo, hi, t, x, cert_budgets)
    print(f"[held] {label}: m={z.m} n={z.n} directions={z.directions.shape[0]} dropped={dropped} "
          f"truth={float(t):.6g} K={got}", flush=True)


def targeted(rng):
    def case(label, rows, consts, acts, outw, lo, hi, **kw):
        layer2, direct = kw.pop("layer2", None), kw.pop("direct", None)
        expr, xs, first = build(rows, consts, acts, outw, len(lo), layer2, direct)
        run(label, expr, xs, first, lo, hi, rng, max_dirs=60, **kw)

    for k in ((3, 12, 16) if QUICK else (3, 8, 12, 15, 16)):
        e = Fraction(1, 10**k)
        case(f"near-parallel 1e-{k}", [[1, 1, 1], [1, 1 + e, 1]], [0, 0], ["tanh", "sigmoid"], [3, -2], [-1] * 3, [1] * 3, prune=1.0)
        case(f"near-parallel3 1e-{k}", [[1, 2, 3, 4], [1, 2 + e, 3, 4], [1, 2, 3 + e, 4 - e]], [Fraction(1, 3), 0, -1],
             ["tanh", "tanh", "softplus"], [1, -1, 2], [-1] * 4, [2] * 4, prune=1.0)
    for c in (1e6, 2.0**60):
        case(f"offset {c}", [[Fraction(1, 3), 1, -1], [1, Fraction(-2, 7), 1]], [c, -c], ["tanh", "sigmoid"], [1, 1], [-1] * 3, [1] * 3)
        case(f"far box {c}", [[Fraction(1, 3), 1, -1], [1, Fraction(-2, 7), 1]], [0, 0], ["tanh", "sigmoid"], [1, 1],
             [c] * 3, [c + 1, c + 2, c + 3])
    for s in (1e-300, 1e-310, 5e-324, 1e-160):
        case(f"tiny W {s}", [[s, 2 * s, -s], [s, -s, 3 * s]], [0, 0], ["tanh", "sigmoid"], [1e300, 1e300], [-1] * 3, [1] * 3)
        case(f"tiny W huge box {s}", [[s, 2 * s, -s], [s, -s, 3 * s]], [0, 0], ["tanh", "softplus"], [1, 1], [-1e300] * 3, [1e300] * 3)
        case(f"tiny box {s}", [[1, 2, -1], [1, -1, 3]], [0, 0], ["tanh", "sigmoid"], [1, 1], [-s] * 3, [s] * 3, prune=0.5)
    for s in (1e3, 1e100, 1e300):
        case(f"huge W {s} (cancelling)", [[s, 1, -s], [1, -s, 3]], [0, 0], ["tanh", "sigmoid"], [1, 1], [-1] * 3, [1] * 3)
        case(f"mixed {s}", [[s, 1 / s, -1], [1 / s, -s, 3]], [0, 0], ["softplus", "sigmoid"], [1, -1], [-1] * 3, [1] * 3)
    for n, m in ((4, 3), (8, 7), (12, 2), (12, 4), (12, 5)):
        rows = [[Fraction(int(v), 7) for v in rng.integers(-9, 10, n)] for _ in range(m)]
        case(f"n={n} m={m}", rows, [Fraction(1, 2)] + [0] * (m - 1), (["tanh", "sigmoid"] * m)[:m],
             [int(v) or 1 for v in rng.integers(-3, 4, m)], [-1] * n, [1] * n, prune=1.0)
    rows = [[1, 2, 3], [3, -1, 2]]
    case("rank-deficient", [[1, 2, 0, 0], [2, 4, 0, 0], [-1, -2, 0, 0]], [0, 1, 2], ["tanh", "sigmoid", "softplus"],
         [1, 1, 1], [-1] * 4, [1] * 4, prune=1.0)
    case("zero columns", [[1, 0, 2, 0, 0], [0, 0, 1, -1, 0]], [0, 0], ["tanh", "tanh"], [1, 1], [-1] * 5, [1] * 5)
    case("width-0 sides", rows, [0, 0], ["tanh", "sigmoid"], [1, -1], [-1, 0.5, 0.25], [1, 0.5, 0.25])
    case("all width 0", rows, [0, 0], ["tanh", "sigmoid"], [1, -1], [0.1, 0.5, 0.25], [0.1, 0.5, 0.25])
    case("tanh of tanh", rows, [0, 0], ["tanh", "tanh"], [1], [-1] * 3, [1] * 3, layer2=[("tanh", [2, 2], 0)], prune=1.0)
    case("softplus chain, skip", rows, [0, 0], ["softplus", "softplus"], [1, -1], [-1] * 3, [1] * 3,
         layer2=[("softplus", [2, -2], 1), ("sigmoid", [1, 1], -1)], direct=(1, Fraction(-1, 3)), prune=1.0)
    case("irrational weights", [[sp.pi, 1, -1], [1, sp.E, 1]], [sp.Rational(1, 3), 0], ["tanh", "softplus"], [sp.pi, -1],
         [-1] * 3, [1] * 3)


def sweep(rng, seconds, prune_seconds):
    end, prune_end, count = time.perf_counter() + seconds, time.perf_counter() + seconds + prune_seconds, 0
    while time.perf_counter() < prune_end:
        n = int(rng.integers(2, 10))
        m = int(rng.integers(1, min(n, 6)))
        kind = ["rat", "float", "irr"][int(rng.integers(0, 3))]
        scale = [0.5, 2.0, 30.0, 1e3, 1e-3][int(rng.integers(0, 5))]
        expr, xs, first = random_network(rng, n, m, int(rng.integers(1, 4)), scale, kind)
        lo, hi = random_box(rng, n)
        label = f"sweep#{count} n={n} m={m} {kind} s={scale}"
        count += 1
        if time.perf_counter() < end:
            run(label, expr, xs, first, lo, hi, rng, budgets=(0.1,), cert_budgets=(1e-4, 0.2), max_dirs=8,
                widths=(0.0, 1.0))
        else:  # the pruning check alone: many networks, each search refined for 0.15 s
            lo, hi = np.asarray(lo, float), np.asarray(hi, float)
            z = z_objective(expr, xs, lo, hi)
            if z is not None:
                STATS["networks"] += 1
                check_pruned(label, z, 0.15)


def has_teeth() -> bool:
    """The checks flag a broken ``_empty`` (a support rounded down by 1e-3 around z(x); by 0.5 in the search) and a
    broken ``enclose`` (halved)."""
    x = list(sp.symbols("x0:3", real=True))
    expr, xs, first = build([[1, 2, -1], [1, -1, 3]], [0, 0], ["tanh", "sigmoid"], [2, -1], 3)
    lo, hi = np.full(3, -1.0), np.ones(3)
    z = z_objective(expr, x, lo, hi)
    rng = np.random.default_rng(0)
    truth = Truth(expr, xs, rng, samples=20, search=1)
    before = len(VIOLATIONS)
    QUIET[0] = True
    z.support_up = z.support_up - 1e-3
    check_touch("teeth", z, exact_rows(z, first, xs), xs, lo, hi, truth, rng, 8, (0.0,))
    caught_empty = len(VIOLATIONS) > before
    z = z_objective(expr, x, lo, hi)
    enclose = z.enclose
    z.enclose = lambda a, b: _halved(enclose(a, b))
    mark = len(VIOLATIONS)
    check_touch("teeth", z, exact_rows(z, first, xs), xs, lo, hi, truth, rng, 8, (0.0,))
    caught_enclose = len(VIOLATIONS) > mark
    z = z_objective(expr, x, lo, hi)
    z.support_up = z.support_up - 0.5
    mark = len(VIOLATIONS)
    check_pruned("teeth", z, 0.3)
    caught_pruning = len(VIOLATIONS) > mark
    del VIOLATIONS[before:]
    QUIET[0] = False
    return caught_empty and caught_enclose and caught_pruning


def _halved(bounds):
    bounds.upper = 0.5 * bounds.upper
    return bounds


def main() -> int:
    rng = np.random.default_rng(SEED)
    start = time.perf_counter()
    if not has_teeth():
        print("[VIOLATED] harness: the checks did not flag a deliberately broken _empty / enclose / pruning")
        return 1
    print("[held] harness: supports rounded down (box checks and the search's drops) and a halved enclose are flagged")
    targeted(rng)
    sweep(rng, SWEEP_SECONDS, PRUNE_SECONDS)
    print(f"\n{STATS['networks']} networks, {STATS['touch_boxes']} boxes around z(x), {STATS['dropped']} dropped boxes "
          f"(up to 120 per search proven exactly), {STATS['zsearch']} z-searches, {STATS['certs']} certificates, "
          f"{time.perf_counter() - start:.0f} s")
    if VIOLATIONS:
        print(f"{len(VIOLATIONS)} violation(s): " + "; ".join(sorted(set(VIOLATIONS))[:20]))
        return 1
    print("no violation found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
