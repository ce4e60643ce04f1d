"""A process that spends budget through a file ledger; used by the crash and concurrency tests.

    python ledger_worker.py LEDGER QUERIES MODE

MODE "crash": print "released K" after each answer, flushing, until killed.
MODE "share": run QUERIES queries and exit.
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from workload import QUERIES_SCALE, make_filter, query_functions


def main() -> None:
    ledger, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    flt = make_filter(ledger)
    functions = query_functions()
    for k in range(count):
        flt.sum(functions[k % len(functions)], QUERIES_SCALE, label=f"q{k}")
        if mode == "crash":
            print(f"released {k + 1}", flush=True)


if __name__ == "__main__":
    main()
