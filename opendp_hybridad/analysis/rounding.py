"""The one home of rounded-up arithmetic: every constant of a bound, map or charge.

In the spirit of OpenDP's ``InfAdd`` / ``InfMul`` / ``InfSqrt`` traits: each
operation returns a float that is **not below** the exact real result of the same
operation on the same float inputs (``*_down`` variants: not above). Stability
maps, privacy maps, individual charges and DP-SGD constants combine certified
constants only through these, so rounding can only make a bound larger.

Facts the operations rest on (IEEE 754-2008, binary64, round to nearest even):

* ``+ - * / sqrt`` are correctly rounded: the float result ``r`` of the real ``x``
  satisfies ``|r - x| <= ulp(x) / 2``, so ``nextafter(r, +inf) >= x``
  (this also holds for subnormal results and for overflow to ``inf``);
* a result can be *exact*; we check exactness (TwoSum for sums; TwoProduct for products,
  quotients and square roots, see :func:`two_product`; an exact rational comparison only
  where a result leaves the normal range) and step only when needed, so exact constants
  stay exact;
* the two floats around a real ``t`` are at most ``max(2u|t|, TINY)`` apart, so a
  correctly rounded result moved one float outward is within ``4u|t| + 2 TINY`` of
  ``t`` (Higham 2002, Theorem 2.2 with gradual underflow: ``fl(t) = t(1 + d) + e``,
  ``|d| <= u``, ``|e| <= TINY/2``; see :func:`ulp_up`);
* library functions (exp, log, tanh, ...) are not correctly rounded. The one
  assumption about them (checked against 60-digit mpmath in the tests): a library
  result ``y`` of a real ``f(x)`` has ``|y - f(x)| <= LIBM_PAD |y| + TINY``; so
  ``[libm_down(y), libm_up(y)]``, which pads by at least that much, encloses ``f(x)``;
* gradual underflow: all of the above needs IEEE subnormals; a process whose
  floating-point unit flushes subnormals to zero (FTZ/DAZ, set by some
  ``-ffast-math`` libraries) is refused by :func:`check_gradual_underflow`;
* Higham, *Accuracy and Stability of Numerical Algorithms* (2002), Lemma 3.1 and
  section 3.1: a float sum or dot product of ``n`` terms, in any order, is within
  ``gamma_n sum |terms|`` of the exact one, ``gamma_n = n u / (1 - n u)``.

There is one unit roundoff, :data:`UNIT_ROUNDOFF` ``= 2^-53`` (round to nearest).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

#: u for binary64 round-to-nearest: |fl(x) - x| <= u |x| for normal results
UNIT_ROUNDOFF = 2.0**-53
_MAX_FLOAT = 1.7976931348623157e308  # the largest finite float
#: the smallest positive subnormal: the absolute error allowance of an underflowing result
TINY = 2.0**-1074
#: relative padding of library functions (exp, log, tanh, pow, ...): 2^-46 is 64 ulp,
#: far beyond the few ulp glibc and numpy document; tests check it against mpmath
LIBM_PAD = 2.0**-46


# the per-step bound calls up() and add_up() a few hundred times a step: the library function and the
# infinities are bound as defaults (local names) instead of looked up in the module each call
def up(x: float, _next=math.nextafter, _inf=math.inf) -> float:
    """The next float above ``x`` (a bound above a round-to-nearest result)."""
    return _next(x, _inf)


def down(x: float, _next=math.nextafter, _inf=-math.inf) -> float:
    """The next float below ``x``."""
    return _next(x, _inf)


def round_up(x: Fraction | int) -> float:
    """The smallest float not below the rational ``x`` (``inf`` past the largest float)."""
    x = Fraction(x)
    try:
        f = float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf  # pragma: no cover - only for |x| > 2^1024
    return f if Fraction(f) >= x else up(f)


def round_down(x: Fraction | int) -> float:
    """The largest float not above the rational ``x``."""
    return -round_up(-Fraction(x))


def _exact(x: float) -> Fraction:
    return Fraction(x)


def add_up(a: float, b: float, _finite=math.isfinite, _next=math.nextafter, _inf=math.inf) -> float:
    """``a + b`` rounded up (TwoSum tells whether the float sum fell short of the real one)."""
    s = a + b
    if not _finite(s):
        # a finite sum past -max rounds to -inf, which is below it: -max is the float above
        return -_MAX_FLOAT if s == -_inf and _finite(a) and _finite(b) else s
    bb = s - a
    return _next(s, _inf) if (a - (s - bb)) + (b - bb) > 0 else s


def add_down(a: float, b: float) -> float:
    """``a + b`` rounded down."""
    return -add_up(-a, -b)


def sub_up(a: float, b: float) -> float:
    """``a - b`` rounded up."""
    return add_up(a, -b)


def sum_up(values: Iterable[float]) -> float:
    """The exact sum of ``values`` rounded up (``math.fsum`` is correctly rounded, then one check)."""
    values = [float(v) for v in values]
    s = math.fsum(values)
    if not math.isfinite(s) or any(not math.isfinite(v) for v in values):
        return math.inf if not any(math.isnan(v) for v in values) else math.nan
    return s if Fraction(s) >= sum(map(Fraction, values), Fraction(0)) else up(s)


#: Veltkamp's splitting constant for binary64: 2^27 + 1 (Dekker 1971; Ogita, Rump and Oishi 2005, Algorithm 3.2)
_SPLITTER = 134217729.0
#: products, quotients and results at least this large are in the normal range with a binade to spare
_SAFE_NORMAL = 2.0**-1021


def _split(a: float) -> tuple[float, float]:
    """Veltkamp's splitting: ``a = hi + lo`` exactly, each half with at most 26 significant bits (``|a| <= 2^995``)."""
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_product_dekker(a: float, b: float) -> tuple[float, float]:
    """Dekker's TwoProduct: ``(x, y)`` with ``x = fl(a b)`` and ``x + y = a b`` exactly (real arithmetic).

    Ogita, Rump and Oishi, *Accurate sum and dot product*, SIAM J. Sci. Comput. 26 (2005),
    Algorithm 3.3 and Theorem 3.4 (after Dekker, Numer. Math. 18, 1971): exact for binary64 round
    to nearest provided nothing overflows (the splitting needs ``|a|, |b| <= 2^995``) and nothing
    underflows (Boldo, IJCAR 2006: ``e_a + e_b >= e_min + p - 1``).
    The callers here pass mantissas of magnitude in ``[1/2, 2]`` (:func:`math.frexp`), for which
    both conditions hold with hundreds of binades to spare.
    """
    x = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return x, a_lo * b_lo - (((x - a_hi * b_hi) - a_lo * b_hi) - a_hi * b_lo)


