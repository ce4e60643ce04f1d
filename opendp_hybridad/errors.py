"""Errors raised by opendp-hybridad. Messages name fields and sub-expressions, never data values."""

from __future__ import annotations


class HybridADError(Exception):
    """Base class of every error this package raises on purpose."""


class DeclarationError(HybridADError, ValueError):
    """A schema or expression is malformed: raised at declaration time, before any data is touched."""


class UnsupportedExpressionError(DeclarationError):
    """The expression uses an operation the certified analysis cannot enclose."""


class UnboundedError(HybridADError, ArithmeticError):
    """No finite bound exists over the box (or none could be proven).

    ``subexpression`` is the offending sub-expression as text and ``fields`` the
    schema fields it depends on.
    """

    def __init__(self, reason: str, subexpression: str, fields: list[str]):
        self.reason = reason
        self.subexpression = subexpression
        self.fields = fields
        names = ", ".join(fields) if fields else "no field"
        super().__init__(f"no finite bound over the declared box: {reason} in `{subexpression}` (fields: {names})")


class NotLipschitzError(UnboundedError):
    """The function may be discontinuous on the box, so no Lipschitz constant exists."""


class SoundnessError(HybridADError, AssertionError):
    """An internal check found a point that beats a certified bound; the certificate is refused."""
