"""Individual privacy accounting: Rényi and Gaussian-DP filters with a durable ledger (add/remove only)."""

from opendp_hybridad.individual.filter import IndividualFilter
from opendp_hybridad.individual.ledger import LedgerError, LedgerParameters, PrivacyLedger
from opendp_hybridad.individual.report import QueryReport, gdp_epsilon

__all__ = ["IndividualFilter", "QueryReport", "gdp_epsilon", "PrivacyLedger", "LedgerParameters", "LedgerError"]
