"""Audit attacks on the ledger format v4 (ledger.py, merkle.py, ids.py); regression tests in
tests/test_audit_ledger_v4.py.

Run: python bench/audits/attack_ledger_v4.py [--quick]

Findings (figures printed by each function):
1. query-row MAC over values SQLite stores differently (np.str_/StrEnum/int label, -0.0): the ledger
   is refused on every later open (fixed: the row is canonicalised before its MAC).
2. numpy float parameters written as "np.float64(8.0)": creation fails (fixed).
3. charge() with 2-D arrays: the duplicate check is by rows, then a raw IndexError (fixed: 1-D only).
4. Decimal/Fraction ids keyed by type and text: equal numbers are different people (open).
5. a failed creation removed its files after releasing the key's lock, deleting a ledger a
   concurrent create had made meanwhile (fixed).
Held (no finding): SIGKILLs during relayouts, threads and two handles through relayouts, every bit
of the key file flipped; limits of the trust model (not detectable without outside state): the key
file and the data file restored together, and a backup charged alongside its original.
"""

from __future__ import annotations

import enum
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pandas as pd

from opendp_hybridad.individual import LedgerError, LedgerParameters, PrivacyLedger

P = LedgerParameters("gdp", 1.0)
H = np.array([3, 5, 9], dtype=np.uint64)


class _Label(enum.StrEnum):
    INCOME = "income"


def bricked_by_query_row(tmp: str) -> int:
    """1. One charge with such a label or float, committed; then the ledger never opens again."""
    bricked = 0
    for i, kw in enumerate([{"label": np.str_("income")}, {"label": _Label.INCOME}, {"label": 5},
                            {"label": True}, {"noise_scale": -0.0}, {"worst_case_charge": -0.0}]):
        path = os.path.join(tmp, f"q{i}.sqlite")
        ledger = PrivacyLedger.create(path, P)
        ledger.charge(H, np.full(3, 0.25), **kw)
        ledger.close()
        try:
            PrivacyLedger.open(path, P).close()
            print(f"  query row {kw}: reopens")
        except LedgerError as e:
            bricked += 1
            print(f"  query row {kw}: REFUSED on reopen ({str(e).split('(')[1].split(')')[0]})")
    print(f"1. {bricked} of 6 committed charges made their ledger unopenable")
    return bricked


def numpy_parameters(tmp: str) -> bool:
    """2. LedgerParameters with numpy floats (an alpha from np.linspace)."""
    try:
        PrivacyLedger(os.path.join(tmp, "np.sqlite"), LedgerParameters("renyi", 2.0, np.float64(8.0))).close()
        print("2. numpy float alpha: ledger created")
        return False
    except LedgerError as e:
        print(f"2. numpy float alpha: creation fails: {e}")
        return True


def two_dimensional_charge() -> bool:
    """3. [[1, 2], [2, 3]] names person 2 twice; the row-wise duplicate check passes it."""
    ledger = PrivacyLedger(":memory:", P)
    try:
        ledger.charge(np.array([[1, 2], [2, 3]], dtype=np.uint64), np.full((2, 2), 0.5))
    except ValueError as e:
        print(f"3. 2-D charge refused: {e}")
        return False
    except Exception as e:
        print(f"3. 2-D charge: raw {type(e).__name__}: {e}")
        return True
    print("3. 2-D charge accepted")
    return True


def decimal_ids() -> int:
    """4. Equal numbers of numeric types other than int/float have other keys (other budgets)."""
    ledger = PrivacyLedger(":memory:", P)
    values = [1, Decimal("1"), Decimal("1.00"), Fraction(1), 2.5, Decimal("2.5"), Fraction(5, 2)]
    hashes = ledger.hash_ids(pd.Series(values, dtype=object))
    ones, halves = len(set(hashes[:4].tolist())), len(set(hashes[4:].tolist()))
    print(f"4. 1 == Decimal('1') == Decimal('1.00') == Fraction(1): {ones} budgets; "
          f"2.5 == Decimal('2.5') == Fraction(5, 2): {halves} budgets")
    return ones + halves - 2


