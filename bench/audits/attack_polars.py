"""Audit: a LazyFrame whose plan runs a Python function that raises on one value (a neighbour only).

Before the fix ``materialise`` caught only polars' own errors, so ``hd.release`` answered D and raised
the function's ``ValueError('SECRET value 7.25')`` on D + one record: a data-dependent exception
quoting a private value. Run: python bench/audits/attack_polars.py (exit status 1 while it leaks).
"""

from __future__ import annotations

import sys
import warnings

import opendp.prelude as dp
import polars as pl

import opendp_hybridad as hd
from opendp_hybridad.errors import SchemaMismatchError
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.measurements import make_private_sum


def boom(v: float) -> float:
    if v > 5:
        raise ValueError(f"SECRET value {v}")
    return v


def main() -> int:
    dp.enable_features("contrib", "honest-but-curious")
    warnings.simplefilter("ignore")
    s = hd.Schema(x=hd.Field(0, 10))
    (x,) = s.symbols()
    m = make_private_sum(make_frame_domain(s, size_limit=100), s.function(x), epsilon=1.0)
    leaked = False
    for values in ([1.0, 2.0], [1.0, 2.0, 7.25]):
        data = pl.LazyFrame({"x": values}).with_columns(pl.col("x").map_elements(boom, return_dtype=pl.Float64))
        try:
            print(values, "->", hd.release(m, data))
        except SchemaMismatchError as exc:
            print(values, "-> non-member:", exc)
        except Exception as exc:  # the leak
            leaked = True
            print(values, "-> LEAK", type(exc).__name__, exc)
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
