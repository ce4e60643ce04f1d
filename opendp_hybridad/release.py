"""Release with this library's errors: check membership first, then run the measurement.

OpenDP runs a measurement's function without checking that the data is in its input
domain, so a measurement called directly (``measurement(data)``) refuses a non-member
from inside OpenDP: the user gets an ``OpenDPException`` whose message carries the
library's error and a Python traceback. :func:`release` checks first and raises this
library's :class:`~opendp_hybridad.errors.DataError` (for frames,
:class:`~opendp_hybridad.errors.SchemaMismatchError` naming the column), before any
private computation; only a member reaches the measurement.

It works for every measurement, transformation or odometer whose input domain is one
of this library's (``make_frame_domain``, ``make_dp_sgd``), alone or at the start of
a chain or a composition (OpenDP keeps the input domain, descriptor included), and for
any other OpenDP object through its domain's own ``member``.
"""

from __future__ import annotations

from typing import Any

from opendp_hybridad.errors import DataError


def check_member(measurement: Any, data: Any) -> None:
    """Raise :class:`DataError` unless ``data`` is in ``measurement``'s input domain. Never touches a value otherwise.

    A domain whose descriptor has a ``check`` (this library's frame and DP-SGD domains)
    raises its own error naming the column or the constraint; any other domain is asked
    through OpenDP's ``member``.
    """
    domain = measurement.input_domain
    check = getattr(getattr(domain, "descriptor", None), "check", None)
    if callable(check):
        check(data)
        return
    try:
        member = bool(domain.member(data))
    except Exception:  # a domain that cannot judge the data does not hold it
        member = False
    if not member:
        raise DataError(f"the data is not a member of the input domain {domain}")


def release(measurement: Any, data: Any) -> Any:
    """``measurement(data)``, after :func:`check_member`: a non-member gets this library's error, never OpenDP's wrapper."""
    check_member(measurement, data)
    return measurement(data)


__all__ = ["check_member", "release"]
