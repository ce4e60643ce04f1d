"""Adversarial audit of the slope-vertex bound for activation networks (commit 3b57c98, ``analysis/network.py``).

Run: ``python bench/audits/attack_network_bound.py [--quick] [--long] [--seed=N]`` (about 90 s by default on 2 shared cores).
Prints each check; exits 1 if a certified K (p = 1, 2, inf), a partial bound, or the vertex bound on its own
(evaluated on the root box and on random sub-boxes, without the min with the interval and mean-value bounds
that could mask it) is below its truth, if the structure detector accepts a function that is not a
fixed-weight network, or if a certificate crashes, or refuses, where the same certificate with the vertex
path disabled (``SlopeVertices.detect`` patched to return None) does not. A refusal (UnboundedError) that
both paths give is not a violation.

Truths never use the library's analysis: sympy's own gradient (``sympy.diff`` of the expression, the
library's sigmoid and softplus through their closed forms ``1/(1+exp(-v))`` and ``log1p(exp(v))``),
lambdified to mpmath and evaluated at 50 digits at the box's vertices, random points, edge points and the
ends of a float compass search from the best candidates. Every such value is a LOWER bound of the
supremum, so a certified bound below it is a proven violation (compared exactly: float bound vs mpf).

Targeted cases: slope intervals containing the activation's maximum slope (tanh/sigmoid at 0), saturated
units (weights 1e3..1e300, boxes at +-1e300), a unit feeding two later units that merge (a slope on several
paths, with cancelling signs), tanh of tanh chains, the same argument under two activations, inputs used
directly and through units (``3x - 3 tanh(x)``: gradient 0 at a vertex of the slope box), an output that is
a unit, Float / high-precision Float / Rational / irrational (pi, E) weights, activations of constants as
weights, width-0 / tiny / asymmetric / huge boxes, 10 and 11 units, time budgets 0 and 1e-4.
Detector cases (must be refused, i.e. ``detect`` None, or their bound must still hold): products of units,
a unit times a field, units under powers, sigmoid written ``1/(1+exp(-x))``, softplus as ``log(1+exp(x))``,
Abs / Max mixed in, ``sqrt(2)`` weights, a field squared inside a unit.
Random sweep: networks of 1-3 layers (1-10 units), random activations per unit, skip connections,
weights from normal(0, s) with s in {0.5, 3, 50, 1e4} rounded to Rationals or kept as Floats, boxes
random / tiny / width-0 / asymmetric / huge.

Findings when written (default run 58 s: 81 networks, 1104 vertex-bound boxes, 71 certificate checks;
``--long --seed=7``: 540 networks, 5118 boxes, 235 checks, 329 s): no bound below its truth, no detector
acceptance of a non-network, no refusal or crash the disabled path does not give. Notes: certify only takes
the path from 40 tape nodes (small networks never use it; checked here on their own tapes); an output that
is itself an activation counts as a unit (a 10-unit network under a final tanh is refused, conservatively);
activations of constants used as weights (``tanh(1/3)*x``) are refused; ``magnitudes`` builds a dense
unit vector per field for every vertex and box (time and memory ~ n^2 2^h per box: 16-30x the rest of the
objective per batch at n=8, h=10; 44 s and 2.2 GB for one 512-box batch at n=20), which maximize's per-box
cost estimate turns into fewer boxes, not a hang, and can leave K looser at a fixed budget (n=6, h=10,
p=inf, 2 s: 5.027 with the path, 4.951 without).
"""

# ruff: noqa: B023  (every lambda is called at once, inside its loop iteration, by outcome())
from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time

import mpmath
import numpy as np
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.analysis import certify as _certify
from opendp_hybridad.analysis.certify import GradientObjective, _norm_upper
from opendp_hybridad.analysis.interval import IntervalEvaluator
from opendp_hybridad.analysis.network import SlopeVertices
from opendp_hybridad.analysis.tape import Tape

QUICK = "--quick" in sys.argv
LONG = "--long" in sys.argv
SEED = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--seed=")), "20261202"))
SWEEP_SECONDS = 6.0 if QUICK else (300.0 if LONG else 35.0)
VIOLATIONS: list[str] = []
NOTES: list[str] = []
STATS = {"checks": 0, "vertex_boxes": 0, "sweep": 0, "detected": 0}
_MP = {"sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)), "softplus": lambda v: mpmath.log1p(mpmath.exp(v))}
_NP = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "softplus": lambda v: np.logaddexp(0, v)}
NORMS = (2.0, 1.0, math.inf)