def two_product_fma(a: float, b: float) -> tuple[float, float]:
    """TwoProduct with a fused multiply-add (Python 3.13+): ``y = fma(a, b, -x)`` is ``a b - x`` exactly.

    The error of a rounded product is a float when it does not underflow (Boldo and Daumas 2003;
    Ogita, Rump and Oishi 2005, Algorithm 3.5), and an fma rounds ``a b - x`` once, so it returns it.
    Same domain as :func:`two_product_dekker`.
    """
    x = a * b
    return x, math.fma(a, b, -x)  # type: ignore[attr-defined]  # Python 3.13+


#: the TwoProduct in use: with an fma where the interpreter has one (3.13+), else Dekker's
two_product = two_product_fma if hasattr(math, "fma") else two_product_dekker


def _product_error_sign(a: float, b: float, p: float) -> int | None:
    """The sign of ``a b - p`` (real) for ``p = fl(a b)``, finite ``a, b``, from floats alone; None off the safe range.

    Lemma: write ``a = m_a 2^(e_a)``, ``b = m_b 2^(e_b)`` with ``|m_a|, |m_b|`` in ``[1/2, 1)``
    (:func:`math.frexp`, exact also for subnormals) and ``E = e_a + e_b``. If ``|p| >= 2^-1021``,
    the real ``a b`` and ``p`` lie in the normal range, where rounding to nearest commutes with
    scaling by ``2^E``: ``p = fl(m_a m_b) 2^E`` (checked as well). TwoProduct gives
    ``m_a m_b = x + y`` exactly with ``x = fl(m_a m_b)`` (:func:`two_product`; no underflow:
    ``|m_a m_b| >= 1/4``), so ``a b - p = y 2^E`` has the sign of ``y``. Otherwise (an underflowing
    product, ``p`` zero or near the subnormals) None: the caller compares exactly.
    """
    if not abs(p) >= _SAFE_NORMAL:
        return None
    ma, ea = math.frexp(a)
    mb, eb = math.frexp(b)
    x, y = two_product(ma, mb)
    try:
        if math.ldexp(x, ea + eb) != p:  # cannot happen under IEEE 754 round to nearest; then the exact comparison
            return None
    except OverflowError:  # pragma: no cover - as above
        return None
    return (y > 0) - (y < 0)


