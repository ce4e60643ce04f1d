"""Named, bounded record fields declared before any data exists.

A :class:`Schema` is the only place where bounds live: every certificate is
computed over the box it declares, and every constructor that later touches
data clamps to it. Errors raised here depend on the declaration only.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy

from opendp_hybridad.errors import DeclarationError

#: Missing-value policies a field may declare. ``"raise"`` refuses a frame with a
#: missing value, ``"drop"`` removes the record, ``"impute"`` replaces the value by
#: the field's declared ``impute`` constant. All three are data-independent.
MISSING_POLICIES = ("raise", "drop", "impute")


@dataclass(frozen=True)
class Field:
    """One bounded input of a per-record function.

    ``lower`` and ``upper`` are finite and ``lower <= upper``; values outside are
    clamped by the data-facing constructors. ``missing`` is one of
    :data:`MISSING_POLICIES`; ``impute`` is the constant used by ``"impute"``
    and must lie inside the bounds so that imputed records stay in the box.
    """

    lower: float
    upper: float
    dtype: str = "float64"
    missing: str = "raise"
    impute: float | None = None
    name: str | None = field(default=None, compare=False)

    def checked(self, name: str) -> Field:
        """Validate the declaration and return a copy that knows its name."""
        for label, bound in (("lower", self.lower), ("upper", self.upper)):
            if bound is None:
                raise DeclarationError(f"field {name!r}: the {label} bound is missing; every field needs a finite box")
            try:
                value = float(bound)
            except (TypeError, ValueError) as exc:
                raise DeclarationError(f"field {name!r}: the {label} bound is not a number") from exc
            if not math.isfinite(value):
                raise DeclarationError(f"field {name!r}: the {label} bound is not finite ({value}); declare a finite box")
        lower, upper = float(self.lower), float(self.upper)
        if lower > upper:
            raise DeclarationError(f"field {name!r}: the box is empty (lower {lower} > upper {upper})")
        if self.missing not in MISSING_POLICIES:
            raise DeclarationError(f"field {name!r}: missing-value policy must be one of {MISSING_POLICIES}, not {self.missing!r}")
        if self.missing == "impute" and (self.impute is None or not (lower <= float(self.impute) <= upper)):
            raise DeclarationError(f"field {name!r}: policy 'impute' needs an impute value inside [{lower}, {upper}]")
        if self.dtype not in ("float64", "float32", "int64", "int32", "bool"):
            raise DeclarationError(f"field {name!r}: unsupported dtype {self.dtype!r}")
        return Field(lower, upper, self.dtype, self.missing,
                     None if self.impute is None else float(self.impute), name)

    @property
    def width(self) -> float:
        return self.upper - self.lower


def _symbol_for(name: str, fld: Field) -> sympy.Symbol:
    # Sign assumptions let sympy simplify closed forms (sqrt(h**2) -> h) and are
    # true everywhere on the declared box, which is the only place we evaluate.
    if fld.lower > 0:
        return sympy.Symbol(name, positive=True)
    if fld.upper < 0:
        return sympy.Symbol(name, negative=True)
    if fld.lower >= 0:
        return sympy.Symbol(name, nonnegative=True)
    if fld.upper <= 0:
        return sympy.Symbol(name, nonpositive=True)
    return sympy.Symbol(name, real=True)


class Schema:
    """An ordered set of named :class:`Field` s: the declared box of a record.

    >>> schema = Schema(a=Field(18, 90), w=Field(40, 200), h=Field(1.4, 2.2))
    >>> a, w, h = schema.symbols()
    """

    def __init__(self, fields: Mapping[str, Field | tuple[float, float]] | None = None, **kwargs: Field | tuple[float, float]):
        merged: dict[str, Any] = dict(fields or {})
        merged.update(kwargs)
        if not merged:
            raise DeclarationError("a schema needs at least one field")
        self.fields: dict[str, Field] = {}
        for name, fld in merged.items():
            if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
                raise DeclarationError(f"field name {name!r} is not a valid identifier")
            # field names become variable names in generated kernel source: no keywords, no dunders
            if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name.startswith("__"):
                raise DeclarationError(f"field name {name!r} is reserved; choose another name")
            if isinstance(fld, tuple):
                fld = Field(*fld)
            if not isinstance(fld, Field):
                raise DeclarationError(f"field {name!r}: expected a Field or a (lower, upper) pair")
            self.fields[name] = fld.checked(name)
        self._symbols = {name: _symbol_for(name, fld) for name, fld in self.fields.items()}

    # -- access ---------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def __getitem__(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise DeclarationError(f"no field named {name!r} in the schema (fields: {', '.join(self.fields)})") from None

    def symbol(self, name: str) -> sympy.Symbol:
        self[name]
        return self._symbols[name]

    def symbols(self, names: str | Iterable[str] | None = None) -> tuple[sympy.Symbol, ...]:
        """Symbols of the named fields (all of them, in declaration order, by default)."""
        if names is None:
            wanted = self.names
        elif isinstance(names, str):
            wanted = names.replace(",", " ").split()
        else:
            wanted = list(names)
        return tuple(self.symbol(n) for n in wanted)

    def __getattr__(self, name: str) -> sympy.Symbol:
        symbols = self.__dict__.get("_symbols", {})
        if name in symbols:
            return symbols[name]
        raise AttributeError(name)

    @property
    def symbol_map(self) -> dict[str, sympy.Symbol]:
        return dict(self._symbols)

    def bounds(self, names: Iterable[str] | None = None) -> list[tuple[float, float]]:
        return [(self.fields[n].lower, self.fields[n].upper) for n in (names or self.names)]

    # -- derived schemas ------------------------------------------------------
    def subset(self, names: Iterable[str]) -> Schema:
        return Schema({n: self[n] for n in names})

    def without(self, names: Iterable[str]) -> Schema:
        drop = set(names)
        return Schema({n: f for n, f in self.fields.items() if n not in drop})

    def function(self, expression: Any, name: str | None = None):
        """Bind a sympy expression (or a plain Python function, traced) to this schema."""
        from opendp_hybridad.symbolic.function import RecordFunction

        if callable(expression) and not isinstance(expression, sympy.Basic):
            return RecordFunction.trace(expression, self, name=name)
        return RecordFunction(expression, self, name=name)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}=[{f.lower:g}, {f.upper:g}]" for n, f in self.fields.items())
        return f"Schema({inner})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash(tuple(self.fields.items()))
