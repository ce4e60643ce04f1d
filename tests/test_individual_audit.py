"""Statistical audits of the individual filters under adding or removing one individual (the only relation accepted).

Each audit releases the filter's answers many times on the data with and without one
individual, runs a likelihood-ratio threshold test fixed in advance, and turns its
error rates into an epsilon lower bound at delta with 99.9% Clopper-Pearson
intervals. The bound must stay below the epsilon the filter claims, and a run with
the charges halved (``charges.losses`` monkeypatched) must push it above the claim:
the audit has the power to see an under-charge of that size.

1. One query, an individual at the edge of the box (OpenDP's Gaussian applied to the
   filter's pre-noise total, exactly as the filter releases it).
2. The worst-placed individual over a sequence of queries: the one with the largest
   contribution (``max_rows`` rows at the edge), admitted in the last query where their
   budget just suffices and refused afterwards; Gaussian-DP and Rényi forms.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from scipy.stats import beta

import opendp_hybridad as hd
from opendp_hybridad.analysis.rounding import mul_down
from opendp_hybridad.individual import IndividualFilter, charges, gdp_epsilon
from opendp_hybridad.individual.report import renyi_epsilon

RUNS, DELTA, Z, SIGMA = 50_000, 0.1, 2.85, 0.5


def _epsilon_lower_bound(world_with: np.ndarray, world_without: np.ndarray, threshold: float,
                         confidence: float = 0.001, delta: float = DELTA) -> float:
    """log((TPR_low - delta) / FPR_high) at one threshold; the two intervals together hold with ``1 - confidence``."""
    runs = world_with.size
    tp = int((world_with > threshold).sum())
    fp = int((world_without > threshold).sum())
    tpr_low = beta.ppf(confidence / 2, tp, runs - tp + 1) if tp > 0 else 0.0
    fpr_high = beta.ppf(1 - confidence / 2, fp + 1, runs - fp)
    if tpr_low <= delta:
        return 0.0
    return math.log((tpr_low - delta) / fpr_high)


def test_edge_individual_audit_stays_below_the_claim_and_catches_a_halved_charge():
    dp.enable_features("contrib")
    schema = hd.Schema(x=hd.Field(0, 1, missing="impute", impute=0))
    f = schema.function(schema.x)
    rng = np.random.default_rng(7)  # the data, not the noise
    others = pd.DataFrame({"x": rng.uniform(0, 0.5, 20), "person": np.arange(20)})
    target = pd.DataFrame({"x": [5.0], "person": [99]})  # outside the box: clamped to the edge, x = 1
    with_target = pd.concat([others, target], ignore_index=True)

    flt = IndividualFilter(with_target, schema, kind="gdp", budget=3.0, id_column="person")
    exact_with = flt.exact_sum_vector([f], SIGMA)[0]
    charge = flt.ledger.spent(flt.hashes_of([99]))[0]
    exact_without = IndividualFilter(others, schema, kind="gdp", budget=3.0, id_column="person").exact_sum_vector([f], SIGMA)[0]
    mu_claimed = math.sqrt(charge)
    assert 2.0 <= mu_claimed <= 2.0 * (1 + 1e-5)  # c = 1 at the edge, sigma = 0.5

    noise = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)) >> dp.m.then_gaussian(SIGMA)
    world_with = np.array(noise([exact_with] * RUNS))
    world_without = np.array(noise([exact_without] * RUNS))
    threshold = exact_without + Z * SIGMA  # fixed before looking at the samples
    lower = _epsilon_lower_bound(world_with, world_without, threshold)

    print(f"edge: claimed epsilon {gdp_epsilon(mu_claimed, DELTA):.3f} at delta {DELTA}; audit lower bound {lower:.3f}; "
          f"claim with a halved charge {gdp_epsilon(mu_claimed / math.sqrt(2), DELTA):.3f}")
    assert lower <= gdp_epsilon(mu_claimed, DELTA)
    assert lower > gdp_epsilon(mu_claimed / math.sqrt(2), DELTA), "a halved charge would go unnoticed"


# -- the worst-placed individual over a sequence of queries ----------------------------------------------
QUERIES = 4           # the target's budget covers the first two of these at the true charges
MAX_ROWS = 3          # the target has 5 rows at the edge: their first 3 count, contribution 3
SEQ_SIGMA = 3 / math.sqrt(2)  # each query's Gaussian-DP parameter for the target: 3 / sigma = sqrt(2)
SLACK = 1.02          # budget = 1.02 x what two queries cost the target (a third does not fit)
THRESHOLDS = (2.5, 3.0, 3.5)  # in units of the statistic's standard deviation, fixed in advance
SCHEMA = hd.Schema(x=hd.Field(0, 1, missing="impute", impute=0))
F = SCHEMA.function(SCHEMA.x)


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)  # the data, not the noise
    people = np.repeat(np.arange(30), rng.integers(1, 4, 30))
    others = pd.DataFrame({"x": rng.uniform(0, 0.5, people.size), "person": people})
    target = pd.DataFrame({"x": [5.0] * 5, "person": ["target"] * 5})  # clamped to x = 1
    return pd.concat([others, target], ignore_index=True), others


@pytest.fixture(scope="module")
def noise_pool() -> np.ndarray:
    """OpenDP Gaussian noise of scale SEQ_SIGMA, (QUERIES, RUNS): drawn once, shared by both worlds and every case.

    Each world's release is its pre-noise total plus these draws (OpenDP's mechanism
    adds the same noise to its input, rounding once; the extra rounding here is of
    order 1e-16 of the total, far below the thresholds' resolution). The two worlds
    share the draws; each error rate's interval is valid on its own, so the pair
    holds with the stated confidence by the union bound.
    """
    dp.enable_features("contrib")
    noise = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)) >> dp.m.then_gaussian(SEQ_SIGMA)
    return np.array(noise([0.0] * (QUERIES * RUNS))).reshape(QUERIES, RUNS)


def _totals(frame: pd.DataFrame, kind: str, budget: float, alpha: float | None) -> tuple[np.ndarray, IndividualFilter]:
    flt = IndividualFilter(frame, SCHEMA, kind=kind, budget=budget, alpha=alpha, id_column="person", max_rows=MAX_ROWS)
    return np.array([flt.exact_sum_vector([F], SEQ_SIGMA)[0] for _ in range(QUERIES)]), flt


def _budget_just_covering_two_queries(kind: str, alpha: float | None) -> float:
    """The per-individual budget at which the target's true charges fit twice but not three times."""
    frame, _ = _frames()
    probe = IndividualFilter(frame, SCHEMA, kind=kind, budget=1e6, alpha=alpha, id_column="person", max_rows=MAX_ROWS)
    recorded = []
    for _ in range(3):
        probe.exact_sum_vector([F], SEQ_SIGMA)
        recorded.append(float(probe.ledger.spent(probe.hashes_of(["target"]))[0]))
    stored = SLACK * recorded[1]
    assert recorded[1] <= stored < recorded[2]
    if kind == "renyi":
        return stored
    mu = math.sqrt(stored)
    while mul_down(mu, mu) < recorded[1]:
        mu = math.nextafter(mu, math.inf)
    return mu


