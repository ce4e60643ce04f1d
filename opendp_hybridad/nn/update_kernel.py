"""One pass per parameter array for a training step's update, compiled with numba when it is installed.

``out = a - scale * step`` together with the sum of squares and the largest magnitude of
``out``, which the projection onto the certified weight set needs. numpy takes about ten
calls per layer for the same (each a few microseconds of overhead on small layers).
The update's arithmetic is numpy's, operation for operation (no fused multiply-add), so both
paths give the same updated weights; the sum of squares is eight interleaved running sums
added pairwise, whose error Higham's ``gamma_n`` bounds like any other order (so a ball's
shrink factor may differ from numpy's path in the last bit; both land inside the ball).
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def compiled_subtract_scaled() -> Callable | None:
    """The compiled kernel, or None where numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def subtract_scaled(a, step, scale, out):  # pragma: no cover (compiled)
        """``out = a - scale * step`` (flat arrays); returns ``(sum of out^2, max |out|)``.

        A NaN or infinite entry makes the sum of squares NaN or inf, which sends the caller to
        its careful path; the maximum is read only when the sum is finite.
        """
        n = a.size
        for i in range(n):
            out[i] = a[i] - scale * step[i]
        # eight running sums of squares, combined pairwise: another summation order, which
        # Higham's gamma_n bounds like any other, and the additions no longer wait on each
        # other (one running sum cost 19 us on 8192 entries, these 4 us)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        m0 = m1 = m2 = m3 = 0.0
        body = n - n % 8
        for i in range(0, body, 8):
            v0, v1, v2, v3 = out[i], out[i + 1], out[i + 2], out[i + 3]
            v4, v5, v6, v7 = out[i + 4], out[i + 5], out[i + 6], out[i + 7]
            s0 += v0 * v0
            s1 += v1 * v1
            s2 += v2 * v2
            s3 += v3 * v3
            s4 += v4 * v4
            s5 += v5 * v5
            s6 += v6 * v6
            s7 += v7 * v7
            m0 = max(m0, max(abs(v0), abs(v4)))
            m1 = max(m1, max(abs(v1), abs(v5)))
            m2 = max(m2, max(abs(v2), abs(v6)))
            m3 = max(m3, max(abs(v3), abs(v7)))
        for i in range(body, n):
            v = out[i]
            s0 += v * v
            m0 = max(m0, abs(v))
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), max(max(m0, m1), max(m2, m3))

    return subtract_scaled
