"""Per-step bounds read off bounds already computed at nearby weight norms (per-step K without a chain per step).

A per-step bound (:meth:`GradientSum.at <opendp_hybridad.dpsgd.plan.GradientSum.at>` with
``granularity="step"``) is a function of the weights' norms rounded up to slots, ``n`` (a vector:
every norm of every part): the model's certified bound at ``n`` (the chain, about 40 us on a
64-128-10 MLP), then ``K_t``, the clip decision ``C < K_t`` and the rows' error ``e`` from it, each
rounded up to 16 values per octave. Training moves the norms a little each step (the noise alone
moves them by more than a slot), so the exact ``n`` seldom repeats and the chain ran on almost
every step. Two facts let most steps skip it with the same result:

* **Monotone.** Every quantity of the model's bound is nondecreasing in each norm (the layer
  protocol's rule, kept by outward rounding: a correctly rounded ``+``, ``*`` or square root of
  larger non-negative operands is not smaller), and so are the rounding to slots, ``min(., K)``,
  the clip decision ``C < K_t`` and ``e``. For ``l <= n <= u`` (each norm), the per-step bound at
  ``n`` therefore lies between those at ``l`` and ``u``.
* **Discrete.** Its values are rounded to a grid (16 per octave) and the decision is a bit.

So **(sandwich)** where entries at ``l <= n`` and at ``u >= n`` that do not clip have the same
step bound, that is the step bound at ``n``; and **(clip)** where an entry at ``l <= n`` clips
(``K_t > C``), ``K_t > C`` at ``n`` too, and the step clips. A clipping step's ``S`` is ``C`` and
its ``e`` comes from the bound at ``n`` rounded up to powers of two (the plan's rule, the same
whether the decision was computed or read here), so the result never depends on what this
cache holds.

Soundness does not rest on the monotone rule's floating-point form. The bound at ``u`` covers
every weight whose norms are at most ``u`` (the chain assumes only that each norm bounds the
weights' own), hence these weights: the sandwich's value is the ``u`` entry's own, a valid bound.
A clipping step is valid whatever ``K_t`` is: clipped rows are within ``C`` by construction, and
its ``e`` is computed from the current norms. Only the claim "the same result as computing" uses
the rule; the tests check it against a plan that computes every step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the marker of a step proven to clip (its bounds are computed from its own norms, see the module docstring)
CLIPS = "clips"


def _flat(norms: tuple[tuple[float, ...], ...]) -> np.ndarray:
    return np.fromiter((v for part in norms for v in part), dtype=float)


class NearbyStepBounds:
    """The last ``capacity`` per-step results, by their rounded norms (module docstring): exact hits, sandwiches,
    and clip proofs."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._exact: dict[tuple, Any] = {}
        self._keys: list[tuple | None] = [None] * capacity
        self._norms: np.ndarray | None = None  # (capacity, d), NaN where empty (neither below nor above anything)
        self._values: list[Any] = [None] * capacity
        self._clips = np.zeros(capacity, dtype=bool)
        #: each norm's largest value over the entries added since the last reset (evicted ones too): where a step
        #: exceeds it in some norm, no entry lies above it, and the sandwich is not looked for (growing weights)
        self._top: np.ndarray | None = None
        self._clip_entries = 0
        self._next = 0
        #: how each read was answered: "exact", "sandwich", "clip", or "computed" (the plan then adds it)
        self.reads = {"exact": 0, "sandwich": 0, "clip": 0, "computed": 0}

    def read(self, norms: tuple[tuple[float, ...], ...]) -> Any:
        """The step bound (or :data:`CLIPS`) at these rounded norms, where the entries prove it; None otherwise."""
        hit = self._exact.get(norms)
        if hit is not None:
            self.reads["exact"] += 1
            return hit
        if self._norms is not None:
            v = _flat(norms)
            if 0 < v.shape[0] == self._norms.shape[1]:  # (no norms at all: every entry would be below and above)
                below = None
                if self._clip_entries:
                    below = (self._norms <= v).all(axis=1)
                    if (below & self._clips).any():
                        self.reads["clip"] += 1
                        return CLIPS
                # a sandwich needs an entry at least as large in every norm: none where one exceeds every entry's
                if not (v > self._top).any():
                    if below is None:
                        below = (self._norms <= v).all(axis=1)
                    below &= ~self._clips
                    above = (self._norms >= v).all(axis=1) & ~self._clips
                    if above.any() and below.any():
                        lower = {self._values[i] for i in np.flatnonzero(below)}
                        for i in np.flatnonzero(above):
                            if self._values[i] in lower:
                                self.reads["sandwich"] += 1
                                return self._values[i]
        self.reads["computed"] += 1
        return None

    def add(self, norms: tuple[tuple[float, ...], ...], value: Any) -> None:
        """Record the step bound (or :data:`CLIPS`) computed at these rounded norms (the oldest entry makes room)."""
        v = _flat(norms)
        if self._norms is None or self._norms.shape[1] != v.shape[0]:
            self._norms = np.full((self.capacity, v.shape[0]), np.nan)
            self._exact.clear()
            self._keys = [None] * self.capacity
            self._clips[:] = False
            self._clip_entries = 0
            self._top = np.full(v.shape[0], -np.inf)
        i = self._next
        old = self._keys[i]
        if old is not None:
            self._exact.pop(old, None)
        self._keys[i], self._values[i] = norms, value
        self._norms[i] = v
        np.fmax(self._top, v, out=self._top)  # (a NaN norm leaves the top as it was: NaN rows match nothing)
        self._clip_entries += (value is CLIPS) - bool(self._clips[i])
        self._clips[i] = value is CLIPS
        self._exact[norms] = value
        self._next = (i + 1) % self.capacity
