"""Adversarial audit of the tightness changes of issue 14 (bab72c9, f960aab): composition, mean-value g, monotonicity, sigmoid slope.

Run: ``python bench/audits/attack_tightness.py`` (about 15 seconds). Prints each
check with the certified and the true number; exits 1 if any certified bound is below the truth.

Truths are computed here, independently of the library's analysis: sympy's own derivatives,
lambdified to mpmath (60 digits) and evaluated at float points found by dense sampling and
L-BFGS-B polishing in float (so each truth is the value at a point of the box, a lower bound of
the supremum), or by closed forms evaluated in mpmath; exact rationals (``fractions``) for norms.

Finding (a violation): ``composition.weight_norm_up`` -> ``rounding.norm2_up`` rounds *down*
when the l2 norm of the weights is subnormal. ``norm2_up`` scales to [1/2, 1), takes
``sqrt_up`` and scales back with ``math.ldexp``, which rounds to nearest below 2^-1022 (the
docstring says the scaling is exact "unless it underflows", but nothing covers that case):
``norm2_up([2^-1074, 2^-1074]) = 2^-1074`` where the norm is ``sqrt(2) 2^-1074``. The affine
path of ``certify_lipschitz`` (norm 2) multiplies it by ``sup |psi'|`` (``mul_up`` adds one ulp
of the *product*, which does not cover the lost 0.41 ulp of the *factor* when ``sup |psi'|`` is
large), so ``K`` comes out ``1/sqrt(2)`` of the truth: ``tanh(e^709 (x + y) / 2^1074)`` on
[-1, 1]^2 is certified ``K = 4.06e-16`` where ``||grad f(0, 0)||_2 = 5.74e-16``. The internal
witness check does not catch it: the witness's proven lower bound underflows to 0 (the
gradient's point enclosure multiplies the subnormal weight first), and ``converged`` uses an
absolute tolerance of 1e-12, so the certificate reports ``converged=True``. The general branch
and bound path on the same function (``compose=False``) is sound (7.98e-298 on the shifted
case). K is always below about ``N 2^-50`` (N the weight norm in ulps of 2^-1074) for a relative
loss of ``0.5 / N``, so the absolute error is below about 1e-15, but a Laplace/Gaussian scale
built on it is 29% too small, i.e. epsilon is sqrt(2) times the claim. ``norm2_up`` is also
used by frame/aggregate.py, individual/filter.py, individual/charges.py, analysis/float_error.py
and nn/sequential.py (not audited here). With a witness that does not underflow (``1000 tanh(w x
+ w y)``, w = 2024 2^-1074) the same lost ulp is caught by the safety net: SoundnessError,
a refused certificate (reported below as a note, not counted).

What held (no violation; the cases below are re-checked each run): affine inner expressions
with zero, float, huge (1e6) and tiny (1e-9) weights, K1/K2/Kinf and partials; isotropic
quadratics with shifted centres, negative ``a``, fields absent from u, squares of affine forms
that expand to isotropic ones (``(x - y)^2 + (x + y)^2``), sqrt at 0, degenerate (zero-width)
sides, all-degenerate boxes, subnormal ``a`` (radial K and 2-d radial partials); near misses
(a field inside and outside u, ``-u`` vs ``u``, unequal weights) fall to the general path;
sigmoid slope ``s (1 - s)`` saturated (arguments to 800, both signs), near 1/2 (1e-12 (x + y)),
powers ``s^2 (1 - s)^3``, products with other factors; kinks with the mean-value g and the
monotonicity collapse (Abs, Max, Min, where with kinked gradients, touching-zero derivatives,
degenerate sides). A random composition fuzzer (psi from 13 smooth shapes, affine or radial u,
random rational/float/huge/tiny weights, 1-4 fields, zero-width sides; 240 cases, K2, range,
partials) and bench/fuzz_soundness.py (seed 9137: 570 cases in 8 min, 0 unsound; seed 424242
with --max-vars 5: 1437 cases, 0 unsound, 201 harness crashes because tests/fuzz names at most 4
fields, ``zip()`` in the harness, not the library; seed 77031 --max-depth 5: 465 cases, 0 unsound;
tests/test_fuzz_soundness.py: 41 passed) found nothing else.

Suggested mends (not made here): round ``norm2_up``'s result up when it is subnormal (as
``norm2_up_rows`` does, or check ``Fraction(r)**2 >= exact``); in ``_lipschitz`` /
``certify_partial``, apply the witness check to the combined result too; the absolute 1e-12 in
the convergence tests makes every certificate of a tiny function "converged" with a witness of 0.
"""

