"""Gradient norms of activation networks from the vertices of their slopes' box.

Let ``f`` be built, on its tape, from the fields by affine combinations with constant coefficients
(``add``, ``neg``, a product with a constant) and smooth activations ``t = sigma(u)`` (tanh, sigmoid,
softplus) of such combinations: any feed-forward network with fixed weights, skip connections
included. Write ``s_t = sigma'(u_t(x))`` for each activation's slope. By the chain rule, taken in
tape order, ``d u_t / dx = a_t + sum_b B_tb s_b d u_b / dx`` involves only slopes of activations
before ``t``, so by induction every ``d u / dx``, and ``grad f = a_f + sum_b c_b s_b d u_b / dx``, is
*affine in each slope separately* (multilinear). Every norm of a vector that is affine in ``s_j`` is
convex in ``s_j``; a function convex in each variable separately attains its maximum over a box at
a vertex (fix all but one variable: the maximum of a convex function of one variable over an
interval is at an end; repeat for each). Hence, with ``S_t`` a proven enclosure of ``s_t`` over a box
``X`` of fields:

    sup_{x in X} ||grad f(x)|| = sup_{x in X} N(s(x)) <= max_{s in prod S_t} N(s) = max over the 2^h vertices,

``N(s)`` the norm of the multilinear gradient at slopes ``s``. At a vertex the gradient is evaluated
in outward-rounded interval arithmetic (:mod:`.interval`, the constants' own enclosures as
coefficients) and its norm rounded up, so the maximum is a proven bound. For a one-layer network
this is the quadratic form ``s^T diag(v) W W^T diag(v) s`` of the issue, whose maximum over the box
of slopes is at a vertex; unlike interval arithmetic it keeps the signs that make the hidden units'
contributions to the gradient cancel.

The slopes' enclosures come from the tape's interval enclosures of the nodes over the box: ``1 - T^2``
for ``T`` the enclosure of a tanh node, ``1/4 - (S - 1/2)^2`` for a sigmoid's, ``sigmoid(U)`` for
softplus of ``U``. (A mean-value form of each unit's argument about the box's centre was tried and
changed no bound of the tightness suite: what is lost is that the vertices treat the slopes as
independent.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.rounding import down_array, up_array
from opendp_hybridad.analysis.tape import Tape

#: activations with a slope rule here (the increasing ones the interval evaluator encloses)
ACTIVATIONS = iv.ACTIVATION_OPS
#: the most activations (2^h vertices per box) handled
MAX_UNITS = 10
#: the most fields times vertices per box: each vertex's gradient is built over every field, so a box costs
#: about n^2 2^h; past this one batch of boxes could outlast a certificate's budget (audit
#: attack_network_bound.py: 512 boxes at n = 20, h = 10 took 44 s), and the path is not taken
MAX_FIELDS_TIMES_VERTICES = 4096

# an affine combination: (constant interval, {basis: coefficient interval}); basis ("x", k) or ("a", node)
_Affine = tuple[tuple[float, float], dict[tuple[str, int], tuple[float, float]]]


def _scale(a: _Affine, lo: float, hi: float) -> _Affine:
    (c_lo, c_hi), terms = a
    k_lo, k_hi = np.array([lo]), np.array([hi])

    def m(x: tuple[float, float]) -> tuple[float, float]:
        r = iv.mul(np.array([x[0]]), np.array([x[1]]), k_lo, k_hi)
        return float(r[0][0]), float(r[1][0])

    return m((c_lo, c_hi)), {b: m(v) for b, v in terms.items()}


def _plus(a: _Affine, b: _Affine) -> _Affine:
    def s(x: tuple[float, float], y: tuple[float, float]) -> tuple[float, float]:
        r = iv.add(np.array([x[0]]), np.array([x[1]]), np.array([y[0]]), np.array([y[1]]))
        return float(r[0][0]), float(r[1][0])

    terms = dict(a[1])
    for k, v in b[1].items():
        terms[k] = s(terms[k], v) if k in terms else v
    return s(a[0], b[0]), terms


def _scale_arrays(c_lo: float, c_hi: float, j_lo: np.ndarray, j_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[c_lo, c_hi] * [j_lo, j_hi]`` for a constant interval of one sign (the general rule otherwise):
    the corner products that are the extremes, each correctly rounded and moved one float outward."""
    if c_lo >= 0:
        lo = np.where(j_lo >= 0, c_lo * j_lo, c_hi * j_lo)
        hi = np.where(j_hi >= 0, c_hi * j_hi, c_lo * j_hi)
    elif c_hi <= 0:
        lo = np.where(j_hi >= 0, c_lo * j_hi, c_hi * j_hi)
        hi = np.where(j_lo >= 0, c_hi * j_lo, c_lo * j_lo)
    else:
        return iv.mul(c_lo, c_hi, j_lo, j_hi)
    return down_array(lo), up_array(hi)


