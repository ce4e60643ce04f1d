"""Adversarial audit of the Lagrangian bound of outer functions of separable sums (analysis/separable.py, commit 35a67d7).

Run: ``python bench/audits/attack_separable.py`` (about two minutes on 2 cores). Prints each check with the
claimed and the observed number; exits 1 if a certified bound is below a proven lower bound of the truth.

The claim under attack: for ``f = psi(c + sum_j phi_j(x_j))`` (each term holds one field) over the declared
box, ``separable_bound(fn, find_separable(fn)).upper >= sup ||grad f||_2``, and the certificate
``fn.lipschitz()`` (which takes that number as ``maximize(cap=...)``) stays ``>= sup ||grad f||_2``.

Ground truth never uses the library's analysis: sympy's own gradient of ``fn.expr``, lambdified to mpmath and
evaluated at 60 digits (and again at 120: a candidate violation must hold at both) at points chosen here
(vertices, random points, special values, scipy L-BFGS-B maxima of the float gradient norm); every such value
is a lower bound of the supremum. Where the expression holds a constant with deep cancellation, the truth is
taken at 700 digits at a point where it is known in closed form.

Finding (violation): ``separable_bound`` encloses the constant ``c`` of the sum with
``tape.exact_interval(s.constant)``. ``c`` is the *sum* of the field-free arguments (an ``Add``), and
``exact_interval`` gives any non-rational constant ``sympy.N(value, 30)`` widened by one ulp each way. sympy's
``N`` loses every digit when the constant's terms cancel beyond its working precision (about 150 digits):
for ``c = exp(400 + 10^-300) - exp(400)`` (truth ``5.2e-127``) it returns ``-0.e+10`` and the enclosure is
``[-8589934592.000002, -8589934591.999999]``. The tape itself never does this (it lowers a constant
expression op by op and only encloses literal numbers), so the general path is sound and wide, and
``_composed`` refuses an irrational constant; only the separable path (and its cap) sees the wrong ``c``.
So ``tanh(x + y + exp(400 + 10^-300) - exp(400))`` on ``[-1, 1]^2`` gets the certificate ``4.07e-14``
while ``||grad f(0, 0)||_2 = sqrt(2)``. The same call hangs the certificate (past any time budget, memory
growing) when ``N`` returns a number whose exact rational is astronomically large or small:
``exp(-exp(k))`` as the constant costs ``e^k`` work in ``sympy.Rational(N(...))`` (3.4 s at k = 20, never
returns at k = 40). ``separable.partial_function`` (the separable partials of e9e823e, if present) has the same
``exact_interval(s.constant)`` and its partial bounds fail the same way; ``tape.py``'s ``powr`` lowering of a
constant non-rational exponent (``x**(2 + c)``) calls ``exact_interval`` on a compound constant too (a
pre-existing violation of the general path, reported separately).

Sections:
  A. the constant: exact_interval on cancelling constants against 1500-digit values; the certificate, the
     bound, the partial bounds (e9e823e) and the general path's powr on those constants.
  B. cost: exact_interval / ``_separable`` / the certificate with ``exp(-exp(k))`` as the constant (one run in
     a subprocess under a timeout and a memory cap), and ``_separable`` on 40-200 fields of distinct terms.
  C. detection: shapes that must be refused (two-field terms, fields outside the sum, the sum under a kink or
     a conditional, a sum next to a larger sum) and accepted shapes (numbers distributed over the sum, the sum
     used twice, in an exponent, as its own power, unused fields, float / high-precision / irrational /
     huge constants, point and one-ulp intervals, shared classes, sign changes of psi', 1/t, log and sqrt near 0)
     with each bound and certificate against the truth.
  D. floating point: boxes up to +-1e308, subnormal boxes, terms near 1e300, constants near the float range;
     any exception other than the library's own is a bug.
  E. random shapes (12 outer functions, 11 term families, point / 1e-9 / wide intervals) with PIECES and
     SUB_INTERVALS at (1024, 1024), (1, 1), (3, 2), (2, 64), (7, 3).
  F. many fields: logsumexp in 40 and 100 fields against its closed form, 40 fields of distinct terms and
     intervals against vertex samples and L-BFGS-B maxima.
  G. wiring: a fake (too small) separable bound reaches the 2-norm certificate only, not the 1-norm, inf-norm or
     committed partial certificates; ``maximize`` refuses a cap below a proven witness (its safety net).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time
import traceback
import warnings

import mpmath as mp
import numpy as np
import sympy as sp
from scipy.optimize import minimize

warnings.filterwarnings("ignore")
np.seterr(all="ignore")

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.analysis import certify, separable  # noqa: E402
from opendp_hybridad.analysis.branch_and_bound import maximize  # noqa: E402
from opendp_hybridad.analysis.certify import GradientObjective  # noqa: E402
from opendp_hybridad.analysis.tape import exact_interval  # noqa: E402
from opendp_hybridad.errors import HybridADError, SoundnessError  # noqa: E402

R = sp.Rational
VIOLATIONS: list[str] = []
HELD: list[str] = []
NOTES: list[str] = []
#: the cancelling constant of the finding: exp(400 + 10^-300) - exp(400) = 5.2e-127
C400 = sp.exp(400 + R(1, 10**300)) - sp.exp(400)
_MP_NS = {"sigmoid": lambda x: 1 / (1 + mp.exp(-x)), "softplus": lambda x: mp.log(1 + mp.exp(x))}
_NP_NS = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softplus": lambda x: np.logaddexp(0, x)}


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
    except Exception:  # an audit crash is reported, not hidden
        print(f"ERROR in {check.__name__}:\n{traceback.format_exc()}")
        VIOLATIONS.append(f"[audit error] {check.__name__}")
    print(f"    [{check.__name__}: {time.time() - t0:.1f}s]")


def short(expr, n: int = 90) -> str:
    text = str(expr)
    return text if len(text) <= n else text[:n] + "..."


# -- ground truth -------------------------------------------------------------------------------------------
class Truth:
    """``||grad f||_2`` from sympy's own derivatives: mpmath at chosen points (lower bounds of the supremum)."""

    def __init__(self, fn):
        self.syms = list(fn.symbols)
        grads = [sp.diff(fn.expr, s) for s in self.syms]
        self.g_mp = sp.lambdify(self.syms, grads, modules=[_MP_NS, "mpmath"])
        try:
            self.sq_np = sp.lambdify(self.syms, sum(g**2 for g in grads), modules=[_NP_NS, "numpy"])
        except Exception:
            self.sq_np = None
        b = fn.schema.bounds()
        self.lo = np.array([v[0] for v in b], dtype=float)
        self.hi = np.array([v[1] for v in b], dtype=float)

    def at(self, point, dps: int = 60) -> mp.mpf:
        with mp.workdps(dps):
            try:
                g = self.g_mp(*[mp.mpf(float(v)) for v in point])
            except (ZeroDivisionError, ValueError, OverflowError):
                return mp.mpf(0)
            val = mp.sqrt(mp.fsum(mp.mpf(0) + c**2 for c in g))
            if isinstance(val, mp.mpc) or not mp.isfinite(val):
                return mp.mpf(0)
            return +val

    def confirmed(self, point) -> mp.mpf:
        """The value at 60 and 120 digits; the smaller (a value that moves with the precision is not trusted)."""
        return min(self.at(point, 60), self.at(point, 120))

    def _float_sq(self, pts: np.ndarray) -> np.ndarray:
        if self.sq_np is None:
            return np.zeros(len(pts))
        try:
            with np.errstate(all="ignore"):
                v = np.asarray(self.sq_np(*pts.T), dtype=float) * np.ones(len(pts))
        except Exception:
            return np.zeros(len(pts))
        return np.where(np.isfinite(v), v, -np.inf)

    def search(self, rng: np.random.Generator, samples: int = 1500, polish: int = 5, extra=()) -> tuple[mp.mpf, np.ndarray]:
        lo, hi, n = self.lo, self.hi, len(self.lo)
        pts = [lo + np.array(c) * (hi - lo) for c in itertools.product((0, 1), repeat=n)] if n <= 8 else \
            [lo + rng.integers(0, 2, n) * (hi - lo) for _ in range(256)]
        pts += [lo + rng.random(n) * (hi - lo) for _ in range(samples)]
        pts += [np.clip(np.full(n, c), lo, hi) for c in (0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0)]
        pts += [np.clip(rng.normal(0, 2, n), lo, hi) for _ in range(200)]
        pts += [np.clip(np.asarray(p, dtype=float), lo, hi) for p in extra]
        P = np.array(pts)
        v = self._float_sq(P)
        order = np.argsort(-v)[:polish]
        cands = [P[i] for i in order] + [P[i] for i in range(min(len(P), 2**min(n, 8)))]
        if self.sq_np is not None:
            for i in order:
                try:
                    r = minimize(lambda z: -float(self.sq_np(*z)), P[i], bounds=list(zip(lo, hi, strict=True)), method="L-BFGS-B",
                                 options={"maxiter": 200})
                    cands.append(np.clip(r.x, lo, hi))
                except Exception:
                    pass
        best, where = mp.mpf(0), P[0]
        for p in cands:
            val = self.at(p, 60)
            if val > best:
                best, where = val, p
        return self.confirmed(where), where


