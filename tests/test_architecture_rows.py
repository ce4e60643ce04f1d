"""docs/architecture.md stays true to the code: every module of the package has its row, and every row names a module that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "opendp_hybridad"


def _modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def test_every_module_has_a_row_and_every_row_a_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    first_cells = re.findall(r"^\| ([^|]*)\|", text, flags=re.MULTILINE)
    rows = {name for cell in first_cells for name in re.findall(r"`([a-z_/]+\.py)`", cell)}
    assert _modules() - rows == set(), "modules without a row in docs/architecture.md"
    assert rows - _modules() == set(), "rows in docs/architecture.md naming no module"
