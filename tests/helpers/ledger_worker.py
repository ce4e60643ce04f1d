"""Processes that spend budget through a file ledger; used by the crash and concurrency tests.

    python ledger_worker.py LEDGER QUERIES MODE
    python ledger_worker.py zygote

MODE "crash": print "released K" after each answer, flushing, until killed.
MODE "share": run QUERIES queries and exit.

"zygote" (``tests/test_ledger_crash.py``): imports the library once, then on each stdin line
``spawn LEDGER LOG`` forks a writer (printing its pid) that answers queries on a small frame
until it is killed, appending one line to LOG per released answer, and on ``reap PID``
waits for that writer and prints its wait status. Forking from a ready interpreter makes a
restart cost milliseconds instead of an import, so 20 kills fit in a short test; each writer
is still its own process with its own SQLite connection (opened after the fork).
"""

import itertools
import os
import sys
import traceback

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import numpy as np
import pandas as pd
from workload import QUERIES_SCALE, make_filter, query_functions

import opendp_hybridad as hd
from opendp_hybridad.individual import IndividualFilter

# the crash test's frame: 200 people; every tenth is heavy and retires within about 25 queries, the others
# spend little, so both kinds of record change while writers are killed
CRASH_PEOPLE, CRASH_MU, CRASH_SCALE = 200, 1.0, 5.0
CRASH_SCHEMA = hd.Schema(x=hd.Field(0, 1))


def crash_frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    person = np.concatenate([np.arange(CRASH_PEOPLE), rng.integers(0, CRASH_PEOPLE, 120)])
    heavy = person % 10 == 0
    x = np.where(heavy, rng.uniform(0.5, 1.0, person.size), rng.uniform(0.0, 0.05, person.size))
    return pd.DataFrame({"x": x, "person": person})


def crash_functions() -> list:
    (x,) = CRASH_SCHEMA.symbols()
    return [CRASH_SCHEMA.function(x), CRASH_SCHEMA.function(2 * x)]


def crash_filter(ledger: str) -> IndividualFilter:
    return IndividualFilter(crash_frame(), CRASH_SCHEMA, kind="gdp", budget=CRASH_MU, id_column="person", ledger=ledger)


def release_forever(ledger: str, log: str) -> None:
    """Answer queries until killed; a line goes to ``log`` only once ``sum`` has returned the answer."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    flt = crash_filter(ledger)
    admitted: list[np.ndarray] = []
    charge = flt.ledger.charge

    def recording(*args, **kwargs):  # which people this query's answer counts (the filter's hash order)
        mask = charge(*args, **kwargs)
        admitted.append(mask)
        return mask

    flt.ledger.charge = recording
    functions = crash_functions()
    os.write(fd, b"ready\n")
    for k in itertools.count():
        j = k % len(functions)
        flt.sum(functions[j], CRASH_SCALE, label=f"f{j}")
        # released: one write(2) of a whole line, so a kill leaves it entirely or not at all
        os.write(fd, f"{j} {np.packbits(admitted.pop()).tobytes().hex()}\n".encode())


def zygote() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "spawn":
            pid = os.fork()
            if pid == 0:  # the writer: never returns; its output must not reach the protocol on stdout
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                try:
                    release_forever(*args)
                except BaseException:
                    traceback.print_exc()
                os._exit(3)  # only after an error (its traceback on stderr): the test sees exit status 3
            print(pid, flush=True)
        elif command == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            print(status, flush=True)


def main() -> None:
    if sys.argv[1] == "zygote":
        return zygote()
    ledger, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    flt = make_filter(ledger)
    functions = query_functions()
    for k in range(count):
        flt.sum(functions[k % len(functions)], QUERIES_SCALE, label=f"q{k}")
        if mode == "crash":
            print(f"released {k + 1}", flush=True)


if __name__ == "__main__":
    main()
