"""Ground truth for the soundness fuzzer, and the harness that checks certificates against it.

The ground truth is a small recursive evaluator over the *sympy expression the
fuzzer built* (plain real symbols, before the library touches it), with
forward-mode derivatives, in two contexts:

* mpmath at 70 digits (``mp``): the reference. Values at float points are
  exact to ~65 digits whatever the box (no overflow, no underflow); a candidate
  violation is confirmed at 400 and 600 digits before it is reported (a real
  value agrees at both; the rounding noise of a quantity that is exactly 0 does not).
* Python floats (``fp``): only as the objective of scipy's local searches; every
  point they find is re-evaluated in ``mp``.

The evaluator also reports, per point, whether a non-smooth node sits exactly on
its switching set (``kink``: |u| at u = 0, a Min tie, a condition at equality,
Heaviside/sign at 0), whether a derivative is infinite there (``singular``:
sqrt at 0), and a *signature* (which side of every switch the point is on), so
that pairs of points with different signatures can be bisected down to
neighbouring floats on either side of a kink or a jump.

Checks (``run_case``): certified range ⊇ f(p) at every point; ``K_p >= ||grad f(p)||_p``
and ``partial_k >= |df/dx_k(p)|`` at every point where f is differentiable;
``|f(a) - f(b)| <= K_p ||a - b||_q`` (1/p + 1/q = 1) over random pairs, pairs
bisected across switches (a jump must have been refused) and small steps around
the extreme points; f defined at every point of a box on which something was
certified.
"""

from __future__ import annotations

import math
import signal
import struct
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import mpmath
import numpy as np
import sympy
from sympy.core.relational import Relational

DPS = 70
CONFIRM_DPS = 400
#: relative slack on comparisons at 70 digits (violations are confirmed at 400)
REL_SLACK = mpmath.mpf(10) ** -50
#: exp-like arguments above this are not evaluated (mpmath's cost grows with the digits of the argument)
_EXP_ARG_MAX = mpmath.mpf(10) ** 1000


class UndefinedError(ArithmeticError):
    """f has no real value at this point (log of <= 0, 1/0, sqrt of < 0, ...)."""


class UnreliableError(ArithmeticError):
    """The reference cannot evaluate this point faithfully (astronomic exponent)."""


class UnsupportedNodeError(ValueError):
    """The expression contains a node the reference does not know."""


class CaseTimeout(BaseException):
    """Raised by the alarm: a BaseException so that no ``except Exception`` in the library swallows it."""


