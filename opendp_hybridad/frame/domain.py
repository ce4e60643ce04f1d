"""A pandas dataframe domain built from a :class:`Schema`, and the data-independent
preparation every data-facing constructor applies before a kernel runs.

OpenDP does not check domain membership when a transformation runs
(ARCHITECTURE.md decision 6), so constructors call :func:`check_frame` on every
input. Its errors name the column and the kind of mismatch, never a value.

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

from opendp_hybridad.errors import HybridADError
from opendp_hybridad.symbolic.schema import Schema

#: numpy dtype kinds a column may have: pandas stores integer columns with missing
#: values as floats, so every numeric field accepts every real numeric kind
_NUMERIC_KINDS = "fiub"


class SchemaMismatchError(HybridADError, ValueError):
    """A dataframe is not a member of the declared frame domain. Names the column, never a value."""


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


def frame_domain_identifier(schema: Schema) -> str:
    """A string that identifies the domain uniquely (OpenDP chains user domains by identifier)."""
    parts = [f"{n}:{f.dtype}[{f.lower!r},{f.upper!r}]missing={f.missing}"
             + (f"({f.impute!r})" if f.missing == "impute" else "") for n, f in schema.fields.items()]
    return "FrameDomain(" + ", ".join(parts) + ")"


def check_frame(frame: Any, schema: Schema) -> None:
    """Raise :class:`SchemaMismatchError` unless ``frame`` belongs to the schema's frame domain.

    Membership: a pandas DataFrame with every declared column, each of a numeric
    dtype compatible with the field's, and no missing value in a column whose
    policy is ``"raise"``. Extra columns are allowed and ignored.
    """
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
        if field.missing == "raise" and column.isna().to_numpy().any():
            raise SchemaMismatchError(f"column {name!r} has missing values and its policy is 'raise'")


def _numeric_objects(column: pd.Series) -> bool:
    """An object column holding only numbers and missing values converts to float64."""
    try:
        column.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        return False
    return not any(isinstance(v, (str, bytes)) for v in column.to_numpy()[:1000])


def _extension_kind(column: pd.Series) -> str:
    # pandas nullable dtypes (Float64, Int64, boolean) carry missing values as pd.NA
    try:
        return np.dtype(column.dtype.numpy_dtype).kind
    except (AttributeError, TypeError):
        return "O"


def prepare_frame(frame: Any, schema: Schema) -> PreparedFrame:
    """Check membership, apply missing-value policies, clamp to the box: see the module docstring."""
    check_frame(frame, schema)
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
    from opendp_hybridad.errors import DeclarationError

    schema = getattr(input_domain, "descriptor", None)
    if not isinstance(schema, Schema):
        raise DeclarationError("the input domain must be a frame domain from make_frame_domain(schema)")
    return schema


def kernel_inputs(frame: Any, schema: Schema) -> list[np.ndarray]:
    """Columns ready for :meth:`Kernel.value_clamped`, which imputes and clamps itself.

    When no field drops records this is a membership check and a float64 view of
    each column (no copy, no extra pass); otherwise records are dropped first by
    :func:`prepare_frame`.
    """
    if any(f.missing == "drop" for f in schema.fields.values()):
        return list(prepare_frame(frame, schema).columns.values())
    check_frame(frame, schema)
    return [_float_column(frame[name]) for name in schema.names]


def _float_column(column: pd.Series) -> np.ndarray:
    if column.dtype == np.float64:
        return column.to_numpy()  # a view: NaN already marks a missing value
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def make_frame_domain(schema: Schema):
    """An OpenDP ``UserDomain`` of the pandas dataframes that :func:`check_frame` accepts.

    Requires OpenDP's ``honest-but-curious`` feature: the identifier encodes every
    field, bound and policy, so two domains chain only when their schemas agree.
    """
    import opendp.prelude as dp

    def member(frame: Any) -> bool:
        try:
            check_frame(frame, schema)
        except SchemaMismatchError:
            return False
        return True

    return dp.user_domain(frame_domain_identifier(schema), member=member, descriptor=schema)
