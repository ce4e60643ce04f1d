"""Random expressions over random boxes, for the soundness fuzzer.

Nothing here imports ``opendp_hybridad``: a case is a plain, JSON-friendly tree
(nested tuples) plus a box, and :func:`to_sympy` turns the tree into a sympy
expression given a namespace that supplies the library's named functions
(``sigmoid``, ``softplus``). One generator, written against a tiny
:class:`Chooser` interface, serves both drivers:

* :class:`RandomChooser` (a seeded ``random.Random``): the long, reproducible runs
  of ``bench/fuzz_soundness.py`` (case ``i`` of seed ``s`` is ``case_from_seed(s, i)``);
* :class:`HypothesisChooser` (hypothesis ``draw``): :func:`cases`, the strategy
  the test suite uses (shrinkable, derandomisable).

Every primitive the certified analysis supports is generated (``+ - * /``,
integer, rational, float and symbolic powers, ``sqrt exp log tanh sigmoid
softplus``, ``Abs Min Max clip``, ``where`` with relational, compound and
equality conditions, ``Heaviside`` with each value at 0, ``sign``), plus
``floor``, which the analysis must refuse. Arguments of ``log``, ``sqrt``,
fractional powers and divisions are made valid on the box only *sometimes*
(then the library must refuse), and thresholds sit inside the box, on its ends,
one ulp inside, at 0 and at tiny (subnormal) values. Boxes range from points and
widths of 1e-12 to 1e6 and 1e100 wide, subnormal (1e-310) and near the overflow
of exp (709).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import sympy

# -- choosers -------------------------------------------------------------------------


class RandomChooser:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def uniform(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def weighted(self, table):
        items, weights = zip(*table, strict=True)
        return self.rng.choices(items, weights=weights)[0]


class HypothesisChooser:
    """Choices from a hypothesis ``draw`` (so failing cases shrink)."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def uniform(self, lo: float, hi: float) -> float:
        return self.draw(self.st.floats(lo, hi, allow_nan=False, allow_infinity=False))

    def choice(self, seq):
        return seq[self.draw(self.st.integers(0, len(seq) - 1))]

    def chance(self, p: float) -> bool:
        return self.draw(self.st.integers(0, 999)) < round(p * 1000)

    def weighted(self, table):
        total = sum(w for _, w in table)
        r = self.draw(self.st.integers(0, total - 1))
        for item, w in table:
            if r < w:
                return item
            r -= w
        return table[-1][0]  # pragma: no cover


# -- cases ----------------------------------------------------------------------------

NAMES = ("x", "y", "z", "w")

#: every primitive a tree may contain (the keys of the per-primitive counts)
PRIMITIVES = (
    "add", "sub", "mul", "div", "neg", "pow_int", "pow_neg_int", "pow_rational", "pow_float", "pow_symbolic",
    "sqrt", "exp", "log", "tanh", "sigmoid", "softplus", "abs", "min", "max", "clip",
    "where", "where_continuous", "cond_compound", "cond_equality", "heaviside", "sign", "floor",
    "const_irrational", "const_huge", "const_tiny",
)


@dataclass
class Case:
    """One fuzz case: a tree over ``names`` and the box ``box[k] = (lo, hi)``."""

    tree: Any
    names: tuple[str, ...]
    box: tuple[tuple[float, float], ...]
    #: certification settings drawn with the case (tolerance, time budget in seconds)
    tolerance: float = 1e-3
    time_budget: float = 0.5
    box_kinds: tuple[str, ...] = ()
    label: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "tree": to_json_tree(self.tree), "names": list(self.names),
            "box": [[float.hex(float(lo)), float.hex(float(hi))] for lo, hi in self.box],
            "box_decimal": [[repr(float(lo)), repr(float(hi))] for lo, hi in self.box],
            "tolerance": self.tolerance, "time_budget": self.time_budget,
            "box_kinds": list(self.box_kinds), "label": self.label,
        }

    @classmethod
    def from_json(cls, data: dict) -> Case:
        box = tuple((float.fromhex(lo), float.fromhex(hi)) for lo, hi in data["box"])
        return cls(from_json_tree(data["tree"]), tuple(data["names"]), box, data.get("tolerance", 1e-3),
                   data.get("time_budget", 0.5), tuple(data.get("box_kinds", ())), data.get("label", ""))


