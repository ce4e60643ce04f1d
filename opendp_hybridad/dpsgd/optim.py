"""Optimizers and learning-rate schedules for DP-SGD: post-processing of the released noisy gradients.

What a DP-SGD step releases is the noisy gradient sum; everything an optimizer does
afterwards (momentum, Adam's moment estimates, weight decay, a learning rate that depends
on the step) is a function of the released sums, of the public step index and of the
current weights, which are themselves functions of earlier released sums and of the
public initial weights. Post-processing a differentially private output costs no privacy
(Dwork and Roth 2014, Proposition 2.1; for Rényi DP, Mironov 2017, Proposition 2; the
adaptive composition of the steps, which the accounting already counts, allows each step's
gradient to be taken at weights chosen from the earlier outputs). So no optimizer here
touches the accounting, and none may read the data or the un-noised sum: they receive the
noisy sum and the expected (public) batch size only.

With ``mode="bound"`` (and ``auto`` with global granularity) the certified ``K`` and the
forward error ``e`` hold over the declared weight set only, so the trainer still projects
the weights onto that set after every update, whatever the optimizer proposes
(:meth:`opendp_hybridad.nn.sequential.Sequential.apply_step` with ``project=True``).

Schedules are functions of the step index alone (public), so they are post-processing too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.errors import DeclarationError

__all__ = ["SGD", "Adam", "Constant", "Cosine", "Optimizer", "Schedule", "StepDecay", "as_schedule"]


class Schedule:
    """A learning rate as a function of the step index (0-based, counted over resumed runs too)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def for_run(self, steps: int) -> Schedule:
        """This schedule for a run of ``steps`` steps (a cosine schedule without its own length takes it)."""
        return self


@dataclass(frozen=True)
class Constant(Schedule):
    """The same rate at every step."""

    rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", validation.positive_finite("learning_rate", self.rate))

    def __call__(self, step: int) -> float:
        return self.rate

    def __str__(self) -> str:
        return f"constant {self.rate:g}"


