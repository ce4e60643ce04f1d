"""Issue 11: a ledger creation cut off at any step is redone by ``create``, never by ``open``.

Each case forks a process that creates a ledger and SIGKILLs itself at one step (its files
are left as a crash leaves them). Before the fix, a creation cut off after the key file was
written left a ledger that ``open`` and ``create`` both refused until the key file was removed
by hand. A ledger that holds spend is still never created over, whatever its key file says.
"""

from __future__ import annotations

import os
import signal
import sqlite3

import numpy as np
import pytest

from opendp_hybridad.individual import LedgerError, LedgerParameters, PrivacyLedger
from opendp_hybridad.individual import ledger as ledger_module

P = LedgerParameters("gdp", 4.0)
PEOPLE = np.array([3, 5, 8], dtype=np.uint64)


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


# where the creating process dies (each patch applies in the forked child only)
STEPS = {
    "key written, not linked into place": lambda: setattr(ledger_module.os, "link", _die),
    "key linked, no data file": lambda: setattr(ledger_module.sqlite3, "connect", _die),
    "data file in WAL mode, no tables": lambda: setattr(PrivacyLedger, "_create", _die),
    "tables written, not committed": lambda: setattr(PrivacyLedger, "_head_mac", _die),
    "tables committed, not verified": lambda: setattr(PrivacyLedger, "_open", _die),
    "verified, key not marked ready": lambda: setattr(PrivacyLedger, "_mark_ready", _die),
}


def _create_and_die(path: str, arm) -> None:
    pid = os.fork()
    if pid == 0:  # the creating process
        try:
            arm()
            PrivacyLedger.create(path, P)
        finally:
            os._exit(1)  # only if the step was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the step was not reached ({status})"


@pytest.mark.parametrize("step", list(STEPS))
def test_create_redoes_a_creation_cut_off_at_any_step_and_open_never_does(tmp_path, step):
    path = str(tmp_path / "l.sqlite")
    _create_and_die(path, STEPS[step])
    if os.path.exists(path + ".key"):  # the key file is in place: a ledger that is not finished
        with pytest.raises(LedgerError, match="never finished"):
            PrivacyLedger.open(path, P)
        with pytest.raises(LedgerError, match="never finished"):
            PrivacyLedger(path, P)  # the plain constructor opens what exists; it does not redo a creation
    ledger = PrivacyLedger.create(path, P)
    ledger.charge(PEOPLE, np.array([0.5, 0.25, 1.0]))
    ledger.close()
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(path, P)
    assert np.all(PrivacyLedger.open(path, P).spent(PEOPLE) >= [0.5, 0.25, 1.0])


def test_a_creation_killed_after_it_finished_is_a_ledger(tmp_path):
    path = str(tmp_path / "l.sqlite")
    real = PrivacyLedger._mark_ready

    def ready_then_die(self):
        real(self)
        _die()

    _create_and_die(path, lambda: setattr(PrivacyLedger, "_mark_ready", ready_then_die))
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(path, P)
    assert PrivacyLedger.open(path, P).summary()["queries"] == 0


def _mark_creating(path: str) -> None:
    """What a damaged or altered key file could say: "creating" on a ledger that was finished."""
    with open(path + ".key", "r+b") as f:
        f.seek(ledger_module._STATE_OFFSET)
        f.write(ledger_module._CREATING)


def test_a_ledger_with_spend_is_never_created_over_even_if_its_key_says_creating(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger.create(path, P)
    ledger.charge(PEOPLE, np.array([0.5, 0.25, 1.0]))
    ledger.close()
    _mark_creating(path)
    with pytest.raises(LedgerError, match="holds committed charges"):
        PrivacyLedger.create(path, P)
    with pytest.raises(LedgerError, match="never finished"):
        PrivacyLedger.open(path, P)  # refused too, not reset
    with open(path + ".key", "r+b") as f:  # put back, it opens with its spend
        f.seek(ledger_module._STATE_OFFSET)
        f.write(ledger_module._READY)
    assert np.all(PrivacyLedger.open(path, P).spent(PEOPLE) >= [0.5, 0.25, 1.0])


def test_an_unreadable_data_file_under_a_creating_key_is_not_created_over(tmp_path):
    path = str(tmp_path / "l.sqlite")
    PrivacyLedger.create(path, P).close()
    _mark_creating(path)
    with open(path, "r+b") as f:  # not a SQLite database any more: nothing proves it holds no spend
        f.write(b"\xff" * 100)
    with pytest.raises(LedgerError, match="cannot be read"):
        PrivacyLedger.create(path, P)
    assert os.path.getsize(path) > 0


def test_a_data_file_without_its_key_file_is_never_created_over(tmp_path):
    path = str(tmp_path / "l.sqlite")
    ledger = PrivacyLedger.create(path, P)
    ledger.charge(PEOPLE, np.array([0.5, 0.25, 1.0]))
    ledger.close()
    os.unlink(path + ".key")
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(path, P)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] > 0


def test_a_creation_under_way_in_another_process_is_not_redone(tmp_path):
    path = str(tmp_path / "l.sqlite")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # creates, then waits holding the key file's lock, as if its tables were slow to commit
        try:
            os.close(read)

            def wait(self):
                os.write(write, b"1")
                signal.pause()

            PrivacyLedger._create = wait
            PrivacyLedger.create(path, P)
        finally:
            os._exit(1)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
        with pytest.raises(LedgerError, match="being created by another process"):
            PrivacyLedger.create(path, P)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
    PrivacyLedger.create(path, P).close()  # its creator is gone: redone
    PrivacyLedger.open(path, P).close()
