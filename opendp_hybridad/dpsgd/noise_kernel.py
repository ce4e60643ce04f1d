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
        """``out[i] = grid (rint(values[i] / grid) + index_i - zmax)``; returns the number of ties (-1: a value too large or NaN).

        ``index_i`` is column ``j`` (the top ``r`` bits) if the word's low bits are below
        the column's threshold top bits, else its alias. Where they are equal the column
        is written provisionally and ``i`` recorded in ``ties`` for Python to settle.
        """
        shift = np.uint64(64 - r)
        alias_mask = np.uint64((1 << r) - 1)
        top_mask = np.uint64((np.uint64(1) << shift) - np.uint64(1))
        inverse = 1.0 / grid  # a power of two: exact
        # first every table read, in a loop of independent loads: the table (up to 4 MB) is
        # mostly out of cache after a training step, and this keeps many misses in flight
        # (about twice as fast as reading inside the main loop)
        words = np.empty(values.size, dtype=np.uint64)
        for i in range(values.size):
            words[i] = packed[bits[i] >> shift]
        count = 0
        for i in range(values.size):
            x = values[i]
            if not (-limit < x < limit):  # NaN fails too
                return -1
            b = bits[i]
            word = words[i]
            top = b & top_mask
            threshold = word >> np.uint64(r)
            index = (b >> shift) if top < threshold else word & alias_mask
            if top == threshold:
                ties[count] = i
                count += 1
            out[i] = (np.rint(x * inverse) + (np.int64(index) - zmax)) * grid
        return count

    return noisy_lattice
