"""Gradient norms of activation networks over the box of their first layer's arguments.

Let ``f`` be an activation network (:mod:`.network`) whose first-layer units take arguments
``z_i = c_i + sum_k W_ik x_k`` (affine in the fields only), ``m`` distinct ones, fewer than the
``n`` fields. Every other unit's argument is an affine combination of earlier units' values (and
perhaps of fields, a skip connection). The gradient ``grad f = N(s)`` is multilinear in the units'
slopes ``s`` (:mod:`.network`), and each slope is a function of its unit's argument. For a box ``B``
of ``z`` values:

* a first-layer unit's argument ranges over ``B_i`` exactly, and its value and slope over their
  enclosures on ``B_i``; any other unit's argument lies in the interval enclosure of its affine
  combination, with every earlier unit's value enclosure and each field's whole interval; so, for
  every ``x`` in the fields' box ``X`` with ``z(x)`` in ``B``, every slope lies in the slope box
  ``S(B)``, and ``||grad f(x)|| <= max over the vertices of S(B) of ||N||`` (:mod:`.network`: the
  maximum of a function convex in each slope over a box is at a vertex);
* ``z(X)`` is the zonotope ``Z = {c + W x : x in X}``; a box ``B`` with no point of ``Z`` holds no
  ``z(x)`` and bounds nothing: it is proven empty by a direction ``y`` with
  ``min over B of y.z > max over Z of y.z`` (a separating hyperplane), both sides enclosed in
  outward-rounded interval arithmetic, the coefficients' own enclosures included. The directions
  tried are the facet normals of ``Z - B`` (orthogonal to ``m - 1`` of its generators, ``W``'s columns
  and the coordinate axes), so every box that misses ``Z`` by a margin the rounding cannot hide is
  found (a point outside a zonotope violates one of its facets' inequalities). Any direction gives
  a valid proof: the normals are computed in plain floats.

Hence branch and bound over ``z`` (:func:`.branch_and_bound.maximize`), with the root box the
enclosure of ``z(X)`` and empty boxes bounded by ``-inf``, returns a bound on
``sup over X of ||grad f||_2``. Its value is a cap for the search over ``x``, which finds the
witness. Where the first layer narrows the fields (``m < n``), the box of slopes loses less to
their dependence: in ``z`` the first layer's slopes are independent, and for one hidden layer the
vertex bound is exact on every box inside ``Z`` (the sigmoid 10-5-1 network of the tightness suite).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from opendp_hybridad.analysis import interval as iv
from opendp_hybridad.analysis.branch_and_bound import BoxBounds
from opendp_hybridad.analysis.network import SlopeVertices
from opendp_hybridad.analysis.rounding import TINY, down_array, gamma, up_array
from opendp_hybridad.errors import UnboundedError

#: the most facet directions tried per box (each is a row of a (boxes x directions) product)
MAX_DIRECTIONS = 8192


def _directions(W: np.ndarray) -> np.ndarray:
    """Unit normals (both signs) of the facets of zonotopes with generators ``W``'s columns and the axes (floats)."""
    m = W.shape[0]
    if m == 1:
        return np.array([[1.0], [-1.0]])
    gens = [W[:, k] for k in range(W.shape[1]) if np.any(W[:, k] != 0)] + list(np.eye(m))
    normals = []
    for subset in itertools.combinations(range(len(gens)), m - 1):
        A = np.array([gens[j] for j in subset])
        _, s, vt = np.linalg.svd(A)
        if s[-1] <= 1e-9 * s[0]:
            continue  # dependent generators: no facet
        normals.append(vt[-1])
    if not normals:
        return np.zeros((0, m))
    Y = np.array(normals)
    Y = np.unique(np.round(np.vstack([Y, -Y]), 12), axis=0)
    return Y