def flag(label: str, text: str) -> None:
    VIOLATIONS.append(label)
    print(f"[VIOLATED] {label}: {text}", flush=True)


def note(text: str) -> None:
    NOTES.append(text)
    print(f"[note] {text}", flush=True)


def outcome(thunk):
    """('ok', value) / ('refused', message) / ('crash', message)."""
    try:
        return "ok", thunk()
    except hd.UnboundedError as err:
        return "refused", str(err)[:120]
    except Exception as err:  # an audit reports every crash
        return "crash", f"{type(err).__name__}: {str(err)[:200]}"


@contextlib.contextmanager
def vertex_path_disabled():
    original = _certify.SlopeVertices.detect
    _certify.SlopeVertices.detect = classmethod(lambda cls, *a, **k: None)
    try:
        yield
    finally:
        _certify.SlopeVertices.detect = original


def mp_norm(g, p):
    if p == 2.0:
        return mpmath.sqrt(mpmath.fsum(c * c for c in g))
    if p == 1.0:
        return mpmath.fsum(abs(c) for c in g)
    return max(abs(c) for c in g)


# -------------------------------------------------------------------------------------------- truths
class Truth:
    """Sampled 50-digit lower bounds of sup ||grad f||_p and sup |df/dx_j| over a box (sympy's own gradient)."""

    def __init__(self, expr, syms, rng, samples=120, search=3):
        self.syms = list(syms)
        self.n = len(syms)
        grads = [sp.diff(expr, s) for s in syms]
        self.mp_g = sp.lambdify(syms, grads, modules=[_MP, "mpmath"])
        self.np_g = sp.lambdify(syms, grads, modules=[_NP, "numpy"])
        self.rng = rng
        self.samples = samples
        self.search = search

    def _np(self, x):
        with np.errstate(all="ignore"):
            try:
                g = np.array(self.np_g(*x), dtype=float).reshape(-1)
            except (OverflowError, ZeroDivisionError, ValueError, TypeError):
                return None
        return np.broadcast_to(g, (self.n,)) if g.size == 1 else g

    def mp_at(self, x):
        with mpmath.workdps(50):
            try:
                g = self.mp_g(*[mpmath.mpf(float(t)) for t in x])
            except (ZeroDivisionError, ValueError, OverflowError):
                return None
            if not isinstance(g, (list, tuple)):
                g = [g]
            return [mpmath.mpf(v) for v in g]

    def points(self, lo, hi):
        n, rng = self.n, self.rng
        corners = (list(itertools.product((0, 1), repeat=n)) if n <= 6
                   else [tuple(rng.integers(0, 2, n)) for _ in range(64)])
        pts = [lo + np.array(c) * (hi - lo) for c in corners]
        pts.append(0.5 * lo + 0.5 * hi)
        pts += [lo + rng.random(n) * (hi - lo) for _ in range(self.samples)]
        for _ in range(self.samples // 3):  # edges
            c = lo + rng.integers(0, 2, n) * (hi - lo)
            k = int(rng.integers(0, n))
            c[k] = lo[k] + rng.random() * (hi[k] - lo[k])
            pts.append(c)
        # points where a coordinate is 0 (tanh/sigmoid slopes peak at argument 0 for 1-d units)
        z = np.clip(np.zeros(n), lo, hi)
        pts.append(z)
        return [np.clip(p, lo, hi) for p in pts]

    def sup(self, lo, hi, p=2.0, comp=None):
        """max over sampled points (and a compass search) of the 50-digit ||grad f||_p or |df/dx_comp|."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)

        def fval(x):
            g = self._np(x)
            if g is None or not np.all(np.isfinite(g)):
                return -1.0
            return float(abs(g[comp])) if comp is not None else float(np.linalg.norm(g, {2.0: 2, 1.0: 1, math.inf: np.inf}[p]))

        scored = sorted(((fval(x), i, x) for i, x in enumerate(self.points(lo, hi))), key=lambda t: -t[0])
        ends = []
        for _, _, x0 in scored[:self.search]:
            x, fx = x0.copy(), fval(x0)
            step = 0.25 * (hi - lo)
            for _ in range(30):
                moved = False
                for k in range(self.n):
                    for s in (1, -1):
                        y = x.copy()
                        y[k] = min(max(y[k] + s * step[k], lo[k]), hi[k])
                        fy = fval(y)
                        if fy > fx:
                            x, fx, moved = y, fy, True
                if not moved:
                    step = step / 2
            ends.append(x)
        best, arg = mpmath.mpf(0), None
        for x in [x for _, _, x in scored[:2 * self.search]] + ends:
            g = self.mp_at(x)
            if g is None:
                continue
            v = abs(g[comp]) if comp is not None else mp_norm(g, p)
            if v > best:
                best, arg = v, x
        return best, arg


# ------------------------------------------------------------------------------ the vertex bound alone
def vertex_bounds(fn, lo, hi, p, component=None):
    """The slope-vertex bound alone, per box, through the objective certify builds (None: path not taken)."""
    obj = GradientObjective(fn, p, component=component)
    if obj.vertices is None:
        return None
    obj.enc.enclose(lo, hi)
    s_lo, s_hi = obj.vertices.slopes(obj.enc.boxes_L, obj.enc.boxes_H)
    vm = obj.vertices.magnitudes(s_lo, s_hi)
    if component is not None:
        vm = vm[:, :, [component]]
    nb, nv, _ = vm.shape
    return _norm_upper(vm.reshape(nb * nv, -1).T, p).reshape(nb, nv).max(axis=1)


def direct_vertex_bound(expr, syms, lo, hi, p, component=None):
    """The same bound on the function's own tape (any size: certify only takes the path from 40 nodes)."""
    tape = Tape(list(syms))
    root = tape.add_output(expr)
    sv = SlopeVertices.detect(tape, root)
    if sv is None:
        return None, None
    L, H, _ = IntervalEvaluator(tape).evaluate(lo, hi)
    s_lo, s_hi = sv.slopes(L, H)
    vm = sv.magnitudes(s_lo, s_hi)
    if component is not None:
        vm = vm[:, :, [component]]
    nb, nv, _ = vm.shape
    return _norm_upper(vm.reshape(nb * nv, -1).T, p).reshape(nb, nv).max(axis=1), sv


def sub_boxes(rng, lo, hi, k):
    out_lo, out_hi = [lo.copy()], [hi.copy()]
    for _ in range(k):
        a = lo + rng.random(lo.size) * (hi - lo)
        b = lo + rng.random(lo.size) * (hi - lo)
        kind = rng.integers(0, 3)
        if kind == 1:  # a thin slab
            b = a + (b - a) * 1e-6
        elif kind == 2:  # a point on some sides
            b = np.where(rng.random(lo.size) < 0.5, a, b)
        out_lo.append(np.minimum(a, b))
        out_hi.append(np.maximum(a, b))
    return np.array(out_lo), np.array(out_hi)


def box_of(lo, hi):
    return list(zip(np.asarray(lo).tolist(), np.asarray(hi).tolist(), strict=True))


def repro(expr, box):
    return f"expr={sp.srepr(expr)[:600]} box={box}"


def check_vertex_alone(label, expr, syms, truth, lo, hi, rng, nsub=4):
    """The vertex bound without the min: on the function's tape and (when certify takes it) the objective's."""
    blo, bhi = sub_boxes(rng, lo, hi, nsub)
    for p in NORMS:
        vb, _ = direct_vertex_bound(expr, syms, blo, bhi, p)
        if vb is None:
            return False
        for i in range(blo.shape[0]):
            STATS["vertex_boxes"] += 1
            t, x = truth.sup(blo[i], bhi[i], p)
            if not t <= vb[i]:
                flag(f"{label} vertex-bound p={p} box {i}", f"bound {vb[i]!r} < truth {mpmath.nstr(t, 20)} at x={list(map(float, x))}; "
                     + repro(expr, box_of(blo[i], bhi[i])))
    # one partial per function, each component
    vb_all = [direct_vertex_bound(expr, syms, blo[:1], bhi[:1], math.inf, j)[0] for j in range(len(syms))]
    for j, vb in enumerate(vb_all):
        t, x = truth.sup(blo[0], bhi[0], math.inf, j)
        if not t <= vb[0]:
            flag(f"{label} vertex-bound d/dx{j}",
                 f"bound {vb[0]!r} < truth {mpmath.nstr(t, 20)} at {list(map(float, x))}; {repro(expr, 'root')}")
    return True


def check_certs(label, expr, schema, truth, lo, hi, budget=0.3, partials=True, compare=True, norms=NORMS):
    """K and partial bounds through the public API against the truth; refusals/crashes vs the path disabled."""
    names = schema.names
    fn = hd.RecordFunction(expr, schema, name="f")
    obj = outcome(lambda: GradientObjective(fn, 2.0))
    taken = obj[0] == "ok" and obj[1].vertices is not None
    STATS["detected"] += int(taken)
    for p in norms:
        STATS["checks"] += 1
        kind, cert = outcome(lambda: hd.RecordFunction(expr, schema, name="f").lipschitz(norm=p, time_budget=budget))
        if kind == "ok":
            t, x = truth.sup(lo, hi, p)
            if not t <= cert.upper:
                flag(f"{label} K p={p}", f"certified {cert.upper!r} < truth {mpmath.nstr(t, 20)} at {list(map(float, x))} "
                     f"(vertex path {'taken' if taken else 'not taken'}); {repro(expr, box_of(lo, hi))}")
            else:
                ratio = float(cert.upper / t) if t > 0 else float("inf")
                print(f"[held] {label} K p={p}: {cert.upper:.8g} truth {float(t):.8g} ratio {ratio:.4f}"
                      f"{' [vertex]' if taken else ''}")
        if compare and kind != "ok":
            with vertex_path_disabled():
                kind0, _ = outcome(lambda: hd.RecordFunction(expr, schema, name="f").lipschitz(norm=p, time_budget=budget))
            if kind0 == "ok" or (kind == "crash" and kind0 != "crash"):
                flag(f"{label} K p={p} {kind}", f"{cert} (with the vertex path disabled: {kind0}); {repro(expr, 'schema')}")
            else:
                print(f"[{kind}] {label} K p={p}: both paths ({cert[:80]})")
    if partials:
        STATS["checks"] += 1
        kind, pb = outcome(lambda: hd.RecordFunction(expr, schema, name="f").partial_bounds(time_budget=budget / 2))
        if kind == "ok":
            for j, nm in enumerate(names):
                t, x = truth.sup(lo, hi, math.inf, j)
                if not t <= pb[nm].upper:
                    flag(f"{label} d/d{nm}", f"certified {pb[nm].upper!r} < truth {mpmath.nstr(t, 20)} at {list(map(float, x))}; "
                         f"{repro(expr, box_of(lo, hi))}")
        elif compare:
            with vertex_path_disabled():
                kind0, _ = outcome(lambda: hd.RecordFunction(expr, schema, name="f").partial_bounds(time_budget=budget / 2))
            if kind0 == "ok" or (kind == "crash" and kind0 != "crash"):
                flag(f"{label} partials {kind}", f"{pb} (path disabled: {kind0})")
    return taken


def make_schema(lo, hi):
    return hd.Schema({f"x{i}": (float(a), float(b)) for i, (a, b) in enumerate(zip(lo, hi, strict=True))})


def run_case(label, build, lo, hi, rng, budget=0.3, certs=True, partials=True, nsub=3, expect_detect=None):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    schema = make_schema(lo, hi)
    syms = schema.symbols()
    expr = build(syms)
    truth = Truth(expr, syms, rng)
    if expect_detect is not None:
        tape = Tape(list(syms))
        root = tape.add_output(expr)
        got = SlopeVertices.detect(tape, root) is not None
        if got and not expect_detect:
            flag(f"{label} detector", f"accepted a function that is not a fixed-weight network: {expr}")
        elif got != expect_detect:
            note(f"{label}: detector {'accepted' if got else 'refused'} {str(expr)[:100]} "
                 f"(expected {'accept' if expect_detect else 'refuse'}; conservative)")
    kind, r = outcome(lambda: check_vertex_alone(label, expr, syms, truth, lo, hi, rng, nsub=nsub))
    if kind != "ok":
        flag(f"{label} vertex bound {kind}", f"{r}; {repro(expr, box_of(lo, hi))}")
    if certs:
        check_certs(label, expr, schema, truth, lo, hi, budget=budget, partials=partials)


# ---------------------------------------------------------------------------------------- targeted
T, S, P = sp.tanh, hd.sigmoid, hd.softplus
R = sp.Rational


def pad(xs, k=5):
    """Enough extra affine terms to take the tape past certify's 40-node threshold (dense affine args)."""
    return [sum(R(((7 * i + 3 * j) % 11) - 5, 7) * x for j, x in enumerate(xs)) for i in range(k)]


def targeted(rng):
    print("== targeted cases", flush=True)
    c = []
    # max slope inside the box, small and large widths
    c.append(("tanh-at-0", lambda x: 3 * T(x[0]) - 2 * T(x[0] - x[1]) + T(2 * x[1] + R(1, 10)), [-0.5, -0.3], [0.4, 0.9]))
    c.append(("sigmoid-at-0", lambda x: 4 * S(x[0] + x[1]) - 3 * S(x[0] - x[1]), [-1, -1], [1, 1]))
    c.append(("softplus-mix", lambda x: P(3 * x[0]) - P(3 * x[0] - 1) + P(-x[1]), [-2, -1], [2, 3]))
    # cancellation: gradient 3 tanh^2 is 0 at the slope box's vertex s=1 only
    c.append(("direct-and-unit", lambda x: 3 * x[0] - 3 * T(x[0]), [-0.1], [0.25]))
    c.append(("direct-and-unit-2", lambda x: x[0] + x[1] - 4 * S(x[0] + x[1]) + 2 * P(x[0]), [-3, -1], [2, 1]))
    # a unit feeding two units that merge (slope on several paths, opposite signs)
    c.append(("diamond", lambda x: T(2 * T(x[0] + x[1]) + x[0]) - T(2 * T(x[0] + x[1]) - x[1]), [-1, -1], [1, 1]))
    c.append(("diamond-cancel", lambda x: 2 * T(3 * T(x[0]) + x[1]) - 2 * T(3 * T(x[0]) - x[1]) + 5 * T(x[0]), [-0.7, -0.2], [0.9, 0.3]))
    c.append(("tanh-chain", lambda x: T(T(T(T(3 * x[0] - x[1])))), [-1, -1], [1, 1]))
    c.append(("sig-of-tanh", lambda x: S(5 * T(x[0])) - P(-4 * T(x[0] + x[1])), [-2, -2], [2, 2]))
    c.append(("same-arg-two-acts", lambda x: 2 * T(x[0] - x[1]) - 8 * S(2 * x[0] - 2 * x[1]) + 4 * P(x[0] - x[1]), [-1, -1], [1, 1]))
    c.append(("output-is-unit", lambda x: T(3 * T(x[0]) - 2 * S(x[1]) + x[0]), [-1, -2], [1, 2]))
    c.append(("softplus-output", lambda x: P(5 * T(x[0] + x[1]) - 4 * x[0]), [-3, -3], [3, 3]))
    # weights: Floats, high-precision Floats, irrational constants, activations of constants
    c.append(("float-weights", lambda x: 0.1 * T(0.3 * x[0] - 0.7 * x[1]) + 1e-3 * S(1e3 * x[0]), [-1, -1], [1, 1]))
    c.append(("mp-float", lambda x: sp.Float("0.33333333333333333333333333333", 40) * T(sp.Float("3.0000000000000000000001", 40) * x[0]),
              [-1], [1]))
    c.append(("pi-E-weights", lambda x: sp.pi * T(sp.E * x[0]) - sp.E * T(sp.pi * x[0] + x[1]), [-1, -1], [1, 1]))
    c.append(("act-of-const-weight", lambda x: T(R(1, 3)) * x[0] + S(2) * T(x[1]) + T(x[0] + T(1)), [-1, -1], [1, 1]))
    # saturation and huge weights
    c.append(("huge-weight", lambda x: T(1e3 * x[0]) + 1e-3 * T(x[1]), [-1e-2, -1], [1e-2, 1]))
    c.append(("huge-weight-1e150", lambda x: R(10) ** -150 * T(R(10) ** 150 * x[0]), [-1e-140, -1], [1e-140, 1]))
    c.append(("huge-box", lambda x: 2 * T(x[0] - x[1]) + S(x[0]), [-1e300, -1e300], [1e300, 1e300]))
    c.append(("saturated-box", lambda x: 7 * T(x[0]) - 5 * S(x[1]) + P(x[0] - 700), [30, -800], [40, -700]))
    c.append(("softplus-far-negative", lambda x: R(10) ** 300 * P(x[0] - 740), [0, -1], [1, 1]))
    c.append(("softplus-far-negative-2", lambda x: R(10) ** 300 * P(x[0]) + x[1], [-745, -1], [-700, 1]))
    c.append(("sigmoid-subnormal", lambda x: R(10) ** 300 * S(x[0]), [-745.1, 0], [-700, 1]))
    c.append(("tiny-box", lambda x: 5 * T(x[0] + x[1]) - 3 * T(x[0]), [1e-300, -1e-300], [2e-300, 1e-300]))
    c.append(("width0", lambda x: 5 * T(x[0] + x[1]) - 3 * S(x[0]) + x[1], [0.3, -0.2], [0.3, 0.4]))
    c.append(("point-box", lambda x: 5 * T(x[0] + x[1]) - 3 * S(x[0]) + P(x[1]), [0.0, 0.0], [0.0, 0.0]))
    c.append(("subnormal-weight", lambda x: R(1, 2**1070) * T(x[0]) + R(1, 2**1073) * x[1], [-1, -1], [1, 1]))
    for label, build, lo, hi in c:
        run_case(label, build, lo, hi, rng, certs=False, expect_detect=True)
    # through the public API: the same shapes padded past the 40-node threshold
    print("== targeted cases through the public API (>= 40 tape nodes)", flush=True)
    api = []
    api.append(("api-direct-and-unit", lambda x: 3 * x[0] - 3 * T(x[0]) + sum(R(1, 50) * T(a) for a in pad(x, 4)),
                [-0.1, -0.2, 0.0], [0.25, 0.1, 0.05]))
    api.append(("api-diamond", lambda x: sum((T(2 * T(a) + x[0]) - T(2 * T(a) - x[1])) for a in pad(x, 3)), [-1, -1, -1], [1, 1, 1]))
    api.append(("api-chain", lambda x: T(T(T(sum(pad(x, 3))))) + S(T(x[0] - x[2])) * 3 - 2 * T(pad(x, 4)[3]), [-1, -0.5, 0], [1, 0.5, 0.2]))
    api.append(("api-output-unit", lambda x: S(sum(4 * T(a) for a in pad(x, 5))), [-1, -1, -1], [1, 1, 1]))
    api.append(("api-huge", lambda x: sum(R(1, 1000) * T(1000 * a) for a in pad(x, 5)), [-1e-3, -1e-3, -1e-3], [1e-3, 1e-3, 1e-3]))
    api.append(("api-float", lambda x: sum(0.37 * (-1) ** i * S(1.7 * a + 0.1) for i, a in enumerate(pad(x, 6))),
                [-2, -0.5, 1], [0, 0.5, 1]))
    api.append(("api-10-units", lambda x: sum(((-1) ** i) * T(a + R(i, 10)) for i, a in enumerate(pad(x, 10))), [-1, -1, -1], [1, 1, 1]))
    api.append(("api-11-units", lambda x: sum(((-1) ** i) * T(a + R(i, 10)) for i, a in enumerate(pad(x, 11))), [-1, -1, -1], [1, 1, 1]))
    api.append(("api-sat-box", lambda x: sum(3 * P(a) - 2 * T(a) for a in pad(x, 4)), [40, -60, 10], [50, -50, 30]))
    for label, build, lo, hi in api:
        run_case(label, build, lo, hi, rng, certs=True, nsub=2)


def detector_cases(rng):
    print("== detector: functions that are not fixed-weight networks", flush=True)
    c = []
    c.append(("product-of-units", lambda x: T(x[0]) * T(x[1]) + T(x[0] + x[1])))
    c.append(("unit-times-field", lambda x: x[0] * T(x[1]) + T(x[0])))
    c.append(("unit-feeds-unit-nonconst", lambda x: T(x[0] * T(x[1]))))
    c.append(("unit-squared", lambda x: T(x[0]) ** 2 + T(x[1])))
    c.append(("sigmoid-as-exp", lambda x: 1 / (1 + sp.exp(-x[0] - x[1])) + T(x[0])))
    c.append(("softplus-as-log", lambda x: sp.log(1 + sp.exp(x[0])) + T(x[1])))
    c.append(("abs-mixed", lambda x: sp.Abs(T(x[0])) + T(x[1])))
    c.append(("max-mixed", lambda x: sp.Max(T(x[0]), x[1]) + T(x[1])))
    c.append(("sqrt2-weight", lambda x: sp.sqrt(2) * T(x[0]) + T(x[1])))
    c.append(("field-squared-in-unit", lambda x: T(x[0] ** 2 - x[1])))
    c.append(("sigmoid-slope-product", lambda x: S(x[0]) * (1 - S(x[0])) + T(x[1])))
    c.append(("exp-weight-of-field", lambda x: sp.exp(x[0]) * T(x[1])))
    c.append(("division-by-unit", lambda x: 1 / (2 + T(x[0])) + T(x[1])))
    for label, build in c:
        run_case(label, build, [-1, -0.5], [1, 0.7], rng, certs=False, expect_detect=False)


# ------------------------------------------------------------------------------------------- sweep
ACTS = (T, S, P)


def weight(rng, scale, as_float):
    v = rng.normal() * scale
    if as_float:
        return sp.Float(float(v))
    return sp.Rational(str(np.round(v, 3 if scale < 10 else 0)))


def random_network(rng, n):
    xs = sp.symbols(f"x0:{n}", real=True)
    depth = int(rng.integers(1, 4))
    budget_units = int(rng.integers(1, 11))
    scale = float(rng.choice([0.5, 3.0, 50.0, 1e4], p=[0.4, 0.35, 0.15, 0.1]))
    as_float = bool(rng.random() < 0.3)
    skip = bool(rng.random() < 0.5)
    h = list(xs)
    all_units = []
    for layer in range(depth):
        left = budget_units - len(all_units)
        if left <= 0:
            break
        width = int(rng.integers(1, left + 1)) if layer < depth - 1 else left
        new = []
        for _ in range(width):
            z = sum(weight(rng, scale, as_float) * v for v in h if rng.random() < 0.8) + weight(rng, 0.5, as_float)
            if skip and layer > 0:
                z += sum(weight(rng, 0.5, as_float) * x for x in xs if rng.random() < 0.5)
            new.append(ACTS[int(rng.integers(0, 3))](z))
        all_units += new
        h = new if rng.random() < 0.7 else h + new  # sometimes a layer sees the previous ones too
    out = sum(weight(rng, 2.0, as_float) * v for v in h) + sum(weight(rng, 0.5, as_float) * x for x in xs if rng.random() < 0.3)
    if rng.random() < 0.15:
        out = ACTS[int(rng.integers(0, 3))](out)
    return out, xs, {"depth": depth, "units": len(all_units), "scale": scale, "floats": as_float, "skip": skip}


def random_box(rng, n):
    kind = int(rng.integers(0, 6))
    a = rng.uniform(-2, 1.5, n)
    if kind == 0:
        w = rng.uniform(0.05, 3, n)
    elif kind == 1:  # tiny
        w = np.full(n, 10.0 ** -rng.integers(6, 15))
    elif kind == 2:  # width-0 sides
        w = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.1, 2, n))
    elif kind == 3:  # asymmetric around 0
        a = -rng.uniform(0, 0.1, n)
        w = rng.uniform(0.5, 8, n)
    elif kind == 4:  # huge
        a = np.full(n, -float(10.0 ** rng.integers(2, 300)))
        w = -2 * a * rng.uniform(0.3, 1, n)
    else:  # far from 0 (saturated)
        a = rng.choice([-1, 1], n) * rng.uniform(5, 40, n)
        w = rng.uniform(0, 3, n)
    return a, a + w, kind


