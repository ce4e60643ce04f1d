"""Soundness fuzzer: random expressions over random boxes, every certificate checked against 70-digit mpmath.

    python bench/fuzz_soundness.py --minutes 10 --seed 1 --out findings.json
    python bench/fuzz_soundness.py --replay findings.json          # re-run the cases of a findings file
    python bench/fuzz_soundness.py --seed 1 --case 17 -v            # one case of a stream

Case ``i`` of seed ``s`` is ``tests/fuzz/strategies.case_from_seed(s, i)``, so every
finding is reproducible from its label. Each case is bounded (``--case-timeout``
for certification, the reference has its own limit). Single-threaded: it uses
one core.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: set before numpy is imported

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz.ground_truth import run_case  # noqa: E402
from fuzz.strategies import PRIMITIVES, Case, case_from_seed  # noqa: E402

QUANTITIES = ("range", "K1", "K2", "Kinf", "partials")


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.status: collections.Counter = collections.Counter()
        self.outcomes: dict[str, collections.Counter] = {q: collections.Counter() for q in ("declare", *QUANTITIES)}
        self.kinds: collections.Counter = collections.Counter()
        self.any_certified = 0
        self.all_refused = 0
        self.unsound_cases = 0
        self.prim: dict[str, collections.Counter] = {p: collections.Counter() for p in PRIMITIVES}
        self.seconds_certify = 0.0
        self.seconds_truth = 0.0
        self.points = 0
        self.pairs = 0

    def add(self, result) -> None:
        self.cases += 1
        self.status[result.status] += 1
        for q, o in result.outcomes.items():
            self.outcomes.setdefault(q, collections.Counter())[o.split(":")[0]] += 1
        certified = [q for q in QUANTITIES if result.outcomes.get(q) == "certified"]
        lipschitz = any(result.outcomes.get(q) == "certified" for q in ("K1", "K2", "Kinf"))
        unsound = any(f.kind == "unsound" for f in result.findings)
        self.any_certified += bool(certified)
        self.all_refused += not certified
        self.unsound_cases += unsound
        for f in result.findings:
            self.kinds[f.kind] += 1
        for p in result.primitives:
            c = self.prim[p]
            c["cases"] += 1
            c["certified"] += bool(certified)
            c["lipschitz"] += lipschitz
            c["unsound"] += unsound
            c["crash"] += any(f.kind == "crash" for f in result.findings)
        self.seconds_certify += result.seconds_certify
        self.seconds_truth += result.seconds_truth
        self.points += result.points
        self.pairs += result.pairs

    def summary(self, elapsed: float) -> dict:
        return {
            "cases": self.cases, "elapsed_s": round(elapsed, 1), "cases_per_minute": round(60 * self.cases / max(elapsed, 1e-9), 1),
            "any_certified": self.any_certified, "all_refused": self.all_refused, "unsound_cases": self.unsound_cases,
            "findings_by_kind": dict(self.kinds), "status": dict(self.status),
            "outcomes": {q: dict(c) for q, c in self.outcomes.items()},
            "primitives": {p: dict(c) for p, c in self.prim.items()},
            "seconds_certify": round(self.seconds_certify, 1), "seconds_truth": round(self.seconds_truth, 1),
            "points_checked": self.points, "pairs_checked": self.pairs,
        }


def print_summary(s: dict) -> None:
    print(f"\ncases {s['cases']} in {s['elapsed_s']} s ({s['cases_per_minute']}/min); certify {s['seconds_certify']} s, "
          f"reference {s['seconds_truth']} s; {s['points_checked']} points, {s['pairs_checked']} pairs checked")
    print(f"certified something: {s['any_certified']}   refused everything: {s['all_refused']}   "
          f"UNSOUND cases: {s['unsound_cases']}   findings: {s['findings_by_kind'] or 'none'}")
    print(f"case status: {s['status']}")
    print("\noutcome per quantity:")
    for q, c in s["outcomes"].items():
        print(f"  {q:9s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    print("\nper primitive (cases / something certified / Lipschitz certified / unsound / crash):")
    for p, c in s["primitives"].items():
        print(f"  {p:18s} {c.get('cases', 0):5d} {c.get('certified', 0):5d} {c.get('lipschitz', 0):5d} "
              f"{c.get('unsound', 0):4d} {c.get('crash', 0):4d}")


def finding_record(case: Case, result, finding) -> dict:
    return {
        "label": case.label, "case": case.to_json(), "expression": result.expression, "srepr": result.srepr,
        "outcomes": result.outcomes,
        "certified": {k: v for k, v in result.certified.items() if not k.startswith("_")},
        "finding": finding.to_json(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index of the stream")
    ap.add_argument("--case", type=int, default=None, help="run only this case index")
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--max-depth", type=int, default=4, help="deepest expression tree (larger: bigger expressions)")
    ap.add_argument("--max-vars", type=int, default=4)
    ap.add_argument("--case-timeout", type=float, default=20.0, help="seconds of certification per case")
    ap.add_argument("--out", default="fuzz_findings.json")
    ap.add_argument("--replay", default=None, help="re-run the cases of a findings file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    # the library's witness polish (scipy finite differences) warns on overflow; noise here
    warnings.filterwarnings("ignore", category=RuntimeWarning)

    if args.replay:
        data = json.loads(Path(args.replay).read_text())
        seen, stream = set(), []
        for rec in data["findings"]:
            if rec["label"] not in seen:
                seen.add(rec["label"])
                stream.append(Case.from_json(rec["case"]))
                stream[-1].label = rec["label"]
        cases = iter(stream)
    elif args.case is not None:
        cases = iter([case_from_seed(args.seed, args.case, max_vars=args.max_vars, max_depth=args.max_depth)])
    else:
        cases = (case_from_seed(args.seed, i, max_vars=args.max_vars, max_depth=args.max_depth) for i in range(args.start, 1 << 62))

    tally = Tally()
    records: list[dict] = []
    start = time.perf_counter()
    stop = start + 60 * args.minutes

    def dump() -> None:
        out = {"seed": args.seed, "minutes": args.minutes, "max_depth": args.max_depth, "max_vars": args.max_vars,
               "summary": tally.summary(time.perf_counter() - start), "findings": records}
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))

    for case in cases:
        if (args.replay is None and args.case is None and time.perf_counter() > stop) or (
                args.max_cases is not None and tally.cases >= args.max_cases):
            break
        result = run_case(case, case_timeout=args.case_timeout, seed=tally.cases)
        tally.add(result)
        new = [f for f in result.findings if f.kind != "timeout" or args.verbose]
        for f in result.findings:
            records.append(finding_record(case, result, f))
        if args.verbose or new:
            print(f"[{case.label}] {result.expression[:160]}  box={list(case.box)}")
            print(f"    {result.status} {result.outcomes}  cert {result.seconds_certify:.2f} s ref {result.seconds_truth:.2f} s")
            for f in new:
                print(f"    {f.kind.upper()} {f.quantity}: certified {f.certified}, true {f.true}, at {f.witness}: {f.detail[:300]}")
            sys.stdout.flush()
        if result.findings:
            dump()
    elapsed = time.perf_counter() - start
    dump()
    print_summary(tally.summary(elapsed))
    print(f"\nfindings written to {args.out}")
    return 1 if tally.unsound_cases else 0


if __name__ == "__main__":
    sys.exit(main())