@contextmanager
def time_limit(seconds: float):
    """Interrupt the block after ``seconds`` (SIGALRM; main thread only)."""
    if seconds is None or seconds <= 0:
        yield
        return

    def handler(signum, frame):
        raise CaseTimeout(f"more than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- number contexts ------------------------------------------------------------------


class _MP:
    name = "mp"
    big = _EXP_ARG_MAX

    def __init__(self):
        self.zero = mpmath.mpf(0)
        self.one = mpmath.mpf(1)

    @staticmethod
    def num(e: sympy.Expr):
        if e.is_Integer:
            return mpmath.mpf(int(e))
        if e.is_Rational:
            return mpmath.mpf(int(e.p)) / int(e.q)
        if e.is_Float:
            return mpmath.mpf(e._mpf_)
        if e is sympy.pi:
            return +mpmath.pi
        if e is sympy.E:
            return +mpmath.e
        if e.is_NumberSymbol:
            return mpmath.mpf(str(sympy.N(e, mpmath.mp.dps + 10)))
        raise UnsupportedNodeError(f"number {e!r}")

    @staticmethod
    def exp(u):
        if abs(u) > _EXP_ARG_MAX:
            raise UnreliableError("exp of an astronomic argument")
        return mpmath.exp(u)

    @staticmethod
    def log(u):
        return mpmath.log(u)

    @staticmethod
    def log1p(u):
        return mpmath.log1p(u)

    @staticmethod
    def tanh(u):
        if abs(u) > _EXP_ARG_MAX:
            return mpmath.mpf(1) if u > 0 else mpmath.mpf(-1)
        return mpmath.tanh(u)

    @staticmethod
    def sqrt(u):
        return mpmath.sqrt(u)

    @staticmethod
    def powi(b, n: int):
        return b**n

    @staticmethod
    def powr(b, p):
        return mpmath.power(b, p)

    @staticmethod
    def floor(u):
        return mpmath.floor(u)

    @staticmethod
    def real(x: float):
        return mpmath.mpf(x)


class _FP:
    name = "fp"
    big = math.inf
    zero = 0.0
    one = 1.0

    @staticmethod
    def num(e: sympy.Expr):
        try:
            return float(e)
        except (TypeError, OverflowError) as exc:
            raise UndefinedError("constant") from exc

    @staticmethod
    def exp(u):
        try:
            return math.exp(u)
        except OverflowError as exc:
            raise UndefinedError("float overflow") from exc

    log = staticmethod(math.log)
    log1p = staticmethod(math.log1p)
    tanh = staticmethod(math.tanh)
    sqrt = staticmethod(math.sqrt)

    @staticmethod
    def powi(b, n: int):
        try:
            r = b**n
        except (OverflowError, ZeroDivisionError) as exc:
            raise UndefinedError("float overflow") from exc
        return r

    @staticmethod
    def powr(b, p):
        try:
            return b**p
        except (OverflowError, ZeroDivisionError) as exc:
            raise UndefinedError("float overflow") from exc

    floor = staticmethod(math.floor)

    @staticmethod
    def real(x: float):
        return float(x)


MP = _MP()
FP = _FP()


# -- the evaluator ------------------------------------------------------------------------

_REL = {
    sympy.StrictLessThan: "lt", sympy.LessThan: "le", sympy.StrictGreaterThan: "gt",
    sympy.GreaterThan: "ge", sympy.Equality: "eq", sympy.Unequality: "ne",
}
_UNARY_NAMES = {"exp", "log", "tanh", "sigmoid", "softplus", "Abs", "sign", "floor"}


@dataclass
class PointResult:
    """The reference at one float point."""

    x: tuple[float, ...]
    value: Any = None          # mpf (or float) or None when undefined / unreliable
    grad: list | None = None   # None when not differentiable here (kink, singular) or undefined
    status: str = "ok"         # ok | undefined | unreliable
    reason: str = ""
    kink: bool = False
    singular: bool = False
    signature: tuple = ()


class _State:
    __slots__ = ("ctx", "grad", "kink", "memo", "n", "sig", "singular", "x")

    def __init__(self, ctx, x, n, grad):
        self.ctx = ctx
        self.x = x
        self.n = n
        self.grad = grad
        self.memo: dict[tuple, Any] = {}
        self.kink = False
        self.singular = False
        self.sig: list = []


class Evaluator:
    """Compiles a sympy expression over ``symbols`` into nodes and evaluates them at points."""

    def __init__(self, expr: sympy.Expr, symbols):
        self.symbols = list(symbols)
        self.n = len(self.symbols)
        self.nodes: list[tuple] = []
        self._ids: dict[Any, int] = {}
        self.root = self._compile(expr)

    # compile -------------------------------------------------------------------------
    def _compile(self, e) -> int:
        if e in self._ids:
            return self._ids[e]
        node = self._node(e)
        self.nodes.append(node)
        idx = len(self.nodes) - 1
        self._ids[e] = idx
        return idx

    def _node(self, e) -> tuple:
        if e is sympy.true:
            return ("bool", True)
        if e is sympy.false:
            return ("bool", False)
        if isinstance(e, sympy.Symbol):
            if e not in self.symbols:
                raise UnsupportedNodeError(f"unknown symbol {e}")
            return ("var", self.symbols.index(e))
        if isinstance(e, sympy.Number) or getattr(e, "is_NumberSymbol", False):
            if e.is_finite is False or e.is_real is False or e is sympy.nan:
                return ("undefined", str(e))
            return ("num", e)
        if isinstance(e, sympy.Add):
            return ("add", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Mul):
            return ("mul", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Pow):
            base, expo = e.args
            b = self._compile(base)
            if expo.is_Integer:
                return ("powi", b, int(expo))
            if not expo.free_symbols and (expo.is_Number or expo.is_NumberSymbol):
                if expo.is_real is False or expo.is_finite is False:
                    return ("undefined", str(e))
                return ("powr", b, expo)
            return ("powx", b, self._compile(expo))
        if isinstance(e, sympy.Min):
            return ("min", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Max):
            return ("max", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Heaviside):
            h0 = e.args[1] if len(e.args) > 1 else sympy.Rational(1, 2)
            return ("heaviside", self._compile(e.args[0]), h0)
        if isinstance(e, sympy.Piecewise):
            return ("piecewise", tuple((self._compile(v), self._compile(c)) for v, c in e.args))
        if isinstance(e, Relational):
            op = _REL.get(type(e))
            if op is None:
                raise UnsupportedNodeError(f"relation {type(e).__name__}")
            return ("rel", op, self._compile(e.lhs), self._compile(e.rhs))
        if isinstance(e, sympy.And):
            return ("and", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Or):
            return ("or", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Not):
            return ("not", self._compile(e.args[0]))
        if isinstance(e, sympy.ITE):
            return ("ite", tuple(self._compile(a) for a in e.args))
        if isinstance(e, sympy.Xor):
            return ("xor", tuple(self._compile(a) for a in e.args))
        name = type(e).__name__
        if name in _UNARY_NAMES and len(e.args) == 1:
            return (name, self._compile(e.args[0]))
        raise UnsupportedNodeError(f"{name}: {e}")

    # evaluate --------------------------------------------------------------------------
    def at(self, x, ctx=MP, grad: bool = True, dps: int = DPS) -> PointResult:
        """The value (and gradient) at the float point ``x``."""
        x = tuple(float(v) for v in x)
        res = PointResult(x)
        st = _State(ctx, [ctx.real(v) for v in x], self.n, grad)
        try:
            if ctx is MP:
                with mpmath.workdps(dps):
                    v, g = self._eval(self.root, st)
                    v, g = +v, (None if g is None else [+c for c in g])
            else:
                v, g = self._eval(self.root, st)
        except UndefinedError as exc:
            res.status, res.reason = "undefined", str(exc)
            res.signature = tuple(st.sig)
            return res
        except UnreliableError as exc:
            res.status, res.reason = "unreliable", str(exc)
            return res
        except (ValueError, ZeroDivisionError, OverflowError) as exc:
            if ctx is MP:
                raise
            res.status, res.reason = "undefined", f"float: {exc}"
            return res
        res.value = v
        res.kink, res.singular = st.kink, st.singular
        res.signature = tuple(st.sig)
        if grad and not st.kink and not st.singular:
            res.grad = g
        return res

    def _eval(self, idx: int, st: _State):
        memo = st.memo
        key = (idx, st.grad)
        if key in memo:
            return memo[key]
        r = self._eval_new(idx, st)
        memo[key] = r
        return r

    def _zeros(self, st):
        return [st.ctx.zero] * st.n if st.grad else None

    def _scale(self, g, d):
        return None if g is None else [d * c for c in g]

    def _eval_new(self, idx: int, st: _State):
        node = self.nodes[idx]
        op = node[0]
        ctx = st.ctx
        if op == "num":
            return ctx.num(node[1]), self._zeros(st)
        if op == "var":
            k = node[1]
            g = None
            if st.grad:
                g = [ctx.zero] * st.n
                g[k] = ctx.one
            return st.x[k], g
        if op == "undefined":
            raise UndefinedError(f"constant {node[1]}")
        if op == "add":
            v, g = self._eval(node[1][0], st)
            g = None if g is None else list(g)
            for a in node[1][1:]:
                av, ag = self._eval(a, st)
                v = v + av
                if g is not None:
                    g = [p + q for p, q in zip(g, ag, strict=True)]
            return v, g
        if op == "mul":
            v, g = self._eval(node[1][0], st)
            for a in node[1][1:]:
                av, ag = self._eval(a, st)
                if g is not None:
                    g = [p * av + v * q for p, q in zip(g, ag, strict=True)]
                v = v * av
            return v, g
        if op == "powi":
            b, bg = self._eval(node[1], st)
            n = node[2]
            if b == 0 and n < 0:
                raise UndefinedError("division by zero")
            v = ctx.powi(b, n)
            return v, (None if bg is None else self._scale(bg, n * ctx.powi(b, n - 1)))
        if op == "powr":
            b, bg = self._eval(node[1], st)
            p = ctx.num(node[2])
            if b < 0:
                raise UndefinedError("fractional power of a negative number")
            if b == 0:
                if p < 0:
                    raise UndefinedError("negative power of zero")
                if bg is not None and p < 1 and any(c != 0 for c in bg):
                    st.singular = True
                elif p < 1:
                    st.kink = True
                return ctx.zero, self._zeros(st)
            v = ctx.powr(b, p)
            return v, (None if bg is None else self._scale(bg, p * v / b))
        if op == "powx":
            b, bg = self._eval(node[1], st)
            e, eg = self._eval(node[2], st)
            if b == 0 and e > 0:  # 0**e = 0 for e > 0 (its slope in the base: 0 for e > 1, infinite below)
                if bg is not None and e <= 1 and any(c != 0 for c in bg):
                    st.singular = True
                return ctx.zero, self._zeros(st)
            if b <= 0:
                raise UndefinedError("symbolic power of a non-positive base")
            lb = ctx.log(b)
            v = ctx.exp(e * lb)
            g = None
            if bg is not None:
                g = [v * (q * lb + e * p / b) for p, q in zip(bg, eg, strict=True)]
            return v, g
        if op in ("min", "max"):
            vals = [self._eval(a, st) for a in node[1]]
            best = 0
            for i in range(1, len(vals)):
                if (vals[i][0] < vals[best][0]) if op == "min" else (vals[i][0] > vals[best][0]):
                    best = i
            ties = sum(1 for v, _ in vals if v == vals[best][0])
            if ties > 1:
                st.kink = True
            st.sig.append((idx, best))
            return vals[best]
        if op == "heaviside":
            u, _ = self._eval(node[1], st)
            if u == 0:
                st.kink = True
                st.sig.append((idx, 0))
                return ctx.num(node[2]), self._zeros(st)
            st.sig.append((idx, 1 if u > 0 else -1))
            return (ctx.one if u > 0 else ctx.zero), self._zeros(st)
        if op == "piecewise":
            for k, (v, c) in enumerate(node[1]):
                if self._truth(c, st):
                    st.sig.append((idx, k))
                    return self._eval(v, st)
            raise UndefinedError("no condition of a Piecewise holds")
        if op in ("rel", "and", "or", "not", "bool", "ite", "xor"):
            raise UnsupportedNodeError("a condition used as a number")
        u, ug = self._eval(node[1], st)
        if op == "exp":
            v = ctx.exp(u)
            return v, self._scale(ug, v)
        if op == "log":
            if u <= 0:
                raise UndefinedError("log of a non-positive number")
            return ctx.log(u), self._scale(ug, 1 / u)
        if op == "tanh":
            v = ctx.tanh(u)
            return v, self._scale(ug, 1 - v * v)
        if op == "sigmoid":
            if u >= 0:
                z = ctx.exp(-u) if u < ctx.big else ctx.zero
                v = 1 / (1 + z)
            else:
                z = ctx.exp(u) if -u < ctx.big else ctx.zero
                v = z / (1 + z)
            return v, self._scale(ug, v * (1 - v))
        if op == "softplus":
            # log(1 + e^u) = max(u, 0) + log1p(e^-|u|)
            au = u if u >= 0 else -u
            v = (u if u > 0 else ctx.zero) + (ctx.log1p(ctx.exp(-au)) if au < ctx.big else ctx.zero)
            if u >= 0:
                s = 1 / (1 + (ctx.exp(-u) if u < ctx.big else ctx.zero))
            else:
                z = ctx.exp(u) if -u < ctx.big else ctx.zero
                s = z / (1 + z)
            return v, self._scale(ug, s)
        if op == "Abs":
            if u == 0:
                st.kink = True
            st.sig.append((idx, (u > 0) - (u < 0)))
            return (u if u >= 0 else -u), self._scale(ug, -1 if u < 0 else 1)
        if op == "sign":
            s = (u > 0) - (u < 0)
            if u == 0:
                st.kink = True
            st.sig.append((idx, s))
            return ctx.num(sympy.Integer(s)), self._zeros(st)
        if op == "floor":
            f = ctx.floor(u)
            if f == u:
                st.kink = True
            st.sig.append((idx, int(f)))
            return f, self._zeros(st)
        if op == "sqrt":  # pragma: no cover - sympy writes sqrt as Pow(., 1/2)
            raise UnsupportedNodeError("sqrt")
        raise UnsupportedNodeError(op)  # pragma: no cover

    def _truth(self, idx: int, st: _State) -> bool:
        node = self.nodes[idx]
        op = node[0]
        if op == "bool":
            return node[1]
        if op == "rel":
            saved = st.grad
            st.grad = False
            try:
                lhs, _ = self._eval(node[2], st)
                rhs, _ = self._eval(node[3], st)
            finally:
                st.grad = saved
            rel = node[1]
            if lhs == rhs:
                st.kink = True
            elif st.ctx is MP:
                scale = max(abs(lhs), abs(rhs))
                if abs(lhs - rhs) <= scale * REL_SLACK:
                    st.kink = True  # a near tie: the branch is taken, but do not trust derivatives here
            out = {"lt": lhs < rhs, "le": lhs <= rhs, "gt": lhs > rhs, "ge": lhs >= rhs,
                   "eq": lhs == rhs, "ne": lhs != rhs}[rel]
            st.sig.append((idx, out))
            return bool(out)
        if op == "and":
            return all(self._truth(a, st) for a in node[1])
        if op == "or":
            return any(self._truth(a, st) for a in node[1])
        if op == "not":
            return not self._truth(node[1], st)
        if op == "ite":
            c, a, b = node[1]
            return self._truth(a, st) if self._truth(c, st) else self._truth(b, st)
        if op == "xor":
            return sum(self._truth(a, st) for a in node[1]) % 2 == 1
        raise UnsupportedNodeError(f"{op} used as a condition")


# -- norms --------------------------------------------------------------------------------------


def norm_p(vec, p: float):
    a = [abs(c) for c in vec]
    if p == 1:
        return sum(a, mpmath.mpf(0))
    if p == 2:
        return mpmath.sqrt(sum((c * c for c in a), mpmath.mpf(0)))
    return max(a)


def dual(p: float) -> float:
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


NORMS = (1.0, 2.0, math.inf)
NORM_LABEL = {1.0: "1", 2.0: "2", math.inf: "inf"}


# -- sampling ----------------------------------------------------------------------------------


def _float_constants(expr: sympy.Expr) -> list[float]:
    out = []
    for a in expr.atoms(sympy.Number):
        try:
            v = float(a)
        except (TypeError, OverflowError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def _specials(lo: float, hi: float, consts: list[float]) -> list[float]:
    vals = {lo, hi, 0.5 * lo + 0.5 * hi, lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo),
            math.nextafter(lo, math.inf), math.nextafter(hi, -math.inf)}
    if lo < 0 < hi or lo == 0 or hi == 0:
        for t in (0.0, 5e-324, 1e-310, 1e-300, 1e-150, 1e-50, 1e-20, 1e-8, 1e-3):
            vals.update((t, -t))
    w = hi - lo
    for j in (4, 8, 12, 16, 30, 100, 300):
        s = w * 10.0**-j
        vals.update((lo + s, hi - s))
    for c in consts:
        for t in (c, -c):
            vals.update((t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)))
    return sorted(v for v in vals if lo <= v <= hi and math.isfinite(v))