def sweep(rng, seconds):
    print(f"== random sweep ({seconds:.0f} s)", flush=True)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n = int(rng.integers(1, 5))
        expr, xs, info = random_network(rng, n)
        lo, hi, kind = random_box(rng, n)
        label = f"sweep#{STATS['sweep']} n={n} box{kind} {info}"
        STATS["sweep"] += 1
        schema = make_schema(lo, hi)
        syms = schema.symbols()
        expr = expr.subs(dict(zip(xs, syms, strict=True)))
        truth = Truth(expr, syms, rng, samples=60, search=2)
        k, r = outcome(lambda: check_vertex_alone(label, expr, syms, truth, lo, hi, rng, nsub=2))
        if k != "ok":
            flag(f"{label} vertex bound {k}", f"{r}; {repro(expr, box_of(lo, hi))}")
        elif r is False:
            tape = Tape(list(syms))
            root = tape.add_output(expr)
            h = sum(tape.nodes[i].op in ("tanh", "sigmoid", "softplus") for i in range(root + 1))
            if 1 <= h <= 10:  # a conservative refusal, not a bound below the truth: noted
                note(f"{label}: detector refused a fixed-weight network with {h} units: {str(expr)[:160]}")
        # through certify (and the >= 40-node objective) on a share of the cases
        if rng.random() < 0.25:
            check_certs(label, expr, schema, truth, lo, hi, budget=0.2, partials=rng.random() < 0.5, norms=(float(rng.choice(NORMS)),))


