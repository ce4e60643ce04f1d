"""Adversarial audit of the discrete Gaussian table sampler's bins-and-residual tables (2964541, c0a60ac, b2a3f62, a6ecbbd).

Run: ``python bench/audits/attack_noise_tables.py [--quick]`` (about a minute on 2 cores). Prints each
check; exits 1 if any violation is found: an output distribution that is not exactly
``P(|Z| = k) = H_k / 2^127`` with a fair, independent sign; a word the numba kernel and the numpy path
decode differently (or differently from the rule of noise.py's docstring); a bit read twice or read
from a seeded generator on a private path; a refill of the extra words that changes their order; an
in-place / add / uint64 path whose output differs; a table the library can ask for that is refused,
further than ``STATISTICAL_DISTANCE_BOUND``, or further from the discrete Gaussian than it states;
an input that the code before the rewrite (64d791c) handled one way and this code another.

Ground truth never comes from the library's decoding:

* The rule is transcribed here from noise.py's module docstring (``Rule``): sign = bit 31, column =
  the next ``c`` bits, offset = ``m`` bits, ``u``'s top ``q`` bits; a tie takes two extra words
  (``U = top q | 64 - q bits of the first | the second``), a residual draw three (column from the top
  ``r`` bits of one word, then a 128-bit ``U``). Its exact distribution is computed in integers from
  the raw table arrays (``top``, ``top_hi``/``top_lo``, ``residual``) with the lazy comparison's own
  probabilities (``thr / 2^q`` below, ``1 / 2^q`` of a tie, then the tie's 128-bit comparison), and
  compared with ``H_k`` (``magnitude_masses()``, the masses the accounting uses) for every k.
* That the code implements the rule is checked by piecewise enumeration: the code's decision is
  a comparison of the word's top ``q`` bits with a threshold (then of 128-bit numbers), so every
  word of a column falls in one of three classes (below, tie, above) whose output is constant up to
  the offset; every column is tried at the class boundaries (0, thr - 1, thr, thr + 1, 2^q - 1),
  both signs, offsets 0 and 2^m - 1, ties with ``U`` at ``T' - 1``, ``T'``, ``T' + 1``, 0 and max, and
  EVERY residual column at its own ``T' - 1``, ``T'``, 0 and max; and some columns are enumerated
  exhaustively (all ``2^(q + m)`` words, counted per k and compared with ``thr`` / ``2^q - 1 - thr``).
  Both backends, ``lookup``, ``add`` (float and uint64 words), in place, and a ``-g/4`` input.
* Private paths run with ``_random_bytes`` replaced by a recording source: the first buffer's words
  are chosen (all ties / residual draws, so the extra words run out many times), and the output must
  equal the rule applied to exactly the bytes handed out, in order (extra words first, refills after).
  ``numpy.random.default_rng`` raises during these calls.

Scales: tiny tables (``m = 0``: no residual; ``m = 1``), the ``r`` boundaries (zmax = 4095 / 4096,
131071 / 131072: 4096 bins, so ``c = 13``), both ends of the default octave [8192, 16384), the scales
DP-SGD's ``gaussian_std_for`` produces for several (sensitivity, noise multiplier, dimension), and all
64 slots of the default octave (construction, stated distance and the bound). mpmath (40 digits)
bounds the true statistical distance of three tables for comparison with what they state. A
chi-square on real CSPRNG draws (and on forced residual draws) is a supplement only.

Result at a6ecbbd: the tables' distribution is exactly ``H_k / 2^127`` at every scale tried (tiny, the r
boundaries, c = 13, the default octave's ends and slots, DP-SGD's scales), both backends decode every
boundary word by the rule (ties at every column, every residual column at its threshold, zmax, k = 0),
the exhaustively enumerated columns count exactly ``thr`` / ``2^q - 1 - thr`` words per offset, each
random byte is read once and in order, refills keep the order and come from the CSPRNG, x = -z g
gives +0.0, and NaN / inf / the limit behave as at 64d791c. The stated distances hold (mpmath).

Both violations below are fixed since (the kernel adds a settled draw as (rint + z) g, and a grid
below 2^-1022 is refused at construction); the audit exits 0.

Violations found at a6ecbbd (both at exotic scales; the first also in the code before the rewrite for ties, now at the
rate of residual draws; the second identical at 64d791c):

1. grid ``2^k`` with ``k >= ~1007`` (``std`` of about 1e307 or more, accepted by DiscreteGaussianSampler):
   the kernel adds a tie's or residual draw's noise as ``rint(x / g) g + z g``, which overflows to inf
   where numpy's ``(rint(x / g) + z) g`` (and the kernel's own plain draws) are finite; the kernel's output
   is then not a function of ``rint(x / g) + z`` (not post-processing of the lattice mechanism).
2. grid below ``2^-1023`` (``std`` below ``2^-1011``, about 4.6e-305, or ``k <= -1024``): ``1 / g`` is inf and
   ``x * (1 / g)`` gives NaN for 0 and +-inf by the sign of ``x``: the output is the input's sign, no noise.

Notes: memory of the residual table (``2^r x 24`` bytes, 96 MiB at r = 22, up to 32 cached), the DP-SGD
scale exceeds ``2 resolution`` by ``noise_multiplier sqrt(dimension)``, RAND_bytes' 2^31-byte limit,
``add(out=non-contiguous)`` differs between backends in whether ``out`` is written (returned arrays equal).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import math
import os
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from fractions import Fraction

import numpy as np

warnings.filterwarnings("ignore")

from opendp_hybridad.dpsgd import noise as noise_module  # noqa: E402
from opendp_hybridad.dpsgd.noise import DiscreteGaussianSampler  # noqa: E402

VIOLATIONS: list[str] = []
NOTES: list[str] = []
M64 = (1 << 64) - 1
M128 = (1 << 128) - 1
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def violation(msg: str) -> None:
    VIOLATIONS.append(msg)
    print("VIOLATION:", msg, flush=True)


def note(msg: str) -> None:
    NOTES.append(msg)
    print("note:", msg, flush=True)


def ok(msg: str) -> None:
    print("  ok:", msg, flush=True)


# -- the rule, transcribed from the module docstring ------------------------------------------------------
class Rule:
    """The decoding rule and its exact distribution, from the raw table arrays alone."""

    def __init__(self, sampler: DiscreteGaussianSampler):
        t = sampler._tables
        self.sampler, self.t = sampler, t
        self.c, self.m, self.q, self.r, self.bins, self.zmax = t.c, t.m, t.q, t.r, t.bins, t.zmax
        words = t.top.tolist()
        self.thr = np.array([w >> t.c for w in words], dtype=np.int64)
        self.alias = np.array([w & ((1 << t.c) - 1) for w in words], dtype=np.int64)
        self.T = [int(h) << 64 | int(lo) for h, lo in zip(t.top_hi.tolist(), t.top_lo.tolist(), strict=True)]
        records = t.residual.tolist()
        self.RT = [h << 64 | lo for h, lo, _ in records]
        self.Ralias = [a for _, _, a in records]
        assert len(words) == 1 << t.c and 1 + t.c + t.m + t.q == 32

    # decoding ------------------------------------------------------------------------------------------
    def decode(self, words: np.ndarray, stream: list[int]) -> tuple[np.ndarray, int]:
        """Signed ``Z`` for each uint32 word, extra words read from ``stream`` in coordinate order; returns (Z, words read)."""
        c, m, q = self.c, self.m, self.q
        w = words.astype(np.int64)
        column = (w >> (31 - c)) & ((1 << c) - 1)
        offset = (w >> q) & ((1 << m) - 1)
        top = w & ((1 << q) - 1)
        thr, alias = self.thr[column], self.alias[column]
        outcome = np.where(top < thr, column, alias)
        special = (top == thr) | (outcome == self.bins)
        mag = (outcome << m) | offset
        at = 0
        for i in np.flatnonzero(special).tolist():
            j, tp = int(column[i]), int(top[i])
            o = int(outcome[i])
            if tp == int(thr[i]):
                e1, e2 = stream[at], stream[at + 1]
                at += 2
                u = tp << (128 - q) | (e1 >> q) << 64 | e2
                o = j if u < self.T[j] else int(alias[i])
            if o != self.bins:
                mag[i] = o << m | int(offset[i])
                continue
            e1, e2, e3 = stream[at:at + 3]
            if len(stream) < at + 3:
                raise IndexError("stream short")
            at += 3
            jr = e1 >> (64 - self.r)
            mag[i] = jr if (e2 << 64 | e3) < self.RT[jr] else self.Ralias[jr]
        sign = (w >> 31) & 1
        return np.where(sign == 1, -mag, mag), at

    # the exact distribution ----------------------------------------------------------------------------
    def keep_numerator(self, j: int) -> int:
        """P(column j keeps its own outcome) times 2^128, by the lazy comparison: below thr, or a tie whose U < T'."""
        q = self.q
        thr, T = int(self.thr[j]), self.T[j]
        base = thr << (128 - q)
        return base + min(max(T - base, 0), 1 << (128 - q))

    def distribution(self) -> list[int]:
        """Numerators of P(|Z| = k) over 2^(c + m + 256 + r), for k = 0 .. len - 1."""
        c, m, r = self.c, self.m, self.r
        outcome = [0] * (1 << c)  # over 2^(c + 128)
        for j in range(1 << c):
            keep = self.keep_numerator(j)
            outcome[j] += keep
            outcome[int(self.alias[j])] += (1 << 128) - keep
        size = max((1 << c) << m, 1 << r)
        num = [0] * size
        for i, mass in enumerate(outcome):
            if i == self.bins or not mass:
                continue
            for o in range(1 << m):
                num[(i << m) | o] += mass << (128 + r)  # 1/2^m per offset: over 2^(c + 128 + m) 2^(r + 128)
        if self.bins < len(outcome) and outcome[self.bins]:
            res = [0] * (1 << r)  # over 2^(r + 128)
            for j in range(1 << r):
                res[j] += self.RT[j]
                res[self.Ralias[j]] += (1 << 128) - self.RT[j]
            for k, mass in enumerate(res):
                num[k] += (outcome[self.bins] << m) * mass
        return num

    def check_exact(self, label: str) -> None:
        c, m, r = self.c, self.m, self.r
        denominator_bits = c + m + 256 + r
        # residual records: (hi, lo, alias) with alias < 2^r; top words' thresholds are T''s top q bits
        H = self.sampler.magnitude_masses()
        masses = self.sampler.masses()
        if sum(H) != 1 << 127 or sum(masses) != 1 << 128 or masses != masses[::-1]:
            violation(f"{label}: the integer masses do not sum to 2^127 / 2^128 or are not symmetric")
        num = self.distribution()
        bad = []
        for k in range(len(num)):
            expected = (H[k] if k < len(H) else 0) << (denominator_bits - 127)
            if num[k] != expected:
                bad.append(k)
        if bad:
            k = bad[0]
            got = Fraction(num[k], 1 << denominator_bits)
            want = Fraction(H[k] if k < len(H) else 0, 1 << 127)
            violation(f"{label}: P(|Z| = k) differs from H_k / 2^127 at {len(bad)} k; first k = {k}: "
                      f"tables give {float(got):.17g}, H_k / 2^127 = {float(want):.17g} (difference {float(got - want):.3g})")
        else:
            ok(f"{label}: P(|Z| = k) == H_k / 2^127 exactly for all k in 0..{len(num) - 1} (zmax {self.zmax}; "
               f"c {c}, m {m}, q {self.q}, r {r}, bins {self.bins})")
        inconsistent = [j for j in range(1 << c) if int(self.thr[j]) != self.T[j] >> (128 - self.q)]
        if inconsistent:
            note(f"{label}: {len(inconsistent)} top words' thresholds differ from T'>>(128-q) (distribution still checked above)")


