"""Issue 11, finding 3: random damage to a ledger's data file or WAL never lowers the recorded spend.

Seeded: 100 single-bit flips (spread over the main file and the WAL) and 20 truncations.
Each damaged copy (with its key file) is either refused with LedgerError or opens showing
exactly the spend that was committed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from opendp_hybridad.individual import LedgerError, LedgerParameters, PrivacyLedger

P = LedgerParameters("gdp", 4.0)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A ledger with commits in both the main file (checkpointed) and the WAL, left open."""
    d = tmp_path_factory.mktemp("orig")
    path = str(d / "l.sqlite")
    rng = np.random.default_rng(11)
    hashes = np.unique(rng.integers(1, 2**63, 3000, dtype=np.uint64))
    ledger = PrivacyLedger(path, P)  # a new path: created
    for k in range(4):
        ledger.charge(hashes, rng.uniform(0, 0.3, hashes.size), label=f"q{k}")
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for k in range(4, 7):
        ledger.charge(hashes[k::3], rng.uniform(0, 0.3, hashes[k::3].size), label=f"q{k}")
    assert os.path.getsize(path + "-wal") > 0
    spent = ledger.spent(hashes)
    files = {}
    for name, suffix in (("main", ""), ("wal", "-wal"), ("key", ".key")):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as handle:
                files[name] = handle.read()
    yield hashes, spent, files
    ledger.close()


def _check(tmp_path, files, hashes, spent) -> str:
    path = str(tmp_path / "c.sqlite")
    for suffix in ("", "-wal", "-shm", ".key"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    for name, suffix in (("main", ""), ("wal", "-wal"), ("key", ".key")):
        if name not in files:
            continue
        with open(path + suffix, "wb") as f:
            f.write(files[name])
    try:
        ledger = PrivacyLedger(path, P)
    except LedgerError:
        return "refused"
    try:
        np.testing.assert_array_equal(ledger.spent(hashes), spent)
        assert ledger.summary()["queries"] == 7
    except LedgerError:
        return "refused"
    finally:
        ledger.close()
    return "same"


def test_bit_flips_in_the_data_file_or_the_wal_never_lower_the_spend(original, tmp_path):
    hashes, spent, files = original
    rng = np.random.default_rng(2024)
    outcomes = {"refused": 0, "same": 0}
    for k in range(100):
        which = "main" if k % 2 == 0 else "wal"
        data = bytearray(files[which])
        pos = int(rng.integers(len(data)))
        data[pos] ^= 1 << int(rng.integers(8))
        outcomes[_check(tmp_path, {**files, which: bytes(data)}, hashes, spent)] += 1
    assert outcomes["refused"] > 0  # the check is not vacuous


def test_truncations_never_lower_the_spend(original, tmp_path):
    hashes, spent, files = original
    rng = np.random.default_rng(7)
    outcomes = {"refused": 0, "same": 0}
    for k in range(20):
        which = "main" if k % 2 == 0 else "wal"
        data = files[which][: int(rng.integers(len(files[which])))]
        outcomes[_check(tmp_path, {**files, which: data}, hashes, spent)] += 1
    assert outcomes["refused"] > 0
