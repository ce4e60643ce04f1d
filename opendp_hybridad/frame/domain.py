"""A dataframe domain built from a :class:`Schema`, and the data-independent
preparation every data-facing constructor applies before a kernel runs.

Members are pandas ``DataFrame`` s and polars ``DataFrame`` s / ``LazyFrame`` s
(polars is optional: ``pip install opendp-hybridad[polars]``). Both are read by
one rule, :func:`read_member`: each declared column is accepted or refused
by its dtype alone (so membership never depends on where a value sits), then
converted to float64 in one vectorised step with every missing value as NaN:
pandas ``NaN``/``None``/``pd.NA`` and polars ``null``/``NaN`` alike. Everything
after that (missing-value policies, clamping, the size checks) sees only those
float64 arrays, so a pandas frame and its polars copy prepare identically. A
``LazyFrame`` is collected once, for the declared columns only.

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

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
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
    (when ``size`` is set) exactly ``size`` records kept by the missing-value policies, and
    the declared ``labels``.

    ``labels``: key columns outside the schema (for group-by), each with a missing-key
    policy: ``{"sex": "drop"}`` (a record with a missing key belongs to no group) or
    ``{"sex": "raise"}`` (a frame with a missing key is not a member); a list of names
    means ``"drop"`` for each. A label column may hold any dtype; it must be present,
    and free of missing values (None, NaN, pandas NA, polars null) under ``"raise"``.
    Labels never drop records from the frame, so ``size`` still counts the records
    kept by the fields' policies.

    The descriptor of the OpenDP ``UserDomain`` that :func:`make_frame_domain` returns.
    """

    schema: Schema
    size_limit: int = DEFAULT_SIZE_LIMIT
    size: int | None = None
    labels: Any = ()

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Schema):
            raise DeclarationError("a frame domain needs a Schema")
        object.__setattr__(self, "labels", _labels(self.labels, self.schema))
        if not _is_count(self.size_limit) or self.size_limit < 1:
            raise DeclarationError("size_limit must be a positive whole number of records")
        object.__setattr__(self, "size_limit", int(self.size_limit))
        if self.size is not None:
            if not _is_count(self.size) or self.size < 0:
                raise DeclarationError("size must be a non-negative whole number of records")
            if self.size > self.size_limit:
                raise DeclarationError("size is larger than size_limit: no frame would be a member")
            object.__setattr__(self, "size", int(self.size))

    def label_policy(self, name: str) -> str:
        """The missing-key policy of the label column ``name``; a DeclarationError if it is not declared."""
        for label, policy in self.labels:
            if label == name:
                return policy
        raise DeclarationError(f"key column {name!r} is not declared in the frame domain: "
                               f"make_frame_domain(schema, labels={{{name!r}: 'drop'}})")

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
        parts.extend(f"label:{name!r}missing={policy}" for name, policy in self.labels)
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


#: what a label column may do with a missing key
LABEL_POLICIES = ("drop", "raise")


def _labels(labels: Any, schema: Schema) -> tuple[tuple[str, str], ...]:
    """``labels`` as ``((name, policy), ...)``, checked: names outside the schema, known policies."""
    if isinstance(labels, str):
        labels = [labels]
    pairs = list(labels.items()) if isinstance(labels, Mapping) else [
        item if isinstance(item, tuple) else (item, "drop") for item in labels]
    names = set()
    for pair in pairs:
        if len(pair) != 2:
            raise DeclarationError("labels: give column names, or a mapping of column names to a missing-key policy")
        name, policy = pair
        if not isinstance(name, str) or not name:
            raise DeclarationError("a label (key column) is named by a non-empty string")
        if name in schema.fields:
            raise DeclarationError(f"key column {name!r} is a field of the schema; a label is a column outside it")
        if policy not in LABEL_POLICIES:
            raise DeclarationError(f"key column {name!r}: missing-key policy must be one of {LABEL_POLICIES}")
        if name in names:
            raise DeclarationError(f"key column {name!r} is declared twice")
        names.add(name)
    return tuple((name, policy) for name, policy in pairs)


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


def frame_domain_identifier(schema: Schema, size_limit: int = DEFAULT_SIZE_LIMIT, size: int | None = None,
                            labels: Any = ()) -> str:
    """A string that identifies the domain uniquely (OpenDP chains user domains by identifier)."""
    return FrameDomain(schema, size_limit, size, labels).identifier


