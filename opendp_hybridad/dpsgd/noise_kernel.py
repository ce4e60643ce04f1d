"""The discrete Gaussian sampler's inner loop, compiled with numba when it is installed.

One pass over the coordinates does what :meth:`DiscreteGaussianSampler.add` does with
numpy's vector operations: check the values fit the grid, round each to the grid, look
its random word up in the bins-and-residual tables (:mod:`.noise`) and add the drawn
integer. Ties and residual draws (about 0.3 % of the coordinates) are settled inline
with words from the extra stream, in coordinate order, as the numpy path does, so the
result is bit for bit the numpy path's (``tests/test_noise.py`` runs both on the same
words).

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
    def noisy_lattice(values, bits, start, top, top_hi, top_lo, c, m, q, bins, residual, r,
                      grid, limit, out, extra, position):  # pragma: no cover (compiled)
        """``out[i] = grid (rint(values[i] / grid) +- |Z_i|)`` for ``i >= start``; ``out`` may be ``values``.

        ``bits[i]`` (uint32): sign (top bit), column (``c`` bits), bin offset (``m``
        bits), the top ``q`` bits of ``u``. ``extra[position:]``: the words ties (2) and
        residual draws (3) take, in coordinate order. ``residual``: the residual table's
        records ``(T'_hi, T'_lo, alias)``. Returns ``(stop, position)``: ``stop`` is
        ``values.size`` when done, or the first coordinate not written because the extra
        words left might not cover it (call again from there with more), or -1 when a value is
        too large for the grid or NaN (then nothing is written).
        """
        # work on views from start: indices then run from 0 and cannot be negative, which lets
        # numba drop wraparound handling (about twice as fast as indexing with offsets)
        values, bits, out = values[start:], bits[start:], out[start:]
        n = values.size
        ok = True
        for i in range(n):  # branch-free, so it vectorises; NaN fails both comparisons
            v = values[i]
            ok &= (v > -limit) & (v < limit)
        if not ok:
            return -1, position
        shift = np.uint64(31 - c)
        column_mask = np.uint64((1 << c) - 1)
        offset_mask = np.uint64((1 << m) - 1)
        top_mask = np.uint64((1 << q) - 1)
        uq, um, uc = np.uint64(q), np.uint64(m), np.uint64(c)
        outcome_residual = np.uint64(bins)
        inverse = 1.0 / grid  # a power of two: exact
        # ties and residual draws (about 0.4 % of the coordinates) get z = 0 here and are settled
        # after the loops, at most 5 extra words each: as many as the words left cover
        special = np.empty(max(0, (extra.size - position) // 5), dtype=np.int64)
        count = 0
        stop = n
        zs = np.empty(n, dtype=np.float64)  # the drawn integers; the rounding loop below then vectorises
        for i in range(n):
            b = np.uint64(bits[i])
            column = (b >> shift) & column_mask
            word = np.uint64(top[column])  # the top table is a few kilobytes: in the level-1 cache
            u = b & top_mask
            threshold = word >> uc
            # column or alias without a branch: the choice is close to a coin flip in many columns, and a
            # branch mispredicted about half the time (some 25 us per 10 thousand fresh words)
            keep = np.uint64(0) - np.uint64(u < threshold)  # all ones or zero
            alias = word & column_mask
            outcome = alias ^ ((column ^ alias) & keep)
            index = (outcome << um) | ((b >> uq) & offset_mask)
            if (u == threshold) | (outcome == outcome_residual):  # rare: predicted not taken
                # no early exit from the loop (about 4 us per 10 thousand words faster): past the
                # capacity, only the first such coordinate is kept, and the loops below stop there
                if count < special.size:
                    special[count] = i
                elif count == special.size:
                    stop = i
                count += 1
                index = np.uint64(0)
            # no branch on the sign: it is a coin flip, and a branch would mispredict half the time;
            # an integer, so z = 0 adds +0.0 and a rounded -0.0 comes out as +0.0 (no sign leak)
            zs[i] = np.float64(np.int64(index) * (np.int64(1) - np.int64(2) * np.int64(b >> np.uint64(31))))
        count = min(count, special.size)
        for i in range(stop):
            out[i] = (np.rint(values[i] * inverse) + zs[i]) * grid
        # the special coordinates in order, taking the extra words as the numpy path does: first ties
        # and the residual draws' columns (no table miss), then every residual record in a loop of
        # independent loads (the residual table is large and out of cache: the misses overlap)
        result = np.empty(count, dtype=np.uint64)
        column_of = np.empty(count, dtype=np.int64)
        at = np.empty(count, dtype=np.int64)
        rest_mask = np.uint64((np.uint64(1) << np.uint64(64 - q)) - np.uint64(1))
        for k in range(count):
            b = np.uint64(bits[special[k]])
            column = (b >> shift) & column_mask
            word = np.uint64(top[column])
            u = b & top_mask
            threshold = word >> uc
            outcome = column if u < threshold else word & column_mask
            if u == threshold:  # U: these q bits, 64 - q bits of one word, all of the next
                e1, e2 = extra[position], extra[position + 1]
                position += 2
                rest, hi = e1 >> uq, top_hi[column] & rest_mask
                outcome = column if (rest < hi) | ((rest == hi) & (e2 < top_lo[column])) else word & column_mask
            result[k] = (outcome << um) | ((b >> uq) & offset_mask)
            column_of[k] = -1
            if outcome == outcome_residual:  # the residual table: a column from one word, then a 128-bit U
                column_of[k] = np.int64(extra[position] >> np.uint64(64 - r))
                at[k] = position + 1
                position += 3
        for k in range(count):
            j = column_of[k]
            if j >= 0:
                hi, lo = residual[j, 0], residual[j, 1]
                e2, e3 = extra[at[k]], extra[at[k] + 1]
                result[k] = np.uint64(j) if (e2 < hi) | ((e2 == hi) & (e3 < lo)) else residual[j, 2]
            i = special[k]
            z = np.int64(result[k]) * (np.int64(1) - np.int64(2) * np.int64(np.uint64(bits[i]) >> np.uint64(31)))
            # out[i] holds rint(values[i] / grid) grid; scaled back to the integer first, so the sum is
            # (rint + z) g like the main loop's and numpy's: rint g + z g could overflow where it does not
            # (a grid near 2^1023; audit attack_noise_tables.py)
            out[i] = (out[i] * inverse + np.float64(z)) * grid
        return start + stop, position

    return noisy_lattice
