"""Neighbouring relations on dataframes, and the sensitivity constant each one reads from a certificate.

ARCHITECTURE.md decision 4: the relation is explicit and picks the constant.

* ``symmetric_distance`` (add or remove records): ``d_in * max|f|``.
* ``change_one_distance`` (replace records): ``d_in * (max f - min f)``; when some
  field drops records with missing values a replacement can turn into a
  removal, so the constant is ``max(width, max|f|)``.
* :func:`feature_distance` ``(q)``: the same records, one of which has its fields
  moved by at most ``d_in = r`` in the l_q norm (a missing value never moves):
  ``min(K r, width)``, with ``K = sup ||grad f||_p`` over the box, ``1/p + 1/q = 1``.
  Clamping to the box is non-expansive in every l_q norm, and clamping the
  output to the certified range is 1-Lipschitz, so ``K`` still applies after both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.symbolic.function import RecordFunction, dual_norm, normalise_norm

_FEATURE_PREFIX = "FeatureDistance(l"


def feature_distance(q: Any = 2):
    """OpenDP metric: datasets that differ in one record whose fields moved by at most d_in (l_q)."""
    import opendp.prelude as dp

    q = normalise_norm(q)
    label = "inf" if math.isinf(q) else str(int(q))
    return dp.user_distance(f"{_FEATURE_PREFIX}{label})")


@dataclass(frozen=True)
class Relation:
    """A parsed input metric: its kind, and for the feature relation the l_q norm."""

    kind: str  # "symmetric", "change_one" or "feature"
    q: float | None = None

    @property
    def dp_accounting_name(self) -> str:
        """The name dp-accounting gives the relation (feature-level has none: it is ours)."""
        return {"symmetric": "ADD_OR_REMOVE_ONE", "change_one": "REPLACE_ONE", "feature": "FEATURE_LEVEL"}[self.kind]


def parse_relation(metric: Any) -> Relation:
    name = str(metric)
    if name.startswith("SymmetricDistance"):
        return Relation("symmetric")
    if name.startswith("ChangeOneDistance"):
        return Relation("change_one")
    if name.startswith(_FEATURE_PREFIX):
        label = name[len(_FEATURE_PREFIX):-1]
        return Relation("feature", math.inf if label == "inf" else float(label))
    raise DeclarationError(f"unsupported input metric {name}; use symmetric_distance, change_one_distance or feature_distance(q)")


def per_unit_sensitivity(function: RecordFunction, relation: Relation, *, lower: float, upper: float,
                         drops_records: bool, lipschitz: float | None = None) -> tuple[float, float]:
    """``(slope, cap)``: the stability of a sum is ``min(slope * d_in, cap) + relaxation``.

    ``lower, upper`` is the certified range of f; ``lipschitz`` a certified
    ``sup ||grad f||_p`` with p dual to the relation's q (computed if needed).
    """
    max_abs = max(abs(lower), abs(upper))
    width = upper - lower
    width = width if width == 0 else math.nextafter(width, math.inf)
    if relation.kind == "symmetric":
        return max_abs, math.inf
    if relation.kind == "change_one":
        return (max(width, max_abs) if drops_records else width), math.inf
    if lipschitz is None:
        lipschitz = function.lipschitz(norm=dual_norm(relation.q)).upper
    return lipschitz, width
