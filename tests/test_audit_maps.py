"""Audit findings (adversarial review): minimal reproducers, kept as regression tests once fixed.

Attack scripts: bench/audits/attack_maps.py, bench/audits/attack_dpsgd_totality.py.
"""

from __future__ import annotations

import warnings
from decimal import Decimal

import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd
from opendp_hybridad.frame import feature_distance, make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of
from opendp_hybridad.nn import MLP, Dense, Identity, MeanSquaredError

dp.enable_features("contrib", "honest-but-curious")


# Audit finding (fixed): feature-level map assumes the float64 conversion of the data is non-
# expansive; an int64 column above 2^53 turns records 1 apart into records 2 apart
def test_feature_level_map_covers_int64_records_above_2_to_53():
    B = 2**53
    schema = hd.Schema(x=hd.Field(B, B + 8, dtype="int64"))
    (x,) = schema.symbols()
    t = make_sum_of(make_frame_domain(schema, size_limit=1), feature_distance(1), schema.function(x - B, name="shift"))
    a = pd.DataFrame({"x": np.array([B + 1], dtype=np.int64)})
    b = pd.DataFrame({"x": np.array([B + 2], dtype=np.int64)})  # moved by exactly 1
    assert abs(t(a) - t(b)) <= t.map(1.0)  # observed 2.0, map 1.0000000000000073


# Audit finding (fixed): feature-level map vs Decimal (object) columns: records 2e-7 apart convert to
# float64 records one ulp (1.0) apart; map(2e-7) = 2.0000000710542738e-07
def test_feature_level_map_covers_decimal_records_closer_than_an_ulp():
    B = 2**52
    schema = hd.Schema(x=hd.Field(B, B + 8))
    (x,) = schema.symbols()
    t = make_sum_of(make_frame_domain(schema, size_limit=1), feature_distance(1), schema.function(x - B, name="shift52"))
    da, db = Decimal(B) + Decimal("0.4999999"), Decimal(B) + Decimal("0.5000001")
    a = pd.DataFrame({"x": pd.Series([da], dtype=object)})
    b = pd.DataFrame({"x": pd.Series([db], dtype=object)})
    assert t.input_domain.member(a) and t.input_domain.member(b)
    assert abs(t(a) - t(b)) <= t.map(float(db - da))  # observed 1.0


def _dpsgd_release(data):
    model = MLP([Dense(2, 1, 1.0, 1.0)], [Identity()], MeanSquaredError(), input_bound=100.0, label_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=0.005, batch_size=1, epochs=2, learning_rate=5e152, mode="clip", clip=1.0,
                    noise="opendp")
    m = make_dp_sgd(trainer, 1, measure="renyi", max_size=1)
    assert m.input_domain.member(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m(data)
            return "released"
        except Exception:
            return "raised"


# Audit finding (fixed): make_dp_sgd (clip mode) is not total: unprojected weights pushed by one
# example's gradient make the per-step row error infinite and noise_function raises at step 2, while
# the empty neighbour releases
def test_make_dp_sgd_is_total_on_neighbours_in_clip_mode():
    one = (np.array([[100.0, 100.0]]), np.array([-1.0]))
    empty = (np.zeros((0, 2)), np.zeros(0))
    assert _dpsgd_release(empty) == "released"  # w.p. ~1 (noise norm ~0.01 lr, threshold ~0.06 lr)
    assert _dpsgd_release(one) == "released"    # raises w.p. ~1 (||W|| ~ lr ~ 5e152 > threshold)