def budgets(rng):
    print("== time budgets", flush=True)
    lo, hi = np.array([-1.0, -1.0, -1.0]), np.array([1.0, 0.5, 2.0])
    schema = make_schema(lo, hi)
    x = schema.symbols()
    expr = sum(((-1) ** i) * [T, S, P][i % 3](a + R(i, 7)) for i, a in enumerate(pad(x, 9)))
    truth = Truth(expr, x, rng)
    for b in (0.0, 1e-4, 0.01):
        for p in NORMS:
            kind, cert = outcome(lambda: hd.RecordFunction(expr, schema, name="f").lipschitz(norm=p, time_budget=b))
            if kind == "ok":
                t, _ = truth.sup(lo, hi, p)
                if not t <= cert.upper:
                    flag(f"budget {b} K p={p}", f"certified {cert.upper!r} < truth {mpmath.nstr(t, 20)}")
                else:
                    print(f"[held] budget {b} K p={p}: {cert.upper:.6g} truth {float(t):.6g}")
            else:
                with vertex_path_disabled():
                    k0, _ = outcome(lambda: hd.RecordFunction(expr, schema, name="f").lipschitz(norm=p, time_budget=b))
                if k0 == "ok" or (kind == "crash" and k0 != "crash"):
                    flag(f"budget {b} K p={p} {kind}", f"{cert} (path disabled: {k0})")


