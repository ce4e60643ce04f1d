"""A vectorised discrete Gaussian sampler on a power-of-two grid, safe in floating point.

The mechanism is the one OpenDP's ``then_gaussian(std, k)`` implements: round each
coordinate to the grid ``g = 2^k`` and add ``g Z`` with ``Z`` a discrete Gaussian of
scale ``s = std / g`` on the integers (Canonne, Kamath and Steinke 2020). Outputs are
integers times a power of two, so they carry no floating-point side channel
(Mironov 2012). OpenDP draws ``Z`` by exact rejection sampling, about 11 to 46
microseconds a coordinate; here it is drawn by inverting a table:

* the pmf ``p_z`` is evaluated in float64 for ``|z| <= 40 s`` (the tail beyond has mass
  below ``e^-800``), turned into integers ``N_z = floor(p_z 2^128)`` whose total is
  padded to exactly ``2^128`` at ``z = 0``;
* each coordinate takes 128 uniform bits from the operating system (``os.urandom``)
  and returns the number of cumulative table entries not above them.

So ``Z`` is drawn from exactly ``N_z / 2^128``, whose statistical distance ``eta`` from
the discrete Gaussian is bounded at construction (:attr:`statistical_distance`):
float64 evaluation of ``exp(-z^2 / 2 s^2)`` (exponent rounding, at most 2 ulp of it,
and 4 ulp for exp), normalisation, the integer floors and the truncated tail. A run
that draws ``m`` coordinates is within ``m eta`` of the ideal mechanism, so an
``(epsilon, delta)`` guarantee of the ideal becomes ``(epsilon, delta + (1 + e^epsilon) m eta)``
(:meth:`delta_penalty`).
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy.special import ndtri

_U = 2.0**-53
_TAILS = 40.0
#: every table is checked against this at construction, so a run can state its delta before training
STATISTICAL_DISTANCE_BOUND = 1e-14


class DiscreteGaussianSampler:
    """Noise of standard deviation about ``std`` on the grid ``2^k``, with ``std / 2^k`` in ``[resolution, 2 resolution)``."""

    def __init__(self, std: float, resolution: int = 2**12, k: int | None = None):
        if not (std > 0 and math.isfinite(std)):
            raise ValueError("std must be a positive finite number")
        self.k = math.floor(math.log2(std / resolution)) if k is None else int(k)
        self.grid = 2.0**self.k
        self.scale = std / self.grid  # s, in grid units
        zmax = math.ceil(_TAILS * self.scale)
        z = np.arange(-zmax, zmax + 1, dtype=np.float64)
        exponent = -(z * z) / (2.0 * self.scale * self.scale)
        weights = np.exp(exponent)
        total = math.fsum(weights.tolist())
        p = weights / total
        counts = [int(v * 2.0**128) for v in p.tolist()]  # floors, exactly (p * 2^128 is a float)
        deficit = 2**128 - sum(counts)
        counts[zmax] += deficit  # absorb normalisation and floors at the mode
        cumulative = np.cumsum(np.array(counts, dtype=object))
        # entries equal to 2^128 are never <= a 128-bit draw: drop them (the upper tail of zeros, and the last)
        cumulative = cumulative[: int(np.searchsorted(cumulative, 2**128, side="left"))]
        self._hi = _words([int(c) >> 64 for c in cumulative])
        self._lo = _words([int(c) & (2**64 - 1) for c in cumulative])
        self._cumulative = cumulative
        self.zmax = zmax
        # statistical distance from the discrete Gaussian: relative error per point of at most
        # (2 |exponent| + 8) u from exp and its argument, doubled for the normalisation, plus
        # the floors (one 2^-128 each), the padding at the mode, and the tail beyond 40 s
        relative = (2.0 * np.abs(exponent) + 8.0) * _U
        float_part = 2.0 * math.fsum((p * relative).tolist()) * 1.01
        floors = len(counts) * 2.0**-128
        tail = 2.0 * math.exp(-_TAILS * _TAILS / 2.0) / (1.0 - math.exp(-_TAILS))
        self.statistical_distance = float_part + floors + abs(deficit) / 2.0**128 + tail
        if self.statistical_distance > STATISTICAL_DISTANCE_BOUND:
            raise ValueError("this table is further from the discrete Gaussian than the bound every run reports")

    @property
    def std(self) -> float:
        return self.scale * self.grid

    def integers(self, count: int) -> np.ndarray:
        """``count`` draws of ``Z`` (int64): the number of table entries not above a 128-bit uniform ``U``.

        A first guess comes from the normal quantile of ``U`` (the table follows the
        Gaussian closely); it is *verified exactly* in 128-bit arithmetic
        (``C[j-1] <= U < C[j]``), and any draw whose guess fails is resolved by binary
        search. The guess only saves time; the answer is always the exact count.
        """
        bits = np.frombuffer(os.urandom(16 * count), dtype=np.uint64).reshape(count, 2)
        return self.count_not_above(bits[:, 0].copy(), bits[:, 1].copy()) - self.zmax

    def count_not_above(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """For 128-bit values ``(hi, lo)``, the number of cumulative table entries not above each."""
        m = self._hi.size
        uniform = (hi.astype(np.float64) + 0.5) * 2.0**-64
        guess = np.ceil(self.scale * ndtri(uniform) - 0.5) + self.zmax
        j = np.clip(np.nan_to_num(guess, nan=0.0), 0, m).astype(np.int64)
        prev = np.clip(j - 1, 0, max(m - 1, 0))
        curr = np.clip(j, 0, max(m - 1, 0))
        lower_ok = (j == 0) | _le(self._hi[prev], self._lo[prev], hi, lo)
        upper_ok = (j == m) | ~_le(self._hi[curr], self._lo[curr], hi, lo)
        bad = np.flatnonzero(~(lower_ok & upper_ok))
        for t in bad:  # exact fallback
            u = (int(hi[t]) << 64) | int(lo[t])
            j[t] = int(np.searchsorted(self._cumulative, u, side="right"))
        return j

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``g (round(values / g) + Z)``: exact in float64 while ``|values| / g < 2^52``."""
        x = np.asarray(values, dtype=np.float64)
        lattice = np.rint(x / self.grid)
        if np.any(np.abs(lattice) >= 2.0**52):
            raise ValueError("the values are too large for this grid")
        return (lattice + self.integers(x.size).reshape(x.shape)) * self.grid

    def delta_penalty(self, epsilon: float, coordinates: int) -> float:
        """What ``coordinates`` draws add to delta: ``(1 + e^epsilon) coordinates eta``."""
        return (1.0 + math.exp(epsilon)) * coordinates * self.statistical_distance


