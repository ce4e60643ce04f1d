"""Layer kinds by name: a new layer type is one file under ``nn/parts/`` plus ``@register_layer("kind")``.

The registry maps a kind (a short stable name such as ``"dense"``) to the
:class:`~opendp_hybridad.nn.protocol.Layer` subclass that implements it. It is also
the hook a converter from other frameworks' modules uses: it looks a kind up by name
and builds the part, without importing every part module itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.protocol import Layer

_KINDS: dict[str, type[Layer]] = {}



def register_layer(kind: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: register ``cls`` under ``kind`` and set ``cls.kind``.

    A kind is registered once; registering another class under a taken kind raises
    ``DeclarationError`` (re-registering the same class, as a module reload does, is allowed).
    """
    if not (isinstance(kind, str) and kind and kind.strip() == kind):
        raise DeclarationError("a layer kind is a non-empty name without surrounding spaces")

    def decorate(cls: type[Layer]) -> type[Layer]:
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise DeclarationError(f"layer kind {kind}: a registered layer subclasses nn.protocol.Layer")
        known = _KINDS.get(kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise DeclarationError(f"layer kind {kind} is already registered")
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return decorate


def _load_built_ins() -> None:
    """Import every module of ``opendp_hybridad.nn.parts`` (each registers its kinds), so a lookup never misses a built-in kind."""
    import opendp_hybridad.nn.parts as parts

    for info in pkgutil.iter_modules(parts.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{parts.__name__}.{info.name}")


def lookup(kind: str) -> type[Layer]:
    """The layer class registered under ``kind``; ``DeclarationError`` if none is."""
    if kind not in _KINDS:
        _load_built_ins()
    try:
        return _KINDS[kind]
    except KeyError:
        raise DeclarationError(f"no layer kind {kind!r} is registered") from None


def layer_kind(obj: object) -> str:
    """The registered kind of a layer instance or class; ``DeclarationError`` for an unregistered one."""
    cls = obj if isinstance(obj, type) else type(obj)
    kind = getattr(cls, "kind", "")
    if not kind or _KINDS.get(kind) is not cls:
        raise DeclarationError(f"{cls.__name__} is not a registered layer kind")
    return kind


def registered_kinds() -> dict[str, type[Layer]]:
    """A copy of the registry, every built-in part loaded."""
    _load_built_ins()
    return dict(_KINDS)