def to_json_tree(tree: Any) -> Any:
    if isinstance(tree, tuple):
        return [to_json_tree(t) for t in tree]
    if isinstance(tree, float):
        return {"f": float.hex(tree)}
    return tree


def from_json_tree(data: Any) -> Any:
    if isinstance(data, list):
        return tuple(from_json_tree(t) for t in data)
    if isinstance(data, dict) and "f" in data:
        return float.fromhex(data["f"])
    return data


# -- boxes --------------------------------------------------------------------------------

BOX_KINDS = (
    ("unit", 20), ("positive", 12), ("at_zero", 8), ("tiny", 8), ("point", 5), ("huge", 8),
    ("enormous", 4), ("subnormal", 4), ("near_overflow", 5), ("small_straddle", 5), ("negative", 5),
)


def _round_box(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if lo > hi:
        lo, hi = hi, lo
    return lo, hi


def draw_interval(ch, kind: str) -> tuple[float, float]:
    """One field's bounds of the given kind."""
    if kind == "unit":
        a, b = ch.uniform(-3, 3), ch.uniform(-3, 3)
        return _round_box(a, b)
    if kind == "positive":
        a = ch.choice([1e-3, 0.1, 0.5, 1.0, 2.0])
        return _round_box(a, a + ch.uniform(0.01, 10))
    if kind == "at_zero":
        b = ch.choice([1e-6, 0.5, 1.0, 3.0, 100.0])
        return (0.0, b) if ch.chance(0.6) else (-b, 0.0)
    if kind == "tiny":
        c = ch.choice([0.0, 1.0, -1.0, 1e-5, 1e5, 0.3, 700.0])
        w = ch.choice([1e-12, 1e-12, 1e-9, 1e-15])
        lo = c - w / 2 if ch.chance(0.5) else c
        hi = lo + w
        if hi == lo:  # below the spacing of floats near c: one ulp
            hi = math.nextafter(lo, math.inf)
        return _round_box(lo, hi)
    if kind == "point":
        c = ch.choice([0.0, 1.0, -2.5, 0.1, 1e-300])
        return c, c
    if kind == "huge":
        return ch.choice([(-1e6, 1e6), (0.0, 1e6), (1.0, 1e6), (-1e6, -1.0), (1e3, 1e6)])
    if kind == "enormous":
        return ch.choice([(-1e100, 1e100), (1.0, 1e100), (1e-100, 1e100), (0.0, 1e100), (-1e100, 0.0)])
    if kind == "subnormal":
        return ch.choice([(0.0, 1e-310), (-1e-310, 1e-310), (5e-324, 1e-310), (0.0, 5e-324), (-1e-320, 0.0)])
    if kind == "near_overflow":
        return ch.choice([(700.0, 709.7), (709.0, 709.78), (-745.0, -700.0), (700.0, 710.0), (-10.0, 709.7)])
    if kind == "small_straddle":
        w = ch.choice([1e-8, 1e-3, 1e-15])
        return -w, w * ch.choice([1.0, 0.5, 2.0])
    if kind == "negative":
        a = ch.uniform(-10, -0.01)
        return _round_box(a, a + ch.uniform(0.001, 5))
    raise ValueError(kind)  # pragma: no cover


# -- expression trees -------------------------------------------------------------------------

#: weights of the interior nodes
OPS = (
    ("add", 14), ("sub", 8), ("mul", 14), ("div", 7), ("neg", 2),
    ("pow", 9), ("sqrt", 5), ("exp", 6), ("log", 6), ("tanh", 5), ("sigmoid", 5), ("softplus", 5),
    ("abs", 6), ("min", 4), ("max", 4), ("clip", 3),
    ("where", 5), ("where_continuous", 6), ("heaviside", 3), ("sign", 2), ("floor", 1),
)


class _Env:
    def __init__(self, box, budget: int):
        self.box = box
        self.n = len(box)
        self.budget = budget


def _const_tree(ch) -> tuple:
    kind = ch.weighted([("int", 8), ("rat", 5), ("float", 6), ("special", 3), ("irr", 2)])
    if kind == "int":
        return ("const", "int", ch.integer(-3, 5))
    if kind == "rat":
        q = ch.choice([2, 3, 7, 10, 100])
        return ("const", "rat", ch.integer(-9, 9), q)
    if kind == "float":
        return ("const", "float", round(ch.uniform(-10, 10), ch.integer(0, 17)))
    if kind == "special":
        return ("const", "float", ch.choice([1e-12, 1e6, 1e100, 5e-324, 1e-310, 709.0, 0.1, -1e-300, 2.0**-1074 * 3]))
    return ("const", ch.choice(["pi", "E"]))


def _var(ch, env: _Env) -> tuple:
    return ("var", ch.integer(0, env.n - 1))


def threshold(ch, lo: float, hi: float) -> float:
    """A threshold for a condition on a field with bounds ``[lo, hi]``."""
    kind = ch.weighted([("inside", 8), ("end", 3), ("ulp", 3), ("zero", 2), ("tiny", 2), ("mid", 2), ("outside", 1)])
    if kind == "inside":
        t = ch.uniform(0, 1)
        return min(max(lo + t * (hi - lo), lo), hi)
    if kind == "end":
        return ch.choice([lo, hi])
    if kind == "ulp":
        return math.nextafter(lo, math.inf) if ch.chance(0.5) else math.nextafter(hi, -math.inf)
    if kind == "zero":
        return 0.0
    if kind == "tiny":
        return ch.choice([1e-300, -1e-300, 5e-324, -5e-324, 1e-12, 1e-310])
    if kind == "mid":
        return 0.5 * lo + 0.5 * hi
    return hi + (hi - lo + 1.0) if ch.chance(0.5) else lo - (hi - lo + 1.0)


def _leaf(ch, env: _Env) -> tuple:
    if ch.chance(0.8):
        return _var(ch, env)
    return _const_tree(ch)


def _positive(ch, env: _Env, depth: int) -> tuple:
    """A sub-tree that is positive on the box, or (sometimes) one that reaches 0 or below."""
    if ch.chance(0.35):
        return _expr(ch, env, depth)  # raw: maybe invalid, the library must then refuse
    kind = ch.weighted([("shift", 5), ("square", 3), ("exp", 2), ("softplus", 2), ("sigmoid", 1), ("abs", 2)])
    if kind == "shift":
        # x - lo + c: reaches c at the box's lower end (c = 0: touches 0, the library must refuse)
        k = ch.integer(0, env.n - 1)
        lo = env.box[k][0]
        c = ch.choice([1.0, 1e-12, 1e-300, 0.0, 0.5, 5e-324])
        return ("add", ("sub", ("var", k), ("const", "float", lo)), ("const", "float", c))
    u = _expr(ch, env, depth)
    if kind == "square":
        return ("add", ("pow", u, ("int", 2)), ("const", "float", ch.choice([1.0, 1e-12, 0.5, 1e-300])))
    if kind == "exp":
        return ("exp", u)
    if kind == "softplus":
        return ("softplus", u)
    if kind == "sigmoid":
        return ("sigmoid", u)
    return ("add", ("abs", u), ("const", "float", ch.choice([1.0, 1e-9, 0.25])))


def _condition(ch, env: _Env, depth: int) -> tuple:
    kind = ch.weighted([("var", 10), ("expr", 4), ("compound", 2), ("not", 1), ("equality", 1)])
    rel = ch.choice(["lt", "le", "gt", "ge"])
    if kind == "var":
        k = ch.integer(0, env.n - 1)
        t = threshold(ch, *env.box[k])
        return (rel, ("var", k), ("const", "float", t))
    if kind == "expr":
        return (rel, _expr(ch, env, depth), _leaf(ch, env) if ch.chance(0.5) else ("const", "float", threshold(ch, -1, 1)))
    if kind == "compound":
        return (ch.choice(["and", "or"]), _condition(ch, env, depth), _condition(ch, env, depth))
    if kind == "not":
        return ("not", _condition(ch, env, depth))
    k = ch.integer(0, env.n - 1)
    return (ch.choice(["eq", "ne"]), ("var", k), ("const", "float", threshold(ch, *env.box[k])))


def _jump_argument(ch, env: _Env, depth: int) -> tuple:
    """The argument of a Heaviside or sign: often ``x_k - t`` (a threshold inside the box)."""
    if ch.chance(0.6):
        k = ch.integer(0, env.n - 1)
        t = threshold(ch, *env.box[k])
        if ch.chance(0.3):
            return ("sub", ("const", "float", t), ("var", k))
        return ("sub", ("var", k), ("const", "float", t))
    return _expr(ch, env, depth)


def _expr(ch, env: _Env, depth: int) -> tuple:
    env.budget -= 1
    if depth <= 0 or env.budget <= 0 or ch.chance(0.2):
        return _leaf(ch, env)
    op = ch.weighted(OPS)
    d = depth - 1
    if op in ("add", "sub", "mul", "min", "max"):
        return (op, _expr(ch, env, d), _expr(ch, env, d))
    if op == "div":
        num = _expr(ch, env, d)
        den = _positive(ch, env, d)
        if ch.chance(0.3):
            den = ("neg", den)
        return ("div", num, den)
    if op == "neg":
        return ("neg", _expr(ch, env, d))
    if op == "pow":
        kind = ch.weighted([("int", 6), ("negint", 3), ("rat", 5), ("float", 2), ("symbolic", 2)])
        if kind == "int":
            return ("pow", _expr(ch, env, d), ("int", ch.integer(2, 5)))
        if kind == "negint":
            return ("pow", _positive(ch, env, d), ("int", -ch.integer(1, 3)))
        if kind == "rat":
            p, q = ch.choice([(1, 2), (3, 2), (1, 3), (2, 3), (-1, 2), (5, 2), (-3, 2), (4, 3)])
            return ("pow", _positive(ch, env, d), ("rat", p, q))
        if kind == "float":
            return ("pow", _positive(ch, env, d), ("float", ch.choice([0.7, 1.5, 2.5, -0.3, 3.0000001])))
        return ("pow", _positive(ch, env, d), ("expr", _expr(ch, env, d)))
    if op in ("sqrt", "log"):
        return (op, _positive(ch, env, d))
    if op in ("exp", "tanh", "sigmoid", "softplus", "abs", "floor"):
        return (op, _expr(ch, env, d))
    if op == "clip":
        a, b = sorted([round(ch.uniform(-3, 3), 3), round(ch.uniform(-3, 3), 3)])
        if a == b:
            b = a + 1.0
        return ("clip", _expr(ch, env, d), ("const", "float", a), ("const", "float", b))
    if op == "where":
        return ("where", _condition(ch, env, d), _expr(ch, env, d), _expr(ch, env, d))
    if op == "where_continuous":
        # where(x_k < t, A, A + (x_k - t) B): branches meet on the boundary, the library
        # should prove it (sympy.simplify) and give a Lipschitz bound
        k = ch.integer(0, env.n - 1)
        t = threshold(ch, *env.box[k])
        rel = ch.choice(["lt", "le", "gt", "ge"])
        return ("where_continuous", rel, k, ("const", "float", t), _expr(ch, env, d), _expr(ch, env, d))
    if op == "heaviside":
        u = _jump_argument(ch, env, d)
        h = ch.choice(["default", "0", "1", "1/2"])
        if ch.chance(0.3):
            # H(u) + H(-u) or H(u) - H(-u): a sum whose jumps may (or may not) cancel
            return (ch.choice(["add", "sub"]), ("heaviside", u, h), ("heaviside", ("neg", u), ch.choice(["default", "0", "1", "1/2"])))
        return ("heaviside", u, h)
    if op == "sign":
        return ("sign", _jump_argument(ch, env, d))
    raise ValueError(op)  # pragma: no cover


def draw_case(ch, max_vars: int = 4, max_depth: int = 4) -> Case:
    """One case: 1..max_vars fields with boxes of random kinds, a tree, certification settings."""
    n = ch.integer(1, max_vars)
    kinds = tuple(ch.weighted(BOX_KINDS) for _ in range(n))
    box = tuple(draw_interval(ch, k) for k in kinds)
    env = _Env(box, budget=ch.integer(3, 14 if max_depth <= 4 else 4 * max_depth))
    tree = _expr(ch, env, ch.integer(1, max_depth))
    tolerance = ch.weighted([(1e-3, 7), (1e-6, 2), (0.1, 1)])
    budget = ch.weighted([(0.25, 5), (1.0, 3), (2.0, 1)])
    return Case(tree, NAMES[:n], box, tolerance, budget, kinds)


def case_from_seed(seed: int, index: int, **kwargs) -> Case:
    """Case ``index`` of the reproducible stream ``seed``."""
    rng = random.Random(f"opendp-hybridad-fuzz:{seed}:{index}")
    case = draw_case(RandomChooser(rng), **kwargs)
    defaults = {"max_vars": 4, "max_depth": 4}
    case.label = f"seed={seed} index={index}" + "".join(f" {k}={v}" for k, v in sorted(kwargs.items()) if v != defaults[k])
    return case


def cases(max_vars: int = 4, max_depth: int = 4, budgets: tuple[float, ...] | None = None):
    """A hypothesis strategy of :class:`Case` s (``budgets`` overrides the drawn time budgets)."""
    from hypothesis import strategies as st

    @st.composite
    def _cases(draw):
        case = draw_case(HypothesisChooser(draw), max_vars=max_vars, max_depth=max_depth)
        if budgets is not None:
            case.time_budget = min(case.time_budget, max(budgets))
        return case

    return _cases()


# -- to sympy ------------------------------------------------------------------------------------


def symbols_for(names) -> tuple[sympy.Symbol, ...]:
    """Plain real symbols: the ground truth evaluates the expression exactly as written."""
    return tuple(sympy.Symbol(n, real=True) for n in names)


def _sympy_const(node: tuple) -> sympy.Expr:
    kind = node[1]
    if kind == "int":
        return sympy.Integer(node[2])
    if kind == "rat":
        return sympy.Rational(node[2], node[3])
    if kind == "float":
        return sympy.Float(node[2])
    if kind == "pi":
        return sympy.pi
    if kind == "E":
        return sympy.E
    raise ValueError(kind)  # pragma: no cover


_RELATIONS = {"lt": sympy.Lt, "le": sympy.Le, "gt": sympy.Gt, "ge": sympy.Ge, "eq": sympy.Eq, "ne": sympy.Ne}


def to_sympy(tree: tuple, symbols, ns: dict) -> Any:
    """The sympy expression of ``tree``; ``ns`` supplies ``sigmoid`` and ``softplus`` (the library's)."""
    def go(t):
        return to_sympy(t, symbols, ns)

    op = tree[0]
    if op == "var":
        return symbols[tree[1]]
    if op == "const":
        return _sympy_const(tree)
    if op == "add":
        return go(tree[1]) + go(tree[2])
    if op == "sub":
        return go(tree[1]) - go(tree[2])
    if op == "mul":
        return go(tree[1]) * go(tree[2])
    if op == "div":
        return go(tree[1]) / go(tree[2])
    if op == "neg":
        return -go(tree[1])
    if op == "pow":
        base, (kind, *rest) = go(tree[1]), tree[2]
        if kind == "int":
            return base ** sympy.Integer(rest[0])
        if kind == "rat":
            return base ** sympy.Rational(rest[0], rest[1])
        if kind == "float":
            return base ** sympy.Float(rest[0])
        return base ** go(rest[0])
    if op == "sqrt":
        return sympy.sqrt(go(tree[1]))
    if op == "exp":
        return sympy.exp(go(tree[1]))
    if op == "log":
        return sympy.log(go(tree[1]))
    if op == "tanh":
        return sympy.tanh(go(tree[1]))
    if op == "sigmoid":
        return ns["sigmoid"](go(tree[1]))
    if op == "softplus":
        return ns["softplus"](go(tree[1]))
    if op == "abs":
        return sympy.Abs(go(tree[1]))
    if op == "floor":
        return sympy.floor(go(tree[1]))
    if op == "min":
        return sympy.Min(go(tree[1]), go(tree[2]))
    if op == "max":
        return sympy.Max(go(tree[1]), go(tree[2]))
    if op == "clip":
        clip = ns.get("clip", lambda x, a, b: sympy.Min(sympy.Max(x, a), b))
        return clip(go(tree[1]), go(tree[2]), go(tree[3]))
    if op == "where":
        where = ns.get("where", lambda c, a, b: sympy.Piecewise((a, c), (b, True)))
        return where(go(tree[1]), go(tree[2]), go(tree[3]))
    if op == "where_continuous":
        _, rel, k, t, a, b = tree
        where = ns.get("where", lambda c, a, b: sympy.Piecewise((a, c), (b, True)))
        x, tv, A = symbols[k], go(t), go(a)
        return where(_RELATIONS[rel](x, tv), A, A + (x - tv) * go(b))
    if op == "heaviside":
        h0 = tree[2]
        arg = go(tree[1])
        return sympy.Heaviside(arg) if h0 == "default" else sympy.Heaviside(arg, sympy.Rational(h0))
    if op == "sign":
        return sympy.sign(go(tree[1]))
    if op in _RELATIONS:
        return _RELATIONS[op](go(tree[1]), go(tree[2]))
    if op == "and":
        return sympy.And(go(tree[1]), go(tree[2]))
    if op == "or":
        return sympy.Or(go(tree[1]), go(tree[2]))
    if op == "not":
        return sympy.Not(go(tree[1]))
    raise ValueError(f"unknown node {op}")  # pragma: no cover


def primitives_of(tree: Any) -> set[str]:
    """The primitives (keys of :data:`PRIMITIVES`) a tree uses."""
    out: set[str] = set()

    def walk(t):
        if not isinstance(t, tuple) or not t:
            return
        op = t[0]
        if op == "pow":
            kind = t[2][0]
            if kind == "int":
                out.add("pow_int" if t[2][1] > 0 else "pow_neg_int")
            elif kind == "rat":
                out.add("pow_rational")
            elif kind == "float":
                out.add("pow_float")
            else:
                out.add("pow_symbolic")
                walk(t[2][1])
            walk(t[1])
            return
        if op == "const":
            if t[1] in ("pi", "E"):
                out.add("const_irrational")
            elif t[1] == "float" and abs(t[2]) >= 1e6:
                out.add("const_huge")
            elif t[1] == "float" and 0 < abs(t[2]) <= 1e-12:
                out.add("const_tiny")
            return
        if op in ("and", "or", "not"):
            out.add("cond_compound")
        elif op in ("eq", "ne"):
            out.add("cond_equality")
        elif op in PRIMITIVES:
            out.add(op)
        for child in t[1:]:
            walk(child)

    walk(tree)
    return out