def check_frame(frame: Any, domain: Schema | FrameDomain) -> None:
    """Raise :class:`SchemaMismatchError` unless ``frame`` belongs to the frame domain.

    Membership: a pandas DataFrame, or a polars DataFrame/LazyFrame, with every
    declared column, each of a numeric dtype (pandas: numeric, nullable numeric,
    boolean, or an object column of numbers; polars: integer, float, decimal,
    boolean or all-null; never strings, categoricals or dates), no missing value
    in a column whose policy is ``"raise"``, at most ``size_limit`` rows and, when
    the domain fixes a ``size``, exactly that many records kept by the
    missing-value policies, and every declared label (key) column, without a
    missing key where its policy is ``"raise"``. Extra columns are allowed and ignored. ``domain`` may
    be a bare Schema (the default size limit, no fixed size). Nothing is computed
    from the values beyond these checks; errors name the column, never a value.
    """
    read_member(frame, domain)


#: held only by :func:`read_member`: a :class:`MemberFrame` is never built from unchecked columns by mistake
_READ = object()


@dataclass(frozen=True, eq=False)
class MemberFrame:
    """A member of a frame domain, read once: its declared columns as float64 (NaN marks a missing
    value), its number of rows, and which rows the missing-value policies keep (``kept`` is None
    when every row is kept). Built only by :func:`read_member`, after the membership check.

    Every reader here accepts one in place of the frame it was read from (for the same domain
    only), so a release that needs the frame twice (the private mean's sum and count) checks,
    converts and reads it once. One input record is one row of it, dropped records included.

    Immutable in fact, not only frozen: ``columns`` is a read-only mapping of read-only arrays
    and ``kept`` is read-only, so what passed the membership check is what every reader sees
    (an edit raises TypeError or ValueError). A column may be a read-only view of the frame's
    own float64 column (no copy); the frame itself stays as writeable as it was.
    """

    domain: FrameDomain
    columns: Mapping[str, np.ndarray]
    rows: int
    kept: np.ndarray | None
    token: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token is not _READ:
            raise DeclarationError("a MemberFrame is built by read_member(frame, domain), which checks membership")
        object.__setattr__(self, "columns", MappingProxyType({n: _read_only(c) for n, c in self.columns.items()}))
        if self.kept is not None:
            object.__setattr__(self, "kept", _read_only(self.kept))

    @property
    def kept_count(self) -> int:
        """The number of records the missing-value policies keep."""
        return self.rows if self.kept is None else int(self.kept.sum())


def _read_only(values: np.ndarray) -> np.ndarray:
    # a read-only view: clearing a view's flag leaves the array it views (a user's frame) untouched
    view = values.view()
    view.flags.writeable = False
    return view


def read_member(frame: Any, domain: Schema | FrameDomain) -> MemberFrame:
    """The declared columns of a member as float64 (NaN marks a missing value), its rows and kept records.

    The one reader of frames: every check and every preparation starts here, so
    pandas and polars frames follow the same policy. Raises :class:`SchemaMismatchError`
    for a non-member before anything is computed from its values. A :class:`MemberFrame`
    read for this domain is returned as it is; one read for another domain is refused.
    """
    spec = as_frame_domain(domain)
    if isinstance(frame, MemberFrame):
        if frame.domain != spec:
            raise SchemaMismatchError("the frame was read for another frame domain")
        return frame
    schema = spec.schema
    if isinstance(frame, pd.DataFrame):
        columns = {name: _pandas_column(frame, name, field.dtype) for name, field in schema.fields.items()}
        for name, policy in spec.labels:
            _check_label(_pandas_label(frame, name), name, policy)
        rows = len(frame)
    elif _is_polars(frame):
        columns, rows = _polars_columns(frame, spec)
    else:
        raise SchemaMismatchError(f"expected a pandas DataFrame or a polars DataFrame/LazyFrame, got {type(frame).__name__}")
    for name, field in schema.fields.items():
        if field.missing == "raise" and np.isnan(columns[name]).any():
            raise SchemaMismatchError(f"column {name!r} has missing values and its policy is 'raise'")
    if rows > spec.size_limit:
        raise SchemaMismatchError(f"the frame has more records than the domain's size limit {spec.size_limit}")
    drops = any(f.missing == "drop" for f in schema.fields.values())
    kept = _kept(columns, schema, rows) if drops else None
    member = MemberFrame(spec, columns, rows, kept, token=_READ)
    if spec.size is not None and member.kept_count != spec.size:
        raise SchemaMismatchError(f"the domain has exactly {spec.size} records after the missing-value policies")
    return member


