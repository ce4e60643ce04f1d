"""DP-SGD measurement: batch selection, clipped or bounded gradient sum, discrete Gaussian noise, dp-accounting event."""

from opendp_hybridad.dpsgd.sgd import DPSGD, DPSGDPlan, TrainingHistory, make_dp_sgd

__all__ = ["DPSGD", "DPSGDPlan", "TrainingHistory", "make_dp_sgd"]