def sample_points(box, expr: sympy.Expr, rng: np.random.Generator, n_random: int = 48, grid_cap: int = 160) -> list[tuple]:
    """Corners, centre, a grid over special values (ends, 0, tiny, thresholds and their ulps), random points."""
    n = len(box)
    lo = np.array([b[0] for b in box], dtype=float)
    hi = np.array([b[1] for b in box], dtype=float)
    consts = _float_constants(expr)
    pts: set[tuple] = set()
    for corner in np.array(np.meshgrid(*[[0, 1]] * n)).T.reshape(-1, n):
        pts.add(tuple(np.where(corner > 0, hi, lo)))
    pts.add(tuple(0.5 * lo + 0.5 * hi))
    specials = [_specials(float(lo[k]), float(hi[k]), consts) for k in range(n)]
    total = math.prod(len(s) for s in specials)
    if total <= grid_cap:
        for p in np.array(np.meshgrid(*specials)).T.reshape(-1, n):
            pts.add(tuple(float(v) for v in p))
    else:
        for _ in range(grid_cap):
            pts.add(tuple(float(s[rng.integers(len(s))]) for s in specials))
        # every special value on every axis at least once, the others at the centre or a corner
        for k in range(n):
            for v in specials[k]:
                base = np.where(rng.random(n) < 0.5, lo, hi) if rng.random() < 0.5 else 0.5 * lo + 0.5 * hi
                p = base.copy()
                p[k] = v
                pts.add(tuple(float(c) for c in p))
    u = rng.random((n_random, n))
    for p in lo + u * (hi - lo):
        pts.add(tuple(float(min(max(c, a), b)) for c, a, b in zip(p, lo, hi, strict=True)))
    # log-uniform magnitudes where a box spans many orders
    mags = np.maximum(np.abs(lo), np.abs(hi))
    for _ in range(16):
        p = []
        for k in range(n):
            if mags[k] > 1e-300 and (hi[k] - lo[k]) > 0:
                e = rng.uniform(-320, math.log10(mags[k]))
                v = 10.0**e * (1 if rng.random() < 0.5 else -1)
                v = min(max(v, lo[k]), hi[k])
            else:
                v = lo[k]
            p.append(float(v))
        pts.add(tuple(p))
    return sorted(pts)


