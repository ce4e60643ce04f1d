"""Audit of the numba backend and backend="auto" (bench/audits/attack_backends.py has the figures)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
import sympy as sp

import opendp_hybridad as hd
from opendp_hybridad.compile import kernel as kernel_module
from opendp_hybridad.compile.kernel import available_backends, calibrate, calibration_sample, compile_function
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of

needs_numba = pytest.mark.skipif("numba" not in available_backends(), reason="numba is not installed")

#: names of the numba wrapper's locals and globals: a field of that name used to shadow them
WRAPPER_NAMES = ["_out", "_empty", "_readonly", "float", "_value_clamped_loop", "float64"]


@needs_numba
@pytest.mark.parametrize("name", WRAPPER_NAMES)
def test_a_field_named_like_a_wrapper_local_is_read_as_itself(name):
    # a field named _out was replaced by the wrapper's uninitialised output array: values from garbage
    schema = hd.Schema(**{name: hd.Field(0, 1), "y": hd.Field(0, 1)})
    s, y = schema.symbols()
    f = schema.function(2 * s + y, name="t")
    cols = [np.linspace(0, 1, 9), np.linspace(0, 1, 9)[::-1].copy()]
    got = f.compile(backend="numba").value_clamped(cols, -10, 10)
    np.testing.assert_array_equal(got, 2 * cols[0] + cols[1])  # the same IEEE operations, inside [-10, 10]


@needs_numba
def test_numba_sum_of_a_field_named_out_moves_by_its_map_at_most():
    schema = hd.Schema(_out=hd.Field(0, 1))
    (o,) = schema.symbols()
    t = make_sum_of(make_frame_domain(schema, size_limit=1000), dp.symmetric_distance(), schema.function(o, name="id"),
                    backend="numba")
    for n in (1, 5, 50, 500):
        d = pd.DataFrame({"_out": np.ones(n)})
        assert t(d) == n
        assert abs(t(d) - t(d.iloc[:-1])) <= t.map(1)


@pytest.mark.parametrize("box", [(-1e308, 1e308), (-1.79e308, 0.0), (0.0, 1.79e308)])
def test_auto_calibrates_on_a_box_as_wide_as_the_floats(box, monkeypatch):
    # the sample was uniform(lo - pad, hi + pad): numpy refuses a range whose width overflows
    monkeypatch.delenv(kernel_module.BACKEND_ENV, raising=False)
    monkeypatch.setattr(kernel_module, "_choices", {})
    schema = hd.Schema(x=hd.Field(*box))
    (x,) = schema.symbols()
    f = schema.function(hd.sigmoid(x), name="s")
    for col in calibration_sample(f, rows=1000):
        assert np.all(np.isfinite(col))
    assert calibrate(f, rounds=1, loaded=False).backend in available_backends()
    make_sum_of(make_frame_domain(schema), dp.symmetric_distance(), f, backend="auto")


@needs_numba
@pytest.mark.xfail(strict=True, reason="a corrupted numba cache index next to an AOT kernel is not ignored (reported)")
def test_a_corrupted_numba_cache_index_is_ignored(tmp_path):
    schema = hd.Schema(x=hd.Field(-1, 2), y=hd.Field(0.5, 3))
    x, y = schema.symbols()
    f = schema.function(x * y - x**2, name="p")
    compile_function(f, backend="numba", cache=tmp_path)
    indexes = list(Path(tmp_path, "__pycache__").glob("*.nbi"))
    assert indexes
    for index in indexes:
        index.write_bytes(os.urandom(40))
    k = compile_function(f, backend="numba", cache=tmp_path)
    assert k.value_clamped([np.array([0.5]), np.array([1.0])], -10, 10)[0] == 0.25


@pytest.mark.xfail(strict=True, reason="a field named e shadows the constant E in the generated numpy module (reported)")
def test_a_field_named_e_does_not_shadow_the_constant():
    schema = hd.Schema(e=hd.Field(0, 1), y=hd.Field(0, 1))
    e, y = schema.symbols()
    f = schema.function(e + sp.E * y, name="c")
    v = f.compile(backend="numpy").value_clamped([np.array([0.0, 0.5]), np.array([1.0, 1.0])], -10, 10)
    np.testing.assert_allclose(v, [math.e, 0.5 + math.e])
