"""Issue 11: the curator report (not private) counts what preparation does per column, and the
getting-started section that documents it runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.frame import FrameDomain, curator_report, prepare_frame


def _schema():
    return hd.Schema(age=hd.Field(18, 90, missing="drop"), weight=hd.Field(40, 200, missing="impute", impute=70),
                     height=hd.Field(1.4, 2.2))


def test_counts_per_column():
    df = pd.DataFrame({"age": [10, 30, np.nan, 95, 400],
                       "weight": [np.nan, 1.8, 70, 250, 80],
                       "height": [1.7, 75.0, 1.3, 1.8, np.inf]})
    report = curator_report(df, FrameDomain(_schema(), size_limit=3))
    age, weight, height = (report["columns"][c] for c in ("age", "weight", "height"))
    assert age == {"present": True, "not_numeric": 0, "missing": 1, "imputed": 0, "dropped": 1, "below": 1, "above": 2,
                   "far_outside": 1}
    assert weight["imputed"] == 1 and weight["below"] == 1 and weight["above"] == 1 and weight["far_outside"] == 0
    assert height["above"] == 2 and height["below"] == 1 and height["far_outside"] == 2  # 75 (weight in height) and inf
    assert report["rows"] == 5 and report["kept"] == 4 and report["rows_over_limit"] == 2


def test_kept_agrees_with_preparation():
    df = pd.DataFrame({"age": [20, np.nan, 40], "weight": [50, 60, np.nan], "height": [1.5, 1.6, 1.7]})
    assert curator_report(df, _schema())["kept"] == prepare_frame(df, _schema()).rows == 2


def test_missing_and_non_numeric_columns_are_reported_not_raised():
    df = pd.DataFrame({"age": ["x", 20, None], "height": [1.5, 1.6, 1.7]})
    report = curator_report(df, _schema())
    assert report["columns"]["weight"] == {"present": False}
    assert report["columns"]["age"]["not_numeric"] == 1 and report["columns"]["age"]["missing"] == 1


def test_the_docstring_says_it_is_not_private():
    assert "not private" in curator_report.__doc__.lower()


def test_getting_started_section_runs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "getting-started.md").read_text()
    section = text.split("## 8. Curator report")[1]
    assert "not private" in section.lower() and "never part of a release" in section
    code = section.split("```python")[1].split("```")[0]
    scope: dict = {}
    exec(compile(code, "getting-started.md", "exec"), scope)
    report = scope["report"]
    assert report["columns"]["height"]["far_outside"] == 1 and report["columns"]["weight"]["below"] == 1