@pytest.mark.parametrize("kind, alpha, delta", [("gdp", None, 0.1), ("renyi", 2.0, 0.2)])
@pytest.mark.parametrize("charge_factor, violation_expected", [
    (1.0, False),
    pytest.param(0.5, True, id="audit-power-halved-charges"),
])
def test_worst_placed_individual_audit(noise_pool, monkeypatch, kind, alpha, delta, charge_factor, violation_expected):
    budget = _budget_just_covering_two_queries(kind, alpha)
    claim = gdp_epsilon(budget, delta) if kind == "gdp" else renyi_epsilon(alpha, budget, delta)
    if charge_factor != 1.0:
        honest = charges.losses
        monkeypatch.setattr(charges, "losses", lambda s, factor: honest(s, factor) * charge_factor)
    frame_with, frame_without = _frames()
    with_totals, flt = _totals(frame_with, kind, budget, alpha)
    without_totals, _ = _totals(frame_without, kind, budget, alpha)
    d = with_totals - without_totals  # the target's part of each answer
    admitted = np.abs(d) > 1.5
    if violation_expected:
        assert admitted.all()  # under-charged, the target takes part in all four queries
    else:
        assert admitted.tolist() == [True, True, False, False]  # the budget just suffices for the second
        assert bool(flt.ledger.retired(flt.hashes_of(["target"]))[0])
    # the likelihood-ratio statistic for "with" against "without", standardised under "without"
    weights = d / SEQ_SIGMA**2
    scale = math.sqrt(float((d * d).sum())) / SEQ_SIGMA
    stat_with = ((with_totals - without_totals)[:, None] + noise_pool).T @ weights / scale
    stat_without = noise_pool.T @ weights / scale
    lower = max(_epsilon_lower_bound(stat_with, stat_without, t, 0.001 / len(THRESHOLDS), delta) for t in THRESHOLDS)
    print(f"{kind}: claimed epsilon {claim:.3f} at delta {delta}; audit lower bound {lower:.3f} "
          f"(charges x{charge_factor})")
    assert (lower > claim) == violation_expected
