"""Issue 11: a ledger that cannot lose or split a person's budget (identity, creation, integrity, backup, threads, scale)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading

import numpy as np
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad.individual import IndividualFilter, LedgerError, LedgerParameters, PrivacyLedger

P = LedgerParameters("renyi", 2.0, 8.0)
SCHEMA = hd.Schema(x=hd.Field(0, 1))


def _h(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


# -- 1. identity ---------------------------------------------------------------------------------
def test_ids_of_different_types_are_different_people_and_integral_floats_are_integers():
    ledger = PrivacyLedger(":memory:", P)
    one, text, true, flt = (ledger.hash_ids(pd.Series([v], dtype=object))[0] for v in (1, "1", True, 1.0))
    assert len({one, text, true}) == 3  # int 1, str "1" and True: three people
    assert flt == one  # 1.0 is the integer 1
    ints = ledger.hash_ids(pd.Series([1, 2, 3], dtype=np.int64))
    floats = ledger.hash_ids(pd.Series([1.0, 2.0, 3.0], dtype=np.float64))
    np.testing.assert_array_equal(ints, floats)  # an int64 id column read as float64 next run: same people
    assert ledger.hash_ids(pd.Series([2.5]))[0] not in set(ints)
    with pytest.raises(ValueError, match="missing id"):
        ledger.hash_ids(pd.Series([np.nan]))


def test_an_id_column_read_as_float_in_the_next_run_keeps_each_persons_budget(tmp_path):
    path = str(tmp_path / "l.sqlite")
    as_int = pd.DataFrame({"x": [1.0, 1.0], "person": np.array([1, 2], dtype=np.int64)})
    first = IndividualFilter(as_int, SCHEMA, kind="gdp", budget=1.0, id_column="person", ledger=path)
    first.sum(SCHEMA.function(SCHEMA.symbols()[0]), 2.0)
    spent = first.spent()
    first.ledger.close()
    as_float = as_int.assign(person=as_int.person.astype(np.float64))
    second = IndividualFilter(as_float, SCHEMA, kind="gdp", budget=1.0, id_column="person", ledger=path)
    np.testing.assert_array_equal(second.spent(), spent)
    assert np.all(spent > 0)


def test_a_ledger_made_with_another_id_encoding_is_refused(tmp_path):
    path = str(tmp_path / "l.sqlite")
    PrivacyLedger.create(path, P).close()
    with pytest.raises(LedgerError, match="never reset"):
        PrivacyLedger(path, LedgerParameters("renyi", 2.0, 8.0, id_encoding="str-v0"))


# -- 2. never forgets --------------------------------------------------------------------------------
def _spent_ledger(path: str) -> PrivacyLedger:
    ledger = PrivacyLedger(path, P)  # a new path: created
    ledger.charge(_h(1, 2, 3), np.array([0.5, 0.25, 1.0]))
    return ledger


def test_a_truncated_or_replaced_ledger_is_refused_not_recreated(tmp_path):
    path = str(tmp_path / "l.sqlite")
    _spent_ledger(path).close()
    os.truncate(path, 0)
    with pytest.raises(LedgerError):
        PrivacyLedger(path, P)
    assert os.path.getsize(path) == 0  # nothing created
    os.unlink(path)
    sqlite3.connect(path).close()  # an empty, valid SQLite database in its place
    with pytest.raises(LedgerError):
        PrivacyLedger(path, P)
    os.unlink(path)  # deleted: the key file remains, so it is not recreated either
    with pytest.raises(LedgerError, match="deleted"):
        PrivacyLedger(path, P)


def test_creation_is_explicit(tmp_path):
    path = str(tmp_path / "l.sqlite")
    with pytest.raises(LedgerError, match="does not exist"):
        PrivacyLedger.open(path, P)
    _spent_ledger(path).close()
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(path, P)
    assert stat.S_IMODE(os.stat(path + ".key").st_mode) == 0o600
    assert np.all(PrivacyLedger.open(path, P).spent(_h(1, 2, 3)) >= [0.5, 0.25, 1.0])


def test_an_altered_value_a_missing_key_or_a_wal_less_copy_is_refused(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = _spent_ledger(path)
    ledger.charge(_h(1), np.array([0.5]))
    # a copy of the data file alone (its WAL, which holds the commits, left behind)
    shutil.copy(path, tmp_path / "copy.sqlite")
    shutil.copy(path + ".key", tmp_path / "copy.sqlite.key")
    assert os.path.getsize(path + "-wal") > 0
    with pytest.raises(LedgerError):
        PrivacyLedger(str(tmp_path / "copy.sqlite"), P)
    ledger.close()
    with sqlite3.connect(path) as db:  # someone lowers a spent value in place
        b, spent = db.execute("SELECT b, spent FROM buckets LIMIT 1").fetchone()
        db.execute("UPDATE buckets SET spent = ? WHERE b = ?", (bytes(len(spent)), b))
    with pytest.raises(LedgerError, match="integrity"):
        PrivacyLedger(path, P)
    os.unlink(path + ".key")
    with pytest.raises(LedgerError):
        PrivacyLedger.open(path, P)


def test_backup_carries_the_key_and_the_copy_continues(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = _spent_ledger(path)
    dest = str(tmp_path / "moved" / "b.sqlite")
    os.makedirs(os.path.dirname(dest))
    ledger.backup(dest)
    assert stat.S_IMODE(os.stat(dest + ".key").st_mode) == 0o600
    copy = PrivacyLedger.open(dest, P)
    np.testing.assert_array_equal(copy.spent(_h(1, 2, 3)), ledger.spent(_h(1, 2, 3)))
    copy.charge(_h(2), np.array([0.25]))
    assert copy.spent(_h(2))[0] >= 0.5 and copy.summary()["queries"] == 2
    with pytest.raises(LedgerError, match="never overwrites"):
        ledger.backup(dest)


# -- 4. threads -------------------------------------------------------------------------------------
def test_four_threads_sharing_one_ledger_charge_exactly(tmp_path):
    ledger = PrivacyLedger(str(tmp_path / "l.sqlite"), LedgerParameters("gdp", 1000.0))
    hashes, step = _h(*range(1, 51)), np.full(50, 0.125)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                ledger.charge(hashes, step)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    replay = PrivacyLedger(":memory:", LedgerParameters("gdp", 1000.0))
    for _ in range(160):
        replay.charge(hashes, step)
    np.testing.assert_array_equal(ledger.spent(hashes), replay.spent(hashes))
    assert ledger.summary()["queries"] == 160


# -- 5. scale: a query writes only what it changes ---------------------------------------------------
def test_a_charge_writes_only_the_buckets_it_changes(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger(path, P)
    many = np.unique(np.random.default_rng(0).integers(0, 2**63, 200_000, dtype=np.uint64) * np.uint64(2))
    ledger.charge(many, np.full(many.size, 0.001))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = os.path.getsize(path) + os.path.getsize(path + "-wal")
    ledger.charge(many[:1], np.array([0.5]))
    grown = os.path.getsize(path) + os.path.getsize(path + "-wal") - before
    assert grown < 100_000  # a few pages, not the ~3 MB state
    with sqlite3.connect(path) as db:
        (counter,) = db.execute("SELECT counter FROM head").fetchone()
        assert db.execute("SELECT COUNT(*) FROM buckets WHERE ver = ?", (counter,)).fetchone()[0] == 1
    assert ledger.spent(many[:2]).tolist() == [pytest.approx(0.501), pytest.approx(0.001)]


def test_unencodable_ids_have_distinct_keys_and_hash():
    from opendp_hybridad.individual.ids import id_key, id_keys
    odd = ["a\udcff", "a\udcfe", "a\\udcff", 10**5000, 10**5000 + 1, -(10**5000)]
    keys = [id_key(v) for v in odd]
    assert len(set(keys)) == len(keys) and all(k.isascii() for k in keys)
    assert list(id_keys(pd.Series(odd, dtype=object))) == keys
    ledger = PrivacyLedger(":memory:", LedgerParameters("gdp", 1.0))
    assert len(set(ledger.hash_ids(odd).tolist())) == len(odd)


def test_time_ids_are_keyed_by_exact_nanoseconds_whatever_the_unit():
    import datetime as dt

    from opendp_hybridad.individual.ids import id_key, id_keys
    day = pd.Series(pd.to_datetime(["2020-01-01"]))
    keys = {id_keys(day.astype(f"datetime64[{u}]"))[0] for u in ("s", "ms", "us", "ns")}
    keys |= {id_key(dt.datetime(2020, 1, 1)), id_key(pd.Timestamp("2020-01-01", tz="UTC")),
             id_key(np.datetime64("2020-01-01")), id_keys(pd.Series([pd.Timestamp("2020-01-01"), "x"]))[0]}
    assert keys == {"t:1577836800000000000"}
    sec = pd.Series(pd.to_timedelta(["1s"]))
    keys = {id_keys(sec.astype(f"timedelta64[{u}]"))[0] for u in ("s", "ms", "us", "ns")}
    keys |= {id_key(dt.timedelta(seconds=1)), id_key(pd.Timedelta("1s")), id_key(np.timedelta64(1, "s"))}
    assert keys == {"d:1000000000"}
    with pytest.raises(ValueError):
        id_keys(pd.Series([np.datetime64("NaT", "ns")]))


def test_duplicate_ids_in_one_charge_are_refused():
    ledger = PrivacyLedger(":memory:", LedgerParameters("gdp", 1.0))
    (alice,) = ledger.hash_ids(["alice"])
    with pytest.raises(LedgerError):
        ledger.charge(np.array([alice, alice]), np.array([0.5, 0.5]))
    assert ledger.spent(np.array([alice]))[0] == 0 and ledger.summary()["queries"] == 0
