"""Real data shipped with the package (see ``data/README.md`` for sources and licences)."""

from __future__ import annotations

from importlib import resources

import pandas as pd


def load_bdims() -> pd.DataFrame:
    """Age (years), weight (kg), height (m) and sex of 507 adults (Heinz et al. 2003, via OpenIntro)."""
    with resources.files("opendp_hybridad.data").joinpath("bdims.csv").open("r") as fh:
        return pd.read_csv(fh, dtype={"age": "float64", "weight": "float64", "height": "float64", "sex": "int64"})