def cost_note():
    """Per-box cost of the vertex path vs the rest of the objective (a note, not a violation)."""
    n, h = 8, 10
    lo, hi = -np.ones(n), np.ones(n)
    schema = make_schema(lo, hi)
    x = schema.symbols()
    expr = sum(((-1) ** i) * T(a) for i, a in enumerate(pad(x, h)))
    obj = GradientObjective(hd.RecordFunction(expr, schema, name="f"), 2.0)
    blo, bhi = np.tile(lo, (32, 1)), np.tile(hi, (32, 1))
    t = time.perf_counter()
    obj.enclose(blo, bhi)
    with_v = time.perf_counter() - t
    obj.vertices = None
    t = time.perf_counter()
    obj.enclose(blo, bhi)
    without = time.perf_counter() - t
    note(f"cost: one batch of 32 boxes, n={n}, h={h}: {with_v:.2f} s with the vertex path, {without:.3f} s without "
         f"({with_v / max(without, 1e-9):.0f}x). magnitudes() builds a dense (boxes*2^h, n) unit vector per field "
         f"(memory and time ~ n^2 * 2^h per box): measured 44 s and 2.2 GB for 512 boxes at n=20, h=10 (0.6 s without); "
         f"maximize's per-box cost estimate keeps batches inside the budget, so this is fewer boxes, not a hang")


