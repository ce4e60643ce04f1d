"""DP-SGD measurement: batch selection, clipped or bounded gradient sum, discrete Gaussian noise, proven accounting.

Names are imported on first use (:mod:`opendp_hybridad._lazy`); the noise tables and
numba kernels are built when the first sampler or training step needs them.
"""

from typing import TYPE_CHECKING

from opendp_hybridad._lazy import lazy_exports

if TYPE_CHECKING:
    from opendp_hybridad.dpsgd.checkpoint import Checkpoint
    from opendp_hybridad.dpsgd.optim import SGD, Adam, Constant, Cosine, StepDecay
    from opendp_hybridad.dpsgd.plan import DPSGDPlan
    from opendp_hybridad.dpsgd.sgd import DPSGD, TrainedParameters, TrainingHistory, make_dp_sgd

__all__ = ["DPSGD", "DPSGDPlan", "TrainedParameters", "TrainingHistory", "make_dp_sgd", "SGD", "Adam", "Constant", "Cosine",
           "StepDecay", "Checkpoint"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {".sgd": ("DPSGD", "TrainedParameters", "TrainingHistory", "make_dp_sgd"),
     ".plan": ("DPSGDPlan",),
     ".optim": ("SGD", "Adam", "Constant", "Cosine", "StepDecay"),
     ".checkpoint": ("Checkpoint",)},
    submodules=("selection", "sgd", "plan", "optim", "checkpoint"),
)