def _kept(columns: dict[str, np.ndarray], schema: Schema, rows: int) -> np.ndarray:
    """Rows kept by the missing-value policies: those with no missing value in a field whose policy is ``"drop"``."""
    kept = np.ones(rows, dtype=bool)
    for name, field in schema.fields.items():
        if field.missing == "drop":
            kept &= ~np.isnan(columns[name])
    return kept


def _pandas_column(frame: pd.DataFrame, name: str, dtype: str) -> np.ndarray:
    if name not in frame.columns:
        raise SchemaMismatchError(f"column {name!r} is missing from the dataframe")
    column = frame[name]
    if isinstance(column, pd.DataFrame):
        raise SchemaMismatchError(f"column {name!r} appears more than once")
    kind = column.dtype.kind if isinstance(column.dtype, np.dtype) else _extension_kind(column)
    if kind == "O" and _numeric_objects(column):
        kind = "f"  # e.g. an empty frame, or a concat of nullable and plain floats
    if kind not in _NUMERIC_KINDS:
        raise SchemaMismatchError(f"column {name!r} has dtype {column.dtype}, which is not compatible with {dtype}")
    return _float_column(column)


def _pandas_label(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        raise SchemaMismatchError(f"key column {name!r} is missing from the dataframe")
    column = frame[name]
    if isinstance(column, pd.DataFrame):
        raise SchemaMismatchError(f"key column {name!r} appears more than once")
    return column


def label_column(frame: Any, name: str) -> pd.Series:
    """A label (key) column as a pandas Series, so pandas and polars keys follow pandas' rules.

    A polars column becomes an object Series of its Python values (null as None), which
    pandas compares and tests for missing values as it does an object column. ``frame``
    is a pandas or polars ``DataFrame`` (a ``LazyFrame`` is collected by :func:`materialise`
    first); a frame without the column is refused naming it.
    """
    if isinstance(frame, pd.DataFrame):
        return _pandas_label(frame, name)
    if _is_polars(frame):
        frame = materialise(frame, [name])
        if name not in frame.columns:
            raise SchemaMismatchError(f"key column {name!r} is missing from the dataframe")
        return pd.Series(frame.get_column(name).to_list(), dtype=object)
    raise SchemaMismatchError(f"expected a pandas DataFrame or a polars DataFrame/LazyFrame, got {type(frame).__name__}")


def label_missing(column: pd.Series) -> np.ndarray:
    """Which keys of a label column are missing (None, NaN, NaT, pandas NA, a NaN Decimal), never raising.

    The same rule as for individual ids (``individual.ids.missing_ids``: ``Series.isna``,
    value by value when an exotic value such as ``Decimal("sNaN")`` makes it signal).
    """
    from opendp_hybridad.individual.ids import missing_ids  # imported here: individual imports this module

    return missing_ids(column)


def _check_label(column: pd.Series, name: str, policy: str) -> None:
    if policy == "raise" and bool(label_missing(column).any()):
        raise SchemaMismatchError(f"key column {name!r} has missing keys and its policy is 'raise'")


def _is_polars(frame: Any) -> bool:
    # polars is optional: a frame can only be a polars frame if polars has been imported
    pl = sys.modules.get("polars")
    return pl is not None and isinstance(frame, (pl.DataFrame, pl.LazyFrame))


def _polars_numeric(dtype: Any) -> bool:
    """Whether a polars dtype is read as numbers: what pandas accepts, decided by the dtype alone."""
    import polars as pl

    # Null is the dtype of an all-missing column (pandas: an object column of None, accepted too)
    return bool(dtype.is_numeric()) or dtype == pl.Boolean or dtype == pl.Null


def materialise(frame: Any, columns: list[str] | None = None) -> Any:
    """A polars ``LazyFrame`` collected (only ``columns`` of it, those it has, when given); anything else as it is.

    The one place a LazyFrame is collected, so a constructor that reads several of its
    columns (a key column and the declared fields) runs the user's plan once. A plan
    that fails is not a member: refused with :class:`SchemaMismatchError`, without
    polars' message or a Python function's exception (either may quote values).
    """
    pl = sys.modules.get("polars")
    if pl is None or not isinstance(frame, pl.LazyFrame):
        return frame
    if columns is not None:
        present = set(lazy_schema(frame).names())
        frame = frame.select([name for name in dict.fromkeys(columns) if name in present])
    try:
        return frame.collect()
    except (Exception, pl.exceptions.PanicException):
        # any failure, not only polars' own: a Python function in the plan raises its own exception,
        # whose message may quote a value (a panic in polars is a BaseException of its own)
        raise SchemaMismatchError("the LazyFrame's plan failed when collected") from None


def lazy_schema(frame: Any) -> Any:
    """A LazyFrame's schema; a plan whose schema cannot be resolved is not a member (no message of polars kept)."""
    import polars as pl

    try:
        return frame.collect_schema()
    except (Exception, pl.exceptions.PanicException):
        raise SchemaMismatchError("the LazyFrame's plan failed when its schema was resolved") from None


def _polars_columns(frame: Any, spec: FrameDomain) -> tuple[dict[str, np.ndarray], int]:
    import polars as pl

    schema = spec.schema
    types = lazy_schema(frame) if isinstance(frame, pl.LazyFrame) else frame.schema
    for name, field in schema.fields.items():
        if name not in types:
            raise SchemaMismatchError(f"column {name!r} is missing from the dataframe")
        if not _polars_numeric(types[name]):
            raise SchemaMismatchError(f"column {name!r} has dtype {types[name]}, which is not compatible with {field.dtype}")
    # a LazyFrame: collected once, only the declared columns and labels
    frame = materialise(frame, [*schema.names, *(name for name, _ in spec.labels)])
    for name, policy in spec.labels:
        _check_label(label_column(frame, name), name, policy)
    # a cast to Float64 turns null into NaN in to_numpy; NaN stays NaN: both are missing, as in pandas
    columns = {name: frame.get_column(name).cast(pl.Float64).to_numpy() for name in schema.names}
    return columns, frame.height


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
    member = read_member(frame, domain)
    kept = np.ones(member.rows, dtype=bool) if member.kept is None else member.kept
    columns = {}
    for name, fld in member.domain.schema.fields.items():
        values = member.columns[name]
        if fld.missing == "impute":
            values = np.where(np.isnan(values), fld.impute, values)
        values = values if member.kept is None else values[kept]
        columns[name] = np.clip(values, fld.lower, fld.upper)
    return PreparedFrame(columns, kept)


def schema_of(input_domain: Any) -> Schema:
    """The schema behind a frame domain made by :func:`make_frame_domain`."""
    return as_frame_domain(input_domain).schema


def kernel_inputs(frame: Any, domain: Schema | FrameDomain) -> list[np.ndarray]:
    """Columns ready for :meth:`Kernel.value_clamped`, which imputes and clamps itself.

    A membership check and a float64 view of each column (no copy for a pandas
    float64 column); when some field drops records, the kept records of each column.
    """
    member = read_member(frame, domain)
    columns = [member.columns[name] for name in member.domain.schema.names]
    return columns if member.kept is None else [c[member.kept] for c in columns]


def _float_column(column: pd.Series) -> np.ndarray:
    if column.dtype == np.float64:
        return column.to_numpy()  # a view: NaN already marks a missing value
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def make_frame_domain(schema: Schema, *, size_limit: int = DEFAULT_SIZE_LIMIT, size: int | None = None, labels: Any = ()):
    """An OpenDP ``UserDomain`` of the pandas and polars frames that :func:`check_frame` accepts.

    :param size_limit: the most rows (records, before any is dropped) a member may have.
    :param size: if given, a member has exactly this many records kept by the
        missing-value policies (a public record count, as for :func:`make_mean_of`).
    :param labels: key columns outside the schema, for group-by (see :class:`FrameDomain`):
        ``{"sex": "drop"}``, ``{"sex": "raise"}`` or ``["sex"]``.

    Requires OpenDP's ``honest-but-curious`` feature: the identifier encodes every
    field, bound, policy and size constraint, so two domains chain only when they agree.
    Its ``descriptor`` is the :class:`FrameDomain`.
    """
    import opendp.prelude as dp

    spec = FrameDomain(schema, size_limit, size, labels)
    return dp.user_domain(spec.identifier, member=spec.member, descriptor=spec)


def make_member_domain(domain: Any):
    """An OpenDP ``UserDomain`` of the :class:`MemberFrame` s read for ``domain`` (a frame domain).

    Its descriptor is the same :class:`FrameDomain`, so every constructor that takes a frame
    domain takes this one and reads its members without reading a frame again. Requires
    OpenDP's ``honest-but-curious`` feature.
    """
    import opendp.prelude as dp

    spec = as_frame_domain(domain)

    def member(value: Any) -> bool:
        return isinstance(value, MemberFrame) and value.domain == spec

    return dp.user_domain("MemberFrame" + spec.identifier.removeprefix("FrameDomain"), member=member, descriptor=spec)
