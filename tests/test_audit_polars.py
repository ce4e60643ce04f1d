"""Audit of the frame domain's polars path (frame/domain.py): a LazyFrame whose plan fails is a non-member,
whatever raises.

Found: ``materialise`` caught only ``PolarsError``. A plan holding a Python function (``map_elements``)
that raises on some value only re-raised that function's own exception: ``hd.release`` answered one
dataset and raised ``ValueError('SECRET value 7.25')`` on its neighbour (one record added), a
data-dependent exception whose message quotes a private value. Fixed: any exception (and polars'
panics) from collecting or resolving the plan is the SchemaMismatchError of a non-member, without the
original message. Reproducer: bench/audits/attack_polars.py.
"""

from __future__ import annotations

import warnings

import opendp.prelude as dp
import pytest

import opendp_hybridad as hd
from opendp_hybridad.errors import SchemaMismatchError
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.measurements import make_private_sum
from opendp_hybridad.frame.polars_bridge import with_certified_column

pl = pytest.importorskip("polars")


@pytest.fixture(autouse=True)
def _features():
    dp.enable_features("contrib", "honest-but-curious")


def _boom(v: float) -> float:
    if v > 5:
        raise ValueError(f"SECRET value {v}")
    return v


def _lazy(values: list[float]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.LazyFrame({"x": values}).with_columns(pl.col("x").map_elements(_boom, return_dtype=pl.Float64))


def test_a_plan_whose_python_function_raises_is_a_non_member_without_its_message():
    s = hd.Schema(x=hd.Field(0, 10))
    (x,) = s.symbols()
    domain = make_frame_domain(s, size_limit=100)
    m = make_private_sum(domain, s.function(x), epsilon=1.0)
    hd.release(m, _lazy([1.0, 2.0]))  # a member
    neighbour = _lazy([1.0, 2.0, 7.25])
    assert not domain.member(neighbour)
    with pytest.raises(SchemaMismatchError) as info:
        hd.release(m, neighbour)
    assert "SECRET" not in str(info.value) and "7.25" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(SchemaMismatchError) as info:
        with_certified_column(neighbour, s.function(x), "y", domain=domain)
    assert "SECRET" not in str(info.value)


def test_a_plan_whose_schema_cannot_be_resolved_is_a_non_member():
    s = hd.Schema(x=hd.Field(0, 10))
    domain = make_frame_domain(s, size_limit=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = pl.LazyFrame({"x": [9.0]}).with_columns(pl.col("x").map_elements(_boom))  # no return dtype: inferred
    with pytest.raises(SchemaMismatchError):
        hd.frame.check_frame(lazy, domain)