# -- harness ---------------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str                 # unsound | crash | self_detected | timeout | nonfinite
    quantity: str
    certified: Any = None
    true: str | None = None
    witness: Any = None
    detail: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "quantity": self.quantity, "certified": self.certified,
                "true": self.true, "witness": self.witness, "detail": self.detail}


@dataclass
class CaseResult:
    status: str = "ok"                                  # ok | build_error | gt_unsupported | gt_timeout
    outcomes: dict[str, str] = field(default_factory=dict)  # quantity -> certified | refused:<Error> | crash | timeout | ...
    certified: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    expression: str = ""
    srepr: str = ""
    points: int = 0
    pairs: int = 0
    seconds_certify: float = 0.0
    seconds_truth: float = 0.0
    primitives: list[str] = field(default_factory=list)


def library_namespace() -> dict:
    import opendp_hybridad as hd

    return {"sigmoid": hd.sigmoid, "softplus": hd.softplus, "where": hd.where, "clip": hd.clip}


def _fmt(v) -> str:
    return mpmath.nstr(v, 25) if isinstance(v, mpmath.mpf) else repr(v)


def _point_json(x) -> list[str]:
    return [repr(float(c)) for c in x]


def certify(fn, tolerance: float, time_budget: float, deadline: float, result: CaseResult) -> None:
    """Every certificate of ``fn``, each classified; stops at the case deadline."""
    from opendp_hybridad.errors import HybridADError, SoundnessError

    jobs: list[tuple[str, Callable[[], Any]]] = [("range", lambda: fn.range(tolerance=tolerance, time_budget=time_budget))]
    for p in NORMS:
        jobs.append((f"K{NORM_LABEL[p]}", lambda p=p: fn.lipschitz(norm=p, tolerance=tolerance, time_budget=time_budget)))
    jobs.append(("partials", lambda: fn.partial_bounds(tolerance=tolerance, time_budget=time_budget / 2)))
    for name, job in jobs:
        left = deadline - time.perf_counter()
        if left <= 0:
            result.outcomes[name] = "timeout"
            continue
        try:
            with time_limit(left):
                cert = job()
        except CaseTimeout:
            result.outcomes[name] = "timeout"
            result.findings.append(Finding("timeout", name, detail=f"certification over the case limit at {name}"))
            continue
        except SoundnessError as exc:
            result.outcomes[name] = "self_detected"
            result.findings.append(Finding("self_detected", name, detail=str(exc)))
            continue
        except HybridADError as exc:
            result.outcomes[name] = f"refused:{type(exc).__name__}"
            continue
        except Exception as exc:
            result.outcomes[name] = "crash"
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
            result.findings.append(Finding("crash", name, detail=f"{type(exc).__name__}: {exc}\n{tb}"))
            continue
        if name == "range":
            value: Any = (float(cert.lower), float(cert.upper))
            witnesses = [tuple(cert.argmin.point.values()), tuple(cert.argmax.point.values())]
            bad = not (math.isfinite(value[0]) and math.isfinite(value[1]) and value[0] <= value[1])
        elif name == "partials":
            value = {k: float(c.upper) for k, c in cert.items()}
            witnesses = [tuple(c.witness.point.values()) for c in cert.values()]
            bad = not all(math.isfinite(v) and v >= 0 for v in value.values())
        else:
            value = float(cert.upper)
            witnesses = [tuple(cert.witness.point.values())]
            bad = not (math.isfinite(value) and value >= 0)
        if bad:
            result.outcomes[name] = "nonfinite"
            result.findings.append(Finding("nonfinite", name, certified=repr(value), detail="certificate is not a finite, ordered number"))
            continue
        result.outcomes[name] = "certified"
        result.certified[name] = value
        result.certified.setdefault("_witnesses", []).extend(witnesses)