# -- words at every class boundary ------------------------------------------------------------------------
def boundary_words(rule: Rule, rng: np.random.Generator, all_residual: bool) -> tuple[np.ndarray, list[int]]:
    """Words at every column's class boundaries (both signs, extreme offsets; ties at T' - 1, T', T' + 1, 0, max) and
    draws into residual columns at T' - 1 and T' (every column when ``all_residual``, else 4096 of them, and 0 / max
    for some); their extra words in the order the rule reads them."""
    c, m, q, r, bins = rule.c, rule.m, rule.q, rule.r, rule.bins
    words: list[int] = []
    extra: list[int] = []
    residual_plan: list[tuple[int, int]] = []  # (column, U) of the residual draws to make
    n_res = len(rule.RT)
    columns = range(n_res) if all_residual else sorted(set(rng.integers(0, max(1, n_res), 4096).tolist()) | {0, n_res - 1})
    for jr in (columns if rule.RT else []):
        T = rule.RT[jr]
        us = {max(T - 1, 0), T} | ({0, M128, min(T + 1, M128)} if jr % 61 == 0 else set())
        residual_plan += [(jr, u) for u in sorted(us)]
    plan_at = 0
    span = 1 << (128 - q)

    def rand_bits(bits: int) -> int:
        return int(rng.integers(0, 1 << bits)) if bits else 0

    def residual_words() -> list[int]:
        nonlocal plan_at
        if plan_at < len(residual_plan):
            jr, u = residual_plan[plan_at]
            plan_at += 1
        else:
            jr, u = rand_bits(r), rand_bits(64) << 64 | rand_bits(64)
        return [jr << (64 - r) | rand_bits(64 - r), u >> 64, u & M64]

    def add_word(word: int, j: int, tp: int, rest: int | None) -> None:
        """Append a word of column j with top bits tp (rest: a tie's remaining 128 - q bits of U) and its extra words."""
        words.append(word)
        thr, alias = int(rule.thr[j]), int(rule.alias[j])
        outcome = j if tp < thr else alias
        if rest is not None:
            extra.extend([(rest >> 64) << q | rand_bits(q), rest & M64])
            outcome = j if (tp << (128 - q) | rest) < rule.T[j] else alias
        if outcome == bins:
            extra.extend(residual_words())

    entrances = []  # (column, top) words that reach the residual outcome without a tie
    for j in range(1 << c):
        thr = int(rule.thr[j])
        low = rule.T[j] - (thr << (128 - q))  # the rest of T' below a tie
        rests = sorted({max(min(low - 1, span - 1), 0), max(min(low, span - 1), 0), min(max(low + 1, 0), span - 1), 0, span - 1})
        for tp in sorted(x for x in {0, thr - 1, thr, thr + 1, (1 << q) - 1} if 0 <= x < 1 << q):
            for offset in sorted({0, (1 << m) - 1}):
                for sign in (0, 1):
                    word = sign << 31 | j << (31 - c) | offset << q | tp
                    if tp == thr:
                        for rest in rests:
                            add_word(word, j, tp, rest)
                    else:
                        add_word(word, j, tp, None)
            if tp != thr and (j if tp < thr else int(rule.alias[j])) == bins:
                entrances.append((j, tp))
    k = 0
    while plan_at < len(residual_plan) and entrances:  # the rest of the residual plan
        j, tp = entrances[k % len(entrances)]
        k += 1
        add_word(rand_bits(1) << 31 | j << (31 - c) | rand_bits(m) << q | tp, j, tp, None)
    if plan_at < len(residual_plan):
        note(f"{len(residual_plan) - plan_at} residual boundary draws not made (no non-tie entrance to the residual)")
    return np.array(words, dtype=np.uint32), extra


