"""A pandas dataframe domain built from a :class:`Schema`, and the data-independent
preparation every data-facing constructor applies before a kernel runs.

OpenDP does not check domain membership when a transformation runs
(docs/architecture.md), so constructors call :func:`check_frame` on every
input, before any value is computed. Its errors name the column and the kind of
mismatch, never a value.

The domain is a :class:`FrameDomain`: the schema, a ``size_limit`` (the most
rows, i.e. records, a member frame may have; every float-sum relaxation is
computed for it) and optionally an exact ``size`` (the number of records *kept*
after the missing-value policies, for releases with a public record count).
Every limit a constructor relies on is part of the domain, so a frame that
breaks one is not a member and is refused before any private computation: no
member ever makes a constructor fail.

Preparation is independent of the data: values outside the declared box are
clamped to it (inf included), and a missing value (NaN, None) follows its
field's policy: ``"impute"`` replaces it by the declared constant, ``"drop"``
removes the record, ``"raise"`` means the domain has no missing values, so a
frame that has one is not a member and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DeclarationError, SchemaMismatchError
from opendp_hybridad.symbolic.schema import Schema

#: numpy dtype kinds a column may have: pandas stores integer columns with missing
#: values as floats, so every numeric field accepts every real numeric kind
_NUMERIC_KINDS = "fiub"
#: what pandas may infer for an object column of numbers and missing values
_NUMERIC_INFERRED = ("floating", "integer", "mixed-integer-float", "decimal", "boolean", "empty")

#: default bound on the number of records a frame may have (a domain constraint):
#: beyond any in-memory pandas frame, and its float-sum relaxation is ~6e-5 max|f|
DEFAULT_SIZE_LIMIT = 2**32


@dataclass(frozen=True)
class PreparedFrame:
    """Clamped float64 columns in schema order, and which input rows they came from."""

    columns: dict[str, np.ndarray]
    kept: np.ndarray  # boolean mask over the input rows

    @property
    def rows(self) -> int:
        return int(self.kept.sum())

    def matrix(self) -> np.ndarray:
        return np.column_stack(list(self.columns.values())) if self.columns else np.empty((self.rows, 0))


@dataclass(frozen=True)
class FrameDomain:
    """What a member frame must satisfy: the schema's columns, at most ``size_limit`` rows,
    and (when ``size`` is set) exactly ``size`` records kept by the missing-value policies.

    The descriptor of the OpenDP ``UserDomain`` that :func:`make_frame_domain` returns.
    """

    schema: Schema
    size_limit: int = DEFAULT_SIZE_LIMIT
    size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Schema):
            raise DeclarationError("a frame domain needs a Schema")
        if not _is_count(self.size_limit) or self.size_limit < 1:
            raise DeclarationError("size_limit must be a positive whole number of records")
        object.__setattr__(self, "size_limit", int(self.size_limit))
        if self.size is not None:
            if not _is_count(self.size) or self.size < 0:
                raise DeclarationError("size must be a non-negative whole number of records")
            if self.size > self.size_limit:
                raise DeclarationError("size is larger than size_limit: no frame would be a member")
            object.__setattr__(self, "size", int(self.size))

    @property
    def drops_records(self) -> bool:
        """Whether a replacement can turn into a removal: some field drops records and the kept count is not fixed."""
        return self.size is None and any(f.missing == "drop" for f in self.schema.fields.values())

    @property
    def max_terms(self) -> int:
        """The most records a sum over a member adds up (kept records)."""
        return self.size if self.size is not None else self.size_limit

    @property
    def identifier(self) -> str:
        """A string that identifies the domain uniquely (OpenDP chains user domains by identifier)."""
        parts = [f"{n}:{f.dtype}[{f.lower!r},{f.upper!r}]missing={f.missing}"
                 + (f"({f.impute!r})" if f.missing == "impute" else "") for n, f in self.schema.fields.items()]
        parts.append(f"size_limit={self.size_limit}")
        if self.size is not None:
            parts.append(f"kept_size={self.size}")
        return "FrameDomain(" + ", ".join(parts) + ")"

    def check(self, frame: Any) -> None:
        """:func:`check_frame` against this domain."""
        check_frame(frame, self)

    def member(self, frame: Any) -> bool:
        """OpenDP's membership callback: never raises, a frame it cannot judge is not a member."""
        try:
            check_frame(frame, self)
        except Exception:  # anything check_frame cannot judge is outside the domain
            return False
        return True


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def as_frame_domain(domain: Any) -> FrameDomain:
    """A :class:`FrameDomain` from itself, a Schema (default size limit) or an OpenDP domain from :func:`make_frame_domain`."""
    if isinstance(domain, FrameDomain):
        return domain
    if isinstance(domain, Schema):
        return FrameDomain(domain)
    descriptor = getattr(domain, "descriptor", None)
    if isinstance(descriptor, FrameDomain):
        return descriptor
    raise DeclarationError("the input domain must be a frame domain from make_frame_domain(schema)")


def frame_domain_identifier(schema: Schema, size_limit: int = DEFAULT_SIZE_LIMIT, size: int | None = None) -> str:
    """A string that identifies the domain uniquely (OpenDP chains user domains by identifier)."""
    return FrameDomain(schema, size_limit, size).identifier


