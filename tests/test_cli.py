"""The shell interface: analyse (text and JSON), errors on stderr, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opendp_hybridad.cli import main

BMI_K = 13120.0107015588


def test_analyse_json_has_the_documented_keys(capsys):
    rc = main(["analyse", "a*w/h**2", "--bound", "a=18:90", "--bound", "w=40:200", "--bound", "h=1.4:2.2", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    lo, hi = report["range"]
    assert lo <= 18 * 40 / 2.2**2 and hi >= 90 * 200 / 1.4**2
    lip = report["lipschitz"]
    assert BMI_K <= lip["upper"] <= 1.001 * BMI_K
    assert lip["witness_point"] == {"a": 90.0, "w": 200.0, "h": 1.4}
    assert lip["ratio"] == pytest.approx(lip["upper"] / lip["witness_value"])
    assert set(report["partials"]) == {"a", "w", "h"}
    assert report["partials"]["h"] >= 2 * 90 * 200 / 1.4**3


def test_analyse_with_negative_bounds_and_inf_norm(capsys):
    assert main(["analyse", "x*exp(-x*y)", "-b", "x=-2:3", "-b", "y=-1:2", "--norm", "inf", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lipschitz"]["norm"] == "inf"
    assert report["lipschitz"]["upper"] >= report["partials"]["x"] * (1 - 1e-12)


def test_analyse_text_output(capsys):
    assert main(["analyse", "x*(1-x)", "-b", "x=0:1"]) == 0
    out = capsys.readouterr().out
    assert "range enclosure" in out and "Lipschitz bound" in out and "witness" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["analyse", "log(x)", "-b", "x=0:1"], "log"),
        (["analyse", "x*z", "-b", "x=0:1"], "z"),
        (["analyse", "x", "-b", "x=1:0"], "empty"),
        (["analyse", "x", "-b", "x=0:inf"], "not finite"),
        (["analyse", "x.real", "-b", "x=0:1"], "attribute access is not allowed"),
        (["analyse", "9**9**9", "-b", "x=0:1"], "exponent"),
        (["analyse", "x +* 1", "-b", "x=0:1"], "could not parse"),
    ],
)
def test_errors_go_to_stderr_with_a_nonzero_exit(argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "opendp_hybridad.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_demo_runs_on_the_bundled_data():
    from opendp_hybridad.demo import run_demo

    lines: list[str] = []
    summary = run_demo(print_fn=lines.append)
    assert summary["records"] == 507
    assert BMI_K <= summary["K"] <= 1.001 * BMI_K
    assert any("every record's value and gradient norm lies within the certificates: True" in line for line in lines)


def test_a_jump_still_gets_its_range_and_says_why_there_is_no_lipschitz_bound(capsys):
    assert main(["analyse", "where(x > 0, 1, 0) + x", "-b", "x=-1:1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lo, hi = report["range"]
    assert lo <= -1 and hi >= 2
    assert report["lipschitz"]["upper"] is None
    assert "jump" in report["lipschitz"]["error"]