def compare(label: str, rule: Rule, words: np.ndarray, extra: list[int], numba_s, numpy_s) -> None:
    """The rule vs numpy lookup, numpy add, numba add (bitwise), in place, -g/4 inputs, uint64 words."""
    expected, used = rule.decode(words, extra)
    if used != len(extra):
        raise AssertionError(f"test construction: {used} of {len(extra)} extra words")
    ex = np.array(extra, dtype=np.uint64)
    g = numpy_s.grid
    want = (np.zeros(words.size) + expected.astype(np.float64)) * g  # +0.0 for z = 0
    found = 0
    got = numpy_s.lookup(words, ex)
    bad = np.flatnonzero(got != np.abs(expected))
    if bad.size:
        i = int(bad[0])
        violation(f"{label}: numpy lookup differs from the rule at {bad.size} words; word {int(words[i]):#010x} -> {int(got[i])}, "
                  f"rule {int(abs(expected[i]))}")
        found += 1
    wide = (words.astype(np.uint64) << np.uint64(32)) | np.uint64(0x9E3779B9)
    tiny = np.full(words.size, -g / 4)  # rounds to -0.0
    for name, s in (("numba", numba_s), ("numpy", numpy_s)):
        if s is None:
            continue
        cases = {"add -g/4": s.add(tiny, words, ex)}
        if name == "numba":  # (the numpy path settles specials in Python: its other cases are in the smaller checks)
            cases["add"] = s.add(np.zeros(words.size), words, ex)
            cases["uint64 words"] = s.add(np.zeros(words.size), wide, ex)
        buffer = tiny.copy()
        s.add(buffer, words, ex, out=buffer)
        cases["in place"] = buffer
        cancel = s.add(-expected.astype(np.float64) * g, words, ex)  # rint(x / g) + z = 0 exactly: +0.0, whatever the path
        if np.signbit(cancel).any() or np.any(cancel != 0):
            i = int(np.flatnonzero(np.signbit(cancel) | (cancel != 0))[0])
            violation(f"{label}: {name}: x = -z g gives {cancel[i]!r} (not +0.0) for word {int(words[i]):#010x}")
            found += 1
        for case, out in cases.items():
            diff = np.flatnonzero(out.view(np.uint64) != want.view(np.uint64))
            if diff.size:
                i = int(diff[0])
                violation(f"{label}: {name} {case} differs from the rule (bitwise) at {diff.size} coordinates; "
                          f"word {int(words[i]):#010x}: {out[i]!r} vs {want[i]!r}")
                found += 1
    if not found:
        w = words.astype(np.int64)
        ties = int(np.sum((w & ((1 << rule.q) - 1)) == rule.thr[(w >> (31 - rule.c)) & ((1 << rule.c) - 1)]))
        ok(f"{label}: {words.size} boundary words ({ties} ties, {len(extra)} extra words): numpy lookup, numpy/numba add, "
           f"in place, -g/4 and uint64 words all bitwise equal to the rule")