def _words(values: list[int]) -> np.ndarray:
    """uint64 array from Python ints below 2^64 (numpy cannot take ints >= 2^63 directly)."""
    upper = np.array([v >> 32 for v in values], dtype=np.uint64)
    lower = np.array([v & 0xFFFFFFFF for v in values], dtype=np.uint64)
    return (upper << np.uint64(32)) | lower


def _le(a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray) -> np.ndarray:
    """``a <= b`` for 128-bit numbers given as (high, low) uint64 words."""
    return (a_hi < b_hi) | ((a_hi == b_hi) & (a_lo <= b_lo))


_CACHE: dict[tuple[int, float], DiscreteGaussianSampler] = {}


def gaussian_noise_for(sensitivity: float, noise_multiplier: float, dimension: int,
                       resolution: int = 2**12) -> DiscreteGaussianSampler:
    """A sampler whose noise covers ``sensitivity`` in l2 with the given noise multiplier.

    The grid ``g = 2^k`` is chosen from ``noise_multiplier * sensitivity``; rounding to it
    moves the input by at most ``sqrt(dimension) g / 2`` in l2, so the std is
    ``noise_multiplier * (sensitivity + sqrt(dimension) g)``, rounded up to one of 64
    values per octave so that tables are reused across steps.
    """
    base = noise_multiplier * sensitivity
    k = math.floor(math.log2(base / resolution))
    grid = 2.0**k
    std = noise_multiplier * (sensitivity + math.sqrt(dimension) * grid)
    octave = math.floor(math.log2(std))
    step = math.ceil((std / 2.0**octave) * 64) / 64  # round the std up to 64 steps per octave
    std = step * 2.0**octave
    key = (k, std)
    if key not in _CACHE:
        _CACHE[key] = DiscreteGaussianSampler(std, k=k)
    return _CACHE[key]
