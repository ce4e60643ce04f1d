"""Full-batch noisy gradient descent with an individual privacy filter.

Feldman and Zrnic (2021, Section 5) apply the individual Rényi filter to full-batch
noisy gradient descent: at each step every active individual contributes their own
(clipped) gradient, is charged for its norm, and leaves once their budget is spent.
Full batches are the setting their theorem covers; Poisson-subsampled training is
not offered here because we know of no proof that the filter holds under
subsampling with per-individual charges. As for the filter, the guarantee is for
adding or removing one individual; other relations are refused.

The gradient sum is divided by a public ``normaliser`` the caller gives: the number
of rows is private under adding or removing a person, so it is not a default.

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
from opendp_hybridad.individual.filter import IndividualFilter, check_relation
from opendp_hybridad.symbolic.function import RecordFunction


@dataclass
class GradientDescentResult:
    parameters: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    filter: IndividualFilter | None = None


def noisy_gradient_descent(frame: pd.DataFrame, loss: RecordFunction, parameters: Mapping[str, float], *,
                           steps: int, learning_rate: float, noise_scale: float, clip: float, budget: float,
                           kind: str = "gdp", alpha: float | None = None, id_column: str | None = None,
                           ledger: str = ":memory:", normaliser: float | None = None,
                           relation: object = "add_remove") -> GradientDescentResult:
    """Train ``parameters`` of ``loss`` on ``frame``; each step is one individual-filter query.

    ``clip``: per-record gradient norm bound (gradients are scaled down to it).
    ``normaliser``: public constant the noisy gradient sum is divided by (required:
    the number of rows is not public under adding or removing an individual).
    ``relation``: only adding or removing one individual is accepted.
    """
    check_relation(relation)
    if normaliser is None or not (normaliser > 0 and np.isfinite(normaliser)):
        raise DeclarationError("give a public positive normaliser (the number of rows is private under add/remove)")
    names = list(parameters)
    schema = loss.schema
    for n in names:
        if n not in schema:
            raise DeclarationError(f"parameter {n!r} is not a field of the loss's schema")
    if not (clip > 0 and np.isfinite(clip)):
        raise DeclarationError("clip must be a positive finite number")
    theta = np.array([float(parameters[n]) for n in names])
    lower = np.array([schema[n].lower for n in names])
    upper = np.array([schema[n].upper for n in names])
    theta = np.clip(theta, lower, upper)
    # the filter sees the data fields and, as constant columns, the public parameters
    work = frame.copy()
    for n in names:
        work[n] = 0.0
    flt = IndividualFilter(work, schema, budget=budget, kind=kind, alpha=alpha, id_column=id_column, ledger=ledger,
                           relation=relation)
    kernel = loss.compile()
    param_index = [schema.names.index(n) for n in names]
    scale = float(normaliser)
    result = GradientDescentResult({}, [], flt)
    for step in range(steps):
        columns = flt.record_columns()  # the filter's records: imputed and clamped, one per counted row
        for j, n in zip(param_index, names, strict=True):
            columns[j][:] = theta[names.index(n)]
        record = dict(zip(schema.names, columns, strict=True))
        with np.errstate(all="ignore"):
            grads = kernel.gradient(record)[:, param_index]
        # sum_rows clips each row to norm `clip` (and counts a non-finite row as zero)
        noisy = flt.sum_rows(grads, clip, noise_scale, label=f"step {step}")
        theta = np.clip(theta - learning_rate * noisy / scale, lower, upper)
        # only public quantities: the released parameters (the filter's own reports are curator-side)
        result.history.append({"step": step, **dict(zip(names, theta.tolist(), strict=True))})
    result.parameters = dict(zip(names, theta.tolist(), strict=True))
    return result