def exhaustive_columns(label: str, rule: Rule, columns: list[int], numba_s, numpy_s, rng: np.random.Generator) -> None:
    """All 2^(q + m) words of each column (one sign each): counts per k against thr and 2^q - 1 - thr; every word vs the rule."""
    c, m, q = rule.c, rule.m, rule.q
    for j in columns:
        sign = j & 1
        low = np.arange(1 << (q + m), dtype=np.uint32)
        words = (np.uint32(sign << 31) | np.uint32(j << (31 - c)) | low).astype(np.uint32)
        # the stream: random extra words, enough for every special word of the column
        special = int(np.sum((low & np.uint32((1 << q) - 1)) == rule.thr[j]))
        kept_is_res, alias_is_res = j == rule.bins, int(rule.alias[j]) == rule.bins
        n_res = (int(rule.thr[j]) if kept_is_res else 0) + ((1 << q) - 1 - int(rule.thr[j]) if alias_is_res else 0)
        n_extra = 5 * special + 3 * (n_res << m) + 8
        stream = rng.integers(0, 2**64, n_extra, dtype=np.uint64)
        expected, used = rule.decode(words, stream.tolist())
        ex = stream[:used]
        want = expected.astype(np.float64) * numpy_s.grid + 0.0
        for name, s in (("numba", numba_s), ("numpy", numpy_s)):
            if s is None:
                continue
            out = s.add(np.zeros(words.size), words, ex)
            diff = np.flatnonzero(out.view(np.uint64) != want.view(np.uint64))
            if diff.size:
                i = int(diff[0])
                violation(f"{label}: column {j} exhaustive, {name} differs from the rule at {diff.size} words; "
                          f"word {int(words[i]):#010x}: {out[i]!r} vs {want[i]!r}")
        # exact counts of the non-special words: thr words per offset keep j, 2^q - 1 - thr go to its alias
        top = (low & np.uint32((1 << q) - 1)).astype(np.int64)
        thr = int(rule.thr[j])
        plain = top != thr
        mags = np.abs(numpy_s.lookup(words, ex))
        for o in range(1 << m):
            sel = plain & (((low >> np.uint32(q)) & np.uint32((1 << m) - 1)) == o)
            if not kept_is_res:
                n_keep = int(np.sum(mags[sel & (top < thr)] == (j << m | o)))
                if n_keep != thr:
                    violation(f"{label}: column {j} offset {o}: {n_keep} words give {j << m | o}, expected thr = {thr}")
            if not alias_is_res:
                a = int(rule.alias[j])
                n_alias = int(np.sum(mags[sel & (top > thr)] == (a << m | o)))
                if n_alias != (1 << q) - 1 - thr:
                    violation(f"{label}: column {j} offset {o}: {n_alias} words give the alias, expected {(1 << q) - 1 - thr}")
    ok(f"{label}: columns {columns} enumerated exhaustively ({1 << (q + m)} words each), counts per k exact")


# -- private paths with a recording CSPRNG ----------------------------------------------------------------
def special_words(rule: Rule, count: int, rng: np.random.Generator) -> np.ndarray:
    """Words that are all ties or residual draws (the extra words run out again and again)."""
    c, m, q = rule.c, rule.m, rule.q
    cols = []
    for j in range(1 << c):
        thr = int(rule.thr[j])
        if int(rule.alias[j]) == rule.bins and thr < (1 << q) - 1:
            cols.append((j, (1 << q) - 1))
        if j == rule.bins and thr > 0:
            cols.append((j, 0))
        cols.append((j, thr))  # a tie
    pick = rng.integers(0, len(cols), count)
    out = []
    for p in pick.tolist():
        j, tp = cols[p]
        out.append(int(rng.integers(0, 2)) << 31 | j << (31 - c) | int(rng.integers(0, 1 << m)) << q | tp)
    return np.array(out, dtype=np.uint32)


def private_paths(label: str, rule: Rule, samplers: dict, rng: np.random.Generator) -> None:
    count = 3000
    crafted = special_words(rule, count, rng)
    real_rng = np.random.default_rng

    for name, s in samplers.items():
        if s is None:
            continue
        for path in ("integers", "call", "call in place", "integers random"):
            handed: list[bytes] = []
            source_rng = np.random.default_rng(int(rng.integers(0, 2**32)))

            def source(n: int, handed=handed, source_rng=source_rng, path=path) -> bytes:
                if not handed and path != "integers random":
                    extra_bytes = n - 4 * count
                    if extra_bytes < 0 or extra_bytes % 8:
                        raise AssertionError(f"unexpected first request of {n} bytes")
                    buf = source_rng.bytes(extra_bytes) + crafted.tobytes()
                else:
                    buf = source_rng.bytes(n)
                handed.append(buf)
                return buf

            def forbidden(*a, **k):
                raise AssertionError("numpy.random.default_rng called on a private path")

            saved = noise_module._random_bytes
            noise_module._random_bytes = source
            np.random.default_rng = forbidden
            try:
                x = np.zeros(count)
                if path.startswith("integers"):
                    got = np.asarray(s.integers(count), dtype=np.float64)
                elif path == "call":
                    got = s(x)
                else:
                    got = x
                    returned = s(x, in_place=True)
                    if returned is not x and not np.shares_memory(returned, x):
                        violation(f"{label}: {name} in place did not write the input")
            except AssertionError as e:
                violation(f"{label}: {name} {path}: {e}")
                continue
            finally:
                noise_module._random_bytes = saved
                np.random.default_rng = real_rng
            first = handed[0]
            if path == "integers random":
                extra_bytes = len(first) - 4 * count
                words = np.frombuffer(first, dtype=np.uint32, offset=extra_bytes)
            else:
                extra_bytes = len(first) - 4 * count
                words = crafted
                if not np.array_equal(np.frombuffer(first, dtype=np.uint32, offset=extra_bytes), crafted):
                    raise AssertionError("test construction")
            stream = np.frombuffer(first[:extra_bytes], dtype=np.uint64).tolist()
            for buf in handed[1:]:
                if len(buf) % 8:
                    violation(f"{label}: {name} {path}: a refill of {len(buf)} bytes")
                stream += np.frombuffer(buf, dtype=np.uint64).tolist()
            try:
                expected, used = rule.decode(words, stream)
            except IndexError:
                violation(f"{label}: {name} {path}: the bytes handed out do not cover the rule's reads (a word read twice?)")
                continue
            want = expected.astype(np.float64) * s.grid + 0.0
            diff = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64)) if got.dtype == np.float64 else np.array([])
            if diff.size:
                i = int(diff[0])
                violation(f"{label}: {name} {path}: output differs from the rule applied to the CSPRNG's bytes in order at "
                          f"{diff.size} coordinates (first {i}: {got[i]!r} vs {want[i]!r}): bits reused, reordered or skipped")
            else:
                ok(f"{label}: {name} {path}: {count} coordinates ({int(np.sum(expected != 0))} nonzero) equal the rule on the "
                   f"CSPRNG bytes in order: {len(handed) - 1} refills, {used} extra words read of {len(stream)}, no seeded generator")