def failed_creation_removes_concurrent_ledger(tmp: str) -> bool:
    """5. A creation fails (injected, as a full disk would) and, in the window between releasing its key
    lock and removing its files, another process's create redoes it and charges."""
    path = os.path.join(tmp, "race.sqlite")
    made: list = []
    orig_open, orig_remove = PrivacyLedger._open, PrivacyLedger._remove_created

    def failing_open(self):
        if not made:
            made.append(None)
            raise LedgerError("injected failure")
        return orig_open(self)

    def remove(self):
        if len(made) == 1:
            try:
                made.append(PrivacyLedger.create(path, P))
            except LedgerError as e:
                made.append(e)
        orig_remove(self)

    PrivacyLedger._open, PrivacyLedger._remove_created = failing_open, remove
    try:
        with __import__("contextlib").suppress(LedgerError):
            PrivacyLedger.create(path, P)
    finally:
        PrivacyLedger._open, PrivacyLedger._remove_created = orig_open, orig_remove
    other = made[1]
    if isinstance(other, LedgerError):
        print(f"5. concurrent create during a failed creation: refused ({other})")
        return False
    other.charge(H, np.full(3, 0.5))  # released
    other.close()
    exists = os.path.exists(path), os.path.exists(path + ".key")
    fresh = PrivacyLedger(path, P)  # neither file: a new ledger
    print(f"5. concurrent create succeeded and charged 0.5; its files exist afterwards: {exists}; "
          f"reopening the path gives spend {fresh.spent(H).tolist()} (released 0.5 each)")
    fresh.close()
    return True


# -- held ---------------------------------------------------------------------------------------------
_ALL = np.random.default_rng(1).permutation(
    np.unique(np.random.default_rng(0).integers(1, 2**64 - 1, 40000, dtype=np.uint64)))


def relayout_kills(tmp: str, kills: int = 25, seed: int = 0) -> int:
    """SIGKILL a writer at random points while every charge adds 211 people (relayouts at 256 << bits)."""
    rnd, c = random.Random(seed), 0.001
    path, log = os.path.join(tmp, f"rk{seed}.sqlite"), os.path.join(tmp, f"rk{seed}.log")
    PrivacyLedger.create(path, P).close()
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                ledger = PrivacyLedger.open(path, P)
                while True:
                    n = min(_ALL.size, ledger.summary()["individuals"] + 211)
                    if n == _ALL.size and ledger.spent(_ALL[-1:])[0] > 0:
                        os._exit(0)
                    ledger.charge(np.sort(_ALL[:n]), np.full(n, c))
                    os.write(fd, f"{n}\n".encode())  # released
            finally:
                os._exit(1)
        time.sleep(rnd.uniform(0.05, 0.6))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    ledger = PrivacyLedger.open(path, P)
    lower = np.zeros(_ALL.size)
    with open(log) as f:
        released = [int(n) for n in f.read().split()]
    for n in released:
        lower[:n] += c
    got = ledger.spent(_ALL)
    short = int((got < lower - 1e-12).sum())
    print(f"held: {kills} SIGKILLs through relayouts (bits now {ledger._state.bits}, {ledger.summary()['queries']} "
          f"commits): {short} people below their released spend, at most {float((got - lower).max()):.3f} above")
    ledger.close()
    return short


def threads_and_handles(tmp: str) -> int:
    path = os.path.join(tmp, "t.sqlite")
    PrivacyLedger.create(path, LedgerParameters("gdp", 100.0)).close()
    handles = [PrivacyLedger.open(path, LedgerParameters("gdp", 100.0)) for _ in range(2)]
    model, lock = np.zeros(30000), threading.Lock()
    people = np.unique(_ALL[:30000])

    def run(t):
        rng = np.random.default_rng(t)
        for q in range(30):
            idx = np.sort(rng.choice(people.size, size=min(int(rng.integers(1, people.size)), 500 * (q + 1)),
                                     replace=False))
            c = rng.uniform(0, 0.01, idx.size)
            a = handles[t % 2].charge(people[idx], c)
            with lock:
                model[idx[a]] += c[a]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = PrivacyLedger.open(path, LedgerParameters("gdp", 100.0)).spent(people)
    short = int((got < model[:people.size] - 1e-9).sum())
    print(f"held: 6 threads on 2 handles through relayouts: {short} people below the model")
    return short


