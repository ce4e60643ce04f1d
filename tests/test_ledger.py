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


# -- the Merkle tree over bucket MACs (merkle.py) ---------------------------------------------------
def _leaves(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32), dtype=np.uint8)


def test_merkle_root_matches_its_closed_form():
    import hashlib

    from opendp_hybridad.individual import merkle
    for count in (1, 2, 64):  # one level: the root hashes every leaf in order
        leaves = _leaves(count, count)
        assert merkle.root(merkle.build(leaves)) == hashlib.sha256(b"N\x01" + leaves.tobytes()).digest()
    leaves = _leaves(128, 0)  # two levels: two nodes of 64 leaves, then the root over both
    halves = [hashlib.sha256(b"N\x01" + leaves[i:i + 64].tobytes()).digest() for i in (0, 64)]
    assert merkle.root(merkle.build(leaves)) == hashlib.sha256(b"N\x02" + b"".join(halves)).digest()


@pytest.mark.parametrize("bits", [0, 1, 6, 7, 12, 13])
def test_merkle_update_equals_a_rebuild(bits):
    from opendp_hybridad.individual import merkle
    rng = np.random.default_rng(bits)
    leaves = _leaves(1 << bits, bits)
    tree = merkle.build(leaves)
    for k in (1, 3, 1 << bits):
        changed = np.sort(rng.choice(1 << bits, min(k, 1 << bits), replace=False))
        values = _leaves(changed.size, 100 + k)
        changes = merkle.update(tree, changed, values)
        leaves[changed] = values
        expected = merkle.build(leaves)
        assert merkle.new_root(tree, changes) == merkle.root(expected)
        merkle.apply(tree, changes)
        assert all(np.array_equal(a, b) for a, b in zip(tree, expected, strict=True))
    assert merkle.new_root(tree, merkle.update(tree, np.zeros(0, np.int64), np.zeros((0, 32), np.uint8))) == merkle.root(tree)


# -- the ledger against an independent model, two handles on one file ---------------------------------
def _model_charge(model: dict, hashes: np.ndarray, charges: np.ndarray, budget: float) -> np.ndarray:
    """The ledger's rule, person by person in plain Python: raise to next-up(spent + charge) if it fits."""
    import math
    admitted = []
    for h, c in zip(hashes.tolist(), charges.tolist(), strict=True):
        spent, retired = model.get(h, (0.0, False))
        recorded = math.nextafter(spent + c, math.inf) if c > 0 else spent
        ok = not retired and recorded <= budget
        model[h] = (recorded, False) if ok else (spent, True)
        admitted.append(ok)
    return np.array(admitted)


def test_two_handles_on_one_file_agree_with_a_plain_model_through_relayouts(tmp_path):
    path = str(tmp_path / "l.sqlite")
    params = LedgerParameters("gdp", 1.0)
    a, b = PrivacyLedger.create(path, params), None
    rng = np.random.default_rng(5)
    pool = np.unique(rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True))
    rng.shuffle(pool)
    model: dict = {}
    layouts = set()
    known = 0
    for step in range(40):
        if step == 1:
            b = PrivacyLedger.open(path, params)
        handle = a if step % 3 else (b or a)
        known = min(pool.size, known + int(rng.choice([0, 5, 200, 600])))
        size = int(rng.choice([1, 7, 80, max(known, 1)]))
        people = rng.choice(pool[:max(known, 1)], min(size, max(known, 1)), replace=False)
        charges = np.where(rng.random(people.size) < 0.2, 0.0, rng.uniform(0, 0.3, people.size))
        np.testing.assert_array_equal(handle.charge(people, charges), _model_charge(model, people, charges, 1.0))
        layouts.add(handle._state.bits)
        for h in (a, b):
            if h is not None:  # the other handle reads only what changed, or everything after a relayout
                np.testing.assert_array_equal(h.spent(pool), [model.get(x, (0.0, False))[0] for x in pool.tolist()])
                np.testing.assert_array_equal(h.retired(pool), [model.get(x, (0.0, False))[1] for x in pool.tolist()])
    assert len(layouts) >= 3  # the bucket layout grew (every bucket rewritten) at least twice
    assert any(r for _, r in model.values()) and not all(r for _, r in model.values())
    a.close()
    b.close()
    fresh = PrivacyLedger.open(path, params)  # verifies every bucket, the Merkle root and the query chain
    np.testing.assert_array_equal(fresh.spent(pool), [model.get(x, (0.0, False))[0] for x in pool.tolist()])
    assert fresh.summary()["individuals"] == len(model) and fresh.summary()["queries"] == 40


