"""Certificate objects: the one place every stability and privacy map reads a constant from.

A certificate holds a proven bound together with the evidence of how tight it
is (a witness point inside the box and the value there), the box, the norm and
the method. Bounds are proven by outward-rounded interval branch and bound;
witnesses come from sampling and scipy's local optimisation and are never used
as bounds.

A certificate also says *what* it certifies: ``subject`` is the fingerprint of
the function (SHA-256 of its canonical expression and of the schema's field
names, bounds and missing-value policies, :attr:`RecordFunction.fingerprint`),
stamped by the ``RecordFunction`` method that produced it, and ``kind`` names
the quantity (``"gradient_norm"`` or ``"partial:<field>"``). Every consumer calls
:meth:`RangeCertificate.certifies` / :meth:`BoundCertificate.certifies` before
reading a constant, so a certificate of ``x`` is never read as one of ``100 x``.
A certificate whose subject is unknown (``None``, e.g. built by hand) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opendp_hybridad.analysis.rounding import sub_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.symbolic.display import short_number

if TYPE_CHECKING:  # pragma: no cover
    from opendp_hybridad.symbolic.function import RecordFunction

METHOD = "interval branch and bound (natural and mean-value forms, outward rounding)"


@dataclass(frozen=True)
class Witness:
    """A point inside the box and the (float-evaluated) quantity there."""

    point: dict[str, float]
    value: float

    def __repr__(self) -> str:
        return f"Witness({_witness_value(self.value)} at {_point(self.point)})"


@dataclass(frozen=True)
class BoundCertificate:
    """``quantity <= upper`` everywhere on ``box`` (proven); ``witness`` shows how close it gets."""

    quantity: str
    upper: float
    witness: Witness
    box: dict[str, tuple[float, float]]
    norm: float | None = None
    converged: bool = True
    boxes: int = 0
    elapsed: float = 0.0
    tolerance: float = 0.0
    method: str = METHOD
    #: fingerprint of the certified function (None: unknown, refused by every consumer)
    subject: str | None = None
    #: the certified quantity: "gradient_norm" (with ``norm``) or "partial:<field>"
    kind: str | None = None

    def __repr__(self) -> str:
        # the bound exactly (a rounded-down display of an upper bound would understate it);
        # the witness, a lower estimate of the supremum, shortened
        return (f"BoundCertificate({self.quantity} <= {short_number(self.upper)}, witness {_witness_value(self.witness.value)} "
                f"at {_point(self.witness.point)}, ratio {_ratio(self.ratio)}{_unconverged(self.converged)})")

    def certifies(self, function: RecordFunction, kind: str, norm: float | None = None) -> BoundCertificate:
        """Return ``self`` if it bounds ``kind`` (in ``norm``) of ``function`` over its declared box; else raise.

        Raises :class:`DeclarationError` naming the mismatch (function, box, quantity or norm).
        """
        _check_subject(self.subject, self.box, function, f"{kind} bound")
        if self.kind != kind:
            raise DeclarationError(f"the certificate bounds {self.kind or 'an unknown quantity'}, not {kind}")
        if norm is not None and self.norm != norm:
            raise DeclarationError(f"the certificate is for the {_json_norm(self.norm)}-norm, not the {_json_norm(norm)}-norm")
        return self

    @property
    def ratio(self) -> float:
        """``upper / witness``: 1 means the bound is attained; the true supremum lies between."""
        if self.witness.value > 0:
            return self.upper / self.witness.value
        return 1.0 if self.upper <= 0 else math.inf

    @property
    def gap(self) -> float:
        return self.upper - self.witness.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "upper": self.upper,
            "witness_value": self.witness.value,
            "witness_point": dict(self.witness.point),
            "ratio": self.ratio,
            "gap": self.gap,
            "norm": _json_norm(self.norm),
            "converged": self.converged,
            "boxes": self.boxes,
            "elapsed_s": self.elapsed,
            "method": self.method,
        }


@dataclass(frozen=True)
class RangeCertificate:
    """``lower <= f(x) <= upper`` for every x in ``box`` (proven), with the extreme points found."""

    lower: float
    upper: float
    argmin: Witness
    argmax: Witness
    box: dict[str, tuple[float, float]]
    converged: bool = True
    elapsed: float = 0.0
    method: str = METHOD
    #: fingerprint of the certified function (None: unknown, refused by every consumer)
    subject: str | None = None

    def __repr__(self) -> str:
        return (f"RangeCertificate([{short_number(self.lower)}, {short_number(self.upper)}], "
                f"argmin {_point(self.argmin.point)}, argmax {_point(self.argmax.point)}{_unconverged(self.converged)})")

    def certifies(self, function: RecordFunction) -> RangeCertificate:
        """Return ``self`` if it encloses the range of ``function`` over its declared box; else raise.

        Raises :class:`DeclarationError` naming the mismatch (function or box).
        """
        _check_subject(self.subject, self.box, function, "range")
        return self

    @property
    def width(self) -> float:
        """Certified upper bound on ``max f - min f``, rounded up."""
        return sub_up(self.upper, self.lower)

    @property
    def max_abs(self) -> float:
        """Certified upper bound on ``max |f|``."""
        return max(abs(self.lower), abs(self.upper))

    def to_dict(self) -> dict[str, Any]:
        return {
            "range": [self.lower, self.upper],
            "argmin": {"point": dict(self.argmin.point), "value": self.argmin.value},
            "argmax": {"point": dict(self.argmax.point), "value": self.argmax.value},
            "converged": self.converged,
            "elapsed_s": self.elapsed,
        }


@dataclass(frozen=True)
class Analysis:
    """Everything ``opendp-hybridad analyse`` reports for one function."""

    function: str
    range: RangeCertificate
    lipschitz: BoundCertificate
    partials: dict[str, BoundCertificate] = field(default_factory=dict)

    def __repr__(self) -> str:
        partials = ", ".join(f"{n} <= {short_number(c.upper)}" for n, c in self.partials.items())
        return (f"Analysis({self.function}: range [{short_number(self.range.lower)}, {short_number(self.range.upper)}], "
                f"{self.lipschitz.quantity} <= {short_number(self.lipschitz.upper)}"
                + (f", partials {partials}" if partials else "") + ")")

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "range": [self.range.lower, self.range.upper],
            "range_witnesses": self.range.to_dict(),
            "lipschitz": self.lipschitz.to_dict(),
            "partials": {n: c.upper for n, c in self.partials.items()},
            "partials_detail": {n: c.to_dict() for n, c in self.partials.items()},
        }


def _check_subject(subject: str | None, box: dict[str, tuple[float, float]], function: RecordFunction, what: str) -> None:
    if subject is None:
        raise DeclarationError(f"the {what} certificate does not say which function it certifies; "
                               f"use the one {function.name}.range() / .lipschitz() returns")
    if subject != function.fingerprint:
        raise DeclarationError(f"the {what} certificate was issued for another function or box than {function.name!r}")
    declared = {n: (f.lower, f.upper) for n, f in function.schema.fields.items()}
    if dict(box) != declared:
        raise DeclarationError(f"the {what} certificate's box differs from the declared box of {function.name!r}")


def _point(point: dict[str, float]) -> str:
    """A witness point in short form: ``(a=90, w=200, h=1.4)``."""
    return "(" + ", ".join(f"{n}={v:.6g}" for n, v in point.items()) + ")"


def _witness_value(value: float) -> str:
    return f"{value:.10g}"


def _ratio(ratio: float) -> str:
    return f"{ratio:.7f}" if math.isfinite(ratio) else str(ratio)


def _unconverged(converged: bool) -> str:
    return "" if converged else ", not converged (sound, looser)"


def _json_norm(p: float | None) -> Any:
    if p is None:
        return None
    return "inf" if math.isinf(p) else int(p)
