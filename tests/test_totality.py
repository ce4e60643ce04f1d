"""Totality between neighbours for every frame constructor (issue 10 class 4).

A release must not fail on one member of its declared domain and succeed on a
neighbouring member: the failure itself would leak. Every limit a constructor
enforces (``size_limit``, a public record count, a missing value in a ``"raise"``
field) is part of the frame domain, so for random neighbouring pairs that are
both members (rows at the box corners, outside the box, NaN under each policy,
frames at exactly ``size_limit`` and below) both release or neither does; and a
non-member is refused with this library's error, naming no value, before any
per-record value is computed.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
from helpers.totality import assert_total_on_neighbours

import opendp_hybridad as hd
from opendp_hybridad.frame import SchemaMismatchError, feature_distance, make_frame_domain

dp.enable_features("contrib", "honest-but-curious")

BOX = {"a": (0.0, 10.0), "b": (-1.0, 1.0), "c": (1.0, 2.0)}
NAMES = list(BOX)
#: a: records with a missing a are dropped; b: imputed; c: a missing c is not in the domain
SCHEMA = hd.Schema(a=hd.Field(0, 10, missing="drop"), b=hd.Field(-1, 1, missing="impute", impute=0),
                   c=hd.Field(1, 2))
NO_DROP = hd.Schema(a=hd.Field(0, 10, missing="impute", impute=5), b=hd.Field(-1, 1, missing="impute", impute=0),
                    c=hd.Field(1, 2))
LIMIT = 5  # size_limit of the domains below: frames of 0..5 rows are members, 6 rows are not
KEPT = 3  # the public kept size of the mean's domain
SECRET = 987654.321  # must never appear in an error message


def fn(schema, k=0):
    a, b, c = schema.symbols()
    return [schema.function(a * b / c), schema.function(hd.sigmoid(a - 5) + b), schema.function(a + 0 * c)][k]


# -- data --------------------------------------------------------------------------------
def value(rng, name, nan_rate):
    lo, hi = BOX[name]
    if rng.random() < nan_rate:
        return math.nan
    kind = rng.integers(0, 5)
    if kind == 0:
        return lo  # box corners
    if kind == 1:
        return hi
    if kind == 2:
        return float(rng.choice([lo - 1e3, hi + 1e3, -math.inf, math.inf, SECRET]))  # outside the box
    return float(rng.uniform(lo, hi))


def row(rng, *, kept=None):
    """A random record: NaN often in a and b, rarely in c (a non-member); ``kept`` forces a's missingness."""
    a = value(rng, "a", 0.25)
    if kept is True and math.isnan(a):
        a = value(rng, "a", 0.0)
    if kept is False:
        a = math.nan
    return (a, value(rng, "b", 0.25), value(rng, "c", 0.04))


def frame(rows):
    return pd.DataFrame(list(rows), columns=NAMES, dtype=float)


def rows_upto(rng, limit):
    return [row(rng) for _ in range(rng.integers(0, limit + 1))]


def add_remove(rng, rows):
    rows = list(rows)
    if rows and rng.random() < 0.5:
        rows.pop(int(rng.integers(0, len(rows))))
    else:
        rows.insert(int(rng.integers(0, len(rows) + 1)), row(rng))
    return rows


def replace(rng, rows):
    rows = list(rows)
    if rows:
        rows[int(rng.integers(0, len(rows)))] = row(rng)
    return rows


def move(rng, rows, q, r):
    """One record's present fields moved by at most r in the l_q norm (a missing value never moves)."""
    rows = list(rows)
    if not rows:
        return rows
    i = int(rng.integers(0, len(rows)))
    old = np.array(rows[i])
    direction = rng.normal(size=3) * ~np.isnan(old)
    norm = np.linalg.norm(direction, ord=q)
    step = direction * (r / norm) if norm > 0 else direction
    rows[i] = tuple(np.where(np.isnan(old), old, old + step))
    return rows