def test_the_head_binds_the_merkle_root_of_every_stored_bucket_mac(tmp_path):
    import hashlib
    import hmac as hmac_

    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger.create(path, P)
    people = np.unique(np.random.default_rng(1).integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True))
    ledger.charge(people, np.full(people.size, 0.01))
    ledger.charge(people[::97], np.full(people[::97].size, 0.01))
    with sqlite3.connect(path) as db:
        bits, root = db.execute("SELECT bits, root FROM head").fetchone()
        rows = dict(db.execute("SELECT b, mac FROM buckets").fetchall())
    assert bits == 8  # 20,000 people, at most 128 a bucket on average
    # independently: level 1 hashes runs of 64 leaves (zeros for an empty bucket), level 2 the 4 results
    leaves = [bytes(rows.get(i, bytes(32))) for i in range(1 << bits)]
    level1 = [hashlib.sha256(b"N\x01" + b"".join(leaves[i:i + 64])).digest() for i in range(0, 256, 64)]
    assert bytes(root) == hashlib.sha256(b"N\x02" + b"".join(level1)).digest()
    # and each bucket's MAC is HMAC-SHA256 over (bits, b, count, hashes, spent, retired) with the ledger's key
    with sqlite3.connect(path) as db:
        b, hb, sb, rb, mac = db.execute("SELECT b, hashes, spent, retired, mac FROM buckets LIMIT 1").fetchone()
    import struct
    message = b"B" + struct.pack("<IIQ", bits, b, len(hb) // 8) + hb + sb + rb
    assert bytes(mac) == hmac_.digest(ledger._mac_key, message, "sha256")


def test_an_old_version_of_one_bucket_row_is_refused(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger.create(path, P)
    people = np.unique(np.random.default_rng(2).integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True))
    ledger.charge(people, np.full(people.size, 0.25))
    with sqlite3.connect(path) as db:
        old = db.execute("SELECT b, ver, hashes, spent, retired, mac FROM buckets ORDER BY b LIMIT 1").fetchone()
    ledger.charge(people, np.full(people.size, 0.25))  # every record raised: every bucket rewritten
    ledger.close()
    with sqlite3.connect(path) as db:  # its MAC is genuine, only stale
        db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?, ?)", old)
    with pytest.raises(LedgerError, match="integrity"):
        PrivacyLedger.open(path, P)


def test_a_small_charge_at_scale_writes_about_a_page_per_person_it_changes(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger(path, P)
    many = np.unique(np.random.default_rng(3).integers(0, 2**64 - 1, 300_000, dtype=np.uint64, endpoint=True))
    ledger.charge(many, np.full(many.size, 0.001))
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rng = np.random.default_rng(4)
    charges = np.zeros(many.size)
    charges[rng.choice(many.size, 50, replace=False)] = 0.01
    ledger.charge(many, charges)
    with sqlite3.connect(path) as db:
        (counter,) = db.execute("SELECT counter FROM head").fetchone()
        assert db.execute("SELECT COUNT(*) FROM buckets WHERE ver = ?", (counter,)).fetchone()[0] <= 50
    # at most a page per changed bucket, plus a few for the B-tree's inner pages, the ver index, the head and the
    # query row: not the ~5 MB state (WAL frames: a 24-byte header and a page; the file has a 32-byte header)
    from opendp_hybridad.individual.ledger import PAGE_SIZE
    assert os.path.getsize(path + "-wal") <= 32 + (50 + 20) * (24 + PAGE_SIZE) < many.size * 17 / 8


def test_a_commit_by_another_handle_while_one_reads_is_not_taken_for_a_rollback(tmp_path):
    # found by tests/test_ledger_crash.py: the key file's counter was read after the snapshot, so another
    # process's commit in between made a sound ledger look rolled back and refused
    path = str(tmp_path / "l.sqlite")
    writer = _spent_ledger(path)
    reader = PrivacyLedger.open(path, P)
    real = reader._key_counter
    calls = []

    def commit_then_read() -> int:  # another process commits (and raises the key counter) at this moment
        if not calls:
            writer.charge(_h(1), np.array([0.125]))
        calls.append(1)
        return real()

    reader._key_counter = commit_then_read
    assert reader.spent(_h(1))[0] >= 0.625
    assert calls


@pytest.mark.parametrize("flaw", ["hash outside its bucket", "hashes out of order", "record above the budget"])
def test_rows_signed_with_the_key_but_inconsistent_are_refused(tmp_path, flaw):
    # defence in depth against a writer's bug: even a row whose MACs verify must hold sorted hashes in
    # their own bucket and records within the budget, or every reader's positions and admissions are wrong
    from opendp_hybridad.individual import merkle
    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger.create(path, P)
    people = np.unique(np.random.default_rng(6).integers(0, 2**64 - 1, 1000, dtype=np.uint64, endpoint=True))
    ledger.charge(people, np.full(people.size, 0.25))
    ledger.close()
    with sqlite3.connect(path) as db:
        counter, members, queries, bits, qchain = db.execute("SELECT counter, members, queries, bits, qchain FROM head").fetchone()
        rows = {b: [h, s, r] for b, h, s, r in db.execute("SELECT b, hashes, spent, retired FROM buckets")}
        b = min(rows)
        h = np.frombuffer(rows[b][0], np.uint64).copy()
        s = np.frombuffer(rows[b][1], np.float64).copy()
        if flaw == "hash outside its bucket":
            h[-1] = np.uint64(2**64 - 1)  # the top bucket's range
        elif flaw == "hashes out of order":
            h[[0, 1]] = h[[1, 0]]
        else:
            s[0] = 2.5
        rows[b][:2] = [h.tobytes(), s.tobytes()]
        leaves = np.zeros((1 << bits, 32), np.uint8)
        for k, (hb, sb, rb) in rows.items():
            mac = ledger._bucket_mac(bits, k, bytes(hb), bytes(sb), bytes(rb))
            db.execute("UPDATE buckets SET hashes = ?, spent = ?, mac = ? WHERE b = ?", (hb, sb, mac, k))
            leaves[k] = np.frombuffer(mac, np.uint8)
        root = merkle.root(merkle.build(leaves))
        db.execute("UPDATE head SET root = ?, mac = ?", (root, ledger._head_mac(counter, members, queries, bits, root,
                                                                              bytes(qchain))))
    with pytest.raises(LedgerError, match="bucket contents"):
        PrivacyLedger.open(path, P)