# -- refills of a given (seeded) stream: both backends, every short length -------------------------------
def seeded_refills(label: str, rule: Rule, numba_s, numpy_s, rng: np.random.Generator) -> None:
    words = special_words(rule, 700, rng)
    x = rng.normal(0, 3 * numpy_s.std, words.size)
    problems = 0
    for length in [*range(0, 13), 37, 255, 256, 257, 1000]:
        low = rng.integers(0, 2**64, length, dtype=np.uint64)
        cont = np.random.default_rng([length, *low.tolist()]).bit_generator.random_raw(256 * 40).astype(np.uint64)
        stream = [*low.tolist(), *cont.tolist()]
        expected, _ = rule.decode(words, stream)
        want = (np.rint(x / numpy_s.grid) + expected) * numpy_s.grid
        outs = {"numpy": numpy_s.add(x, words, low)}
        if numba_s is not None:
            outs["numba"] = numba_s.add(x, words, low)
            buffer = x.copy()
            numba_s.add(buffer, words, low, out=buffer)
            outs["numba in place"] = buffer
        for name, out in outs.items():
            if not np.array_equal(out.view(np.uint64), want.view(np.uint64)):
                i = int(np.flatnonzero(out.view(np.uint64) != want.view(np.uint64))[0])
                violation(f"{label}: given stream of {length} words, {name} differs from the rule on the stream and its "
                          f"seeded continuation at coordinate {i}")
                problems += 1
    if not problems:
        ok(f"{label}: given streams of 0..12, 37, 255..257, 1000 words under 700 special words: both backends, in place, "
           f"equal the rule on the stream + its documented continuation")


