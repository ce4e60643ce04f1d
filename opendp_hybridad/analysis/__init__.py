"""Certified analysis: outward-rounded interval arithmetic, branch and bound, certificates."""

from opendp_hybridad.analysis.certificate import Analysis, BoundCertificate, RangeCertificate, Witness
from opendp_hybridad.analysis.certify import certify_lipschitz, certify_partial, certify_range

__all__ = ["Analysis", "BoundCertificate", "RangeCertificate", "Witness",
           "certify_range", "certify_lipschitz", "certify_partial"]