def harness_has_teeth(rng):
    """The truths must catch a broken vertex bound (one vertex only: every slope at its upper end)."""
    lo, hi = np.array([-0.1, -0.3]), np.array([0.25, 0.2])
    schema = make_schema(lo, hi)
    x = schema.symbols()
    expr = 3 * x[0] - 3 * T(x[0]) + x[1] - 2 * S(4 * x[1])  # the upper slopes cancel the direct terms
    tape = Tape(list(x))
    sv = SlopeVertices.detect(tape, tape.add_output(expr))
    L, H, _ = IntervalEvaluator(tape).evaluate(lo[None, :], hi[None, :])
    _, s_hi = sv.slopes(L, H)
    g_lo, g_hi = sv.gradients(s_hi)
    broken = float(_norm_upper(np.maximum(np.abs(g_lo), np.abs(g_hi)).T, 2.0)[0])
    t, _ = Truth(expr, x, rng).sup(lo, hi, 2.0)
    if not t > broken:
        flag("harness", f"the truth {mpmath.nstr(t, 12)} does not catch the one-vertex bound {broken!r}")
    else:
        print(f"[teeth] one-vertex bound {broken:.6g} < truth {float(t):.6g}: caught")


def main() -> int:
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    harness_has_teeth(rng)
    targeted(rng)
    detector_cases(rng)
    budgets(rng)
    if not QUICK:
        cost_note()
    sweep(rng, SWEEP_SECONDS)
    dt = time.perf_counter() - t0
    print(f"\n{STATS['sweep']} random networks, {STATS['vertex_boxes']} vertex-bound boxes, {STATS['checks']} certificate checks "
          f"({STATS['detected']} with the vertex path taken) in {dt:.0f} s")
    for s in NOTES:
        print(f"note: {s}")
    if VIOLATIONS:
        print(f"{len(VIOLATIONS)} VIOLATIONS: " + ", ".join(VIOLATIONS))
        return 1
    print("no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