# -- distances -------------------------------------------------------------------------------------------
def true_distance(sampler: DiscreteGaussianSampler, dps: int = 40):
    import mpmath as mp

    mp.mp.dps = dps
    s = mp.mpf(sampler.scale)
    zmax = sampler.zmax
    two_s2 = 2 * s * s
    # ideal normaliser: the sum over |z| <= 12 s (beyond: < 1e-31 relative)
    reach = int(12 * sampler.scale) + 2
    weights = [mp.exp(-mp.mpf(z * z) / two_s2) for z in range(0, reach + 1)]
    normaliser = weights[0] + 2 * mp.fsum(weights[1:])
    masses = sampler.masses()
    scale = mp.mpf(2) ** 128
    total = mp.mpf(0)
    for z in range(0, reach + 1):
        ideal = weights[z] / normaliser
        mine = mp.mpf(masses[zmax + z]) / scale if z <= zmax else mp.mpf(0)
        total += (1 if z == 0 else 2) * abs(mine - ideal)
    return total / 2


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer scales (about 30 s)")
    parser.add_argument("--full", action="store_true", help="all 64 slots, every residual column of every table (about 2.5 min)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)  # test inputs only
    try:
        import numba  # noqa: F401

        have_numba = True
    except ImportError:
        have_numba = False
        note("numba not installed: the kernel's checks are skipped")

    print("== 0. the generator")
    if noise_module._random_bytes is not ssl.RAND_bytes:
        violation(f"the sampler's bytes come from {noise_module._random_bytes!r}, not ssl.RAND_bytes")
    else:
        ok("noise._random_bytes is ssl.RAND_bytes (OpenSSL's DRBG)")

    def pair(scale: float):
        a = DiscreteGaussianSampler(scale, k=0, backend="numba") if have_numba else None
        b = DiscreteGaussianSampler(scale, k=0, backend="numpy")
        return a, b

    # scales: (label, scale, exhaustive columns, every residual column at its boundary, private paths)
    cases = [
        ("tiny s=1.3 (m=0, no residual)", 1.3, True, True, True),
        ("s=409.5 (zmax 4095, m=0, c=12)", 409.5, True, True, False),
        ("s=409.55 (zmax 4096, m=1: first residual)", 409.55, True, True, True),
        ("s=13107.1 (zmax 131071: 4096 full bins, c=13)", 13107.1, True, False, True),
        ("s=13107.15 (zmax 131072, r=18)", 13107.15, False, False, False),
        ("s=8192 (default octave, low end)", 8192.0, True, False, True),
        ("s=16256 (default octave, top slot)", 16256.0, False, True, False),
    ]
    if args.quick:
        cases = [cases[0], cases[2], cases[3], cases[5]]
    if args.full:
        cases = [(label, scale, exhaustive, True, private) for label, scale, exhaustive, _, private in cases]
    print("== 1. exact distribution, boundary words, exhaustive columns, private paths, given streams")
    for label, scale, exhaustive, all_residual, private in cases:
        t0 = time.perf_counter()
        numba_s, numpy_s = pair(scale)
        rule = Rule(numpy_s)
        rule.check_exact(label)
        words, extra = boundary_words(rule, rng, all_residual)
        compare(label, rule, words, extra, numba_s, numpy_s)
        if exhaustive:
            t = numpy_s._tables
            to_residual = [j for j in range(1 << t.c) if int(rule.alias[j]) == t.bins and j != t.bins]
            cols = sorted({0, t.bins - 1, *to_residual[:1], *([t.bins] if t.bins < (1 << t.c) else [])})
            if rule.q + rule.m <= 20:
                exhaustive_columns(label, rule, cols, numba_s, numpy_s, rng)
        if private:
            private_paths(label, rule, {"numba": numba_s, "numpy": numpy_s}, rng)
            seeded_refills(label, rule, numba_s, numpy_s, rng)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)

    print("== 2. the scales DP-SGD asks for; all 64 slots of the default octave")
    plans = [(1.0, 1.0, 1_000), (0.37, 1.1, 1_000_000), (2.5, 0.6, 50_000), (1.0, 5.0, 100_000_000), (1.0, 10.0, 10**9)]
    for sens, nm, d in plans:
        std, k = noise_module.gaussian_std_for(sens, nm, d)
        scale = std / 2.0**k
        zmax = math.ceil(10 * scale)
        r = zmax.bit_length()
        inside = 8192 <= scale < 16384
        msg = (f"sensitivity {sens}, noise multiplier {nm}, dimension {d}: scale {scale:.6g} (std / grid "
               f"{'in' if inside else 'NOT in'} [resolution, 2 resolution)), zmax {zmax}, r {r}, residual table "
               f"{24 * (1 << r) / 2**20:.0f} MiB")
        if r > 22:
            note(msg + ": refused (the scale is too large for a table)")
            continue
        if not inside:
            note(msg)
        else:
            print("  ", msg)
        if (r <= 19 and not args.quick) or (args.full and r <= 20):
            s = DiscreteGaussianSampler(std, k=k, backend="numpy")
            Rule(s).check_exact(f"DP-SGD scale {scale:.6g}")
    slot_scales = [8192.0 * j / 64 for j in range(64, 128)]
    distances = []
    t0 = time.perf_counter()
    for i, scale in enumerate(slot_scales):
        if (args.quick and i % 8) or (not args.full and i % 4 and i != 63):
            continue
        try:
            t = noise_module._table(scale)
        except Exception as e:
            violation(f"slot scale {scale}: the table is refused: {e!r}")
            continue
        if not (t.statistical_distance <= noise_module.STATISTICAL_DISTANCE_BOUND):
            violation(f"slot scale {scale}: stated distance {t.statistical_distance} > bound {noise_module.STATISTICAL_DISTANCE_BOUND}")
        if not (t.q >= 8 and t.c <= 13 and t.top.nbytes <= 32 * 1024 and t.residual.shape[0] == 1 << t.r):
            violation(f"slot scale {scale}: table shape c {t.c}, q {t.q}, top {t.top.nbytes} bytes, residual {t.residual.shape}")
        distances.append(t.statistical_distance)
    ok(f"{len(distances)} of the 64 slot scales of [8192, 16384) (--full: all) built in {time.perf_counter() - t0:.1f} s; stated distances "
       f"{min(distances):.3g}..{max(distances):.3g} <= bound {noise_module.STATISTICAL_DISTANCE_BOUND:.3g}")
    # the exact check on a few slots (the others share the construction)
    for scale in ([slot_scales[1], slot_scales[37], slot_scales[63]] if not args.quick else [slot_scales[63]]):
        Rule(DiscreteGaussianSampler(scale, k=0, backend="numpy")).check_exact(f"slot {scale}")
    biggest = max(24 * (1 << r) for r in (17, 18))
    note(f"memory: the residual table is 2^r x 24 bytes: {biggest / 2**20:.0f} MiB at the default octave's r = 18, "
         f"96 MiB at the largest r = 22 that _MAX_COLUMN_BITS allows (a DP-SGD scale whose noise multiplier x sqrt(dimension) "
         f"is about 2e5 or more: e.g. 10 x sqrt(4e8)); TABLE_CACHE_SIZE = {noise_module.TABLE_CACHE_SIZE} such tables could hold "
         f"{noise_module.TABLE_CACHE_SIZE * 96 / 1024:.0f} GiB. The old single table was 2^r x 16 bytes. The cache comment's 'each up to "
         f"6 MiB' holds for the default octave only.")

    print("== 3. statistical distance: mpmath (40 digits) vs what the tables state")
    for scale in ([1.3, 409.55, 8192.0] if not args.quick else [1.3, 409.55]):
        s = DiscreteGaussianSampler(scale, k=0, backend="numpy")
        t0 = time.perf_counter()
        d = true_distance(s)
        if not d <= s.statistical_distance:
            violation(f"scale {scale}: true statistical distance {float(d):.4g} > stated {s.statistical_distance:.4g}")
        else:
            ok(f"scale {scale}: true distance {float(d):.4g} <= stated {s.statistical_distance:.4g} "
               f"<= bound {noise_module.STATISTICAL_DISTANCE_BOUND:.4g} ({time.perf_counter() - t0:.1f} s)")

    old = load_old()
    print("== 4. extreme grids (values and noise near the float range)")
    overflow_case(have_numba)
    inverse_overflow(have_numba, old)

    print("== 5. inputs: NaN, inf, the limit, -0.0, layouts; the code before the rewrite (64d791c) alongside")
    inputs_vs_old(have_numba, old)

    print("== 6. supplement: chi-square on real CSPRNG draws")
    chi_square(have_numba, args.quick)

    elapsed = time.perf_counter() - start
    print(f"\n{len(VIOLATIONS)} violation(s), {len(NOTES)} note(s), {elapsed:.0f} s")
    for v in VIOLATIONS:
        print(" VIOLATION:", v)
    for n in NOTES:
        print(" note:", n)
    return 1 if VIOLATIONS else 0


