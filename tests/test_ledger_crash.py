"""Issue 11 acceptance: two writers share one ledger file and are SIGKILLed 20 times at random points.

Two writer processes (forked by ``helpers/ledger_worker.py``'s zygote, each with its own
SQLite connection) answer queries concurrently on one ledger over a 200-person frame; each
appends a line to its side file only after the filter returned the answer. The test kills
a writer chosen at random, after a random delay, 20 times (seeded), restarting it each time,
then reopens the ledger (which verifies every MAC) and checks, for every person, that the
recorded spend is at least the total charge of the answers actually released, and at most
the budget.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
from helpers.ledger_worker import CRASH_SCALE, crash_filter, crash_functions

from opendp_hybridad.individual import PrivacyLedger

KILLS = 20
WORKER = os.path.join(os.path.dirname(__file__), "helpers", "ledger_worker.py")


class Zygote:
    """The forking helper: spawn a writer, kill it, reap it (its pid stays reserved until reaped)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, WORKER, "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self._reply() == "ready"

    def _reply(self) -> str:
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return line.strip()

    def spawn(self, ledger: str, log: str) -> int:
        self.proc.stdin.write(f"spawn {ledger} {log}\n")
        self.proc.stdin.flush()
        return int(self._reply())

    def kill(self, pid: int) -> int:
        """SIGKILL a writer this zygote forked and return its wait status."""
        os.kill(pid, signal.SIGKILL)
        self.proc.stdin.write(f"reap {pid}\n")
        self.proc.stdin.flush()
        return int(self._reply())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _wait_ready(log: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(log):
            with open(log, "rb") as f:
                if f.read(6) == b"ready\n":
                    return
        time.sleep(0.005)
    raise AssertionError(f"a writer did not open the ledger within {timeout} s")


def _released(logs: list[str], people: int) -> list[tuple[int, np.ndarray]]:
    """(function index, admitted mask) of every released answer: complete lines only."""
    out = []
    for log in logs:
        with open(log, "rb") as f:
            lines = f.read().split(b"\n")
        for line in lines[1:-1]:  # after "ready"; the last piece is empty or was never completed
            j, mask = line.split()
            out.append((int(j), np.unpackbits(np.frombuffer(bytes.fromhex(mask.decode()), np.uint8))[:people] == 1))
    return out


def test_twenty_random_kills_of_two_concurrent_writers_lose_no_released_spend(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    probe = crash_filter(path)  # creates the ledger; the writers only open it
    probe.ledger.close()
    rng = np.random.default_rng(20)
    zygote = Zygote()
    logs: list[str] = []
    writers: dict[int, tuple[int, str]] = {}

    def start(slot: int) -> None:
        log = str(tmp_path / f"released-{slot}-{len(logs)}.log")
        logs.append(log)
        writers[slot] = (zygote.spawn(path, log), log)

    try:
        start(0)
        start(1)
        for kill in range(KILLS + 2):  # 20 kills with restarts, then one more of each to stop them
            slot = int(rng.integers(2)) if kill < KILLS else kill - KILLS
            pid, log = writers[slot]
            _wait_ready(log)
            time.sleep(float(rng.uniform(0.0, 0.3)))  # a random point: in a charge, a commit, or between
            status = zygote.kill(pid)
            del writers[slot]
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"writer ended by itself ({status})"
            if kill < KILLS:
                start(slot)
    finally:
        for pid, _ in writers.values():  # only after a failure above
            zygote.kill(pid)
        zygote.close()

    reopened = crash_filter(path)  # opening verifies every bucket MAC, the Merkle root and the query chain
    PrivacyLedger.open(path, reopened.ledger.parameters).close()
    people = reopened._m
    released = _released(logs, people)
    per_function = [reopened._loss(reopened._contributions([f])[1], CRASH_SCALE) for f in crash_functions()]
    owed = [math.fsum(per_function[j][i] for j, mask in released if mask[i]) for i in range(people)]
    spent = reopened.spent()
    assert len(released) >= 2 * KILLS  # the writers answered between kills
    lost = np.flatnonzero(spent < owed)
    assert lost.size == 0, f"{lost.size} people have less spend on record than their released answers cost"
    assert np.all(spent <= reopened.stored_budget)
    assert reopened.ledger.summary()["queries"] >= len(released)
    retired = reopened.ledger.retired(reopened._hashes)
    assert retired.any() and (~retired).any() and np.any(np.array(owed)[~retired] > 0)