class _Checker:
    """Compares reference values with the certificates; keeps the worst violation per quantity."""

    def __init__(self, ev: Evaluator, certified: dict, names: tuple[str, ...], box):
        self.ev = ev
        self.c = certified
        self.names = names
        self.box = box
        self.worst: dict[str, tuple] = {}   # quantity -> (excess ratio, Finding)
        self.undefined_seen: PointResult | None = None

    def _flag(self, quantity: str, certified: float, true, excess, witness, detail: str, confirm: Callable[[], Any]) -> None:
        prev = self.worst.get(quantity)
        if prev is not None and prev[0] >= excess:
            return
        # confirm at 400 and 600 digits (``confirm`` recomputes the true quantity at the current
        # precision): a real value is the same at both, rounding noise of a zero is not
        values = []
        for dps in (CONFIRM_DPS, CONFIRM_DPS + 200):
            with mpmath.workdps(dps):
                try:
                    values.append(confirm())
                except (UndefinedError, UnreliableError):
                    return
        if any(v is None for v in values):
            return
        low, again = values
        if abs(again - low) > abs(again) * mpmath.mpf(10) ** -30:
            return
        ok = (again <= certified) if quantity != "range.lower" else (again >= certified)
        if ok:
            return
        self.worst[quantity] = (excess, Finding("unsound", quantity, certified=certified, true=_fmt(again), witness=witness, detail=detail))

    def point(self, r: PointResult) -> None:
        if r.status == "undefined":
            if self.undefined_seen is None:
                self.undefined_seen = r
            return
        if r.status != "ok":
            return
        x = r.x
        v = r.value
        if "range" in self.c:
            lo, hi = self.c["range"]
            if v > hi and v - hi > abs(v) * REL_SLACK:
                self._flag("range.upper", hi, v, float((v - hi) / (abs(hi) + 1e-300)), _point_json(x), "f(x) above the certified upper end",
                           lambda: self._value(x))
            if v < lo and lo - v > abs(v) * REL_SLACK:
                self._flag("range.lower", lo, v, float((lo - v) / (abs(lo) + 1e-300)), _point_json(x), "f(x) below the certified lower end",
                           lambda: self._value(x))
        if r.grad is None:
            return
        g = r.grad
        for p in NORMS:
            key = f"K{NORM_LABEL[p]}"
            if key in self.c:
                K = self.c[key]
                t = norm_p(g, p)
                if t > K * (1 + REL_SLACK):
                    self._flag(key, K, t, float(t / (K + 1e-300)), _point_json(x), f"||grad f(x)||_{NORM_LABEL[p]} above K",
                               lambda p=p: self._grad_norm(x, p))
        if "partials" in self.c:
            for k, name in enumerate(self.names):
                B = self.c["partials"][name]
                t = abs(g[k])
                if t > B * (1 + REL_SLACK):
                    self._flag(f"partial[{name}]", B, t, float(t / (B + 1e-300)), _point_json(x), f"|df/d{name}(x)| above the bound",
                               lambda k=k: self._partial(x, k))

    def pair(self, a: PointResult, b: PointResult, how: str) -> None:
        if a.status != "ok" or b.status != "ok":
            return
        diff = abs(a.value - b.value)
        d = [mpmath.mpf(p) - mpmath.mpf(q) for p, q in zip(a.x, b.x, strict=True)]
        if all(c == 0 for c in d):
            return
        slack = (abs(a.value) + abs(b.value)) * mpmath.mpf(10) ** (-DPS + 8)
        for p in NORMS:
            key = f"K{NORM_LABEL[p]}"
            if key not in self.c:
                continue
            dist = norm_p(d, dual(p))
            q = (diff - slack) / dist
            K = self.c[key]
            if q > K * (1 + REL_SLACK):
                self._flag(key, K, q, float(q / (K + 1e-300)), [_point_json(a.x), _point_json(b.x)],
                           f"|f(a) - f(b)| / ||a - b||_{NORM_LABEL[dual(p)]} above K ({how})",
                           lambda p=p, ax=a.x, bx=b.x: self._quotient(ax, bx, dual(p)))
        if "partials" in self.c:
            moved = [k for k, c in enumerate(d) if c != 0]
            if len(moved) == 1:
                k = moved[0]
                name = self.names[k]
                q = (diff - slack) / abs(d[k])
                B = self.c["partials"][name]
                if q > B * (1 + REL_SLACK):
                    self._flag(f"partial[{name}]", B, q, float(q / (B + 1e-300)), [_point_json(a.x), _point_json(b.x)],
                               f"|f(a) - f(b)| / |a_{name} - b_{name}| above the bound ({how})",
                               lambda ax=a.x, bx=b.x: self._quotient(ax, bx, 1.0))

    # high-precision recomputations (called inside workdps(CONFIRM_DPS))
    def _value(self, x):
        r = self.ev.at(x, MP, grad=False, dps=mpmath.mp.dps)
        return r.value if r.status == "ok" else None

    def _grad_norm(self, x, p):
        r = self.ev.at(x, MP, grad=True, dps=mpmath.mp.dps)
        return norm_p(r.grad, p) if r.grad is not None else None

    def _partial(self, x, k):
        r = self.ev.at(x, MP, grad=True, dps=mpmath.mp.dps)
        return abs(r.grad[k]) if r.grad is not None else None

    def _quotient(self, ax, bx, q):
        a = self.ev.at(ax, MP, grad=False, dps=mpmath.mp.dps)
        b = self.ev.at(bx, MP, grad=False, dps=mpmath.mp.dps)
        if a.status != "ok" or b.status != "ok":
            return None
        d = [mpmath.mpf(p) - mpmath.mpf(r) for p, r in zip(ax, bx, strict=True)]
        slack = (abs(a.value) + abs(b.value)) * mpmath.mpf(10) ** (-mpmath.mp.dps + 8)
        return (abs(a.value - b.value) - slack) / norm_p(d, q)

    def findings(self, library: Evaluator | None = None) -> list[Finding]:
        """The worst violation per quantity; ``library`` evaluates the library's own expression.

        A point where the expression as written has no real value (a non-real intermediate)
        but the library's expression, rewritten by sympy under the schema's sign assumptions,
        does (``Abs(sqrt(y))`` with y < 0 becomes ``sqrt(-y)``) is reported as ``semantics``,
        not as unsound: the certificate holds for the function the library computes.
        """
        out = [f for _, f in sorted(self.worst.values(), key=lambda t: -t[0])]
        if self.undefined_seen is not None:
            r = self.undefined_seen
            kind, note = "unsound", ""
            if library is not None:
                lib = library.at(r.x, MP, grad=False)
                if lib.status == "ok":
                    kind = "semantics"
                    note = f"; the library's expression (after sympy's rewriting) is defined there: {_fmt(lib.value)}"
            for q in [k for k in ("range", "K1", "K2", "Kinf", "partials") if k in self.c]:
                out.append(Finding(kind, f"{q}.domain", certified=repr(self.c[q]), true="undefined",
                                   witness=_point_json(r.x),
                                   detail=f"certified, but f is undefined at a point of the box: {r.reason}{note}"))
        return out


