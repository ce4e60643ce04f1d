"""A curator's report: what preparation would do to a frame. NOT private.

The numbers in this report are computed from the data without noise. They reveal
information about individual records to whoever reads them (a count of 1 above the box
says one person is outside it). The report is for the data owner only, to find data-entry
errors and to choose boxes and missing-value policies; it is never part of a release and
must not be published or shared with an analyst.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import SchemaMismatchError
from opendp_hybridad.frame.domain import as_frame_domain


def curator_report(frame: Any, domain: Any) -> dict[str, Any]:
    """Per column, how many values preparation would clamp, impute or drop. **Not private.**

    The counts are exact, computed from the data without noise: they reveal data to whoever
    reads them and are never part of a release (show them to the data owner only).

    ``domain`` is a :class:`~opendp_hybridad.symbolic.Schema`, a
    :class:`~opendp_hybridad.frame.FrameDomain` or a domain from
    :func:`~opendp_hybridad.frame.make_frame_domain`. Returns a dict::

        {"rows": ..., "kept": ..., "size_limit": ..., "rows_over_limit": ..., "kept_size_expected": ...,
         "columns": {name: {"present": bool, "not_numeric": ..., "missing": ..., "imputed": ..., "dropped": ...,
                            "below": ..., "above": ..., "far_outside": ...}}}

    Per column: ``missing`` values (NaN, None, pd.NA); of them ``imputed`` (policy
    ``"impute"``) or ``dropped`` (policy ``"drop"``: records removed; under ``"raise"`` the frame is
    not a member); ``below`` / ``above`` the declared box (clamped to it); ``far_outside``, values
    more than the box's width outside it, a likely data-entry error (e.g. weight and height
    swapped); ``not_numeric``, values that are not numbers (the frame is then not a member).
    ``rows_over_limit`` counts rows beyond the domain's ``size_limit``.
    """
    spec = as_frame_domain(domain)
    if not isinstance(frame, pd.DataFrame):
        raise SchemaMismatchError("curator_report needs a pandas DataFrame")
    rows = len(frame)
    kept = np.ones(rows, dtype=bool)
    columns: dict[str, dict[str, Any]] = {}
    for name, field in spec.schema.fields.items():
        if name not in frame.columns or isinstance(frame[name], pd.DataFrame):
            columns[name] = {"present": False}
            continue
        raw = frame[name]
        missing_raw = raw.isna().to_numpy()
        values = pd.to_numeric(raw.astype(object).where(~missing_raw, np.nan), errors="coerce").to_numpy(dtype=float,
                                                                                                       na_value=np.nan)
        not_numeric = int((np.isnan(values) & ~missing_raw).sum())
        missing = np.isnan(values) & missing_raw
        if field.missing == "drop":
            kept &= ~missing
        lo, hi = float(field.lower), float(field.upper)
        width = hi - lo
        finite = ~np.isnan(values)
        below = finite & (values < lo)
        above = finite & (values > hi)
        far = finite & ((values < lo - width) | (values > hi + width))
        columns[name] = {
            "present": True,
            "not_numeric": not_numeric,
            "missing": int(missing.sum()),
            "imputed": int(missing.sum()) if field.missing == "impute" else 0,
            "dropped": int(missing.sum()) if field.missing == "drop" else 0,
            "below": int(below.sum()),
            "above": int(above.sum()),
            "far_outside": int(far.sum()),
        }
    return {
        "rows": rows,
        "kept": int(kept.sum()),
        "size_limit": spec.size_limit,
        "rows_over_limit": max(0, rows - spec.size_limit),
        "kept_size_expected": spec.size,
        "columns": columns,
    }
