"""DP-SGD measurement: batch selection, clipped or bounded gradient sum, discrete Gaussian noise, dp-accounting event.

Names are imported on first use (:mod:`opendp_hybridad._lazy`); the noise tables and
numba kernels are built when the first sampler or training step needs them.
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.dpsgd.sgd import DPSGD, DPSGDPlan, TrainingHistory, make_dp_sgd

__all__ = ["DPSGD", "DPSGDPlan", "TrainingHistory", "make_dp_sgd"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {".sgd": ("DPSGD", "DPSGDPlan", "TrainingHistory", "make_dp_sgd")},
    submodules=("selection", "sgd"),
)