def lib_bound(fn):
    """``(SeparableSum or None, SeparableBound or None, seconds)``; an exception other than the library's is re-raised."""
    t0 = time.perf_counter()
    found = separable.find_separable(fn)
    bound = separable.separable_bound(fn, found) if found is not None else None
    return found, bound, time.perf_counter() - t0


def lib_cert(fn, **kw):
    """The 2-norm certificate's upper bound, or the name of the library's refusal."""
    try:
        return fn.lipschitz(time_budget=kw.pop("time_budget", 0.6), **kw).upper
    except HybridADError as exc:
        return f"refused ({type(exc).__name__})"


def judge(label: str, fn, truth: mp.mpf, point, bound=None, cert=None, severity: str = "critical") -> bool:
    """Compare each given claim with the truth; a claim below it is a violation."""
    ok = True
    for name, claim in (("separable_bound", bound), ("certificate", cert)):
        if isinstance(claim, float) and truth > claim:
            ok = False
            violated(severity, f"{name} below the truth: {label}",
                     f"f = {short(fn.expr, 160)} over {fn.schema!r}: {name} {claim!r} < truth {mp.nstr(truth, 12)} "
                     f"at x = {np.asarray(point).tolist()}")
    return ok


# -- A. the constant ------------------------------------------------------------------------------------------
def section_a() -> None:
    print("A. the constant c of the sum: exact_interval(s.constant) on a compound constant")
    constants = [C400, sp.exp(10 + R(1, 10**170)) - sp.exp(10), sp.exp(R(1, 10**200)) - 1, sp.sqrt(10**400 + 1) - 10**200,
                 sp.pi - R(str(sp.N(sp.pi, 400)).replace(".", ""), 10**399), sp.pi + sp.E, sp.sqrt(2) - R(14142, 10**4)]
    wrong = []
    refused = []
    for c in constants:
        try:
            lo, hi = exact_interval(c)
        except HybridADError:  # a refusal (the constant cannot be enclosed in finite floats) is sound
            refused.append(short(c, 50))
            continue
        with mp.workdps(1500):
            true = sp.N(c, 60, maxn=3000)
        if not (sp.Float(lo, 60) <= true <= sp.Float(hi, 60)):
            wrong.append(f"{short(c, 50)}: [{lo!r}, {hi!r}] vs {sp.N(true, 6)}")
    if wrong:
        violated("critical", "exact_interval misses a constant", "; ".join(wrong))
    print("    exact_interval misses the constant:\n      " + "\n      ".join(wrong) if wrong else
          f"held: exact_interval encloses {len(constants) - len(refused)} compound constants (refused: {refused})")

    # the certificate: the wrong c moves psi' = sech^2 far from its peak, and the cap takes the wrong number
    box = hd.Schema(x=(-1, 1), y=(-1, 1))
    x, y = box.symbols()
    for label, expr, point in (("tanh(x + y + C400)", sp.tanh(x + y + C400), [0.0, 0.0]),
                               ("tanh(x^3 + y^3 + C400)", sp.tanh(x**3 + y**3 + C400), [1.0, 1.0])):
        fn = box.function(expr)
        _, bound, _ = lib_bound(fn)
        cert = lib_cert(fn, time_budget=1.0)
        truth = Truth(fn).at(point, 700)  # sqrt(2) sech^2(c) at (0, 0); 3 sqrt(2) sech^2(2 + c) at (1, 1)
        judge(label, fn, truth, point, bound.upper if bound else None, cert)
        print(f"    {label}: separable {bound.upper if bound else None!r}, certificate {cert!r}, truth {mp.nstr(truth, 10)} at {point}")
    # without the cap the same certificate is sound: the cap is what breaks it
    fn = box.function(sp.tanh(x + y + C400))
    saved = certify._separable
    certify._separable = lambda fn: None
    try:
        plain = lib_cert(fn, time_budget=1.0)
    finally:
        certify._separable = saved
    print(f"    the same certificate without the separable cap: {plain!r} (sound)")

    # the bound alone (the certificate refuses: the tape cannot prove c > 0)
    box2 = hd.Schema(x=(0, 1), y=(0, 1))
    x2, y2 = box2.symbols()
    fn = box2.function(sp.sqrt(sp.exp(R(1, 10**200)) - 1 + x2 + y2))
    _, bound, _ = lib_bound(fn)
    truth = Truth(fn).at([0.0, 0.0], 700)
    judge("sqrt(exp(10^-200) - 1 + x + y) (the bound alone; the certificate refuses)", fn, truth, [0.0, 0.0],
          bound.upper if bound else None, None, severity="high")

    # the separable partials (e9e823e, after the commit under audit): the same exact_interval(s.constant)
    if hasattr(separable, "partial_function"):
        fn = box.function(sp.tanh(x + y + C400))
        try:
            parts = fn.partial_bounds(time_budget=1.0)
            ups = {k: v.upper for k, v in parts.items()}
        except HybridADError as exc:
            ups = {"x": f"refused ({type(exc).__name__})"}
        claim = ups.get("x")
        if isinstance(claim, float) and claim < 1.0:  # |df/dx(0, 0)| = sech^2(c) = 1 - 3e-253
            violated("critical", "partial_bounds below the truth (separable.partial_function, e9e823e)",
                     f"f = tanh(x + y + C400) on [-1, 1]^2: sup |df/dx| certified {claim!r} < |df/dx(0, 0)| = sech^2(5.2e-127) ~ 1")
        else:
            held("partial_bounds of tanh(x + y + C400)", f"{ups}")

    # pre-existing, general path: tape._lower_pow encloses a constant non-rational exponent with exact_interval
    box3 = hd.Schema(x=(2, 3))
    (x3,) = box3.symbols()
    fn = box3.function(x3 ** (2 + C400))
    try:
        rng_cert = fn.range(time_budget=1.0)
        if rng_cert.upper < 9.0 or rng_cert.lower > 4.0:
            violated("critical", "pre-existing, general path: range of x**(2 + C400) over [2, 3] (tape powr exponent)",
                     f"certified [{rng_cert.lower!r}, {rng_cert.upper!r}]; truth [4, 9] (the exponent is 2 + 5.2e-127)")
    except HybridADError as exc:
        print(f"    range of x**(2 + C400): refused ({type(exc).__name__})")
    cert = lib_cert(fn, time_budget=1.0)
    truth = Truth(fn).at([3.0], 700)
    judge("pre-existing, general path: x**(2 + C400) over [2, 3] (tape powr exponent)", fn, truth, [3.0], None, cert)


