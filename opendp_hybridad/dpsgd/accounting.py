"""DP-SGD's privacy accounting, proven for the noise DP-SGD really adds: a discrete Gaussian on a lattice.

Both samplers DP-SGD can use (the exact table, :mod:`.noise`, and OpenDP's ``then_gaussian``)
round the gradient sum to a grid ``g = 2^k`` and add ``g Z`` with ``Z`` i.i.d. discrete
Gaussians of scale ``s`` on the integers, ``s >= sigma (Delta + sqrt(d) g) / g`` (``sigma`` the
noise multiplier, ``Delta`` the sum's l2 sensitivity): neighbouring sums, once rounded, differ
by an *integer* vector ``v`` with ``||v||_2 <= (Delta + sqrt(d) g) / g <= s / sigma``. Its
accounting, in Rényi DP, rests on two facts:

* **The base mechanism.** For integer ``v``, the discrete Gaussian satisfies
  ``D_alpha(N_Z(v, s^2) || N_Z(0, s^2)) = alpha ||v||^2 / (2 s^2)`` for every ``alpha > 1``,
  in both directions (Canonne, Kamath and Steinke 2020, "The Discrete Gaussian for
  Differential Privacy", Proposition 5 in one dimension; the coordinates are independent,
  so the divergences add): exactly the continuous Gaussian's ``alpha / (2 sigma^2)``.
* **Poisson subsampling.** With ``L = Q / P`` (``Q`` the shifted noise) and ``M = (1-q) P + q Q``,
  for an integer order ``alpha``: the add direction ``D_alpha(M || P)`` is computed exactly by
  the binomial expansion, because ``E_P[L^k] = e^((k^2 - k) / (2 sigma^2))`` holds exactly for
  the lattice at every integer ``k`` (``k v`` is an integer vector and the lattice Gaussian's
  normalising sum is unchanged by integer shifts) and grows with ``||v||``; this is the
  continuous Gaussian's value (Mironov, Talwar and Zhang 2019). Their proof that the remove
  direction is the smaller one uses the continuous Gaussian, so it is not claimed here: the
  remove direction ``D_alpha(P || M)`` is bounded by Taylor's theorem (:func:`_remove_direction`).
  Both are capped by Zhu and Wang 2019 ("Poisson Subsampled Rényi Differential Privacy", ICML,
  Theorem 6, the general upper bound for any mechanism with RDP ``eps(l)`` at the integer
  orders, both directions): ``eps'(alpha) <= log(T) / (alpha - 1)``,
  ``T = (1-q)^(alpha-1) (alpha q - q + 1) + C(alpha,2) q^2 (1-q)^(alpha-2) e^(eps(2))
  + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^((l-1) eps(l))``, and by the joint
  convexity of ``E_Q[(P/Q)^alpha]`` (an f-divergence, ``alpha > 1``; van Erven and Harremoës
  2014): ``eps'(alpha) <= log(1 - q + q e^((alpha-1) eps(alpha))) / (alpha - 1)``. The bound is
  ``min(Zhu-Wang, convexity, base, max(add, remove))``.

Between integer orders ``a < alpha < b``, ``(alpha - 1) D_alpha`` is convex in ``alpha`` for each
direction (van Erven and Harremoës 2014), so the integer bounds are interpolated; below 2 the
bound at 2 is used (Rényi divergence is non-decreasing in its order, ibid. Theorem 3). A
shuffled epoch (replace-one; each example in one batch) is one discrete Gaussian with
``||v|| <= 2 s / sigma``: ``2 alpha / sigma^2``, exact.
Steps compose by adding RDP (Mironov 2017, Proposition 1, adaptive); the conversion to
``(epsilon, delta)`` is Canonne, Kamath and Steinke 2020, Proposition 12 (the one
dp-accounting uses), evaluated here with every operation rounded outward
(:mod:`opendp_hybridad.analysis.rounding`). The sums above run in mpmath at 50 digits with a
relative margin, then are rounded up to float.

**An assumption that needs a property of the platform.** Amplification by subsampling compares
mixtures whose components for batches *without* the example must be the same distribution in
both neighbouring worlds: the computed (rounded) gradient sum of a batch must depend only on
that batch's rows and their order, not on the rest of the dataset (for instance through
memory alignment, or a thread count chosen by load). numpy's matrix products go to BLAS, which
gives that for identical calls on OpenBLAS, and on MKL in its reproducible (CNR) mode; the
float-sum *sensitivity* argument needs nothing from BLAS, but this one does. An audit found
bit-identical sums at 7 alignments here; replacing it with an argument that needs nothing (our
own fixed-order kernels) is open (``docs/soundness.md``).

No PLD is reported for DP-SGD: dp-accounting's PLDs describe the continuous Gaussian (or a
one-dimensional discrete one), and neither is proven to dominate a many-coordinate lattice
noise under subsampling. The cost of proof is measured in ``docs/dpsgd.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.analysis.rounding import (
    add_down,
    add_up,
    add_up_array,
    div_down,
    div_up,
    libm_down,
    libm_up,
    mul_down,
    mul_up,
    round_up,
    sub_up,
    up,
    up_array,
)
from opendp_hybridad.errors import AccountingError

__all__ = ["reference_event", "dp_sgd_steps", "dp_sgd_epsilon", "dp_sgd_calibration", "dp_sgd_noise_multiplier", "DpSgdRdpCurve",
           "lattice_gaussian_rdp", "rdp_to_epsilon", "unit_rdp"]

_DIGITS = 50
#: relative margin added to every mpmath result before it is rounded to float (50 digits leave ~1e-45)
_MARGIN = "1e-30"
#: orders above this get only the closed-form bounds (a public order like 1e9 would otherwise take 1e9 terms)
_LARGEST_SUMMED_ORDER = 4096


def _orders() -> tuple[float, ...]:
    from opendp_hybridad.accounting import RDP_ORDERS

    return RDP_ORDERS


def dp_sgd_steps(n: int, batch_size: int, epochs: float) -> int:
    """Number of noisy steps of ``epochs`` passes over ``n`` examples with expected batch ``batch_size``."""
    n = validation.count("n", n)
    batch_size = validation.count("batch_size", batch_size)
    epochs = validation.positive_finite("epochs", epochs)
    if batch_size > n:
        raise AccountingError(f"the batch size ({batch_size}) is larger than the data ({n} examples)")
    return validation.steps(n, batch_size, epochs)


def reference_event(n: int, batch_size: int, noise_multiplier: float, epochs: float, sampling: str = "poisson") -> Any:
    """The dp-accounting event of the *continuous* Gaussian DP-SGD resembles: its shape, for display and comparison.

    Not the run's guarantee (the noise is a lattice Gaussian: :class:`DpSgdRdpCurve` is). ``"poisson"``:
    ``steps`` Poisson-sampled Gaussians at ``q = batch_size / n`` rounded up; ``"shuffle"``: one
    Gaussian of multiplier ``sigma / 2`` per epoch (replace-one doubles the shift).
    """
    import dp_accounting

    noise_multiplier = validation.noise_multiplier("noise_multiplier", noise_multiplier)
    steps = dp_sgd_steps(n, batch_size, epochs)
    if sampling == "poisson":
        step = dp_accounting.PoissonSampledDpEvent(div_up(int(batch_size), int(n)), dp_accounting.GaussianDpEvent(noise_multiplier))
        return dp_accounting.SelfComposedDpEvent(step, steps)
    if sampling == "shuffle":
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier / 2.0), math.ceil(epochs))
    raise AccountingError("sampling must be 'poisson' or 'shuffle'")


@functools.lru_cache(maxsize=4096)
def lattice_gaussian_rdp(alpha: int, noise_multiplier: float, sampling_probability: float) -> float:
    """Upper bound on the RDP at integer order ``alpha >= 2`` of one Poisson-subsampled lattice Gaussian step.

    Both neighbouring directions (add and remove one example), sampling probability
    ``q = sampling_probability`` (1: no subsampling), noise multiplier ``sigma``: the smaller
    of Zhu and Wang's general bound and the convexity bound (module docstring), with the
    base RDP ``eps(l) = l / (2 sigma^2)``. Computed in mpmath, rounded up.
    """
    import mpmath

    alpha = int(alpha)
    if alpha < 2:
        raise AccountingError("integer Renyi orders start at 2")
    sigma, q = float(noise_multiplier), float(sampling_probability)
    if not (sigma > 0 and math.isfinite(sigma) and 0 < q <= 1):
        raise AccountingError("the noise multiplier must be positive and finite, the sampling probability in (0, 1]")
    with mpmath.workdps(_DIGITS):
        s2 = 2 * mpmath.mpf(sigma) ** 2
        base = alpha / s2  # eps(alpha) of the un-subsampled mechanism
        if q == 1.0:
            value = base
        elif alpha > _LARGEST_SUMMED_ORDER:
            # the sums below take alpha terms: past this order only the closed-form bounds (convexity, base)
            value = min(mpmath.log1p(mpmath.mpf(q) * mpmath.expm1((alpha - 1) * base)) / (alpha - 1), base)
        else:
            mq = mpmath.mpf(q)
            # convexity: log(1 + q (e^((alpha-1) eps(alpha)) - 1)) / (alpha - 1)
            convex = mpmath.log1p(mq * mpmath.expm1((alpha - 1) * base)) / (alpha - 1)
            # one pass over the binomial terms w_j = C(alpha,j) q^j (1-q)^(alpha-j), j >= 2, by their ratio
            # (no logarithms of huge binomials), with e_j = e^((j^2 - j) / s2) - 1 (expm1: nothing cancels).
            # The add direction, exactly: E_P[(1 + q (L - 1))^alpha] - 1 = sum_{j>=2} w_j e_j (the terms of j = 0, 1
            # and the "-1"s sum to 1 - 1 = 0; E_P[L^j] = e_j + 1). Zhu-Wang's T - 1 = sum_{j>=2} w_j (c_j (e_j + 1) - 1),
            # c_2 = 1, c_j = 3: the same sum plus 2 sum_{j>=3} w_j (e_j + 1). Every term is positive.
            ratio = mq / (1 - mq)
            weight = (1 - mq) ** alpha * alpha * ratio  # w_1
            add_excess, extra = mpmath.mpf(0), mpmath.mpf(0)
            for j in range(2, alpha + 1):
                weight = weight * (alpha - j + 1) / j * ratio
                excess = mpmath.expm1((j * j - j) / s2)
                add_excess += weight * excess
                if j >= 3:
                    extra += weight * (excess + 1)
            zhu_wang = mpmath.log1p(add_excess + 2 * extra) / (alpha - 1)
            # the two directions separately: add (exact) and remove (a Taylor bound); both need only
            # E_P[L] = 1 and E_P[L^j] = e^((j^2 - j) / (2 sigma^2))
            add = mpmath.log1p(add_excess) / (alpha - 1)
            value = min(convex, zhu_wang, base, max(add, _remove_direction(alpha, mq, s2)))
        value = value * (1 + mpmath.mpf(_MARGIN))
        return up(float(value))


def _remove_direction(alpha: int, q: Any, s2: Any) -> Any:
    """An upper bound on ``D_alpha(P || M)``: ``log E_P[(1 + u)^-(alpha-1)] / (alpha - 1)``, ``u = q (L - 1) >= -q``.

    ``f(u) = (1 + u)^-m`` (``m = alpha - 1``) has derivatives of alternating sign, so Taylor's
    theorem with Lagrange remainder at an even degree ``2k`` gives ``f(u) <= T_2k(u)`` for
    ``u >= 0`` (the remainder has the sign of ``f^(2k+1) < 0``) and, for ``-q <= u < 0``,
    ``f(u) <= T_2k(u) + (m)_(2k+1) (1-q)^-(m+2k+1) |u|^(2k+1) / (2k+1)!`` (``(m)_j`` the rising
    factorial). The moments are exact: ``E_P[u^j] = q^j sum_i C(j,i) (-1)^(j-i) E_P[L^i]`` with
    ``E_P[L^i] = e^((i^2 - i) / s2)`` (``s2 = 2 sigma^2``), and ``E_P[|u|^(2k+1); u < 0] <= q^(2k+1) V``,
    ``V = E_P[(1 - L)^2] = e^(2 / s2) - 1`` (``0 <= 1 - L <= 1`` there). The smallest of the
    bounds at ``2k = 2, 4, 6, 8``.
    """
    import mpmath

    m = alpha - 1
    moments_of_l = [mpmath.exp((i * i - i) / s2) for i in range(10)]
    v = mpmath.expm1(2 / s2)
    best = None
    polynomial = mpmath.mpf(1)  # E_P[T_j(u)] accumulated degree by degree
    coefficient = mpmath.mpf(1)  # f^(j)(0) / j! = (-1)^j (m)_j / j!
    for j in range(1, 9):
        coefficient = -coefficient * (m + j - 1) / j
        central = mpmath.fsum(math.comb(j, i) * (-1) ** (j - i) * moments_of_l[i] for i in range(j + 1))
        polynomial += coefficient * q**j * central
        if j % 2 == 0:
            rising = mpmath.rf(m, j + 1) / mpmath.factorial(j + 1)
            remainder = rising * mpmath.exp(-(m + j + 1) * mpmath.log1p(-q)) * q ** (j + 1) * v
            bound = polynomial + remainder
            best = bound if best is None else min(best, bound)
    return mpmath.log(best) / m


def unit_rdp(order: float, noise_multiplier: float, sampling: str, sampling_probability: float) -> float:
    """RDP (upper bound) at ``order > 1`` of one accounting unit of DP-SGD with lattice noise.

    ``"poisson"``: one Poisson-sampled step. At an integer order, :func:`lattice_gaussian_rdp`;
    between integers ``a < order < b``, ``(alpha - 1) D_alpha`` is convex in ``alpha`` (van Erven and
    Harremoës 2014, Corollary 2), for each direction, so ``(order - 1) D <= lam (a - 1) U_a +
    (1 - lam) (b - 1) U_b`` with ``order = lam a + (1 - lam) b`` and ``U`` the integer bounds; below 2,
    ``D_order <= U_2`` (RDP grows with the order, ibid. Theorem 3). ``"shuffle"``: one shuffled
    epoch, ``2 order / sigma^2`` (replace-one doubles the shift).
    """
    order = float(order)
    if not order > 1:
        raise AccountingError("Renyi orders are above 1")
    if sampling == "shuffle":
        return mul_up(2.0, div_up(order, mul_down(noise_multiplier, noise_multiplier)))
    if sampling != "poisson":
        raise AccountingError("sampling must be 'poisson' or 'shuffle'")
    if order <= 2.0:
        return lattice_gaussian_rdp(2, noise_multiplier, sampling_probability)
    low, high = math.floor(order), math.ceil(order)
    at_high = lattice_gaussian_rdp(high, noise_multiplier, sampling_probability)
    if low == high:
        return at_high
    at_low = lattice_gaussian_rdp(low, noise_multiplier, sampling_probability)
    # exact rationals for the weights: lam = high - order, 1 - lam = order - low (floats, so exact fractions)
    from fractions import Fraction

    exact_order = Fraction(order)
    lam = high - exact_order
    interpolated = (lam * (low - 1) * Fraction(at_low) + (1 - lam) * (high - 1) * Fraction(at_high)) / (exact_order - 1)
    return min(at_high, round_up(interpolated))


def conversion_offsets(orders: Sequence[float], delta: float) -> np.ndarray:
    """Per order, the part of Canonne-Kamath-Steinke's conversion that does not depend on the RDP value,
    ``log(1 - 1/alpha) - (log delta + log alpha) / (alpha - 1)``, each rounded up (``inf`` marks an order
    that cannot be used). :func:`rdp_to_epsilon` adds it to the divergence at that order.
    """
    delta = validation.probability("delta", delta)
    log_delta_low = libm_down(math.log(delta))
    offsets = np.empty(len(orders))
    for i, alpha in enumerate(orders):
        alpha = float(alpha)
        if not alpha > 1:
            raise AccountingError("RDP needs orders above 1 and non-negative divergences")
        # log(1 - 1/alpha) <= log1p(-(1/alpha rounded down)), itself padded up (library function)
        shrink = libm_up(math.log1p(-div_down(1.0, alpha)))
        numerator = sub_up(-log_delta_low, libm_down(math.log(alpha)))  # -(log delta + log alpha), rounded up
        tail = div_up(numerator, add_down(alpha, -1.0))  # alpha - 1, rounded down
        offsets[i] = add_up(shrink, tail)
    return offsets


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float,
                   offsets: np.ndarray | None = None) -> float:
    """The smallest ``epsilon`` with ``(epsilon, delta)``-DP implied by RDP ``rdp`` at ``orders``, rounded up.

    Canonne, Kamath and Steinke 2020, Proposition 12: ``(alpha, r)``-RDP implies
    ``(r + log(1 - 1/alpha) - (log delta + log alpha) / (alpha - 1), delta)``-DP; the minimum over
    the orders, at least 0. The order-only part is :func:`conversion_offsets` (pass it to reuse it
    across calls with the same orders and delta), rounded up; ``r + offset`` is rounded up by
    ``add_up_array``: every term is rounded toward a larger epsilon.
    """
    if offsets is None:
        offsets = conversion_offsets(orders, delta)
    values = np.asarray(rdp, dtype=np.float64)
    if values.shape != offsets.shape:
        raise AccountingError("RDP needs one divergence per order")
    if np.any(np.isnan(values)) or np.any(values < 0):
        raise AccountingError("RDP needs orders above 1 and non-negative divergences")
    with np.errstate(over="ignore", invalid="ignore"):
        totals = add_up_array(values, offsets)  # inf + finite = inf: an unusable order never wins
    best = float(np.min(totals[~np.isnan(totals)], initial=math.inf))
    return max(0.0, best)


class DpSgdRdpCurve:
    """Proven RDP of DP-SGD with lattice noise after any number of steps, from one unit's curve computed once.

    The unit is one Poisson-sampled step (``"poisson"``, sampling probability
    ``batch_size / n`` rounded up) or one shuffled epoch (``"shuffle"``). RDP composes by
    adding at every order, so after ``t`` steps the curve is ``units(t) * unit_rdp`` (rounded
    up); a shuffled run counts every epoch begun. :meth:`epsilon` converts it with
    :func:`rdp_to_epsilon` (microseconds), so progress lines cost nothing.
    """

    def __init__(self, n: int, batch_size: int, noise_multiplier: float, sampling: str = "poisson",
                 orders: Sequence[float] | None = None) -> None:
        self.noise_multiplier = validation.noise_multiplier("noise_multiplier", noise_multiplier)
        n, batch_size = validation.count("n", n), validation.count("batch_size", batch_size)
        if batch_size > n:
            raise AccountingError(f"the batch size ({batch_size}) is larger than the data ({n} examples)")
        if sampling not in ("poisson", "shuffle"):
            raise AccountingError("sampling must be 'poisson' or 'shuffle'")
        self.sampling = sampling
        # the selection includes each example with probability at most batch_size / n: that ratio rounded up
        self.sampling_probability = min(1.0, div_up(batch_size, n))
        self._per_unit = 1 if sampling == "poisson" else n // batch_size
        self.orders = np.array(_orders() if orders is None else orders, dtype=float)
        self.unit_rdp = np.array([unit_rdp(a, self.noise_multiplier, sampling, self.sampling_probability)
                                  for a in self.orders])
        self._offsets: dict[float, np.ndarray] = {}

    def units(self, steps: int) -> int:
        """The units composed after ``steps`` steps (every epoch begun counts whole)."""
        return -(-int(steps) // self._per_unit)

    def rdp(self, steps: int) -> np.ndarray:
        """The RDP curve (one value per order) after ``steps`` steps, rounded up.

        ``units * r`` is one IEEE multiplication of non-negative floats, bounded above by the next
        float (``up_array``; ``inf`` stays ``inf``), while ``units`` is a float exactly (at most
        ``2^53``); past that, each product is exact (an integer times a rational) and rounded up
        (an adversarial review found ``float(units)`` rounding below the count there)."""
        units = self.units(steps)
        if units > 2**53:
            from fractions import Fraction

            return np.array([round_up(units * Fraction(float(r))) if math.isfinite(r) else math.inf for r in self.unit_rdp])
        with np.errstate(over="ignore"):
            return up_array(float(units) * self.unit_rdp)

    def epsilon(self, steps: int, delta: float) -> float:
        """Proven epsilon at ``delta`` after ``steps`` steps (the conversion's order-only part cached per delta)."""
        offsets = self._offsets.get(delta)
        if offsets is None:
            offsets = self._offsets[delta] = conversion_offsets(self.orders, delta)
        return rdp_to_epsilon(self.orders, self.rdp(steps), delta, offsets)


def _run_steps(n: int, batch_size: int, epochs: float, sampling: str) -> int:
    steps = dp_sgd_steps(n, batch_size, epochs)
    return steps if sampling == "poisson" else math.ceil(epochs) * (int(n) // int(batch_size))


def dp_sgd_epsilon(n: int, batch_size: int, noise_multiplier: float, epochs: float, delta: float,
                   sampling: str = "poisson") -> dict[str, Any]:
    """Proven ``(epsilon, delta)`` of DP-SGD with lattice noise (module docstring): RDP, converted.

    ``epsilon`` and ``epsilon_rdp`` are the same proven figure; ``delta`` is the accountant's
    (the sampler's statistical distance is added by the trainer, which knows the coordinates).
    """
    delta = validation.probability("delta", delta)
    steps = _run_steps(n, batch_size, epochs, sampling)
    curve = DpSgdRdpCurve(n, batch_size, noise_multiplier, sampling)
    epsilon = curve.epsilon(steps, delta)
    return {"epsilon": epsilon, "epsilon_rdp": epsilon, "delta": float(delta), "steps": steps, "sampling": sampling,
            "noise_multiplier": float(noise_multiplier), "sampling_probability": curve.sampling_probability,
            "accountant": "rdp (lattice Gaussian: CKS 2020 base, Zhu-Wang 2019 subsampling)"}


def dp_sgd_noise_multiplier(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                            sampling: str = "poisson") -> float:
    """The smallest allowed noise multiplier (to 1e-3 relative) whose proven epsilon is at most the target."""
    return dp_sgd_calibration(target_epsilon, delta, n, batch_size, epochs, sampling)["noise_multiplier"]


def dp_sgd_calibration(target_epsilon: float, delta: float, n: int, batch_size: int, epochs: float,
                       sampling: str = "poisson") -> dict[str, Any]:
    """:func:`dp_sgd_epsilon`'s report at the smallest allowed noise multiplier (to 1e-3 relative) whose
    proven epsilon is at most ``target_epsilon``, with ``target_epsilon`` and ``at_smallest_allowed`` added.

    The search is a bisection in ``log sigma`` on the same :func:`dp_sgd_epsilon` that reports
    the answer, and the answer is the upper end of the final bracket, whose epsilon was
    evaluated and is at most the target: the reported figure never exceeds it. When even
    ``MIN_NOISE_MULTIPLIER`` meets the target that limit is returned; when even
    ``MAX_NOISE_MULTIPLIER`` does not, :class:`AccountingError` names the figure it gives.
    """
    target_epsilon = validation.positive_finite("target_epsilon", target_epsilon)
    delta = validation.probability("delta", delta)
    steps = _run_steps(n, batch_size, epochs, sampling)
    smallest, largest = validation.MIN_NOISE_MULTIPLIER, validation.MAX_NOISE_MULTIPLIER

    @functools.cache
    def report(sigma: float) -> dict[str, Any]:
        return dp_sgd_epsilon(n, batch_size, sigma, epochs, delta, sampling)

    def done(found: dict[str, Any]) -> dict[str, Any]:
        return {**found, "target_epsilon": target_epsilon, "at_smallest_allowed": found["noise_multiplier"] <= smallest}

    if report(smallest)["epsilon"] <= target_epsilon:
        return done(report(smallest))
    # bracket upward by factors of 4 (epsilon falls as sigma grows)
    low, high = smallest, min(largest, 1.0)
    while report(high)["epsilon"] > target_epsilon:
        if high >= largest:
            raise AccountingError(
                f"epsilon {target_epsilon:g} at delta {delta:g} cannot be met over {steps} steps: even the largest "
                f"allowed noise multiplier ({largest:g}) gives {report(high)['epsilon']:.3g}; use fewer epochs, a "
                "smaller batch, or a larger epsilon or delta")
        low, high = high, min(largest, high * 4.0)
    while high > low * 1.001:
        mid = math.sqrt(low * high)
        if report(mid)["epsilon"] <= target_epsilon:
            high = mid
        else:
            low = mid
    return done(report(high))
