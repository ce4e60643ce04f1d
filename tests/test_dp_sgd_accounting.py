"""DP-SGD accounting: dp-accounting's figures, calibration, shuffling, and the CLI."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from opendp_hybridad.accounting import (
    RDP_ORDERS,
    AccountingError,
    dp_sgd_calibration,
    dp_sgd_epsilon,
    dp_sgd_event,
    dp_sgd_noise_multiplier,
)
from opendp_hybridad.cli import main


def test_matches_dp_accounting_by_hand_for_the_tutorial_settings():
    got = dp_sgd_epsilon(3989, 32, 1.1, 20, 1e-6)
    steps = math.ceil(20 * 3989 / 32)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(32 / 3989, dp_accounting.GaussianDpEvent(1.1)), steps)
    r = rdp.RdpAccountant()
    r.compose(event)
    p = pld.PLDAccountant()
    p.compose(event)
    assert got["steps"] == steps == 2494
    assert got["epsilon_rdp"] == pytest.approx(r.get_epsilon(1e-6), rel=1e-3)
    assert got["epsilon_pld"] == pytest.approx(p.get_epsilon(1e-6), rel=1e-9)
    assert got["epsilon_rdp"] == pytest.approx(2.37, abs=0.01)
    assert got["epsilon_pld"] == pytest.approx(2.17, abs=0.01)


@pytest.mark.parametrize("target", [0.5, 1.0, 3.0])
def test_calibrated_noise_meets_the_target_and_is_not_wasteful(target):
    sigma = dp_sgd_noise_multiplier(target, 1e-5, 3989, 32, 5)
    assert dp_sgd_epsilon(3989, 32, sigma, 5, 1e-5)["epsilon_pld"] <= target * (1 + 1e-3)
    assert dp_sgd_epsilon(3989, 32, sigma * 0.98, 5, 1e-5)["epsilon_pld"] > target


def test_impossible_targets_say_what_would_work():
    with pytest.raises(AccountingError, match="fewer epochs"):
        dp_sgd_noise_multiplier(1e-3, 1e-9, 3989, 32, 2000)
    with pytest.raises(AccountingError, match="larger than the data"):
        dp_sgd_epsilon(30, 32, 1.0, 1, 1e-6)


def test_shuffling_is_accounted_without_amplification():
    shuffled = dp_sgd_epsilon(3989, 32, 1.1, 20, 1e-6, sampling="shuffle")
    poisson = dp_sgd_epsilon(3989, 32, 1.1, 20, 1e-6)
    # 20 epochs, each one Gaussian with multiplier 1.1 / 2 (replace-one doubles the sensitivity)
    p = pld.PLDAccountant()
    p.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.55), 20))
    assert shuffled["epsilon_pld"] == pytest.approx(p.get_epsilon(1e-6), rel=1e-9)
    assert shuffled["epsilon_pld"] > poisson["epsilon_pld"]


def test_cli_reports_both_accountants(capsys):
    argv = ["privacy", "dp-sgd", "--n", "3989", "--batch-size", "32", "--noise-multiplier", "1.1",
            "--epochs", "20", "--delta", "1e-6", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epsilon_rdp"] == pytest.approx(2.37, abs=0.01)
    assert report["epsilon_pld"] == pytest.approx(2.17, abs=0.01)
    assert main(argv[:-1]) == 0
    assert "RDP" in capsys.readouterr().out


def test_dp_sgd_accounting_memory_does_not_grow_with_steps():
    """Issue 11: one event composed ``steps`` times (not a list of events); 1e7 steps stay in a few MiB."""
    import logging
    import time
    import tracemalloc

    from opendp_hybridad.accounting import dp_sgd_event

    event = dp_sgd_event(100000, 100, 2.0, 10000)
    assert isinstance(event, dp_accounting.SelfComposedDpEvent) and event.count == 10**7
    assert isinstance(event.event, dp_accounting.PoissonSampledDpEvent)
    logging.disable(logging.WARNING)
    try:
        tracemalloc.start()
        start = time.perf_counter()
        report = dp_sgd_epsilon(100000, 100, 2.0, 10000, 1e-5)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert report["steps"] == 10**7 and math.isfinite(report["epsilon_pld"])
    assert peak < 64 * 2**20  # measured: about 12 MiB (1e5 steps: about 1 MiB)
    assert elapsed < 60


def test_more_than_1e8_steps_are_refused_before_accounting():
    from opendp_hybridad.errors import DeclarationError

    with pytest.raises(DeclarationError, match="steps"):
        dp_sgd_epsilon(10**12, 10, 1.0, 1, 1e-5)


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
    report = dp_sgd_epsilon(100, 100, sigma, steps, 1e-5)
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
    report = dp_sgd_epsilon(100, 10, 2e-3, 3, 1e-6, sampling="shuffle")
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
        report = dp_sgd_epsilon(10000, 100, 0.01, 10, 1e-5)
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
    report = dp_sgd_epsilon(1000, 10, 0.8, 2, 1e-5)
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
        assert pld_size.pld_discretization(dp_sgd_event(n, batch, sigma, epochs)) == 1e-4


# -- calibration within the allowed multipliers -------------------------------------------------
def test_a_target_met_at_the_smallest_allowed_multiplier_returns_it():
    """Old code: 'cannot be met ... even noise multiplier 1000 gives 0.0035' for a target that every
    allowed multiplier meets."""
    from opendp_hybridad import validation

    report = dp_sgd_calibration(1e12, 1e-5, 60000, 256, 1)
    assert report["noise_multiplier"] == validation.MIN_NOISE_MULTIPLIER and report["at_smallest_allowed"]
    assert report["calibrated_by"] == "pld" and report["target_epsilon"] == 1e12
    assert report["epsilon_pld"] <= 1e12
    assert report == {**dp_sgd_epsilon(60000, 256, validation.MIN_NOISE_MULTIPLIER, 1, 1e-5),
                      "target_epsilon": 1e12, "calibrated_by": "pld", "at_smallest_allowed": True}


def test_a_large_target_below_the_old_bracket_is_calibrated():
    # RDP meets 1e6 only below the old bracket's lower end (0.05): old code refused it
    report = dp_sgd_calibration(1e6, 1e-5, 60000, 256, 1, accountant="rdp")
    sigma = report["noise_multiplier"]
    assert 1e-3 < sigma < 0.05 and not report["at_smallest_allowed"]
    assert report["epsilon_rdp"] <= 1e6
    assert dp_sgd_epsilon(60000, 256, sigma / 1.01, 1, 1e-5)["epsilon_rdp"] > 1e6  # the smallest, to 1e-3 relative
    # by PLD (the default) the multiplier is RDP's answer, kept below 0.3 and verified by PLD
    by_pld = dp_sgd_calibration(1e6, 1e-5, 60000, 256, 1)
    assert by_pld["noise_multiplier"] <= sigma * 1.001 and by_pld["epsilon_pld"] <= 1e6


def test_a_target_below_rdps_floor_is_calibrated_by_pld():
    """delta 1e-9 over 249313 steps: RDP cannot go below about 0.0125 at any allowed multiplier (its order grid),
    PLD can; old code searched RDP only (up to 1000) and refused."""
    report = dp_sgd_calibration(0.01, 1e-9, 3989, 32, 2000)
    sigma = report["noise_multiplier"]
    assert report["epsilon_pld"] <= 0.01 < report["epsilon_rdp"]
    assert dp_sgd_epsilon(3989, 32, sigma / 1.01, 2000, 1e-9)["epsilon_pld"] > 0.01


def test_unreachable_targets_name_the_limit_that_stops_them():
    # PLD's figure still falls with more noise: the largest allowed multiplier stops it
    with pytest.raises(AccountingError, match=r"largest allowed noise multiplier \(1e\+06\) gives") as info:
        dp_sgd_noise_multiplier(1e-3, 1e-9, 3989, 32, 2000)
    assert "fewer epochs" in str(info.value) and "\n" not in str(info.value)
    # RDP's figure has reached its floor: more noise would not help, and the message says so
    with pytest.raises(AccountingError, match="floor") as info:
        dp_sgd_noise_multiplier(0.01, 1e-9, 3989, 32, 2000, accountant="rdp")
    assert "RDP accountant" in str(info.value) and "larger epsilon or delta" in str(info.value)


# -- runs no PLD discretisation can hold: RDP alone, said so, never a hang ----------------------
def test_a_run_too_large_for_any_pld_reports_rdp_and_says_why():
    """1e8 steps at q = 1e-4: dp-accounting keeps the tiny step sparse and computes size**1e8 as a Python
    integer (old code: no answer within minutes); made dense it would need ~8.5e7 points. The PLD is not
    run: its figure is inf (vacuous, as compose_epsilon reports an event PLD cannot account), with a note."""
    report = dp_sgd_epsilon(10**6, 100, 5.0, 10000, 1e-5)
    assert report["steps"] == 10**8
    assert report["epsilon_pld"] == math.inf and report["pld_discretization"] is None
    assert "PLD" in report["pld_note"] and "\n" not in report["pld_note"]
    assert 0 < report["epsilon_rdp"] < 1  # the RDP figure stands
    # a tiny multiplier over many shuffled epochs: the interval would have to pass exp's range
    shuffled = dp_sgd_epsilon(100, 10, 1e-3, 1000, 1e-5, sampling="shuffle")
    assert shuffled["epsilon_pld"] == math.inf and "pld_note" in shuffled and math.isfinite(shuffled["epsilon_rdp"])


def test_a_long_sparse_run_is_made_dense_rather_than_left_to_the_integer_power():
    """1e7 steps at q = 5e-4: at 1e-4 the step has ~700 points (sparse) and size**1e7 takes minutes (old code:
    over 60 s); a finer interval makes it dense, which only tightens the figure."""
    from opendp_hybridad import pld_size

    report = dp_sgd_epsilon(100000, 50, 2.0, 5000, 1e-5)
    assert report["steps"] == 10**7
    assert report["pld_discretization"] < 1e-4
    event = dp_sgd_event(100000, 50, 2.0, 5000)
    widths = pld_size.pld_widths(pld_size.gaussian_terms(event))
    assert widths.step / report["pld_discretization"] > 1000  # dense
    assert report["epsilon_pld"] <= report["epsilon_rdp"]


def test_calibration_falls_back_to_rdp_where_no_pld_can_run():
    report = dp_sgd_calibration(1.0, 1e-5, 10**6, 100, 10000)
    assert report["calibrated_by"] == "rdp" and report["epsilon_rdp"] <= 1.0 < report["epsilon_pld"]
    assert "pld_note" in report
    assert dp_sgd_epsilon(10**6, 100, report["noise_multiplier"] / 1.01, 10000, 1e-5)["epsilon_rdp"] > 1.0


def test_numerically_negative_renyi_divergences_give_no_zero_epsilon(caplog):
    """At sigma 1e6 over 1e8 steps dp-accounting's RDP goes negative at some orders and it would report
    epsilon 0 there (logging one warning per order); that is no proven bound: reported as inf, quietly."""
    import logging

    with caplog.at_level(logging.WARNING):
        report = dp_sgd_epsilon(10**6, 100, 1e6, 10000, 1e-5)
    assert report["epsilon_rdp"] == math.inf
    assert not [r for r in caplog.records if "Renyi" in r.getMessage()]