def check_frame(frame: Any, domain: Schema | FrameDomain) -> None:
    """Raise :class:`SchemaMismatchError` unless ``frame`` belongs to the frame domain.

    Membership: a pandas DataFrame with every declared column, each of a numeric
    dtype compatible with the field's, no missing value in a column whose policy
    is ``"raise"``, at most ``size_limit`` rows and, when the domain fixes a
    ``size``, exactly that many records kept by the missing-value policies.
    Extra columns are allowed and ignored. ``domain`` may be a bare Schema (the
    default size limit, no fixed size). Nothing is computed from the values
    beyond these checks; errors name the column, never a value.
    """
    spec = as_frame_domain(domain)
    schema = spec.schema
    if not isinstance(frame, pd.DataFrame):
        raise SchemaMismatchError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    for name, field in schema.fields.items():
        if name not in frame.columns:
            raise SchemaMismatchError(f"column {name!r} is missing from the dataframe")
        column = frame[name]
        if isinstance(column, pd.DataFrame):
            raise SchemaMismatchError(f"column {name!r} appears more than once")
        kind = column.dtype.kind if isinstance(column.dtype, np.dtype) else _extension_kind(column)
        if kind == "O" and _numeric_objects(column):
            kind = "f"  # e.g. an empty frame, or a concat of nullable and plain floats
        if kind not in _NUMERIC_KINDS:
            raise SchemaMismatchError(f"column {name!r} has dtype {column.dtype}, which is not compatible with {field.dtype}")
        # missing means NaN after conversion to float64, exactly as prepare_frame sees it
        if field.missing == "raise" and np.isnan(_float_column(column)).any():
            raise SchemaMismatchError(f"column {name!r} has missing values and its policy is 'raise'")
    if len(frame) > spec.size_limit:
        raise SchemaMismatchError(f"the frame has more records than the domain's size limit {spec.size_limit}")
    if spec.size is not None:
        kept = np.ones(len(frame), dtype=bool)
        for name, field in schema.fields.items():
            if field.missing == "drop":
                kept &= ~np.isnan(_float_column(frame[name]))
        if int(kept.sum()) != spec.size:
            raise SchemaMismatchError(f"the domain has exactly {spec.size} records after the missing-value policies")


def _numeric_objects(column: pd.Series) -> bool:
    """An object column holding only numbers and missing values, every one convertible to float64."""
    if pd.api.types.infer_dtype(column, skipna=True) not in _NUMERIC_INFERRED:
        return False
    try:
        column.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _extension_kind(column: pd.Series) -> str:
    # pandas nullable dtypes (Float64, Int64, boolean) carry missing values as pd.NA
    try:
        return np.dtype(column.dtype.numpy_dtype).kind
    except (AttributeError, TypeError):
        return "O"


def prepare_frame(frame: Any, domain: Schema | FrameDomain) -> PreparedFrame:
    """Check membership, apply missing-value policies, clamp to the box: see the module docstring."""
    check_frame(frame, domain)
    schema = as_frame_domain(domain).schema
    kept = np.ones(len(frame), dtype=bool)
    raw: dict[str, np.ndarray] = {}
    for name, field in schema.fields.items():
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        if field.missing == "impute":
            values = np.where(missing, field.impute, values)
        elif field.missing == "drop":
            kept &= ~missing
        raw[name] = values
    columns = {}
    for name, field in schema.fields.items():
        values = raw[name] if kept.all() else raw[name][kept]
        columns[name] = np.clip(values, field.lower, field.upper)
    return PreparedFrame(columns, kept)


def schema_of(input_domain: Any) -> Schema:
    """The schema behind a frame domain made by :func:`make_frame_domain`."""
    return as_frame_domain(input_domain).schema


def kernel_inputs(frame: Any, domain: Schema | FrameDomain) -> list[np.ndarray]:
    """Columns ready for :meth:`Kernel.value_clamped`, which imputes and clamps itself.

    When no field drops records this is a membership check and a float64 view of
    each column (no copy, no extra pass); otherwise records are dropped first by
    :func:`prepare_frame`.
    """
    schema = as_frame_domain(domain).schema
    if any(f.missing == "drop" for f in schema.fields.values()):
        return list(prepare_frame(frame, domain).columns.values())
    check_frame(frame, domain)
    return [_float_column(frame[name]) for name in schema.names]


def _float_column(column: pd.Series) -> np.ndarray:
    if column.dtype == np.float64:
        return column.to_numpy()  # a view: NaN already marks a missing value
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def make_frame_domain(schema: Schema, *, size_limit: int = DEFAULT_SIZE_LIMIT, size: int | None = None):
    """An OpenDP ``UserDomain`` of the pandas dataframes that :func:`check_frame` accepts.

    :param size_limit: the most rows (records, before any is dropped) a member may have.
    :param size: if given, a member has exactly this many records kept by the
        missing-value policies (a public record count, as for :func:`make_mean_of`).

    Requires OpenDP's ``honest-but-curious`` feature: the identifier encodes every
    field, bound, policy and size constraint, so two domains chain only when they agree.
    Its ``descriptor`` is the :class:`FrameDomain`.
    """
    import opendp.prelude as dp

    spec = FrameDomain(schema, size_limit, size)
    return dp.user_domain(spec.identifier, member=spec.member, descriptor=spec)
