"""Batch selection for DP-SGD, from a cryptographically secure generator.

Amplification by subsampling assumes the selection is truly random and unseen, so by
default it comes from the operating system's CSPRNG, like the noise's bits:

* Poisson sampling: example ``i`` joins the batch when a uniform 64-bit word is below
  ``floor(q 2^64)``, so it joins with probability at most ``q`` (by less than ``2^-64``);
  the privacy curve of the Poisson-subsampled Gaussian grows with ``q``, so accounting
  with ``q`` is an upper bound. The word is drawn in two parts, its top 16 bits for every
  example and its low 48 bits only where the top bits tie with the threshold's: the
  comparison of ``W = 2^48 P + L`` with ``T = 2^48 P_T + L_T`` is ``P < P_T``, or ``P = P_T``
  and ``L < L_T``, and the parts of a uniform word are independent and uniform, so the rule
  and its probability ``T / 2^64`` are exactly those of the whole word (a quarter of the
  bytes: the CSPRNG's output is most of the selection's cost);
* shuffling: a uniform permutation by Fisher-Yates with unbiased integers
  (:class:`random.SystemRandom`).

A ``seed`` gives numpy's PCG64 instead: reproducible runs for tests and experiments,
with no claim that the selection is unpredictable.
"""

from __future__ import annotations

import random

import numpy as np

from opendp_hybridad.dpsgd import csprng

#: the operating system's CSPRNG (a module name so tests can record the draws)
_random_bytes = csprng.random_bytes
#: the threshold's and each word's low bits, drawn only for the examples whose top 16 bits tie
_LOW_BITS = 48


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
        # Python ints: a numpy integer would overflow in the shift below (np.int64(500) << 64 is 0)
        count, batch_size = int(count), int(batch_size)
        n = count if n is None else int(n)
        threshold = (batch_size << 64) // n  # exact integer floor of q 2^64
        if threshold >= 1 << 64:
            return np.arange(count)
        # seeded or not, the same rule on 64-bit words (a seeded float draw below fl(q) could include an
        # example with probability a little above q: audit, attack_lattice_accounting.py), each word
        # in two parts (the module's docstring)
        top, low = threshold >> _LOW_BITS, threshold & ((1 << _LOW_BITS) - 1)
        prefixes = np.frombuffer(self._bytes(2 * count), dtype=np.uint16)
        candidates = (prefixes <= np.uint16(top)).nonzero()[0]  # one pass over the batch's few candidates' prefixes
        tied = prefixes[candidates] == np.uint16(top)
        if not tied.any():
            return candidates
        # 48 uniform bits per tie: the top 48 of a fresh 64-bit word
        rest = np.frombuffer(self._bytes(8 * int(tied.sum())), dtype=np.uint64) >> np.uint64(64 - _LOW_BITS)
        keep = ~tied
        keep[tied.nonzero()[0]] = rest < np.uint64(low)
        return candidates[keep]

    def _bytes(self, count: int) -> bytes:
        """``count`` uniform bytes: from the seeded generator, or the CSPRNG (in calls it can take)."""
        if self._rng is not None:
            return self._rng.bytes(count)
        return csprng.chunked(_random_bytes, count)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of ``0..n-1``."""
        if self._rng is not None:
            return self._rng.permutation(n)
        order = list(range(n))
        self._system.shuffle(order)
        return np.array(order, dtype=np.intp)