from __future__ import annotations

import sys
import warnings
from fractions import Fraction

import mpmath as mp
import numpy as np
import sympy as sp
from scipy import optimize

warnings.filterwarnings("ignore")
np.seterr(all="ignore")

import opendp_hybridad as hd  # noqa: E402
from opendp_hybridad.analysis.rounding import norm2_up  # noqa: E402
from opendp_hybridad.errors import SoundnessError  # noqa: E402
from opendp_hybridad.symbolic.functions import sigmoid, softplus  # noqa: E402

DPS = 60
R = sp.Rational
ULP = R(1, 2**1074)  # the smallest subnormal double
VIOLATIONS: list[str] = []
_MP = {"sigmoid": lambda x: 1 / (1 + mp.exp(-x)), "softplus": lambda x: mp.log(1 + mp.exp(x))}
_NP = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softplus": lambda x: np.logaddexp(0, x)}


def report(label: str, certified: float, truth: mp.mpf, where: str = "") -> None:
    bad = truth - certified > mp.mpf(1e-12) * abs(truth)  # relative: the truths here go down to 1e-300
    tag = "VIOLATION" if bad else "held"
    msg = f"[{tag}] {label}: certified {certified!r}, truth {mp.nstr(truth, 15)}{where}"
    if bad:
        msg += f" (certified / truth = {mp.nstr(certified / truth, 6)})"
        VIOLATIONS.append(msg)
    print(msg, flush=True)


def _objective(expr: sp.Expr, syms: list[sp.Symbol], quantity) -> sp.Expr:
    grads = [sp.diff(expr, s) for s in syms]
    if quantity == "K2":
        return sp.sqrt(sum(g**2 for g in grads))
    if quantity == "K1":
        return sum(sp.Abs(g) for g in grads)
    if quantity == "Kinf":
        return sp.Max(*[sp.Abs(g) for g in grads])
    if quantity == "max":
        return expr
    if quantity == "min":
        return -expr
    return sp.Abs(grads[quantity])


def truth(expr: sp.Expr, syms: list[sp.Symbol], box: list[tuple[float, float]], quantity, samples: int = 4000, starts: int = 6):
    """Largest 60-digit value of the objective over sampled and float-polished points of the box."""
    obj = _objective(expr, syms, quantity)
    floaty = obj.xreplace({r: sp.Float(r, 30) for r in obj.atoms(sp.Rational) if not r.is_Integer})
    f_np = sp.lambdify(syms, floaty, modules=[_NP, "numpy"])
    f_mp = sp.lambdify(syms, obj, modules=[_MP, "mpmath"])
    lo = np.array([b[0] for b in box], dtype=float)
    hi = np.array([b[1] for b in box], dtype=float)
    n = len(syms)
    rng = np.random.default_rng(0)
    corners = np.array(np.meshgrid(*[[0, 1]] * n)).reshape(n, -1).T
    pts = np.vstack([0.5 * (lo + hi), lo + corners * (hi - lo), lo + rng.random((samples, n)) * (hi - lo)])
    vals = np.broadcast_to(np.asarray(f_np(*pts.T), dtype=float), (pts.shape[0],)).copy()
    vals[~np.isfinite(vals)] = -np.inf

    def neg(x: np.ndarray) -> float:
        v = float(f_np(*np.clip(x, lo, hi)))
        return -v if np.isfinite(v) else 1e300

    candidates = [pts[i] for i in np.argsort(vals)[-starts:]]
    for x0 in list(candidates):
        res = optimize.minimize(neg, x0, method="L-BFGS-B", bounds=list(zip(lo, hi, strict=True)))
        candidates.append(np.clip(res.x, lo, hi))
    best, best_x = -mp.inf, None
    with mp.workdps(DPS):
        for x in candidates:
            v = mp.re(f_mp(*[mp.mpf(float(t)) for t in x]))
            if mp.isfinite(v) and v > best:
                best, best_x = v, x
    return best, best_x