def key_file_bit_flips(tmp: str) -> int:
    path = os.path.join(tmp, "k.sqlite")
    ledger = PrivacyLedger.create(path, P)
    people = np.sort(np.arange(1, 500, dtype=np.uint64) * np.uint64(2**55 + 12345))
    for _ in range(3):
        ledger.charge(people, np.full(people.size, 0.1))
    ref = ledger.spent(people)
    ledger.close()
    with open(path + ".key", "rb") as f:
        key = f.read()
    counts = {"refused": 0, "same": 0, "other": 0}
    for bit in range(len(key) * 8):
        d = tempfile.mkdtemp(dir=tmp)
        p = os.path.join(d, "k.sqlite")
        for s in ("", "-wal"):
            if os.path.exists(path + s):
                shutil.copy(path + s, p + s)
        flipped = bytearray(key)
        flipped[bit // 8] ^= 1 << bit % 8
        with open(p + ".key", "wb") as f:
            f.write(bytes(flipped))
        try:
            m = PrivacyLedger.open(p, P)
            counts["same" if np.array_equal(m.spent(people), ref) else "other"] += 1
            m.close()
        except LedgerError:
            counts["refused"] += 1
        except Exception:
            counts["other"] += 1
        shutil.rmtree(d)
    print(f"held: {len(key) * 8} key-file bit flips: {counts}")
    return counts["other"]


def trust_model_limits(tmp: str) -> None:
    """Not detectable by the files alone: the key file is the anchor of the commit counter."""
    path = os.path.join(tmp, "r.sqlite")
    ledger = PrivacyLedger.create(path, P)
    ledger.charge(H, np.full(3, 0.25))
    ledger.close()
    snap = os.path.join(tmp, "snap")
    os.mkdir(snap)
    for s in ("", "-wal", ".key"):
        if os.path.exists(path + s):
            shutil.copy(path + s, os.path.join(snap, "r.sqlite" + s))
    ledger = PrivacyLedger.open(path, P)
    ledger.charge(H, np.full(3, 0.7))
    ledger.close()
    for s in ("-wal", "-shm"):
        if os.path.exists(path + s):
            os.unlink(path + s)
    for s in ("", "-wal", ".key"):
        if os.path.exists(os.path.join(snap, "r.sqlite" + s)):
            shutil.copy(os.path.join(snap, "r.sqlite" + s), path + s)
    restored = PrivacyLedger.open(path, P)
    print(f"limit: data and key files restored together from a snapshot: spend {restored.spent(H).tolist()} "
          f"(released 0.95 each), opens without error")
    restored.charge(H, np.full(3, 0.7))
    restored.backup(os.path.join(tmp, "b.sqlite"))  # both now at 0.95
    backup = PrivacyLedger.open(os.path.join(tmp, "b.sqlite"), P)
    a, b = restored.charge(H, np.full(3, 0.04)), backup.charge(H, np.full(3, 0.04))
    print(f"limit: a backup charged alongside its original: they admit {int(a.sum())} and {int(b.sum())} of 3 "
          f"(each shows {float(backup.spent(H)[0]):.2f}; released {0.95 + 0.08:.2f})")


def main(quick: bool = False) -> int:
    found = 0
    with tempfile.TemporaryDirectory() as tmp:
        found += bricked_by_query_row(tmp) > 0
        found += numpy_parameters(tmp)
        found += two_dimensional_charge()
        found += decimal_ids() > 0
        found += failed_creation_removes_concurrent_ledger(tmp)
        relayout_kills(tmp, kills=8 if quick else 25)
        threads_and_handles(tmp)
        key_file_bit_flips(tmp)
        trust_model_limits(tmp)
    print(f"{found} of 5 findings reproduce on this code")
    return found


if __name__ == "__main__":
    main("--quick" in sys.argv)
