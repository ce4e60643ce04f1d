"""DP-SGD accounting: dp-accounting's figures, calibration, shuffling, and the CLI."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from opendp_hybridad.accounting import AccountingError, dp_sgd_epsilon, dp_sgd_noise_multiplier
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
