"""The private mean (private sum over a private count) reads its frame once per release.

The frame is read (membership checked, columns converted) by a record-wise transformation with
stability ``d_out = d_in`` in front of the composition of the private sum and the private count,
which both read the :class:`MemberFrame`. Checked here: one read and one kernel evaluation per
release; the measurement's map and accounting record are those of the composition of the two
measurements built on the frame domain itself (the construction before), bit for bit; the
pre-noise sum and count equal the ones on the frame and a brute-force numpy/fsum reference.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad.accounting import accounting_of
from opendp_hybridad.analysis.rounding import add_down, mul_down
from opendp_hybridad.compile.kernel import Kernel
from opendp_hybridad.frame import domain as domain_module
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of, sum_relaxation
from opendp_hybridad.frame.domain import MemberFrame, check_frame, make_member_domain, prepare_frame, read_member
from opendp_hybridad.frame.measurements import (
    _read_once,
    make_count_of,
    make_private_count,
    make_private_mean,
    make_private_sum,
)

SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=30), weight=hd.Field(40, 200, missing="drop"),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7), sex=hd.Field(0, 1))
A, W, H, S = SCHEMA.symbols()
BMI = SCHEMA.function(A * W / H**2 + S)


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.uniform(10, 95, n), "weight": rng.uniform(35, 210, n),
                          "height": rng.uniform(1.3, 2.3, n), "sex": rng.integers(0, 2, n)})  # an integer column
    frame.loc[rng.random(n) < 0.1, "age"] = np.nan
    frame.loc[rng.random(n) < 0.1, "weight"] = np.nan
    frame.loc[rng.random(n) < 0.03, "height"] = -np.inf
    return frame


def test_one_read_and_one_kernel_evaluation_per_release(monkeypatch):
    frame = _frame(1000)
    measurement = make_private_mean(SCHEMA, BMI, epsilon=1.0)
    columns_read, kernel_runs = [], []
    real_column, real_value = domain_module._pandas_column, Kernel.value_clamped
    monkeypatch.setattr(domain_module, "_pandas_column", lambda *a: columns_read.append(a[1]) or real_column(*a))
    monkeypatch.setattr(Kernel, "value_clamped", lambda self, *a: kernel_runs.append(1) or real_value(self, *a))
    value = measurement(frame)
    assert sorted(columns_read) == sorted(SCHEMA.names) and kernel_runs == [1]
    assert BMI.range().lower <= value <= BMI.range().upper
    # the construction before: the sum and the count each read the frame
    columns_read.clear()
    dp.c.make_composition([make_private_sum(SCHEMA, BMI, epsilon=0.5), make_private_count(SCHEMA, epsilon=0.5)])(frame)
    assert sorted(columns_read) == sorted(SCHEMA.names * 2)


@pytest.mark.parametrize("metric", [dp.symmetric_distance(), dp.change_one_distance()], ids=["add-remove", "replace"])
@pytest.mark.parametrize("budget", [{"epsilon": 1.3}, {"rho": 0.7}], ids=["laplace", "gaussian"])
@pytest.mark.parametrize("d_in", [1, 3])
def test_map_and_accounting_are_the_composition_of_the_parts_on_the_frame(metric, budget, d_in):
    domain = make_frame_domain(SCHEMA, size_limit=10**7)
    share = 0.3
    new = make_private_mean(domain, BMI, metric, d_in=d_in, count_share=share, **budget)
    # built as before: the private sum and the private count on the frame domain, composed
    key, total = next(iter(budget.items()))
    count_budget = mul_down(total, share)
    sum_budget = add_down(total, -count_budget)
    old_sum = make_private_sum(domain, BMI, metric, d_in=d_in, **{key: sum_budget})
    old_count = make_private_count(domain, metric, d_in=d_in, **{key: count_budget})
    old = dp.c.make_composition([old_sum, old_count])
    for d in range(0, 25):
        assert new.map(d) == old.map(d)  # bit for bit
    record = accounting_of(new)
    assert record.parts == (accounting_of(old_sum), accounting_of(old_count))
    assert record.d_in == d_in and record.mechanism == "composition"
    assert new.input_domain == domain and new.input_metric == metric


def test_pre_noise_sum_and_count_are_those_on_the_frame_and_the_brute_force_ones():
    n = 5000
    frame = _frame(n, seed=3)
    domain = make_frame_domain(SCHEMA, size_limit=n)
    metric = dp.symmetric_distance()
    read = _read_once(domain, metric)
    member = read(frame)
    assert isinstance(member, MemberFrame) and read.map(4) == 4
    read_domain = read.output_domain
    on_member = make_sum_of(read_domain, metric, BMI)(member)
    on_frame = make_sum_of(domain, metric, BMI)(frame)
    assert on_member == on_frame  # the same arrays, the same kernel, the same summation
    assert make_count_of(read_domain, metric)(member) == make_count_of(domain, metric)(frame)
    # brute force: numpy on the policies written out by hand, math.fsum
    kept = frame["weight"].notna().to_numpy()
    age = np.clip(np.nan_to_num(frame["age"].to_numpy()[kept], nan=30.0), 18, 90)
    weight = np.clip(frame["weight"].to_numpy()[kept], 40, 200)
    height = np.clip(np.nan_to_num(frame["height"].to_numpy()[kept], nan=1.7, neginf=1.4), 1.4, 2.2)
    sex = np.clip(frame["sex"].to_numpy()[kept].astype(float), 0, 1)
    lo, hi = BMI.range().lower, BMI.range().upper
    values = np.clip(age * weight / height**2 + sex, lo, hi)
    assert make_count_of(domain, metric)(frame) == kept.sum() == prepare_frame(frame, domain).rows
    tolerance = sum_relaxation(n, max(abs(lo), abs(hi))) / 2 + n * 4 * np.finfo(float).eps * hi
    assert abs(on_member - math.fsum(values)) <= tolerance


def test_a_member_frame_is_read_for_one_domain_and_never_built_by_hand():
    frame = _frame(50)
    domain = make_frame_domain(SCHEMA)
    member = read_member(frame, domain)
    assert read_member(member, domain) is member
    check_frame(member, domain)  # read for this domain: a member
    other = make_frame_domain(SCHEMA, size_limit=10**6)
    with pytest.raises(hd.SchemaMismatchError, match="another frame domain"):
        check_frame(member, other)
    with pytest.raises(hd.DeclarationError, match="read_member"):
        MemberFrame(member.domain, member.columns, member.rows, member.kept)
    shared = make_member_domain(domain)
    assert shared.member(member) and not shared.member(frame) and not shared.member(read_member(frame, other))
    assert member.kept_count == int(frame["weight"].notna().sum())
    no_drop = hd.Schema(x=hd.Field(0, 1, missing="impute", impute=0.5))
    assert read_member(pd.DataFrame({"x": [0.5, np.nan, 2.0]}), no_drop).kept is None


def test_a_member_frame_cannot_be_edited_after_the_membership_check():
    # audit: columns (a dict) and kept (an array) were mutable, so 50 rows passed as a member of a
    # domain of at most 10 once the check was done, and the mean released their values
    frame, metric = _frame(10, seed=5), dp.symmetric_distance()
    domain = make_frame_domain(SCHEMA, size_limit=10)
    read = _read_once(domain, metric)
    member = read(frame)
    before = (make_sum_of(read.output_domain, metric, BMI)(member), make_count_of(read.output_domain, metric)(member))
    with pytest.raises(TypeError):
        member.columns["age"] = np.full(50, 90.0)
    with pytest.raises(TypeError):
        del member.columns["age"]
    for name in SCHEMA.names:
        with pytest.raises(ValueError, match="read-only"):
            member.columns[name][0] = 90.0
        with pytest.raises(ValueError):
            member.columns[name].resize(50, refcheck=False)
    with pytest.raises(ValueError, match="read-only"):
        member.kept[:] = True
    with pytest.raises(dataclasses.FrozenInstanceError):
        member.kept = np.ones(50, dtype=bool)
    assert (make_sum_of(read.output_domain, metric, BMI)(member), make_count_of(read.output_domain, metric)(member)) == before
    assert before == (make_sum_of(domain, metric, BMI)(frame), make_count_of(domain, metric)(frame))
    assert make_private_mean(domain, BMI, epsilon=1.0)(frame) is not None
    # the frame read stays as writeable as it was: read-only views, never its own flags
    own = np.array([20.0, 30.0])
    plain = pd.DataFrame({"age": own, "weight": [50.0, np.nan], "height": [1.5, 1.6], "sex": [0, 1]}, copy=False)
    read_member(plain, domain)
    assert own.flags.writeable
    own[0] = 25.0


def test_non_members_are_refused_before_any_value_by_the_mean():
    measurement = make_private_mean(make_frame_domain(SCHEMA, size_limit=10), BMI, epsilon=1.0)
    with pytest.raises(dp.OpenDPException, match="size limit"):
        measurement(_frame(11))
    with pytest.raises(dp.OpenDPException, match="column 'sex' is missing"):
        measurement(_frame(5).drop(columns="sex"))
    with pytest.raises(hd.SchemaMismatchError, match="column 'sex' is missing"):
        hd.release(measurement, _frame(5).drop(columns="sex"))
    with pytest.raises(hd.DeclarationError, match="feature-level"):
        make_private_mean(SCHEMA, BMI, hd.frame.feature_distance(2), epsilon=1.0, d_in=0.1)
