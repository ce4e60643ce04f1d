"""A durable privacy ledger: every individual's spent privacy loss, in SQLite.

Guarantees (tested in ``tests/test_ledger.py``):

* **Committed before released.** :meth:`PrivacyLedger.charge` commits the charges of a
  query (``synchronous=FULL``) and only then returns the set of admitted
  individuals; the caller computes and releases the answer afterwards. A process
  killed at any point has therefore recorded at least what every released answer
  cost.
* **No double spending.** A charge runs in one ``BEGIN IMMEDIATE`` transaction that
  re-reads the state, so two processes sharing a ledger serialise their charges.
* **Never above the budget.** An individual is admitted only if their recorded loss
  plus the new charge (rounded up) stays within the budget; otherwise they are
  retired for good and charged nothing.
* **No private values.** Individuals are stored as 64-bit keyed hashes (SipHash-2-4
  via ``pandas.util.hash_pandas_object`` with a random per-ledger key) next to their
  losses. Two ids that collide share one budget, which only over-charges them.
* **Refuses what it does not recognise.** A file that is not a ledger, a corrupted
  one, or one made for other parameters (kind, order, budget) raises
  :class:`LedgerError`; spent budget is never silently reset.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.analysis.rounding import up_array
from opendp_hybridad.errors import HybridADError

FORMAT = "opendp-hybridad-ledger-v1"


class LedgerError(HybridADError, RuntimeError):
    """The ledger file cannot be used as asked; nothing was changed."""


@dataclass(frozen=True)
class LedgerParameters:
    kind: str          # "renyi" or "gdp"
    budget: float      # B for renyi (at order alpha), mu^2 for gdp
    alpha: float | None = None


@dataclass
class _State:
    version: int
    hashes: np.ndarray   # sorted unique uint64
    spent: np.ndarray    # float64, recorded loss per individual
    retired: np.ndarray  # bool


class PrivacyLedger:
    """Per-individual privacy loss, persisted in SQLite (``":memory:"`` for experiments)."""

    def __init__(self, path: str | os.PathLike[str], parameters: LedgerParameters):
        if not (parameters.budget > 0 and math.isfinite(parameters.budget)):
            raise LedgerError("the privacy budget must be a positive finite number")
        if parameters.kind == "renyi" and not (parameters.alpha is not None and parameters.alpha > 1):
            raise LedgerError("a Renyi ledger needs an order alpha > 1")
        self.path = str(path)
        self.parameters = parameters
        try:
            self._db = sqlite3.connect(self.path, timeout=120.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._open()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a usable ledger (corrupted, or not a SQLite database): {exc}") from None
        self._cache: _State | None = None
        self._positions_cache: tuple | None = None

    # -- schema -------------------------------------------------------------------
    def _open(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            self._create()
            return
        if not {"meta", "state", "members", "queries"} <= tables:
            raise LedgerError(f"{self.path} is a SQLite database but not an opendp-hybridad ledger")
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise LedgerError(f"{self.path} is not an opendp-hybridad ledger (format {meta.get('format')!r})")
        stored = LedgerParameters(meta["kind"], float(meta["budget"]), None if meta["alpha"] == "" else float(meta["alpha"]))
        if stored != self.parameters:
            raise LedgerError(
                f"{self.path} was created for {stored}, not {self.parameters}; open it with its own parameters "
                "(spent budget is never reset)"
            )
        self.salt = meta["salt"]

    def _create(self) -> None:
        self.salt = secrets.token_hex(8)  # 16 characters: SipHash's key for hash_pandas_object
        p = self.parameters
        with self._transaction():
            self._db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", FORMAT), ("kind", p.kind), ("budget", repr(p.budget)),
                ("alpha", "" if p.alpha is None else repr(p.alpha)), ("salt", self.salt), ("created", repr(time.time())),
            ])
            # members (sorted hashes) only change when new individuals arrive; the
            # per-query write is the spent and retired arrays
            self._db.execute("CREATE TABLE members (id INTEGER PRIMARY KEY CHECK (id = 0), hashes BLOB NOT NULL)")
            self._db.execute("INSERT INTO members VALUES (0, ?)", (b"",))
            self._db.execute("CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL, "
                             "members INTEGER NOT NULL, spent BLOB NOT NULL, retired BLOB NOT NULL)")
            self._db.execute("INSERT INTO state VALUES (0, 0, 0, ?, ?)", (b"", b""))
            self._db.execute("CREATE TABLE queries (seq INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, "
                             "label TEXT, noise_scale REAL, admitted INTEGER, retired_now INTEGER, "
                             "worst_case_charge REAL, max_charge REAL)")

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _transaction(self) -> PrivacyLedger._Tx:
        return PrivacyLedger._Tx(self._db)

    # -- state ----------------------------------------------------------------------
    def _read_state(self) -> _State:
        (version,) = self._db.execute("SELECT version FROM state WHERE id = 0").fetchone()
        if self._cache is not None and self._cache.version == version:
            return self._cache
        members, spent, retired = self._db.execute("SELECT members, spent, retired FROM state WHERE id = 0").fetchone()
        if self._cache is not None and self._cache.hashes.size == members:
            hashes = self._cache.hashes  # the member set only grows: same size, same set
        else:
            hashes = np.frombuffer(self._db.execute("SELECT hashes FROM members WHERE id = 0").fetchone()[0], dtype=np.uint64).copy()
        state = _State(version, hashes, np.frombuffer(spent, dtype=np.float64).copy(), np.frombuffer(retired, dtype=np.bool_).copy())
        if not (state.hashes.size == state.spent.size == state.retired.size):
            raise LedgerError(f"{self.path} is corrupted: its state arrays disagree in length")
        self._cache = state
        return state

    def hash_ids(self, ids: pd.Series) -> np.ndarray:
        """Keyed 64-bit hashes of individual ids (the only form in which ids are stored)."""
        return pd.util.hash_pandas_object(ids.astype(str), index=False, hash_key=self.salt).to_numpy(dtype=np.uint64)

    def charge(self, hashes: np.ndarray, charges: np.ndarray, *, label: str = "", noise_scale: float = math.nan,
               worst_case_charge: float = math.nan) -> np.ndarray:
        """Admit and charge individuals, durably, before any answer exists.

        ``hashes`` are unique individual hashes and ``charges`` their losses for this
        query (>= 0). Returns the boolean mask of admitted individuals: those not
        retired whose recorded loss plus their charge (rounded up) stays within the
        budget. The others are retired and charged nothing.
        """
        hashes = np.asarray(hashes, dtype=np.uint64)
        charges = np.asarray(charges, dtype=np.float64)
        if hashes.shape != charges.shape:
            raise ValueError("hashes and charges must have the same shape")
        if np.any(~(charges >= 0)):
            raise ValueError("charges must be non-negative numbers")
        budget = self.parameters.budget
        with self._transaction():
            state = self._read_state()
            known, spent, retired = state.hashes, state.spent.copy(), state.retired.copy()
            idx, found = self._positions(known, hashes)
            if not found.all():  # individuals new to the ledger start with nothing spent
                merged = np.concatenate([known, hashes[~found]])
                order = np.argsort(merged, kind="stable")
                known = merged[order]
                spent = np.concatenate([spent, np.zeros(int((~found).sum()))])[order]
                retired = np.concatenate([retired, np.zeros(int((~found).sum()), dtype=bool)])[order]
                idx, found = self._positions(known, hashes)
                self._db.execute("UPDATE members SET hashes = ? WHERE id = 0", (known.tobytes(),))
            recorded = spent[idx] + charges
            recorded = np.where(charges > 0, up_array(recorded), recorded)  # never under-record
            admitted = ~retired[idx] & (recorded <= budget)
            newly_retired = ~retired[idx] & ~admitted
            spent[idx[admitted]] = recorded[admitted]
            retired[idx[newly_retired]] = True
            version = state.version + 1
            self._db.execute("UPDATE state SET version = ?, members = ?, spent = ?, retired = ? WHERE id = 0",
                             (version, int(known.size), spent.tobytes(), retired.tobytes()))
            self._db.execute(
                "INSERT INTO queries (created, label, noise_scale, admitted, retired_now, worst_case_charge, max_charge) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), label, float(noise_scale), int(admitted.sum()), int(newly_retired.sum()),
                 float(worst_case_charge), float(charges.max(initial=0.0))),
            )
        self._cache = _State(version, known, spent, retired)
        return admitted

    def _positions(self, known: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each hash in the sorted member array, and whether it is a member.

        Cached per (member count, hashes array): members are only ever added, so an
        unchanged count means an unchanged array, and a filter asks with the same
        hashes every query.
        """
        key = (known.size, id(hashes), hashes.size)
        if self._positions_cache is not None and self._positions_cache[0] == key and self._positions_cache[1] is hashes:
            return self._positions_cache[2], self._positions_cache[3]
        if known.size == 0:
            idx, found = np.zeros(hashes.shape, dtype=np.intp), np.zeros(hashes.shape, dtype=bool)
        else:
            idx = np.clip(np.searchsorted(known, hashes), 0, known.size - 1)
            found = known[idx] == hashes
        self._positions_cache = (key, hashes, idx, found)
        return idx, found

    # -- reading ----------------------------------------------------------------------
    def _lookup(self, hashes: np.ndarray) -> tuple[_State, np.ndarray, np.ndarray]:
        state = self._read_state()
        idx, found = self._positions(state.hashes, np.asarray(hashes, dtype=np.uint64))
        return state, idx, found

    def spent(self, hashes: np.ndarray | None = None) -> np.ndarray:
        """Recorded loss of the given individuals (0 for unknown ones), or of all."""
        if hashes is None:
            return self._read_state().spent.copy()
        state, idx, known = self._lookup(hashes)
        return np.where(known, state.spent[idx] if state.spent.size else 0.0, 0.0)

    def retired(self, hashes: np.ndarray) -> np.ndarray:
        state, idx, known = self._lookup(hashes)
        return known & (state.retired[idx] if state.retired.size else False)

    def summary(self) -> dict[str, Any]:
        state = self._read_state()
        queries = self._db.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
        return {"individuals": int(state.hashes.size), "retired": int(state.retired.sum()),
                "active": int((~state.retired).sum()), "queries": int(queries),
                "max_spent": float(state.spent.max(initial=0.0)), "budget": self.parameters.budget}

    def queries(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM queries ORDER BY seq", self._db)

    def close(self) -> None:
        self._db.close()