@dataclass(frozen=True)
class StepDecay(Schedule):
    """``rate * factor^(step // every)``: the rate multiplied by ``factor`` every ``every`` steps."""

    rate: float
    every: int
    factor: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", validation.positive_finite("learning_rate", self.rate))
        object.__setattr__(self, "every", validation.count("every", self.every))
        object.__setattr__(self, "factor", validation.positive_finite("factor", self.factor))

    def __call__(self, step: int) -> float:
        return self.rate * self.factor ** (int(step) // self.every)

    def __str__(self) -> str:
        return f"step decay {self.rate:g} x {self.factor:g} every {self.every} steps"


@dataclass(frozen=True)
class Cosine(Schedule):
    """``final + (rate - final) (1 + cos(pi t / steps)) / 2``, then ``final`` after ``steps`` (default: the run's length)."""

    rate: float
    steps: int | None = None
    final: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", validation.positive_finite("learning_rate", self.rate))
        if self.steps is not None:
            object.__setattr__(self, "steps", validation.count("steps", self.steps))
        final = validation.real("final", self.final)
        if not 0.0 <= final <= self.rate:
            raise DeclarationError("final must lie between 0 and the initial rate")
        object.__setattr__(self, "final", final)

    def for_run(self, steps: int) -> Schedule:
        return self if self.steps is not None else Cosine(self.rate, max(1, int(steps)), self.final)

    def __call__(self, step: int) -> float:
        length = self.steps if self.steps is not None else 1
        t = min(int(step), length)
        return self.final + (self.rate - self.final) * (1.0 + math.cos(math.pi * t / length)) / 2.0

    def __str__(self) -> str:
        return f"cosine {self.rate:g} -> {self.final:g} over {self.steps if self.steps is not None else 'the run'} steps"


@dataclass(frozen=True)
class _Callable(Schedule):
    function: Callable[[int], float]

    def __call__(self, step: int) -> float:
        value = self.function(int(step))
        # a public function of the public step: a bad value is a bad declaration, whatever the data
        return validation.positive_finite("learning_rate (the schedule's value)", value)

    def __str__(self) -> str:
        return f"schedule {getattr(self.function, '__name__', type(self.function).__name__)}"


def as_schedule(learning_rate: float | Schedule | Callable[[int], float]) -> Schedule:
    """A :class:`Schedule` from a number (constant), a schedule, or any callable of the step."""
    if isinstance(learning_rate, Schedule):
        return learning_rate
    if callable(learning_rate):
        return _Callable(learning_rate)
    return Constant(learning_rate)


class Optimizer:
    """Turns the released noisy gradient sum into an update (module docstring: post-processing only).

    :meth:`update` returns ``(direction, scale)``; the trainer sets ``params <- params - rate * scale * direction``
    and projects onto the declared weight set where the mode needs it.
    """

    def init(self, dimension: int) -> dict[str, Any]:
        """The optimizer's state for ``dimension`` parameters (a dict of arrays and numbers, saved with checkpoints)."""
        return {}

    def update(self, noisy_sum: np.ndarray, batch_size: int, weights: Callable[[], np.ndarray],
               state: dict[str, Any]) -> tuple[np.ndarray, float]:
        """The step from the released sum (``noisy_sum``, may be overwritten), the expected batch size
        (public) and the current weights (flat, computed on demand: public, earlier released outputs)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    """SGD on the noisy mean ``g = noisy_sum / batch_size``, with heavy-ball ``momentum`` (``v <- momentum v + g``;
    ``nesterov``: ``g + momentum v``) and coupled ``weight_decay`` (``g <- g + weight_decay w``)."""

    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("momentum", "weight_decay"):
            value = validation.real(name, getattr(self, name))
            if value < 0 or (name == "momentum" and value >= 1):
                raise DeclarationError(f"{name} must be in [0, 1)" if name == "momentum" else f"{name} must be non-negative")
            object.__setattr__(self, name, value)

    def init(self, dimension: int) -> dict[str, Any]:
        return {"velocity": np.zeros(dimension)} if self.momentum else {}

    def update(self, noisy_sum, batch_size, weights, state):
        if not self.momentum and not self.weight_decay:
            return noisy_sum, 1.0 / batch_size  # plain DP-SGD: the released sum scaled once
        g = noisy_sum / batch_size
        if self.weight_decay:
            g += self.weight_decay * weights()
        if not self.momentum:
            return g, 1.0
        v = state["velocity"]
        v *= self.momentum
        v += g
        return (g + self.momentum * v) if self.nesterov else v.copy(), 1.0

    def __str__(self) -> str:
        parts = [f"momentum {self.momentum:g}" + (" (Nesterov)" if self.nesterov else "")] if self.momentum else []
        parts += [f"weight decay {self.weight_decay:g}"] if self.weight_decay else []
        return "SGD" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma and Ba 2015) on the noisy mean, with decoupled ``weight_decay`` (AdamW, Loshchilov and Hutter 2019)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("beta1", "beta2"):
            value = validation.real(name, getattr(self, name))
            if not 0 <= value < 1:
                raise DeclarationError(f"{name} must be in [0, 1)")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "eps", validation.positive_finite("eps", self.eps))
        decay = validation.real("weight_decay", self.weight_decay)
        if decay < 0:
            raise DeclarationError("weight_decay must be non-negative")
        object.__setattr__(self, "weight_decay", decay)

    def init(self, dimension: int) -> dict[str, Any]:
        return {"m": np.zeros(dimension), "v": np.zeros(dimension), "t": 0}

    def update(self, noisy_sum, batch_size, weights, state):
        g = noisy_sum / batch_size
        state["t"] = t = int(state["t"]) + 1
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        direction = (m / (1 - self.beta1**t)) / (np.sqrt(v / (1 - self.beta2**t)) + self.eps)
        if self.weight_decay:
            direction += self.weight_decay * weights()
        return direction, 1.0

    def __str__(self) -> str:
        decay = f", weight decay {self.weight_decay:g} (decoupled)" if self.weight_decay else ""
        return f"Adam (beta1 {self.beta1:g}, beta2 {self.beta2:g}, eps {self.eps:g}{decay})"
