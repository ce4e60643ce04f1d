"""A certified derived column for OpenDP's polars ``dp.Context``.

OpenDP 0.16's polars plan accepts only the expressions it can analyse: it refuses
``pl.col("h").pow(2)`` and ``pl.col("w").log()`` ("Expr is not recognized at this
time"), so age-adjusted BMI or ``log(income + 1)`` cannot be written in a
``dp.Context`` query. :func:`with_certified_column` computes such a column here,
row by row, with the function's compiled kernel and the frame domain's
missing-value and clamping policy, and hands back the frame with the new column
and the column's certified range: the bounds to give ``.dp.sum``/``.dp.mean`` and
the margins to give the Context.

Why the column is materialised before the Context sees it (verified with OpenDP
0.16.0 and polars 1.36.1):

* a Python expression in a query (``pl.col("h").map_batches(f)`` or
  ``map_elements``) is refused by OpenDP's plan: ``Expr is not recognized at this
  time: col("h").()``;
* a ``LazyFrame`` whose own plan holds a Python function, given as the Context's
  ``data``, is accepted when the Context is built but aborts the whole Python
  process at ``release()`` (``fatal runtime error: failed to initiate panic``):
  OpenDP's Rust side cannot run a Python function inside a plan.

So the column is computed eagerly and the returned ``LazyFrame`` is a scan of an
in-memory ``DataFrame``, which OpenDP reads like any other data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from opendp_hybridad.analysis.certificate import RangeCertificate
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import FrameDomain, as_frame_domain, materialise, prepare_frame
from opendp_hybridad.symbolic.function import RecordFunction
from opendp_hybridad.symbolic.schema import Schema

__all__ = ["CertifiedColumn", "with_certified_column"]

#: OpenDP stores ``Margin.max_length`` as a u32: the most rows a bridged frame may have
MAX_LENGTH_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class CertifiedColumn:
    """A frame with a certified derived column, and what OpenDP needs to query it.

    ``data``: the input frame (every column kept) plus the column ``name``, as a
    polars ``LazyFrame`` over an in-memory ``DataFrame``: the ``data`` of a
    ``dp.Context``. ``bounds``: the column's certified range ``(L, U)``, already
    rounded outward; every value of the column lies in it, so the clamp that
    ``.dp.sum(bounds)``/``.dp.mean(bounds)`` applies changes no row. ``max_length``:
    the frame domain's ``size_limit``, a public bound on the rows of the frame and
    so of any group (OpenDP's ``Margin.max_length``, which its float sums need).
    ``nullable``: whether some declared field drops records with a missing value;
    those rows carry ``null`` in the column (see :func:`with_certified_column`).
    """

    data: Any
    name: str
    bounds: tuple[float, float]
    certificate: RangeCertificate
    max_length: int
    nullable: bool

    def margin(self, by: list[Any] | tuple[Any, ...] = (), *, invariant: str | None = None,
               max_groups: int | None = None) -> Any:
        """``dp.polars.Margin`` over ``by`` with this frame's ``max_length``.

        For a group-by on a public key set, either declare the keys invariant here
        (``margin(by=["sex"], invariant="keys", max_groups=2)``: OpenDP then treats
        the keys present in the data as public, a weaker guarantee than advertised,
        see OpenDP's ``Margin``), or keep the keys private and join the released
        groups with the public key set in the query
        (``.group_by("sex").agg(...).with_keys(pl.DataFrame({"sex": keys}))``).
        """
        import opendp.prelude as dp

        return dp.polars.Margin(by=list(by), max_length=self.max_length, invariant=invariant, max_groups=max_groups)

    @property
    def sum_bounds(self) -> tuple[float, float]:
        """``bounds`` widened to hold 0, for ``pl.col(name).fill_null(0.0).dp.sum(sum_bounds)``.

        A dropped record (null) then adds nothing, as the frame domain's ``"drop"``
        policy says, while OpenDP's clamp still changes no certified value. Under
        add/remove the sensitivity ``max(|L|, |U|)`` is unchanged by the widening.
        """
        lower, upper = self.bounds
        return min(lower, 0.0), max(upper, 0.0)

    def candidates(self, count: int) -> list[float]:
        """``count`` evenly spaced candidates over ``bounds``, for ``.dp.quantile(alpha, candidates)``."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            raise DeclarationError("give at least two quantile candidates")
        lower, upper = self.bounds
        return [float(v) for v in np.linspace(lower, upper, count)]


def with_certified_column(data: Any, function: RecordFunction, name: str, *, domain: Any,
                          certificate: RangeCertificate | None = None, backend: str = "auto") -> CertifiedColumn:
    """``data`` with a column ``name`` holding ``function`` of each row, and the column's certified bounds.

    :param data: a polars ``DataFrame`` or ``LazyFrame`` (what a user hands to ``dp.Context``);
        it must be a member of the frame domain: every field of ``function``'s schema
        present and numeric, no missing value where a field's policy is ``"raise"``, at
        most ``size_limit`` rows.
    :param function: a :class:`RecordFunction` of the schema's fields.
    :param name: the new column; it must not be a column of ``data`` already.
    :param domain: ``make_frame_domain(schema, size_limit=n)`` or ``FrameDomain(schema, n)``:
        ``n`` is a public upper bound on the rows of ``data``; ``data`` with more rows
        is refused, and ``n`` is the ``max_length`` of the margins. It must be given
        and below ``2^32`` (OpenDP stores ``max_length`` as a u32): OpenDP's float sums
        add noise for floating-point error that grows with ``max_length`` (on yrbss,
        BMI sums at ``n = 2^32 - 1`` get a Laplace scale near ``10^7``), so declare a
        tight public bound.
    :param certificate: a range certificate of ``function`` (computed if not given); one
        issued for another function or box is refused.

    The column is a per-row map: row ``i`` of the output is row ``i`` of the input
    with one more value, so one person's rows map to the same number of rows and
    ``dp.unit_of(contributions=k)`` means what it meant for ``data``. Each value is
    the compiled kernel on the row's fields clamped to the declared box (a missing
    value imputed where the field says so), clamped to the certified range: every
    value lies in ``bounds``, none is NaN.

    Missing values. A row that the frame domain's policy drops (a missing value in a
    field declared ``missing="drop"``) is kept, with ``null`` in the column, so the
    other columns stay intact. OpenDP 0.16 does not refuse nulls or NaN in
    ``.dp.sum``/``.dp.mean``: it replaces each by the midpoint of the bounds
    (verified). To follow the declared ``"drop"`` policy instead:

    * a sum: ``pl.col(name).fill_null(0.0).dp.sum(column.sum_bounds)`` (``bounds``
      widened to hold 0, else OpenDP would clamp the 0 back into ``bounds``): a dropped
      record adds nothing; works with invariant-key margins;
    * a mean or quantile: ``.filter(pl.col(name).is_not_null())`` before the
      aggregate; OpenDP then needs the public key set through ``.with_keys(keys)``
      after ``.agg(...)``, since a filter hides which keys are present;
    * an explicit constant ``c``: ``pl.col(name).fill_null(c).fill_nan(c)`` (the
      ``fill_nan`` only matters for columns not made here).

    The returned frame is materialised (see the module docstring for why).
    """
    import polars as pl

    if not isinstance(data, (pl.DataFrame, pl.LazyFrame)):
        raise DeclarationError(f"expected a polars DataFrame or LazyFrame, got {type(data).__name__}")
    if not isinstance(function, RecordFunction):
        raise DeclarationError("give a RecordFunction for the derived column")
    if not isinstance(name, str) or not name:
        raise DeclarationError("the derived column needs a non-empty name")
    if isinstance(domain, Schema):
        raise DeclarationError("declare a public bound on the rows: domain=make_frame_domain(schema, size_limit=n)")
    spec: FrameDomain = as_frame_domain(domain)
    if spec.size_limit > MAX_LENGTH_LIMIT:
        raise DeclarationError(f"size_limit must be below 2^32 (OpenDP's max_length is a u32), and as tight as is public: "
                               f"declare it with make_frame_domain(schema, size_limit=n), n <= {MAX_LENGTH_LIMIT}")
    if function.schema != spec.schema:
        raise DeclarationError("the function's schema differs from the domain's schema")
    frame = materialise(data)
    if name in frame.columns:
        raise DeclarationError(f"column {name!r} is already in the frame; choose another name for the derived column")
    cert = (certificate or function.range()).certifies(function)
    lower, upper = float(cert.lower), float(cert.upper)
    prepared = prepare_frame(frame, spec)  # membership first: refused before any value is computed
    values = np.full(frame.height, np.nan)
    if prepared.rows:
        with np.errstate(all="ignore"):
            # clamped to the certified range: a float rounding can step outside it, overflow gives the lower end
            values[prepared.kept] = function.compile(backend=backend).value_clamped(
                list(prepared.columns.values()), lower, upper)
    column = pl.Series(name, values, dtype=pl.Float64, nan_to_null=True)  # only dropped rows are NaN here
    return CertifiedColumn(
        data=frame.with_columns(column).lazy(),
        name=name,
        bounds=(lower, upper),
        certificate=cert,
        max_length=spec.size_limit,
        nullable=any(f.missing == "drop" for f in spec.schema.fields.values()),
    )
