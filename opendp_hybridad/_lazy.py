"""Lazy package attributes (PEP 562): a package's public names are imported on first use.

``import opendp_hybridad`` and the ``analyse`` command then load only what they use:
OpenDP, dp-accounting, numba, pandas and scipy (each 0.1-1.9 s to import) come in with the
first measurement, accountant, kernel or frame that needs them. Every public name stays
importable exactly as before (``from opendp_hybridad.frame import make_private_sum``,
``hd.Schema``, ``from opendp_hybridad import *``); a package lists its names once in
``exports`` and again under ``if TYPE_CHECKING:`` for static tools.

A name that is also a submodule's name (``opendp_hybridad.release`` is a module and a
function) must be bound eagerly: importing the submodule later would set the package
attribute to the module, and ``__getattr__`` is only asked for missing attributes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str,
    exports: Mapping[str, Iterable[str]],
    submodules: Iterable[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``'s ``__init__``.

    ``exports`` maps a module (absolute, or relative to ``package`` with a leading dot)
    to the names the package takes from it; ``submodules`` are the submodules that are
    attributes of the package as soon as it is imported (as they were when the
    package imported them eagerly). A resolved name is stored in the package's
    namespace, so ``__getattr__`` runs once per name.
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported from two modules")
            where[name] = module
    children = frozenset(submodules)

    def __getattr__(name: str) -> Any:  # noqa: N807 (the PEP 562 hook's name)
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module, package), name)
        elif name in children:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(where) | children)

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
