"""One check for totality between neighbours (issue 10 class 4, issue 11).

A measurement's function must be total on its declared domain: an exception that
one dataset raises and its neighbour does not is a privacy leak. OpenDP checks
nothing when it invokes a user function, so every constructor is held to this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def outcome(release: Callable[[Any], Any], data: Any) -> str:
    """``"released"`` or the exception's type name (what an observer of the call learns)."""
    try:
        release(data)
    except Exception as exc:  # the kind of failure is what an observer sees
        return type(exc).__name__
    return "released"


def assert_total_on_neighbours(release: Callable[[Any], Any], pairs: Iterable[tuple[Any, Any]],
                               is_member: Callable[[Any], bool] | None = None) -> int:
    """For each neighbouring pair (both domain members), both release or neither does, alike.

    Returns how many pairs were checked, so a caller can assert the check was not vacuous.
    """
    checked = 0
    for left, right in pairs:
        if is_member is not None and not (is_member(left) and is_member(right)):
            continue
        a, b = outcome(release, left), outcome(release, right)
        assert a == b, f"neighbours behave differently: {a} vs {b}"
        checked += 1
    return checked
