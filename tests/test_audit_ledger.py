"""Audit reproducers (individual-DP ledger, ids, parameters). Each is a confirmed finding, xfail(strict).

Attack scripts: bench/audits/attack_ledger.py.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers.totality import assert_total_on_neighbours

import opendp_hybridad as hd
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.individual import IndividualFilter, LedgerError, LedgerParameters, PrivacyLedger
from opendp_hybridad.individual.ids import id_keys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "audits"))


def _gf2_dependent_subset(vectors: dict[int, int]) -> list[int]:
    basis: dict[int, tuple[int, int]] = {}
    keys = list(vectors)
    for i, k in enumerate(keys):
        v, combo = vectors[k], 1 << i
        while v:
            top = v.bit_length() - 1
            if top not in basis:
                basis[top] = (v, combo)
                break
            v ^= basis[top][0]
            combo ^= basis[top][1]
        else:
            return [keys[j] for j in range(len(keys)) if combo >> j & 1]
    raise AssertionError("no dependency")


# Audit finding (fixed): bucket MACs were bound only by their XOR (linear over GF(2)), so an old copy's
# bucket rows (a dependent subset) could be spliced in without the key; the head now binds the SHA-256
# of all bucket MACs in bucket order.
def test_splicing_old_bucket_rows_without_the_key_is_refused_or_shows_released_spend(tmp_path):
    P = LedgerParameters("gdp", 1.0)
    path = str(tmp_path / "l.sqlite")
    # enough people for over 256 buckets in use (about 128 people a bucket; hashes below 2**63 use half the
    # buckets), so that the changed bucket MACs, 256-bit vectors, have a GF(2)-dependent subset to splice
    hashes = np.unique(np.random.default_rng(0).integers(1, 2**63, 80_000, dtype=np.uint64))
    ledger = PrivacyLedger.create(path, P)
    assert ledger.charge(hashes, np.full(hashes.size, 0.25)).all()
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, tmp_path / "old.sqlite")  # a data-file copy (no key needed)
    assert ledger.charge(hashes, np.full(hashes.size, 0.7)).all()  # released: everyone at ~0.95
    ledger.close()
    released = np.full(hashes.size, 0.95)
    rows = "SELECT b, hashes, spent, retired, mac FROM buckets"
    old = {r[0]: r[1:] for r in sqlite3.connect(tmp_path / "old.sqlite").execute(rows)}
    db = sqlite3.connect(path)
    cur = {r[0]: r[1:] for r in db.execute(rows)}
    deltas = {b: int.from_bytes(cur[b][3], "little") ^ int.from_bytes(old[b][3], "little")
              for b in cur if b in old and cur[b][3] != old[b][3] and len(cur[b][0]) == len(old[b][0])}
    subset = _gf2_dependent_subset(deltas)
    db.executemany("UPDATE buckets SET hashes = ?, spent = ?, retired = ?, mac = ? WHERE b = ?",
                   [(*old[b], b) for b in subset])
    db.commit()
    db.close()
    try:
        reopened = PrivacyLedger.open(path, P)
    except LedgerError:
        return
    assert (reopened.spent(hashes) >= released - 1e-9).all()


# Audit finding (fixed): the SipHash key ('salt') was stored in the clear in the data file, so a data
# backup alone let one hash guessed ids and read their spend; it is now derived from the key file's secret.
def test_a_data_file_without_its_key_does_not_reveal_whose_spend_is_whose(tmp_path):
    schema = hd.Schema(income=hd.Field(0, 100))
    (inc,) = schema.symbols()
    secret = np.array([12.5, 87.25, 40.0])
    df = pd.DataFrame({"income": secret, "person": [101, 202, 303]})
    path = str(tmp_path / "v.sqlite")
    flt = IndividualFilter(df, schema, kind="gdp", budget=50.0, id_column="person", ledger=path)
    flt.sum(schema.function(inc), 10.0)
    flt.ledger.close()
    db = sqlite3.connect(path)  # the data file alone
    salt = dict(db.execute("SELECT key, value FROM meta")).get("salt", "0123456789abcdef")
    stored = set()
    for (hb,) in db.execute("SELECT hashes FROM buckets"):
        stored.update(np.frombuffer(hb, np.uint64).tolist())
    guess = pd.util.hash_pandas_object(pd.Series(["n:202"], dtype=object), index=False, hash_key=salt)
    assert int(guess.iloc[0]) not in stored


SCHEMA = hd.Schema(x=hd.Field(-1, 1))
(X,) = SCHEMA.symbols()


@pytest.mark.parametrize("bad", ["a\udcffSENTINEL", 10**5000], ids=["lone-surrogate", "int-over-4300-digits"])
# Audit finding (fixed): an id that ids.py/hashing could not encode (lone surrogate: UnicodeEncodeError
# quoting the character; a >4300-digit int: ValueError) made the filter raise on one neighbour and answer
# the other; such strings are now keyed by their surrogatepass bytes in hex, such ints in hex.
def test_ids_that_cannot_be_encoded_do_not_break_totality(bad):
    with_p = pd.DataFrame({"x": [0.5, 0.1], "person": pd.Series(["alice", bad], dtype=object)})
    without_p = with_p.iloc[:1]

    def release(df):
        return IndividualFilter(df, SCHEMA, kind="gdp", budget=1.0, id_column="person").sum(SCHEMA.function(X), 10.0)

    assert assert_total_on_neighbours(release, [(with_p, without_p), (without_p, with_p)]) == 2


# Audit finding (fixed): datetime64 ids were keyed by numpy's str(), which includes the column's unit; they
# are now keyed t: and their exact nanoseconds since the epoch.
def test_a_datetime_id_keeps_its_key_whatever_the_columns_unit():
    one = pd.to_datetime(pd.Series(["2020-01-01T00:00:00"]), format="ISO8601")
    with_other = pd.to_datetime(pd.Series(["2020-01-01T00:00:00", "2020-01-02T00:00:00.000000001"]), format="ISO8601")
    assert id_keys(one)[0] == id_keys(with_other)[0]


# Audit finding (fixed): timedelta64 ids were numpy integers to ids.py (a [us]/[s] column raised a raw
# TypeError, a [ns] one was keyed 'n:1' for 1 ns); they are now keyed d: and their exact nanoseconds.
def test_timedelta_ids_are_encoded_by_type_and_text():
    td = pd.Series(pd.to_timedelta(["1s"]))
    assert id_keys(td.astype("timedelta64[us]"))[0] == id_keys(td.astype("timedelta64[ns]"))[0]
    assert id_keys(pd.Series(pd.to_timedelta(["1ns"])))[0] != id_keys(pd.Series([1]))[0]


# Audit finding (fixed): PrivacyLedger._positions cached by array identity, so a hashes buffer reused in
# place was charged at the old person's slot; it now caches by a digest of the hashes' content.
def test_a_reused_hashes_buffer_is_not_admitted_past_budget():
    ledger = PrivacyLedger(":memory:", LedgerParameters("gdp", 1.0))
    alice, bob = ledger.hash_ids(["alice", "bob"])
    ledger.charge(np.array([alice, bob]), np.array([0.0, 0.75]))
    buf = np.array([alice], dtype=np.uint64)
    ledger.spent(buf)
    buf[0] = bob
    assert not ledger.charge(buf, np.array([0.75]))[0]


@pytest.mark.parametrize("sigma", [1e-300, 1e-8])
# Audit finding (fixed): a tiny positive noise multiplier passed validation and then failed inside the
# accountants (traceback); validation.noise_multiplier now requires at least MIN_NOISE_MULTIPLIER (1e-3) and
# accountant failures are one-line AccountingErrors.
def test_a_tiny_noise_multiplier_is_refused_in_one_line(sigma):
    proc = subprocess.run([sys.executable, "-m", "opendp_hybridad.cli", "privacy", "dp-sgd", "--n", "60000",
                           "--batch-size", "256", "--epochs", "1", "--delta", "1e-5", "--noise-multiplier", str(sigma)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-300:]
    from opendp_hybridad.accounting import dp_sgd_epsilon
    with pytest.raises(DeclarationError):
        dp_sgd_epsilon(60000, 256, sigma, 1, 1e-5, "poisson")