def audit(label: str, build, box: dict[str, tuple[float, float]], quantities=("K2", "range", "partials"), budget: float = 1.0) -> None:
    schema = hd.Schema(**box)
    syms = list(schema.symbols())
    f = schema.function(build(*syms))
    bl = list(box.values())

    def one(name: str, certified: float, quantity) -> None:
        t, x = truth(f.expr, syms, bl, quantity)
        report(f"{label} {name}", certified, t, "" if x is None else f" at {[float(f'{v:.6g}') for v in x]}")

    for q in quantities:
        try:
            if q in ("K2", "K1", "Kinf"):
                norm = {"K2": 2, "K1": 1, "Kinf": "inf"}[q]
                one(q, f.lipschitz(norm=norm, time_budget=budget).upper, q)
            elif q == "range":
                r = f.range(time_budget=budget)
                one("max", r.upper, "max")
                one("-min", -r.lower, "min")
            else:
                bounds = f.partial_bounds(time_budget=budget / 2)
                for j, n in enumerate(box):
                    one(f"d/d{n}", bounds[n].upper, j)
        except SoundnessError as exc:
            print(f"[note] {label} {q}: refused by the safety net: {str(exc)[:110]}", flush=True)
        except Exception as exc:  # a refusal is not a violation
            print(f"[refused] {label} {q}: {type(exc).__name__}: {str(exc)[:110]}", flush=True)


# -- the finding ---------------------------------------------------------------------------------
def subnormal_weight_norm() -> None:
    print("== norm2_up below the norm when the norm is subnormal (root cause) ==")
    for values in ([5e-324, 5e-324], [1.5e-323, 1.5e-323], [1e-320, 1e-320]):
        got = norm2_up(values)
        exact_sq = sum(Fraction(v) ** 2 for v in values)
        with mp.workdps(DPS):
            true = mp.sqrt(mp.mpf(exact_sq.numerator) / exact_sq.denominator)
        report(f"norm2_up({values})", got, true)

    print("== affine composition K2 with a subnormal weight norm ==")
    schema = hd.Schema(x=(-1, 1), y=(-1, 1))
    x, y = schema.symbols()
    for b, shift in ((709, 0), (60, 3)):
        f = schema.function(sp.tanh(sp.exp(b) * (ULP * x + ULP * y) - shift))
        cert = f.lipschitz()
        # the truth at the point (0, 0) from sympy's gradient in mpmath, and the closed form
        grads = [sp.lambdify([x, y], sp.diff(f.expr, s), modules="mpmath") for s in (x, y)]
        with mp.workdps(DPS):
            g = [gi(mp.mpf(0), mp.mpf(0)) for gi in grads]
            at_zero = mp.sqrt(g[0] ** 2 + g[1] ** 2)
            closed = mp.e**b / mp.cosh(shift) ** 2 * mp.sqrt(2) * mp.mpf(2) ** -1074
        assert abs(at_zero / closed - 1) < mp.mpf(10) ** -40
        print(f"   (witness value {cert.witness.value!r}, converged={cert.converged})")
        report(f"K2 of tanh(e^{b} (x + y) / 2^1074 - {shift}) on [-1, 1]^2", cert.upper, at_zero, " at (0, 0)")
        for norm, factor in ((1, mp.sqrt(2)), ("inf", 1 / mp.sqrt(2))):
            report(f"  K{norm} of the same", f.lipschitz(norm=norm).upper, at_zero * factor, " at (0, 0)")
        bounds = f.partial_bounds()
        report("  |df/dx| of the same", bounds["x"].upper, at_zero / mp.sqrt(2), " at (0, 0)")

    # the same lost ulp where the witness does not underflow: caught (refused), not counted
    w = 2024 * ULP
    f = schema.function(1000 * sp.tanh(w * x + w * y))
    try:
        cert = f.lipschitz()
        with mp.workdps(DPS):
            true = 1000 * mp.sqrt(2) * 2024 * mp.mpf(2) ** -1074
        report("K2 of 1000 tanh(2024 (x + y) / 2^1074)", cert.upper, true, " at (0, 0)")
    except SoundnessError as exc:
        print(f"[note] K2 of 1000 tanh(2024 (x + y) / 2^1074): refused by the safety net: {str(exc)[:120]}")


