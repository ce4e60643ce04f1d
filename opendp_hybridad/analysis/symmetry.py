"""Groups of fields a function is symmetric in, proven by exact symbolic identity.

A group ``G`` of field indices qualifies when every field in it has the same declaration
(bounds, dtype, missing-value policy: so the declared box is invariant under permuting them)
and ``f`` is unchanged, as a sympy expression, by swapping the group's first field with each
other member. Structural equality of the swapped expression with ``f`` proves the identity
``f(P x) = f(x)`` for that transposition (the two expressions are the same tree), and the
transpositions ``(g_0 g_k)`` generate the whole symmetric group on ``G`` (any permutation is a
product of them), so ``f`` is invariant under every permutation of ``G``. Where sympy's canonical
form hides a symmetry the check fails and the group is not formed: a missed symmetry costs
speed, never soundness.

What it buys (:func:`opendp_hybridad.analysis.branch_and_bound.maximize`): when ``f(P x) = f(x)``,
``grad f(P x) = P grad f(x)``, so ``||grad f||_p`` (any p) and ``f`` itself take the same values on a
box and on its permutation, and a partial ``df/dx_j`` does too when ``P`` fixes ``j``; branch and
bound then keeps one box per orbit (its docstring has the proof that this loses no part of the box).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sympy

#: expressions larger than this (tree nodes) are not checked: the swaps are linear in the size,
#: but a network's expression can take longer to compare than its certificate's budget allows
MAX_NODES = 20_000


def _size(expr: sympy.Expr, limit: int) -> int:
    count = 0
    for _ in sympy.preorder_traversal(expr):
        count += 1
        if count > limit:
            break
    return count


def _label(node: sympy.Basic) -> tuple:
    """A node's operator and its number arguments: what a symbol's path through ``f`` records."""
    return (type(node).__name__, tuple(sorted(str(a) for a in node.args if a.is_Number)))


def _signatures(expr: sympy.Expr, symbols: Sequence[sympy.Symbol]) -> dict[sympy.Symbol, tuple]:
    """Per symbol, the sorted multiset of its root-to-leaf paths (operators and their number arguments).

    A permutation of symbols that leaves ``expr`` unchanged maps each symbol's paths onto its
    image's, so symbols with different signatures cannot be swapped: a cheap filter before the
    exact check (a network's inputs enter every unit with their own weights, and building the
    swapped expression re-evaluates every activation: about 0.1 s a swap on a 10-input network).
    """
    wanted = set(symbols)
    paths: dict[sympy.Symbol, list[tuple]] = {s: [] for s in symbols}
    stack: list[tuple[sympy.Basic, tuple]] = [(expr, ())]
    while stack:
        node, path = stack.pop()
        if node in wanted:
            paths[node].append(path)
            continue
        if node.args:
            here = (*path, _label(node))
            stack.extend((a, here) for a in node.args)
    return {s: tuple(sorted(p)) for s, p in paths.items()}


def symmetric_groups(expr: sympy.Expr, symbols: Sequence[sympy.Symbol], declarations: Sequence[object],
                     fixed: int | None = None) -> list[list[int]]:
    """Groups (of at least two field indices) that ``expr`` is proven invariant under permuting.

    ``declarations[i]`` is field ``i``'s declaration (compared with ``==``; only fields declared
    alike can share a group). ``fixed``: an index no group may contain (a partial derivative's
    own field). Each index is in at most one group.
    """
    if len(symbols) < 2 or _size(expr, MAX_NODES) > MAX_NODES:
        return []
    signature = _signatures(expr, symbols)
    groups: list[list[int]] = []
    placed: set[int] = set()
    for i in range(len(symbols)):
        if i in placed or i == fixed:
            continue
        group = [i]
        for k in range(i + 1, len(symbols)):
            if k in placed or k == fixed or declarations[k] != declarations[i]:
                continue
            if signature[symbols[i]] != signature[symbols[k]]:  # (a symbol absent from f has no paths)
                continue
            swapped = expr.xreplace({symbols[i]: symbols[k], symbols[k]: symbols[i]})  # simultaneous
            if swapped == expr:
                group.append(k)
        if len(group) > 1:
            groups.append(group)
            placed.update(group)
    return groups


def canonical(lo: np.ndarray, hi: np.ndarray, groups: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Each box's intervals within each group sorted (upper end descending, then lower end descending).

    ``lo``, ``hi``: ``(boxes, fields)`` arrays, rewritten in place and returned. Two boxes
    that are permutations of each other within the groups get the same canonical form.
    """
    for group in groups:
        g = np.asarray(group)
        sub_lo, sub_hi = lo[:, g], hi[:, g]
        order = np.lexsort((-sub_lo, -sub_hi), axis=-1)  # the last key is the primary one
        lo[:, g] = np.take_along_axis(sub_lo, order, axis=1)
        hi[:, g] = np.take_along_axis(sub_hi, order, axis=1)
    return lo, hi
