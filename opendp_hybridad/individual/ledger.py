"""A durable privacy ledger: every individual's spent privacy loss, in SQLite.

Guarantees (tested in ``tests/test_ledger*.py`` and ``tests/test_individual.py``):

* **Committed before released.** :meth:`PrivacyLedger.charge` commits the charges of a
  query (``synchronous=FULL``) and only then returns the set of admitted
  individuals; the caller computes and releases the answer afterwards. A process
  killed at any point has therefore recorded at least what every released answer
  cost.
* **No double spending.** A charge runs in one ``BEGIN IMMEDIATE`` transaction that
  re-reads the state, so two processes sharing a ledger serialise their charges; threads
  sharing one :class:`PrivacyLedger` serialise on its lock.
* **Never above the budget.** An individual is admitted only if their recorded loss
  plus the new charge (rounded up) stays within the budget; otherwise they are
  retired for good and charged nothing.
* **No private values.** Individuals are stored as 64-bit keyed hashes (SipHash-2-4
  via ``pandas.util.hash_pandas_object`` with a per-ledger key derived from the key file's
  secret, ``HMAC(secret, "id-hash")``, never stored in the data file) of their canonical
  typed id (:mod:`opendp_hybridad.individual.ids`, whose encoding name is one of the
  ledger's parameters). Two ids that collide share one budget, which only over-charges them.
* **Never forgets.** A ledger is created only by :meth:`PrivacyLedger.create`, or by the
  constructor when neither the data file nor its key file exists. Opening an existing file
  never creates anything.
* **Creation survives a crash.** The key file is written under a temporary name and linked
  into place marked "creating" (and locked); the tables are committed and verified; only then
  is it marked "ready". Only a ready ledger opens, so only a ready ledger can hold a charge.
  ``create`` (never ``open``) redoes a creation that was cut off: the key says "creating",
  no process holds its lock, and the data file holds no bucket or query row. Anything else
  that exists is refused.
* **Integrity.** The ledger's secret lives in a key file apart from the data (``<path>.key``,
  mode 0600). Individuals are stored in ``2**bits`` buckets (by the top ``bits`` bits of their
  hash; ``bits`` grows with the number of people, about 128 a bucket), each with an HMAC-SHA256
  over its layout, number and content. A head row holds an HMAC over the parameters, a commit
  counter, the member and query counts, ``bits``, the root of a fixed-shape SHA-256 Merkle tree
  over all bucket MACs in bucket order (zeros for an empty bucket; :mod:`merkle`) and a SHA-256
  chain over the query-row MACs. The root binds every bucket MAC at its position as a SHA-256
  over all of them concatenated would (not their XOR: an XOR is linear, so old bucket rows whose
  MAC changes cancel out could be spliced back without the key); a charge rehashes only the
  tree's nodes above the buckets it changes. The key file also records the counter (updated
  after each commit), so an older copy of the data (a copy without its WAL, a rolled-back file)
  is refused. Opening checks every MAC and the root; anything altered, truncated, replaced or
  rolled back raises :class:`LedgerError`; spent budget is never silently reset.
* **Cost.** A charge writes the rows of the buckets it changes (about a page each), the query
  row and the head; its other work is vectorised passes over the charges it is given. When the
  people outgrow the layout (twice the target per bucket), one charge rewrites every bucket in
  a layout with more bits. Another process's changes are read as the buckets written since.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.analysis.rounding import up_array
from opendp_hybridad.errors import HybridADError
from opendp_hybridad.individual import ids as _ids
from opendp_hybridad.individual import merkle

FORMAT = "opendp-hybridad-ledger-v4"
#: people per bucket the layout aims at (between 64 and 256 on average as people are added): a bucket row,
#: 17 bytes a person, is a fraction of a page, so a charge that changes k people writes at most about k pages,
#: however many people the ledger holds
TARGET = 128
#: SQLite page size of new ledgers: three or four bucket rows fill a page, where 4 KiB pages held one each
#: (a 30% larger file)
PAGE_SIZE = 8192
MAX_BITS = 24  # 2**24 buckets of about 128 people; the Merkle tree's leaves alone take 512 MiB there
_KEY_HEADER = b"opendp-hybridad-ledger-key-v3\n"
_COUNTER_OFFSET = len(_KEY_HEADER) + 65  # header, 64 hex digits of secret and a newline
_COUNTER_WIDTH = 20
_STATE_OFFSET = _COUNTER_OFFSET + _COUNTER_WIDTH + 1
#: a key file says "creating" until its ledger's tables are committed and verified, then "ready"; only a
#: ready ledger opens, so one whose key says "creating" has never had a charge committed
_CREATING, _READY = b"creating", b"ready   "
_READ_ERRORS = (sqlite3.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error, OverflowError)


#: ids encoded and hashed per chunk by :meth:`PrivacyLedger.hash_ids`
ID_CHUNK = 1 << 20


class LedgerError(HybridADError, RuntimeError):
    """The ledger file cannot be used as asked; nothing was changed."""


@dataclass(frozen=True)
class LedgerParameters:
    kind: str          # "renyi" or "gdp"
    budget: float      # B for renyi (at order alpha), mu^2 for gdp
    alpha: float | None = None
    id_encoding: str = _ids.ENCODING  # how ids become hashed keys (ids.py)


@dataclass
class _State:
    counter: int
    bits: int            # 2**bits buckets, by the top ``bits`` bits of a hash
    hashes: np.ndarray   # sorted unique uint64 (bucket order = sorted order)
    spent: np.ndarray    # float64, recorded loss per individual
    retired: np.ndarray  # bool
    tree: merkle.Levels  # Merkle tree over the bucket MACs (leaf b: bucket b's MAC, zeros if empty)
    queries: int
    qchain: bytes        # SHA-256 chain over the query-row MACs, in order


def _layout_bits(members: int) -> int:
    """The fewest bucket bits that hold ``members`` people with at most TARGET a bucket on average."""
    bits = 0
    while bits < MAX_BITS and members > TARGET << bits:
        bits += 1
    return bits


def _bucket_of(hashes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0:
        return np.zeros(hashes.shape, dtype=np.int64)
    return (hashes >> np.uint64(64 - bits)).astype(np.int64)


def _bounds(hashes: np.ndarray, buckets: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each of ``buckets`` in the sorted hash array."""
    if bits == 0:
        return np.zeros(buckets.shape, dtype=np.intp), np.full(buckets.shape, hashes.size, dtype=np.intp)
    shift = np.uint64(64 - bits)
    b = buckets.astype(np.uint64)
    nxt = b + np.uint64(1)
    last = nxt == np.uint64(1 << bits)  # its end is the array's end (nxt << shift would wrap to 0)
    starts = np.searchsorted(hashes, b << shift)
    ends = np.where(last, hashes.size, np.searchsorted(hashes, np.where(last, np.uint64(0), nxt) << shift))
    return starts, ends