class FirstLayerObjective:
    """``max ||grad f||_2`` over boxes of the first layer's arguments (module docstring); None from :meth:`detect`
    where ``f`` has no such layer narrower than its fields."""

    def __init__(self, vertices: SlopeVertices, first: list[int], W: tuple[np.ndarray, np.ndarray],
                 c: tuple[np.ndarray, np.ndarray], x_lo: np.ndarray, x_hi: np.ndarray):
        self.vertices = vertices
        self.first = {arg: i for i, arg in enumerate(first)}  # argument node -> coordinate of z
        self.W_lo, self.W_hi = W
        self.c_lo, self.c_hi = c
        self.x_lo, self.x_hi = np.asarray(x_lo, dtype=float), np.asarray(x_hi, dtype=float)
        m, n = self.W_lo.shape
        self.m, self.n = m, n
        # the root box: each z_i's enclosure over X
        with np.errstate(all="ignore"):  # (weights near the float range: an overflowing midpoint only steers directions)
            self.root_lo, self.root_hi = self._affine(self.c_lo, self.c_hi, self.W_lo, self.W_hi)
            mid = 0.5 * self.W_lo + 0.5 * self.W_hi
            self.directions = _directions(np.where(np.isfinite(mid), mid, 0.0))
        # max over Z of y.z, for each direction y, rounded up
        Y = self.directions
        ones = np.ones(Y.shape[0])
        acc_lo, acc_hi = np.zeros(Y.shape[0]), np.zeros(Y.shape[0])
        for i in range(m):
            p_lo, p_hi = iv.mul(Y[:, i], Y[:, i], self.c_lo[i] * ones, self.c_hi[i] * ones)
            acc_lo, acc_hi = iv.add(acc_lo, acc_hi, p_lo, p_hi)
        for k in range(n):
            s_lo, s_hi = np.zeros(Y.shape[0]), np.zeros(Y.shape[0])
            for i in range(m):
                p_lo, p_hi = iv.mul(Y[:, i], Y[:, i], self.W_lo[i, k] * ones, self.W_hi[i, k] * ones)
                s_lo, s_hi = iv.add(s_lo, s_hi, p_lo, p_hi)
            t_lo, t_hi = iv.mul(s_lo, s_hi, self.x_lo[k] * ones, self.x_hi[k] * ones)
            acc_lo, acc_hi = iv.add(acc_lo, acc_hi, t_lo, t_hi)
        self.support_up = acc_hi
        self._Y_pos, self._Y_neg = np.maximum(Y, 0.0).T.copy(), np.minimum(Y, 0.0).T.copy()
        self._Y_pos_abs, self._Y_neg_abs = np.abs(self._Y_pos), np.abs(self._Y_neg)
        # Higham's gamma_(m+1) and m subnormal steps, each doubled for room
        self._gamma = 2.0 * gamma(m + 1)
        self._tiny = 2.0 * m * TINY

    def _affine(self, c_lo, c_hi, W_lo, W_hi) -> tuple[np.ndarray, np.ndarray]:
        """Enclosure of ``c + W x`` over ``X`` (rows of ``W``)."""
        acc_lo, acc_hi = np.array(c_lo, dtype=float), np.array(c_hi, dtype=float)
        for k in range(W_lo.shape[1]):
            xl, xh = np.full(W_lo.shape[0], self.x_lo[k]), np.full(W_lo.shape[0], self.x_hi[k])
            p_lo, p_hi = iv.mul(W_lo[:, k], W_hi[:, k], xl, xh)
            acc_lo, acc_hi = iv.add(acc_lo, acc_hi, p_lo, p_hi)
        return acc_lo, acc_hi

    @classmethod
    def detect(cls, vertices: SlopeVertices | None, x_lo: np.ndarray, x_hi: np.ndarray) -> FirstLayerObjective | None:
        if vertices is None:
            return None
        n = vertices.n
        first: list[int] = []
        rows = []
        for t in vertices.field_units:
            u = vertices.units[t]
            if u.arg not in first:
                first.append(u.arg)
                rows.append(u)
        m = len(first)
        if m == 0 or m >= n or math.comb(n + m, m - 1) > MAX_DIRECTIONS // 2:
            return None
        W_lo, W_hi = np.zeros((m, n)), np.zeros((m, n))
        for i, u in enumerate(rows):
            for (_, k), lo, hi in u.terms:
                W_lo[i, k], W_hi[i, k] = lo, hi
        c_lo = np.array([u.const[0] for u in rows], dtype=float)
        c_hi = np.array([u.const[1] for u in rows], dtype=float)
        if not (np.isfinite(W_lo).all() and np.isfinite(W_hi).all() and np.isfinite(c_lo).all() and np.isfinite(c_hi).all()):
            return None
        if not (np.isfinite(x_lo).all() and np.isfinite(x_hi).all()):
            return None
        return cls(vertices, first, (W_lo, W_hi), (c_lo, c_hi), x_lo, x_hi)

    # -- the objective (branch_and_bound.Objective) ---------------------------------------------------
    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> BoxBounds:
        nb = lo.shape[0]
        L: dict[int, np.ndarray] = {}
        H: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for u in self.vertices.units:
                i = self.first.get(u.arg)
                if i is not None:
                    a_lo, a_hi = lo[:, i].copy(), hi[:, i].copy()
                else:
                    a_lo, a_hi = np.full(nb, u.const[0]), np.full(nb, u.const[1])
                    for (kind, j), c_lo, c_hi in u.terms:
                        v_lo, v_hi = ((np.full(nb, self.x_lo[j]), np.full(nb, self.x_hi[j])) if kind == "x"
                                      else (L[j], H[j]))
                        p_lo, p_hi = iv.mul(np.full(nb, c_lo), np.full(nb, c_hi), v_lo, v_hi)
                        a_lo, a_hi = iv.add(a_lo, a_hi, p_lo, p_hi)
                L[u.arg], H[u.arg] = a_lo, a_hi
                L[u.node], H[u.node] = iv.activation(u.op, a_lo, a_hi)
            s_lo, s_hi = self.vertices.slopes(L, H)
            vm = self.vertices.magnitudes(s_lo, s_hi)  # (boxes, vertices, n)
        from opendp_hybridad.analysis.certify import _norm_upper  # (certify imports this module)

        V = vm.shape[1]
        upper = _norm_upper(vm.reshape(nb * V, self.n).T, 2.0).reshape(nb, V).max(axis=1)
        upper = np.where(self._empty(lo, hi), -np.inf, upper)
        return BoxBounds(upper, np.full(nb, -1, dtype=np.int64), np.zeros((nb, self.m)), np.full(nb, -np.inf), None)

    def _empty(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Boxes proven to hold no point of ``Z``: ``min over the box of y.z`` (a lower bound) above ``max over Z``.

        ``min over the box of y.z = sum_i y_i (lo_i if y_i >= 0 else hi_i)``: two matrix products in floats
        (any summation order), lowered by Higham's ``gamma_(m+1)`` of the sum of the terms' magnitudes (the
        products' and the sum's roundings, any order; Higham 2002, section 3.1) and by ``m`` subnormal steps (what
        underflowing products can lose), itself rounded up, then one float down.
        """
        Y = self.directions
        if Y.shape[0] == 0:
            return np.zeros(lo.shape[0], dtype=bool)
        with np.errstate(all="ignore"):
            low = lo @ self._Y_pos + hi @ self._Y_neg  # (boxes, directions)
            size = np.abs(lo) @ self._Y_pos_abs + np.abs(hi) @ self._Y_neg_abs
            allowance = up_array(up_array(size * self._gamma) + self._tiny)
            bound = down_array(down_array(low - allowance))
        return (np.isfinite(bound) & (bound > self.support_up[None, :])).any(axis=1)

    def value(self, points: np.ndarray) -> np.ndarray:
        return np.full(points.shape[0], -np.inf)  # no witness in z: the search over x finds it

    def lower_bound(self, points: np.ndarray) -> np.ndarray:
        return np.full(points.shape[0], -np.inf)

    def explain(self, bad: int) -> UnboundedError:
        return UnboundedError("the first-layer bound could not enclose the gradient on some box")


__all__ = ["FirstLayerObjective"]
