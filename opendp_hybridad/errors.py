"""Errors raised by opendp-hybridad. Messages name fields, columns and sub-expressions, never data values.

One hierarchy, in two families, so a caller can tell *when* something went wrong:

* :class:`DeclarationError` (a ``ValueError``): a parameter, schema, expression,
  function or accounting request is wrong. Raised while a constructor runs, before
  any data is touched. :class:`UnsupportedExpressionError` and :class:`AccountingError`
  are declaration errors.
* :class:`DataError` (a ``ValueError``): the data given for a release is not a member
  of the domain the measurement was declared for (:class:`SchemaMismatchError` for
  frames). Raised before any private computation, by :func:`opendp_hybridad.release`
  and by the library's own classes (``IndividualFilter``, ``DPSGD.fit``). Called
  directly, an OpenDP measurement reports the same refusal inside an ``OpenDPException``,
  since OpenDP runs the function without checking membership.

Certification failures (:class:`UnboundedError`, :class:`NotLipschitzError`) are
``ArithmeticError``\\ s raised at declaration time; :class:`SoundnessError` is an
internal check that refused a certificate.
"""

from __future__ import annotations


class HybridADError(Exception):
    """Base class of every error this package raises on purpose."""


class DeclarationError(HybridADError, ValueError):
    """A schema, expression, function or parameter is malformed: raised at declaration time, before any data is touched."""


class UnsupportedExpressionError(DeclarationError):
    """The expression uses an operation the certified analysis cannot enclose."""


class AccountingError(DeclarationError):
    """Measurements that cannot be accounted together (mixed relations, unknown mechanisms, group privacy,
    a measurement that carries no accounting), or accounting parameters out of range."""


class DataError(HybridADError, ValueError):
    """The data given for a release is not a member of the measurement's input domain.

    Raised before any private computation; the message names the column or the
    constraint, never a value.
    """


class SchemaMismatchError(DataError):
    """A dataframe is not a member of the declared frame domain. Names the column, never a value."""


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
