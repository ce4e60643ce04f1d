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
    def noisy_lattice(values, bits, packed, r, zmax, grid, limit, out, ties):  # pragma: no cover (compiled)
        """``out[i] = grid (rint(values[i] / grid) + index_i - zmax)``; ``out`` may be ``values``.

        ``index_i`` is column ``j`` (the top ``r`` bits) if the word's low bits are below
        the column's threshold top bits, else its alias. Where they are equal the column
        is written provisionally and ``i`` recorded in ``ties`` for Python to settle.
        Returns ``(ties recorded, stop)``: ``stop`` is ``values.size`` when done, or the
        index of a tie that found ``ties`` full (nothing from it on is written), or -1
        when a value is too large for the grid or NaN (then nothing is written).
        """
        shift = np.uint64(64 - r)
        alias_mask = np.uint64((1 << r) - 1)
        top_mask = np.uint64((np.uint64(1) << shift) - np.uint64(1))
        inverse = 1.0 / grid  # a power of two: exact
        n = values.size
        ok = True
        for i in range(n):  # branch-free, so it vectorises; NaN fails both comparisons
            v = values[i]
            ok &= (v > -limit) & (v < limit)
        if not ok:
            return 0, -1
        # then every table read, in a loop of independent loads only: the table (up to 4 MB)
        # is mostly out of cache after a training step, and this keeps many misses in
        # flight (about twice as fast as reading inside the main loop)
        words = np.empty(n, dtype=np.uint64)
        for i in range(n):
            words[i] = packed[bits[i] >> shift]
        count = 0
        for i in range(n):
            b = bits[i]
            word = words[i]
            top = b & top_mask
            threshold = word >> np.uint64(r)
            index = (b >> shift) if top < threshold else word & alias_mask
            if top == threshold:  # provisionally the column
                if count == ties.size:
                    return count, i
                ties[count] = i
                count += 1
                index = b >> shift
            out[i] = (np.rint(values[i] * inverse) + (np.int64(index) - zmax)) * grid
        return count, n

    return noisy_lattice