def _float_key(x: float) -> int:
    """An integer that orders floats like the reals do (neighbouring floats differ by 1)."""
    bits = struct.unpack("<q", struct.pack("<d", x))[0]
    return bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF)


def _key_float(i: int) -> float:
    bits = i if i >= 0 else (-i) | -0x8000000000000000
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _bisect(ev: Evaluator, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, steps: int = 80) -> tuple | None:
    """Neighbouring float points on either side of a signature change between a and b."""
    def sig(x):
        r = ev.at(x, MP, grad=False, dps=30)
        return (r.status, r.signature)

    sa, sb = sig(a), sig(b)
    if sa == sb:
        return None
    ta, tb = 0.0, 1.0
    pa, pb = a, b
    for _ in range(steps):
        tm = 0.5 * (ta + tb)
        pm = np.clip(a + tm * (b - a), lo, hi)
        if np.array_equal(pm, pa) or np.array_equal(pm, pb):
            break
        sm = sig(pm)
        if sm == sa:
            ta, pa = tm, pm
        else:
            tb, pb, sb = tm, pm, sm
    # then along each axis that still differs, down to neighbouring floats
    for k in range(a.size):
        if pa[k] == pb[k]:
            continue
        q = pa.copy()
        q[k] = pb[k]
        if sig(q) == sa:
            continue
        i0, i1 = _float_key(float(pa[k])), _float_key(float(pb[k]))
        while abs(i1 - i0) > 1:  # bisection over the floats themselves: at most 64 steps
            im = (i0 + i1) // 2
            q = pa.copy()
            q[k] = _key_float(im)
            if sig(q) == sa:
                i0 = im
            else:
                i1 = im
        qa, qb = pa.copy(), pa.copy()
        qa[k], qb[k] = _key_float(i0), _key_float(i1)
        return pa, pb, qa, qb
    return pa, pb, None, None


