"""A certificate says what it certifies, and every frame constructor checks it (issue 10 class 3).

The attack: a Lipschitz (or range) certificate of ``x`` handed to a sum of ``100 x``
gave a map 100 times too small. Each certificate now carries its subject (the
function's fingerprint: canonical expression, field names, bounds, missing-value
policies), its box, its quantity and its norm; a mismatch is a DeclarationError.
"""

from __future__ import annotations

import dataclasses
import math

import opendp.prelude as dp
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad.frame import feature_distance, make_frame_domain, make_row_map, make_sum_of

dp.enable_features("contrib", "honest-but-curious")

SCHEMA = hd.Schema(x=hd.Field(0, 1))
X = SCHEMA.function(SCHEMA.x)
HUNDRED_X = SCHEMA.function(100 * SCHEMA.x)


def _domain():
    return make_frame_domain(SCHEMA)


def test_a_lipschitz_certificate_of_x_is_refused_for_100x():
    with pytest.raises(hd.DeclarationError, match="another function"):
        make_sum_of(_domain(), feature_distance(2), HUNDRED_X, lipschitz_certificate=X.lipschitz(norm=2))


def test_a_range_certificate_of_x_is_refused_for_100x():
    with pytest.raises(hd.DeclarationError, match="another function"):
        make_sum_of(_domain(), dp.symmetric_distance(), HUNDRED_X, range_certificate=X.range())
    with pytest.raises(hd.DeclarationError, match="another function"):
        make_row_map(_domain(), dp.symmetric_distance(), HUNDRED_X, X.range())


def test_the_attack_would_have_shrunk_the_map_and_the_right_certificates_give_the_honest_one():
    honest = make_sum_of(_domain(), feature_distance(2), HUNDRED_X)
    given = make_sum_of(_domain(), feature_distance(2), HUNDRED_X, lipschitz_certificate=HUNDRED_X.lipschitz(norm=2),
                        range_certificate=HUNDRED_X.range())
    assert given.map(0.01) == honest.map(0.01) >= 1.0  # 100 * 0.01: the real change of one record
    before = pd.DataFrame({"x": [0.5]})
    after = pd.DataFrame({"x": [0.51]})
    assert abs(given(after) - given(before)) <= given.map(0.01)


def test_the_same_expression_over_another_box_is_another_subject():
    wider = hd.Schema(x=hd.Field(0, 2))
    with pytest.raises(hd.DeclarationError, match="another function"):
        make_sum_of(make_frame_domain(wider), dp.symmetric_distance(), wider.function(wider.x), range_certificate=X.range())
    # another missing-value policy is another subject too
    imputed = hd.Schema(x=hd.Field(0, 1, missing="impute", impute=0.5))
    assert imputed.function(imputed.x).fingerprint != X.fingerprint
    # the name is not part of the subject: the same function under another name is accepted
    renamed = SCHEMA.function(SCHEMA.x, name="renamed")
    assert renamed.fingerprint == X.fingerprint
    make_sum_of(_domain(), dp.symmetric_distance(), renamed, range_certificate=X.range())


def test_wrong_quantity_norm_or_unknown_subject_are_refused():
    partial = X.partial_bounds()["x"]
    with pytest.raises(hd.DeclarationError, match="not gradient_norm"):
        make_sum_of(_domain(), feature_distance(2), X, lipschitz_certificate=partial)
    with pytest.raises(hd.DeclarationError, match="norm"):
        make_sum_of(_domain(), feature_distance(2), X, lipschitz_certificate=X.lipschitz(norm=1))
    made_by_hand = dataclasses.replace(X.range(), subject=None)
    with pytest.raises(hd.DeclarationError, match="does not say which function"):
        make_sum_of(_domain(), dp.symmetric_distance(), X, range_certificate=made_by_hand)
    # a box that does not match the declared one
    moved = dataclasses.replace(X.range(), box={"x": (0.0, 0.5)})
    with pytest.raises(hd.DeclarationError, match="box"):
        make_sum_of(_domain(), dp.symmetric_distance(), X, range_certificate=moved)


def test_certificates_name_their_subject_and_quantity():
    assert X.range().subject == X.fingerprint
    lip = X.lipschitz(norm=math.inf)
    assert (lip.subject, lip.kind, lip.norm) == (X.fingerprint, "gradient_norm", math.inf)
    assert lip.certifies(X, "gradient_norm", math.inf) is lip
    assert X.partial_bounds()["x"].kind == "partial:x"
    assert X.analyse().range.subject == X.fingerprint


def test_the_mean_checks_its_range_certificate():
    from opendp_hybridad.frame import make_mean_of

    with pytest.raises(hd.DeclarationError, match="another function"):
        make_mean_of(make_frame_domain(SCHEMA, size=3), dp.change_one_distance(), HUNDRED_X, range_certificate=X.range())
