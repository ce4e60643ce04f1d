"""Gradients and Hessians built on the tape itself (forward-mode symbolic differentiation of the DAG).

sympy differentiates expression *trees*: the gradient of a network repeats each hidden unit's slope
in every component, and its Hessian (``n^2`` entries, each differentiated again and lowered anew)
cost most of a certificate's two seconds on the issue's MLPs (1.8 s for the Hessian of the 6-4-3-1
tanh network). Differentiating the tape instead keeps its sharing: each node ``v`` gets a node
``dv/dx_k`` built from its arguments' by the chain rule, structurally equal nodes are one node (the
tape's memo), and an identically zero derivative is no node at all.

Soundness: each rule below is the textbook derivative of the op (valid wherever the op is
differentiable, i.e. on the interior of its domain), and every node it emits is an ordinary tape
op, enclosed by :mod:`.interval` with outward rounding. It is used only for ``f`` made of smooth
ops alone (:func:`~.smoothness.statically_smooth`): there the derivative of the tape is the
derivative of ``f`` wherever ``f``'s enclosure is defined, and a derivative that blows up at a
domain edge (``sqrt`` at 0) fails to enclose (a reciprocal of an interval containing 0), as
sympy's does. The slopes are written as the tape writes sympy's: ``tanh' = 1 - tanh^2`` and
``sigmoid' = 1/4 - (sigmoid - 1/2)^2``, in which the function occurs once (its enclosure is the
exact image of the function's).
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from opendp_hybridad.analysis.rounding import round_down, round_up
from opendp_hybridad.analysis.smoothness import statically_smooth
from opendp_hybridad.analysis.tape import Node, Tape

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

#: ops whose derivative rule is implemented here (every SMOOTH op of the tape)
RULES = ("var", "const", "add", "mul", "neg", "powi", "recip", "sqrt", "powr", "exp", "log", "tanh", "sigmoid", "softplus")


class Differentiator:
    """Appends derivative nodes to ``tape``; ``d(i, k)`` is the node of ``d node_i / d x_k`` (None: identically 0)."""

    def __init__(self, tape: Tape):
        self.tape = tape
        self._memo: dict[tuple[int, int], int | None] = {}
        self.one = self.const(1.0, 1.0)

    # -- emitting (shared through the tape's memo) -------------------------------------------------
    def const(self, lo: float, hi: float) -> int:
        return self.tape._emit(("const", lo, hi), Node("const", (), (lo, hi), None))

    def add(self, a: int | None, b: int | None) -> int | None:
        if a is None:
            return b
        if b is None:
            return a
        return self.tape._emit(("add", a, b), Node("add", (a, b), None, None))

    def mul(self, a: int | None, b: int | None) -> int | None:
        if a is None or b is None:
            return None
        if a == self.one:
            return b
        if b == self.one:
            return a
        return self.tape._emit(("mul", a, b), Node("mul", (a, b), None, None))

    def neg(self, a: int | None) -> int | None:
        if a is None:
            return None
        node = self.tape.nodes[a]
        if node.op == "neg":  # -(-v) = v
            return node.args[0]
        return self.tape._emit(("neg", a), Node("neg", (a,), None, None))

    def unary(self, op: str, a: int, payload=None) -> int:
        return self.tape._emit((op, a, payload), Node(op, (a,), payload, None))

    def slope(self, i: int) -> int:
        """The derivative of unary node ``i`` with respect to its argument (as a node)."""
        node = self.tape.nodes[i]
        a = node.args[0]
        op = node.op
        if op == "exp":
            return i
        if op == "log":
            return self.tape._emit(("recip", a), Node("recip", (a,), None, None))
        if op == "tanh":  # 1 - tanh^2
            return self.add(self.one, self.neg(self.unary("powi", i, 2)))
        if op == "sigmoid":  # 1/4 - (s - 1/2)^2
            centred = self.add(i, self.const(-0.5, -0.5))
            return self.add(self.const(0.25, 0.25), self.neg(self.unary("powi", centred, 2)))
        if op == "softplus":
            return self.unary("sigmoid", a)
        if op == "sqrt":  # 1 / (2 sqrt(a))
            return self.mul(self.const(0.5, 0.5), self.tape._emit(("recip", i), Node("recip", (i,), None, None)))
        if op == "recip":  # -(1/a)^2
            return self.neg(self.unary("powi", i, 2))
        if op == "powi":  # n a^(n-1)
            n = node.payload
            lower = a if n == 2 else self.unary("powi", a, n - 1)
            return self.mul(self.const(float(n), float(n)), lower)
        if op == "powr":  # p a^(p-1), the exponent enclosure moved by 1 exactly then rounded outward
            plo, phi = node.payload
            q = (round_down(Fraction(plo) - 1), round_up(Fraction(phi) - 1))
            return self.mul(self.const(plo, phi), self.unary("powr", a, q))
        raise NotImplementedError(op)  # pragma: no cover - callers check RULES

    # -- the chain rule ------------------------------------------------------------------------------
    def d(self, i: int, k: int) -> int | None:
        key = (i, k)
        if key in self._memo:
            return self._memo[key]
        node = self.tape.nodes[i]
        op, args = node.op, node.args
        if op == "var":
            out = self.one if node.payload == k else None
        elif op == "const":
            out = None
        elif op == "add":
            out = self.add(self.d(args[0], k), self.d(args[1], k))
        elif op == "mul":
            a, b = args
            out = self.add(self.mul(self.d(a, k), b), self.mul(a, self.d(b, k)))
        elif op == "neg":
            out = self.neg(self.d(args[0], k))
        elif op in RULES:
            da = self.d(args[0], k)
            out = None if da is None else self.mul(self.slope(i), da)
        else:  # pragma: no cover - only smooth tapes reach here
            raise NotImplementedError(op)
        self._memo[key] = out
        return out


def derivative_tape(fn: RecordFunction, component: int | None = None
                    ) -> tuple[Tape, list[int], list[list[int | None]]] | None:
    """The tape of ``f`` with its gradient (or one component) and the matching Hessian rows appended.

    Returns ``(tape, y, rows)``: ``y[j]`` the node of the j-th output, ``rows[j][k]`` that of its
    derivative in ``x_k`` (None where identically 0). None where ``f`` uses a non-smooth op (kinks,
    steps, conditionals: sympy's derivatives and the smoothness masks handle those).
    """
    tape = Tape(list(fn.symbols))
    root = tape.add_output(fn.expr)
    if not statically_smooth(tape)[root] or any(tape.nodes[i].op not in RULES for i in range(root + 1)):
        return None
    ad = Differentiator(tape)
    n = len(fn.names)
    zero = ad.const(0.0, 0.0)
    wanted = list(range(n)) if component is None else [component]
    grads = [ad.d(root, k) for k in wanted]
    y = [zero if g is None else g for g in grads]
    rows: list[list[int | None]] = [[None] * n for _ in wanted]
    for j, g in enumerate(grads):
        if g is None:
            continue
        for k in range(n):
            if component is None and k < j:  # symmetric (f is C^2 where its enclosures hold): one triangle
                rows[j][k] = rows[k][j]
                continue
            rows[j][k] = ad.d(g, k)
    return tape, y, rows


class FloatTape:
    """Float evaluation of a tape prefix at points (witness search only: never part of a bound)."""

    def __init__(self, tape: Tape, outputs: list[int]):
        self.nodes = tape.nodes[:max(outputs) + 1]
        self.outputs = outputs

    def __call__(self, *cols: np.ndarray) -> list[np.ndarray]:
        v: list[np.ndarray] = []
        with np.errstate(all="ignore"):
            for node in self.nodes:
                op, a = node.op, node.args
                if op == "var":
                    r = np.asarray(cols[node.payload], dtype=float)
                elif op == "const":
                    r = np.full(np.shape(cols[0]), 0.5 * (node.payload[0] + node.payload[1]))
                elif op == "add":
                    r = v[a[0]] + v[a[1]]
                elif op == "mul":
                    r = v[a[0]] * v[a[1]]
                elif op == "neg":
                    r = -v[a[0]]
                elif op == "powi":
                    r = v[a[0]] ** node.payload
                elif op == "recip":
                    r = 1.0 / v[a[0]]
                elif op == "sqrt":
                    r = np.sqrt(v[a[0]])
                elif op == "powr":
                    r = v[a[0]] ** (0.5 * (node.payload[0] + node.payload[1]))
                elif op == "exp":
                    r = np.exp(v[a[0]])
                elif op == "log":
                    r = np.log(v[a[0]])
                elif op == "tanh":
                    r = np.tanh(v[a[0]])
                elif op == "sigmoid":
                    z = np.exp(-np.abs(v[a[0]]))
                    r = np.where(v[a[0]] >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
                elif op == "softplus":
                    r = np.logaddexp(0.0, v[a[0]])
                else:  # pragma: no cover - only smooth tapes are built here
                    raise NotImplementedError(op)
                v.append(r)
        return [v[o] for o in self.outputs]