def _local_search(ev: Evaluator, x0: tuple, lo: np.ndarray, hi: np.ndarray, objective: str, max_fev: int = 150) -> tuple | None:
    """Maximise one quantity from ``x0`` with scipy in float (unit-box coordinates)."""
    import warnings

    from scipy import optimize

    width = hi - lo
    free = width > 0
    if not free.any():
        return None

    def point(t):
        x = lo.copy()
        x[free] = np.clip(lo[free] + np.clip(t, 0, 1) * width[free], lo[free], hi[free])
        return x

    def score(t):
        r = ev.at(point(t), FP, grad=objective != "value+" and objective != "value-")
        if r.status != "ok":
            return 1e300
        try:
            if objective == "value+":
                return -float(r.value)
            if objective == "value-":
                return float(r.value)
            if r.grad is None:
                return 1e300
            if objective.startswith("norm"):
                return -float(norm_p(r.grad, float(objective[4:])))
            return -abs(float(r.grad[int(objective[7:])]))
        except (OverflowError, ValueError):
            return 1e300

    t0 = (np.asarray(x0, dtype=float)[free] - lo[free]) / width[free]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = optimize.minimize(score, np.clip(t0, 0, 1), method="Nelder-Mead", bounds=[(0, 1)] * int(free.sum()),
                                    options={"maxfev": max_fev, "xatol": 1e-13, "fatol": 0})
    except (ValueError, FloatingPointError, OverflowError):
        return None
    return tuple(float(c) for c in point(res.x))


def check_certificates(expr: sympy.Expr, symbols, names, box, certified: dict, seed: int = 0) -> list[Finding]:
    """Check a dict of certified numbers (as ``run_case`` collects them) against the reference.

    ``certified`` maps ``range`` to ``(lower, upper)``, ``K1`` / ``K2`` / ``Kinf`` to
    floats and ``partials`` to ``{name: float}``; the fuzzer's own tests feed it wrong
    numbers to show that each kind of violation is caught.
    """
    from .strategies import Case

    result = CaseResult()
    case = Case(None, tuple(names), tuple(box))
    _truth(case, expr, symbols, result, certified, seed)
    return result.findings


def run_case(case, *, case_timeout: float = 20.0, truth_timeout: float = 30.0, ns: dict | None = None, seed: int = 0) -> CaseResult:
    """Certify ``case`` with the library and check every certificate against the reference."""
    from .strategies import primitives_of, symbols_for, to_sympy

    result = CaseResult(primitives=sorted(primitives_of(case.tree)))
    symbols = symbols_for(case.names)
    try:
        expr = to_sympy(case.tree, symbols, ns or library_namespace())
    except Exception as exc:  # sympy refusing our own construction: not the library's business
        result.status = "build_error"
        result.expression = f"{type(exc).__name__}: {exc}"
        return result
    if not isinstance(expr, sympy.Expr):
        result.status = "build_error"
        result.expression = str(expr)
        return result
    return run_expression(expr, symbols, case.names, case.box, tolerance=case.tolerance, time_budget=case.time_budget,
                          case_timeout=case_timeout, truth_timeout=truth_timeout, seed=seed, result=result)