def pairs_for(relation, seed, count=60, limit=LIMIT):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        base = rows_upto(rng, limit)
        if relation == "add_remove":
            other = add_remove(rng, base)
        elif relation == "replace":
            other = replace(rng, base)
        else:
            other = move(rng, base, relation, float(rng.choice([0.0, 0.01, 1.0, 100.0])))
        out.append((frame(base), frame(other)))
    return out


def sized_pairs(seed, count=60):
    """Frames with exactly KEPT kept records (plus dropped ones), and neighbours that often keep the count."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        base = [row(rng, kept=True) for _ in range(KEPT)] + [row(rng, kept=False) for _ in range(rng.integers(0, LIMIT - KEPT + 1))]
        rng.shuffle(base)
        other = list(base)
        pick = rng.integers(0, 4)
        i = int(rng.integers(0, len(base)))
        if pick == 0:  # a record replaced by one with the same missingness: same kept count
            other[i] = row(rng, kept=not math.isnan(base[i][0]))
        elif pick == 1:  # a dropped record added or removed
            dropped = [j for j, r in enumerate(base) if math.isnan(r[0])]
            if dropped and rng.random() < 0.5:
                other.pop(dropped[0])
            else:
                other.insert(i, row(rng, kept=False))
        else:  # anything: often a non-member, skipped
            other = add_remove(rng, base) if pick == 2 else replace(rng, base)
        out.append((frame(base), frame(other)))
    return out


# -- the constructors ---------------------------------------------------------------------
def constructors():
    """(label, release, input domain, neighbour kind) for every frame constructor and relation."""
    from opendp_hybridad.frame import (
        make_count_of,
        make_mean_of,
        make_private_count,
        make_private_mean,
        make_private_sum,
        make_private_sum_vector,
        make_row_map,
        make_sum_of,
        make_sum_of_vector,
    )

    dom = make_frame_domain(SCHEMA, size_limit=LIMIT)
    nodrop = make_frame_domain(NO_DROP, size_limit=LIMIT)
    sized = make_frame_domain(SCHEMA, size_limit=LIMIT, size=KEPT)
    sym, one = dp.symmetric_distance(), dp.change_one_distance()
    f, g = fn(SCHEMA), fn(SCHEMA, 1)
    out = [
        ("sum add/remove", make_sum_of(dom, sym, f), "add_remove"),
        ("sum replace", make_sum_of(dom, one, f), "replace"),
        ("vector l1", make_sum_of_vector(dom, sym, [f, g], 1), "add_remove"),
        ("vector l2", make_sum_of_vector(dom, one, [f, g], 2), "replace"),
        ("count add/remove", make_count_of(dom, sym), "add_remove"),
        ("count replace", make_count_of(dom, one), "replace"),
        ("row map add/remove", make_row_map(dom, sym, f), "add_remove"),
        ("row map replace", make_row_map(nodrop, one, fn(NO_DROP)), "replace"),
        ("row map sized replace", make_row_map(sized, one, f), "sized"),
        ("mean add/remove", make_mean_of(sized, sym, f), "sized"),
        ("mean replace", make_mean_of(sized, one, f), "sized"),
        ("private sum", make_private_sum(dom, f, epsilon=1.0), "add_remove"),
        ("private sum rho", make_private_sum(dom, f, one, rho=0.5), "replace"),
        ("private vector", make_private_sum_vector(dom, [f, g], epsilon=1.0), "add_remove"),
        ("private count", make_private_count(dom, epsilon=1.0), "add_remove"),
        ("private mean public size", make_private_mean(SCHEMA, f, one, size=KEPT, size_limit=LIMIT, epsilon=1.0), "sized"),
        ("private mean private count", make_private_mean(dom, f, epsilon=1.0), "add_remove"),
    ]
    for q in (1, 2, math.inf):
        out.append((f"sum feature l{q}", make_sum_of(dom, feature_distance(q), f), q))
        out.append((f"private sum feature l{q}", make_private_sum(dom, f, feature_distance(q), epsilon=1.0, d_in=0.5), q))
    return out


@pytest.fixture(scope="module")
def releases():
    return constructors()


def _domain_of(release):
    return release.input_domain  # every constructor returns a plain OpenDP object


def test_every_constructor_is_total_on_neighbouring_members(releases):
    for k, (label, release, kind) in enumerate(releases):
        pairs = sized_pairs(k) if kind == "sized" else pairs_for(kind, seed=k)
        checked = assert_total_on_neighbours(release, pairs, is_member=_domain_of(release).member)
        assert checked >= 15, f"{label}: only {checked} member pairs were checked"


def test_frames_at_exactly_the_size_limit_and_below_release(releases):
    rng = np.random.default_rng(7)
    at_limit = frame([(*row(rng, kept=True)[:2], 1.5) for _ in range(LIMIT)])
    below = frame([(a, b, 1.5) for a, b, _ in at_limit.itertuples(index=False)][:-1])
    for label, release, kind in releases:
        if kind == "sized":
            continue
        domain = _domain_of(release)
        assert domain.member(at_limit) and domain.member(below), label
        assert_total_on_neighbours(release, [(below, at_limit)])
        release(at_limit)  # both release


def test_size_limit_is_part_of_the_domain_not_a_failure_inside_the_release():
    """The issue's example: size_limit=3 released on 3 rows and raised on 4, both domain members."""
    from opendp_hybridad.frame import make_sum_of

    f = fn(SCHEMA)
    domain = make_frame_domain(SCHEMA)
    three = frame([(1.0, 0.5, 1.5)] * 3)
    four = frame([(1.0, 0.5, 1.5)] * 4)
    try:  # a size_limit on the constructor that differs from the domain's is refused outright ...
        t = make_sum_of(domain, dp.symmetric_distance(), f, size_limit=3)
    except hd.DeclarationError:
        t = None
    if t is not None:  # ... or else the release must be total on the domain's members
        release = t >> dp.m.then_laplace(10.0)
        assert math.isfinite(release.map(1))
        assert_total_on_neighbours(release, [(three, four)], is_member=domain.member)
    # declared in the domain, the 4-row frame is not a member, and is refused as one
    limited = make_frame_domain(SCHEMA, size_limit=3)
    assert limited.member(three) and not limited.member(four)
    release = make_sum_of(limited, dp.symmetric_distance(), f) >> dp.m.then_laplace(10.0)
    assert math.isfinite(release(three))
    with pytest.raises(Exception, match=r"SchemaMismatchError.*size limit 3"):
        release(four)


