"""A vectorised discrete Gaussian sampler on a power-of-two grid, safe in floating point.

The mechanism is the one OpenDP's ``then_gaussian(std, k)`` implements: round each
coordinate to the grid ``g = 2^k`` and add ``g Z`` with ``Z`` a discrete Gaussian of
scale ``s = std / g`` on the integers (Canonne, Kamath and Steinke 2020). Outputs are
integers times a power of two, so they carry no floating-point side channel
(Mironov 2012). OpenDP draws ``Z`` by exact rejection sampling, about 11 to 46
microseconds a coordinate; here it is drawn from tables.

**The masses.** The pmf ``p_z`` is evaluated in long double (float64 where that is all
there is) for ``|z| <= zmax = ceil(10 s)`` (the tail beyond has mass below
``2 e^-50 / sqrt(2 pi)``, about 1e-22), turned into integers ``N_z = floor(p_z 2^128)``
whose total is padded to exactly ``2^128`` at ``z = 0``. The ``N_z`` are symmetric and
``N_0`` is then even, so ``|Z|`` has the integer masses ``H_0 = N_0 / 2``, ``H_k = N_k``
over ``2^127``, and a uniform sign bit gives ``Z`` with ``P(Z = z) = N_z / 2^128``.

**The tables (bins plus a residual).** One alias table over all ``zmax + 1`` values
(``2^17`` columns or more) is read at random positions and is mostly out of cache after
a training step, so it set the sampler's speed. Instead, with ``m`` bits of bin width
(``m = max(0, bitlen(zmax) - 12)``), ``|Z|`` is split into bins ``b`` of the ``2^m``
values ``b 2^m .. b 2^m + 2^m - 1`` (``H_k = 0`` past ``zmax``), and every mass into a
flat part and a residual: ``H_k = B_b + R_k`` with ``0 <= B_b <= min_{k in b} H_k`` and
``R_k >= 0``. The ``B_b`` start at the bin minima and some are lowered (the ``R_k`` of
their bin raised alike) until the residual total is exactly ``R = 2^rho``, a power of two
(``rho`` the bit length of the minimal residual total minus one, at least ``bitlen(zmax)``:
lowering ``B_b`` by ``t`` raises ``R`` by ``t 2^m``, and ``R`` is a multiple of ``2^m``, so
this is exact and at most doubles ``R``). Then

* an alias table of ``2^c <= 2^13`` columns (Walker 1977, built exactly in integers with
  Vose's method, 1991) over the outcomes "bin ``b``" with mass ``B_b`` and "residual" with
  mass ``2^(rho - m)``, which sum to exactly ``2^(127 - m)``; it is a few kilobytes and
  stays in the level-1 cache;
* bin ``b`` gives ``|Z| = b 2^m + o`` with ``o`` uniform on ``m`` bits;
* "residual" gives ``|Z| = k`` from a second exact alias table over the ``R_k`` (total
  ``2^rho``, ``2^bitlen(zmax)`` columns of 24 bytes), read by ``2^(rho - 127)`` of the
  draws: the minimal residual is about ``2^m 2 / (s sqrt(2 pi))`` (0.2 to 0.3 % with the
  default grid), at most doubled, so some 40 of 10 thousand coordinates.

*Proof that the distribution is unchanged.* An alias table with ``2^c`` columns of
capacity ``2^L`` gives outcome ``i`` with probability exactly ``mass_i / 2^(L + c)``
when its column is uniform and ``u`` is uniform on ``[0, 2^L)`` (column ``j`` is kept
when ``u < T_j``, else its alias; the construction is checked in integers). So
``P(|Z| = k) = (B_b / 2^(127 - m)) 2^-m + (2^(rho - m) / 2^(127 - m)) (R_k / 2^rho)
= (B_b + R_k) / 2^127 = H_k / 2^127`` for ``k`` in bin ``b``: the masses of the single
table this replaces, hence the same statistical distance and accounting. The tests
recompute every ``H_k`` from the tables' integers and decode chosen words (ties at every
level) with an independent implementation.

**The random words.** Each coordinate reads one 32-bit word: the sign (top bit), the
column (``c`` bits), the offset ``o`` (``m`` bits) and the top ``q = 31 - c - m`` bits of
``u``. Thresholds are stored left-aligned in 128 bits (``T' = T 2^(128 - L)``; a full
column, ``T = 2^L``, as ``2^128 - 1`` with itself as alias), and ``u < T`` iff
``U < T'`` for any ``U`` whose top ``L`` bits are ``u``, so ``u`` is compared lazily: its
top ``q`` bits decide unless they equal ``T'``'s (probability ``2^-q``, ``q >= 8``, about
``2^-14`` here), and then two more words give the rest of ``U`` (the exact 128-bit
comparison). A residual draw takes three more words (column, then a 128-bit ``U``). These
extra words come, in coordinate order, from a second stream of 64-bit words; the bits
come from OpenSSL's CSPRNG (``RAND_bytes``), the generator OpenDP's own samplers use.
Every bit is used at most once, so the outcome is an exact function of independent
uniform bits.

So ``Z`` is drawn from exactly ``N_z / 2^128``, whose statistical distance ``eta`` from
the discrete Gaussian is bounded at construction (:attr:`statistical_distance`):
the evaluation of ``exp(-z^2 / 2 s^2)`` (exponent rounding, at most 2 ulp of it,
and 4 ulp for exp), normalisation, the integer floors and the truncated tail. A run
that draws ``m`` coordinates is within ``m eta`` of the ideal mechanism, so an
``(epsilon, delta)`` guarantee of the ideal becomes ``(epsilon, delta + (1 + e^epsilon) m eta)``
(:meth:`delta_penalty`).

Where numba is installed a compiled kernel (:mod:`.noise_kernel`) does it in one pass
(ties and residual draws inline); numpy's vector operations are the fallback. Both give
the same output for the same random words.
"""