def run_expression(expr: sympy.Expr, symbols, names, box, *, tolerance: float = 1e-3, time_budget: float = 0.5,
                   case_timeout: float = 20.0, truth_timeout: float = 30.0, seed: int = 0,
                   result: CaseResult | None = None) -> CaseResult:
    """Declare ``expr`` over the box, certify everything, check every certificate against the reference."""
    import opendp_hybridad as hd
    from opendp_hybridad.errors import HybridADError

    from .strategies import Case

    result = result if result is not None else CaseResult()
    case = Case(None, tuple(names), tuple(box), tolerance, time_budget)
    result.expression = str(expr)
    result.srepr = sympy.srepr(expr)

    start = time.perf_counter()
    deadline = start + case_timeout
    try:
        with time_limit(case_timeout):
            schema = hd.Schema({n: (lo, hi) for n, (lo, hi) in zip(case.names, case.box, strict=True)})
            fn = schema.function(expr)
    except CaseTimeout:
        result.outcomes["declare"] = "timeout"
        result.findings.append(Finding("timeout", "declare", detail="declaration over the case limit"))
        return result
    except HybridADError as exc:
        result.outcomes["declare"] = f"refused:{type(exc).__name__}"
        return result
    except Exception as exc:
        result.outcomes["declare"] = "crash"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        result.findings.append(Finding("crash", "declare", detail=f"{type(exc).__name__}: {exc}\n{tb}"))
        return result
    result.outcomes["declare"] = "ok"
    certify(fn, case.tolerance, case.time_budget, deadline, result)
    result.seconds_certify = time.perf_counter() - start

    certified = {k: v for k, v in result.certified.items() if not k.startswith("_")}
    if not certified:
        return result
    t1 = time.perf_counter()
    try:
        with time_limit(truth_timeout):
            _truth(case, expr, symbols, result, certified, seed, library=(fn.expr, tuple(fn.symbols)))
    except CaseTimeout:
        result.status = "gt_timeout"
    except UnsupportedNodeError as exc:
        result.status = "gt_unsupported"
        result.findings.append(Finding("gt_unsupported", "reference", detail=str(exc)))
    except Exception as exc:  # a bug of the fuzzer itself: recorded, never counted against the library
        result.status = "gt_error"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        result.findings.append(Finding("gt_error", "reference", detail=f"{type(exc).__name__}: {exc}\n{tb}"))
    result.seconds_truth = time.perf_counter() - t1
    return result


def _truth(case, expr, symbols, result: CaseResult, certified: dict, seed: int, library=None) -> None:
    ev = Evaluator(expr, symbols)
    lo = np.array([b[0] for b in case.box], dtype=float)
    hi = np.array([b[1] for b in case.box], dtype=float)
    rng = np.random.default_rng(seed)
    checker = _Checker(ev, certified, case.names, case.box)

    pts = sample_points(case.box, expr, rng)
    for w in result.certified.get("_witnesses", []):
        pts.append(tuple(float(min(max(c, a), b)) for c, a, b in zip(w, lo, hi, strict=True)))
    evaluated: dict[tuple, PointResult] = {}

    def visit(x) -> PointResult:
        x = tuple(float(c) for c in x)
        if x not in evaluated:
            r = ev.at(x, MP, grad=True)
            evaluated[x] = r
            checker.point(r)
        return evaluated[x]

    for x in pts:
        visit(x)

    # neighbours of singular points, and of the points where f is defined next to undefined ones
    width = hi - lo
    for r in list(evaluated.values()):
        if r.singular:
            x = np.array(r.x)
            for j in (4, 10, 20, 40, 100, 200, 300):
                for k in range(len(x)):
                    for s in (-1, 1):
                        y = x.copy()
                        y[k] = min(max(y[k] + s * max(width[k] * 10.0**-j, 5e-324), lo[k]), hi[k])
                        visit(y)

    ok = [r for r in evaluated.values() if r.status == "ok"]
    # pairs across signature changes (kinks and jumps), bisected to neighbouring floats
    by_sig: dict[tuple, list[PointResult]] = {}
    for r in evaluated.values():
        if r.status in ("ok", "undefined"):
            by_sig.setdefault((r.status, r.signature), []).append(r)
    groups = list(by_sig.values())
    pairs = 0
    if len(groups) > 1:
        for _ in range(min(24, 4 * len(groups))):
            i, j = rng.choice(len(groups), size=2, replace=False)
            a = groups[i][rng.integers(len(groups[i]))]
            b = groups[j][rng.integers(len(groups[j]))]
            found = _bisect(ev, np.array(a.x), np.array(b.x), lo, hi)
            if found is None:
                continue
            pa, pb, qa, qb = found
            ra, rb = visit(pa), visit(pb)
            checker.pair(ra, rb, "segment across a switch")
            pairs += 1
            if qa is not None:
                checker.pair(visit(qa), visit(qb), "neighbouring floats across a switch")
                pairs += 1
    # random pairs
    for _ in range(min(40, len(ok) * 2)):
        if len(ok) < 2:
            break
        i, j = rng.choice(len(ok), size=2, replace=False)
        checker.pair(ok[i], ok[j], "random pair")
        pairs += 1

    # local searches from the best points, for every certified quantity
    objectives = []
    if "range" in certified:
        objectives += ["value+", "value-"]
    for p in NORMS:
        if f"K{NORM_LABEL[p]}" in certified:
            objectives.append(f"norm{p}")
    if "partials" in certified:
        objectives += [f"partial{k}" for k in range(len(case.names))]

    def key(obj, r: PointResult):
        if obj == "value+":
            return r.value
        if obj == "value-":
            return -r.value
        if r.grad is None:
            return -mpmath.inf
        if obj.startswith("norm"):
            return norm_p(r.grad, float(obj[4:]))
        return abs(r.grad[int(obj[7:])])

    ok = [r for r in evaluated.values() if r.status == "ok"]
    for obj in objectives:
        if not ok:
            break
        starts = sorted(ok, key=lambda r, obj=obj: key(obj, r), reverse=True)[:2]
        for s in starts:
            found = _local_search(ev, s.x, lo, hi, obj)
            if found is None:
                continue
            r = visit(found)
            # small steps around the optimum: difference quotients at the extreme
            x = np.array(found)
            for k in range(len(x)):
                for h in (width[k] * 1e-6, width[k] * 1e-12):
                    y = x.copy()
                    y[k] = min(max(y[k] + h, lo[k]), hi[k])
                    checker.pair(r, visit(y), "small step at a local optimum")
                    pairs += 1

    result.points = len(evaluated)
    result.pairs = pairs
    lib_ev = None
    if library is not None:
        try:
            lib_ev = Evaluator(*library)
        except UnsupportedNodeError:
            lib_ev = None
    result.findings.extend(checker.findings(lib_ev))
