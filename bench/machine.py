"""The machine record every bench writes into its JSON, and the helpers the benches share.

``machine()``: CPU model, cores (all and usable), Python, numpy and its BLAS (build config and
the loaded library's kernel and threads, via threadpoolctl), torch and its threads when torch is
already imported or installed, the thread environment variables and the load average.
``commit()``: the git commit and whether the library or the bench scripts had uncommitted edits.
``load()``: the 1, 5 and 15 minute load averages. ``interleaved()``: every variant once per
round, rounds interleaved after warm-up rounds. ``summary()``: min, median and the ratio of
medians against a baseline. ``threads()``: one BLAS/OpenMP (and torch) thread, or the defaults.
``header()``: the line each generated docs section starts with.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")


def load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    return cpu


def _numpy_blas() -> dict:
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {k: blas.get(k) for k in ("name", "version", "openblas configuration") if blas.get(k) is not None}
    except Exception as exc:  # numpy < 1.26: no dicts
        return {"error": f"{type(exc).__name__}"}


def _threadpools() -> list[dict]:
    try:
        import threadpoolctl
    except ImportError:
        return []
    return [{k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer", "architecture")}
            for p in threadpoolctl.threadpool_info()]


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


def machine(torch: bool | None = None) -> dict:
    """The machine record (``torch``: None = record torch if it is already imported; True = import it)."""
    import numpy as np

    info = {"cpu": cpu_model(), "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "numpy_blas": _numpy_blas(), "threadpools": _threadpools()}
    if torch or (torch is None and "torch" in sys.modules):
        with contextlib.suppress(ImportError):
            import torch as t

            info["torch"] = t.__version__
            info["torch_threads_default"] = t.get_num_threads()
    for name in ("opacus", "opendp", "pandas", "polars", "numexpr", "numba", "scipy", "sympy"):
        if name in sys.modules or (name == "opacus" and "torch" in info):
            with contextlib.suppress(ImportError):
                module = importlib.import_module(name)
                info[name] = getattr(module, "__version__", None) or _dist_version(name)
                if name == "numexpr":
                    info["numexpr_threads"] = module.get_num_threads()
    info["env_threads"] = {k: os.environ.get(k) for k in THREAD_VARS}
    info["load"] = load()
    return info


def blas_kernel(m: dict) -> str:
    return next((p.get("architecture") or "?" for p in m.get("threadpools", []) if p.get("user_api") == "blas"), "?")


def describe(m: dict) -> str:
    """One line: cores, CPU, Python, numpy with its BLAS and kernel, torch when recorded."""
    blas = m.get("numpy_blas", {})
    text = (f"{m['usable_cores']} cores ({m['cpu']}), Python {m['python']}, numpy {m['numpy']} "
            f"({blas.get('name', '?')} {blas.get('version', '')}, kernel {blas_kernel(m)})")
    if "torch" in m:
        text += f", torch {m['torch']} ({m['torch_threads_default']} threads by default)"
    if "opacus" in m:
        text += f", opacus {m['opacus']}"
    for name in ("opendp", "pandas", "numexpr", "numba"):
        if name in m:
            text += f", {name} {m[name]}"
    return text


def commit(paths: tuple[str, ...] = ("opendp_hybridad", "bench/*.py")) -> dict:
    """The short commit and whether ``paths`` (relative to the repository root) had uncommitted edits."""
    root = os.path.dirname(HERE)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "?", "modified": []}
    return {"commit": sha, "modified": sorted(line[3:] for line in dirty if line.strip())}


def record(command: list[str]) -> dict:
    """What every bench's JSON starts with: the command, commit, date, machine (torch if imported)."""
    if command and command[0].endswith(".py"):
        command = ["bench/" + os.path.basename(command[0]), *command[1:]]
    return {"command": " ".join(["python", *command]), **commit(), "date": time.strftime("%Y-%m-%d"), "machine": machine()}


def header(results: dict) -> str:
    """The line each generated docs section starts with: commit, date, command, machine, load."""
    mod = results.get("modified") or []
    edits = f" (with uncommitted edits to {', '.join(mod)})" if mod else ""
    loads = [x for x in (results.get("load_before"), results.get("load_after")) if x]
    load_text = f" Load average {loads[0][0]:.1f}-{loads[-1][0]:.1f}." if loads else ""
    return (f"Commit {results['commit']}{edits}, {results['date']}, `{results['command']}`. "
            f"{describe(results['machine'])}.{load_text}")


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                settle: bool = False) -> dict[str, list[float]]:
    """Every variant once per round, in order, rounds interleaved; the warm-up rounds are not kept.

    ``settle``: each timed call is preceded by an untimed call of the same variant, so that what the
    previous variant left behind (large allocations returned to the system) is not charged to it."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name, fn in variants.items():
            if settle:
                fn()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    return times


def summary(times: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """Min and median per variant, and the ratios of medians and of mins to ``baseline``."""
    base_med, base_min = statistics.median(times[baseline]), min(times[baseline])
    return {name: {"min_s": min(ts), "median_s": statistics.median(ts), "ratio_of_medians": statistics.median(ts) / base_med,
                   "ratio_of_mins": min(ts) / base_min, "baseline": baseline, "times_s": ts} for name, ts in times.items()}


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[dict]:
    """One BLAS/OpenMP thread (and one torch thread if torch is imported) for ``count=1``; the defaults for None.

    Yields the thread counts in force (threadpoolctl's pools, torch's)."""
    torch = sys.modules.get("torch")

    def counts() -> dict:
        out = {p["internal_api"]: p["num_threads"] for p in _threadpools()}
        if torch is not None:
            out["torch"] = torch.get_num_threads()
        return out

    if count is None:
        yield counts()
        return
    import threadpoolctl

    with threadpoolctl.threadpool_limits(limits=count):
        before = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(count)
        try:
            yield counts()
        finally:
            if torch is not None:
                torch.set_num_threads(before)


THREAD_SETTINGS = {"1": 1, "default": None}


def write_json(path: str | None, results: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=1)
        fh.write("\n")


def read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def add_output_options(parser) -> None:
    """``--json PATH`` (write the results) and ``--markdown JSON`` (print a results file's docs section and exit)."""
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--markdown", default=None, metavar="JSON", help="print the docs section from a results file and exit")


def render_or_run(args, run, markdown) -> None:
    """With ``--markdown``, print that file's docs section; otherwise ``run(args)``, write its JSON, print its section."""
    if args.markdown:
        print(markdown(read_json(args.markdown)), end="")
        return
    results = run(args)
    write_json(args.json, results)
    print(markdown(results), end="")


def ms(seconds: float) -> str:
    """Milliseconds: 0 decimals from 1 s, 1 from 10 ms, 2 from 0.1 ms, else 4."""
    v = seconds * 1e3
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 0.1 else f"{v:.4f}"