# -- B. cost ---------------------------------------------------------------------------------------------------
_HANG = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    import sympy as sp
    import opendp_hybridad as hd
    box = hd.Schema(x=(-1, 1), y=(-1, 1))
    x, y = box.symbols()
    fn = box.function(sp.tanh(x + y + sp.exp(-sp.exp(int(sys.argv[1])))))
    t0 = time.time()
    cert = fn.lipschitz(time_budget=0.5)
    print(f"returned {cert.upper!r} after {time.time() - t0:.1f} s")
""")


def _fresh_certificate(k: int, timeout: float) -> str:
    """``lipschitz(time_budget=0.5)`` of ``tanh(x + y + exp(-exp(k)))`` in a fresh interpreter (sympy's caches empty)."""
    try:
        out = subprocess.run([sys.executable, "-c", _HANG, str(k)], capture_output=True, text=True, timeout=timeout)
        return out.stdout.strip() or (out.stderr.strip().splitlines() or ["no output"])[-1]
    except subprocess.TimeoutExpired:
        return f"did not return within {timeout:g} s (memory growing under a 3 GiB cap)"


def section_b() -> None:
    print("B. cost")
    box = hd.Schema(x=(-1, 1), y=(-1, 1))
    x, y = box.symbols()
    times = []
    for k in (16, 18):
        t0 = time.perf_counter()
        exact_interval(sp.exp(-sp.exp(k)))
        times.append(f"k={k}: {time.perf_counter() - t0:.2f} s")
    fn = box.function(sp.tanh(x + y + sp.exp(-sp.exp(19))))
    t0 = time.perf_counter()
    certify._separable(fn)
    sep_t = time.perf_counter() - t0
    note("the constant's exact_interval costs e^k for exp(-exp(k)): certificates overrun their budget or hang",
         f"exact_interval(exp(-exp(k))): {', '.join(times)} (sympy.Rational of N's float with a 10^(-e^k) exponent); "
         f"_separable(tanh(x + y + exp(-exp(19)))) {sep_t:.2f} s; in a fresh interpreter, lipschitz(time_budget=0.5) of "
         f"tanh(x + y + exp(-exp(20))): {_fresh_certificate(20, 30)}; of tanh(x + y + exp(-exp(40))): "
         f"{_fresh_certificate(40, 8)}. The tape lowers the same constant op by op in microseconds (exp(-e^40) encloses as [0, tiny])")

    for n, kind in ((40, "terms"), (100, "terms"), (200, "terms"), (200, "boxes")):
        if kind == "boxes":
            schema = hd.Schema(**{f"x{i}": (-1 - i / 100, 1 + i / 50) for i in range(n)})
            expr = sp.log(sum(sp.exp(s) for s in schema.symbols()))
        else:
            schema = hd.Schema(**dict.fromkeys([f"x{i}" for i in range(n)], (-1, 1)))
            expr = sp.log(sum(sp.exp(R(i + 1, 7) * s) + hd.softplus(s * R(i + 2, 3)) for i, s in enumerate(schema.symbols())))
        fn = schema.function(expr)
        t0 = time.perf_counter()
        b = certify._separable(fn)
        dt = time.perf_counter() - t0
        msg = f"{n} fields, distinct {kind}: _separable {dt:.2f} s, upper {b.upper if b else None!r}"
        if dt > 0.3:
            note(f"_separable over 0.3 s: {n} fields of distinct {kind}", msg)
        else:
            print("    " + msg)


# -- C. detection ----------------------------------------------------------------------------------------------
def section_c() -> None:
    print("C. detection")
    schema = hd.Schema(x=(-1, 1), y=(0.5, 2), z=(-3, -1))
    x, y, z = schema.symbols()
    u = sp.exp(x) + sp.exp(y) + z**2
    refused = {
        "a term with two fields": sp.log(sp.exp(x) + sp.exp(x * y) + z**2),
        "a field outside the sum": sp.log(u) + z,
        "the sum times a field": sp.log(u) * x,
        "the sum and the sum + 1": sp.log(u) * (u + 1),
        "Max of the sum": sp.log(1 + sp.Max(u - 4, 0)),
        "Abs of the sum": sp.tanh(sp.Abs(u - 4)),
        "where on the sum": sp.tanh(hd.where(u > 4, u, 8 - u)),
        "sign times the sum": sp.sign(u - 4) * u,
        "Heaviside of the sum": sp.Heaviside(u - 4) * u,
        "Min inside a term": sp.log(sp.exp(x) + sp.Min(y, 1) + z**2),
        "Abs inside a term": sp.log(sp.exp(y) + sp.Abs(x) + z**2),
        "Piecewise inside a term": sp.log(sp.exp(y) + sp.Piecewise((x**2, x > 0), (x**3, True)) + z**2),
        "the sum itself (psi' = 1)": sp.exp(x) + sp.exp(y) + z**2,
    }
    bad = [k for k, e in refused.items() if separable.find_separable(schema.function(e)) is not None]
    if bad:
        violated("high", "find_separable accepts shapes it must refuse", ", ".join(bad))
    else:
        held(f"{len(refused)} shapes refused", ", ".join(refused))

    rng = np.random.default_rng(3)
    accepted = [
        ("2*(sum) distributed", schema, lambda x, y, z: sp.log(3 + 2 * (sp.exp(x) + sp.exp(y) + sp.exp(z)))),
        ("sum used twice", schema, lambda x, y, z: (sp.exp(x) + sp.exp(y) + sp.exp(z)) * sp.log(sp.exp(x) + sp.exp(y) + sp.exp(z))),
        ("sum in an exponent", schema, lambda x, y, z: 2 ** (x**2 + y + z / 3)),
        ("sum to its own power", schema, lambda x, y, z: (x**2 + y + z**2 / 9) ** (x**2 + y + z**2 / 9)),
        ("pi * sum (not distributed)", schema, lambda x, y, z: sp.pi * sp.tanh(x + y**2 + z)),
        ("float constants", schema, lambda x, y, z: sp.tanh(0.1 * x**3 + 0.1 * y**3 + 0.1 * z + 0.30000000000000004)),
        ("40-digit Float constant", schema, lambda x, y, z: sp.log(sp.Float("0.1", 40) + sp.exp(x) + sp.exp(y) + sp.exp(z))),
        ("pi, E, sqrt(2) constant", schema, lambda x, y, z: sp.tanh(x**3 + y + z + sp.pi - sp.E - sp.sqrt(2))),
        ("huge rational constant", schema, lambda x, y, z: sp.log(10**300 + sp.exp(x) + sp.exp(y) + sp.exp(z))),
        ("mildly cancelling constant", schema,
         lambda x, y, z: sp.tanh(10**8 * (x + y + z) + 10**8 * (sp.pi - R(314159265, 10**8)) + 10**8 * 2)),
        ("negative terms, psi' sign change", schema, lambda x, y, z: (x**3 - y**2 + z + 3) ** 3),
        ("1/t", schema, lambda x, y, z: 1 / (x**2 + y**2 + z**2)),
        ("log near 0", hd.Schema(x=(1e-8, 1), y=(1e-8, 1)), lambda x, y: sp.log(x**2 + y**2)),
        ("sqrt near 0", hd.Schema(x=(1e-8, 1), y=(1e-8, 1)), lambda x, y: sp.sqrt(sp.tanh(x) + sp.tanh(y))),
        ("float exponent", hd.Schema(x=(1e-3, 1), y=(1e-3, 1)), lambda x, y: (sp.exp(x) - 1 + sp.exp(y) - 1) ** sp.Float(0.3)),
        ("unused field", hd.Schema(x=(-1, 1), y=(-1, 1), w=(0, 1)), lambda x, y, w: sp.log(sp.exp(x) + sp.exp(y))),
        ("one class of 3", hd.Schema(x=(-1, 1), y=(-1, 1), w=(-1, 1)), lambda x, y, w: sp.log(sp.exp(x) + sp.exp(y) + sp.exp(w))),
        ("same term, other interval", hd.Schema(x=(-1, 1), y=(-1, 2)), lambda x, y: sp.log(sp.exp(x) + sp.exp(y))),
        ("point interval", hd.Schema(x=(0.5, 0.5), y=(-1, 1)), lambda x, y: sp.tanh(x**2 + y**3)),
        ("one-ulp interval", hd.Schema(x=(0.3, float(np.nextafter(0.3, 1))), y=(-1, 1)), lambda x, y: sp.tanh(1000 * x**2 + y - 90)),
        ("positive / negative assumptions", hd.Schema(x=(1, 2), y=(-2, -1)), lambda x, y: sp.sqrt(sp.sqrt(x**2) + sp.Abs(y) + 1)),
        ("psi(t) = t exp(-t^2)", schema, lambda x, y, z: (x + y + z + 2) * sp.exp(-(x + y + z + 2) ** 2)),
    ]
    bad = 0
    for label, sch, build in accepted:
        fn = sch.function(build(*sch.symbols()))
        found, bound, _ = lib_bound(fn)
        if found is None:
            print(f"    {label}: not detected ({short(fn.expr, 60)})")
            continue
        cert = lib_cert(fn)
        truth, point = Truth(fn).search(rng, samples=600, polish=3, extra=[] if bound is None else [bound.point])
        bad += not judge(label, fn, truth, point, bound.upper if bound else None, cert)
    if not bad:
        held(f"{len(accepted)} accepted shapes: bound and certificate >= truth")


# -- D. floating point ------------------------------------------------------------------------------------------
def section_d() -> None:
    print("D. floating point")
    B = 1e308
    cases = [
        ("+-1e308 box, tanh terms", {"x": (-B, B), "y": (-B, B)}, lambda x, y: sp.log(3 + sp.tanh(x) + sp.tanh(y))),
        ("+-1e308 box, sigmoid terms", {"x": (-B, B), "y": (-1, 1)}, lambda x, y: sp.tanh(hd.sigmoid(x) + hd.sigmoid(y))),
        ("+-1e308 box, identity terms", {"x": (-B, B), "y": (-B, B)}, lambda x, y: sp.tanh(x + y)),
        ("1e154 box, squares", {"x": (-1e154, 1e154), "y": (-1, 1)}, lambda x, y: sp.log(1 + x**2 + y**2)),
        ("subnormal box", {"x": (0, 5e-324), "y": (0, 1e-320)}, lambda x, y: sp.tanh(x + y + 1)),
        ("subnormal box around 0", {"x": (-5e-324, 5e-324), "y": (0, 1e-320)}, lambda x, y: sp.log(sp.exp(x) + sp.exp(y))),
        ("terms near 1e300", {"x": (0, 1), "y": (0, 1)}, lambda x, y: sp.log((x + 10**150) ** 2 + (y + 10**150) ** 2)),
        ("terms 1e300 x^2", {"x": (0, 1), "y": (0, 1)}, lambda x, y: sp.log(10**300 * x**2 + 10**300 * y**2 + 1)),
        ("lambda * phi overflow", {"x": (0, 1), "y": (0, 1)}, lambda x, y: sp.log((x + 10**150) ** 2 + (y + 10**150) ** 2 + 10**300 * x)),
        ("constant beyond the float range", {"x": (0, 1), "y": (0, 1)}, lambda x, y: sp.tanh(sp.exp(x) + sp.exp(y) - 10**400)),
        ("tiny constant under sqrt", {"x": (0, 1), "y": (0, 1)}, lambda x, y: sp.sqrt(R(1, 10**400) + x + y)),
        ("steep outer", {"x": (-1, 1), "y": (-1, 1)}, lambda x, y: sp.tanh(10**8 * x + 10**8 * y + sp.pi)),
        ("underflowing psi'", {"x": (0, 1), "y": (0, 1)}, lambda x, y: sp.exp(-(x + y + 40) ** 2)),
        ("exp of huge negative", {"x": (700, 709), "y": (700, 709)}, lambda x, y: sp.log(sp.exp(x) + sp.exp(y))),
    ]
    rng = np.random.default_rng(4)
    bad = 0
    for label, box, build in cases:
        schema = hd.Schema(**box)
        fn = schema.function(build(*schema.symbols()))
        try:
            _, bound, _ = lib_bound(fn)
        except HybridADError as exc:
            print(f"    {label}: separable refused ({type(exc).__name__})")
            bound = None
        except Exception as exc:
            bad += 1
            violated("medium", f"separable_bound crashes: {label}", repr(exc)[:300])
            continue
        try:
            cert = lib_cert(fn)
        except Exception as exc:
            bad += 1
            violated("medium", f"certificate crashes: {label}", repr(exc)[:300])
            continue
        truth, point = Truth(fn).search(rng, samples=400, polish=3, extra=[] if bound is None else [bound.point])
        bad += not judge(label, fn, truth, point, bound.upper if bound else None, cert)
        print(f"    {label}: separable {bound.upper if bound else None!r}, certificate {cert!r}, truth >= {mp.nstr(truth, 8)}")
    if not bad:
        held(f"{len(cases)} float-extreme cases: no crash, every bound >= truth")


# -- E. random shapes ------------------------------------------------------------------------------------------
TERMS = [lambda x, a: sp.exp(a * x), lambda x, a: hd.softplus(a * x), lambda x, a: a * x**2 + x, lambda x, a: sp.tanh(a * x),
         lambda x, a: a * x**3 - x, lambda x, a: sp.log(1 + a * x**2), lambda x, a: hd.sigmoid(a * x), lambda x, a: -a * x,
         lambda x, a: sp.exp(-a * x**2), lambda x, a: x**4 - a * x**2, lambda x, a: sp.sqrt(1 + a * x**2)]
POSITIVE_TERMS = (0, 1, 5, 6, 8, 10)
OUTERS = [(lambda t, k: sp.log(k + t), True), (lambda t, k: sp.sqrt(k + t), True), (lambda t, k: 1 / (k + t), True),
          (lambda t, k: sp.tanh(t - k), False), (lambda t, k: (t - k) ** 2, False), (lambda t, k: (t - k) ** 3, False),
          (lambda t, k: sp.exp(-(t - k) ** 2), False), (lambda t, k: hd.sigmoid(3 * t - k), False),
          (lambda t, k: t * sp.exp(-t**2 / k), False), (lambda t, k: (k + t) ** R(3, 2), True),
          (lambda t, k: 1 / (k + t) ** 2, True), (lambda t, k: t / sp.sqrt(1 + k * t**2), False)]


def section_e() -> None:
    print("E. random shapes, PIECES / SUB_INTERVALS patched")
    rng = np.random.default_rng(2026)
    saved = separable.PIECES, separable.SUB_INTERVALS
    checked = bad = 0
    deadline = time.time() + 55
    try:
        for it in range(400):
            if time.time() > deadline:
                break
            n = int(rng.integers(2, 6))
            box = {}
            for i in range(n):
                kind = int(rng.integers(0, 6))
                a = float(np.round(rng.uniform(-2, 1), 2))
                box[f"x{i}"] = (a, a) if kind == 0 else (a, a + 1e-9) if kind == 1 else (a, a + float(np.round(rng.uniform(0.1, 3), 2)))
            schema = hd.Schema(**box)
            outer, positive = OUTERS[int(rng.integers(len(OUTERS)))]
            picks = [int(rng.integers(len(TERMS))) for _ in range(n)]
            if positive:
                picks = [t if t in POSITIVE_TERMS else 0 for t in picks]
            inner = sum(TERMS[t](s, R(int(rng.integers(1, 15)), 5)) for t, s in zip(picks, schema.symbols(), strict=True))
            fn = schema.function(outer(inner, R(int(rng.integers(1, 12)), 4)))
            separable.PIECES, separable.SUB_INTERVALS = [(1024, 1024), (1, 1), (3, 2), (2, 64), (7, 3)][it % 5]
            try:
                _, bound, _ = lib_bound(fn)
            except HybridADError:
                continue
            if bound is None:
                continue
            checked += 1
            truth, point = Truth(fn).search(rng, samples=500, polish=2, extra=[bound.point])
            bad += not judge(f"random case {it} (PIECES, SUB_INTERVALS = {separable.PIECES}, {separable.SUB_INTERVALS})",
                             fn, truth, point, bound.upper, None)
    finally:
        separable.PIECES, separable.SUB_INTERVALS = saved
    if not bad:
        held(f"{checked} random separable bounds >= truth (5 partitions, point / 1e-9 / wide intervals)")


# -- F. many fields --------------------------------------------------------------------------------------------
def section_f() -> None:
    print("F. many fields")
    bad = 0
    for n in (40, 100):
        schema = hd.Schema(**dict.fromkeys([f"x{i}" for i in range(n)], (-1, 1)))
        fn = schema.function(sp.log(sum(sp.exp(s) for s in schema.symbols())))
        _, bound, dt = lib_bound(fn)
        with mp.workdps(60):
            e = mp.e
            k = max(range(n + 1), key=lambda k: mp.sqrt(k * e**2 + (n - k) / e**2) / (k * e + (n - k) / e))
            truth = mp.sqrt(k * e**2 + (n - k) / e**2) / (k * e + (n - k) / e)
        point = [1.0] * k + [-1.0] * (n - k)
        truth = min(truth, Truth(fn).confirmed(point))
        bad += not judge(f"logsumexp in {n} fields", fn, truth, point, bound.upper if bound else None, None)
        print(f"    logsumexp {n}: separable {bound.upper if bound else None!r} ({dt:.2f} s), truth {mp.nstr(truth, 10)}")
    rng = np.random.default_rng(5)
    n = 40
    schema = hd.Schema(**{f"x{i}": (float(np.round(rng.uniform(-2, 0), 2)), float(np.round(rng.uniform(0.1, 2), 2))) for i in range(n)})
    syms = schema.symbols()
    for label, outer in (("log", lambda t: sp.log(1 + t)), ("tanh", lambda t: sp.tanh(t / 10 - 1))):
        inner = sum(TERMS[POSITIVE_TERMS[i % len(POSITIVE_TERMS)]](s, R(i % 7 + 1, 4)) for i, s in enumerate(syms))
        fn = schema.function(outer(inner))
        _, bound, dt = lib_bound(fn)
        cert = lib_cert(fn, time_budget=1.0)
        truth, point = Truth(fn).search(rng, samples=300, polish=3, extra=[] if bound is None else [bound.point])
        bad += not judge(f"{label} of 40 distinct terms", fn, truth, point, bound.upper if bound else None, cert)
        print(f"    {label} of 40 distinct terms: separable {bound.upper if bound else None!r} ({dt:.2f} s), certificate {cert!r}, "
              f"truth >= {mp.nstr(truth, 10)}")
    if not bad:
        held("many fields: bounds >= truth")


# -- G. wiring --------------------------------------------------------------------------------------------------
def section_g() -> None:
    print("G. wiring of the cap")
    schema = hd.Schema(x=(-1, 1), y=(-1, 1))
    x, y = schema.symbols()
    expr = sp.log(sp.exp(x) + sp.exp(2 * y) + 1)
    fake = 1e-9
    saved = separable.separable_bound
    separable.separable_bound = lambda fn, s: separable.SeparableBound(fake, np.zeros(2))
    results = {}
    try:
        for label, call in (("2-norm", lambda f: f.lipschitz(norm=2, time_budget=0.5).upper),
                            ("1-norm", lambda f: f.lipschitz(norm=1, time_budget=0.5).upper),
                            ("inf-norm", lambda f: f.lipschitz(norm="inf", time_budget=0.5).upper),
                            ("partials", lambda f: min(v.upper for v in f.partial_bounds(time_budget=0.5).values()))):
            try:
                results[label] = call(schema.function(expr))
            except SoundnessError:
                results[label] = "SoundnessError (the fake cap reached it; the safety net refused it)"
    finally:
        separable.separable_bound = saved
    leaked = [k for k, v in results.items() if k != "2-norm" and (not isinstance(v, float) or v <= fake)]
    if leaked:
        violated("critical", "the 2-norm separable cap reaches other certificates", f"{results}")
    else:
        held("a (fake, too small) separable bound reaches the 2-norm certificate only", f"{results}")
    if hasattr(separable, "partial_function"):
        note("certify_partial uses the separable sum (e9e823e, after 35a67d7)",
             "e9e823e adds _separable_partial to certify_partial (separable.partial_function: a 2-d range of "
             "psi'(c + phi_j(s) + r) phi_j'(s)); it is not the cap and is unaffected by the fake bound, but it encloses c "
             "with the same exact_interval(s.constant) (section A)")
    # the safety net: a cap below a proven witness is refused, not returned
    fn = schema.function(expr)
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    try:
        res = maximize(GradientObjective(fn, 2.0), lo, hi, time_budget=0.3, cap=1e-3)
        violated("high", "maximize returns a cap below its own proven witness", f"upper {res.upper!r}, witness {res.witness_value!r}")
    except SoundnessError:
        held("maximize refuses a cap below a proven witness (SoundnessError)",
             "the C400 certificate escapes it: the tape encloses its constant to the ulp of exp(400), about 1e158, "
             "so no witness is proven above 0")


def main() -> int:
    start = time.time()
    for section in (section_a, section_b, section_c, section_d, section_e, section_f, section_g):
        run(section)
    print(f"done in {time.time() - start:.0f} s: {len(VIOLATIONS)} violation(s), {len(HELD)} held, {len(NOTES)} note(s)")
    for text in VIOLATIONS:
        print(" -", text)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
