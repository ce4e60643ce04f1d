"""Run every bench, write ``bench/results/<name>.json``, and regenerate docs/benchmarks.md's sections from them.

    python bench/run_all.py                      # every bench at its default settings (tens of minutes here)
    python bench/run_all.py --only kernels dpsgd # some of them
    python bench/run_all.py --docs-only          # re-render the docs sections from the committed JSON
    python bench/run_all.py --quick              # smallest settings, into a temporary folder (never bench/results)

Each bench runs in its own process (``python bench/bench_<x>.py ... --json PATH``), its variants side
by side in that process with interleaved rounds (min, median, ratio of medians; one BLAS thread and
the default threads where BLAS or torch does the work), and writes the machine record with its
results (``bench/machine.py``). Each docs section lies between ``<!-- generated: NAME -->`` and
``<!-- end generated -->``; everything outside the markers is hand-written and kept. The test
``tests/test_benchmarks_doc.py`` re-renders every section from the committed JSON and compares.
A bench whose peer is not installed (torch/opacus) fails alone; the others still run. A bench whose
peer lives in its own environment (Tumult Analytics in ``.venv-tumult``, ``bench/setup_tumult.sh``)
is skipped with a message when that environment is missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")

# name: (script, default arguments, quick arguments)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "kernels": ("bench_kernels.py", [], ["--rows", "20000", "--repeats", "2"]),
    "private_sum": ("bench_private_sum.py", [], ["--rows", "20000", "--repeats", "2"]),
    "certify": ("bench_certify.py", [], ["--repeats", "2", "--time-budget", "0.2", "--cases", "2"]),
    "cli": ("bench_cli.py", [], ["--repeats", "1"]),
    "tightness": ("bench_tightness.py", ["--before", "bench/results/tightness_before.json"],
                  ["--only", "logistic map", "--time-budget", "0.2", "--no-partials"]),
    "dpsgd": ("bench_dpsgd.py", [], ["--batches", "64", "--rounds", "2", "--models", "1", "--threads", "1"]),
    "progress": ("bench_progress.py", [], ["--epochs", "0.05", "--repeats", "1", "--threads", "1"]),
    "per_step_k": ("bench_per_step_k.py", [], ["--batches", "64", "--epochs", "0.1", "--rounds", "1"]),
    "gradient_sum": ("bench_gradient_sum.py", [], ["--batches", "16", "--rounds", "1", "--threads", "1"]),
    "memory": ("bench_memory.py", [], ["--rounds", "1"]),
    "opacus": ("bench_opacus.py", [], ["--batch", "16", "--repeats", "2", "--threads", "1"]),
    "opacus_cnn": ("bench_opacus_cnn.py", [], ["--batches", "8", "--rounds", "1", "--warmup", "0"]),
    "scale": ("bench_scale.py", [], ["--rows", "200000", "--rounds", "1", "--partition-rows", "50000"]),
    "scale_filter": ("bench_scale_filter.py", ["--ledger-individuals", "100000000"],
                     ["--rows", "200000", "--partition-rows", "50000", "--check-rows", "10000"]),
    "tumult": ("bench_tumult.py", [], ["--rows", "200000", "--map-rows", "20000", "--rounds", "1", "--partition-rows", "50000"]),
}

# benches whose peer lives outside the project's venv: (path that must exist, relative to the root; how to get it)
REQUIRES: dict[str, tuple[str, str]] = {
    "tumult": (os.path.join(".venv-tumult", "bin", "python"), "Tumult Analytics' venv: run `bash bench/setup_tumult.sh`"),
}


def missing_peer(name: str) -> str | None:
    """Why bench ``name`` cannot run here (its peer's environment is absent), or None."""
    if name in REQUIRES and not os.path.exists(os.path.join(ROOT, REQUIRES[name][0])):
        return f"{REQUIRES[name][0]} is missing ({REQUIRES[name][1]})"
    return None


BEGIN = "<!-- generated: {} -->"
END = "<!-- end generated -->"
SECTION = re.compile(r"<!-- generated: (\w+) -->\n(.*?)<!-- end generated -->", re.S)


def module(name: str):
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    return importlib.import_module(BENCHES[name][0][:-3])


def render(name: str, data: dict) -> str:
    """The docs section of bench ``name`` from its results (what its ``--markdown JSON`` prints)."""
    return module(name).markdown(data).rstrip("\n") + "\n"


def sections(text: str) -> dict[str, str]:
    """The generated sections of a docs text, by name."""
    return {m.group(1): m.group(2) for m in SECTION.finditer(text)}


def replace_section(text: str, name: str, body: str) -> str:
    begin = BEGIN.format(name)
    if begin not in text:
        raise KeyError(f"docs have no '{begin}' marker")
    start = text.index(begin) + len(begin) + 1
    end = text.index(END, start)
    return text[:start] + body + text[end:]


def run_bench(name: str, out_dir: str, quick: bool, extra: list[str]) -> tuple[int, float]:
    script, default, small = BENCHES[name]
    path = os.path.join(out_dir, f"{name}.json")
    if os.path.abspath(path).startswith(ROOT + os.sep):
        path = os.path.relpath(path, ROOT)  # the command recorded in the JSON and the docs reads bench/results/...
    command = [sys.executable, os.path.join("bench", script), *(small if quick else default), *extra, "--json", path]
    print(f"== {name}: {' '.join(command[1:])} (load {os.getloadavg()[0]:.2f})", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    tail = "\n".join(proc.stdout.rstrip().split("\n")[-3:])
    print(f"   exit {proc.returncode} after {seconds:.0f} s\n{tail}", flush=True)
    return proc.returncode, seconds


def regenerate(docs_in: str, docs_out: str, results_dir: str, names: list[str]) -> list[str]:
    """Re-render the sections of ``names`` that have a results file; returns the names rendered."""
    with open(docs_in) as fh:
        text = fh.read()
    done = []
    for name in names:
        path = os.path.join(results_dir, f"{name}.json")
        if not os.path.exists(path) or BEGIN.format(name) not in text:
            continue
        with open(path) as fh:
            text = replace_section(text, name, render(name, json.load(fh)))
        done.append(name)
    with open(docs_out, "w") as fh:
        fh.write(text)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benches")
    p.add_argument("--quick", action="store_true", help="smallest settings, results into a temporary folder (or --out)")
    p.add_argument("--out", default=None, help="results folder (default bench/results; with --quick a new temporary one)")
    p.add_argument("--docs-only", action="store_true", help="run nothing; regenerate the docs sections from the results")
    args = p.parse_args(argv)
    names = args.only or list(BENCHES)
    out_dir = args.out or (tempfile.mkdtemp(prefix="bench-quick-") if args.quick else RESULTS)
    if args.quick and os.path.abspath(out_dir) == os.path.abspath(RESULTS):
        p.error("--quick never writes into bench/results")
    os.makedirs(out_dir, exist_ok=True)
    failed = []
    if not args.docs_only:
        for name in names:
            reason = missing_peer(name)
            if reason:  # skipped, not failed: its committed results still render
                print(f"== {name}: skipped, {reason}", flush=True)
                continue
            rc, _ = run_bench(name, out_dir, args.quick, [])
            if rc != 0:
                failed.append(name)
    # quick runs render into a copy of the docs beside their results; full runs into docs/benchmarks.md
    docs_out = DOCS if os.path.abspath(out_dir) == os.path.abspath(RESULTS) else os.path.join(out_dir, "benchmarks.md")
    if docs_out != DOCS:
        shutil.copyfile(DOCS, docs_out)
    done = regenerate(docs_out, docs_out, out_dir, [n for n in names if n not in failed])
    print(f"results in {out_dir}; sections regenerated in {docs_out}: {', '.join(done) or 'none'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
