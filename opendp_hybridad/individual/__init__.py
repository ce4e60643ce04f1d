"""Individual privacy accounting: Rényi and Gaussian-DP filters with a durable ledger (add/remove only).

Names are imported on first use (:mod:`opendp_hybridad._lazy`).
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.individual.filter import IndividualFilter
    from opendp_hybridad.individual.ledger import LedgerError, LedgerParameters, PrivacyLedger
    from opendp_hybridad.individual.report import QueryReport, gdp_epsilon

__all__ = ["IndividualFilter", "QueryReport", "gdp_epsilon", "PrivacyLedger", "LedgerParameters", "LedgerError"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".filter": ("IndividualFilter",),
        ".ledger": ("LedgerError", "LedgerParameters", "PrivacyLedger"),
        ".report": ("QueryReport", "gdp_epsilon"),
    },
    submodules=("charges", "filter", "ids", "ledger", "merkle", "report"),
)
