"""fit(progress=True) reads epsilon from one proven RDP curve computed once (issue 14): the same figure
dp_sgd_epsilon reports for the steps done so far, and never below the continuous Gaussian's RDP
(dp-accounting's RdpAccountant), which the lattice noise's add direction equals at integer orders."""
from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent, rdp

from opendp_hybridad.accounting import RDP_ORDERS
from opendp_hybridad.analysis.rounding import div_up
from opendp_hybridad.dpsgd.accounting import DpSgdRdpCurve, dp_sgd_epsilon


def _fresh(n: int, batch: int, sigma: float, units: int, delta: float, sampling: str, one_by_one: bool = False) -> float:
    """A fresh RdpAccountant with the same orders, composed ``units`` times (as one self-composed
    event, or one by one: a running sum, which may differ from it in the last bits)."""
    unit = (PoissonSampledDpEvent(div_up(batch, n), GaussianDpEvent(sigma)) if sampling == "poisson"
            else GaussianDpEvent(sigma / 2.0))
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))
    if one_by_one:
        for _ in range(units):
            accountant.compose(unit)
    else:
        accountant.compose(SelfComposedDpEvent(unit, units))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("n", "batch", "sigma", "delta"), [(60000, 256, 1.1, 1e-5), (1000, 50, 0.7, 1e-6), (200, 50, 3.0, 1e-5)])
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 333])
def test_cached_poisson_curve_matches_a_fresh_accountant(n, batch, sigma, delta, steps):
    curve = DpSgdRdpCurve(n, batch, sigma, "poisson")
    cached = curve.epsilon(steps, delta)
    # never below the continuous Gaussian's figure (integer orders: the add direction is it exactly)
    assert cached >= _fresh(n, batch, sigma, steps, delta, "poisson") * (1 - 1e-12)
    if steps <= 7:  # each compose recomputes the subsampled Gaussian's curve (tens of ms)
        assert cached >= _fresh(n, batch, sigma, steps, delta, "poisson", one_by_one=True) * (1 - 1e-12)
    # and exactly the epsilon the full accounting reports for that many steps
    assert cached == dp_sgd_epsilon(n, batch, sigma, steps * batch / n, delta)["epsilon"]


@pytest.mark.parametrize("steps", [1, 3, 4, 9, 10, 25])
def test_cached_shuffle_curve_counts_every_epoch_begun(steps):
    n, batch, sigma, delta = 100, 30, 2.0, 1e-5  # 3 batches an epoch
    curve = DpSgdRdpCurve(n, batch, sigma, "shuffle")
    epochs_begun = (steps - 1) // (n // batch) + 1
    assert curve.units(steps) == epochs_begun
    cached = curve.epsilon(steps, delta)
    # a shuffled epoch is exactly a Gaussian of multiplier sigma / 2: equal up to our outward rounding
    assert cached == pytest.approx(_fresh(n, batch, sigma, epochs_begun, delta, "shuffle"), rel=1e-12, abs=0)
    assert cached >= _fresh(n, batch, sigma, epochs_begun, delta, "shuffle", one_by_one=True) * (1 - 1e-12)


def test_cached_curve_is_nondecreasing_in_steps():
    curve = DpSgdRdpCurve(10000, 100, 0.9)
    eps = [curve.epsilon(t, 1e-5) for t in range(1, 400, 13)]
    assert all(a <= b for a, b in itertools.pairwise(eps)) and all(math.isfinite(e) for e in eps)


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
def test_progress_lines_are_nondecreasing_and_end_at_the_reports_rdp_figure(capsys, sampling):
    from opendp_hybridad.dpsgd import DPSGD
    from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy

    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (240, 3))
    y = (x[:, 0] > 0).astype(int)
    model = MLP([Dense(3, 2, 1.0, 1.0)], [Identity()], SoftmaxCrossEntropy(), input_bound=2.0)
    trainer = DPSGD(model, noise_multiplier=1.2, batch_size=40, epochs=2.5, learning_rate=0.3, sampling=sampling)
    _, history = trainer.fit(x, y, progress=True, seed=2)
    err = capsys.readouterr().err
    printed = [float(v) for v in re.findall(r"epsilon \(RDP\) ([0-9.]+)", err)]
    recorded = [r["epsilon_rdp"] for r in history.steps if "epsilon_rdp" in r]
    assert len(printed) == len(recorded) >= 2
    assert all(a <= b for a, b in itertools.pairwise(recorded))
    assert all(a <= b for a, b in itertools.pairwise(printed))
    report = trainer.epsilon(240)
    assert recorded[-1] == report["epsilon"]
    assert printed[-1] == float(f"{report['epsilon']:.3f}")