def test_public_size_mean_with_a_drop_field_is_total_on_its_domain():
    """A neighbour whose replaced record lost its a is not in the public-size domain (kept count changed)."""
    from opendp_hybridad.frame import make_private_mean

    f = fn(SCHEMA)
    m = make_private_mean(SCHEMA, f, dp.change_one_distance(), size=KEPT, epsilon=1.0)
    base = frame([(1.0, 0.5, 1.5), (2.0, 0.5, 1.5), (3.0, 0.5, 1.5)])
    dropped = frame([(1.0, 0.5, 1.5), (2.0, 0.5, 1.5), (math.nan, 0.5, 1.5)])
    member = m.input_domain.member
    assert member(base) and not member(dropped)
    checked = assert_total_on_neighbours(m, [(base, dropped), *sized_pairs(99)], is_member=member)
    assert checked >= 15
    with pytest.raises(SchemaMismatchError, match=f"exactly {KEPT} records"):
        hd.release(m, dropped)


def _symmetric_distance(left, right):
    from collections import Counter

    a, b = Counter(map(repr, left.itertuples(index=False))), Counter(map(repr, right.itertuples(index=False)))
    return sum(((a - b) + (b - a)).values())


def _change_one_distance(left, right):
    if len(left) != len(right):
        return None
    return sum(repr(x) != repr(y) for x, y in zip(left.itertuples(index=False), right.itertuples(index=False), strict=True))