def overflow_case(have_numba: bool) -> None:
    if not have_numba:
        return
    a = DiscreteGaussianSampler(1.7e308, backend="numba")
    b = DiscreteGaussianSampler(1.7e308, backend="numpy")
    t = a._tables
    mask = (1 << t.c) - 1
    j = next(j for j in range(1 << t.c) if (int(t.top[j]) & mask) == t.bins and (int(t.top[j]) >> t.c) < (1 << t.q) - 1)
    word = np.array([j << (31 - t.c) | ((1 << t.q) - 1)], dtype=np.uint32)  # column j, u above its threshold: the residual
    z = 20000  # about 1.3 s
    extra = np.array([z << (64 - t.r), 0, 0], dtype=np.uint64)  # residual column z, U = 0 (kept if T'_z > 0)
    x = np.array([-(2.0**1023)])
    got_numba, got_numpy = a.add(x, word, extra)[0], b.add(x, word, extra)[0]
    # the same z as a plain (non-special) draw in the kernel: find a bin word giving 20000
    plain_word = np.array([((z >> t.m) << (31 - t.c)) | ((z & ((1 << t.m) - 1)) << t.q) | 0], dtype=np.uint32)
    plain_z = int(b.lookup(plain_word, np.zeros(5, dtype=np.uint64))[0])
    plain = a.add(x, plain_word, np.zeros(5, dtype=np.uint64))[0]
    if got_numba != got_numpy:
        violation(f"numba and numpy disagree on a residual draw at std 1.7e308 (grid 2^{a.k}, scale {a.scale:.6g}): "
                  f"x = -2^1023, word {int(word[0]):#010x}, extra [{z} << {64 - t.r}, 0, 0] (|Z| = {z}): numba {got_numba!r}, "
                  f"numpy {got_numpy!r} = (rint(x/g) + z) g. The kernel adds a special coordinate's noise as rint(x/g) g + z g, and "
                  f"z g overflows; a plain (non-special) draw of |Z| = {plain_z} in the kernel gives {plain!r}. So at grids 2^k with "
                  f"k >~ 1000 the kernel's output is not a function of rint(x/g) + z (not post-processing of the lattice "
                  f"mechanism). Ties did this before the rewrite (rate 2^(r-63)); residual draws (about 0.3 %) do now")
    else:
        ok("no overflow disagreement")


def inverse_overflow(have_numba: bool, old) -> None:
    """A grid below 2^-1023: 1 / g is inf, and x / g is computed as x * (1 / g)."""
    std = 1e-306  # a normal float; k = floor(log2(std / 8192)) = -1030
    values = np.array([0.0, 1e-300, -1e-300, -0.0, 5e-324])
    from opendp_hybridad.errors import DeclarationError

    for backend in ["numpy", *(["numba"] if have_numba else [])]:
        try:
            s = DiscreteGaussianSampler(std, backend=backend)
        except DeclarationError as e:  # refused at construction (a declared std: data-independent)
            ok(f"{backend}: std {std} refused at construction ({e})")
            continue
        out = s(values.copy())
        before = ""
        if old is not None:
            o = old.DiscreteGaussianSampler(std, backend=backend)(values.copy())
            before = f"; the code at 64d791c gives {o.tolist()} (pre-existing)"
        if not np.all(np.isfinite(out)):
            violation(f"{backend}: DiscreteGaussianSampler({std}) (grid 2^{s.k}, 1 / grid = {1.0 / s.grid}) maps values "
                      f"{values.tolist()} to {out.tolist()}: no noise, NaN for 0 and +-inf by the sign of x, so the output "
                      f"reveals the input (any std below 2^-1011 = {2.0**-1011:.3g} with the default resolution, or any "
                      f"k <= -1024); x * (1 / g) overflows where x / g (exact) would not{before}")
        else:
            ok(f"{backend}: std {std}: finite outputs")


def load_old() -> tuple | None:
    """noise.py and noise_kernel.py at 64d791c, as importable files in a temporary directory."""
    try:
        def show(path: str) -> str:
            return subprocess.run(["git", "-C", ROOT, "show", f"64d791c:{path}"], capture_output=True, text=True, check=True).stdout

        src, ker = show("opendp_hybridad/dpsgd/noise.py"), show("opendp_hybridad/dpsgd/noise_kernel.py")
    except Exception as e:
        note(f"the code at 64d791c is not available ({e!r}): the comparison with it is skipped")
        return None
    folder = tempfile.mkdtemp(prefix="old_noise_")
    src = src.replace("from opendp_hybridad.dpsgd.noise_kernel import compiled_noisy_lattice",
                      "from old_noise_kernel_64d791c import compiled_noisy_lattice")
    with open(os.path.join(folder, "old_noise_64d791c.py"), "w") as f:
        f.write(src)
    with open(os.path.join(folder, "old_noise_kernel_64d791c.py"), "w") as f:
        f.write(ker)
    sys.path.insert(0, folder)
    return importlib.import_module("old_noise_64d791c")


def outcome_of(fn) -> str:
    try:
        out = fn()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return f"ok {np.asarray(out).shape}"