def mul_up(a: float, b: float) -> float:
    """``a * b`` rounded up, any signs; ``0 * inf`` is 0 (no change times any distance).

    The float product ``p`` is returned when it is not below the real one, else the next float
    above. The comparison: :func:`_product_error_sign` (TwoProduct, no rational built) wherever
    ``|p| >= 2^-1021`` and both operands are floats; exact rationals otherwise (underflow, or an
    int operand whose value may not be a float). Identical results to the exact comparison
    (tested against :class:`fractions.Fraction`). An overflowing product is IEEE's
    ``+inf``; a negative one past the largest float is ``-max`` (the float above it; IEEE's
    ``-inf`` would be below the real product).
    """
    if a == 0 or b == 0:
        return 0.0
    p = a * b
    if not math.isfinite(p):
        # a finite product past -max rounds to -inf, which is below it: -max is the float above
        return -_MAX_FLOAT if p == -math.inf and math.isfinite(a) and math.isfinite(b) else p
    # floats only: an int (or other number) is compared exactly, as its value may not be a float
    sign = _product_error_sign(a, b, p) if isinstance(a, float) and isinstance(b, float) else None
    if sign is None:
        # an int operand is rounded to a float before the product is: p may fall more than one float
        # short (double rounding), so the bound is the exact product rounded up, not up(p)
        exact = _exact(a) * _exact(b)
        return p if Fraction(p) >= exact else round_up(exact)
    return p if sign <= 0 else up(p)


def mul_down(a: float, b: float) -> float:
    """``a * b`` rounded down."""
    return -mul_up(-a, b)


def _quotient_error_sign(a: float, b: float, q: float) -> int | None:
    """The sign of ``a / b - q`` (real) for ``q = fl(a / b)``, finite ``a`` and ``b != 0``; None off the safe range.

    Lemma: with ``a = m_a 2^(e_a)``, ``b = m_b 2^(e_b)`` (:func:`math.frexp`) and
    ``|q| >= 2^-1021``, ``q = q' 2^(e_a - e_b)`` for ``q' = fl(m_a / m_b)`` (rounding commutes with
    scaling in the normal range; checked as well), ``|q'|`` in ``[1/2, 2]``. TwoProduct gives
    ``q' m_b = x + y`` exactly (no underflow). ``x = m_a (1 + d)`` with ``|d| <= 3u``, so
    ``m_a - x`` is a float, exactly (Sterbenz's lemma; Higham 2002, Theorem 2.5), and the
    residual ``r = m_a - q' m_b = (m_a - x) - y`` is one rounded sum of two floats, whose sign
    is exact (round to nearest keeps the sign and, with gradual underflow, never rounds a
    nonzero sum of floats to 0). ``a / b - q = (r / m_b) 2^(e_a - e_b)``: the sign of ``r m_b``.
    The exactness of the division residual is classical (Bohlender, Walter, Kornerup and
    Matula 1991; Boldo and Daumas 2003).
    """
    if not abs(q) >= _SAFE_NORMAL:
        return None
    ma, ea = math.frexp(a)
    mb, eb = math.frexp(b)
    qm = ma / mb
    try:
        if math.ldexp(qm, ea - eb) != q:  # cannot happen under IEEE 754 round to nearest; then the exact comparison
            return None
    except OverflowError:  # pragma: no cover - as above
        return None
    x, y = two_product(qm, mb)
    r = (ma - x) - y
    r_sign = (r > 0) - (r < 0)
    return r_sign if mb > 0 else -r_sign


