"""The PLD's size is bounded before it runs (opendp_hybridad.pld_size), through compose_epsilon.

The events are the continuous-Gaussian shapes of DP-SGD runs (``reference_event``), the largest
dp-accounting events users compose; DP-SGD's own guarantee is its proven RDP (tests/dpsgd/).
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import rdp
from helpers.hang_guard import finishes

from opendp_hybridad.accounting import RDP_ORDERS, compose_epsilon
from opendp_hybridad.dpsgd.accounting import reference_event


def _report(n: int, batch: int, sigma: float, epochs: float, delta: float, sampling: str = "poisson") -> dict:
    event = reference_event(n, batch, sigma, epochs, sampling)
    report = compose_epsilon([event], delta)
    steps = event.count if sampling == "poisson" else None
    discretization = report["pld_discretization"]
    return {**report, "steps": steps, "pld_discretization": None if discretization != discretization else discretization,
            "sampling_probability": getattr(event.event, "sampling_probability", None)}


def test_dp_sgd_accounting_memory_does_not_grow_with_steps():
    """Issue 11: one event composed ``steps`` times (not a list of events); 1e7 steps stay in a few MiB."""
    import logging
    import tracemalloc

    event = reference_event(100000, 100, 2.0, 10000)
    assert isinstance(event, dp_accounting.SelfComposedDpEvent) and event.count == 10**7
    assert isinstance(event.event, dp_accounting.PoissonSampledDpEvent)
    logging.disable(logging.WARNING)
    try:
        tracemalloc.start()
        report = finishes(lambda: _report(100000, 100, 2.0, 10000, 1e-5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert report["steps"] == 10**7 and math.isfinite(report["epsilon_pld"])
    assert peak < 64 * 2**20  # measured: about 12 MiB (1e5 steps: about 1 MiB)


# -- the PLD's size is bounded before it runs (opendp_hybridad.pld_size) ------------------------
def _gaussian_epsilon(mu, delta) -> float:
    """Exact epsilon of a Gaussian mechanism with mu = sensitivity / noise (T of them: mu = sqrt(T) / sigma):
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Balle & Wang 2018), solved at 60 digits."""
    import mpmath

    with mpmath.workdps(60):
        mu, delta = mpmath.mpf(mu), mpmath.mpf(delta)

        def profile(eps):
            return mpmath.ncdf(-eps / mu + mu / 2) - mpmath.exp(eps) * mpmath.ncdf(-eps / mu - mu / 2)

        low, high = mpmath.mpf(0), mu * mu / 2 + 40 * mu + 40
        assert profile(low) > delta > profile(high)
        for _ in range(300):  # bisection on a decreasing profile; returns an epsilon whose delta is below the target
            mid = (low + high) / 2
            low, high = (mid, high) if profile(mid) > delta else (low, mid)
        return float(high)


@pytest.mark.parametrize(("sigma", "steps"), [(1e-3, 10), (0.02, 3), (1.0, 10)])
def test_full_batch_pld_is_an_upper_bound_on_the_exact_gaussian_epsilon(sigma, steps):
    """q = 1 (batch = n): T Gaussian steps are one Gaussian with mu = sqrt(T) / sigma, whose privacy profile is
    known in closed form. The coarsened PLD (small sigma) and the default one (sigma 1) are both above it."""
    report = _report(100, 100, sigma, steps, 1e-5)
    assert report["sampling_probability"] == 1.0 and report["steps"] == steps
    exact = _gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5)
    if sigma < 0.1:
        assert report["pld_discretization"] > 1e-4  # the size check fired
    else:
        assert report["pld_discretization"] == 1e-4
    assert report["epsilon_pld"] >= exact
    assert report["epsilon_rdp"] >= exact
    # and still useful: within dp-accounting's own slack (about 1 nat from its tail truncation)
    assert report["epsilon_pld"] <= exact * 1.001 + 2


def test_shuffled_pld_is_an_upper_bound_on_the_exact_gaussian_epsilon():
    # shuffling: one Gaussian of multiplier sigma / 2 per epoch, so mu = 2 sqrt(epochs) / sigma
    report = _report(100, 10, 2e-3, 3, 1e-6, sampling="shuffle")
    assert report["pld_discretization"] > 1e-4
    exact = _gaussian_epsilon(2 * math.sqrt(3) / 2e-3, 1e-6)
    assert exact <= report["epsilon_pld"] <= exact * 1.001 + 2


def test_a_tiny_noise_multiplier_is_accounted_in_bounded_memory():
    """sigma = 0.01 at q = 0.01 over 1000 steps: the PLD at the default interval would hold ~2e10 points
    (this ran out of memory); the size check coarsens it. The RDP figure is unchanged by it."""
    import tracemalloc

    from opendp_hybridad import pld_size

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(0.01)), 1000)
    widths = pld_size.pld_widths(pld_size.gaussian_terms(event))
    assert widths.points(1e-4) > 10**9  # what the default interval would have held
    tracemalloc.start()
    try:
        report = _report(10000, 100, 0.01, 10, 1e-5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["steps"] == 1000 and report["pld_discretization"] > 1e-4
    assert widths.points(report["pld_discretization"]) <= pld_size.MAX_COMPOSED_POINTS
    assert peak < 2**30  # measured: about 300 MiB
    r = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    r.compose(event)
    assert report["epsilon_rdp"] == pytest.approx(r.get_epsilon(1e-5), rel=1e-12)
    assert math.isfinite(report["epsilon_pld"]) and report["epsilon_pld"] <= report["epsilon_rdp"]


def test_a_coarsened_subsampled_pld_stays_above_the_optimistic_estimate(monkeypatch):
    """Subsampled: no closed form, but dp-accounting's optimistic PLD (pessimistic_estimate=False) at the fine
    default interval is a lower estimate of the true epsilon; the coarsened pessimistic one must lie above it."""
    from dp_accounting.pld import privacy_loss_distribution

    from opendp_hybridad import pld_size

    monkeypatch.setattr(pld_size, "MAX_COMPOSED_POINTS", 2**12)  # forces coarsening at an ordinary sigma
    monkeypatch.setattr(pld_size, "MAX_SUBSAMPLED_STEP_POINTS", 2**10)
    report = _report(1000, 10, 0.8, 2, 1e-5)
    assert report["steps"] == 200 and report["pld_discretization"] > 1e-3
    optimistic = privacy_loss_distribution.from_gaussian_mechanism(
        0.8, sampling_prob=0.01, pessimistic_estimate=False, value_discretization_interval=1e-4).self_compose(200)
    lower = optimistic.get_epsilon_for_delta(1e-5)
    assert lower <= report["epsilon_pld"]
    assert report["epsilon_pld"] <= report["epsilon_rdp"] * 1.2  # coarse, not useless


@pytest.mark.parametrize(("sigma", "q", "count"), [(0.05, 0.01, 1000), (0.05, 1.0, 10), (1.0, 0.1, 10**5), (1.1, 0.008, 2494)])
def test_the_size_estimate_matches_what_the_accountant_allocates(sigma, q, count):
    """The estimate (before any PLD is built) against the PLD dp-accounting actually builds, at an interval
    where that is about 5e5 points: within a factor of 2 (its own float noise in the far tail can widen
    the composed support by up to about 1.7 at fine intervals, hence the budget's slack)."""
    from dp_accounting.pld import privacy_loss_distribution

    from opendp_hybridad import pld_size

    widths = pld_size.pld_widths(pld_size.GaussianTerms(sigma, q, count))
    interval = max(widths.step, widths.composed) / 5e5
    step = privacy_loss_distribution.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=interval)
    composed = step.self_compose(count)
    actual = max(pmf.size for pld_ in (step, composed) for pmf in (pld_._pmf_remove, pld_._pmf_add))
    assert 0.5 <= widths.points(interval) / actual <= 2