def inputs_vs_old(have_numba: bool, old) -> None:
    backends = ["numpy", *(["numba"] if have_numba else [])]
    std = 3.0
    rows = []
    for backend in backends:
        new = DiscreteGaussianSampler(std, backend=backend)
        before = old.DiscreteGaussianSampler(std, backend=backend) if old else None
        limit = 2.0**52 * new.grid
        bads = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "limit": limit, "-limit": -limit,
                "below limit": np.nextafter(limit, 0), "-below limit": -np.nextafter(limit, 0), "1e308": 1e308,
                "-0.0": -0.0, "5e-324": 5e-324}
        for name, bad in bads.items():
            for where in ("first", "last"):
                values = np.array([bad, 1.0, 2.0, 3.0]) if where == "first" else np.array([1.0, 2.0, 3.0, bad])
                for mode in ("call", "in place", "add"):
                    results = []
                    for s in (new, before):
                        if s is None:
                            continue
                        v = values.copy()
                        if mode == "call":
                            r = outcome_of(lambda s=s, v=v: s(v))
                        elif mode == "in place":
                            r = outcome_of(lambda s=s, v=v: s(v, in_place=True))
                            finite = np.isfinite(values)
                            untouched = np.array_equal(v[finite], values[finite]) if r.startswith("Value") else None
                            r += "" if untouched is None else (" (input untouched)" if untouched else " (input PARTLY WRITTEN)")
                        else:
                            words = np.random.default_rng(1).integers(0, 2**64, v.size, dtype=np.uint64)
                            r = outcome_of(lambda s=s, v=v, words=words: s.add(v, words, words))
                        results.append(r)
                    rows.append((backend, name, where, mode, results))
                    if len(results) == 2 and results[0] != results[1]:
                        violation(f"{backend}: input {name} ({where}), {mode}: now {results[0]!r}, before the rewrite {results[1]!r}")
                    if "PARTLY" in results[0]:
                        violation(f"{backend}: input {name} ({where}), {mode}: the error left the input partly written")
    # output sign of zero and values of the input that round to -0.0: covered bitwise in section 1
    # layouts: 2-D, non-contiguous, float32, empty
    for backend in backends:
        new = DiscreteGaussianSampler(std, backend=backend)
        before = old.DiscreteGaussianSampler(std, backend=backend) if old else None
        base = np.arange(24.0).reshape(4, 6)
        layouts = {"2-D": lambda base=base: base.copy(), "non-contiguous": lambda base=base: base.copy()[:, ::2],
                   "float32": lambda base=base: base.astype(np.float32), "empty": lambda: np.zeros(0), "int": lambda: np.arange(5)}
        for name, make in layouts.items():
            res = []
            for s in (new, before):
                if s is None:
                    continue
                v = make()
                snapshot = v.copy()
                r = outcome_of(lambda s=s, v=v: s(v, in_place=True))
                r += " input changed" if (v.size and not np.array_equal(v, snapshot)) else " input unchanged"
                res.append(r)
            if len(res) == 2 and res[0] != res[1]:
                violation(f"{backend}: layout {name} in place: now {res[0]!r}, before {res[1]!r}")
    ok(f"{len(rows)} (input, position, mode) cases x {len(backends)} backends"
       + (" behave as at 64d791c (same error, nothing written)" if old else ""))
    # add(out=) with a non-contiguous out: the kernel writes a copy, numpy writes out itself (pre-existing)
    if have_numba:
        outs = {}
        for backend in backends:
            s = DiscreteGaussianSampler(std, backend=backend)
            out = np.zeros((4, 6))[:, :3]
            words = np.random.default_rng(2).integers(0, 2**32, out.size, dtype=np.uint32)
            returned = s.add(np.ones(out.shape), words, np.zeros(5 * out.size + 64, dtype=np.uint64), out=out)
            outs[backend] = (bool(np.array_equal(out, returned)), returned)
        if outs["numba"][0] != outs["numpy"][0]:
            note("add(values, bits, low, out=a non-contiguous array): numpy writes the result into out, the kernel path "
                 "writes into a reshaped copy and leaves out unchanged (returned arrays equal; the same at 64d791c; "
                 "the library passes contiguous arrays only)")
    # RAND_bytes takes a C int: the largest request
    try:
        ssl.RAND_bytes(2**31)
        limit_note = None
    except OverflowError:
        new_max = max(n for n in [int((2**31 - 1 - 512) / 4.3125)] if 4 * n + 8 * (64 + 5 * (n // 128)) < 2**31)
        limit_note = (f"one call to RAND_bytes must stay below 2^31 bytes: sampler(values) and integers(n) raise OverflowError "
                      f"above about {new_max:,} coordinates (before the rewrite: 268,435,455, 8 bytes a coordinate); "
                      f"not data-dependent, but a 0.5e9-parameter model cannot be trained in one call")
    if limit_note:
        note(limit_note)


def chi_square(have_numba: bool, quick: bool) -> None:
    from scipy.stats import chi2

    scale = 8192.0
    n = 400_000 if quick else 2_000_000
    for backend in ["numpy", *(["numba"] if have_numba else [])]:
        s = DiscreteGaussianSampler(scale, k=0, backend=backend)
        H = s.magnitude_masses()
        cdf = np.cumsum([h / 2**127 for h in H])
        edges = np.searchsorted(cdf, np.linspace(0, 1, 61)[1:-1])  # about 60 cells of equal mass
        z = s.integers(n) if backend == "numpy" else np.rint(s(np.zeros(n)) / s.grid).astype(np.int64)
        cells = np.concatenate([[0], edges + 1, [len(H)]])
        observed = np.histogram(np.abs(z), bins=cells)[0]
        exact = np.array([sum(H[a:b]) / 2**127 for a, b in itertools.pairwise(cells)])
        stat = float(np.sum((observed - n * exact) ** 2 / (n * exact)))
        p = float(chi2.sf(stat, len(exact) - 1))
        nonzero = z[z != 0]
        negative = float(np.mean(nonzero < 0))
        sign_sd = 0.5 / math.sqrt(nonzero.size)
        if p < 1e-6 or abs(negative - 0.5) > 6 * sign_sd:
            violation(f"chi-square ({backend}, scale {scale}): p = {p:.3g}, negative share {negative:.5f}")
        else:
            ok(f"{backend}: {n} draws, |Z| chi-square over {len(exact)} cells p = {p:.3f}; negative share of nonzero {negative:.4f}")
    # forced residual draws through the CSPRNG's extra words
    s = DiscreteGaussianSampler(scale, k=0, backend="numba" if have_numba else "numpy")
    rule = Rule(s)
    t = s._tables
    j = next(j for j in range(1 << t.c) if int(rule.alias[j]) == t.bins and int(rule.thr[j]) < (1 << t.q) - 1)
    m_res = 100_000 if quick else 300_000
    rng = np.random.default_rng(5)
    signs = rng.integers(0, 2, m_res).astype(np.uint32) << np.uint32(31)
    words = (np.uint32(j << (31 - t.c)) | np.uint32((1 << t.q) - 1) | signs).astype(np.uint32)
    z = np.abs(np.rint(s.add(np.zeros(m_res), words) / s.grid).astype(np.int64))
    res = [0] * (1 << t.r)
    for jr in range(1 << t.r):
        res[jr] += rule.RT[jr]
        res[rule.Ralias[jr]] += (1 << 128) - rule.RT[jr]
    probs = np.array([v / 2.0 ** (128 + t.r) for v in res])
    cdf = np.cumsum(probs)
    edges = np.unique(np.searchsorted(cdf, np.linspace(0, 1, 41)[1:-1]))
    cells = np.concatenate([[0], edges + 1, [len(probs)]])
    observed = np.histogram(z, bins=cells)[0]
    exact = np.array([probs[a:b].sum() for a, b in itertools.pairwise(cells)])
    keep = exact > 0
    stat = float(np.sum((observed[keep] - m_res * exact[keep]) ** 2 / (m_res * exact[keep])))
    p = float(chi2.sf(stat, keep.sum() - 1))
    if p < 1e-6 or observed[~keep].sum():
        violation(f"residual draws (CSPRNG extra words, {s.backend}): chi-square p = {p:.3g}")
    else:
        ok(f"{m_res} forced residual draws ({s.backend}, fresh extra words): chi-square over {keep.sum()} cells p = {p:.3f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        print("VIOLATION: the audit crashed (above)")
        sys.exit(1)
