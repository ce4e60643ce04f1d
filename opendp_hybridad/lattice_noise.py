"""How far OpenDP's lattice noise is from continuous noise: a total variation bound for the accounting.

OpenDP 0.16 draws the noise of ``make_laplace`` / ``make_gaussian`` as a *discrete*
Laplace / discrete Gaussian on the lattice ``2^k`` (``k = 0``, the integers, for integer
data; for floats the ``k`` given, by default the finest: ``-1074`` for f64, ``-149`` for
f32), on the input rounded to that lattice, with the lattice-rounded sensitivity
``Delta_L`` in its privacy map. dp-accounting's ``LaplaceDpEvent`` / ``GaussianDpEvent``
describe *continuous* noise, whose privacy profile can be smaller when the noise is a few
lattice units wide.

The argument. Work in lattice units (``w = scale * 2^-k``). The *reference* mechanism
``R(x) = x_L + round(Z)``, ``Z`` continuous Laplace / Gaussian of width ``w``, is
``round(x_L + Z)`` (``x_L`` is on the lattice): a post-processing of the continuous
mechanism at sensitivity ``Delta_L``, so dp-accounting's continuous event, at a noise
multiplier at most ``scale / Delta_L`` (what OpenDP's map implies), holds for it. OpenDP's
mechanism ``M(x) = x_L + D`` differs from ``R`` only in the noise: for every input,
``TV(M(x), R(x)) = TV(D, round(Z)) = eta`` per coordinate, and at most ``n eta`` for ``n``
independent coordinates. If ``R`` is ``(epsilon, delta)``-DP, then for any event ``S``:
``P[M(x) in S] <= P[R(x) in S] + eta' <= e^epsilon P[R(x') in S] + delta + eta'
<= e^epsilon P[M(x') in S] + delta + (1 + e^epsilon) eta'``. An adaptive composition of
such mechanisms is within the sum of their distances of the composition of the references
(a hybrid argument), so the bound applies to the final ``(epsilon, delta)`` of either
accountant (RDP or PLD). This is what the ``statistical_distance`` of an accounting record
means, and :func:`~opendp_hybridad.accounting.compose_epsilon` adds
``(1 + e^epsilon) * sum(statistical_distance)`` to delta.

The bounds (exact rationals, then one rounding up to a float, so a positive bound is
never 0.0):

* **Laplace**, width ``b = w``, ``x = 1 / (2b)``, ``u = e^-x``. Discrete:
  ``p(0) = tanh x``, ``p(j) = tanh(x) e^(-|j|/b)``. Rounded continuous:
  ``r(0) = 1 - u``, ``r(j) = sinh(x) e^(-|j|/b)``. As ``sinh x >= tanh x``, every
  ``j != 0`` has ``p(j) <= r(j)`` and so ``TV = p(0) - r(0) = tanh x - 1 + u
  = u (1 - u)^2 / (1 + u^2)`` exactly; ``1 - u <= x`` and ``u / (1 + u^2) <= 1/2`` give
  ``TV <= x^2 / 2`` (about the exact value for small ``x``). Computed as the smaller of
  ``x^2 / 2`` and the exact form with ``u`` enclosed by rational series (at most 0.135).
* **Gaussian**, width ``sigma = w``, ``f(t) = exp(-t^2 / (2 sigma^2))``,
  ``C = sigma sqrt(2 pi)`` (so ``r(j) = integral of f over [j - 1/2, j + 1/2] / C``),
  ``S = sum_j f(j) = C theta`` (Poisson summation), ``theta = sum_m exp(-2 pi^2 sigma^2 m^2)``,
  so ``1 <= theta <= 1 + 2q / (1 - q)``, ``q = exp(-2 pi^2 sigma^2)``. Then
  ``|f(j)/S - r(j)| <= f(j) |1/S - 1/C| + |f(j) - integral| / C``; the first sums to
  ``theta - 1``; the midpoint rule gives ``|f(j) - integral| <= sup_cell |f''| / 24``,
  and ``sup_cell g <= integral_cell g + oscillation_cell g`` with ``g = |f''|``: 6
  monotone pieces of height at most ``max g = 1 / sigma^2`` (variation <= 6 / sigma^2)
  and ``integral of g = 4 |f'(sigma)| = 4 e^(-1/2) / sigma``. So
  ``TV <= 1/2 [ (4 e^(-1/2) / sigma + 6 / sigma^2) / (24 C) + 2q / (1 - q) ]`` (valid
  for any ``sigma > 0``; it exceeds 1 below ``sigma = 1/4``, where 1 is used).

Both are capped at 1, multiplied by the number of noisy coordinates (capped at 1 again)
and rounded up once (:func:`~opendp_hybridad.analysis.rounding.round_up`). ``e^-x`` is
enclosed by rational partial sums (alternating series on ``[0, 1]``, squared back with
outward dyadic rounding), ``pi`` and ``sqrt(2 pi)`` by rational bounds: nothing relies on
a library's ``exp``. With OpenDP's default float lattice the widths are ``~2^1074`` units
and the distance is the smallest subnormal; integer data with a small scale is where it
matters (it can make ``delta`` vacuous there: the guarantee is then honest, not tight).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

from opendp_hybridad.analysis.rounding import round_up
from opendp_hybridad.errors import AccountingError

__all__ = ["gaussian_distance_bound", "laplace_distance_bound", "lattice_noise_distance", "measurement_noise_distance",
           "noise_coordinates", "opendp_default_k", "transformation_noise_lattice"]

#: OpenDP's integer carrier types: their noise is on the integers (k = 0, the only one OpenDP accepts)
_INTEGERS = frozenset({"i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize"})
#: OpenDP's default k for float carriers: the smallest subnormal's exponent (OpenDP's get_min_k)
_FLOAT_DEFAULT_K = {"f64": -1074, "f32": -149}
#: the noise's own (domain, metric) pairs: d_in is then a distance between the noise's inputs
_NOISE_METRICS = frozenset({"AbsoluteDistance", "L1Distance", "L2Distance"})

# rational constants, each on the safe side: pi below (pi = 3.14159265358979323846264...)
_PI_LOW = Fraction(314159265358979323846, 10**20)
_TWO_PI_SQUARED_LOW = 2 * _PI_LOW * _PI_LOW
_SQRT_TWO_PI_LOW = Fraction(math.isqrt(2 * _PI_LOW.numerator * 10**40 // _PI_LOW.denominator), 10**20)
_SERIES_TERMS = 31  # odd: partial sums S_30 >= e^-y >= S_31 on [0, 1]; width 1/31! < 1e-33
_DYADIC_BITS = 256  # relative precision kept while squaring an enclosure back up
_FAR = 1024  # beyond this, e^-x <= N!/x^N (one term of e^x's series) and e^-x >= 0 are all that is needed
_FAR_TERMS = 20


def _dyadic(value: Fraction, upward: bool) -> Fraction:
    """``value`` (> 0) rounded to about ``_DYADIC_BITS`` significant bits, up or down."""
    shift = _DYADIC_BITS - (value.numerator.bit_length() - value.denominator.bit_length())
    scaled = value * Fraction(2) ** shift
    whole = math.floor(scaled) if not upward else math.ceil(scaled)
    return Fraction(whole) / Fraction(2) ** shift


def _exp_neg_bounds(x: Fraction) -> tuple[Fraction, Fraction]:
    """Rationals ``lo <= e^-x <= hi`` for a rational ``x >= 0``."""
    if x < 0:
        raise ValueError("_exp_neg_bounds needs x >= 0")
    if x == 0:
        return Fraction(1), Fraction(1)
    if x > _FAR:
        return Fraction(0), min(Fraction(1), Fraction(math.factorial(_FAR_TERMS)) / x**_FAR_TERMS)
    halvings = 0
    while x > 2**halvings:
        halvings += 1
    y = x / 2**halvings  # in (0, 1]: the terms y^n / n! do not increase, so the alternating partial
    term, total, partial = Fraction(1), Fraction(1), []  # sums ending in a negative term lie below, positive above
    for n in range(1, _SERIES_TERMS + 1):
        term = -term * y / n
        total += term
        partial.append(total)
    lo, hi = partial[-1], partial[-2]  # S_31 <= e^-y <= S_30
    for _ in range(halvings):  # e^-x = (e^-y)^(2^h), squared with outward rounding
        lo, hi = _dyadic(lo * lo, upward=False), _dyadic(hi * hi, upward=True)
    return max(lo, Fraction(0)), min(hi, Fraction(1))


def laplace_distance_bound(width: Fraction) -> Fraction:
    """An upper bound on TV(discrete Laplace, rounded continuous Laplace) of scale ``width`` lattice units (exact, <= 1)."""
    width = Fraction(width)
    if width <= 0:
        return Fraction(1)
    x = 1 / (2 * width)
    best = min(Fraction(1), x * x / 2)  # u (1-u)^2 / (1+u^2) with 1 - u <= x and u / (1 + u^2) <= 1/2
    if x >= Fraction(1, 2**20):  # below, x^2 / 2 is already within a factor 1 + 2^-19 of the exact value
        lo, hi = _exp_neg_bounds(x)
        best = min(best, hi * (1 - lo) ** 2 / (1 + lo * lo))  # the exact TV, each factor bounded outward
    return best


def gaussian_distance_bound(width: Fraction) -> Fraction:
    """An upper bound on TV(discrete Gaussian, rounded continuous Gaussian) of standard deviation ``width`` lattice units."""
    sigma = Fraction(width)
    if sigma <= Fraction(1, 4):  # the bound below exceeds 1 there
        return Fraction(1)
    e_half = _exp_neg_bounds(Fraction(1, 2))[1]
    cells = (4 * e_half * sigma + 6) / (24 * sigma**3 * _SQRT_TWO_PI_LOW)  # midpoint rule, all cells
    q = _exp_neg_bounds(_TWO_PI_SQUARED_LOW * sigma * sigma)[1]
    if q >= 1:
        return Fraction(1)
    theta_excess = 2 * q / (1 - q)  # theta - 1: the discrete normaliser's excess over C
    return min(Fraction(1), (cells + theta_excess) / 2)


@functools.lru_cache(maxsize=1024)
def lattice_noise_distance(mechanism: str, scale: float, k: int, coordinates: int = 1) -> float:
    """TV distance between OpenDP's lattice noise and rounded continuous noise, over ``coordinates`` noisy values.

    ``mechanism``: ``"laplace"`` or ``"gaussian"``; ``scale``: the scale OpenDP was given
    (Laplace ``b``, Gaussian ``sigma``), or a lower bound on it; ``k``: the lattice ``2^k``
    (0 for integer data; OpenDP's default for f64 is -1074). Returns a float not below the
    bound of the module docstring (``coordinates`` times the per-coordinate bound, capped at
    1): the ``statistical_distance`` of such a measurement's accounting record. A positive
    bound never rounds to 0.0 (it becomes the smallest subnormal); smaller scales give
    larger (or equal) distances.
    """
    if mechanism not in ("laplace", "gaussian"):
        raise AccountingError(f"no lattice noise bound for mechanism {mechanism!r}: use 'laplace' or 'gaussian'")
    scale = float(scale)
    if math.isnan(scale) or scale < 0:
        raise AccountingError("the noise scale must be a non-negative number")
    if isinstance(k, bool) or int(k) != k or isinstance(coordinates, bool) or int(coordinates) != coordinates or coordinates < 0:
        raise AccountingError("k and coordinates must be integers (coordinates >= 0)")
    if coordinates == 0 or math.isinf(scale):
        return 0.0
    width = Fraction(scale) * Fraction(2) ** (-int(k))
    bound = laplace_distance_bound(width) if mechanism == "laplace" else gaussian_distance_bound(width)
    return round_up(min(Fraction(1), bound * int(coordinates)))


# -- where the lattice and the coordinates come from ---------------------------------------------
def opendp_default_k(carrier: str) -> int:
    """The lattice exponent OpenDP's Laplace / Gaussian use on ``carrier`` when given no ``k``."""
    carrier = str(carrier)
    if carrier in _INTEGERS:
        return 0
    if carrier in _FLOAT_DEFAULT_K:
        return _FLOAT_DEFAULT_K[carrier]
    raise AccountingError(f"OpenDP's Laplace and Gaussian noise has no lattice for carrier {carrier}")


def _kind(domain: Any) -> str:
    return type(domain).__name__


def _element_carrier(domain: Any) -> str | None:
    """The numeric carrier of an atom domain or of a vector domain's elements; None for any other domain."""
    if _kind(domain) == "AtomDomain":
        return str(domain.carrier_type)
    if _kind(domain) == "VectorDomain" and _kind(domain.element_domain) == "AtomDomain":
        return str(domain.element_domain.carrier_type)
    return None


def noise_coordinates(domain: Any, coordinates: int | None = None) -> int:
    """How many values OpenDP's noise is added to on ``domain``: 1 on an atom domain, the size of a vector domain.

    A vector domain of unknown size needs ``coordinates`` (the most values it will hold).
    """
    if _kind(domain) == "AtomDomain":
        if coordinates not in (None, 1):
            raise AccountingError(f"an atom domain holds one value, not coordinates={coordinates}")
        return 1
    if _kind(domain) == "VectorDomain":
        size = domain.size
        if size is not None:
            if coordinates is not None and coordinates != size:
                raise AccountingError(f"the vector domain has size {size}, not coordinates={coordinates}")
            return int(size)
        if coordinates is None or isinstance(coordinates, bool) or int(coordinates) != coordinates or coordinates < 0:
            raise AccountingError("a vector domain of unknown size: pass coordinates= (the most values the noise is added to)")
        return int(coordinates)
    raise AccountingError(f"no noise coordinates on a {_kind(domain)}")


def transformation_noise_lattice(transformation: Any) -> tuple[int, int]:
    """``(k, coordinates)`` of OpenDP's default-``k`` Laplace / Gaussian chained after ``transformation``."""
    domain = transformation.output_domain
    carrier = _element_carrier(domain)
    if carrier is None:
        raise AccountingError(f"no OpenDP noise lattice on a {_kind(domain)}")
    return opendp_default_k(carrier), noise_coordinates(domain)


def measurement_noise_distance(measurement: Any, mechanism: str, d_in: Any, multiplier: float, k: int | None = None,
                               coordinates: int | None = None, scale: float | None = None) -> float:
    """The ``statistical_distance`` of a user's OpenDP Laplace / Gaussian measurement (see :func:`~opendp_hybridad.accounting.accounted`).

    A plain ``make_laplace`` / ``make_gaussian`` (input an atom or vector domain with the
    noise's own metric): integer data is on the integers (``k = 0``); float data needs
    ``k`` (an OpenDP Measurement does not expose it; OpenDP's default, when no ``k`` was
    given, is -1074 for f64); a vector domain of unknown size needs ``coordinates``. The
    scale is the one the constructor recorded (``__opendp_dict__``, Python-built measurements),
    else bounded below from OpenDP's own map, ``loss >= d_in / scale`` so
    ``scale >= d_in * multiplier``; ``scale``, if given, can only lower it. A chain (a
    transformation before the noise) needs ``scale``, ``k`` and ``coordinates``: its
    ``d_in`` says nothing about the noise's width.
    """
    from opendp_hybridad.analysis.rounding import mul_down

    _check_measure(measurement, mechanism)
    noise = _noise_measurement(measurement)  # the make_laplace / make_gaussian inside a chain (None: unreadable)
    if noise is not None and _CONSTRUCTORS[noise.__opendp_dict__["__function__"]] != mechanism:
        raise AccountingError(f"this measurement's noise is {noise.__opendp_dict__['__function__']}, not {mechanism}")
    if math.isinf(multiplier):  # no loss at d_in: the noise sees identical inputs, any reference will do
        return 0.0
    domain, metric = measurement.input_domain, measurement.input_metric
    carrier = _element_carrier(domain)
    built = getattr(measurement, "__opendp_dict__", None)
    function = built.get("__function__") if isinstance(built, dict) else None
    plain = (carrier is not None and str(metric).split("(")[0] in _NOISE_METRICS
             and function in (None, "make_laplace", "make_gaussian"))
    if not plain:
        if scale is None or k is None or coordinates is None:
            raise AccountingError("accounted() reads the noise's lattice off a plain make_laplace / make_gaussian; for a chain "
                                  "pass scale=, k= and coordinates= of its noise")
        if noise is not None:  # what the chain's own noise recorded: the declaration must agree (the scale can only shrink)
            k, coordinates, scale = _declared_noise(noise, int(k), int(coordinates), float(scale))
        return lattice_noise_distance(mechanism, float(scale), int(k), int(coordinates))
    if carrier in _INTEGERS:
        if k not in (None, 0):
            raise AccountingError(f"integer data ({carrier}) gets its noise on the integers: k is 0, not {k}")
        k = 0
    elif carrier in _FLOAT_DEFAULT_K:
        if k is None:
            raise AccountingError(f"float noise is drawn on the lattice 2^k, which an OpenDP Measurement does not expose: pass k= "
                                  f"(OpenDP's default, when make_laplace / make_gaussian got no k, is {_FLOAT_DEFAULT_K[carrier]} "
                                  f"for {carrier})")
    else:
        raise AccountingError(f"OpenDP's Laplace and Gaussian noise has no lattice for carrier {carrier}")
    given = built.get("__kwargs__", {}) if isinstance(built, dict) else {}
    if "k" in given:  # the constructor's own record of k (Python-built measurements): it must agree
        declared = opendp_default_k(carrier) if given["k"] is None else int(given["k"])
        if declared != int(k):
            raise AccountingError(f"this measurement draws its noise on 2^{declared}, not 2^{k}")
    width = mul_down(float(d_in), float(multiplier))  # OpenDP's map: loss >= d_in / scale
    if isinstance(given.get("scale"), (int, float)):  # the constructor's own record of the scale: exact
        width = float(given["scale"])
    if scale is not None:
        width = min(width, float(scale))
    return lattice_noise_distance(mechanism, width, int(k), noise_coordinates(domain, coordinates))


#: OpenDP's noise constructors accounted() knows, and the measure each one's privacy map is in
_CONSTRUCTORS = {"make_laplace": "laplace", "make_gaussian": "gaussian"}
_MEASURES = {"laplace": "MaxDivergence", "gaussian": "ZeroConcentratedDivergence"}


def _check_measure(measurement: Any, mechanism: str) -> None:
    """The map must be in the mechanism's own measure: a Laplace's epsilon read as a Gaussian's rho (or the
    reverse, or a zCDP conversion of a Laplace) would describe another mechanism, whose profile can be smaller."""
    measure = str(measurement.output_measure).split("(")[0]
    if measure != _MEASURES[mechanism]:
        raise AccountingError(f"a {mechanism} record needs a measurement in {_MEASURES[mechanism]}, not {measure}")


def _noise_measurement(measurement: Any) -> Any:
    """The ``make_laplace`` / ``make_gaussian`` measurement ``measurement`` is, or ends a chain with
    (transformations before it, post-processing after it), read from OpenDP's ``__opendp_dict__``; None
    when there is no such record. Any other constructor on the way is refused: its map is not a
    Laplace's or a Gaussian's."""
    for _ in range(256):
        built = getattr(measurement, "__opendp_dict__", None)
        if not isinstance(built, dict):
            return None
        function, kwargs = built.get("__function__"), built.get("__kwargs__", {})
        if function in _CONSTRUCTORS:
            return measurement
        if function == "make_chain_mt":
            measurement = kwargs.get("measurement1")
        elif function == "make_chain_pm":
            measurement = kwargs.get("measurement0")
        else:
            raise AccountingError(f"accounted() takes OpenDP's make_laplace / make_gaussian (after transformations, before "
                                  f"post-processing), not a measurement made by {function}")
    return None  # pragma: no cover - chains are not this deep


def _declared_noise(noise: Any, k: int, coordinates: int, scale: float) -> tuple[int, int, float]:
    """A chain's declared ``(k, coordinates, scale)`` checked against its noise measurement's own record."""
    carrier = _element_carrier(noise.input_domain)
    if carrier is None:
        raise AccountingError(f"no OpenDP noise lattice on a {_kind(noise.input_domain)}")
    given = noise.__opendp_dict__.get("__kwargs__", {})
    declared = opendp_default_k(carrier) if given.get("k") is None else int(given["k"])
    if declared != k:
        raise AccountingError(f"this chain's noise is drawn on 2^{declared} ({carrier} data), not 2^{k}")
    coordinates = noise_coordinates(noise.input_domain, coordinates)
    if isinstance(given.get("scale"), (int, float)):
        scale = min(scale, float(given["scale"]))
    return k, coordinates, scale
