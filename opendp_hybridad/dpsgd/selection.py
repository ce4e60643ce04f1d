"""Batch selection for DP-SGD, from a cryptographically secure generator.

Amplification by subsampling assumes the selection is truly random and unseen, so by
default it comes from the operating system's CSPRNG, like the noise's bits:

* Poisson sampling: example ``i`` joins the batch when a uniform 64-bit word is below
  ``floor(q 2^64)``, so it joins with probability at most ``q`` (by less than ``2^-64``);
  the privacy curve of the Poisson-subsampled Gaussian grows with ``q``, so accounting
  with ``q`` is an upper bound;
* shuffling: a uniform permutation by Fisher-Yates with unbiased integers
  (:class:`random.SystemRandom`).

A ``seed`` gives numpy's PCG64 instead: reproducible runs for tests and experiments,
with no claim that the selection is unpredictable.
"""

from __future__ import annotations

import random

import numpy as np

try:
    from ssl import RAND_bytes as _random_bytes
except ImportError:  # pragma: no cover
    from os import urandom as _random_bytes


class BatchSelector:
    """Draws Poisson batches and permutations; from the CSPRNG unless ``seed`` is given."""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._system = random.SystemRandom()

    def poisson(self, count: int, batch_size: int, n: int | None = None) -> np.ndarray:
        """Indices among ``count`` examples, each selected independently with probability ``floor(q 2^64) / 2^64 <= q``.

        ``q = batch_size / n`` with ``n`` the *public* dataset size (default ``count``): under
        add/remove the actual number of examples is private, so the rate must not depend on it.
        """
        n = count if n is None else int(n)
        threshold = (batch_size << 64) // n  # exact integer floor of q 2^64
        if threshold >= 1 << 64:
            return np.arange(count)
        # seeded or not, the same rule on 64-bit words (a seeded float draw below fl(q) could include an
        # example with probability a little above q: audit, attack_lattice_accounting.py)
        raw = self._rng.bytes(8 * count) if self._rng is not None else _random_bytes(8 * count)
        words = np.frombuffer(raw, dtype=np.uint64)
        return np.flatnonzero(words < np.uint64(threshold))

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of ``0..n-1``."""
        if self._rng is not None:
            return self._rng.permutation(n)
        order = list(range(n))
        self._system.shuffle(order)
        return np.array(order, dtype=np.intp)
