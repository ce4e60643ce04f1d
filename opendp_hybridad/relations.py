"""The one vocabulary of neighbouring relations, and the sensitivity rule each one reads.

A neighbouring relation says which datasets count as neighbours. Every component
that bounds a sensitivity (frame sums, the individual filter, DP-SGD, accounting)
takes a :class:`Relation` object from here; nothing compares metric names or
strings elsewhere. A bounded quantity exposes ``.sensitivity(relation)`` (as JAX
Privacy's ``BoundedSensitivityCallable`` does), so no component can ignore its
relation.

* :data:`ADD_REMOVE` (OpenDP ``symmetric_distance``, dp-accounting
  ``ADD_OR_REMOVE_ONE``): one record added or removed per unit of ``d_in``.
* :data:`REPLACE_ONE` (OpenDP ``change_one_distance``, dp-accounting
  ``REPLACE_ONE``): one record replaced per unit of ``d_in``.
* :class:`FeatureLevel` ``(q)`` (ours; dp-accounting has none): the same records,
  one of which has its fields moved by at most ``d_in = r`` in the l_q norm.

The per-record constants (:meth:`PerRecordBound.sensitivity`):

* add/remove: ``max(|L|, |U|)`` per record;
* replace: ``U - L`` (``max(U - L, |L|, |U|)`` when a field drops records with a
  missing value, since a replacement can then become a removal);
* feature-level: ``min(K r, U - L)`` with ``K = sup ||grad f||_p`` over the box,
  ``1/p + 1/q = 1``. Clamping to the box is non-expansive in every l_q norm and
  clamping the output to the certified range is 1-Lipschitz, so ``K`` still
  applies after both.

All constants are rounded up (:mod:`opendp_hybridad.analysis.rounding`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opendp_hybridad.analysis.rounding import sub_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.symbolic.function import dual_norm, normalise_norm

_FEATURE_PREFIX = "FeatureDistance(l"


class Relation(ABC):
    """A neighbouring relation on datasets of records."""

    #: a short stable name, used in ledgers, plans and error messages
    name: str

    @abstractmethod
    def metric(self) -> Any:
        """The OpenDP metric of this relation."""

    @property
    def dp_accounting(self) -> Any:
        """dp-accounting's ``NeighboringRelation``, or None where dp-accounting has none."""
        return None

    @property
    def changes_size(self) -> bool:
        """Whether neighbours can differ in their number of records."""
        return False

    @abstractmethod
    def per_record(self, bound: PerRecordBound) -> tuple[float, float]:
        """``(slope, cap)``: one unit of ``d_in`` moves a sum of f by at most ``min(slope d_in, cap)``."""

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class AddRemove(Relation):
    """Add or remove one record (OpenDP ``symmetric_distance``)."""

    name: str = "add_remove"

    def metric(self) -> Any:
        import opendp.prelude as dp

        return dp.symmetric_distance()

    @property
    def dp_accounting(self) -> Any:
        import dp_accounting

        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    @property
    def changes_size(self) -> bool:
        return True

    def per_record(self, bound: PerRecordBound) -> tuple[float, float]:
        return bound.max_abs, math.inf


@dataclass(frozen=True)
class ReplaceOne(Relation):
    """Replace one record (OpenDP ``change_one_distance``)."""

    name: str = "replace_one"

    def metric(self) -> Any:
        import opendp.prelude as dp

        return dp.change_one_distance()

    @property
    def dp_accounting(self) -> Any:
        import dp_accounting

        return dp_accounting.NeighboringRelation.REPLACE_ONE

    def per_record(self, bound: PerRecordBound) -> tuple[float, float]:
        return (max(bound.width, bound.max_abs) if bound.drops_records else bound.width), math.inf


@dataclass(frozen=True)
class FeatureLevel(Relation):
    """The same records; one moves by at most ``d_in = r`` in the l_q norm (a missing value never moves)."""

    q: float = 2.0
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", normalise_norm(self.q))
        label = "inf" if math.isinf(self.q) else str(int(self.q))
        object.__setattr__(self, "name", f"feature_l{label}")

    @property
    def lipschitz_norm(self) -> float:
        """The gradient norm p dual to q: ``K = sup ||grad f||_p``."""
        return dual_norm(self.q)

    def metric(self) -> Any:
        import opendp.prelude as dp

        label = "inf" if math.isinf(self.q) else str(int(self.q))
        return dp.user_distance(f"{_FEATURE_PREFIX}{label})")

    def per_record(self, bound: PerRecordBound) -> tuple[float, float]:
        return bound.lipschitz_constant(self.lipschitz_norm), bound.width


ADD_REMOVE = AddRemove()
REPLACE_ONE = ReplaceOne()


def feature_distance(q: Any = 2) -> Any:
    """OpenDP metric: datasets that differ in one record whose fields moved by at most d_in (l_q)."""
    return FeatureLevel(q).metric()


def relation_of(value: Any) -> Relation:
    """The :class:`Relation` of an OpenDP metric, a relation name, or a relation (returned as is)."""
    if isinstance(value, Relation):
        return value
    name = str(value)
    if name.startswith("SymmetricDistance") or name in ("add_remove", "ADD_OR_REMOVE_ONE"):
        return ADD_REMOVE
    if name.startswith("ChangeOneDistance") or name in ("replace_one", "REPLACE_ONE"):
        return REPLACE_ONE
    if name.startswith(_FEATURE_PREFIX):
        label = name[len(_FEATURE_PREFIX):-1]
        return FeatureLevel(math.inf if label == "inf" else float(label))
    if name.startswith("feature_l"):
        label = name[len("feature_l"):]
        return FeatureLevel(math.inf if label == "inf" else float(label))
    raise DeclarationError(
        f"unsupported neighbouring relation {name}; use symmetric_distance, change_one_distance or feature_distance(q)"
    )


@dataclass(frozen=True)
class PerRecordBound:
    """What is certified about a per-record value f(x) over the declared box.

    ``lower, upper``: the certified range (values are clamped to it);
    ``lipschitz``: given a gradient norm p, a certified ``sup ||grad f||_p`` (called
    only under the feature-level relation); ``drops_records``: whether a field's
    missing-value policy drops records.
    """

    lower: float
    upper: float
    drops_records: bool = False
    lipschitz: Callable[[float], float] | None = None

    @property
    def max_abs(self) -> float:
        return max(abs(self.lower), abs(self.upper))

    @property
    def width(self) -> float:
        return sub_up(self.upper, self.lower)

    def lipschitz_constant(self, norm: float) -> float:
        if self.lipschitz is None:
            raise DeclarationError("the feature-level relation needs a certified Lipschitz bound of the function")
        return self.lipschitz(norm)

    def sensitivity(self, relation: Any) -> tuple[float, float]:
        """``(slope, cap)`` under ``relation``: a sum moves by at most ``min(slope d_in, cap)`` before float error."""
        return relation_of(relation).per_record(self)
