"""Individual privacy accounting: Rényi and Gaussian-DP filters with a durable ledger."""

from opendp_hybridad.individual.filter import IndividualFilter, QueryReport, gdp_epsilon
from opendp_hybridad.individual.ledger import LedgerError, LedgerParameters, PrivacyLedger

__all__ = ["IndividualFilter", "QueryReport", "gdp_epsilon", "PrivacyLedger", "LedgerParameters", "LedgerError"]
