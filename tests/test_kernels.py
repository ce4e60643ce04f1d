"""Compiled kernels: agreement with sympy and finite differences, backends, partial evaluation, AOT cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from suite import CASES, function_of

import opendp_hybridad as hd
from opendp_hybridad.compile import available_backends

BACKENDS = available_backends()


def _sample(box, n=500, seed=0):
    rng = np.random.default_rng(seed)
    lo = np.array([b[0] for b in box.values()], dtype=float)
    hi = np.array([b[1] for b in box.values()], dtype=float)
    return lo + rng.random((n, lo.size)) * (hi - lo)


def _reference(expr, symbols):
    return sp.lambdify(symbols, expr, modules=[{"sigmoid": lambda x: 1 / (1 + np.exp(-x)),
                                                "softplus": lambda x: np.logaddexp(0, x)}, "numpy"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_value_gradient_and_norm_match_sympy_and_finite_differences(case, backend):
    f = function_of(case)
    k = f.compile(backend=backend)
    X = _sample(case.box)
    symbols = list(f.symbols)
    ref_value = np.broadcast_to(_reference(f.expr, symbols)(*X.T), (X.shape[0],))
    np.testing.assert_allclose(k.value(X), ref_value, rtol=1e-10, atol=1e-12)
    grad = k.gradient(X)
    assert grad.shape == X.shape
    # central differences, away from kinks: compare where the two one-sided slopes agree
    lo = np.array([b[0] for b in case.box.values()])
    hi = np.array([b[1] for b in case.box.values()])
    for j in range(X.shape[1]):
        h = 1e-6 * (hi[j] - lo[j])
        Xp, Xm = X.copy(), X.copy()
        Xp[:, j] += h
        Xm[:, j] -= h
        fd = (k.value(Xp) - k.value(Xm)) / (2 * h)
        fwd = (k.value(Xp) - k.value(X)) / h
        bwd = (k.value(X) - k.value(Xm)) / h
        smooth = np.abs(fwd - bwd) <= 1e-3 * (1 + np.abs(fd))
        np.testing.assert_allclose(grad[smooth, j], fd[smooth], rtol=1e-4, atol=1e-5 * (1 + np.abs(fd[smooth]).max()))
    np.testing.assert_allclose(k.gradient_norm(X), np.linalg.norm(grad, axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k.gradient_norm(X, norm=1), np.abs(grad).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(k.gradient_norm(X, norm="inf"), np.abs(grad).max(axis=1), rtol=1e-12)


def test_bmi_closed_form_gradient_norm_is_the_papers():
    s = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    a, w, h = s.symbols()
    bmi = s.function(a * w / h**2)
    expected = sp.sqrt(4 * a**2 * w**2 + h**2 * (a**2 + w**2)) / h**3
    assert sp.simplify(bmi.gradient_norm(2) - expected) == 0
    assert bmi.partial("h") == -2 * a * w / h**3
    assert "\\sqrt" in sp.latex(bmi.gradient_norm())
    assert bmi.gradient_norm(1) == w / h**2 + a / h**2 + 2 * a * w / h**3


def test_kernel_accepts_dataframes_mappings_and_keywords():
    s = hd.Schema(x=(0, 1), y=(0, 1))
    x, y = s.symbols()
    k = s.function(hd.where(x > y, x - y, 0) + 3).compile(backend="numpy")
    df = pd.DataFrame({"y": [0.2, 0.9], "x": [0.5, 0.1], "other": ["a", "b"]})
    expected = np.array([3.3, 3.0])
    np.testing.assert_allclose(k.value(df), expected)
    np.testing.assert_allclose(k.value({"x": df.x.values, "y": df.y.values}), expected)
    np.testing.assert_allclose(k(x=df.x.values, y=df.y.values), expected)
    np.testing.assert_allclose(k.gradient(df), [[1.0, -1.0], [0.0, 0.0]])
    with pytest.raises(hd.DeclarationError, match="'y'"):
        k.value(pd.DataFrame({"x": [0.1]}))
    # a constant gradient still has one row per record
    g = s.function(2 * x + y).compile(backend="numpy").gradient(df)
    np.testing.assert_allclose(g, [[2.0, 1.0], [2.0, 1.0]])


def test_partial_evaluation_gives_a_smaller_kernel_and_its_own_certificate():
    s = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    a, w, h = s.symbols()
    bmi = s.function(a * w / h**2)
    tall = bmi.fix(h=2.0)
    assert tall.names == ["a", "w"]
    assert tall.expr.free_symbols == {tall.schema.symbol("a"), tall.schema.symbol("w")}
    X = _sample({"a": (18, 90), "w": (40, 200)})
    full = bmi.compile(backend="numpy").value(np.column_stack([X, np.full(len(X), 2.0)]))
    np.testing.assert_allclose(tall.compile(backend="numpy").value(X), full, rtol=1e-14)
    # certificate over the remaining box: sup ||(w, a)/4|| at a=90, w=200
    cert = tall.lipschitz()
    exact = np.hypot(200, 90) / 4
    assert exact <= cert.upper <= exact * 1.001
    assert cert.upper < bmi.lipschitz().upper
    with pytest.raises(hd.DeclarationError, match="outside its bounds"):
        bmi.fix(h=3.0)


def test_aot_cache_is_written_once_and_loaded_by_another_process(tmp_path):
    s = hd.Schema(x=(0, 1), y=(1, 2))
    x, y = s.symbols()
    f = s.function(sp.exp(-x * y) / y)
    first = f.compile(backend="numpy", cache=tmp_path)
    assert first.origin == "aot-write" and first.path.exists()
    script = textwrap.dedent(f"""
        import json, numpy as np, sympy as sp, opendp_hybridad as hd
        s = hd.Schema(x=(0, 1), y=(1, 2))
        x, y = s.symbols()
        k = s.function(sp.exp(-x * y) / y).compile(backend="numpy", cache={str(tmp_path)!r})
        print(json.dumps({{"origin": k.origin, "path": str(k.path),
                          "value": k.value(np.array([[0.5, 1.5]])).tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["origin"] == "aot-load"
    assert report["path"] == str(first.path)
    assert report["value"] == pytest.approx([np.exp(-0.75) / 1.5])
    # a different expression gets a different artefact
    other = s.function(sp.exp(-x * y) / y + 1).compile(backend="numpy", cache=tmp_path)
    assert other.origin == "aot-write" and other.path != first.path
    assert len([p for p in os.listdir(tmp_path) if p.endswith(".py")]) == 2


def test_traced_python_function_equals_the_symbolic_one():
    s = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))

    def adjusted(a, w, h):
        return np.where(a > 50, a * w / h**2, np.sqrt(a) * np.exp(-w / 100) + np.maximum(h, 1.8))

    f = s.function(adjusted)
    X = _sample({"a": (18, 90), "w": (40, 200), "h": (1.4, 2.2)})
    np.testing.assert_allclose(f.compile(backend="numpy").value(X), adjusted(*X.T), rtol=1e-12)
    record = s.function(lambda r: r["a"] * hd.sigmoid(r["w"] - 100))
    assert record.expr == s.a * hd.sigmoid(s.w - 100)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_clamped_equals_prepare_then_evaluate_then_clip(backend):
    from opendp_hybridad.frame import prepare_frame

    s = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=30), weight=hd.Field(40, 200),
                  height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
    a, w, h = s.symbols()
    f = s.function(a * w / h**2 - 500)
    rng = np.random.default_rng(3)
    n = 2000
    frame = pd.DataFrame({"age": rng.uniform(0, 120, n), "weight": rng.uniform(0, 300, n), "height": rng.uniform(0.5, 3, n)})
    frame.loc[rng.random(n) < 0.1, "age"] = np.nan
    frame.loc[rng.random(n) < 0.1, "height"] = np.nan
    frame.loc[rng.random(n) < 0.05, "age"] = np.inf
    frame.loc[rng.random(n) < 0.05, "height"] = -np.inf
    lo, hi = -300.0, 4000.0
    k = f.compile(backend=backend)
    columns = [frame[c].to_numpy().copy() for c in ("age", "weight", "height")]
    before = [c.copy() for c in columns]
    got = k.value_clamped(columns, lo, hi)
    prepared = prepare_frame(frame, s)
    expected = np.clip(f.compile(backend="numpy").value(prepared.columns), lo, hi)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    for c, b in zip(columns, before, strict=True):  # inputs untouched
        np.testing.assert_array_equal(c, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_functions_give_one_value_per_record(backend):
    s = hd.Schema(x=(0, 1), y=(0, 1))
    k = s.function(s.x * 0 + 2).compile(backend=backend)
    cols = [np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.5, 0.5])]
    np.testing.assert_array_equal(k.value_clamped(cols, 0.0, 5.0), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(k.value(np.column_stack(cols)), [2.0, 2.0, 2.0])