from __future__ import annotations

import functools
import math
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
from opendp_hybridad.dpsgd import csprng
from opendp_hybridad.errors import DeclarationError

#: OpenSSL's DRBG, as in OpenDP (the operating system's generator where Python lacks ssl); a module
#: name so tests and audits can record the draws
_random_bytes = csprng.random_bytes
#: the most bytes asked of the CSPRNG in one call (RAND_bytes takes a C int: under 2^31)
_CSPRNG_CHUNK = csprng.CHUNK


def _csprng_bytes(count: int) -> bytes:
    """``count`` bytes from the CSPRNG (a model of more than about 5e8 parameters asks for more than one call can give)."""
    return csprng.chunked(_random_bytes, count, _CSPRNG_CHUNK)


_U = float(np.finfo(np.longdouble).epsneg)  # unit roundoff of the pmf's arithmetic (2^-64 on x86, 2^-53 where long double is double)
_TAILS = 10.0
_MAX_COLUMN_BITS = 22
_TOO_LARGE = "the values are too large for this grid (or not finite)"
_TOP_COLUMN_BITS = 12  # at most 2^12 bins: a top table of 16 KiB, and residual draws 0.2 to 0.4 % of the draws
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
        if not -1022 <= self.k <= 1023:
            # 1 / grid must be a normal float, exact: below 2^-1022 it is inf and every output would
            # be a sign (audit attack_noise_tables.py); the std is declared, so this is data-independent
            raise DeclarationError("std is too small for a float64 grid (the grid 2^k needs k >= -1022)"
                                   if self.k < -1022 else "the grid 2^k needs k <= 1023")
        self.grid = 2.0**self.k
        self.scale = std / self.grid  # s, in grid units
        self._tables = _table(self.scale)
        self.zmax = self._tables.zmax
        self.statistical_distance = self._tables.statistical_distance
        t = self._tables
        self._kernel_tables = (t.top, t.top_hi, t.top_lo, t.c, t.m, t.q, t.bins, t.residual, t.r)
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
        return _integer_pmf(self.scale).masses  # recomputed (exact, deterministic): the cache keeps only the tables

    def magnitude_masses(self) -> list[int]:
        """``H_k`` for ``k = 0..zmax``, the tables' masses: ``|Z| = k`` with probability ``H_k / 2^127``."""
        return _integer_pmf(self.scale).magnitudes

    @staticmethod
    def _fresh(count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` 32-bit words and a stream of extra 64-bit words, from one call to the CSPRNG."""
        # ties and residual draws are at most about 0.5 % of the coordinates (2^-q + 2^(rho - 127)); the
        # kernel settles as many as these words cover at 5 words each, 0.8 % + 12, and draws more if
        # short (for 10 thousand coordinates, 80 or more of them: some 7 standard deviations above the mean)
        extra = 64 + 5 * (count // 128)
        buffer = _csprng_bytes(8 * extra + 4 * count)
        return (np.frombuffer(buffer, dtype=np.uint32, offset=8 * extra, count=count),
                np.frombuffer(buffer, dtype=np.uint64, count=extra))

    def integers(self, count: int) -> np.ndarray:
        """``count`` draws of ``Z`` (int64)."""
        bits, extra = self._fresh(count)
        index = self.lookup(bits, _Stream(extra, secure=True))  # refilled from the CSPRNG if short
        return np.where(bits >> np.uint32(31), -index, index)

    def lookup(self, bits: np.ndarray, low: np.ndarray | None = None) -> np.ndarray:
        """``|Z|`` for each word of ``bits`` (numpy; the kernel's rule, see the module's docstring).

        ``bits``: uint32 words (uint64: their top 32 bits). ``low``: the stream of extra
        64-bit words ties and residual draws take, in coordinate order (:class:`_Stream`).
        """
        t = self._tables
        w = _words32(bits).astype(np.uint64)
        column = ((w >> np.uint64(31 - t.c)) & np.uint64((1 << t.c) - 1)).astype(np.intp)
        word = t.top[column].astype(np.uint64)
        top = w & np.uint64((1 << t.q) - 1)
        threshold = word >> np.uint64(t.c)
        outcome = np.where(top < threshold, column, (word & np.uint64((1 << t.c) - 1)).astype(np.intp))
        index = (outcome << t.m) | ((w >> np.uint64(t.q)) & np.uint64((1 << t.m) - 1)).astype(np.intp)
        stream = _Stream(low)
        for i in np.flatnonzero((top == threshold) | (outcome == t.bins)).tolist():  # rare, in coordinate order
            index[i] = self._settle(int(w[i]), stream)
        return index

    def _settle(self, word: int, stream: _Stream) -> int:
        """``|Z|`` for a word whose top bits tie its column's threshold or whose outcome is the residual (Python ints)."""
        t = self._tables
        column = (word >> (31 - t.c)) & ((1 << t.c) - 1)
        packed = int(t.top[column])
        top, threshold = word & ((1 << t.q) - 1), packed >> t.c
        outcome = column if top < threshold else packed & ((1 << t.c) - 1)
        if top == threshold:  # U = these q bits, then 64 - q bits of one extra word and all of a second
            e1, e2 = stream.take(2)
            u = (top << (128 - t.q)) | ((e1 >> t.q) << 64) | e2
            outcome = column if u < (int(t.top_hi[column]) << 64 | int(t.top_lo[column])) else packed & ((1 << t.c) - 1)
        if outcome != t.bins:
            return (outcome << t.m) | ((word >> t.q) & ((1 << t.m) - 1))
        e1, e2, e3 = stream.take(3)  # the residual table: a column, then a 128-bit U
        hi, lo, alias = t.residual[e1 >> (64 - t.r)].tolist()
        return e1 >> (64 - t.r) if (e2 << 64 | e3) < (hi << 64 | lo) else alias

    def __call__(self, values: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """``g (round(values / g) + Z)``, one fresh ``Z`` per coordinate: exact in float64 while ``|values| / g < 2^52``.

        ``in_place``: write the result into ``values`` (a C-contiguous float64 array the
        caller owns) rather than a new array; it saves a pass over memory per step.
        """
        x = np.ascontiguousarray(values, dtype=np.float64)
        out = x if in_place and x is values else None
        bits, extra = self._fresh(x.size)
        return self._add(x, bits, _Stream(extra, secure=True), out)

    def add(self, values: np.ndarray, bits: np.ndarray, low: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The mechanism given its random words: ``g (round(values / g) + Z)`` with ``Z`` looked up from ``bits``.

        ``bits`` holds one uniform word per coordinate: uint32, or uint64 whose top 32
        bits are used (the sign is the top bit). ``low``: the extra 64-bit words that ties
        and residual draws take, in coordinate order; fresh CSPRNG words when None. A
        given ``low`` that runs out continues with words of numpy's generator seeded by it
        (deterministic, for seeded experiments and tests; the private path never passes one).
        Either backend gives the same output for the same words. ``out`` (may be
        ``values``) receives the result. A value too large for the grid, or NaN, raises
        before anything is written.
        """
        x = np.ascontiguousarray(values, dtype=np.float64)
        return self._add(x, _words32(bits), _Stream(low), out)

    def _add(self, x: np.ndarray, bits: np.ndarray, stream: _Stream, out: np.ndarray | None) -> np.ndarray:
        limit = 2.0**52 * self.grid
        if bits.size != x.size:
            raise ValueError("one random word per coordinate")
        if self._kernel is not None:
            flat = x.reshape(-1)
            result = np.empty(x.size) if out is None else out.reshape(-1)
            start = 0
            while True:
                extra, position = stream.array()
                stop, position = self._kernel(flat, bits, start, *self._kernel_tables, self.grid, limit, result, extra, position)
                if stop < 0:
                    raise ValueError(_TOO_LARGE)
                stream.used(position)
                if stop >= x.size:
                    break
                stream.refill()  # the extra words left might not cover the coordinate at stop: nothing from it on is written
                start = stop
            return result.reshape(x.shape)
        if x.size and not (-limit < x.min() and x.max() < limit):  # NaN fails both
            raise ValueError(_TOO_LARGE)
        index = self.lookup(bits, stream)
        lattice = np.rint(x * (1.0 / self.grid)) if out is None else np.rint(x * (1.0 / self.grid), out=out)
        lattice += np.where(bits >> np.uint32(31), -index, index).reshape(x.shape)
        with np.errstate(over="ignore"):  # a grid near 2^1023 can overflow to inf, silently as in the kernel
            lattice *= self.grid
        return lattice

    def delta_penalty(self, epsilon: float, coordinates: int) -> float:
        """What ``coordinates`` draws add to delta: ``(1 + e^epsilon) coordinates eta``, rounded up."""
        from opendp_hybridad.accounting import distance_penalty

        return distance_penalty(epsilon, mul_up(float(coordinates), self.statistical_distance))


def _words32(bits: np.ndarray) -> np.ndarray:
    """One 32-bit word per coordinate: uint32 as given, uint64 by their top 32 bits."""
    b = np.asarray(bits).reshape(-1)
    if b.dtype == np.uint32:
        return np.ascontiguousarray(b)
    if b.dtype == np.uint64:
        return (b >> np.uint64(32)).astype(np.uint32)
    raise TypeError("the random words must be uint32 or uint64")


class _Stream:
    """The extra 64-bit words that ties and residual draws take, in coordinate order.

    Refilled from the CSPRNG when it began as fresh words (or none); a given array that
    runs out continues with the raw output of numpy's generator seeded by that array, so
    seeded runs and tests stay deterministic. Refills never change the order of the words.
    """

    def __init__(self, words: np.ndarray | _Stream | None, secure: bool = False):
        if isinstance(words, _Stream):  # already a stream (the numpy path passes its own on)
            self.__dict__.update(words.__dict__)
            return
        self._secure = secure or words is None
        if words is None:
            words = np.empty(0, dtype=np.uint64)
        self._words = words if secure else np.ascontiguousarray(words, dtype=np.uint64).reshape(-1)  # secure: _fresh's own
        self._seed = None if self._secure else [self._words.size, *self._words.tolist()]
        self._rng: np.random.Generator | None = None
        self._position = 0

    def array(self) -> tuple[np.ndarray, int]:
        return self._words, self._position

    def used(self, position: int) -> None:
        self._position = position

    def refill(self) -> None:
        count = 256  # at least the 5 words one coordinate can take
        if self._secure:
            more = np.frombuffer(_random_bytes(8 * count), dtype=np.uint64)
        else:
            if self._rng is None:
                self._rng = np.random.default_rng(self._seed)
            more = self._rng.bit_generator.random_raw(count).astype(np.uint64)
        self._words = np.concatenate([self._words[self._position:], more])
        self._position = 0

    def take(self, count: int) -> list[int]:
        while self._position + count > self._words.size:
            self.refill()
        out = self._words[self._position:self._position + count].tolist()
        self._position += count
        return out


@dataclass(frozen=True)
class _Table:
    """What a sampler draws from (kept in a cache): the exact integer masses are recomputed on demand.

    ``top``: ``2^c`` uint32 words ``(T' >> (128 - q)) << c | alias`` of the bins-and-residual
    table; ``top_hi``, ``top_lo``: its left-aligned 128-bit thresholds ``T'`` (read on ties);
    ``residual``: the residual table over ``2^r`` columns (outcome ``bins`` of the top), one record
    ``(T'_hi, T'_lo, alias)`` of uint64 a column, so that a residual draw reads one cache line (mostly).
    """
    zmax: int
    r: int
    m: int
    c: int
    q: int
    bins: int
    top: np.ndarray
    top_hi: np.ndarray
    top_lo: np.ndarray
    residual: np.ndarray
    statistical_distance: float


@dataclass(frozen=True)
class _IntegerPmf:
    zmax: int
    masses: list[int]  # N_z for z = -zmax..zmax, summing to 2^128
    magnitudes: list[int]  # H_k for |Z| = k, summing to 2^127
    deficit: int  # what the padding at the mode added
    exponent: np.ndarray
    p: np.ndarray


#: noise tables kept per process: 6 MiB each at the default grid (the residual table's 2^18 columns of 24 bytes; the
#: top one is 80 KiB at most, 4 bytes a column read by every draw and 16 on ties), up to 96 MiB at the largest scale a
#: table takes (2^22 columns: a noise multiplier times sqrt(dimension) of about 2e5 or more). Per-step bounds
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
    tables = _tables(pmf.magnitudes, zmax)
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
    return _Table(zmax, *tables, statistical_distance=distance)


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


def _alias(masses: list[int], total_bits: int, column_bits: int) -> tuple[list[int], list[int]]:
    """An exact alias table for integer masses summing to ``2^total_bits``, over ``2^column_bits`` columns.

    Column ``j`` has capacity ``2^L``, ``L = total_bits - column_bits``; it keeps ``T_j`` for
    entry ``j`` and gives the rest to its alias (Vose 1991, in integers, so with a uniform
    column and ``u`` uniform on ``[0, 2^L)``, ``P(i) = mass_i / 2^total_bits`` exactly).
    Returns the thresholds left-aligned in 128 bits, ``T_j 2^(128 - L)`` (a full column,
    its own alias, as ``2^128 - 1``: every ``U`` below it keeps ``j``, and ``U = 2^128 - 1``
    goes to the alias, ``j`` too), and the aliases.
    """
    columns = 1 << column_bits
    capacity_bits = total_bits - column_bits
    if not (0 <= capacity_bits <= 128 and len(masses) <= columns and sum(masses) == 1 << total_bits):
        raise AssertionError("an alias table needs masses summing to 2^total_bits over enough columns")  # cannot happen
    capacity = 1 << capacity_bits
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
    for j in small + large:  # full columns: their own alias
        threshold[j], alias[j] = capacity, j
    aligned = [(t << (128 - capacity_bits)) if t < capacity else (1 << 128) - 1 for t in threshold]
    return aligned, alias


def _split(aligned: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([t >> 64 for t in aligned], dtype=np.uint64), np.array([t & _M64 for t in aligned], dtype=np.uint64))


def _tables(magnitudes: list[int], zmax: int) -> tuple:
    """The bins-and-residual tables for ``|Z|`` (masses ``H_k`` summing to ``2^127``): see the module's docstring.

    Returns ``r, m, c, q, bins, top, top_hi, top_lo, residual``.
    """
    r = max(1, zmax.bit_length())  # 2^r > zmax: the residual table's columns
    m = max(0, r - _TOP_COLUMN_BITS)  # bins of 2^m values, few enough that the top table stays in the level-1 cache
    width = 1 << m
    bins = -(-(zmax + 1) // width)
    h = list(magnitudes) + [0] * (bins * width - len(magnitudes))  # H_k = 0 past zmax: the last bin's floor is 0 if it is partial
    flat = [min(h[b * width:(b + 1) * width]) for b in range(bins)]
    residual = [h[k] - flat[k >> m] for k in range(len(h))]
    minimal = sum(residual)  # a multiple of 2^m (2^127 minus 2^m times the flat masses)
    if minimal:
        rho = max(r, (minimal - 1).bit_length())  # the residual total, raised to 2^rho (at most doubled, or to 2^r)
        lower = ((1 << rho) - minimal) >> m  # exact: both terms are multiples of 2^m (rho >= r > m)
        for b in range(bins):  # lowered from the first bins, whose flat parts are the largest
            t = min(flat[b], lower)
            flat[b] -= t
            for k in range(b * width, (b + 1) * width):
                residual[k] += t
            lower -= t
            if not lower:
                break
        if lower or sum(residual) != 1 << rho:
            raise AssertionError("the residual total is not a power of two")  # 2^rho <= 2^127: cannot happen
        outcomes = [*flat, 1 << (rho - m)]
        res_aligned, res_alias = _alias(residual[: zmax + 1], rho, r)
    else:  # every bin flat (m = 0, say): no residual outcome
        outcomes, res_aligned, res_alias = flat, [], []
    if any(h[k] != flat[k >> m] + residual[k] for k in range(len(h))) or sum(outcomes) != 1 << (127 - m):
        raise AssertionError("the split does not add up")  # exact integers: cannot happen
    c = max(1, (len(outcomes) - 1).bit_length())
    q = 31 - c - m
    if q < 1:
        raise DeclarationError("too many columns for the bits of one word")  # m <= 10 and c <= 13: cannot happen
    aligned, alias = _alias(outcomes, 127 - m, c)
    top = np.array([((t >> (128 - q)) << c) | a for t, a in zip(aligned, alias, strict=True)], dtype=np.uint32)
    top_hi, top_lo = _split(aligned)
    residual_records = np.empty((len(res_alias), 3), dtype=np.uint64)
    residual_records[:, 0], residual_records[:, 1] = _split(res_aligned)
    residual_records[:, 2] = res_alias
    return r, m, c, q, bins, top, top_hi, top_lo, residual_records


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
