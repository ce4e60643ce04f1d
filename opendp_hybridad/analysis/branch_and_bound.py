"""Batched branch and bound for a certified maximum over a box.

The objective supplies, for a batch of boxes, a proven upper bound on each box
(``inf`` where it cannot enclose the objective), a proven *lower* bound of the
objective at each box's centre and at given points (point enclosures), and a
float value at points (for the local search only).
The certified answer is the maximum upper bound over *every* box of the final
partition, so stopping early (tolerance reached, time out, box budget) only
loosens the bound: it never makes it unsound.

The witness value is the best proven lower bound found, so the stopping rule
measures the real gap and the safety net (a witness above the bound) fires only
on a proven violation: float cancellation at a witness (``(x+1)**2 - x**2 - 2x``
at 1e8 evaluates to 2, not 1) cannot refuse a correct certificate.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from opendp_hybridad.analysis.symmetry import canonical
from opendp_hybridad.errors import SoundnessError, UnboundedError

#: boxes narrower than this (relative to the root box, in every splittable
#: direction) are not split again: an objective that still cannot be enclosed
#: there has no finite bound
_MIN_RELATIVE_WIDTH = 2.0**-40


#: the share of a time budget kept for the witness polish (the refinement stops before it)
POLISH_SHARE = 0.05
#: the polish always gets this long, even past the budget (a few compass steps)
POLISH_MIN_SECONDS = 0.002


@dataclass
class BoxBounds:
    upper: np.ndarray          # (boxes,) proven upper bound of the objective on each box
    bad: np.ndarray            # (boxes,) -1, or the tape node that could not be enclosed
    split_score: np.ndarray    # (boxes, variables) how much each direction loosens the bound
    #: (boxes,) proven lower bound of the objective at each centre ``0.5 * (lo + hi)`` (-inf: none)
    centre_lower: np.ndarray | None = None
    #: (boxes, variables) +1 / -1 where the supremum over the box is proven attained on its upper / lower
    #: face in that direction (a monotonicity test), else 0; None: no such proof
    shrink: np.ndarray | None = None


class Objective(Protocol):
    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> BoxBounds: ...
    def value(self, points: np.ndarray) -> np.ndarray: ...  # float estimate, for the local search
    def lower_bound(self, points: np.ndarray) -> np.ndarray: ...  # proven (-inf where none)
    def explain(self, bad: int) -> UnboundedError: ...


@dataclass
class MaxResult:
    upper: float
    witness_point: np.ndarray
    witness_value: float
    boxes: int
    converged: bool
    elapsed: float


def _initial_points(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, samples: int) -> np.ndarray:
    n = lo.size
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=n))) if n <= 12 else rng.integers(0, 2, size=(4096, n)).astype(float)
    unit = np.vstack([corners, np.full((1, n), 0.5), rng.random((samples, n))])
    return np.clip(lo + unit * (hi - lo), lo, hi)  # lo + 1 * (hi - lo) can round past hi


def centres(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Box centres, inside the boxes (0.5 * (lo + hi) overflows for huge ends)."""
    with np.errstate(all="ignore"):
        return np.clip(0.5 * (lo + hi), lo, hi)