def test_public_size_mean_map_bounds_member_pairs_with_a_drop_field():
    """In the kept-size domain a replacement never becomes a removal: the map (width / n) holds."""
    from opendp_hybridad.frame import make_mean_of

    sized = make_frame_domain(SCHEMA, size_limit=LIMIT, size=KEPT)
    f = fn(SCHEMA)
    checked = 0
    for metric, distance in ((dp.symmetric_distance(), _symmetric_distance), (dp.change_one_distance(), _change_one_distance)):
        t = make_mean_of(sized, metric, f)
        for left, right in sized_pairs(5, count=120):
            d = distance(left, right)
            if d is None or not (sized.member(left) and sized.member(right)):
                continue
            assert abs(t(left) - t(right)) <= t.map(d)
            checked += 1
    assert checked >= 60


# -- non-members ----------------------------------------------------------------------------
def non_members():
    good = [(1.0, 0.5, 1.5), (SECRET, 0.5, 1.5), (2.0, math.nan, 1.2)]
    return [
        ("column 'c' is missing", frame(good).drop(columns="c")),
        ("column 'a' has dtype", frame(good).assign(a=["1", str(SECRET), "x"])),
        ("column 'c' has missing values", frame([(1.0, 0.5, math.nan), (SECRET, 0.5, 1.5)])),
        ("size limit", frame([(1.0, 0.5, 1.5), (SECRET, 0.5, 1.5)] * LIMIT)),
        ("expected a pandas DataFrame", {"a": [SECRET]}),
    ]


def test_non_members_are_refused_with_a_library_error_before_any_value_is_computed(releases, monkeypatch):
    from opendp_hybridad.analysis import float_error
    from opendp_hybridad.compile.kernel import Kernel

    computed = []
    value_clamped, point_values = Kernel.value_clamped, float_error.clamped_point_values
    monkeypatch.setattr(Kernel, "value_clamped", lambda self, *a, **k: computed.append(1) or value_clamped(self, *a, **k))
    monkeypatch.setattr(float_error, "clamped_point_values", lambda *a, **k: computed.append(1) or point_values(*a, **k))
    for label, release, _ in releases:
        for fragment, data in non_members():
            with pytest.raises(Exception) as err:
                release(data)
            text = str(err.value)
            assert isinstance(err.value, SchemaMismatchError) or "SchemaMismatchError" in text, label
            assert fragment in text, (label, fragment)
            assert str(SECRET) not in text and "987654" not in text, label
    assert computed == []


def test_release_raises_the_library_error_itself_before_any_value_is_computed(releases, monkeypatch):
    from opendp_hybridad.analysis import float_error
    from opendp_hybridad.compile.kernel import Kernel

    computed = []
    monkeypatch.setattr(Kernel, "value_clamped", lambda *a, **k: computed.append(1))
    monkeypatch.setattr(float_error, "clamped_point_values", lambda *a, **k: computed.append(1))
    for label, release, _ in releases:
        for fragment, data in non_members():
            with pytest.raises(SchemaMismatchError) as err:  # not OpenDP's wrapper: checked before the call
                hd.release(release, data)
            assert fragment in str(err.value) and str(SECRET) not in str(err.value), (label, fragment)
            assert not release.input_domain.member(data), label  # OpenDP's member answers, never raises
    assert computed == []


def test_exact_size_counts_kept_records_and_is_in_the_identifier():
    sized = make_frame_domain(SCHEMA, size=2)
    assert str(sized) != str(make_frame_domain(SCHEMA, size=3)) != str(make_frame_domain(SCHEMA))
    assert str(make_frame_domain(SCHEMA, size_limit=10)) != str(make_frame_domain(SCHEMA))
    assert sized.member(frame([(1.0, 0.5, 1.5), (math.nan, 0.5, 1.5), (2.0, math.nan, 1.5)]))
    assert not sized.member(frame([(1.0, 0.5, 1.5)]))
    with pytest.raises(hd.DeclarationError, match="larger than size_limit"):
        make_frame_domain(SCHEMA, size_limit=2, size=3)
    with pytest.raises(hd.DeclarationError, match="positive whole number"):
        make_frame_domain(SCHEMA, size_limit=0)
