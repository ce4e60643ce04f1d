"""A vectorised discrete Gaussian sampler on a power-of-two grid, safe in floating point.

The mechanism is the one OpenDP's ``then_gaussian(std, k)`` implements: round each
coordinate to the grid ``g = 2^k`` and add ``g Z`` with ``Z`` a discrete Gaussian of
scale ``s = std / g`` on the integers (Canonne, Kamath and Steinke 2020). Outputs are
integers times a power of two, so they carry no floating-point side channel
(Mironov 2012). OpenDP draws ``Z`` by exact rejection sampling, about 11 to 46
microseconds a coordinate; here it is drawn from a table:

* the pmf ``p_z`` is evaluated in long double (float64 where that is all there is) for
  ``|z| <= 10 s`` (the tail beyond has mass below ``2 e^-50 / sqrt(2 pi)``, about 1e-22),
  turned into integers ``N_z = floor(p_z 2^128)`` whose total is padded to exactly
  ``2^128`` at ``z = 0``. The pmf is symmetric and so are the ``N_z``, and ``N_0`` is
  then even, so ``|Z|`` has the integer masses ``H_0 = N_0 / 2``, ``H_k = N_k`` over
  ``2^127`` and a uniform sign bit gives ``Z`` (half the table: it is read at random
  and is mostly out of cache after a training step, so its size sets the speed);
* each coordinate's 64-bit word gives the sign (top bit), one of ``2^r`` columns of an
  alias table for ``|Z|`` (Walker 1977, built exactly in integers with Vose's method,
  1991; the next ``r`` bits) and the top ``63 - r`` bits of a uniform ``(127 - r)``-bit
  ``u``, compared with the column's threshold: below it the column, otherwise its
  alias. The bits come from OpenSSL's CSPRNG (``RAND_bytes``), the generator OpenDP's
  own samplers use. The next 64 bits of ``u`` are drawn only when its top bits tie the
  threshold's (probability about ``2^(r-63)``), because they cannot change any other answer.

So ``Z`` is drawn from exactly ``N_z / 2^128`` (``H_k / 2^127`` times one half for each sign), whose statistical distance ``eta`` from
the discrete Gaussian is bounded at construction (:attr:`statistical_distance`):
the evaluation of ``exp(-z^2 / 2 s^2)`` (exponent rounding, at most 2 ulp of it,
and 4 ulp for exp), normalisation, the integer floors and the truncated tail. A run
that draws ``m`` coordinates is within ``m eta`` of the ideal mechanism, so an
``(epsilon, delta)`` guarantee of the ideal becomes ``(epsilon, delta + (1 + e^epsilon) m eta)``
(:meth:`delta_penalty`).

A draw costs one gather from a table of ``2^r`` 64-bit words (threshold top bits and
alias packed together). Where numba is installed a compiled kernel (:mod:`.noise_kernel`)
does it in two passes, about 4 ns a coordinate with the table in cache and 10 ns right
after a training step has evicted it; numpy's vector operations take about 15 to 20 ns.
Both give the same output for the same random bits.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from opendp_hybridad.analysis.rounding import (
    add_down,
    add_up,
    div_up,
    libm_up,
    mul_down,
    mul_up,
    round_up,
    round_up_to_slots,
    sqrt_up,
    sum_up,
)
from opendp_hybridad.errors import DeclarationError

try:  # OpenSSL's DRBG, as in OpenDP; the operating system's generator where Python lacks ssl
    from ssl import RAND_bytes as _random_bytes
except ImportError:  # pragma: no cover
    _random_bytes = os.urandom

_U = float(np.finfo(np.longdouble).epsneg)  # unit roundoff of the pmf's arithmetic (2^-64 on x86, 2^-53 where long double is double)
_TAILS = 10.0
_MAX_COLUMN_BITS = 22
_M64 = (1 << 64) - 1
#: every table is checked against this at construction, so a run can state its delta before training
#: (about 1e-17 with x86 long double, 1e-14 where long double is float64)
STATISTICAL_DISTANCE_BOUND = 100.0 * max(_U, 2.0**-64)  # where long double is quad, the tail (about 1e-23) sets the floor


class DiscreteGaussianSampler:
    """Noise of standard deviation about ``std`` on the grid ``2^k``, with ``std / 2^k`` in ``[resolution, 2 resolution)``."""

    def __init__(self, std: float, resolution: int = 2**13, k: int | None = None, backend: str = "auto"):
        if backend not in ("auto", "numba", "numpy"):
            raise DeclarationError("backend must be 'auto', 'numba' or 'numpy'")
        if not (std > 0 and math.isfinite(std)):
            raise DeclarationError("std must be a positive finite number")
        self.k = math.floor(math.log2(std / resolution)) if k is None else int(k)
        self.grid = 2.0**self.k
        self.scale = std / self.grid  # s, in grid units
        table = _table(self.scale)
        self.zmax, self._r, self._packed, self._threshold_low = table.zmax, table.r, table.packed, table.threshold_low
        self.statistical_distance = table.statistical_distance
        from opendp_hybridad.dpsgd.noise_kernel import compiled_noisy_lattice

        self._kernel = None if backend == "numpy" else compiled_noisy_lattice()
        if backend == "numba" and self._kernel is None:
            raise ImportError("backend='numba' needs numba (pip install 'opendp-hybridad[fast]')")
        self.backend = "numba" if self._kernel is not None else "numpy"

    @property
    def std(self) -> float:
        return self.scale * self.grid

    def masses(self) -> list[int]:
        """``N_z`` for ``z = -zmax..zmax``: the sampler returns ``z`` with probability exactly ``N_z / 2^128``."""
        return _integer_pmf(self.scale).masses  # recomputed (exact, deterministic): the cache keeps only the table

    def magnitude_masses(self) -> list[int]:
        """``H_k`` for ``k = 0..zmax``, the alias table's masses: ``|Z| = k`` with probability ``H_k / 2^127``."""
        return _integer_pmf(self.scale).magnitudes

    def integers(self, count: int) -> np.ndarray:
        """``count`` draws of ``Z`` (int64)."""
        bits = np.frombuffer(_random_bytes(8 * count), dtype=np.uint64)
        index = self.lookup(bits)
        return np.where(bits >> np.uint64(63), -index, index)

    def lookup(self, bits: np.ndarray, low: np.ndarray | None = None) -> np.ndarray:
        """``|Z|`` for each 64-bit draw: column ``j`` (the ``r`` bits below the sign bit) if ``u < T_j``, else its alias.

        ``u`` is the draw's remaining ``63 - r`` bits followed by 64 more; those are read
        from ``low`` or, when ``low`` is None, drawn only where the top bits tie ``T_j``'s.
        """
        r = self._r
        column = ((bits >> np.uint64(63 - r)) & np.uint64((1 << r) - 1)).astype(np.intp)
        word = self._packed[column]
        top = bits & np.uint64((1 << (63 - r)) - 1)
        threshold = word >> np.uint64(r)
        alias = (word & np.uint64((1 << r) - 1)).astype(np.intp)
        index = np.where(top < threshold, column, alias)
        for t in np.flatnonzero(top == threshold):  # about 2^(r-63) of the draws: the next 64 bits decide
            index[t] = self._settle_tie(int(bits[t]), None if low is None else int(low[t]))
        return index

    def _column(self, bits: int) -> int:
        return (bits >> (63 - self._r)) & ((1 << self._r) - 1)

    def _settle_tie(self, bits: int, low: int | None) -> int:
        """``|Z|`` for a draw whose top bits tie its column's threshold: compare the next 64 bits of ``u``."""
        column = self._column(bits)
        if low is None:
            low = int(np.frombuffer(_random_bytes(8), dtype=np.uint64)[0])
        if low < int(self._threshold_low[column]):
            return column
        return int(self._packed[column]) & ((1 << self._r) - 1)

    def __call__(self, values: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """``g (round(values / g) + Z)``, one fresh ``Z`` per coordinate: exact in float64 while ``|values| / g < 2^52``.

        ``in_place``: write the result into ``values`` (a C-contiguous float64 array the
        caller owns) rather than a new array; it saves a pass over memory per step.
        """
        x = np.ascontiguousarray(values, dtype=np.float64)
        out = x if in_place and x is values else None
        return self.add(x, np.frombuffer(_random_bytes(8 * x.size), dtype=np.uint64), out=out)

    def add(self, values: np.ndarray, bits: np.ndarray, low: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The mechanism given its random words: ``g (round(values / g) + Z)`` with ``Z`` looked up from ``bits``.

        ``bits`` holds one uniform 64-bit word per coordinate (its top bit is the sign);
        ``low`` the next 64 bits for ties (drawn fresh when None, as :meth:`lookup`).
        Either backend gives the same output for the same words. ``out`` (may be
        ``values``) receives the result. A value too large for the grid, or NaN, raises
        before anything is written.
        """
        x = np.ascontiguousarray(values, dtype=np.float64)
        limit = 2.0**52 * self.grid
        bad = ValueError("the values are too large for this grid (or not finite)")
        if self._kernel is not None:
            flat = x.reshape(-1)
            result = np.empty(x.size) if out is None else out.reshape(-1)
            ties = np.empty(min(x.size, 64), dtype=np.int64)  # ties are about 2^(r-63) of the draws
            start = 0
            while True:
                count, stop = self._kernel(flat, bits, start, self._packed, self._r, self.grid, limit, result, ties)
                if stop < 0:
                    raise bad
                for t in ties[:count].tolist():
                    # the kernel wrote the column; the next 64 bits of u decide between it and its alias
                    word = int(bits[t])
                    change = self._settle_tie(word, None if low is None else int(low[t])) - self._column(word)
                    result[t] += (-change if word >> 63 else change) * self.grid  # integers times g: exact
                if stop >= x.size:
                    break
                start = stop  # a stop before the end follows a full buffer of ties at a later index: always progress
            return result.reshape(x.shape)
        if x.size and not (-limit < x.min() and x.max() < limit):  # NaN fails both
            raise bad
        index = self.lookup(bits, low)
        lattice = np.rint(x * (1.0 / self.grid)) if out is None else np.rint(x * (1.0 / self.grid), out=out)
        lattice += np.where(bits >> np.uint64(63), -index, index).reshape(x.shape)
        lattice *= self.grid
        return lattice

    def delta_penalty(self, epsilon: float, coordinates: int) -> float:
        """What ``coordinates`` draws add to delta: ``(1 + e^epsilon) coordinates eta``, rounded up."""
        from opendp_hybridad.accounting import distance_penalty

        return distance_penalty(epsilon, mul_up(float(coordinates), self.statistical_distance))


@dataclass(frozen=True)
class _Table:
    """What a sampler draws from (kept in a cache): the exact integer masses are recomputed on demand."""
    zmax: int
    r: int
    packed: np.ndarray
    threshold_low: np.ndarray
    statistical_distance: float


@dataclass(frozen=True)
class _IntegerPmf:
    zmax: int
    masses: list[int]  # N_z for z = -zmax..zmax, summing to 2^128
    magnitudes: list[int]  # H_k for |Z| = k, summing to 2^127
    deficit: int  # what the padding at the mode added
    exponent: np.ndarray
    p: np.ndarray


#: noise tables kept per process: each up to 4 MiB (2^18 columns of two 64-bit words). Per-step bounds
#: visit one noise scale per slot their sensitivity passes through (64 slots per octave of the std);
#: 8 was too few for a run whose sensitivity moved over 13 slots (every step rebuilt a table)
TABLE_CACHE_SIZE = 32


def _integer_pmf(scale: float) -> _IntegerPmf:
    zmax = math.ceil(_TAILS * scale)
    if zmax.bit_length() > _MAX_COLUMN_BITS:
        raise DeclarationError("the scale is too large for a table: use a coarser grid (smaller resolution)")
    # the pmf in long double where the platform has it (x86: 64-bit significand), so the
    # table's distance from the ideal is about 2^11 times smaller than in float64
    z = np.arange(-zmax, zmax + 1).astype(np.longdouble)
    s_ld = np.longdouble(scale)
    exponent = -(z * z) / (2 * s_ld * s_ld)
    weights = np.exp(exponent)
    total = weights.sum()  # pairwise: relative error <= (log2 n + 1) u
    p = weights / total
    masses = _floor_times_2_128(p)
    # pad the total to exactly 2^128 at the mode (the deficit is tiny next to N_0)
    deficit = 2**128 - sum(masses)
    masses[zmax] += deficit
    # z * z is the same for z and -z, so the floors are symmetric, and N_0 = 2^128 - 2 sum_k N_k is
    # even: |Z| has masses N_0 / 2, N_1, ..., N_zmax over 2^127, and a fair sign bit gives Z
    if masses[:zmax] != masses[:zmax:-1] or masses[zmax] % 2:
        raise AssertionError("the pmf is not symmetric")  # exact integers from symmetric floats: cannot happen
    magnitudes = [masses[zmax] // 2, *masses[zmax + 1:]]
    return _IntegerPmf(zmax, masses, magnitudes, deficit, exponent, p)


@functools.lru_cache(maxsize=TABLE_CACHE_SIZE)  # a table depends on the scale alone
def _table(scale: float) -> _Table:
    pmf = _integer_pmf(scale)
    zmax, deficit, exponent, p = pmf.zmax, pmf.deficit, pmf.exponent, pmf.p
    r, packed, threshold_low = _alias_table(pmf.magnitudes, total_bits=127)
    # statistical distance from the discrete Gaussian, bounded generously (no factor 1/2):
    # relative error per weight of at most (2 |exponent| + 8) u (the exponent's roundings
    # and exp), the total's from those and (log2 n + 1) u of summation, one rounding in
    # the division; then the floors (one 2^-128 each), the padding at the mode, and the
    # tail beyond 10 s
    # (the per-entry terms are summed with math.fsum and padded by 1%, far more than the
    # few roundings of each float product; the totals below are rounded up)
    relative = (2.0 * np.abs(exponent.astype(np.float64)) + 8.0) * _U
    p64 = p.astype(np.float64)
    float_part = mul_up(add_up(mul_up(2.0, math.fsum((p64 * relative).tolist())), mul_up(add_up(math.log2(p.size), 2.0), _U)), 1.01)
    floors = mul_up(float(p.size), 2.0**-128)
    s = float(scale)
    # sum_{z > T s} e^{-z^2/2s^2} <= e^{-T^2/2} / (1 - e^{-T/s}) <= e^{-T^2/2} (s/T + 1), both tails,
    # over a normaliser of at least s sqrt(2 pi) - 1
    normaliser = max(add_down(mul_down(s, 2.5066282746310002), -1.0), 1e-300)  # a float below sqrt(2 pi) = 2.50662827463100050...
    tail = div_up(mul_up(mul_up(2.0, libm_up(math.exp(-_TAILS * _TAILS / 2.0))), add_up(div_up(s, _TAILS), 1.0)), normaliser)
    distance = sum_up([float_part, floors, round_up(Fraction(abs(deficit), 2**128)), tail])
    if distance > STATISTICAL_DISTANCE_BOUND:
        raise DeclarationError("this table is further from the discrete Gaussian than the bound every run reports")
    return _Table(zmax, r, packed, threshold_low, distance)


def _floor_times_2_128(p: np.ndarray) -> list[int]:
    """``floor(p 2^128)`` for ``0 <= p < 1``, exactly (``p`` in any binary float type with at least 53 bits).

    ``p 2^64`` is exact (a power of two); its floor (below 2^64) is the high word and its
    fraction, also exact, times ``2^64`` gives the low word.
    """
    if np.any(p >= 1.0):
        raise DeclarationError("a single point holds all the mass: the scale is too small for the grid")
    scaled = p * p.dtype.type(2.0**64)
    whole = np.floor(scaled)
    high = whole.astype(np.uint64).tolist()
    low = np.floor((scaled - whole) * p.dtype.type(2.0**64)).astype(np.uint64).tolist()
    return [(h << 64) | w for h, w in zip(high, low, strict=True)]


def _alias_table(masses: list[int], total_bits: int) -> tuple[int, np.ndarray, np.ndarray]:
    """An exact alias table for integer masses summing to ``2^total_bits``, over ``2^r`` columns.

    Column ``j`` has capacity ``2^(total_bits - r)``; it keeps ``T_j`` for entry ``j`` and
    gives the rest to its alias (Vose 1991, in integers, so ``P(j) = N_j / 2^total_bits``
    exactly). Returns ``r``, words ``(T_j >> 64) << r | alias_j`` and the low 64 bits of
    each ``T_j``. A full column (``T_j`` = capacity) is its own alias.
    """
    r = max(1, (len(masses) - 1).bit_length())
    columns = 1 << r
    capacity = 1 << (total_bits - r)
    top_bits = total_bits - r - 64  # the bits of u in the draw's own word
    if top_bits < 1:
        raise DeclarationError("too many columns for the bits of one word")
    mass = list(masses) + [0] * (columns - len(masses))
    threshold, alias = [capacity] * columns, list(range(columns))
    small = [j for j in range(columns) if mass[j] < capacity]
    large = [j for j in range(columns) if mass[j] >= capacity]
    while small and large:
        j, big = small.pop(), large[-1]
        threshold[j], alias[j] = mass[j], big
        mass[big] -= capacity - mass[j]
        if mass[big] < capacity:
            large.pop()
            small.append(big)
    if any(mass[j] != capacity for j in small + large):
        raise AssertionError("the masses do not sum to 2^total_bits")  # exact integers: cannot happen
    for j in small + large:  # full columns: their own alias, threshold all ones (a tie is resolved to j either way)
        threshold[j], alias[j] = capacity, j
    top = [min(t >> 64, (1 << top_bits) - 1) for t in threshold]
    packed = (np.array(top, dtype=np.uint64) << np.uint64(r)) | np.array(alias, dtype=np.uint64)
    low = np.array([t & _M64 if t < capacity else _M64 for t in threshold], dtype=np.uint64)
    return r, packed, low


def gaussian_std_for(sensitivity: float, noise_multiplier: float, dimension: int, resolution: int = 2**13) -> tuple[float, int]:
    """``(std, k)`` of the sampler :func:`gaussian_noise_for` builds, without building its table.

    The grid ``g = 2^k`` is chosen from ``noise_multiplier * sensitivity``; rounding to it
    moves the input by at most ``sqrt(dimension) g / 2`` in l2, so the std is
    ``noise_multiplier * (sensitivity + sqrt(dimension) g)``, rounded up to one of 64
    values per octave so that (cached) tables are reused across steps.
    """
    if not (noise_multiplier > 0 and sensitivity > 0 and math.isfinite(noise_multiplier * sensitivity)):
        raise DeclarationError("the noise multiplier and the sensitivity must be positive and finite")
    base = noise_multiplier * sensitivity
    k = math.floor(math.log2(base / resolution))
    grid = 2.0**k
    # every operation rounded up (analysis/rounding.py): sqrt(d) 2^k, the sum, the product
    std = mul_up(noise_multiplier, add_up(sensitivity, mul_up(sqrt_up(float(dimension)), grid)))
    return round_up_to_slots(std, 64), k


def gaussian_noise_for(sensitivity: float, noise_multiplier: float, dimension: int,
                       resolution: int = 2**13, backend: str = "auto") -> DiscreteGaussianSampler:
    """A sampler whose noise covers ``sensitivity`` in l2 with the given noise multiplier (std: :func:`gaussian_std_for`)."""
    std, k = gaussian_std_for(sensitivity, noise_multiplier, dimension, resolution)
    return DiscreteGaussianSampler(std, k=k, backend=backend)  # cheap: the table behind it is cached by scale
