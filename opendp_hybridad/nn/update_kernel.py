"""A training step's update of a dense layer in one compiled pass, with numba when it is installed.

:func:`compiled_dense_update` writes ``W - scale * step_W`` and ``b - scale * step_b``,
clips them to their boxes where the layer has boxes, and returns the sums of squares the
Frobenius-ball projection and the finiteness check need: one call per layer instead of
about ten numpy calls (each a few microseconds of overhead on small layers).
The update's arithmetic is numpy's, operation for operation (no fused multiply-add), and a
clip is the exact ``min``/``max`` of ``np.clip``, so both paths give the same weights; the
sums of squares may be added in another order than numpy's (the loop vectoriser splits them
into lanes), which Higham's ``gamma_n`` bounds like any other order (so a ball's shrink factor
may differ from numpy's path in the last bits, within about ``n u`` relative; both land inside the ball).
:func:`compiled_subtract_scaled` is the older per-array kernel, which the dense layer no longer
calls (bench/audits/attack_update_kernel.py still audits it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable


@functools.cache
def compiled_dense_update() -> tuple[Callable, Callable] | None:
    """``(update, scale_in_place)``, compiled; None where numba is not installed."""
    try:
        import numba
    except ImportError:
        return None

    # reassoc only: the vectoriser may split the sum into lanes (another summation order, which
    # gamma_n bounds like any other); no nnan/ninf/contract, so NaN and inf still propagate to
    # the sum (the caller's finiteness check) and the squares are plain rounded products
    @numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
    def sum_squares(v):  # pragma: no cover (compiled)
        s = 0.0
        for i in range(v.size):
            s += v[i] * v[i]
        return s

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def clip(v, bound):  # pragma: no cover (compiled)
        # np.clip's result for finite entries (values inside stay bit for bit, -0.0 included)
        for i in range(v.size):
            x = v[i]
            if x > bound:
                v[i] = bound
            elif x < -bound:
                v[i] = -bound

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def update(W, b, step_W, step_b, scale, weight_clip, bias_clip, new_W, new_b):  # pragma: no cover (compiled)
        """``new_W = W - scale step_W``, ``new_b = b - scale step_b``; returns their sums of squares.

        ``W``, ``new_W`` C-contiguous of one shape; ``b``, ``new_b``, ``step_W``, ``step_b`` flat.
        Only where both sums are finite (no entry is NaN or infinite, no square overflowed) are
        the entries clipped: ``new_W`` to ``[-weight_clip, weight_clip]`` when ``weight_clip >= 0``
        (a box; a ball passes -1), ``new_b`` to ``[-bias_clip, bias_clip]``. Otherwise the arrays
        hold the plain update, for the caller's careful path.
        """
        n, m = W.size, b.size
        if step_W.size != n or step_b.size != m or new_W.size != n or new_b.size != m:
            raise ValueError("the step does not match the layer's parameters")
        w, nw = W.reshape(n), new_W.reshape(n)
        for i in range(n):
            nw[i] = w[i] - scale * step_W[i]
        for j in range(m):
            new_b[j] = b[j] - scale * step_b[j]
        squares, squares_b = sum_squares(nw), sum_squares(new_b)
        if not (math.isfinite(squares) and math.isfinite(squares_b)):
            return squares, squares_b
        if weight_clip >= 0.0:
            clip(nw, weight_clip)
        clip(new_b, bias_clip)
        return squares, squares_b

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def scale_in_place(a, factor):  # pragma: no cover (compiled)
        """``a *= factor`` (C-contiguous ``a``): each entry one rounded product, as numpy's."""
        v = a.reshape(a.size)
        for i in range(v.size):
            v[i] *= factor

    return update, scale_in_place


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