# -- what held -----------------------------------------------------------------------------------
HELD = [
    ("radial exp(-(x^2+y^2))", lambda x, y: sp.exp(-(x**2 + y**2)), {"x": (-2, 2), "y": (-1, 3)}, ("K2", "range", "partials")),
    ("radial, negative a, shifted", lambda x, y: sp.tanh(1 - 3 * x**2 - 3 * y**2 + x), {"x": (-1, 1), "y": (-1, 1)},
     ("K2", "partials")),
    ("radial, absent field", lambda x, y, z: softplus(5 - 2 * ((x - R(1, 3)) ** 2 + y**2)), {"x": (-2, 2), "y": (-2, 2), "z": (0, 1)},
     ("K2", "partials")),
    ("radial of affine squares", lambda x, y: sp.tanh((x - y) ** 2 + (x + y) ** 2), {"x": (-1, 1), "y": (-1, 1)}, ("K2", "partials")),
    ("radial, degenerate side", lambda x, y: sp.exp(-(x**2 + y**2)), {"x": (0.5, 0.5), "y": (-1, 1)}, ("K2", "partials")),
    ("affine huge/tiny/zero weights", lambda x, y, z: sp.tanh(R(10**6) * x + R(1, 10**7) * y + 1),
     {"x": (-1e-6, 1e-6), "y": (-1, 1), "z": (0, 1)}, ("K2", "K1", "Kinf", "partials")),
    ("affine, psi with a narrow bump", lambda x, y: (x + y) * sp.exp(-((x + y - 1) ** 2) * 50), {"x": (-1, 1), "y": (-1, 1)},
     ("K2", "partials")),
    ("sigmoid slope saturated", lambda x: sigmoid(x) * (1 - sigmoid(x)), {"x": (30, 800)}, ("K2", "range")),
    ("sigmoid slope near 1/2", lambda x, y: sigmoid(R(1, 10**12) * (x + y)), {"x": (-1, 1), "y": (-1, 1)}, ("K2", "range")),
    ("sigmoid slope powers", lambda x, y: sigmoid(x * y) ** 2 * (1 - sigmoid(x * y)) ** 3, {"x": (-3, 3), "y": (-3, 3)},
     ("K2", "range")),
    ("kink + smooth", lambda x, y: sp.Abs(x - y) + sp.exp(x + y) / 4, {"x": (-1, 1), "y": (-1, 1)}, ("K2", "range", "partials")),
    ("where with kinked gradient", lambda x, y: hd.where(x > R(1, 3), (x - R(1, 3)) ** 2 * y, 0) + x, {"x": (-1, 1), "y": (-1, 1)},
     ("K2", "range", "partials")),
    ("monotone, derivative touching 0", lambda x, y: x**4 - y**4 + x * y**3, {"x": (-1, 1), "y": (-1, 1)}, ("K2", "range")),
    ("monotone, degenerate side", lambda x, y, z: sp.exp(x * y) - z**3, {"x": (0.3, 0.3), "y": (-2, 2), "z": (-1, 1)},
     ("K2", "range", "partials")),
]


def main() -> int:
    subnormal_weight_norm()
    print("== cases that held (composition, sigmoid slope, mean-value g, monotonicity) ==")
    for label, build, box, quantities in HELD:
        audit(label, build, box, quantities)
    print(f"\n{len(VIOLATIONS)} violation(s)")
    for v in VIOLATIONS:
        print("  " + v)
    return 1 if VIOLATIONS else 0


if __name__ == "__main__":
    sys.exit(main())
