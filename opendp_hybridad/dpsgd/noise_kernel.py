"""The discrete Gaussian sampler's inner loop, compiled with numba when it is installed.

One pass over the coordinates does what :meth:`DiscreteGaussianSampler.add` does with
about ten numpy array operations, in two passes: check the value fits the grid, round it to the grid,
look its random word up in the alias table, and add the drawn integer. The result is
bit for bit the numpy path's (``tests/test_noise.py`` runs both on the same bits);
only the few draws whose top bits tie a threshold are returned to Python, which
settles them with 64 more bits.

numba is optional (the ``fast`` extra); without it :func:`compiled_noisy_lattice`
returns None and the sampler uses numpy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def compiled_noisy_lattice() -> Callable | None:
    """The compiled kernel, or None where numba is not installed."""
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
    def noisy_lattice(values, bits, start, packed, r, grid, limit, out, ties):  # pragma: no cover (compiled)
        """``out[i] = grid (rint(values[i] / grid) +- index_i)`` for ``i >= start``; ``out`` may be ``values``.

        ``index_i`` (``|Z|``) is column ``j`` (the ``r`` bits below the sign bit) if the
        word's low ``63 - r`` bits are below the column's threshold top bits, else its
        alias; the top bit makes it negative. Where the bits tie, the column is written
        provisionally and ``i`` recorded in ``ties`` for Python to settle. Returns
        ``(ties recorded, stop)``: ``stop`` is ``values.size`` when done, or the index of a
        tie that found ``ties`` full (nothing from it on is written), or -1 when a value
        is too large for the grid or NaN (then nothing is written).
        """
        shift = np.uint64(63 - r)
        column_mask = np.uint64((1 << r) - 1)
        top_mask = np.uint64((np.uint64(1) << shift) - np.uint64(1))
        inverse = 1.0 / grid  # a power of two: exact
        # work on views from start: indices then run from 0 and cannot be negative, which
        # lets numba drop wraparound handling (about twice as fast as indexing with offsets)
        values, bits, out = values[start:], bits[start:], out[start:]
        n = values.size
        ok = True
        for i in range(n):  # branch-free, so it vectorises; NaN fails both comparisons
            v = values[i]
            ok &= (v > -limit) & (v < limit)
        if not ok:
            return 0, -1
        # then every table read, in a loop of independent loads only: the table (up to 2 MB)
        # is mostly out of cache after a training step, and this keeps many misses in
        # flight (about twice as fast as reading inside the main loop)
        words = np.empty(n, dtype=np.uint64)
        for i in range(n):
            words[i] = packed[(bits[i] >> shift) & column_mask]
        count = 0
        for i in range(n):
            b = bits[i]
            word = words[i]
            column = (b >> shift) & column_mask
            top = b & top_mask
            threshold = word >> np.uint64(r)
            index = column if top < threshold else word & column_mask
            if top == threshold:  # provisionally the column
                if count == ties.size:
                    return count, start + i
                ties[count] = start + i
                count += 1
                index = column
            # no branch on the sign: it is a coin flip, and a branch would mispredict half the time;
            # an integer, so z = 0 adds +0.0 and a rounded -0.0 comes out as +0.0 (no sign leak)
            z = np.int64(index) * (np.int64(1) - np.int64(2) * np.int64(b >> np.uint64(63)))
            out[i] = (np.rint(values[i] * inverse) + np.float64(z)) * grid
        return count, start + n

    return noisy_lattice
