"""Adversarial audit of the symmetry reduction in branch and bound (commit e0523ee).

Run: ``python bench/audits/attack_symmetry.py [--sweep N] [--seed S]`` (about a minute on 2 cores
by default). Prints each check; exits 1 if any violation is found (a certified bound below the
truth, a false symmetry claim, or a refusal/crash that the same call without the reduction does
not raise).

Ground truth never comes from the library: exact rationals (sympy ``Rational`` substitution) for
the closed-form suprema below, and, in the random sweep, a dense numpy grid whose best points are
re-evaluated at 50 digits in mpmath (a grid maximum is a LOWER bound of the supremum, so a
certificate below it is a proven violation). "Without the reduction" means
``opendp_hybridad.analysis.certify._symmetry`` monkeypatched to return ``[]``.

Finding (violation at e0523ee): the cycle argument in ``maximize``'s docstring assumes that a
split strictly shrinks ``W`` (the sum of side widths). It does not when the side being split is
one ulp wide: ``mid = 0.5 * (lo + hi)`` rounds (to even) onto one end, so one child IS the parent
box. Without the reduction the parent is re-pushed (a harmless loop); with it, the child's
canonical key is already in ``seen`` and the box is dropped, so every point of the parent except
its even-mantissa face leaves the partition. Boxes reach one ulp when the root box is within
2^40 ulps of its width (``_MIN_RELATIVE_WIDTH``) and the search does not converge (tolerance 0,
or an objective whose enclosures keep a gap above ``atol``). Through the public API
(``certify_range(tolerance=0)``) the witness then exceeds the lowered bound and the certificate
is refused with SoundnessError (it is certified without the reduction); through ``maximize``
with an objective that has no witness the bound is returned silently below the truth.
Fixed in the next commit: a side splits only where its rounded midpoint lies strictly inside it
(``tests/analysis/test_symmetry.py::test_a_one_ulp_side_is_never_split_onto_itself``); the audit
now exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import traceback
import warnings

import mpmath as mp
import numpy as np
import sympy as sp

warnings.filterwarnings("ignore")
np.seterr(all="ignore")

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.analysis import certify as C  # noqa: E402, N812
from opendp_hybridad.analysis.branch_and_bound import BoxBounds, maximize  # noqa: E402
from opendp_hybridad.analysis.symmetry import symmetric_groups  # noqa: E402

VIOLATIONS: list[str] = []
HELD: list[str] = []
NOTES: list[str] = []
_ORIGINAL_SYMMETRY = C._symmetry


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
    except Exception:  # an audit crash is reported, not silently passed
        print(f"ERROR in {check.__name__}:\n{traceback.format_exc()}")
        VIOLATIONS.append(f"[audit error] {check.__name__}")
    print(f"    [{check.__name__}: {time.time() - t0:.1f}s]")


class reduction:  # noqa: N801 - used as a lower-case context manager
    """Context manager: the symmetry reduction on (the library's) or off (``_symmetry`` -> [])."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        C._symmetry = _ORIGINAL_SYMMETRY if self.on else (lambda *a, **k: [])

    def __exit__(self, *exc):
        C._symmetry = _ORIGINAL_SYMMETRY


def _groups(fn, fixed=None):
    return symmetric_groups(fn.expr, list(fn.symbols), [fn.schema.fields[n] for n in fn.names], fixed)


def _attempt(call):
    try:
        return call(), None
    except Exception as exc:  # every refusal is compared with and without the reduction
        return None, exc


# -- 1. the one-ulp split: public API ---------------------------------------------------------------
def _ulp_function(X: float = 2.0**22, M: float = 1e6):
    """f = -|x0 - c| - |x1 - c| + (x2/3 - M) with c an odd-mantissa double, x2 fixed at 3M: sup f = 0 exactly."""
    u = math.ulp(X)
    c = X + 0.25 + u
    schema = hd.Schema({"x0": (X, X + 1.0), "x1": (X, X + 1.0), "x2": (3 * M, 3 * M)})
    x0, x1, x2 = schema.symbols()
    cr = sp.Rational(c)
    expr = -sp.Abs(x0 - cr) - sp.Abs(x1 - cr) + x2 / 3 - sp.Rational(M)
    # the truth, exactly: both absolute values vanish at (c, c), inside the box; x2/3 - M = 0
    truth = expr.xreplace({x0: cr, x1: cr, x2: sp.Rational(3 * M)})
    assert truth == 0 and all(-sp.Abs(s - cr) <= 0 for s in (x0, x1))
    return schema, expr, sp.Rational(truth), c


def check_one_ulp_split_public() -> None:
    schema, expr, truth, c = _ulp_function()
    out = {}
    for on in (True, False):
        with reduction(on):
            fn = hd.RecordFunction(expr, schema, name="f")
            out[on] = _attempt(lambda fn=fn: C.certify_range(fn, tolerance=0.0, time_budget=1.0))
    (with_cert, with_err), (without_cert, without_err) = out[True], out[False]
    repro = (f"schema x0, x1 in [2^22, 2^22 + 1], x2 in [3e6, 3e6]; f = -|x0 - c| - |x1 - c| + x2/3 - 10^6, "
             f"c = {c!r} (= 2^22 + 0.25 + ulp, an odd mantissa, as an exact Rational); "
             "certify_range(fn, tolerance=0.0, time_budget=1.0)")
    if without_err is None and without_cert.upper < truth:
        violated("high", "the range without the reduction is below the truth (not this commit)",
                 f"{repro}: upper {without_cert.upper!r} < exact sup {truth}")
    if with_err is not None and without_err is None:
        violated("high", "the one-ulp split drops a box: range refused (SoundnessError) only with the reduction",
                 f"{repro}: with the reduction {type(with_err).__name__}: {str(with_err)[:160]}; without it upper = "
                 f"{without_cert.upper!r} >= exact sup {truth} (exact: f(c, c) = 0 by Rational substitution)")
    elif with_err is None and with_cert.upper < truth:
        violated("critical", "the range with the reduction is below the truth",
                 f"{repro}: upper {with_cert.upper!r} < exact sup {truth}")
    elif with_err is not None:
        note("one-ulp case refused both with and without the reduction", f"{with_err!r} / {without_err!r}")
    else:
        held("one-ulp range case", f"with {with_cert.upper!r}, without {without_cert.upper!r}, truth {truth}")


# -- 2. the one-ulp split: maximize returns a bound below the truth, silently -----------------------
class _NoWitness:
    """The range objective of ``fn`` with every point value withheld (-inf): the bound alone is tested.

    Every enclosure is still proven; only the witness search (and so the safety net and the stopping
    rule) is disabled. ``maximize`` must still return ``>= sup f``: its certified answer is the
    maximum over the partition, whatever the witness."""

    def __init__(self, fn):
        self.inner = C.RangeObjective(fn, +1.0)

    def enclose(self, lo, hi):
        b = self.inner.enclose(lo, hi)
        return BoxBounds(b.upper, b.bad, b.split_score, np.full(lo.shape[0], -np.inf), b.shrink)

    def value(self, points):
        return np.full(points.shape[0], -np.inf)

    def lower_bound(self, points):
        return np.full(points.shape[0], -np.inf)

    def explain(self, bad):
        return self.inner.explain(bad)


def check_one_ulp_split_maximize() -> None:
    schema, expr, truth, _ = _ulp_function()
    fn = hd.RecordFunction(expr, schema, name="f")
    lo, hi = C._box_arrays(fn)
    groups = _groups(fn)
    res_with = maximize(_NoWitness(fn), lo, hi, tolerance=0.0, time_budget=1.0, symmetric=groups)
    res_without = maximize(_NoWitness(fn), lo, hi, tolerance=0.0, time_budget=1.0)
    repro = ("maximize(objective, lo, hi, tolerance=0.0, time_budget=1.0, symmetric=[[0, 1]]) with the objective "
             "RangeObjective(fn, +1) of check 1's f, its witnesses withheld (enclosures unchanged)")
    if res_without.upper < truth:
        violated("high", "maximize without the reduction below the truth (not this commit)", f"{res_without.upper!r}")
    if res_with.upper < truth:
        violated("critical", "maximize with the reduction returns a bound below the truth (a dropped one-ulp box)",
                 f"{repro}: groups {groups}; upper {res_with.upper!r} < exact sup {truth} (f(c, c) = 0, exact); "
                 f"without the reduction {res_without.upper!r}")
    else:
        held("maximize one-ulp case", f"with {res_with.upper!r}, without {res_without.upper!r}")


# -- 3. false symmetry claims -----------------------------------------------------------------------
def _claims_hold(fn, groups, rng, points: int = 40) -> str | None:
    """Each claimed transposition checked at random points at 50 digits: f(x) == f(Px)."""
    syms = list(fn.symbols)
    f = sp.lambdify(syms, fn.expr, modules="mpmath")
    bounds = fn.schema.bounds()
    with mp.workdps(50):
        for _ in range(points):
            x = [mp.mpf(float(rng.uniform(lo, hi))) if hi > lo else mp.mpf(lo) for lo, hi in bounds]
            for g in groups:
                for k in g[1:]:
                    y = list(x)
                    y[g[0]], y[k] = y[k], y[g[0]]
                    try:
                        a, b = f(*x), f(*y)
                    except (ZeroDivisionError, ValueError, TypeError):
                        continue
                    if abs(a - b) > mp.mpf(10) ** -40 * (1 + abs(a)):
                        return f"f{tuple(float(v) for v in x)} = {mp.nstr(a, 15)} but with fields {g[0]}<->{k} {mp.nstr(b, 15)}"
    return None


def check_false_symmetry() -> None:
    rng = np.random.default_rng(7)
    box = {"a": (-1.0, 2.0), "b": (-1.0, 2.0), "c": (-1.0, 2.0)}
    texts = [
        "where(a > b, a, b) + c",                       # Max in disguise: symmetric in a, b
        "where(a > 0, b, c)",                           # not symmetric
        "where(a > b, a - b, 0) + c",                   # not symmetric (a-b vs b-a)
        "max(a, b) - min(a, c)",
        "abs(a - b) + c**2",                            # symmetric a, b
        "sqrt(a + 1) + sqrt(b + 1.0) + c",
        "Piecewise((a, a > b), (b, True)) * c",
        "clip(a, b, c)",
        "sigmoid(a - b) + sigmoid(b - a)",              # = 1: symmetric in a, b
        "softplus(a) - softplus(b)",                    # antisymmetric
        "log(exp(a) + exp(b) + exp(c))",
        "a * b * c + a",
        "tanh(a) * tanh(b) - tanh(c)",
        "(a + 1)**1.5 + (b + 1)**1.5",
    ]
    for t in texts:
        schema = hd.Schema(box)
        fn = hd.RecordFunction(t, schema, name="f")
        groups = _groups(fn)
        bad = _claims_hold(fn, groups, rng) if groups else None
        if bad:
            violated("critical", f"false symmetry claim for {t!r}", f"groups {groups}; {bad}")
    # assumptions: bounds 0.0 vs -0.0 (Field == compares equal: same assumptions?)
    s = hd.Schema({"a": (0.0, 1.0), "b": (-0.0, 1.0)})
    a, b = s.symbols()
    fn = hd.RecordFunction(sp.sqrt(a**2) + sp.sqrt(b**2), s)
    groups = _groups(fn)
    if groups and a.assumptions0 != b.assumptions0:
        violated("high", "fields with different sign assumptions grouped", f"{a.assumptions0} vs {b.assumptions0}")
    bad = _claims_hold(fn, groups, rng) if groups else None
    if bad:
        violated("critical", "false symmetry claim (0.0 vs -0.0 bounds)", bad)
    # a symbol created elsewhere with other assumptions is replaced by the schema's
    s = hd.Schema({"a": (-1.0, 1.0), "b": (-1.0, 1.0)})
    pa, pb = sp.Symbol("a", positive=True), sp.Symbol("b")
    fn = hd.RecordFunction(sp.sqrt(pa**2) + sp.Abs(pb), s)  # sqrt(a**2) -> a before the schema's symbols
    groups = _groups(fn)
    bad = _claims_hold(fn, groups, rng) if groups else None
    if bad:
        violated("critical", "false symmetry claim (foreign assumptions)", f"{fn.expr}: {bad}")
    else:
        note("foreign positive symbol", f"declared as {fn.expr} (sympy folded sqrt(a**2) to a before rebinding; "
             f"not a symmetry issue), groups {groups}")
    # a partial's own field is never in a group
    fn = hd.RecordFunction("a*b + b*c + a*c", hd.Schema(box))
    for j in range(3):
        if any(j in g for g in _groups(fn, j)):
            violated("critical", "a partial's own field is grouped", f"j={j}: {_groups(fn, j)}")
    held("symmetry claims checked at 50 digits", f"{len(texts) + 3} expressions")


# -- 4. targeted certificates against exact truths --------------------------------------------------
def _certs(expr_build, box, kinds=("range", "K2", "K1", "Kinf", "partials"), budget=0.4):
    """Each certificate with and without the reduction: {kind: ((value, err) with, (value, err) without)}."""
    out = {}
    for on in (True, False):
        with reduction(on):
            schema = hd.Schema(box)
            fn = hd.RecordFunction(expr_build(*schema.symbols()), schema, name="f")
            for k in kinds:
                if k == "range":
                    call = lambda fn=fn: (lambda r: (float(r.lower), float(r.upper)))(  # noqa: E731
                        C.certify_range(fn, time_budget=budget))
                elif k.startswith("K"):
                    p = {"K1": 1.0, "K2": 2.0, "Kinf": math.inf}[k]
                    call = lambda fn=fn, p=p: C.certify_lipschitz(fn, norm=p, time_budget=budget).upper  # noqa: E731
                else:
                    call = lambda fn=fn: [C.certify_partial(fn, j, time_budget=budget / 2).upper  # noqa: E731
                                          for j in range(len(fn.names))]
                out.setdefault(k, {})[on] = _attempt(call)
    return fn, out


def _truths_mp(fn, grid: int, rng) -> dict[str, object]:
    """Lower bounds of each supremum: a dense grid in float, its best points re-evaluated at 50 digits."""
    syms = list(fn.symbols)
    n = len(syms)
    grad = [sp.diff(fn.expr, s) for s in syms]
    f_np = sp.lambdify(syms, fn.expr, modules="numpy")
    g_np = sp.lambdify(syms, grad, modules="numpy")
    f_mp = sp.lambdify(syms, fn.expr, modules="mpmath")
    g_mp = sp.lambdify(syms, grad, modules="mpmath")
    bounds = fn.schema.bounds()
    axes = [np.linspace(lo, hi, grid) if hi > lo else np.array([lo]) for lo, hi in bounds]
    pts = np.array(list(itertools.product(*axes)))
    pts = np.vstack([pts, np.array([[rng.uniform(lo, hi) for lo, hi in bounds] for _ in range(2000)])])
    cols = [pts[:, i] for i in range(n)]
    fv = np.broadcast_to(np.asarray(f_np(*cols), dtype=float), (pts.shape[0],))
    gv = np.array([np.broadcast_to(np.asarray(g, dtype=float), (pts.shape[0],)) for g in g_np(*cols)])
    measures = {
        "max": fv, "-min": -fv,
        "K2": np.sqrt((gv**2).sum(axis=0)), "K1": np.abs(gv).sum(axis=0), "Kinf": np.abs(gv).max(axis=0),
    }
    for j in range(n):
        measures[f"d{j}"] = np.abs(gv[j])
    truths = {}
    with mp.workdps(50):
        for name, v in measures.items():
            v = np.where(np.isfinite(v), v, -np.inf)
            best = mp.mpf("-inf")
            for i in np.argsort(-v)[:4]:
                x = [mp.mpf(float(t)) for t in pts[i]]
                try:
                    if name in ("max", "-min"):
                        val = f_mp(*x) * (1 if name == "max" else -1)
                    else:
                        g = [mp.mpf(e) for e in g_mp(*x)]
                        if name == "K2":
                            val = mp.sqrt(mp.fsum(e**2 for e in g))
                        elif name == "K1":
                            val = mp.fsum(abs(e) for e in g)
                        elif name == "Kinf":
                            val = max(abs(e) for e in g)
                        else:
                            val = abs(g[int(name[1:])])
                except (ZeroDivisionError, ValueError, TypeError):
                    continue
                if mp.isfinite(val) and val > best:
                    best = val
            truths[name] = best
    return truths


def _compare(label: str, fn, out, truths) -> None:
    for kind, res in out.items():
        (vw, ew), (_, eo) = res[True], res[False]
        if ew is not None and eo is None:
            violated("high", f"{label}: {kind} refused only with the reduction", f"{type(ew).__name__}: {str(ew)[:160]}")
            continue
        if ew is not None:
            continue
        if eo is not None:
            note(f"{label}: {kind} refused only WITHOUT the reduction", f"{type(eo).__name__}: {str(eo)[:120]}")
        with mp.workdps(50):
            if kind == "range":
                lo, hi = vw
                if mp.mpf(hi) < truths["max"] or -mp.mpf(lo) < truths["-min"]:
                    violated("critical", f"{label}: range below the truth",
                             f"[{lo!r}, {hi!r}] vs grid max {mp.nstr(truths['max'], 20)}, min {mp.nstr(-truths['-min'], 20)}")
            elif kind.startswith("K"):
                if mp.mpf(vw) < truths[kind]:
                    violated("critical", f"{label}: {kind} below the truth", f"{vw!r} < {mp.nstr(truths[kind], 20)}")
            else:
                for j, v in enumerate(vw):
                    if mp.mpf(v) < truths[f"d{j}"]:
                        violated("critical", f"{label}: partial {j} below the truth",
                                 f"{v!r} < {mp.nstr(truths[f'd{j}'], 20)}")


TARGETED = [
    # (label, builder, box)
    ("partial of a field outside the group", lambda a, b, c: a * sp.exp(b) + a * sp.exp(c) + 3 * a**2,
     {"a": (-1.0, 2.0), "b": (-1.0, 1.0), "c": (-1.0, 1.0)}),
    ("partial inside a group (fixed excluded)", lambda a, b, c: sp.exp(a) * b**2 + sp.exp(b) * a**2 + c * (a + b),
     {"a": (-1.0, 1.0), "b": (-1.0, 1.0), "c": (-1.0, 1.0)}),
    ("unused fields grouped", lambda a, b, c, d: sp.tanh(3 * a) * (a - 0.2),
     {"a": (-1.0, 1.0), "b": (-1.0, 1.0), "c": (-1.0, 1.0), "d": (-1.0, 1.0)}),
    ("zero-width group", lambda a, b, c: (a - b) ** 2 + sp.Abs(c - a) + sp.Abs(c - b),
     {"a": (0.5, 0.5), "b": (0.5, 0.5), "c": (-1.0, 1.0)}),
    ("kinks off the split grid", lambda a, b, c: -sp.Abs(a - sp.Rational(1, 3)) - sp.Abs(b - sp.Rational(1, 3))
     - sp.Abs(c - sp.Rational(1, 3)), {"a": (-1.0, 1.0), "b": (-1.0, 1.0), "c": (-1.0, 1.0)}),
    ("max/min of a group", lambda a, b, c: sp.Max(a, b, c) - sp.Min(a, b, c) + a * b * c,
     {"a": (-1.0, 2.0), "b": (-1.0, 2.0), "c": (-1.0, 2.0)}),
    ("huge box", lambda a, b: sp.Rational(1, 10**300) * (a + b) + sp.tanh(a * 1e-300) * sp.tanh(b * 1e-300),
     {"a": (-1e300, 1e300), "b": (-1e300, 1e300)}),
    ("positive symbols, sqrt", lambda a, b, c: sp.sqrt(a * b) + sp.sqrt(b * c) + sp.sqrt(a * c),
     {"a": (0.01, 2.0), "b": (0.01, 2.0), "c": (0.01, 2.0)}),
    ("non-dyadic box ends", lambda a, b: sp.exp(-(a - sp.Rational(1, 7)) ** 2 * 30) + sp.exp(-(b - sp.Rational(1, 7)) ** 2 * 30),
     {"a": (-0.1, 0.3000000000000001), "b": (-0.1, 0.3000000000000001)}),
    ("where of symmetric branches", lambda a, b: sp.Piecewise((a * b + a, a > b), (a * b + b, True)),
     {"a": (-1.0, 1.0), "b": (-1.0, 1.0)}),
]


def check_targeted() -> None:
    rng = np.random.default_rng(11)
    for label, build, box in TARGETED:
        fn, out = _certs(build, box)
        groups = _groups(fn)
        truths = _truths_mp(fn, 25 if len(box) <= 3 else 9, rng)
        _compare(label, fn, out, truths)
        print(f"    {label}: groups {groups}")
    held("targeted certificates", f"{len(TARGETED)} functions x range, K_1/2/inf, partials")


# -- 5. random sweep ----------------------------------------------------------------------------------
def _random_symmetric(rng, n: int, syms):
    """A random expression symmetric in all of ``syms`` (sum / product / logsumexp / max of g(x_i), plus
    pairwise terms), sometimes broken on purpose in one field."""
    unary = [lambda x: x**2, lambda x: sp.tanh(2 * x), lambda x: sp.Abs(x - sp.Rational(1, 3)), lambda x: sp.exp(x),
             lambda x: sp.sqrt(x**2 + 1), lambda x: sp.Max(x, sp.Rational(-1, 5)), lambda x: x**3 - x]
    g = unary[rng.integers(len(unary))]
    kind = rng.integers(5)
    if kind == 0:
        e = sum(g(x) for x in syms)
    elif kind == 1:
        e = sp.log(sum(sp.exp(g(x)) for x in syms))
    elif kind == 2:
        e = sp.Max(*[g(x) for x in syms]) + sum(syms) / 3
    elif kind == 3:
        e = sum(g(x) * g(y) for x, y in itertools.combinations(syms, 2))
    else:
        e = sp.sqrt(sum(g(x) ** 2 for x in syms) + 1) * sp.tanh(sum(syms))
    if rng.random() < 0.3:
        e = e + sp.Rational(int(rng.integers(1, 4)), 2) * syms[0] ** 2  # breaks the symmetry in x0
    return e


def check_random_sweep(count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    done = 0
    for trial in range(count):
        n = int(rng.integers(2, 4))
        lo = float(rng.choice([-1.0, -0.5, 0.0, 0.25]))
        hi = lo + float(rng.choice([0.5, 1.0, 1.7, 3.0]))
        box = {f"x{i}": (lo, hi) for i in range(n)}
        seed_expr = int(rng.integers(1 << 30))

        def build(*xs, seed_expr=seed_expr):
            return _random_symmetric(np.random.default_rng(seed_expr), len(xs), xs)

        kinds = ("range", str(rng.choice(["K1", "K2", "Kinf"])), "partials")
        fn, out = _certs(build, box, kinds=kinds, budget=0.25)
        truths = _truths_mp(fn, 41 if n == 2 else 15, rng)
        before = len(VIOLATIONS)
        _compare(f"sweep #{trial} f = {fn.expr} over {box}", fn, out, truths)
        if len(VIOLATIONS) > before:
            print(f"    reproducer: seed {seed}, trial {trial}")
        done += 1
    held("random sweep", f"{done} symmetric (or deliberately broken) functions, range + one K + partials, "
         "with and without the reduction, against 50-digit grid truths")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", type=int, default=40, help="random functions in the sweep")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    t0 = time.time()
    run(check_one_ulp_split_public)
    run(check_one_ulp_split_maximize)
    run(check_false_symmetry)
    run(check_targeted)
    run(lambda: check_random_sweep(args.sweep, args.seed))
    print(f"\n{len(VIOLATIONS)} violation(s), {len(HELD)} held, {len(NOTES)} note(s) in {time.time() - t0:.1f}s")
    for v in VIOLATIONS:
        print("  " + v)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
