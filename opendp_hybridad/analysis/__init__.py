"""Certified analysis: outward-rounded interval arithmetic, branch and bound, certificates.

Names are imported on first use (:mod:`opendp_hybridad._lazy`): the float kernels of
:mod:`.rounding` do not bring in sympy or scipy.
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.analysis.certificate import Analysis, BoundCertificate, RangeCertificate, Witness
    from opendp_hybridad.analysis.certify import certify_lipschitz, certify_partial, certify_range

__all__ = ["Analysis", "BoundCertificate", "RangeCertificate", "Witness",
           "certify_range", "certify_lipschitz", "certify_partial"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".certificate": ("Analysis", "BoundCertificate", "RangeCertificate", "Witness"),
        ".certify": ("certify_lipschitz", "certify_partial", "certify_range"),
    },
    submodules=("branch_and_bound", "certificate", "certify", "interval", "rounding", "smoothness", "tape"),
)
