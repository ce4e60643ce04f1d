"""Whole-command time of ``opendp-hybridad analyse`` against its floors: Python's start-up and sympy's import.

    python bench/bench_cli.py [--repeats 15] [--json bench/results/cli.json]
    python bench/bench_cli.py --markdown bench/results/cli.json   # the docs section, from the JSON

Each variant is a fresh interpreter (``subprocess.run``), rounds interleaved after one warm-up
round (which fills the OS file cache); min and median of each and the ratio of medians to the
bare interpreter. The analysed function is the README's BMI example over its box; the command
certifies the range, the Lipschitz bound and three partial bounds. The issue's goal for the
whole command is 0.4 s; ``import sympy`` is the floor any symbolic front end on sympy pays.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import machine as bench_machine

GOAL_S = 0.4
ANALYSE = [sys.executable, "-m", "opendp_hybridad.cli", "analyse", "a*w/h**2", "-b", "a=0:1", "-b", "w=40:150",
           "-b", "h=1.4:2.1"]
VARIANTS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import numpy": [sys.executable, "-c", "import numpy"],
    "import sympy": [sys.executable, "-c", "import sympy"],
    "import opendp_hybridad": [sys.executable, "-c", "import opendp_hybridad"],
    "opendp-hybridad analyse (BMI)": ANALYSE,
}


def _runner(command: list[str]):
    def run() -> None:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return run


def run(args) -> dict:
    results = {**bench_machine.record(sys.argv), "rounds": args.repeats, "warmup": 1, "goal_s": GOAL_S,
               "load_before": bench_machine.load()}
    times = bench_machine.interleaved({name: _runner(cmd) for name, cmd in VARIANTS.items()}, args.repeats, 1)
    results["variants"] = bench_machine.summary(times, "python -c pass")
    results["load_after"] = bench_machine.load()
    for name, r in results["variants"].items():
        print(f"{name:<32s} min {r['min_s']:.3f} median {r['median_s']:.3f} s")
    return results


def markdown(results: dict) -> str:
    lines = [bench_machine.header(results) + f" Each row is a fresh interpreter; {results['rounds']} rounds after "
             f"{results['warmup']} warm-up, interleaved. Goal for the whole `analyse` command: under {results['goal_s']:g} s.",
             "", "| command | min s | median s |", "|---|---:|---:|"]
    for name, r in results["variants"].items():
        lines.append(f"| `{name}` | {r['min_s']:.3f} | {r['median_s']:.3f} |")
    v = results["variants"]
    floor = v["import sympy"]["median_s"]
    whole = v["opendp-hybridad analyse (BMI)"]["median_s"]
    lines += ["", f"The command's median is {whole:.3f} s, of which {floor:.3f} s is a bare `import sympy` "
              f"({floor / whole:.0%}); the rest is importing the package's analysis modules and numpy, declaring "
              f"and certifying."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15, help="timed rounds")
    bench_machine.add_output_options(p)
    bench_machine.render_or_run(p.parse_args(), run, markdown)


if __name__ == "__main__":
    main()