def _polish(objective: Objective, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            iterations: int = 400, deadline: float = np.inf) -> tuple[np.ndarray, float]:
    """Compass search from ``x0`` inside the box: a better witness, never part of a bound.

    Each iteration evaluates the ``2n`` points ``x +- step_i e_i`` (clipped to the box) in one
    batched call, moves to the best if it improves, else halves the steps; it stops when every
    step is below ``1e-12`` of its side (Kolda, Lewis and Torczon 2003, compass search: a
    stationary point for smooth objectives). Numpy only: scipy.optimize took 0.5-2.6 s to import,
    most of a command-line ``analyse``.
    """
    n = x0.size
    width = hi - lo
    with np.errstate(all="ignore"):
        step = np.where(np.isfinite(width), 0.25 * width, 0.0)
    floor = 1e-12 * np.where(np.isfinite(width), width, 0.0)
    eye = np.eye(n)

    def values(points: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            v = objective.value(points)
        return np.where(np.isfinite(v), v, -np.inf)

    x = np.clip(x0, lo, hi)
    best = float(values(x[None, :])[0])
    for _ in range(iterations):
        if not np.any(step > floor) or time.perf_counter() > deadline:
            break
        with np.errstate(all="ignore"):
            candidates = np.clip(np.vstack([x + eye * step, x - eye * step]), lo, hi)
        candidate_values = values(candidates)
        i = int(np.argmax(candidate_values))
        if candidate_values[i] > best:
            x, best = candidates[i], float(candidate_values[i])
        else:
            step = 0.5 * step
    return x, best


def maximize(
    objective: Objective,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    tolerance: float = 1e-3,
    atol: float = 1e-12,
    time_budget: float = 2.0,
    batch: int = 32,
    max_boxes: int = 400_000,
    samples: int = 256,
    polish: bool = True,
    symmetric: Sequence[Sequence[int]] = (),
    cap: float = math.inf,
    points: np.ndarray | None = None,
    known_lower: float = -math.inf,
) -> MaxResult:
    """Certified ``sup objective`` over the box ``[lo, hi]``.

    Refines until ``upper - witness <= max(tolerance * |witness|, atol)`` or the
    time budget or box budget runs out. Raises :class:`UnboundedError` when some
    part of the box cannot be enclosed even after subdivision.

    The time budget covers the whole call: refinement stops at ``1 - POLISH_SHARE`` of it (each batch
    sized from the measured cost per box so that it ends by then), and the witness polish gets the rest.

    ``symmetric``: groups of directions the objective is invariant under permuting
    (:mod:`.symmetry` proves them; the root box must be invariant too: equal sides within a
    group). Each new box is replaced by its canonical permutation and dropped if that was seen
    before. Proof that the bound still covers the root box: let ``W(b)`` be the sum of the side
    widths of ``b`` (the same for all permutations of ``b``). Every box ``b`` ever formed is
    covered, i.e. ``sup_b F <= `` the returned bound: a box left in the queue or the leaves is
    counted; a split box is the union of its children (each strictly narrower: a side is split
    only at a midpoint strictly inside it); a box collapsed onto a face holds its
    supremum on the face; a permuted box ``P b`` has ``sup_{P b} F = sup_b F`` by invariance; a
    dropped box is a permutation of a box seen earlier. The last step refers to a box that is
    not an ancestor (a strict descendant has a strictly smaller ``W``, so it cannot be a
    permutation of its ancestor), and along any chain of these steps ``W`` never grows and drops
    at every split, so the chain cannot return to where it began: every box is covered, the root
    first of all.

    ``cap``: an upper bound of the supremum over the root box proven elsewhere (by the caller's
    own argument); the returned bound is the smaller of the two, and refinement stops once the
    witness is within the tolerance of it. ``points``: more starting points for the witness
    search (clipped to the box). ``known_lower``: a value the supremum is known to reach (a witness found
    elsewhere, e.g. in other coordinates); refinement also stops once the bound is within the tolerance of it.
    It is used for that rule only: the returned witness is the objective's own.
    """
    start = time.perf_counter()
    deadline = start + time_budget
    refine_until = start + (1.0 - POLISH_SHARE) * time_budget
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    root_width = hi - lo
    splittable = root_width > 0
    # a group whose sides differ is not a symmetry of the box: ignored (only a proven one may drop boxes)
    symmetric = [list(g) for g in symmetric
                 if len(g) > 1 and np.all(lo[list(g)] == lo[g[0]]) and np.all(hi[list(g)] == hi[g[0]])]
    rng = np.random.default_rng(0)  # witness search only: never privacy noise

    proven = hasattr(objective, "lower_bound")
    starts = _initial_points(lo, hi, rng, samples)
    points = starts if points is None else np.vstack([starts, np.clip(np.asarray(points, dtype=float), lo, hi)])
    values = objective.lower_bound(points) if proven else objective.value(points)
    values = np.where(np.isfinite(values), values, -np.inf)
    best = int(np.argmax(values))
    best_value, best_point = float(values[best]), points[best].copy()

    counter = itertools.count()
    heap: list[tuple[float, int, np.ndarray, np.ndarray, int, np.ndarray]] = []
    leaves: list[tuple[float, int]] = []  # (upper, bad) of boxes that cannot be split further

    def bound(blo: np.ndarray, bhi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Bounds of boxes, each first collapsed onto the faces its monotonicity tests prove hold its supremum.

        A collapsed box (a face) keeps the smaller of its own bound and its parent's: the face is a
        subset of the parent and holds the parent's supremum, so both bound it.
        """
        nonlocal best_value, best_point
        blo, bhi = blo.copy(), bhi.copy()
        ub = np.full(blo.shape[0], np.inf)
        bad = np.full(blo.shape[0], -1, dtype=np.int64)
        score = np.zeros(blo.shape)
        todo = np.arange(blo.shape[0])
        # two enclosures at most: each costs a pass over the whole tape; the faces found on the second
        # are kept without a third (the face of a face still holds the supremum, under the same bound)
        for round_ in range(2):
            bounds = objective.enclose(blo[todo], bhi[todo])
            centers = centres(blo[todo], bhi[todo])
            vals = bounds.centre_lower if bounds.centre_lower is not None else objective.value(centers)
            vals = np.where(np.isfinite(vals), vals, -np.inf)
            i = int(np.argmax(vals))
            if vals[i] > best_value:
                best_value, best_point = float(vals[i]), centers[i].copy()
            own = np.where(bounds.bad < 0, bounds.upper, np.inf)
            first = np.isinf(ub[todo]) & (bad[todo] < 0)
            # a face that cannot be enclosed keeps its parent's finite bound; a root box its own failure
            new_bad = np.where(first, bounds.bad, -1)
            collapsed = ~first & (bounds.bad >= 0)
            ub[todo] = np.minimum(ub[todo], own)
            bad[todo] = np.where(bad[todo] < 0, new_bad, bad[todo])
            score[todo] = np.where(collapsed[:, None], score[todo], bounds.split_score)
            if bounds.shrink is None:
                break
            shrink = np.where((bounds.bad < 0)[:, None], bounds.shrink, 0)
            moving = shrink.any(axis=1)
            if not moving.any():
                break
            rows = todo[moving]
            s = shrink[moving]
            blo[rows] = np.where(s > 0, bhi[rows], blo[rows])
            bhi[rows] = np.where(s < 0, blo[rows], bhi[rows])
            score[rows] = np.where(s != 0, 0.0, score[rows])
            todo = rows
            if round_ == 1:
                break
        return blo, bhi, ub, bad, score

    seen: set[bytes] = set()

    def push(blo: np.ndarray, bhi: np.ndarray) -> None:
        if symmetric:  # one box per orbit (docstring): canonical permutations, each formed once
            blo, bhi = canonical(blo.copy(), bhi.copy(), symmetric)
            fresh = []
            for k in range(blo.shape[0]):
                key = blo[k].tobytes() + bhi[k].tobytes()
                if key not in seen:
                    seen.add(key)
                    fresh.append(k)
            if not fresh:
                return
            blo, bhi = blo[fresh], bhi[fresh]
        blo, bhi, ub, bad, score = bound(blo, bhi)
        for k in range(blo.shape[0]):
            u = float(ub[k]) if bad[k] < 0 else np.inf
            heapq.heappush(heap, (-u, next(counter), blo[k], bhi[k], int(bad[k]), score[k]))

    push(lo[None, :], hi[None, :])
    evaluated = 1
    per_box = 0.0
    converged = False
    while heap:
        top = -heap[0][0]
        leaf_top = max((u for u, _ in leaves), default=-np.inf)
        upper = min(max(top, leaf_top), cap)
        reached = max(best_value, known_lower)
        # (nothing finite reached yet: no convergence, even for an infinite bound, where inf <= inf would hold)
        if np.isfinite(upper) and np.isfinite(reached) and upper - reached <= max(tolerance * abs(reached), atol):
            converged = True
            break
        now = time.perf_counter()
        if now > refine_until or evaluated > max_boxes:
            break
        # larger batches amortise numpy's per-call cost once the partition is big; none runs past the
        # refinement's end (at the cost per box measured so far; two children per split box)
        size = min(max(batch, len(heap) // 16, 1), 512, len(heap))
        if per_box > 0:  # 3 per_box per split box: two children, and a margin for the cost's spread
            size = max(1, min(size, int((refine_until - now) / (3 * per_box))))
        child_lo, child_hi = [], []
        for _ in range(size):
            neg_ub, _, blo, bhi, bad, score = heapq.heappop(heap)
            rel = np.where(splittable, (bhi - blo) / np.where(splittable, root_width, 1.0), 0.0)
            with np.errstate(all="ignore"):
                mids = 0.5 * (blo + bhi)
                mids = np.where(np.isfinite(mids), mids, 0.5 * blo + 0.5 * bhi)  # ends near the float range
            # a direction splits only where its rounded midpoint lies strictly inside: on a side one ulp wide
            # the midpoint rounds onto an end, and one "child" would be the parent itself (audit:
            # attack_symmetry.py; the symmetry reduction's proof needs every split to shrink the box)
            splits = (rel > _MIN_RELATIVE_WIDTH) & (blo < mids) & (mids < bhi)
            if not np.any(splits):
                if bad >= 0:
                    raise objective.explain(bad)
                leaves.append((-neg_ub, bad))
                continue
            usable = np.isfinite(score) & splits
            d = (int(np.argmax(np.where(usable, score, -1.0))) if bad < 0 and np.any(usable & (score > 0))
                 else int(np.argmax(np.where(splits, rel, -1.0))))
            mid = mids[d]
            left_hi = bhi.copy()
            left_hi[d] = mid
            right_lo = blo.copy()
            right_lo[d] = mid
            child_lo += [blo, right_lo]
            child_hi += [left_hi, bhi]
        if child_lo:
            t_push = time.perf_counter()
            push(np.array(child_lo), np.array(child_hi))
            evaluated += len(child_lo)
            per_box = (time.perf_counter() - t_push) / len(child_lo)

    upper = max([-h[0] for h in heap[:1]] + [u for u, _ in leaves] + [-np.inf])
    if not np.isfinite(upper):
        worst = [h[4] for h in heap if h[4] >= 0] + [b for _, b in leaves if b >= 0]
        if worst:
            raise objective.explain(worst[0])
        raise objective.explain(-1)
    upper = min(upper, cap)  # both proven (the caller's argument for cap)

    if polish and np.isfinite(best_value):
        x, v = _polish(objective, best_point, lo, hi, deadline=max(deadline, time.perf_counter() + POLISH_MIN_SECONDS))
        if proven:  # a float gain elsewhere: prove it (a float value is never kept as the witness)
            moved = np.isfinite(v) and v > best_value and not np.array_equal(x, best_point)
            v = float(objective.lower_bound(x[None, :])[0]) if moved else -np.inf
        if np.isfinite(v) and v > best_value:
            best_point, best_value = x, v
    # safety net: a point that provably beats the bound (its point enclosure lies above
    # it) proves the bound wrong; refuse it rather than return it. Float-only
    # objectives keep a margin for evaluation error.
    margin = 0.0 if proven else max(1e-9 * abs(upper), atol)
    if best_value > upper + margin:
        raise SoundnessError(
            f"internal check failed: a witness ({best_value!r}) exceeds the certified bound ({upper!r}); "
            "the certificate is refused (please report this expression)"
        )
    return MaxResult(float(upper), best_point, float(best_value), evaluated, converged, time.perf_counter() - start)