def _span(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[j] .. starts[j] + lengths[j] - 1`` for every j, in order (no Python loop)."""
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))


def _runs(values: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array (not np.unique: see :func:`_distinct`)."""
    if values.size < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


def _stored_real(value: Any) -> float | None:
    """A query row's REAL value as SQLite returns it, so the row's MAC is over what is read back.

    NaN is stored as NULL, and -0.0 as the integer 0 (SQLite keeps integral REALs as integers), read
    back as 0.0. (The label is stored as plain text for the same reason: a TEXT column turns 5 or True
    into text, and numpy's ``str_`` or a ``StrEnum`` has another ``repr`` than its text.)
    """
    v = float(value)
    return None if math.isnan(v) else v + 0.0  # -0.0 + 0.0 is 0.0


def _key_file_bytes(secret: bytes, counter: int, state: bytes) -> bytes:
    return (_KEY_HEADER + secret.hex().encode() + b"\n" + str(counter).rjust(_COUNTER_WIDTH).encode() + b"\n"
            + state + b"\n")


def _fsync_directory(path: str) -> None:
    """Make the directory entry of ``path`` durable (a new or linked name is not, until its directory is)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _distinct(hashes: np.ndarray) -> bool:
    """Whether no hash repeats: O(n) when sorted (a filter's hashes are), else a sort.

    Not ``np.unique``: numpy 2's hash-based unique costs about 1 s per million uint64s, which made
    this check the dominant cost of every query.
    """
    if hashes.size < 2:
        return True
    if bool(np.all(hashes[1:] > hashes[:-1])):
        return True
    ordered = np.sort(hashes)
    return bool(np.all(ordered[1:] != ordered[:-1]))


@dataclass(frozen=True)
class IdHasher:
    """The ledger's keyed id hash, alone: the one home of how an id becomes the 64-bit hash the ledger records.

    Picklable (it holds the ledger's salt and nothing else), so a distributed engine's workers hash
    the ids of their own partitions (:mod:`~opendp_hybridad.individual.dask_filter`): a value's hash
    depends on that value alone (its canonical typed key, ``ids.py``), so hashing a part of a column
    gives the hashes the whole column has.
    """

    salt: str

    def keys(self, keys: pd.Series) -> np.ndarray:
        """Keyed 64-bit hashes of canonical id keys (:func:`ids.id_keys` output)."""
        return pd.util.hash_pandas_object(pd.Series(keys, dtype=object).astype(str), index=False,
                                          hash_key=self.salt).to_numpy(dtype=np.uint64)

    def ids(self, ids: Any) -> np.ndarray:
        """Keyed 64-bit hashes of individual ids, through the canonical typed encoding (``ids.py``)."""
        ids = (ids if isinstance(ids, pd.Series) else pd.Series(list(ids))).reset_index(drop=True)
        # encoded a chunk at a time: each key is a Python string (about 70 bytes), so encoding a
        # hundred million ids at once would need tens of GB; a key never depends on other rows
        out = np.empty(len(ids), dtype=np.uint64)
        for start in range(0, len(ids), ID_CHUNK):
            part = ids.iloc[start:start + ID_CHUNK].reset_index(drop=True)
            out[start:start + len(part)] = self.keys(_ids.id_keys(part))
        return out


class PrivacyLedger:
    """Per-individual privacy loss, persisted in SQLite (``":memory:"`` for experiments).

    ``PrivacyLedger(path, parameters)`` opens an existing ledger, or creates one when neither
    ``path`` nor its key file exists; :meth:`create` only creates and :meth:`open` only opens.
    ``key_path`` (default ``<path>.key``) is the file holding the ledger's secret.
    """

    def __init__(self, path: str | os.PathLike[str], parameters: LedgerParameters, *,
                 key_path: str | os.PathLike[str] | None = None, create: bool | None = None):
        if not (parameters.budget > 0 and math.isfinite(parameters.budget)):
            raise LedgerError("the privacy budget must be a positive finite number")
        if parameters.kind == "renyi" and not (parameters.alpha is not None and parameters.alpha > 1):
            raise LedgerError("a Renyi ledger needs an order alpha > 1")
        self.path = str(path)
        self.parameters = parameters
        self._lock = threading.RLock()
        self._positions_cache: tuple | None = None
        self._key_fd: int | None = None
        self._floor = 0  # the key file's counter when the current transaction began
        memory = self.path == ":memory:"
        self.key_path = None if memory else str(key_path) if key_path is not None else self.path + ".key"
        exists = not memory and (os.path.exists(self.path) or os.path.exists(self.key_path))
        if create is None:
            create = not exists
        if memory:
            self._secret = secrets.token_bytes(32)
        elif create:  # a new key file, or the one of a creation that was cut off and provably holds no charge
            self._secret = self._reclaim_interrupted_creation() if exists else self._create_key_file()
        else:
            if not os.path.exists(self.path) and not os.path.exists(self.key_path):
                raise LedgerError(f"{self.path} does not exist; create a ledger with PrivacyLedger.create")
            self._secret = self._read_key_file()
            if not os.path.exists(self.path):
                self._close_quietly()
                raise LedgerError(f"{self.path} does not exist but its key file does: the ledger was deleted or "
                                  "moved without its key; it is not recreated (spent budget is never reset)")
        self._mac_key = hmac.digest(self._secret, b"opendp-hybridad ledger MAC key v2", "sha256")
        # SipHash's key for hash_pandas_object (16 characters), derived from the key file's secret: it is
        # never stored in the data file, so a data file without its key file has no linkable id hashes
        self.salt = hmac.digest(self._secret, b"id-hash", "sha256")[:8].hex()
        try:
            if not memory and not create and os.path.getsize(self.path) == 0:
                raise LedgerError(f"{self.path} is empty (truncated?): not a usable ledger")
            self._db = sqlite3.connect(self.path, timeout=120.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")
            if create:  # only before the first table (and WAL): fixed for the file's life
                self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            if not memory:
                self._db.execute("PRAGMA journal_mode=WAL")
            if create:
                self._create()
            self._open()
            if create and not memory:
                self._mark_ready()
        except _READ_ERRORS as exc:
            self._abandon(create and not memory)
            raise LedgerError(f"{self.path} is not a usable ledger (corrupted, or not a SQLite database): "
                              f"{type(exc).__name__}: {exc}") from None
        except LedgerError:
            self._abandon(create and not memory)
            raise

    def _abandon(self, created: bool) -> None:
        """Close after a failure; a failed creation first removes its files, while it still holds the key's lock.

        Removed after the lock was released (closing the key file releases it), the files could be a ledger
        that a concurrent ``create`` made in between, redoing what looked like an interrupted creation.
        """
        if created:
            self._remove_created()
        self._close_quietly()

    def _remove_created(self) -> None:
        for p in (self.path, self.path + "-wal", self.path + "-shm", self.key_path):
            with contextlib.suppress(OSError):
                os.unlink(p)

    @classmethod
    def create(cls, path: str | os.PathLike[str], parameters: LedgerParameters, *,
               key_path: str | os.PathLike[str] | None = None) -> PrivacyLedger:
        """A new, empty ledger at ``path`` (and its key file); refused if either exists."""
        return cls(path, parameters, key_path=key_path, create=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], parameters: LedgerParameters, *,
             key_path: str | os.PathLike[str] | None = None) -> PrivacyLedger:
        """An existing ledger; never creates one."""
        return cls(path, parameters, key_path=key_path, create=False)

    # -- key file ---------------------------------------------------------------------
    def _create_key_file(self) -> bytes:
        """A new key file marked "creating", written under a temporary name and linked into place.

        Linking never replaces a file and never leaves a partly written key file at ``key_path``. The
        file stays locked (flock) until :meth:`_mark_ready`: a concurrent ``create`` sees a creation
        under way, not an interrupted one.
        """
        secret = secrets.token_bytes(32)
        tmp = f"{self.key_path}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, _key_file_bytes(secret, 0, _CREATING))
            os.fsync(fd)
            try:
                os.link(tmp, self.key_path)
            except FileExistsError:
                raise LedgerError(f"the key file {self.key_path} already exists") from None
            _fsync_directory(self.key_path)
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._key_fd = fd
        return secret

    def _mark_ready(self) -> None:
        """The tables are committed and verified: from now on the ledger opens (and can hold charges)."""
        _fsync_directory(self.path)  # the data file's name is durable before the key says it exists
        os.pwrite(self._key_fd, _READY, _STATE_OFFSET)
        os.fsync(self._key_fd)
        fcntl.flock(self._key_fd, fcntl.LOCK_UN)

    def _parse_key_file(self, fd: int) -> tuple[bytes, bytes]:
        """The secret and the state ("creating" or "ready") of an open key file."""
        try:
            data = os.pread(fd, 4096, 0)
            state = data[_STATE_OFFSET:_STATE_OFFSET + len(_READY)]
            if not (data.startswith(_KEY_HEADER) and state in (_CREATING, _READY)):
                raise ValueError("bad header or state")
            return bytes.fromhex(data[len(_KEY_HEADER):len(_KEY_HEADER) + 64].decode("ascii")), state
        except (ValueError, UnicodeDecodeError):
            raise LedgerError(f"{self.key_path} is not a ledger key file") from None

    def _read_key_file(self) -> bytes:
        try:
            fd = os.open(self.key_path, os.O_RDWR)
        except OSError as exc:
            raise LedgerError(f"the ledger's key file {self.key_path} cannot be opened ({exc.strerror}); a ledger "
                              "is only usable with its key") from None
        self._key_fd = fd
        try:
            secret, state = self._parse_key_file(fd)
            if state != _READY:
                raise LedgerError(f"the creation of {self.path} never finished (or is under way): its key file is not "
                                  "marked ready, so it holds no charge; finish it with PrivacyLedger.create(path, "
                                  "parameters), which redoes it")
            return secret
        except LedgerError:
            self._close_quietly()
            raise

    def _reclaim_interrupted_creation(self) -> bytes:
        """The secret of a creation at this path that was cut off, its data files removed to redo it.

        Only when the key file says "creating" (a ledger opens, and so can be charged, only once its key
        says "ready"), no other process is creating it (the key file's lock is free), and the data
        file holds no bucket and no query row: provably nothing was ever committed. Anything else
        is refused: an existing ledger is never created over.
        """
        exists = LedgerError(f"{self.path} (or its key file {self.key_path}) already exists; open it instead "
                             "(a ledger is never created over an existing one)")
        try:
            fd = os.open(self.key_path, os.O_RDWR)
        except OSError:
            raise exists from None  # a data file without its key file is never replaced
        try:
            secret, state = self._parse_key_file(fd)
            if state != _CREATING:
                raise exists
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LedgerError(f"{self.path} is being created by another process") from None
            try:
                linked = os.stat(self.key_path)
            except FileNotFoundError:
                linked = None
            opened = os.fstat(fd)
            if linked is None or (linked.st_dev, linked.st_ino) != (opened.st_dev, opened.st_ino):
                # the creation we opened failed and removed its files (before releasing the lock), or another
                # key file has been linked since: not ours to redo
                raise LedgerError(f"{self.path} is being created or removed by another process; try again")
            if self._parse_key_file(fd)[1] != _CREATING:  # finished while we waited for the lock
                raise exists
            self._refuse_unless_nothing_committed()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
        except BaseException:
            os.close(fd)
            raise
        self._key_fd = fd
        return secret

    def _refuse_unless_nothing_committed(self) -> None:
        """Raise unless the data file (with its WAL) is absent, empty, or holds the tables and no row of spend."""
        refused = (f"{self.path} was never marked ready, but {{}}; refused (a ledger that may hold spent budget is "
                   "never created over; remove its files by hand only if you know it holds none)")
        wal = self.path + "-wal"
        if not os.path.exists(self.path):
            if os.path.exists(wal) and os.path.getsize(wal) > 0:
                raise LedgerError(refused.format("its WAL remains without its data file"))
            return
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=120.0, isolation_level=None)) as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not tables:
                    return
                if tables != {"meta", "buckets", "head", "queries"}:  # created in one transaction: all or none
                    raise LedgerError(refused.format("it holds other tables"))
                rows = sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("buckets", "queries"))  # noqa: S608
        except sqlite3.Error as exc:
            raise LedgerError(refused.format(f"it cannot be read ({type(exc).__name__})")) from None
        if rows:
            raise LedgerError(refused.format("it holds committed charges"))

    def _key_counter(self) -> int:
        if self._key_fd is None:
            return 0
        try:
            return int(os.pread(self._key_fd, _COUNTER_WIDTH, _COUNTER_OFFSET).decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise LedgerError(f"{self.key_path} is not a ledger key file (bad counter)") from None

    def _raise_key_counter(self, counter: int) -> None:
        """Record in the key file that the data has reached ``counter`` (only ever raised)."""
        if self._key_fd is None:
            return
        fcntl.flock(self._key_fd, fcntl.LOCK_EX)
        try:
            if counter > self._key_counter():
                os.pwrite(self._key_fd, str(counter).rjust(_COUNTER_WIDTH).encode(), _COUNTER_OFFSET)
                os.fsync(self._key_fd)
        finally:
            fcntl.flock(self._key_fd, fcntl.LOCK_UN)

    # -- MACs -------------------------------------------------------------------------
    def _bucket_mac(self, bits: int, b: int, hashes: bytes, spent: bytes, retired: bytes) -> bytes:
        # the layout (bits) is bound too: a row from an older layout never verifies in the current one
        return hmac.digest(self._mac_key, b"B" + struct.pack("<IIQ", bits, b, len(hashes) // 8) + hashes + spent
                           + retired, "sha256")

    def _query_mac(self, row: tuple) -> bytes:
        return hmac.digest(self._mac_key, b"Q" + repr(tuple(row)).encode(), "sha256")

    def _head_mac(self, counter: int, members: int, queries: int, bits: int, root: bytes, qchain: bytes) -> bytes:
        return hmac.digest(self._mac_key, b"H" + self._meta_blob + struct.pack("<QQQI", counter, members, queries, bits)
                           + root + qchain, "sha256")

    @staticmethod
    def _chain(qchain: bytes, qmac: bytes) -> bytes:
        return hashlib.sha256(qchain + qmac).digest()

    # -- schema -------------------------------------------------------------------------
    def _create(self) -> None:
        p = self.parameters
        # repr of a Python float (a numpy float's repr is "np.float64(8.0)", which float() cannot read back)
        meta = {"format": FORMAT, "kind": p.kind, "budget": repr(float(p.budget)),
                "alpha": "" if p.alpha is None else repr(float(p.alpha)), "id_encoding": p.id_encoding,
                "created": repr(time.time())}
        self._meta_blob = json.dumps(meta, sort_keys=True).encode()
        with self._transaction():
            self._db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
            self._db.execute("CREATE TABLE buckets (b INTEGER PRIMARY KEY, ver INTEGER NOT NULL, hashes BLOB NOT NULL, "
                             "spent BLOB NOT NULL, retired BLOB NOT NULL, mac BLOB NOT NULL)")
            self._db.execute("CREATE INDEX buckets_ver ON buckets (ver)")
            self._db.execute("CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 0), counter INTEGER NOT NULL, "
                             "members INTEGER NOT NULL, queries INTEGER NOT NULL, bits INTEGER NOT NULL, "
                             "root BLOB NOT NULL, qchain BLOB NOT NULL, mac BLOB NOT NULL)")
            zero = bytes(32)
            root = merkle.root(merkle.build(np.zeros((1, 32), dtype=np.uint8)))
            self._db.execute("INSERT INTO head VALUES (0, 0, 0, 0, 0, ?, ?, ?)",
                             (root, zero, self._head_mac(0, 0, 0, 0, root, zero)))
            self._db.execute("CREATE TABLE queries (seq INTEGER PRIMARY KEY, created REAL NOT NULL, "
                             "label TEXT, noise_scale REAL, admitted INTEGER, retired_now INTEGER, "
                             "worst_case_charge REAL, max_charge REAL, mac BLOB NOT NULL)")

    def _open(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            raise LedgerError(f"{self.path} is an empty database, not a ledger (was it truncated or replaced?); "
                              "an existing file is never turned into a new ledger")
        if not {"meta", "buckets", "head", "queries"} <= tables:
            raise LedgerError(f"{self.path} is a SQLite database but not an opendp-hybridad ledger")
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise LedgerError(f"{self.path} is not an opendp-hybridad ledger (format {meta.get('format')!r})")
        self._meta_blob = json.dumps(meta, sort_keys=True).encode()
        stored = LedgerParameters(meta["kind"], float(meta["budget"]), None if meta["alpha"] == "" else float(meta["alpha"]),
                                  meta.get("id_encoding", ""))
        if stored.id_encoding != self.parameters.id_encoding:  # its people's keys would not be found again
            raise LedgerError(
                f"{self.path} keys ids with encoding {str(stored.id_encoding)[:40]!r}, this version expects "
                f"{str(self.parameters.id_encoding)[:40]!r}: refused, since a person could get a second budget "
                "(spent budget is never reset)"
            )
        if stored != self.parameters:
            raise LedgerError(
                f"{self.path} was created for {stored}, not {self.parameters}; open it with its own parameters "
                "(spent budget is never reset)"
            )
        if "salt" in meta:
            raise LedgerError(f"{self.path} stores its id-hashing key in the data file (an older format); refused")
        self._state: _State | None = None
        with self._lock, self._read():
            self._sync()

    class _Tx:
        def __init__(self, ledger: PrivacyLedger, begin: str):
            self.ledger, self.begin = ledger, begin

        def __enter__(self) -> sqlite3.Connection:
            # the key file's counter is read before the snapshot starts: it is raised only after its commit,
            # so the snapshot holds that commit. Read after, a commit by another process in between (and
            # its counter) would make this snapshot look rolled back.
            self.ledger._floor = self.ledger._key_counter()
            self.ledger._db.execute(self.begin)
            return self.ledger._db

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            self.ledger._db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _transaction(self) -> PrivacyLedger._Tx:
        return PrivacyLedger._Tx(self, "BEGIN IMMEDIATE")

    def _read(self) -> PrivacyLedger._Tx:
        return PrivacyLedger._Tx(self, "BEGIN")  # one snapshot for several SELECTs

    # -- state ----------------------------------------------------------------------------
    def _corrupt(self, what: str) -> LedgerError:
        self._state = None
        return LedgerError(f"{self.path} failed its integrity check ({what}): altered, truncated, replaced or "
                           "rolled back; refused (spent budget is never reset)")

    def _sync(self) -> _State:
        """The verified state as committed now; reads only the buckets written since the cached state.

        Nothing cached changes until every check has passed.
        """
        row = self._db.execute("SELECT counter, members, queries, bits, root, qchain, mac FROM head WHERE id = 0").fetchone()
        if row is None:
            raise self._corrupt("no head row")
        counter, members, queries, bits, root, qchain, mac = row
        root, qchain = bytes(root), bytes(qchain)
        if not hmac.compare_digest(bytes(mac), self._head_mac(counter, members, queries, bits, root, qchain)):
            raise self._corrupt("head MAC")
        if counter < self._floor:
            raise self._corrupt(f"commit {counter} is older than the key file's {self._floor}")
        state = self._state
        if state is not None and state.counter == counter:
            return state
        if not 0 <= bits <= MAX_BITS:
            raise self._corrupt("layout")
        full = state is None or state.bits != bits  # a new layout rewrote every bucket
        rows, joined = self._read_buckets(bits, -1 if full else state.counter, counter)
        buckets = np.array([r[0] for r in rows], dtype=np.int64)
        macs = np.frombuffer(b"".join(r[4] for r in rows), dtype=np.uint8).reshape(-1, 32)
        if full:
            leaves = np.zeros((1 << bits, 32), dtype=np.uint8)
            leaves[buckets] = macs
            tree, changes = merkle.build(leaves), None
            got = merkle.root(tree)
        else:
            tree = state.tree
            changes = merkle.update(tree, buckets, macs)
            got = merkle.new_root(tree, changes)
        if not hmac.compare_digest(got, root):
            raise self._corrupt("bucket set")
        hashes, spent, retired, writes = self._merged(None if full else state, rows, joined, buckets, bits)
        if hashes.size != members:
            raise self._corrupt("member count")
        q = bytes(32) if full else state.qchain
        n_queries = 0 if full else state.queries
        for qrow in self._db.execute("SELECT seq, created, label, noise_scale, admitted, retired_now, worst_case_charge, "
                                     "max_charge, mac FROM queries WHERE seq > ? ORDER BY seq", (n_queries,)):
            if qrow[0] != n_queries + 1 or not hmac.compare_digest(bytes(qrow[-1]), self._query_mac(qrow[:-1])):
                raise self._corrupt(f"query {qrow[0]}")
            n_queries += 1
            q = self._chain(q, bytes(qrow[-1]))
        if n_queries != queries or not hmac.compare_digest(q, qchain):
            raise self._corrupt("query log")
        # every check passed: now update what is cached
        if changes is not None:
            merkle.apply(tree, changes)
        if writes is not None:
            span, s, r = writes
            spent[span], retired[span] = s, r
        self._state = _State(counter, bits, hashes, spent, retired, tree, queries, q)
        return self._state

    def _read_buckets(self, bits: int, since: int, counter: int) -> tuple[list, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The bucket rows written after commit ``since``, each verified, in bucket order, and their
        hashes, records and flags concatenated."""
        rows = []
        for b, ver, hb, sb, rb, m in self._db.execute(
                "SELECT b, ver, hashes, spent, retired, mac FROM buckets WHERE ver > ?", (since,)):
            hb, sb, rb, m = bytes(hb), bytes(sb), bytes(rb), bytes(m)
            if not (isinstance(b, int) and 0 <= b < 1 << bits and isinstance(ver, int) and ver <= counter
                    and hmac.compare_digest(m, self._bucket_mac(bits, b, hb, sb, rb))):
                raise self._corrupt(f"bucket {b}")
            h = np.frombuffer(hb, dtype=np.uint64)
            s, r = np.frombuffer(sb, dtype=np.float64), np.frombuffer(rb, dtype=np.bool_)
            if not (h.size == s.size == r.size):
                raise self._corrupt(f"bucket {b} lengths")
            rows.append((b, h, s, r, m))
        rows.sort(key=lambda row: row[0])
        h, s, r = (np.concatenate([row[k] for row in rows] or [np.zeros(0, dt)])
                   for k, dt in ((1, np.uint64), (2, np.float64), (3, np.bool_)))
        # what every reader relies on: hashes strictly increasing, each in its own bucket (its first and last
        # are: they are sorted), records within the budget
        sizes = np.array([row[1].size for row in rows], dtype=np.int64)
        held = sizes > 0
        ends = np.cumsum(sizes)[held]
        starts, owners = ends - sizes[held], np.array([row[0] for row in rows], dtype=np.int64)[held]
        if not (bool(np.all(h[1:] > h[:-1])) and np.array_equal(_bucket_of(h[starts], bits), owners)
                and np.array_equal(_bucket_of(h[ends - 1], bits), owners)
                and bool(np.all((s >= 0) & (s <= self.parameters.budget)))):
            raise self._corrupt("bucket contents")
        return rows, (h, s, r)

    @staticmethod
    def _merged(state: _State | None, rows: list, joined: tuple, buckets: np.ndarray, bits: int) -> tuple:
        """Arrays with the rows' buckets replaced, and writes to make in place (when no bucket changed members).

        Builds new arrays when members changed (or from the rows alone, with no state); never
        changes ``state``'s arrays itself.
        """
        if state is None:
            return (*joined, None)
        starts, ends = _bounds(state.hashes, buckets, bits)
        sizes = np.array([r[1].size for r in rows], dtype=np.int64)
        if np.array_equal(ends - starts, sizes):
            span = _span(starts, sizes)
            if np.array_equal(state.hashes[span], joined[0]):  # only records changed: write them where they are
                return state.hashes, state.spent, state.retired, (span, joined[1], joined[2])
        pieces: tuple[list, list, list] = ([], [], [])
        prev = 0
        for s, e, r in zip(starts.tolist(), ends.tolist(), rows, strict=True):
            for out, old, new in zip(pieces, (state.hashes, state.spent, state.retired), r[1:4], strict=True):
                out += [old[prev:s], new]
            prev = e
        for out, old in zip(pieces, (state.hashes, state.spent, state.retired), strict=True):
            out.append(old[prev:])
        return np.concatenate(pieces[0]), np.concatenate(pieces[1]), np.concatenate(pieces[2]), None

    def hash_keys(self, keys: pd.Series) -> np.ndarray:
        """Keyed 64-bit hashes of canonical id keys (:func:`ids.id_keys` output)."""
        return self.hasher().keys(keys)

    def hash_ids(self, ids: Any) -> np.ndarray:
        """Keyed 64-bit hashes of individual ids, through the canonical typed encoding (``ids.py``)."""
        return self.hasher().ids(ids)

    def hasher(self) -> IdHasher:
        """This ledger's id hashing alone (picklable, no file or connection): what workers need to hash ids."""
        return IdHasher(self.salt)

    def charge(self, hashes: np.ndarray, charges: np.ndarray, *, label: str = "", noise_scale: float = math.nan,
               worst_case_charge: float = math.nan) -> np.ndarray:
        """Admit and charge individuals, durably, before any answer exists.

        ``hashes`` are unique individual hashes and ``charges`` their losses for this
        query (>= 0); a repeated hash is refused with :class:`LedgerError` (nothing is
        recorded). Returns the boolean mask of admitted individuals: those not retired
        whose recorded loss plus their charge (rounded up) stays within the budget. The
        others are retired and charged nothing. Writes only the buckets of the
        individuals whose record changes.
        """
        hashes = np.asarray(hashes, dtype=np.uint64)
        charges = np.asarray(charges, dtype=np.float64)
        if hashes.ndim != 1 or hashes.shape != charges.shape:
            raise ValueError("hashes and charges must be one-dimensional arrays of the same length")
        if np.any(~(charges >= 0)):
            raise ValueError("charges must be non-negative numbers")
        if not _distinct(hashes):
            raise LedgerError("charge() was given the same individual more than once; give each individual once "
                              "with their total charge (nothing was recorded)")
        budget = self.parameters.budget
        with self._lock:
            try:
                counter = self._charge(hashes, charges, budget, label, noise_scale, worst_case_charge)
            except _READ_ERRORS as exc:
                self._state = None
                raise LedgerError(f"{self.path}: the charge failed and was rolled back: {type(exc).__name__}: {exc}") from None
            admitted = self._admitted
            self._raise_key_counter(counter)
        return admitted

    def _charge(self, hashes, charges, budget, label, noise_scale, worst_case_charge) -> int:
        with self._transaction():
            state = self._sync()
            known, spent, retired = state.hashes, state.spent, state.retired
            idx, found = self._positions(known, hashes)
            added = np.zeros(0, dtype=np.intp)
            if not found.all():  # people new to the ledger start with nothing spent
                add = np.sort(hashes[~found])
                at = np.searchsorted(known, add)
                known = np.insert(known, at, add)
                spent = np.insert(spent, at, 0.0)
                retired = np.insert(retired, at, False)
                added = at + np.arange(add.size)  # where they are now
                idx, _ = self._positions(known, hashes)
            # a zero charge leaves a record as it is, and every record is within the budget (checked on
            # reading), so only people with a positive charge can change or be turned away
            admitted = ~retired[idx]
            act = np.flatnonzero(admitted & (charges > 0))
            where = idx[act]
            recorded = up_array(spent[where] + charges[act])  # never under-record
            fits = recorded <= budget
            admitted[act[~fits]] = False
            raise_at, raise_to, retire_at = where[fits], recorded[fits], where[~fits]

            counter, bits = state.counter + 1, state.bits
            relayout = known.size > (2 * TARGET << bits) and bits < MAX_BITS
            if relayout:  # more people than the layout was made for: every bucket is rewritten
                bits = _layout_bits(known.size)
                buckets = _runs(_bucket_of(known, bits))
            else:  # only the buckets of the people whose record changes, or who are new
                touched = np.zeros(1 << bits, dtype=bool)  # a mask over buckets: no sort of the positions
                touched[_bucket_of(known[where], bits)] = True
                touched[_bucket_of(known[added], bits)] = True
                buckets = np.flatnonzero(touched)
            rows, macs = self._bucket_rows(known, spent, retired, buckets, bits, counter, raise_at, raise_to, retire_at)
            if relayout:
                leaves = np.zeros((1 << bits, 32), dtype=np.uint8)
                leaves[buckets] = macs
                tree, changes = merkle.build(leaves), None
                root = merkle.root(tree)
                self._db.execute("DELETE FROM buckets")
            else:
                tree, changes = state.tree, merkle.update(state.tree, buckets, macs)
                root = merkle.new_root(tree, changes)
            self._db.executemany("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?, ?)", rows)
            seq = state.queries + 1
            qrow = (seq, time.time(), None if label is None else f"{label}", _stored_real(noise_scale),
                    int(admitted.sum()), int(retire_at.size), _stored_real(worst_case_charge),
                    _stored_real(charges.max(initial=0.0)))
            qmac = self._query_mac(qrow)
            self._db.execute("INSERT INTO queries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*qrow, qmac))
            qchain = self._chain(state.qchain, qmac)
            members = int(known.size)
            self._db.execute("UPDATE head SET counter = ?, members = ?, queries = ?, bits = ?, root = ?, qchain = ?, "
                             "mac = ? WHERE id = 0", (counter, members, seq, bits, root, qchain,
                                                      self._head_mac(counter, members, seq, bits, root, qchain)))
        # committed: now update what is cached (arrays shared with the old state only when nobody was added)
        spent[raise_at] = raise_to
        retired[retire_at] = True
        if changes is not None:
            merkle.apply(tree, changes)
        self._state = _State(counter, bits, known, spent, retired, tree, seq, qchain)
        self._admitted = admitted
        return counter

    def _bucket_rows(self, known: np.ndarray, spent: np.ndarray, retired: np.ndarray, buckets: np.ndarray, bits: int,
                     counter: int, raise_at: np.ndarray, raise_to: np.ndarray, retire_at: np.ndarray
                     ) -> tuple[list[tuple], np.ndarray]:
        """The rows (and their MACs) of ``buckets`` with this charge applied; reads the arrays, changes none."""
        starts, ends = _bounds(known, buckets, bits)
        lengths = ends - starts
        first = np.cumsum(lengths) - lengths  # where each bucket starts in the rows' arrays
        if int(lengths.sum()) == known.size:  # every bucket (a relayout, a query charging everyone)
            h, s, r = known, spent.copy(), retired.copy()
            s[raise_at] = raise_to
            r[retire_at] = True
        else:
            span = _span(starts, lengths)  # their positions in the state
            local = np.empty(known.size, dtype=np.intp)  # state position -> row-array position (written at span)
            local[span] = np.arange(span.size)
            h, s, r = known[span], spent[span], retired[span]  # copies
            s[local[raise_at]] = raise_to  # every changed position is in span
            r[local[retire_at]] = True
        # byte views, sliced per bucket without copying (SQLite and HMAC take any bytes-like object)
        hb, sb, rb = (memoryview(np.ascontiguousarray(a)).cast("B") for a in (h, s, r))
        offsets = np.append(first, lengths.sum()).tolist()
        rows, macs = [], []
        for j, b in enumerate(buckets.tolist()):
            o, e = offsets[j], offsets[j + 1]
            h8, s8, r1 = hb[8 * o:8 * e], sb[8 * o:8 * e], rb[o:e]
            m = self._bucket_mac(bits, b, h8, s8, r1)
            rows.append((b, counter, h8, s8, r1, m))
            macs.append(m)
        return rows, np.frombuffer(b"".join(macs), dtype=np.uint8).reshape(-1, 32)

    def _positions(self, known: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each hash in the sorted member array, and whether it is a member.

        Cached per (member array, content of ``hashes``): a filter asks with the same hashes
        every query. The cache keeps its own copy of the hashes and compares content, not the
        array's identity, so a caller that reuses a buffer with other hashes in it never gets
        stale positions. (A comparison reads the array once; a digest of it cost 20 times more.)
        """
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        cache = self._positions_cache
        if cache is not None and cache[0] is known and np.array_equal(cache[1], hashes):
            return cache[2], cache[3]
        if known.size == 0:
            idx, found = np.zeros(hashes.shape, dtype=np.intp), np.zeros(hashes.shape, dtype=bool)
        else:
            # looked up in sorted order, then put back: binary searches of sorted keys walk the member
            # array forwards (numpy narrows each search from the last), where random keys miss the cache
            # at every step (10M people: 1.9 s instead of 13 s)
            order = np.argsort(hashes)
            idx = np.empty(hashes.shape, dtype=np.intp)
            idx[order] = np.clip(np.searchsorted(known, hashes[order]), 0, known.size - 1)
            found = known[idx] == hashes
        self._positions_cache = (known, hashes.copy(), idx, found)
        return idx, found

    # -- reading ----------------------------------------------------------------------------
    def _current(self) -> _State:
        with self._lock:
            try:
                with self._read():
                    return self._sync()
            except _READ_ERRORS as exc:
                raise LedgerError(f"{self.path} cannot be read: {type(exc).__name__}: {exc}") from None

    def spent(self, hashes: np.ndarray | None = None) -> np.ndarray:
        """Recorded loss of the given individuals (0 for unknown ones), or of all (in hash order)."""
        with self._lock:  # a charge updates the cached arrays in place
            state = self._current()
            if hashes is None:
                return state.spent.copy()
            idx, known = self._positions(state.hashes, np.asarray(hashes, dtype=np.uint64))
            return np.where(known, state.spent[idx] if state.spent.size else 0.0, 0.0)

    def retired(self, hashes: np.ndarray) -> np.ndarray:
        with self._lock:
            state = self._current()
            idx, known = self._positions(state.hashes, np.asarray(hashes, dtype=np.uint64))
            return known & (state.retired[idx] if state.retired.size else False)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            state = self._current()
            return {"individuals": int(state.hashes.size), "retired": int(state.retired.sum()),
                    "active": int((~state.retired).sum()), "queries": int(state.queries),
                    "max_spent": float(state.spent.max(initial=0.0)), "budget": self.parameters.budget}

    def queries(self) -> pd.DataFrame:
        with self._lock:
            return pd.read_sql_query("SELECT seq, created, label, noise_scale, admitted, retired_now, "
                                     "worst_case_charge, max_charge FROM queries ORDER BY seq", self._db)

    # -- backup -------------------------------------------------------------------------------
    def backup(self, dest: str | os.PathLike[str], *, key_dest: str | os.PathLike[str] | None = None) -> None:
        """A consistent copy at ``dest`` (SQLite's backup API) with its key file (``<dest>.key``, 0600).

        Open it with ``PrivacyLedger.open(dest, parameters)``. ``dest`` and its key file must not exist.
        """
        dest = str(dest)
        key_dest = str(key_dest) if key_dest is not None else dest + ".key"
        if os.path.exists(dest) or os.path.exists(key_dest):
            raise LedgerError(f"{dest} or {key_dest} already exists; a backup never overwrites")
        with self._lock:
            target = sqlite3.connect(dest, isolation_level=None)
            try:
                self._db.backup(target)
                target.execute("PRAGMA journal_mode=WAL")
                (counter,) = target.execute("SELECT counter FROM head WHERE id = 0").fetchone()
            finally:
                target.close()
            fd = os.open(key_dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                os.write(fd, _key_file_bytes(self._secret, counter, _READY))
                os.fsync(fd)
            finally:
                os.close(fd)

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        if self._key_fd is not None:
            os.close(self._key_fd)
            self._key_fd = None

    def close(self) -> None:
        with self._lock:
            self._close_quietly()