@dataclass
class Unit:
    node: int                                  # the activation's tape node
    op: str
    arg: int                                   # its argument's node
    terms: list[tuple[tuple[str, int], float, float]]  # the argument's coefficients on the basis
    const: tuple[float, float] = (0.0, 0.0)    # the argument's constant term (an interval)


class SlopeVertices:
    """The multilinear structure of a network's gradient, read from its tape (None from :meth:`detect` otherwise)."""

    def __init__(self, n: int, units: list[Unit], out: list[tuple[tuple[str, int], float, float]]):
        self.n = n
        self.units = units
        self.out = out
        h = len(units)
        self.bits = ((np.arange(2**h)[:, None] >> np.arange(h)[None, :]) & 1).astype(bool)  # (V, h)
        #: the units whose argument involves the fields only (the first layer), in tape order
        self.field_units = [t for t, u in enumerate(units) if u.terms and all(b[0] == "x" for b, _, _ in u.terms)]
        #: their d u_t / dx: a constant row each, enclosed once (the same outward-rounded sums :meth:`gradients`
        #: would form at every slope point)
        self._field_rows = {t: self._combine(units[t].terms, {}, 1) for t in self.field_units}

    @classmethod
    def detect(cls, tape: Tape, root: int, max_units: int = MAX_UNITS) -> SlopeVertices | None:
        """The structure of ``f`` (node ``root``), or None where ``f`` is not such a network (or has too many units)."""
        forms: list[_Affine | None] = []
        units: list[Unit] = []
        for idx, node in enumerate(tape.nodes[:root + 1]):
            op, args = node.op, node.args
            form: _Affine | None = None
            if op == "var":
                form = ((0.0, 0.0), {("x", node.payload): (1.0, 1.0)})
            elif op == "const":
                form = ((float(node.payload[0]), float(node.payload[1])), {})
            elif op == "add" and forms[args[0]] is not None and forms[args[1]] is not None:
                form = _plus(forms[args[0]], forms[args[1]])
            elif op == "neg" and forms[args[0]] is not None:
                form = _scale(forms[args[0]], -1.0, -1.0)
            elif op == "mul" and forms[args[0]] is not None and forms[args[1]] is not None:
                a, b = forms[args[0]], forms[args[1]]
                if not a[1]:  # a constant times an affine combination
                    form = _scale(b, *a[0])
                elif not b[1]:
                    form = _scale(a, *b[0])
            elif op in ACTIVATIONS and forms[args[0]] is not None:
                arg_terms = [(b, lo, hi) for b, (lo, hi) in forms[args[0]][1].items()]
                units.append(Unit(idx, op, args[0], arg_terms, forms[args[0]][0]))
                form = ((0.0, 0.0), {("a", idx): (1.0, 1.0)})
            forms.append(form)
        top = forms[root]
        if top is None or not units or len(units) > max_units or len(tape.variables) * 2**len(units) > MAX_FIELDS_TIMES_VERTICES:
            return None
        if not all(np.isfinite([lo for _, lo, _ in u.terms] + [hi for _, _, hi in u.terms]).all() for u in units):
            return None
        out = [(b, lo, hi) for b, (lo, hi) in top[1].items()]
        return cls(len(tape.variables), units, out)

    def slopes(self, L: list[np.ndarray], H: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Proven enclosures (boxes, units) of each unit's slope from the node enclosures ``L``, ``H`` over the boxes."""
        lows, highs = [], []
        with np.errstate(all="ignore"):
            for u in self.units:
                t_lo, t_hi = L[u.node], H[u.node]
                one = np.ones_like(t_lo)
                if u.op == "tanh":  # 1 - T^2
                    q_lo, q_hi = iv._powi(t_lo, t_hi, 2)
                    s_lo, s_hi = iv.add(one, one, -q_hi, -q_lo)
                elif u.op == "sigmoid":  # 1/4 - (S - 1/2)^2
                    c_lo, c_hi = iv.add(t_lo, t_hi, -0.5 * one, -0.5 * one)
                    q_lo, q_hi = iv._powi(c_lo, c_hi, 2)
                    s_lo, s_hi = iv.add(0.25 * one, 0.25 * one, -q_hi, -q_lo)
                else:  # softplus' = sigmoid(u)
                    a_lo, a_hi = L[u.arg], H[u.arg]
                    s_lo = np.maximum(iv.libm_down_array(iv._sigmoid(a_lo)), 0.0)
                    s_hi = np.minimum(iv.libm_up_array(iv._sigmoid(a_hi)), 1.0)
                ok = np.isfinite(s_lo) & np.isfinite(s_hi) & np.isfinite(t_lo) & np.isfinite(t_hi)
                lows.append(np.where(ok, s_lo, -np.inf))
                highs.append(np.where(ok, s_hi, np.inf))
        return np.stack(lows, axis=1), np.stack(highs, axis=1)

    def _combine(self, terms: list[tuple[tuple[str, int], float, float]], J: dict, npts: int) -> tuple[np.ndarray, np.ndarray]:
        """``sum_b c_b J_b`` (points, n), outward: a field's ``J`` is its unit row; a unit's is ``J[("a", node)]``."""
        acc_lo = np.zeros((npts, self.n))
        acc_hi = np.zeros((npts, self.n))
        for b, c_lo, c_hi in terms:
            if b[0] == "x":
                e = np.zeros((npts, self.n))
                e[:, b[1]] = 1.0
                j_lo = j_hi = e
            else:
                j_lo, j_hi = J[b]
            p_lo, p_hi = _scale_arrays(c_lo, c_hi, j_lo, j_hi)
            # a correctly rounded sum moved one float outward bounds the real one
            acc_lo, acc_hi = down_array(acc_lo + p_lo), up_array(acc_hi + p_hi)
        return acc_lo, acc_hi

    def gradients(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outward enclosures (points, n) of the multilinear gradient at slope points ``s`` (points, units)."""
        npts = s.shape[0]
        J: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        with np.errstate(all="ignore"):
            for t, u in enumerate(self.units):
                row = self._field_rows.get(t)
                a_lo, a_hi = row if row is not None else self._combine(u.terms, J, npts)
                st = s[:, t:t + 1]
                p, q = st * a_lo, st * a_hi  # a point slope times an interval: the ends' products, moved outward
                J[("a", u.node)] = (down_array(np.minimum(p, q)), up_array(np.maximum(p, q)))
            return self._combine(self.out, J, npts)

    def magnitudes(self, s_lo: np.ndarray, s_hi: np.ndarray) -> np.ndarray:
        """``max |grad_k|`` enclosures at every vertex: (boxes, vertices, n), inf where a slope is not enclosed."""
        nb, h = s_lo.shape
        V = self.bits.shape[0]
        s = np.where(self.bits[None, :, :], s_hi[:, None, :], s_lo[:, None, :]).reshape(nb * V, h)
        finite = np.isfinite(s).all(axis=1)
        g_lo, g_hi = self.gradients(np.where(finite[:, None], s, 0.0))
        mag = np.maximum(np.abs(g_lo), np.abs(g_hi))
        mag = np.where(finite[:, None] & np.isfinite(mag), mag, np.inf)
        return mag.reshape(nb, V, self.n)
