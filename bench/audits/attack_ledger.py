"""The first ledger audit's attacks, rerun against the ledger format v4 (both fixed; they must be refused).

Run: python bench/audits/attack_ledger.py

The original attacks (format v2): (1) bucket MACs bound only by their XOR, so a GF(2)-dependent subset of
old bucket rows could be spliced back without the key; (2) the SipHash key ("salt") stored in the data
file's meta table, so a data file alone linked guessed ids to their spend. In v4 the head binds a Merkle
root of every bucket MAC at its position and the id-hashing key is derived from the key file's secret, so
the GF(2) search and the salt lookup no longer apply; what is left to try is below. The v4 audit is
bench/audits/attack_ledger_v4.py.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

import numpy as np

from opendp_hybridad.individual import LedgerError, LedgerParameters, PrivacyLedger

P = LedgerParameters("gdp", 1.0)


def splice_old_rows(tmp: str) -> bool:
    """Every changed bucket row (and each single one) replaced by its older version, without the key."""
    path, old = os.path.join(tmp, "l.sqlite"), os.path.join(tmp, "old.sqlite")
    hashes = np.unique(np.random.default_rng(0).integers(1, 2**64 - 1, 80000, dtype=np.uint64))
    ledger = PrivacyLedger.create(path, P)
    ledger.charge(hashes, np.full(hashes.size, 0.25))
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, old)
    ledger.charge(hashes, np.full(hashes.size, 0.7))
    ledger.close()
    rows = {b: (h, s, r, m) for b, h, s, r, m in
            sqlite3.connect(old).execute("SELECT b, hashes, spent, retired, mac FROM buckets")}
    accepted = 0
    for subset in [list(rows), *[[b] for b in list(rows)[:20]]]:
        work = os.path.join(tmp, "w.sqlite")
        for s in ("", "-wal", ".key"):
            if os.path.exists(path + s):
                shutil.copy(path + s, work + s)
        db = sqlite3.connect(work)
        db.executemany("UPDATE buckets SET hashes = ?, spent = ?, retired = ?, mac = ? WHERE b = ?",
                       [(*rows[b], b) for b in subset])
        db.commit()
        db.close()
        try:
            PrivacyLedger.open(work, P).close()
            accepted += 1
        except LedgerError:
            pass
        for s in ("", "-wal", "-shm", ".key"):
            if os.path.exists(work + s):
                os.unlink(work + s)
    print(f"splice of old bucket rows ({len(rows)} buckets; all at once and 20 one at a time): {accepted} accepted")
    return accepted == 0


def data_file_has_no_hashing_key(tmp: str) -> bool:
    path = os.path.join(tmp, "v.sqlite")
    PrivacyLedger.create(path, P).close()
    meta = dict(sqlite3.connect(path).execute("SELECT key, value FROM meta"))
    print(f"data file meta keys: {sorted(meta)} (no 'salt': the id-hashing key is not in the data file)")
    return "salt" not in meta


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        ok = splice_old_rows(tmp) and data_file_has_no_hashing_key(tmp)
    print("both old attacks refused" if ok else "AN OLD ATTACK WORKS AGAIN")
