"""Checks of public parameters, in one place (DP-SGD, accounting and the CLI use them).

Each check returns the value as the type the caller computes with, or raises
:class:`~opendp_hybridad.errors.DeclarationError` with a one-line message that names
the parameter and the accepted range. Messages never repeat the value given: a
parameter is public, but the same helpers guard paths that see data.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

from opendp_hybridad.errors import DeclarationError

#: the most noisy steps one DP-SGD run or accounting query may have (memory and time stay bounded)
MAX_STEPS = 10**8
#: the most examples a declared dataset size may state
MAX_SIZE = 2**53
#: the largest noise multiplier accepted (beyond it accountants overflow and the noise swamps any float)
MAX_NOISE_MULTIPLIER = 1e6
#: the smallest noise multiplier accepted (below it the accountants divide by zero; such a run has no
#: meaningful privacy anyway). Between it and about 0.05 the PLD would need billions of points:
#: opendp_hybridad.pld_size coarsens its discretisation first, so memory and time stay bounded
MIN_NOISE_MULTIPLIER = 1e-3


def _numpy_types(*names: str) -> tuple[type, ...]:
    """numpy's scalar types ``names``, or none where numpy is not imported (then no value can be one).

    The CLI checks its options through this module; not importing numpy here keeps
    ``--help`` and ``--version`` from loading it.
    """
    np = sys.modules.get("numpy")
    return () if np is None else tuple(getattr(np, name) for name in names)


def real(name: str, value: Any) -> float:
    """``value`` as a float: a real number, not NaN (infinities pass)."""
    if isinstance(value, (bool, *_numpy_types("bool_"))) or not isinstance(
            value, (numbers.Real, *_numpy_types("floating", "integer"))):
        raise DeclarationError(f"{name} must be a real number")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DeclarationError(f"{name} must be a real number") from None
    if math.isnan(out):
        raise DeclarationError(f"{name} must be a number, not NaN")
    return out


def positive_finite(name: str, value: Any, limit: float | None = None) -> float:
    """``value`` as a float in ``(0, limit]`` (``limit`` None: any finite positive number)."""
    out = real(name, value)
    if not (out > 0 and math.isfinite(out)):
        raise DeclarationError(f"{name} must be positive and finite")
    if limit is not None and out > limit:
        raise DeclarationError(f"{name} must be at most {limit:g}")
    return out


def set_bound(name: str, value: Any) -> float:
    """A declared weight set's radius or box side (``|W| <= value``) as a float no larger than it.

    A finite non-negative int or float (not a bool); an int that is not a double is rounded
    *down* (``float(2**53 + 3)`` rounds up to ``2^53 + 4``, and weights clipped to that would
    leave the declared set): the set the library then certifies and projects onto is a subset
    of the one declared, so every bound over it holds for what training can reach.
    """
    refusal = DeclarationError(f"{name} must be a finite non-negative number")
    if isinstance(value, (bool, *_numpy_types("bool_"))) or not isinstance(
            value, (int, float, *_numpy_types("floating", "integer"))):
        raise refusal
    if not value >= 0:  # NaN fails too
        raise refusal
    if isinstance(value, (int, *_numpy_types("integer"))):
        from opendp_hybridad.analysis.rounding import round_down

        out = round_down(int(value))
    else:
        out = float(value)
    if not math.isfinite(out):
        raise refusal
    return out


def probability(name: str, value: Any) -> float:
    """``value`` as a float strictly between 0 and 1 (e.g. delta)."""
    out = real(name, value)
    if not 0.0 < out < 1.0:
        raise DeclarationError(f"{name} must be strictly between 0 and 1")
    return out


def count(name: str, value: Any, limit: int = MAX_SIZE, minimum: int = 1) -> int:
    """``value`` as an int in ``[minimum, limit]``; a float is accepted only if it is a whole number."""
    if isinstance(value, (bool, *_numpy_types("bool_"))):
        raise DeclarationError(f"{name} must be a whole number")
    if isinstance(value, (numbers.Integral, *_numpy_types("integer"))):
        out = int(value)
    elif isinstance(value, (numbers.Real, *_numpy_types("floating"))):
        f = float(value)
        if not (math.isfinite(f) and f == math.floor(f)):
            raise DeclarationError(f"{name} must be a whole number")
        out = int(f)
    else:
        raise DeclarationError(f"{name} must be a whole number")
    if out < minimum:
        raise DeclarationError(f"{name} must be at least {minimum}")
    if out > limit:
        raise DeclarationError(f"{name} must be at most {limit}")
    return out


def steps(n: int, batch_size: int, epochs: float, limit: int = MAX_STEPS) -> int:
    """``ceil(epochs n / batch_size)`` steps, refused above ``limit`` (checked before anything is allocated)."""
    total = epochs * n / batch_size
    if not total <= limit:
        raise DeclarationError(f"{epochs:g} epochs of {n} examples in batches of {batch_size} "
                               f"would be more than {limit} steps")
    return max(1, math.ceil(total))


def noise_multiplier(name: str, value: Any) -> float:
    """``value`` as a float in ``[MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]``."""
    out = positive_finite(name, value, MAX_NOISE_MULTIPLIER)
    if out < MIN_NOISE_MULTIPLIER:
        raise DeclarationError(f"{name} must be at least {MIN_NOISE_MULTIPLIER:g}")
    return out
