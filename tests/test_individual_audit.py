"""Statistical audit of one individual-filter query: an individual at the edge of the box.

The filter charges the edge individual mu_i^2 = (c_i / sigma)^2 (Gaussian-DP form),
so it claims mu_i-GDP for them. We release the query 50,000 times on the data with
and without them (the pre-noise totals come from the filter, the noise from
OpenDP's Gaussian mechanism, exactly as the filter releases it), run the optimal
threshold test fixed in advance, and turn its error rates into an epsilon lower
bound at delta = 0.1 with 99.9% Clopper-Pearson intervals. The bound must stay below
the claimed epsilon, and it must exceed the epsilon claimed if the charge were halved,
so the test fails if the filter under-charged by that much.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
from scipy.stats import beta

import opendp_hybridad as hd
from opendp_hybridad.individual import IndividualFilter, gdp_epsilon

RUNS, DELTA, Z, SIGMA = 50_000, 0.1, 2.85, 0.5


def _epsilon_lower_bound(world_with: np.ndarray, world_without: np.ndarray, threshold: float) -> float:
    tp = int((world_with > threshold).sum())
    fp = int((world_without > threshold).sum())
    tpr_low = beta.ppf(0.0005, tp, RUNS - tp + 1) if tp > 0 else 0.0
    fpr_high = beta.ppf(1 - 0.0005, fp + 1, RUNS - fp)
    if tpr_low <= DELTA:
        return 0.0
    return math.log((tpr_low - DELTA) / fpr_high)


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
    charge = flt.ledger.spent(flt.ledger.hash_ids(pd.Series([99])))[0]
    exact_without = IndividualFilter(others, schema, kind="gdp", budget=3.0, id_column="person").exact_sum_vector([f], SIGMA)[0]
    mu_claimed = math.sqrt(charge)
    assert 2.0 <= mu_claimed <= 2.0 * (1 + 1e-5)  # c = 1 at the edge, sigma = 0.5

    noise = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)) >> dp.m.then_gaussian(SIGMA)
    world_with = np.array(noise([exact_with] * RUNS))
    world_without = np.array(noise([exact_without] * RUNS))
    threshold = exact_without + Z * SIGMA  # fixed before looking at the samples
    lower = _epsilon_lower_bound(world_with, world_without, threshold)

    assert lower <= gdp_epsilon(mu_claimed, DELTA)
    assert lower > gdp_epsilon(mu_claimed / math.sqrt(2), DELTA), "a halved charge would go unnoticed"
