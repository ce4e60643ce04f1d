"""Full-batch noisy gradient descent with an individual privacy filter.

Feldman and Zrnic (2021, Section 5) apply the individual Rényi filter to full-batch
noisy gradient descent: at each step every active individual contributes their own
(clipped) gradient, is charged for its norm, and leaves once their budget is spent.
Full batches are the setting their theorem covers; Poisson-subsampled training is
not offered here because we know of no proof that the filter holds under
subsampling with per-individual charges.

The model is a per-record loss over data fields and parameter fields of one
schema; the parameter fields' bounds are the set the weights are projected back
onto after each step (public). Gradients come from the compiled kernel of the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.individual.filter import IndividualFilter
from opendp_hybridad.symbolic.function import RecordFunction


@dataclass
class GradientDescentResult:
    parameters: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    filter: IndividualFilter | None = None


def noisy_gradient_descent(frame: pd.DataFrame, loss: RecordFunction, parameters: Mapping[str, float], *,
                           steps: int, learning_rate: float, noise_scale: float, clip: float, budget: float,
                           kind: str = "gdp", alpha: float | None = None, id_column: str | None = None,
                           ledger: str = ":memory:", normaliser: float | None = None) -> GradientDescentResult:
    """Train ``parameters`` of ``loss`` on ``frame``; each step is one individual-filter query.

    ``clip``: per-record gradient norm bound (gradients are scaled down to it).
    ``normaliser``: public constant the noisy gradient sum is divided by (default: the
    number of rows, treated as public, as in most DP-SGD code).
    """
    names = list(parameters)
    schema = loss.schema
    for n in names:
        if n not in schema:
            raise DeclarationError(f"parameter {n!r} is not a field of the loss's schema")
    data_fields = [n for n in schema.names if n not in parameters]
    if not (clip > 0):
        raise DeclarationError("clip must be positive")
    theta = np.array([float(parameters[n]) for n in names])
    lower = np.array([schema[n].lower for n in names])
    upper = np.array([schema[n].upper for n in names])
    theta = np.clip(theta, lower, upper)
    # the filter sees the data fields and, as constant columns, the public parameters
    work = frame.copy()
    for n in names:
        work[n] = 0.0
    flt = IndividualFilter(work, schema, budget=budget, kind=kind, alpha=alpha, id_column=id_column, ledger=ledger)
    kernel = loss.compile()
    param_index = [schema.names.index(n) for n in names]
    scale = float(normaliser if normaliser is not None else len(frame))
    result = GradientDescentResult({}, [], flt)
    for step in range(steps):
        columns = [c.copy() for c in flt._columns]
        for j, n in zip(param_index, names, strict=True):
            columns[j][:] = theta[names.index(n)]
        record = dict(zip(schema.names, columns, strict=True))
        for n in data_fields:  # impute and clamp data fields as the filter does
            fld = schema[n]
            col = record[n]
            if fld.impute is not None:
                col = np.where(np.isnan(col), fld.impute, col)
            record[n] = np.clip(col, fld.lower, fld.upper)
        grads = kernel.gradient(record)[:, param_index]
        norms = np.sqrt((grads * grads).sum(axis=1))
        factor = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
        clipped = grads * factor[:, None] * (1 - 1e-12)  # strictly inside the bound after rounding
        noisy = flt.sum_rows(clipped, clip, noise_scale, label=f"step {step}")
        theta = np.clip(theta - learning_rate * noisy / scale, lower, upper)
        # only public quantities: the released parameters (the filter's own reports are curator-side)
        result.history.append({"step": step, **dict(zip(names, theta.tolist(), strict=True))})
    result.parameters = dict(zip(names, theta.tolist(), strict=True))
    return result
