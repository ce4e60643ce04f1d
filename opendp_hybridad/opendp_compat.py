"""The one place this package touches OpenDP's partial-constructor machinery.

OpenDP chains ``(domain, metric) >> then_x(...)`` through a private class
(``opendp.mod._PartialConstructor``), and its own extras derive every ``then_*``
from its ``make_*`` with a small helper (``opendp.extras._utilities.to_then``).
Both are private, so if OpenDP renames them only this module changes.
:func:`to_then` is that helper, extended to constructors whose metric is not the
second positional parameter (``make_private_sum(domain, function, metric=None, ...)``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

#: parameter names a constructor may give its metric, in order of preference
_METRIC_NAMES = ("input_metric", "metric")


def partial_constructor(build: Callable[[Any, Any], Any]) -> Any:
    """``build(input_domain, input_metric)`` as OpenDP's chainable partial constructor."""
    from opendp.mod import _PartialConstructor

    return _PartialConstructor(build)


def to_then(make: Callable[..., Any]) -> Callable[..., Any]:
    """The ``then_*`` form of a ``make_*`` constructor: ``then_x(*args, **kw)`` chains as
    ``(domain, metric) >> then_x(*args, **kw)``, which builds ``make_x(domain, metric, *args, **kw)``.

    The constructor's first parameter is the input domain. Its metric is the second
    positional parameter, or (for ``make_private_*``, whose metric is optional and
    comes after the function) the parameter named ``input_metric`` or ``metric``, passed
    by keyword. The ``then_*`` keeps the constructor's docstring and its signature
    without those two parameters.
    """
    signature = inspect.signature(make)
    parameters = list(signature.parameters.values())
    if len(parameters) < 2:
        raise TypeError(f"{make.__name__} must take an input domain and an input metric")
    if parameters[1].name in _METRIC_NAMES:
        metric_keyword = None  # the metric is the second positional parameter
        rest = parameters[2:]
    else:
        names = [p.name for p in parameters]
        metric_keyword = next((n for n in _METRIC_NAMES if n in names), None)
        if metric_keyword is None:
            raise TypeError(f"{make.__name__} has no input_metric parameter")
        rest = [p for p in parameters[1:] if p.name != metric_keyword]

    @functools.wraps(make)
    def then(*args: Any, **kwargs: Any) -> Any:
        if metric_keyword is None:
            return partial_constructor(lambda input_domain, input_metric: make(input_domain, input_metric, *args, **kwargs))
        return partial_constructor(
            lambda input_domain, input_metric: make(input_domain, *args, **{metric_keyword: input_metric}, **kwargs))

    name = make.__name__.replace("make_", "then_", 1)
    then.__name__ = then.__qualname__ = name
    then.__doc__ = (f"Partial form of :func:`{make.__name__}`: fixes its input domain and metric when chained "
                    f"after ``(domain, metric) >>`` or a transformation.\n\n{inspect.getdoc(make) or ''}")
    then.__signature__ = signature.replace(parameters=rest)  # type: ignore[attr-defined]
    return then


__all__ = ["partial_constructor", "to_then"]