def test_ordinary_runs_keep_the_default_interval():
    from opendp_hybridad import pld_size

    for n, batch, sigma, epochs in [(3989, 32, 1.1, 20), (60000, 256, 0.8, 10), (100000, 100, 2.0, 10000)]:
        assert pld_size.pld_discretization(reference_event(n, batch, sigma, epochs)) == 1e-4


# -- runs no PLD discretisation can hold: RDP alone, said so, never a hang ----------------------
def test_a_run_too_large_for_any_pld_reports_rdp_and_says_why():
    """1e8 steps at q = 1e-4: dp-accounting keeps the tiny step sparse and computes size**1e8 as a Python
    integer (old code: no answer within minutes); made dense it would need ~8.5e7 points. The PLD is not
    run: its figure is inf (vacuous, as compose_epsilon reports an event PLD cannot account), with a note."""
    report = _report(10**6, 100, 5.0, 10000, 1e-5)
    assert report["steps"] == 10**8
    assert report["epsilon_pld"] == math.inf and report["pld_discretization"] is None
    assert "PLD" in report["pld_note"] and "\n" not in report["pld_note"]
    assert 0 < report["epsilon_rdp"] < 1  # the RDP figure stands
    # a tiny multiplier over many shuffled epochs: the interval would have to pass exp's range
    shuffled = _report(100, 10, 1e-3, 1000, 1e-5, sampling="shuffle")
    assert shuffled["epsilon_pld"] == math.inf and "pld_note" in shuffled and math.isfinite(shuffled["epsilon_rdp"])


def test_a_long_sparse_run_is_made_dense_rather_than_left_to_the_integer_power():
    """1e7 steps at q = 5e-4: at 1e-4 the step has ~700 points (sparse) and size**1e7 takes minutes (old code:
    over 60 s); a finer interval makes it dense, which only tightens the figure."""
    from opendp_hybridad import pld_size

    report = _report(100000, 50, 2.0, 5000, 1e-5)
    assert report["steps"] == 10**7
    assert report["pld_discretization"] < 1e-4
    event = reference_event(100000, 50, 2.0, 5000)
    widths = pld_size.pld_widths(pld_size.gaussian_terms(event))
    assert widths.step / report["pld_discretization"] > 1000  # dense
    assert report["epsilon_pld"] <= report["epsilon_rdp"]


def test_numerically_negative_renyi_divergences_give_no_zero_epsilon(caplog):
    """At sigma 1e6 over 1e8 steps dp-accounting's RDP goes negative at some orders and it would report
    epsilon 0 there (logging one warning per order); that is no proven bound: reported as inf, quietly."""
    import logging

    with caplog.at_level(logging.WARNING):
        report = _report(10**6, 100, 1e6, 10000, 1e-5)
    assert report["epsilon_rdp"] == math.inf
    assert not [r for r in caplog.records if "Renyi" in r.getMessage()]
