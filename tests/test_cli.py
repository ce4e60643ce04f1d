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


# -- privacy dp-sgd: calibration to a target epsilon --------------------------------------------
SGD = ["privacy", "dp-sgd", "--n", "60000", "--batch-size", "256", "--delta", "1e-5", "--epochs", "1"]


def _printed_epsilon(out: str) -> float:
    import re

    match = re.search(r"epsilon (\S+) <= target", out)
    assert match, out
    return float(match.group(1))


def test_a_huge_target_says_it_is_met_at_the_smallest_allowed_multiplier(capsys):
    """Old message: 'cannot be met ... even noise multiplier 1000 gives 0.0035' (false: every allowed multiplier meets it)."""
    from opendp_hybridad import validation

    assert main([*SGD, "--target-epsilon", "1e12", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["noise_multiplier"] == validation.MIN_NOISE_MULTIPLIER and report["at_smallest_allowed"] is True
    assert report["epsilon"] <= report["target_epsilon"] == 1e12
    assert main([*SGD, "--target-epsilon", "1e12"]) == 0
    out = capsys.readouterr().out
    assert "met at the smallest allowed noise multiplier (0.001)" in out
    assert report["epsilon"] <= _printed_epsilon(out) <= 1e12  # printed rounded up, still under the target


def test_an_ordinary_target_is_met_by_the_proven_figure(capsys):
    assert main([*SGD, "--target-epsilon", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["at_smallest_allowed"]
    assert 0.99 <= report["epsilon"] <= 1.0  # at most the target, and not far below it
    assert main([*SGD, "--target-epsilon", "1"]) == 0
    out = capsys.readouterr().out
    assert "calibrated: epsilon" in out
    assert report["epsilon"] <= _printed_epsilon(out) <= 1.0
    # the multiplier printed (rounded up) re-runs to at most the target
    sigma = float(out.split("noise multiplier ")[1].split(",")[0])
    assert sigma >= report["noise_multiplier"]
    assert main([*SGD, "--noise-multiplier", str(sigma), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epsilon"] <= 1.0
    assert main([*SGD, "--target-epsilon", "2", "--accountant", "rdp", "--json"]) == 0
    assert 1.99 <= json.loads(capsys.readouterr().out)["epsilon"] <= 2.0


@pytest.mark.parametrize(("argv", "fragment"), [
    # the figure still falls with more noise: the multiplier's upper limit stops it
    (["--n", "3989", "--batch-size", "32", "--epochs", "2000", "--delta", "1e-9", "--target-epsilon", "1e-3"],
     "largest allowed noise multiplier (1e+06) gives"),
    # no PLD is proven for DP-SGD's lattice noise
    (["--n", "60000", "--batch-size", "256", "--epochs", "1", "--delta", "1e-5", "--target-epsilon", "1",
      "--accountant", "pld"], "RDP only"),
])
def test_a_tiny_target_names_the_limit_that_stops_it(argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "opendp_hybridad.cli", "privacy", "dp-sgd", *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("opendp-hybridad: error: ") and fragment in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_printed_figures_are_rounded_up():
    from opendp_hybridad.cli import _up

    for value in [0.999006324, 1 / 3, 2 / 3, 0.0099993913, 1.29236005e8, 1e-300, 100.0000001, 0.001, 5.0]:
        assert float(_up(value)) >= value
        assert float(_up(value)) <= value * (1 + 1e-5)


def test_a_hundred_million_step_run_is_reported_quietly(capsys):
    argv = ["privacy", "dp-sgd", "--n", "1000000", "--batch-size", "100", "--epochs", "10000", "--delta", "1e-5"]
    assert main([*argv, "--noise-multiplier", "5"]) == 0
    out = capsys.readouterr()
    assert "epsilon at delta=1e-05:  0." in out.out and "Renyi" not in out.err
    assert main([*argv, "--target-epsilon", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epsilon"] <= 1 and report["steps"] == 10**8