def div_up(a: float, b: float) -> float:
    """``a / b`` rounded up (``b != 0``): the float quotient, or the next float above when it fell short.

    Decided by :func:`_quotient_error_sign` (TwoProduct and Sterbenz, no rational built) wherever
    ``|a / b| >= 2^-1021``, in exact rationals below that; identical results to the exact comparison.
    """
    if b == 0:
        raise ZeroDivisionError("div_up by zero")
    q = a / b
    if not math.isfinite(q) or not math.isfinite(b):
        # a finite quotient past -max rounds to -inf, which is below it: -max is the float above
        return -_MAX_FLOAT if q == -math.inf and math.isfinite(a) and math.isfinite(b) else q
    if a == 0:
        return q
    sign = _quotient_error_sign(a, b, q) if isinstance(a, float) and isinstance(b, float) else None
    if sign is None:
        exact = _exact(a) / _exact(b)  # round_up, not up(q): an int operand may round twice (as in mul_up)
        return q if Fraction(q) >= exact else round_up(exact)
    return q if sign <= 0 else up(q)


def div_down(a: float, b: float) -> float:
    """``a / b`` rounded down."""
    return -div_up(-a, b)


def _square_excess_sign(x: float, r: float) -> int | None:
    """The sign of ``r^2 - x`` (real) for ``r = fl(sqrt(x))``, finite ``x > 0``; None if a check fails.

    Lemma: ``x = m 2^(2k)`` with ``m`` in ``[1/2, 2)`` (:func:`math.frexp`, exact for subnormals too,
    the exponent made even). ``sqrt(x)`` lies in ``[2^-537, 2^512]``, the normal range, so
    ``r = r' 2^k`` with ``r' = fl(sqrt(m))`` (checked as well). TwoProduct gives ``r'^2 = h + l``
    exactly; ``h = m (1 + d)``, ``|d| <= 3u``, so ``h - m`` is exact (Sterbenz), and the sign of the
    rounded sum ``(h - m) + l`` is the sign of ``r'^2 - m``, i.e. of ``r^2 - x`` (as in
    :func:`_quotient_error_sign`).
    """
    m, e = math.frexp(x)
    if e & 1:
        m, e = 2.0 * m, e - 1
    rm = math.sqrt(m)
    if math.ldexp(rm, e // 2) != r:  # cannot happen with a correctly rounded sqrt; then the exact comparison
        return None
    h, low = two_product(rm, rm)
    d = (h - m) + low
    return (d > 0) - (d < 0)


def sqrt_up(x: float) -> float:
    """``sqrt(x)`` rounded up (``x >= 0``): the float root, or the next float above when its square falls short.

    Decided by :func:`_square_excess_sign` (TwoProduct and Sterbenz, no rational built).
    """
    if x < 0:
        raise ValueError("sqrt_up of a negative number")
    r = math.sqrt(x)
    if not math.isfinite(r) or x == 0:
        return r
    sign = _square_excess_sign(x, r) if isinstance(x, float) else None
    if sign is None:
        exact = _exact(x)
        while Fraction(r) ** 2 < exact:  # an int x may round twice (to a float, then its root): step until above
            r = up(r)
        return r
    return r if sign >= 0 else up(r)


def sqrt_down(x: float) -> float:
    """``sqrt(x)`` rounded down (``x >= 0``)."""
    if x < 0:
        raise ValueError("sqrt_down of a negative number")
    r = math.sqrt(x)
    if not math.isfinite(r) or x == 0:
        return r
    sign = _square_excess_sign(x, r) if isinstance(x, float) else None
    if sign is None:
        return r if Fraction(r) ** 2 <= _exact(x) else down(r)
    return r if sign <= 0 else down(r)


def norm2_up(values: Iterable[float]) -> float:
    """The l2 norm of ``values`` rounded up, without overflow or underflow of the squares.

    The exact sum of squares is formed in rationals, scaled by a power of two so
    that the float square root neither overflows nor underflows, then rounded up.
    """
    mags = [abs(float(v)) for v in values]
    if any(math.isnan(m) for m in mags):
        return math.nan
    if any(math.isinf(m) for m in mags):
        return math.inf
    top = max(mags, default=0.0)
    if top == 0:
        return 0.0
    e = math.frexp(top)[1]  # top < 2^e
    scale = Fraction(2) ** e
    scaled = sum(((Fraction(m) / scale) ** 2 for m in mags), Fraction(0))  # in (2^-2, n]
    root = sqrt_up(round_up(scaled))
    # root * 2^e: a power-of-two scaling is exact unless it overflows (then inf, a bound still) or underflows
    try:
        result = math.ldexp(root, e)
    except OverflowError:
        return math.inf
    if result < 2.0**-1022:
        # below the normal range ldexp rounds to nearest (it lost up to TINY / 2): one float up covers it
        result = up(result)
    return result if math.isfinite(result) else math.inf


def libm_up(y: float) -> float:
    """An upper bound on the real value of a library function whose float result is ``y``.

    Not below ``y + LIBM_PAD |y| + TINY`` (real): ``d = fl(|y| LIBM_PAD)`` is exact
    (a power-of-two scaling) or, below the normal range, within ``TINY/2``, so
    ``e = up(fl(d + 2 TINY)) >= d + 2 TINY >= LIBM_PAD |y| + TINY``, and
    ``up(fl(y + e)) >= y + e`` (a correctly rounded result moved one float up).
    """
    if not math.isfinite(y):
        return y
    return up(y + up(abs(y) * LIBM_PAD + 2 * TINY))


def libm_down(y: float) -> float:
    """A lower bound on the real value of a library function whose float result is ``y``."""
    return -libm_up(-y)


def ulp_up(m: float) -> float:
    """An upper bound on the gap between the two floats around any real ``t`` with ``|t| <= m``.

    The gap is ``max(2u|t|, TINY)`` at most (IEEE 754 binary64: the spacing in the
    binade of ``|t| >= 2^-1022`` is ``2^(e-52) <= 2u|t|``, and ``TINY`` below it), so
    ``2u m + TINY``, rounded up. A directed rounding (TwoSum-checked sum) is within one
    such gap of the exact result, a round-to-nearest result moved one float outward
    within two (see the module notes).
    """
    if not math.isfinite(m):
        return math.inf
    return add_up(mul_up(2 * UNIT_ROUNDOFF, abs(m)), TINY)


def libm_error_up(m: float) -> float:
    """Bound on ``|y - f(x)|`` for a library result ``y`` with ``|y| <= m`` (the padding assumption)."""
    return add_up(mul_up(abs(m), LIBM_PAD), TINY)


def libm_spread_up(m: float) -> float:
    """Bound on ``libm_up(y) - y`` and ``y - libm_down(y)`` for ``|y| <= m``.

    With ``e`` as in :func:`libm_up`: ``e <= LIBM_PAD |y| (1 + 4u) + 5 TINY``, and the
    outer step adds at most ``4u |y + e| + 2 TINY``; so ``|y| (LIBM_PAD + 8u) + 8 TINY``
    (generous: 8u instead of about 4u, 8 TINY instead of 7).
    """
    if not math.isfinite(m):
        return math.inf
    return add_up(mul_up(abs(m), LIBM_PAD + 8 * UNIT_ROUNDOFF), 8 * TINY)


def check_gradual_underflow() -> None:
    """Refuse to run where numpy flushes subnormals to zero (FTZ/DAZ): every rounding rule needs them."""
    probe = np.array([2.0**-1022, TINY])
    with np.errstate(all="ignore"):
        flushed = probe * np.array([0.25, 2.0])
    if flushed[0] != 2.0**-1024 or flushed[1] != 2 * TINY:
        raise RuntimeError(
            "this process flushes subnormal floats to zero (FTZ/DAZ, often set by a library built with "
            "-ffast-math); outward rounding is not sound there"
        )


@functools.lru_cache(maxsize=4096)
def gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (float64, ``u = 2^-53``), rounded up; cached (DP-SGD reads it every step).

    A float64 sum or dot product of ``n`` terms, in any order, is within
    ``gamma_n sum |terms|`` of the exact one (Higham 2002, Lemma 3.1 and section 3.1).
    """
    if n < 0:
        raise ValueError("gamma of a negative count")
    nu = Fraction(n) * Fraction(UNIT_ROUNDOFF)
    if nu >= Fraction(1, 2):
        raise ValueError("too many terms for a float64 rounding bound")
    return round_up(nu / (1 - nu))


@functools.lru_cache(maxsize=4096)
def underflow_allowance(entries: int, terms: int) -> float:
    """``sqrt(entries) terms TINY``: the l2 norm of what gradual underflow can add to ``entries`` sums of ``terms`` products.

    Beside the relative error ``gamma_n`` covers, a product whose result is subnormal rounds
    with an absolute error of at most ``TINY / 2`` (Higham 2002, section 2.1, model (2.8));
    carried through at most ``terms - 1`` additions (a factor ``1 + gamma < 2``), each sum gains
    at most ``terms TINY``, and ``entries`` such sums at most ``sqrt(entries)`` times that in l2.
    Cached: a pure function of two counts, which every per-step bound reads.
    """
    if entries <= 0 or terms <= 0:
        return 0.0
    return mul_up(mul_up(sqrt_up(float(entries)), float(terms)), TINY)


@functools.lru_cache(maxsize=4096)
def root_up(n: int) -> float:
    """``sqrt(n)`` of a count, rounded up, cached (bounds read the square roots of a few widths over and over)."""
    return sqrt_up(float(n))


@functools.lru_cache(maxsize=4096)
def gamma_factor_up(n: int) -> float:
    """``1 + gamma_n`` rounded up, cached (per-step norms and projections read a few sizes over and over)."""
    return add_up(1.0, gamma(n))


@functools.lru_cache(maxsize=4096)
def _float_norm_constants(n: int) -> tuple[float, float]:
    """``(1 + gamma_(n+2), sqrt(2 n TINY))``, each rounded up, for :func:`_float_norm_bound` (cached per size)."""
    return gamma_factor_up(n + 2), up(math.sqrt(2.0 * n * TINY))  # 2 n TINY is exact (a multiple of TINY); sqrt correctly rounded


def _float_norm_bound(root: float, n: int) -> float:
    """``root (1 + gamma_(n+2)) + sqrt(2 n TINY)``, each step one float outward of a correctly rounded result."""
    factor, hidden = _float_norm_constants(n)
    return up(up(root * factor) + hidden)


def float_norm2_up(x: np.ndarray) -> float:
    """An upper bound on ``||x||_2`` from one float64 dot product (fast; for public weights each step).

    The computed sum of the ``n`` squares is within ``gamma_n`` (relative; any order, Higham
    2002 section 3.1) plus ``n TINY / 2`` (squares that underflow, section 2.1) of the exact
    one, and the square root rounds once, so
    ``||x|| <= sqrt(fl(x . x)) (1 + gamma_(n+2)) + sqrt(2 n TINY)``, every operation moved one
    float up (:func:`up` of a correctly rounded result is not below the exact one). A sum that
    overflows gives ``inf``, a bound still. (``math.sqrt`` and ``np.sqrt`` are both IEEE's
    correctly rounded square root: the same float.)
    """
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return 0.0
    return _float_norm_bound(math.sqrt(float(np.dot(flat, flat))), flat.size)


def float_max_row_norm2_up(rows: np.ndarray) -> float:
    """An upper bound on the largest l2 norm of the rows of a 2-d array (:func:`float_norm2_up` per row).

    The square root of the largest computed sum of squares: a correctly rounded square root is
    nondecreasing, so it is the largest of the rows' roots (NaN stays NaN).
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return 0.0
    return _float_norm_bound(math.sqrt(float(np.einsum("ij,ij->i", rows, rows).max())), rows.shape[1])


def round_up_to_slots(value: float, per_octave: int) -> float:
    """``value`` rounded up to one of ``per_octave`` (a power of two) values per octave ``[2^k, 2^(k+1))``, exactly.

    The values are ``(j / per_octave) 2^k`` for whole ``j``; at most a factor ``1 + 1/per_octave``
    larger, and powers of two are kept. Used where a bound is cached by slot (noise tables,
    per-step bounds): a larger value in the same slot gives the same, still valid, bound.
    ``frexp``/``ldexp`` scale by powers of two exactly (also for subnormals), ``ceil`` of the
    scaled mantissa is exact, and a result past the largest float is ``inf``. Zero, negative,
    NaN and infinite values are returned as they are.
    """
    if per_octave < 1 or per_octave & (per_octave - 1):
        raise ValueError("per_octave must be a power of two (so that every step below is exact)")
    if not (value > 0 and math.isfinite(value)):
        return value
    mantissa, exponent = math.frexp(value)  # value = mantissa 2^exponent, mantissa in [1/2, 1)
    slots = 2 * per_octave  # mantissa steps of 1 / (2 per_octave) are steps of 2^k / per_octave
    scaled = math.ceil(mantissa * slots) / slots  # a power-of-two scaling, a ceil and its inverse: exact
    try:
        return math.ldexp(scaled, exponent)
    except OverflowError:
        return math.inf


# -- vectorised (numpy) forms: the interval evaluator and per-record charges ---------------
def up_array(x: np.ndarray) -> np.ndarray:
    """Elementwise next float above (a bound above correctly rounded results)."""
    return np.nextafter(x, np.inf)


def add_up_array(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``a + b`` rounded up: the IEEE sum where it is exact or above, else the next float above.

    Knuth's TwoSum (Knuth, TAOCP vol. 2, 4.2.2, Theorem B; six round-to-nearest operations, no
    overflow) gives ``a + b = s + err`` exactly, so ``s`` is an upper bound when ``err <= 0``.
    Where the sum overflows (``err`` is NaN) the next float above ``s`` is taken: ``inf`` stays,
    ``-inf`` becomes the most negative finite float, which lies above any sum that rounded to it.
    An infinite input gives IEEE's sum (``inf - inf`` is NaN).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        s = a + b
        b_virtual = s - a
        err = (a - (s - b_virtual)) + (b - b_virtual)
        exact_enough = ((err <= 0) & np.isfinite(s)) | ~(np.isfinite(a) & np.isfinite(b))  # an infinite input: IEEE's sum
        return np.where(exact_enough, s, up_array(s))


def down_array(x: np.ndarray) -> np.ndarray:
    """Elementwise next float below."""
    return np.nextafter(x, -np.inf)


def libm_up_array(y: np.ndarray) -> np.ndarray:
    """Elementwise :func:`libm_up` (same steps; ``inf`` and ``nan`` pass through)."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(all="ignore"):
        out = up_array(y + up_array(np.abs(y) * LIBM_PAD + 2 * TINY))
    return np.where(np.isfinite(y), out, y)


def libm_down_array(y: np.ndarray) -> np.ndarray:
    """Elementwise :func:`libm_down`."""
    return -libm_up_array(-np.asarray(y, dtype=np.float64))


def norm2_up_rows(rows: np.ndarray) -> np.ndarray:
    """Per-row l2 norms of a 2-d array, each rounded up (scaled: no overflow or underflow).

    Each row is divided by a power of two near its largest magnitude (exact), its
    squares summed in float (``gamma_(n+1)`` relative error in any order, Higham
    2002 section 3.1, plus one rounding per square), the square root taken, and the
    result raised by the relative error and one ulp, then scaled back (exact).
    """
    rows = np.abs(np.asarray(rows, dtype=np.float64))
    if rows.ndim != 2:
        raise ValueError("norm2_up_rows takes a 2-d array")
    n = rows.shape[1]
    top = rows.max(axis=1, initial=0.0)
    _, e = np.frexp(top)
    scaled = np.ldexp(rows, -e[:, None])
    squares = np.einsum("ij,ij->i", scaled, scaled)
    # each square and the sum: relative error at most gamma_(n+1); the sqrt halves it,
    # and the sqrt itself is correctly rounded (one more ulp)
    factor = add_up(1.0, gamma(n + 2))  # 1 + gamma, rounded up (a rounded-to-nearest factor could fall short)
    # scaling a subnormal entry and squaring it below the subnormal range: at most 2 TINY each
    root = up_array(np.sqrt(up_array(up_array(squares * factor) + 3 * n * TINY)))
    # scaling back is exact unless the result is subnormal, where one more step covers it
    out = up_array(np.ldexp(root, e))
    out = np.where(top == 0, 0.0, out)
    return np.where(np.isnan(top), np.nan, out)
