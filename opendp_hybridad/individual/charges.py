"""What each individual is charged: contributions, the float allowance and losses.

Pure functions of the rows of a query (no ledger, no noise). Every bound is rounded
up through :mod:`opendp_hybridad.analysis.rounding`, the one home of rounded-up
arithmetic. The argument they implement is in ``docs/individual.md``; in short,
for the relation the filter accepts (adding or removing one individual):

* individual i's contribution to a query of k functions is the vector ``s_i`` of
  the sums, over their rows in frame order, of the clamped per-record values (a
  sequential float sum per individual, ``numpy.bincount``), so ``s_i`` depends on
  i's rows alone;
* the released total is ``math.fsum`` over the admitted individuals (correctly
  rounded), so with and without i the two totals differ by ``s_i`` plus at most
  :func:`float_allowance` per coordinate;
* i's loss is that of a Gaussian release whose l2 sensitivity is
  ``||s_i|| + ||allowance||``: ``alpha c^2 / (2 sigma^2)`` (Rényi at order alpha, the
  zCDP ``c^2 / (2 sigma^2)`` OpenDP proves for its Gaussian, times alpha) or
  ``c^2 / sigma^2`` (the square of the Gaussian-DP parameter ``c / sigma``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from opendp_hybridad.analysis.rounding import (
    TINY,
    UNIT_ROUNDOFF,
    add_up,
    div_up,
    down_array,
    gamma,
    mul_up,
    norm2_up,
    norm2_up_rows,
    up_array,
)
from opendp_hybridad.errors import DeclarationError


def float_allowance(size_limit: int, max_rows: int, max_abs: float) -> float:
    """Bound, per coordinate, on ``|Delta - s_i|``: the computed totals with and without i, less i's computed sum.

    With ``T`` the exact sum of the other admitted individuals' computed sums, the
    two released totals are ``fl(T + s_i)`` and ``fl(T)`` (``math.fsum``: correctly
    rounded, so each within ``u |t| + TINY/2`` of its real ``t``; Higham 2002,
    Theorem 2.2 with gradual underflow). A computed sequential sum of at most
    ``max_rows`` values is at most ``(1 + gamma_max_rows)`` times the sum of their
    magnitudes (Higham 2002, Lemma 3.1 and (4.4)), so ``|T| + |T + s_i|`` is at most
    ``2 (1 + gamma_max_rows) N M`` over ``N = size_limit`` records of magnitude at
    most ``M``. Hence ``|Delta - s_i| <= 2 u (1 + gamma_max_rows) N M + TINY``,
    rounded up. No bound on ``s_i``'s own rounding is needed: the charge is computed
    from the same computed ``s_i`` that enters the total.
    """
    if not (size_limit >= 1 and max_rows >= 1):
        raise DeclarationError("size_limit and max_rows must be positive")
    magnitude = mul_up(mul_up(add_up(1.0, gamma(int(max_rows))), float(size_limit)), float(max_abs))
    allowance = add_up(mul_up(2 * UNIT_ROUNDOFF, magnitude), TINY)  # 2u is exact (a power of two)
    if not math.isfinite(mul_up(2.0, magnitude)):  # then fsum's partial sums cannot overflow either
        raise DeclarationError("the sum could overflow: size_limit * max_rows-row sums of max|f| are not finite")
    return allowance


def individual_sums(codes: np.ndarray, individuals: int, values: np.ndarray) -> np.ndarray:
    """Each individual's sequential float sum of their values, in frame order (``numpy.bincount``).

    The sum for individual i reads i's values only, in their order, so it is the same
    float whatever the other rows are.
    """
    if individuals == 0:
        return np.zeros(0)
    return np.bincount(codes, weights=values, minlength=individuals)


def first_rows(codes: np.ndarray, individuals: int, max_rows: int) -> np.ndarray:
    """Mask of the rows each individual counts: their first ``max_rows`` rows in the order given.

    ``codes[r]`` numbers row r's individual (``0 <= codes < individuals``). A per-person rule:
    row r's verdict depends on the rows of r's individual before it, and on nothing else. One
    pass with a counter per individual (numba when installed, else pandas' ``cumcount``; the
    same mask either way).
    """
    codes = np.asarray(codes, dtype=np.intp)
    if codes.size == 0:
        return np.ones(0, dtype=bool)
    kernel = _first_rows_kernel()
    if kernel is not None:
        return kernel(codes, int(individuals), int(max_rows))
    import pandas as pd

    return pd.Series(codes).groupby(codes).cumcount().to_numpy() < max_rows


@functools.cache
def _first_rows_kernel():
    """The compiled counter loop of :func:`first_rows`, built once per process (None without numba)."""
    try:
        import numba
    except ImportError:
        return None

    def loop(codes, individuals, max_rows):  # pragma: no cover - compiled
        seen = np.zeros(individuals, dtype=np.int64)
        out = np.empty(codes.size, dtype=np.bool_)
        for r in range(codes.size):
            c = codes[r]
            out[r] = seen[c] < max_rows
            seen[c] += 1
        return out

    return numba.njit(cache=False, nogil=True)(loop)


def sensitivities(sums: np.ndarray, allowances: np.ndarray) -> np.ndarray:
    """Per individual: ``||s_i||_2 + ||allowances||_2``, rounded up (``sums`` is (individuals, k))."""
    sums = np.asarray(sums, dtype=np.float64)
    extra = norm2_up(np.asarray(allowances, dtype=np.float64).tolist())
    if sums.shape[0] == 0:
        return np.zeros(0)
    with np.errstate(over="ignore"):
        return up_array(norm2_up_rows(sums) + extra)


def worst_case_sensitivity(max_rows: int, max_abs: np.ndarray, allowances: np.ndarray) -> float:
    """What worst-case accounting charges everyone: ``||(max_rows M_j + a_j)_j||_2``, rounded up (reports only)."""
    per_coordinate = [add_up(mul_up(float(max_rows), float(m)), float(a)) for m, a in zip(max_abs, allowances, strict=True)]
    return norm2_up(per_coordinate)


def loss_factor(kind: str, alpha: float | None, noise_scale: float) -> float:
    """``alpha / (2 sigma^2)`` (Rényi) or ``1 / sigma^2`` (Gaussian DP), rounded up.

    Computed as ``(numerator / sigma) / sigma``, each division rounded up, so neither
    ``sigma^2`` nor ``2 sigma^2`` is ever formed (no overflow to ``inf`` that would
    round the factor down to 0); ``inf`` when it overflows (everyone is refused).
    """
    if not (noise_scale > 0 and math.isfinite(noise_scale)):
        raise DeclarationError("the noise scale must be a positive finite number")
    if kind == "renyi":
        if alpha is None or not (alpha > 1 and math.isfinite(alpha)):
            raise DeclarationError("the Renyi filter needs a finite order alpha > 1")
        numerator = div_up(float(alpha), 2.0)
    elif kind == "gdp":
        numerator = 1.0
    else:
        raise DeclarationError("kind must be 'renyi' or 'gdp'")
    return div_up(div_up(numerator, float(noise_scale)), float(noise_scale))


def _mul_up_array(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Elementwise ``a * b`` rounded up for non-negative operands (0 times anything is 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.broadcast_to(np.asarray(b, dtype=np.float64), a.shape)
    with np.errstate(all="ignore"):
        product = a * b
        out = up_array(product)
    out = np.where(product == 0, TINY, out)  # an underflow of two non-zero operands
    return np.where((a == 0) | (b == 0), 0.0, out)


def losses(sensitivity: np.ndarray, factor: float) -> np.ndarray:
    """Each individual's loss: ``factor * sensitivity^2``, rounded up (``factor`` from :func:`loss_factor`)."""
    return _mul_up_array(_mul_up_array(sensitivity, sensitivity), factor)


def clip_rows(values: np.ndarray, row_bound: float) -> tuple[np.ndarray, float]:
    """Rows scaled down to l2 norm ``row_bound`` (a per-row rule), and a bound on every clipped row's norm.

    A row whose rounded-up norm exceeds the bound is multiplied by
    ``row_bound / norm`` rounded down; each product is correctly rounded, so the
    clipped row's norm is at most ``row_bound (1 + u)``. A row with a non-finite
    entry counts as a zero row. Rows within the bound are left unchanged.
    """
    if not (row_bound > 0 and math.isfinite(row_bound)):
        raise DeclarationError("row_bound must be a positive finite number")
    values = np.array(values, dtype=np.float64)
    if values.ndim != 2:
        raise DeclarationError("values must be a 2-d array (records, coordinates)")
    finite = np.isfinite(values).all(axis=1)
    values[~finite] = 0.0
    if values.shape[0]:
        norms = norm2_up_rows(values)
        over = norms > row_bound
        if over.any():
            with np.errstate(all="ignore"):
                factor = down_array(row_bound / norms[over])
            values[over] *= factor[:, None]
    return values, mul_up(row_bound, add_up(1.0, 2 * UNIT_ROUNDOFF))
