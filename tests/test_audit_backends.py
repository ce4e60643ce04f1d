"""Audit of the numba backend and backend="auto" (bench/audits/attack_backends.py has the figures)."""

from __future__ import annotations

import math
import os
import pickle
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
    # the corrupt index was discarded and numba wrote a fresh one: later loads use the cache again
    assert k.origin == "aot-load"
    for index in indexes:
        assert index.exists() and index.read_bytes()[:1] == b"\x80"  # a pickle again
    again = compile_function(f, backend="numba", cache=tmp_path)
    assert again.origin == "aot-load"
    assert again.value_clamped([np.array([0.5]), np.array([1.0])], -10, 10)[0] == 0.25


@needs_numba
def test_a_numba_cache_that_stays_unreadable_compiles_afresh(tmp_path, monkeypatch):
    # where the cached module cannot be loaded even after numba's files are discarded, the kernel is
    # compiled in this process from the expression, as without a cache; a refusal still raises
    schema = hd.Schema(x=hd.Field(-1, 2), y=hd.Field(0.5, 3))
    x, y = schema.symbols()
    f = schema.function(x * y - x**2, name="p")
    compile_function(f, backend="numba", cache=tmp_path)

    def unreadable(key, directory):
        raise pickle.UnpicklingError("invalid load key")

    monkeypatch.setattr(kernel_module.kernel_cache, "load", unreadable)
    k = compile_function(f, backend="numba", cache=tmp_path)
    assert k.origin == "jit"
    assert k.value_clamped([np.array([0.5]), np.array([1.0])], -10, 10)[0] == 0.25
    monkeypatch.setattr(kernel_module, "_numba_refusal", lambda fn: "refused")
    with pytest.raises(hd.DeclarationError, match="refused"):
        compile_function(f, backend="numba", cache=tmp_path)


def test_a_field_named_e_does_not_shadow_the_constant():
    schema = hd.Schema(e=hd.Field(0, 1), y=hd.Field(0, 1))
    e, y = schema.symbols()
    f = schema.function(e + sp.E * y, name="c")
    v = f.compile(backend="numpy").value_clamped([np.array([0.0, 0.5]), np.array([1.0, 1.0])], -10, 10)
    np.testing.assert_allclose(v, [math.e, 0.5 + math.e])


#: names the generated code used (numpy imports, helpers, numexpr's module, the numba wrapper's locals):
#: a field of that name shadowed the constant (e, pi: silently wrong) or the function (TypeError at release)
RESERVED_NAMES = ["e", "pi", "E", "exp", "sqrt", "log", "value", "select", "float64", "asarray", "_out", "_ne"]
INNOCUOUS_NAMES = [f"field{j}" for j in range(len(RESERVED_NAMES))]


def _expression(a, b):
    # constants, transcendentals, a power, a kink and a conditional: every kind of name the generated code prints
    return (a + sp.E * b + sp.pi * a * b + sp.exp(a - b) + sp.sqrt(b + 1) + sp.log(2 + a) + sp.tanh(a * b)
            + sp.Abs(a - b) + sp.Min(a, b) + a**3 / (1 + b**2))


def _schema_and_function(names):
    schema = hd.Schema(**{n: hd.Field(-1, 1) for n in names})
    syms = schema.symbols()
    expr = sum((_expression(syms[j], syms[(j + 1) % len(syms)]) for j in range(len(syms))), sp.Integer(0))
    return schema, schema.function(expr, name="reserved"), syms, expr


def _mpmath_reference(syms, expr, cols):
    # sympy's lambdify itself lets a symbol named e shadow mpmath's e: evaluate over neutral symbols
    neutral = [sp.Symbol(f"ref{j}", real=True) for j in range(len(syms))]
    fn = sp.lambdify(neutral, expr.xreplace(dict(zip(syms, neutral, strict=True))), modules="mpmath")
    return np.array([float(fn(*(float(c[i]) for c in cols))) for i in range(len(cols[0]))])


