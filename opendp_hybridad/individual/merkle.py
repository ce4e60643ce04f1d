"""A fixed-shape SHA-256 Merkle tree over the ledger's bucket MACs (a root the head MAC binds).

The tree has ``2**bits`` leaves (32 bytes each: a bucket's MAC, or zeros for an empty bucket).
Each node above hashes its 64 children in order (fewer only at the top, when there are fewer
than 64 nodes left): ``SHA-256(b"N" + level + children)``. The shape is a function of ``bits``
alone, which the head MAC binds too, so the root binds every leaf at its position exactly as
a SHA-256 over all the leaves concatenated does: two leaf sequences with one root give a
SHA-256 collision at some node. (An XOR or sum of the MACs would not: it is linear, and old
bucket rows can be spliced in so that their changes cancel.)

What it buys: changing k leaves rehashes at most k nodes per level (``ceil(bits / 6)`` levels
of 2 KiB each), not all ``2**bits`` leaves; a full rebuild hashes about as many bytes as the
flat digest. The tree lives in memory: it is rebuilt from the bucket rows, each verified, when
a ledger is opened, and only its root is stored.

Nothing here mutates its input: :func:`update` returns the changed nodes and :func:`apply`
writes them once the caller's transaction has committed.
"""

from __future__ import annotations

import hashlib

import numpy as np

FANOUT = 64
Levels = list[np.ndarray]            # level 0: the leaves; each (count, 32) uint8; the last has one node
Changes = list[tuple[np.ndarray, np.ndarray]]  # per level: sorted node indices and their new values


def _hash_groups(level: int, children: np.ndarray, group: int) -> np.ndarray:
    """SHA-256 of each run of ``group`` consecutive child nodes: (count // group, 32) uint8."""
    prefix = b"N" + level.to_bytes(1, "little")
    buf = np.ascontiguousarray(children).tobytes()
    step = group * 32
    out = b"".join([hashlib.sha256(prefix + buf[j:j + step]).digest() for j in range(0, len(buf), step)])
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, 32).copy()


def _group(count: int) -> int:
    return min(FANOUT, count)


def build(leaves: np.ndarray) -> Levels:
    """Every level of the tree over ``leaves`` ((2**bits, 32) uint8)."""
    levels = [np.ascontiguousarray(leaves, dtype=np.uint8).copy()]
    while True:
        below = levels[-1]
        levels.append(_hash_groups(len(levels), below, _group(below.shape[0])))
        if levels[-1].shape[0] == 1:
            return levels


def root(levels: Levels) -> bytes:
    return levels[-1][0].tobytes()


def update(levels: Levels, leaves: np.ndarray, values: np.ndarray) -> Changes:
    """The nodes that change when leaves ``leaves`` (sorted, distinct) take ``values`` ((k, 32) uint8).

    Reads ``levels`` and returns, per level, the changed nodes' indices and new values; the last
    entry holds the new root (or is empty when no leaf changes).
    """
    idx = np.asarray(leaves, dtype=np.int64)
    vals = np.asarray(values, dtype=np.uint8).reshape(-1, 32)
    changes: Changes = [(idx, vals)]
    for level in range(len(levels) - 1):
        below = levels[level]
        group = _group(below.shape[0])
        parents = idx // group
        if parents.size:
            parents = parents[np.concatenate(([True], parents[1:] != parents[:-1]))]  # idx sorted: runs
        children = below[(parents[:, None] * group + np.arange(group)).reshape(-1)]  # a copy
        children[np.searchsorted(parents, idx // group) * group + idx % group] = vals
        idx, vals = parents, _hash_groups(level + 1, children, group)
        changes.append((idx, vals))
    return changes


def new_root(levels: Levels, changes: Changes) -> bytes:
    idx, vals = changes[-1]
    return vals[0].tobytes() if idx.size else root(levels)


def apply(levels: Levels, changes: Changes) -> None:
    """Write :func:`update`'s nodes into ``levels`` (after the commit that made them true)."""
    for level, (idx, vals) in enumerate(changes):
        if idx.size:
            levels[level][idx] = vals
