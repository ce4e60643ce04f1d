"""Audit of the numba kernel backend and backend="auto" (commits 7ebada4, fa43bd8).

1. A field named ``_out`` (or ``_empty``, ``_readonly``, ``float``, ``_value_clamped_loop``): the numba
   ``value_clamped`` wrapper took the field names as its parameters, and its own local ``_out = _empty(n)``
   replaced that column, so every record's value was read from uninitialised memory. The sum of
   ``f = _out`` over five records equal to 1 gave 5.0, over four of them 0.9999999999999999: a change of
   4.0 between add/remove neighbours against a map of 1.0000000000044411 (other names raised TypeError
   at release, not at construction). Fixed: the wrapper names no field (``*_args``), generator version 6.
2. ``backend="auto"`` on a box as wide as ``[-1e308, 1e308]`` (or ``[-1.79e308, 0]``): the calibration
   sample drew ``uniform(lo - pad, hi + pad)``, which numpy refuses (OverflowError "high - low range exceeds
   valid bounds"), so make_sum_of raised where the numpy and numexpr backends build; the individual
   filter compiles at query time, so there it was a release-time exception. Fixed: ``(1 - t) lo + t hi``.
3. A corrupted numba on-disk cache index next to an AOT kernel (``cache=dir``): every later
   ``compile_function(..., backend="numba" or "auto", cache=dir)`` raises DeclarationError (UnpicklingError)
   until the ``__pycache__`` is removed. At construction, never at release. Not fixed.
4. Before these commits, also on numpy/numexpr: a field named ``e`` or ``pi`` shadows the constant in the
   generated ``value`` (silently wrong values, still clamped and still the record's own, so the maps
   hold); one named ``exp``, ``sqrt``, ``clip``, ``value``, ... raises TypeError at every release. Fixed:
   the generated code names each field by position (``_x0, _x1, ...``), never by its name; generator version 7.

Run: python bench/audits/attack_backends.py (exit status 1 while a fixed finding reproduces).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pandas as pd
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.compile.kernel import available_backends, calibrate, compile_function
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of


def shadowing_field() -> bool:
    """True while the numba sum of a field named _out moves by more than its map."""
    schema = hd.Schema(_out=hd.Field(0, 1))
    (o,) = schema.symbols()
    t = make_sum_of(make_frame_domain(schema, size_limit=1000), dp.symmetric_distance(), schema.function(o, name="id"),
                    backend="numba")
    bad = False
    for n in (1, 5, 50, 500):
        d = pd.DataFrame({"_out": np.ones(n)})
        a, b = t(d), t(d.iloc[:-1])
        print(f"_out: n={n} sum {a!r}, without one record {b!r}, map(1) {t.map(1)!r}")
        bad |= abs(a - b) > t.map(1) or a != n
    return bad


def wide_box_auto() -> bool:
    """True while backend='auto' raises on a wide finite box."""
    bad = False
    for lo, hi in [(-1e308, 1e308), (-1.79e308, 0.0)]:
        schema = hd.Schema(x=hd.Field(lo, hi))
        (x,) = schema.symbols()
        try:
            choice = calibrate(schema.function(hd.sigmoid(x), name="s"))
            print(f"box [{lo}, {hi}]: auto chose {choice.backend} ({choice.reason})")
        except Exception as exc:
            print(f"box [{lo}, {hi}]: auto RAISES {type(exc).__name__}: {exc}")
            bad = True
    return bad


def corrupted_numba_cache() -> bool:
    """True while a corrupted numba cache index makes the AOT numba kernel fail (not fixed: reported)."""
    schema = hd.Schema(x=hd.Field(-1, 2), y=hd.Field(0.5, 3))
    x, y = schema.symbols()
    f = schema.function(x * y - x**2, name="p")
    with tempfile.TemporaryDirectory() as tmp:
        compile_function(f, backend="numba", cache=tmp)
        for index in Path(tmp, "__pycache__").glob("*.nbi"):
            index.write_bytes(os.urandom(40))
        try:
            compile_function(f, backend="numba", cache=tmp)
        except Exception as exc:
            print(f"corrupted numba cache index: {type(exc).__name__}: {exc}")
            return True
    return False


def constant_shadowing() -> bool:
    """True while a field named e changes the constant E in a generated kernel (fixed: generator version 7)."""
    schema = hd.Schema(e=hd.Field(0, 1), y=hd.Field(0, 1))
    e, y = schema.symbols()
    f = schema.function(e + sp.E * y, name="c")
    cols = [np.array([0.0, 0.5]), np.array([1.0, 1.0])]
    bad = False
    for backend in available_backends():
        v = f.compile(backend=backend).value_clamped(cols, -10, 10)
        print(f"field named e, f = e + E y at (0.5, 1): {backend} kernel {v[1]!r}, exact {0.5 + math_e()!r}")
        bad |= not np.allclose(v, [math_e(), 0.5 + math_e()])
    return bad


def math_e() -> float:
    import math

    return math.e


def main() -> int:
    dp.enable_features("contrib", "honest-but-curious")
    warnings.simplefilter("ignore")
    os.environ.pop("OPENDP_HYBRIDAD_BACKEND", None)
    fixed_bad = False
    if "numba" in available_backends():
        fixed_bad |= shadowing_field()
        corrupted_numba_cache()
    fixed_bad |= wide_box_auto()
    fixed_bad |= constant_shadowing()
    return 1 if fixed_bad else 0


if __name__ == "__main__":
    sys.exit(main())
