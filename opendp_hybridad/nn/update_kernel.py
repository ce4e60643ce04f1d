"""One pass per parameter array for a training step's update, compiled with numba when it is installed.

``out = a - scale * step`` together with the sum of squares and the largest magnitude of
``out``, which the projection onto the certified weight set needs. numpy takes about ten
calls per layer for the same (each a few microseconds of overhead on small layers).
The arithmetic is numpy's, operation for operation (no fused multiply-add), so both
paths give the same weights; the sum of squares is a plain sequential sum, whose error
Higham's ``gamma_n`` bounds like any other order.
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
        """``out = a - scale * step`` (flat arrays); returns ``(sum of out^2, max |out|)``."""
        total = 0.0
        biggest = 0.0
        for i in range(a.size):
            v = a[i] - scale * step[i]
            out[i] = v
            total += v * v
            magnitude = abs(v)
            if biggest == biggest and not magnitude <= biggest:  # a NaN is taken and then kept, so it shows
                biggest = magnitude
        return total, biggest

    return subtract_scaled