def _backend_or_skip(backend, f):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    if backend == "numba" and kernel_module._numba_refusal(f) is not None:
        pytest.skip(kernel_module._numba_refusal(f))
    return f.compile(backend=backend)


def _columns(k, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, 7) for _ in range(k)]


@pytest.mark.parametrize("backend", ["numpy", "numexpr", "numba"])
@pytest.mark.parametrize("name", RESERVED_NAMES)
def test_a_field_named_like_a_generated_identifier_is_read_as_itself(backend, name):
    names, plain = [name, "y"], ["x", "y"]
    _, f, syms, expr = _schema_and_function(names)
    _, g, _, _ = _schema_and_function(plain)
    cols = _columns(2)
    exact = _mpmath_reference(syms, expr, cols)
    k, kg = _backend_or_skip(backend, f), g.compile(backend=backend)
    got = k.value_clamped(cols, -1e6, 1e6)
    np.testing.assert_array_equal(got, kg.value_clamped(cols, -1e6, 1e6))
    np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-12)
    # the public API takes the columns by field name, unchanged
    np.testing.assert_array_equal(k.value(**dict(zip(names, cols, strict=True))), kg.value(**dict(zip(plain, cols, strict=True))))
    np.testing.assert_array_equal(k.value(pd.DataFrame(dict(zip(names, cols, strict=True)))), kg.value(x=cols[0], y=cols[1]))
    np.testing.assert_array_equal(k.gradient(**dict(zip(names, cols, strict=True))), kg.gradient(x=cols[0], y=cols[1]))
    np.testing.assert_array_equal(k.gradient_norm(**dict(zip(names, cols, strict=True))), kg.gradient_norm(x=cols[0], y=cols[1]))


@pytest.mark.parametrize("backend", ["numpy", "numexpr", "numba"])
def test_all_generated_identifiers_as_fields_at_once(backend):
    _, f, syms, expr = _schema_and_function(RESERVED_NAMES)
    _, g, _, _ = _schema_and_function(INNOCUOUS_NAMES)
    cols = _columns(len(RESERVED_NAMES), seed=1)
    exact = _mpmath_reference(syms, expr, cols)
    got = _backend_or_skip(backend, f).value_clamped(cols, -1e6, 1e6)
    np.testing.assert_array_equal(got, g.compile(backend=backend).value_clamped(cols, -1e6, 1e6))
    np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["e", "pi", "exp", "float64", "_ne"])
def test_certified_bounds_do_not_depend_on_the_field_names(name):
    # the certifier evaluates the function through the same generator (numpy_callable)
    def certified(names):
        schema = hd.Schema(**{n: hd.Field(-1, 1) for n in names})
        a, b = schema.symbols()
        f = schema.function(a + sp.E * b + sp.pi * sp.exp(a) - sp.sqrt(b + 2) * a, name="c")
        r, lip = f.range(time_budget=20.0), f.lipschitz(time_budget=20.0)
        assert r.converged and lip.converged
        return r.lower, r.upper, lip.upper

    assert certified([name, "y"]) == certified(["x", "y"])


def test_a_field_named_like_a_generated_parameter_is_read_as_itself():
    # the generated parameters are _x0, _x1, ...: fields with those names, in another order, are harmless
    schema = hd.Schema(_x1=hd.Field(0, 10), _x0=hd.Field(0, 10), _t0=hd.Field(0, 10))
    a, b, c = schema.symbols()
    f = schema.function(a - 2 * b + (a + b) ** 2 * c + (a + b) ** 2, name="p")
    cols = [np.array([1.0, 3.0]), np.array([2.0, 5.0]), np.array([0.5, 0.25])]
    want = cols[0] - 2 * cols[1] + (cols[0] + cols[1]) ** 2 * cols[2] + (cols[0] + cols[1]) ** 2
    for backend in available_backends():
        np.testing.assert_allclose(f.compile(backend=backend).value_clamped(cols, -1e6, 1e6), want, rtol=1e-15)
