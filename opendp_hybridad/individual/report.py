"""Curator-side reporting for the individual filters: query reports, summaries, plots, guarantees.

Nothing here touches private data beyond what the filter already holds for its
curator (spent budgets); the guarantees are conversions of the per-individual
budget, rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.analysis.rounding import up
from opendp_hybridad.errors import DeclarationError


@dataclass(frozen=True)
class QueryReport:
    """What one query cost: for the admitted, and what worst-case accounting would have charged."""

    label: str
    noise_scale: float
    admitted: int
    left_out: int
    worst_case_charge: float
    mean_charge: float
    max_charge: float


def query_report(label: str, noise_scale: float, charges: np.ndarray, admitted: np.ndarray,
                 worst_case_charge: float) -> QueryReport:
    """The report of one query from its charges and the admitted mask."""
    return QueryReport(label, noise_scale, int(admitted.sum()), int((~admitted).sum()), worst_case_charge,
                       float(charges[admitted].mean()) if admitted.any() else 0.0,
                       float(charges[admitted].max(initial=0.0)))


def summary(spent_fraction: np.ndarray, individuals: int, active: int, reports: list[QueryReport],
            plot_path: str | None = None) -> dict[str, Any]:
    """Active individuals, spent-budget quantiles and the per-query table; with ``plot_path``, a figure.

    The figure (matplotlib) is a histogram of the spent fraction of the budget and,
    per query, the worst-case charge against the mean and largest individual charges.
    """
    queries = pd.DataFrame([r.__dict__ for r in reports])
    out: dict[str, Any] = {
        "individuals": individuals, "active": active,
        "spent_fraction_quantiles": dict(zip(("min", "q25", "median", "q75", "max"),
                                             np.quantile(spent_fraction, [0, 0.25, 0.5, 0.75, 1]).tolist(), strict=True))
        if spent_fraction.size else {},
        "queries": queries,
    }
    if plot_path is not None:
        _plot(spent_fraction, out, queries, individuals, plot_path)
    return out


def _plot(spent_fraction: np.ndarray, out: dict[str, Any], queries: pd.DataFrame, individuals: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].hist(spent_fraction, bins=40)
    axes[0].set_xlabel("fraction of the individual budget spent")
    axes[0].set_ylabel("individuals")
    axes[0].set_title(f"{out['active']} of {individuals} active")
    if not queries.empty:
        axes[1].semilogy(queries.index + 1, queries.worst_case_charge, "x-", label="worst case (everyone)")
        axes[1].semilogy(queries.index + 1, queries.mean_charge, "o-", label="individual, mean over admitted")
        axes[1].semilogy(queries.index + 1, queries.max_charge, ".-", label="individual, max")
        axes[1].set_xlabel("query")
        axes[1].set_ylabel("charge")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon of mu-GDP at delta: dp-accounting's pessimistic PLD of a Gaussian with noise multiplier 1/mu.

    The PLD is discretised pessimistically (its epsilon is not below the Gaussian's);
    the result is moved one float up.
    """
    from dp_accounting.pld import privacy_loss_distribution as pld

    dist = pld.from_gaussian_mechanism(standard_deviation=1.0 / mu, sensitivity=1.0,
                                       value_discretization_interval=1e-4, pessimistic_estimate=True)
    return up(float(dist.get_epsilon_for_delta(delta)))


def renyi_epsilon(alpha: float, rdp: float, delta: float) -> float:
    """Epsilon at delta of ``(alpha, rdp)``-RDP (dp-accounting's conversion), one float up."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    eps, _ = compute_epsilon([alpha], [rdp], delta)
    return up(float(eps))


def guarantee(kind: str, budget: float, alpha: float | None, delta: float) -> dict[str, float]:
    """Each individual's guarantee: ``(alpha, B)``-RDP or ``mu``-GDP, and ``(epsilon, delta)``."""
    if not (0 < delta < 1):
        raise DeclarationError("delta must be in (0, 1)")
    if kind == "renyi":
        return {"alpha": alpha, "rdp": budget, "epsilon": renyi_epsilon(alpha, budget, delta), "delta": delta}
    return {"mu": budget, "epsilon": gdp_epsilon(budget, delta), "delta": delta}


def budget_fraction(spent: np.ndarray, stored_budget: float) -> np.ndarray:
    """Spent loss as a fraction of the stored budget (for reports)."""
    return spent / stored_budget if math.isfinite(stored_budget) and stored_budget > 0 else spent
