"""docs/benchmarks.md's generated sections are what their JSON in bench/results/ renders to (issue 14).

Every section between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` is re-rendered from
``bench/results/NAME.json`` by the bench's own ``markdown()`` and compared with the docs text exactly,
so no figure in those sections can be typed by hand or outlive its JSON. Plus a smoke test of
``bench/run_all.py --quick`` on one cheap bench into a temporary folder (no timing is asserted).
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import run_all  # noqa: E402

with open(run_all.DOCS) as _fh:
    DOCS_TEXT = _fh.read()
SECTIONS = run_all.sections(DOCS_TEXT)


def test_docs_have_generated_sections():
    assert {"kernels", "private_sum", "certify", "tightness", "dpsgd", "progress", "opacus", "opacus_cnn"} <= set(SECTIONS)
    # every begin marker has its end marker (an unclosed one would swallow the prose after it)
    lines = DOCS_TEXT.split("\n")
    begins = [line for line in lines if line.startswith("<!-- generated: ")]
    assert len(begins) == len(SECTIONS) == lines.count(run_all.END)
    assert set(SECTIONS) <= set(run_all.BENCHES)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_section_is_rendered_from_its_json(name):
    path = os.path.join(run_all.RESULTS, f"{name}.json")
    assert os.path.exists(path), f"docs/benchmarks.md has a generated section '{name}' but bench/results has no {name}.json"
    with open(path) as fh:
        data = json.load(fh)
    assert SECTIONS[name] == run_all.render(name, data), (
        f"docs/benchmarks.md's '{name}' section differs from `python bench/run_all.py --docs-only --only {name}`")


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_section_names_commit_and_machine(name):
    """Each section names the commit and the machine it ran on, and its JSON records the command and machine."""
    with open(os.path.join(run_all.RESULTS, f"{name}.json")) as fh:
        data = json.load(fh)
    assert data["commit"] in SECTIONS[name]
    assert re.search(r"\d+ cores", SECTIONS[name])
    assert "command" in data and "machine" in data


def test_replace_section_keeps_prose():
    text = "intro\n<!-- generated: a -->\nold 1.0\n<!-- end generated -->\nprose 2.0\n<!-- generated: b -->\nx\n<!-- end generated -->\n"
    out = run_all.replace_section(text, "a", "new 3.0\n")
    assert out == text.replace("old 1.0", "new 3.0")
    assert run_all.sections(out) == {"a": "new 3.0\n", "b": "x\n"}
    with pytest.raises(KeyError):
        run_all.replace_section(text, "c", "y\n")


def test_run_all_quick_smoke(tmp_path):
    """run_all's plumbing on the cheapest bench: the JSON with its machine record, and a docs copy rendered from it."""
    rc = run_all.main(["--quick", "--only", "progress", "--out", str(tmp_path)])
    assert rc == 0
    with open(tmp_path / "progress.json") as fh:
        data = json.load(fh)
    m = data["machine"]
    for key in ("cpu", "cores", "python", "numpy", "numpy_blas", "threadpools", "env_threads", "load"):
        assert key in m, key
    assert data["runs"] and {"min_s", "median_s", "ratio_of_medians"} <= set(data["runs"][0]["variants"]["progress=True"])
    # the results went to the folder asked for; the quick copy of the docs carries the section if the docs mark one
    assert os.path.abspath(tmp_path) != os.path.abspath(run_all.RESULTS)
    with open(tmp_path / "benchmarks.md") as fh:
        copy = fh.read()
    if "progress" in SECTIONS:
        assert run_all.sections(copy)["progress"] == run_all.render("progress", data)


def test_quick_refuses_bench_results():
    with pytest.raises(SystemExit):
        run_all.main(["--quick", "--only", "progress", "--out", run_all.RESULTS, "--docs-only"])
