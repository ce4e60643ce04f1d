"""Kernel backends for sums: numba's compiled loop, and ``backend="auto"``'s calibrated choice.

What a sum's stability map needs from a backend, checked on every installed one: each record's
value lies in the certified range and does not depend on where the record sits or on the other
records (so two neighbouring datasets give their common records the same values). The maps are
the same bit for bit on every backend, and the released pre-noise sums agree with a brute-force
clamped sum from sympy's own lambdify (no code of ours) within the float relaxation.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest
import sympy as sp
from suite import CASES, function_of

import opendp_hybridad as hd
from opendp_hybridad.compile import kernel as kernel_module
from opendp_hybridad.compile.codegen import numba_unsupported
from opendp_hybridad.compile.kernel import available_backends, backend_choice, calibrate
from opendp_hybridad.frame import feature_distance, make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of, sum_relaxation
from opendp_hybridad.frame.measurements import make_private_mean, make_private_sum

BACKENDS = available_backends()
HAS_NUMBA = "numba" in BACKENDS
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")


@pytest.fixture(autouse=True)
def unpinned(monkeypatch):
    """The suite pins backend="auto" (conftest.py); these tests are about what it does unpinned."""
    monkeypatch.delenv(kernel_module.BACKEND_ENV, raising=False)
    monkeypatch.setattr(kernel_module, "_choices", {})


def _columns(box: dict, n: int, seed: int) -> list[np.ndarray]:
    """Values inside and outside the box, and the infinities."""
    rng = np.random.default_rng(seed)
    cols = []
    for lo, hi in box.values():
        width = hi - lo
        c = rng.uniform(lo - 0.5 * width, hi + 0.5 * width, n)
        c[rng.random(n) < 0.03] = np.inf
        c[rng.random(n) < 0.03] = -np.inf
        cols.append(c)
    return cols


def _reference_clamped(f: hd.RecordFunction, cols: list[np.ndarray], lo: float, hi: float) -> np.ndarray:
    """sympy.lambdify on the inputs clamped to the box, clamped to [lo, hi], NaN to lo: independent of our codegen."""
    fn = sp.lambdify(list(f.symbols), f.expr, modules=[{"sigmoid": lambda x: 1 / (1 + np.exp(-x)),
                                                         "softplus": lambda x: np.logaddexp(0, x)}, "numpy"])
    clamped = [np.clip(c, fld.lower, fld.upper) for c, fld in zip(cols, f.schema.fields.values(), strict=True)]
    with np.errstate(all="ignore"):
        v = np.broadcast_to(np.asarray(fn(*clamped), dtype=float), (cols[0].shape[0],)).copy()
    v = np.clip(v, lo, hi)
    v[np.isnan(v)] = lo
    return v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_record_gets_the_same_value_wherever_it_sits(case, backend):
    f = function_of(case)
    k = f.compile(backend=backend)
    rng = f.range()
    lo, hi = float(rng.lower), float(rng.upper)
    cols = _columns(case.box, 301, seed=1)
    with np.errstate(all="ignore"):
        batch = k.value_clamped(cols, lo, hi)
        alone = np.array([k.value_clamped([c[i:i + 1] for c in cols], lo, hi)[0] for i in range(len(batch))])
        order = np.random.default_rng(2).permutation(len(batch))
        shuffled = k.value_clamped([c[order] for c in cols], lo, hi)
        longer = k.value_clamped([np.concatenate([c[::-1], c]) for c in cols], lo, hi)[len(batch):]
    assert np.all((lo <= batch) & (batch <= hi))  # in the certified range, never NaN
    np.testing.assert_array_equal(alone, batch)  # bit for bit: the sum's map relies on it
    np.testing.assert_array_equal(shuffled, batch[order])
    np.testing.assert_array_equal(longer, batch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_clamped_values_match_an_independent_reference(case, backend):
    f = function_of(case)
    rng = f.range()
    lo, hi = float(rng.lower), float(rng.upper)
    cols = _columns(case.box, 2000, seed=3)
    with np.errstate(all="ignore"):
        got = f.compile(backend=backend).value_clamped(cols, lo, hi)
    expected = _reference_clamped(f, cols, lo, hi)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12 * max(1.0, abs(lo), abs(hi)))


@needs_numba
def test_numba_imputes_like_the_other_backends_and_leaves_inputs_alone():
    s = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=30), weight=hd.Field(40, 200),
                  height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
    a, w, h = s.symbols()
    f = s.function(a * w / h**2 - 500)
    rng = np.random.default_rng(5)
    n = 3000
    cols = [rng.uniform(0, 120, n), rng.uniform(0, 300, n), rng.uniform(0.5, 3, n)]
    cols[0][rng.random(n) < 0.1] = np.nan
    cols[2][rng.random(n) < 0.1] = np.nan
    before = [c.copy() for c in cols]
    numba_values = f.compile(backend="numba").value_clamped(cols, -300.0, 4000.0)
    numpy_values = f.compile(backend="numpy").value_clamped(cols, -300.0, 4000.0)
    imputed = [np.where(np.isnan(cols[0]), 30.0, cols[0]), cols[1], np.where(np.isnan(cols[2]), 1.7, cols[2])]
    np.testing.assert_allclose(numba_values, _reference_clamped(f, imputed, -300.0, 4000.0), rtol=1e-13)
    np.testing.assert_array_equal(numba_values, numpy_values)  # the same IEEE operations here
    for c, b in zip(cols, before, strict=True):
        np.testing.assert_array_equal(c, b)
    # read-only, strided and integer columns are read as they are
    frozen = [c.copy() for c in imputed]
    for c in frozen:
        c.flags.writeable = False
    np.testing.assert_array_equal(f.compile(backend="numba").value_clamped(frozen, -300.0, 4000.0), numba_values)
    strided = [np.repeat(c, 2)[::2] for c in imputed]
    np.testing.assert_array_equal(f.compile(backend="numba").value_clamped(strided, -300.0, 4000.0), numba_values)
    ints = [np.arange(20, 30), np.arange(50, 60), np.full(10, 2)]
    np.testing.assert_array_equal(f.compile(backend="numba").value_clamped(ints, -300.0, 4000.0),
                                  f.compile(backend="numpy").value_clamped([c.astype(float) for c in ints], -300.0, 4000.0))
    assert f.compile(backend="numba").value_clamped([np.empty(0)] * 3, -300.0, 4000.0).shape == (0,)


@needs_numba
def test_numba_is_refused_where_a_record_could_depend_on_its_position(monkeypatch):
    import numba

    x, y = sp.symbols("x y")
    # Intel SVML vectorises exp differently from the scalar remainder of a loop: refused, exact operations kept
    assert numba_unsupported(sp.exp(x) * y, using_svml=True) is not None
    assert numba_unsupported(x**0.3 * y, using_svml=True) is not None
    assert numba_unsupported(sp.sqrt(x**2 + y**2) + sp.Abs(x) + sp.Max(x, y) + x**-3, using_svml=True) is None
    assert numba_unsupported(sp.exp(x) * y, using_svml=False) is None
    assert "gamma" in numba_unsupported(sp.gamma(x), using_svml=False)  # no scalar form
    # where numba uses SVML, a function with exp is refused by name and "auto" goes on without numba
    monkeypatch.setattr(numba.config, "USING_SVML", True, raising=False)
    s = hd.Schema(x=(1, 2))
    f = s.function(s.x * hd.exp(-s.x))
    with pytest.raises(hd.DeclarationError, match="numba"):
        f.compile(backend="numba")
    choice = calibrate(f, loaded=True)
    assert choice.backend == "numpy" and "SVML" in choice.refused["numba"]
    assert s.function(s.x * s.x).compile(backend="numba").backend == "numba"


def test_calibration_times_every_candidate_and_picks_the_fastest():
    s = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    f = s.function(s.a * s.w / s.h**2)
    choice = calibrate(f, loaded=False, rows=4096, rounds=2)
    assert choice.reason == "calibrated"
    assert set(choice.seconds) == set(BACKENDS)
    assert choice.backend == min(choice.seconds, key=choice.seconds.get)
    loaded = calibrate(f, loaded=True)
    assert loaded.reason == "loaded" and loaded.seconds == {}
    assert loaded.backend == ("numba" if HAS_NUMBA else "numpy")  # single-threaded: never numexpr


def test_auto_is_chosen_once_per_function_and_can_be_pinned(monkeypatch):
    s = hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2))
    f = s.function(s.a * s.w / s.h**2 + 1)
    calls = []
    real = kernel_module.calibrate
    monkeypatch.setattr(kernel_module, "calibrate", lambda fn, **kw: calls.append(fn) or real(fn, loaded=True))
    first = backend_choice(f)
    again = backend_choice(s.function(s.a * s.w / s.h**2 + 1))  # an equal function: the same fingerprint
    assert first is again and len(calls) == 1
    assert f.compile().backend == first.backend
    monkeypatch.setenv(kernel_module.BACKEND_ENV, "numpy")
    pinned = backend_choice(f)
    assert (pinned.backend, pinned.reason) == ("numpy", "pinned")
    monkeypatch.setenv(kernel_module.BACKEND_ENV, "fortran")
    with pytest.raises(hd.DeclarationError, match="backend must be"):
        backend_choice(f)


SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=30), weight=hd.Field(40, 200, missing="drop"),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
A, W, H = SCHEMA.symbols()
FUNCTIONS = {"bmi": A * W / H**2, "with exp": A * sp.exp(-W / 100) - sp.sqrt(H),
             "where": hd.where(A > 50, A * W / H**2, 50 * W / H**2 + (A - 50) / 10)}  # continuous at 50


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.uniform(10, 95, n), "weight": rng.uniform(35, 210, n), "height": rng.uniform(1.3, 2.3, n)})
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    frame.loc[rng.random(n) < 0.05, "weight"] = np.nan
    frame.loc[rng.random(n) < 0.02, "height"] = np.inf
    return frame


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_maps_are_the_same_on_every_backend_and_auto(name):
    f = SCHEMA.function(FUNCTIONS[name])
    domain = make_frame_domain(SCHEMA, size_limit=10**6)
    for metric, distances in ((dp.symmetric_distance(), range(0, 40)), (dp.change_one_distance(), range(0, 40)),
                              (feature_distance(2), [0.0, 1e-3, 0.5, 3.0])):
        maps = {b: make_sum_of(domain, metric, f, backend=b) for b in [*BACKENDS, "auto"]}
        for d in distances:
            assert len({t.map(d) for t in maps.values()}) == 1
    sums = {b: make_private_sum(domain, f, epsilon=1.0, backend=b) for b in [*BACKENDS, "auto"]}
    means = {b: make_private_mean(domain, f, rho=0.5, backend=b) for b in [*BACKENDS, "auto"]}
    for d in range(0, 20):
        assert len({m.map(d) for m in sums.values()}) == 1
        assert len({m.map(d) for m in means.values()}) == 1


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_pre_noise_sums_are_the_brute_force_clamped_sum_on_every_backend(name):
    f = SCHEMA.function(FUNCTIONS[name])
    n = 20_000
    frame = _frame(n, seed=7)
    domain = make_frame_domain(SCHEMA, size_limit=n)
    rng = f.range()
    lo, hi = float(rng.lower), float(rng.upper)
    kept = frame["weight"].notna().to_numpy()
    raw = [frame[c].to_numpy()[kept] for c in ("age", "weight", "height")]
    imputed = [np.where(np.isnan(raw[0]), 30.0, raw[0]), raw[1], np.where(np.isnan(raw[2]), 1.7, raw[2])]
    brute = math.fsum(_reference_clamped(f, imputed, lo, hi))
    max_abs = max(abs(lo), abs(hi))
    # pairwise summation's error (half the two-sided relaxation) and a few ulps per record for evaluation order
    tolerance = sum_relaxation(n, max_abs) / 2 + n * 8 * np.finfo(float).eps * max_abs
    sums = {b: make_sum_of(domain, dp.symmetric_distance(), f, backend=b)(frame) for b in [*BACKENDS, "auto"]}
    for backend, total in sums.items():
        assert abs(total - brute) <= tolerance, backend


@needs_numba
def test_numba_kernel_through_the_ahead_of_time_cache_in_another_process(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import json, numpy as np
        import opendp_hybridad as hd
        s = hd.Schema(a=(18, 90), w=(40, 200), h=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
        f = s.function(s.a * s.w / s.h**2 + hd.exp(-s.a / 10))
        k = f.compile(backend="numba", cache={str(tmp_path)!r})
        cols = [np.array([20.0, 100.0, 50.0]), np.array([50.0, 300.0, 60.0]), np.array([np.nan, 1.0, 1.8])]
        print(json.dumps([k.origin, k.value_clamped(cols, 0.0, 1e4).tolist()]))
    """)
    runs = [json_line(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]
    assert [r[0] for r in runs] == ["aot-write", "aot-load"]
    assert runs[0][1] == runs[1][1]
    s = hd.Schema(a=(18, 90), w=(40, 200), h=hd.Field(1.4, 2.2, missing="impute", impute=1.7))
    here = s.function(s.a * s.w / s.h**2 + hd.exp(-s.a / 10)).compile(backend="numba")
    cols = [np.array([20.0, 100.0, 50.0]), np.array([50.0, 300.0, 60.0]), np.array([np.nan, 1.0, 1.8])]
    assert here.value_clamped(cols, 0.0, 1e4).tolist() == runs[0][1]


def json_line(text: str) -> list:
    import json

    return json.loads(text.strip().splitlines()[-1])
