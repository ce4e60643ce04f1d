"""The compiled per-layer update (``Dense.apply_flat_step`` / ``MLP.apply_step``) against the careful path.

The careful path is ``Dense.project`` of the plain numpy update ``W - scale * step``. The fast
path must give the same weights (bit for bit, except that a ball's shrink factor may differ in
the last bit because the sum of squares is added in another order), land inside the certified
set by an exact check in rationals, and send NaN or infinite updates to the careful path.
Each check is also run against deliberately broken kernels (``test_the_checks_catch_*``), so a
check that could not fail would show up there.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts import dense as dense_module

pytest.importorskip("numba")


def _careful(layer: Dense, W: np.ndarray, b: np.ndarray, step: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``project`` of the plain numpy update: the reference the fast path must match."""
    return layer.project(W - scale * step[:W.size].reshape(W.shape), b - scale * step[W.size:W.size + b.size])


def _exactly_inside(layer: Dense, W: np.ndarray, b: np.ndarray) -> bool:
    """Inside the certified set, by exact rational arithmetic (no float rounding in the check)."""
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        return False
    if not all(abs(Fraction(float(v))) <= Fraction(layer.bias_bound) for v in b):
        return False
    if layer.norm_ball:
        return sum(Fraction(float(v)) ** 2 for v in W.ravel()) <= Fraction(layer.weight_bound) ** 2
    return all(abs(Fraction(float(v))) <= Fraction(layer.weight_bound) for v in W.ravel())


def _shrink_slack(size: int) -> float:
    """How far two shrink factors from float sums of ``size`` squares in different orders can be apart, relative.

    Each sum is within ``gamma_size`` of the exact one (Higham 2002, 3.1), so the norms within
    about ``size u`` and the factors, rounded a few times, within that plus a few units of roundoff.
    """
    return size * 2.0**-53 + 8 * 2.0**-52


def _check_step(layer: Dense, W: np.ndarray, b: np.ndarray, step: np.ndarray, scale: float) -> None:
    """The fast path's weights: the careful path's (the documented last-bit slack for a ball's shrink), exactly inside."""
    fast_W, fast_b = layer.apply_flat_step(W, b, step, 0, scale, True)
    ref_W, ref_b = _careful(layer, W, b, step, scale)
    assert fast_W.shape == W.shape and fast_b.shape == b.shape
    np.testing.assert_array_equal(fast_b, ref_b)  # the bias box: np.clip's result exactly
    if layer.norm_ball:
        # plain * shrink with factors that may differ in their last bits (the sums' orders differ)
        np.testing.assert_allclose(fast_W, ref_W, rtol=_shrink_slack(W.size), atol=0)
    else:
        np.testing.assert_array_equal(fast_W, ref_W)
    assert _exactly_inside(layer, fast_W, fast_b)


def _cases(norm_ball: bool, seed: int = 3):
    """(layer, W, b, step, scale): updates that stay inside, leave on some arrays, leave far; a ball at its radius."""
    rng = np.random.default_rng(seed)
    layer = Dense(37, 23, 0.3, 0.05, norm_ball=norm_ball)
    W = rng.normal(0, 0.004, (23, 37))
    b = rng.normal(0, 0.004, 23)
    for scale in (1e-5, 0.02, 0.5, 30.0):
        yield layer, W, b, rng.normal(0, 1, 23 * 37 + 23), scale
    if norm_ball:  # on the sphere itself, nudged outward by a hair: the shrink factor's margins are what keep it in
        on_sphere = rng.normal(0, 1, (23, 37))
        on_sphere *= 0.3 / np.linalg.norm(on_sphere)
        yield layer, on_sphere, np.zeros(23), np.concatenate([-on_sphere.ravel(), np.zeros(23)]), 1e-12


@pytest.mark.parametrize("norm_ball", [True, False])
def test_the_fast_path_gives_the_careful_paths_weights_inside_the_set(norm_ball):
    for layer, W, b, step, scale in _cases(norm_ball):
        _check_step(layer, W, b, step, scale)


def test_without_a_shrink_the_fast_path_is_bit_for_bit_the_plain_update():
    rng = np.random.default_rng(4)
    layer = Dense(20, 8, 1.0, 1.0, norm_ball=True)
    W, b, step = rng.normal(0, 0.01, (8, 20)), rng.normal(0, 0.01, 8), rng.normal(0, 1, 168)
    fast_W, fast_b = layer.apply_flat_step(W, b, step, 0, 1e-3, True)
    np.testing.assert_array_equal(fast_W, W - 1e-3 * step[:160].reshape(8, 20))
    np.testing.assert_array_equal(fast_b, b - 1e-3 * step[160:])


@pytest.mark.parametrize(("radius", "entry", "size"), [(3e-162, 1.5e-162, 100), (1e-300, 1e100, 4), (1e-30, 1e300, 4),
                                                       (0.05, 0.05, 8192)])
def test_the_fast_path_lands_inside_the_ball_at_extreme_scales(radius, entry, size):
    """Squares that underflow, that overflow (the careful path), and a large layer far outside: exact rational checks."""
    layer = Dense(size, 1, radius, 1.0, norm_ball=True)
    W = np.full((1, size), entry)
    for scale in (0.0, 1e-3):
        step = np.concatenate([np.linspace(-entry, entry, size), [0.5]])
        fast_W, fast_b = layer.apply_flat_step(W, np.zeros(1), step, 0, scale, True)
        assert _exactly_inside(layer, fast_W, fast_b)
        ref_W, ref_b = _careful(layer, W, np.zeros(1), step, scale)
        np.testing.assert_allclose(fast_W, ref_W, rtol=_shrink_slack(size), atol=0)
        np.testing.assert_array_equal(fast_b, ref_b)


@pytest.mark.parametrize("norm_ball", [True, False])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e308])
def test_nan_and_infinite_updates_take_the_careful_path(norm_ball, bad):
    """A NaN or infinite entry (or squares that overflow) in the weights or the bias: exactly project's answer."""
    rng = np.random.default_rng(5)
    layer = Dense(6, 4, 0.5, 0.25, norm_ball=norm_ball)
    W, b = rng.normal(0, 0.01, (4, 6)), rng.normal(0, 0.01, 4)
    for where in (3, 26):  # an entry of W, an entry of b
        step = rng.normal(0, 1, 28)
        step[where] = bad
        fast_W, fast_b = layer.apply_flat_step(W, b, step, 0, 2.0, True)
        with np.errstate(over="ignore"):
            ref_W, ref_b = _careful(layer, W, b, step, 2.0)
        np.testing.assert_array_equal(fast_W, ref_W)
        np.testing.assert_array_equal(fast_b, ref_b)
        assert _exactly_inside(layer, fast_W, fast_b)


def _mlp(norm_ball: bool) -> MLP:
    return MLP([Dense(12, 9, 0.2, 0.05, norm_ball=norm_ball), Dense(9, 3, 0.2, 0.05, norm_ball=norm_ball)],
               [Tanh(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)


@pytest.mark.parametrize("norm_ball", [True, False])
def test_mlp_apply_step_is_the_per_part_update(norm_ball):
    """MLP's layer-by-layer loop gives Sequential's per-part update (offsets, order, layouts) bit for bit."""
    model = _mlp(norm_ball)
    rng = np.random.default_rng(6)
    params = model.init(rng)
    params = [(np.asfortranarray(params[0][0]), params[0][1]), params[1]]  # any memory layout
    for scale in (1e-4, 0.3, 50.0):
        step = rng.normal(0, 1, model.num_parameters)
        fast = model.apply_step(params, step, scale)
        per_part = model._dense(model._seq.apply_step(model._seq_params(params), step, scale, True))
        for (fW, fb), (pW, pb), layer in zip(fast, per_part, model.layers, strict=True):
            np.testing.assert_array_equal(fW, pW)
            np.testing.assert_array_equal(fb, pb)
            assert _exactly_inside(layer, fW, fb)
        plain = model.apply_step(params, step, scale, project=False)
        np.testing.assert_array_equal(plain[1][0], params[1][0] - scale * step[117:144].reshape(3, 9))


def test_a_subclass_with_its_own_update_keeps_it_in_an_mlp():
    """SpectralDense (a spectral ball, its own apply_step and project): MLP's loop must not take Dense's kernel."""
    from opendp_hybridad.nn.parts.lipschitz import SpectralDense

    model = MLP([SpectralDense(8, 6, 0.5, 0.1), Dense(6, 2, 0.2, 0.05, norm_ball=True)], [Tanh(), Identity()],
                SoftmaxCrossEntropy(), input_bound=1.0)
    rng = np.random.default_rng(8)
    params = model.init(rng)
    step = rng.normal(0, 1, model.num_parameters)
    (sW, sb), (dW, db) = model.apply_step(params, step, 2.0)
    eW, eb = model.layers[0].apply_step(*params[0], step[:48], step[48:54], 2.0, True)
    np.testing.assert_array_equal(sW, eW)
    np.testing.assert_array_equal(sb, eb)
    assert np.linalg.norm(sW, 2) <= 0.5  # its spectral ball (a Frobenius-ball shrink would leave it elsewhere)
    _check_step(model.layers[1], params[1][0], params[1][1], step[54:], 2.0)
    fW, fb = model.layers[1].apply_flat_step(*params[1], step, 54, 2.0, True)
    np.testing.assert_array_equal(dW, fW)
    np.testing.assert_array_equal(db, fb)


def test_mlp_apply_step_refuses_a_short_step():
    model = _mlp(True)
    params = model.init(np.random.default_rng(7))
    with pytest.raises(ValueError):
        model.apply_step(params, np.zeros(model.num_parameters - 1), 0.1)


# -- the checks against deliberately broken kernels --------------------------------------------------------
def _python_update(W, b, step_W, step_b, scale, weight_clip, bias_clip, new_W, new_b, *, clip_bias=True,
                   squares_factor=1.0, hide_nan=False):
    """The kernel's contract in numpy, with switches that break it."""
    new_W[...] = W - scale * step_W.reshape(W.shape)
    new_b[...] = b - scale * step_b
    with np.errstate(over="ignore", invalid="ignore"):
        squares, squares_b = float(np.dot(new_W.ravel(), new_W.ravel())), float(np.dot(new_b, new_b))
    if hide_nan:  # broken: a non-finite update is clipped and reported finite
        squares, squares_b = 0.0, 0.0
    elif not (math.isfinite(squares) and math.isfinite(squares_b)):
        return squares, squares_b
    if weight_clip >= 0:
        np.clip(new_W, -weight_clip, weight_clip, out=new_W)
    if clip_bias:
        np.clip(new_b, -bias_clip, bias_clip, out=new_b)
    return squares * squares_factor, squares_b


def _scale(a, factor):
    a *= factor


def _broken(monkeypatch, update=_python_update, scale=_scale, **switches):
    def kernel(*args):
        return update(*args, **switches)

    monkeypatch.setattr(dense_module, "compiled_dense_update", lambda: (kernel, scale))


def test_the_checks_pass_on_the_kernels_contract_in_numpy(monkeypatch):
    _broken(monkeypatch)
    for norm_ball in (True, False):
        for case in _cases(norm_ball):
            _check_step(*case)


@pytest.mark.parametrize(("switches", "norm_ball"), [({"clip_bias": False}, True), ({"clip_bias": False}, False),
                                                     ({"squares_factor": 0.9}, True)])
def test_the_checks_catch_a_kernel_that_leaves_the_set(monkeypatch, switches, norm_ball):
    _broken(monkeypatch, **switches)
    with pytest.raises(AssertionError):
        for case in _cases(norm_ball):
            _check_step(*case)


def test_the_checks_catch_a_shrink_that_is_skipped(monkeypatch):
    _broken(monkeypatch, scale=lambda a, factor: None)
    with pytest.raises(AssertionError):
        for case in _cases(True):
            _check_step(*case)


@pytest.mark.parametrize("norm_ball", [True, False])
def test_the_checks_catch_nan_and_inf_kept_off_the_careful_path(monkeypatch, norm_ball):
    _broken(monkeypatch, hide_nan=True)
    with pytest.raises(AssertionError):
        test_nan_and_infinite_updates_take_the_careful_path(norm_ball, math.inf)


def test_the_update_projects_onto_the_layers_the_model_was_certified_with():
    # audit attack_dense_update.py: MLP kept the caller's list, and apply_step projected with it, so editing
    # the list afterwards (to build another model) changed what the first model projected onto
    layers = [Dense(3, 4, 1.0, 1.0), Dense(4, 2, 1.0, 1.0)]
    model = MLP(layers, [Tanh(), Identity()], SoftmaxCrossEntropy())
    layers[1] = Dense(4, 2, 100.0, 1.0)
    step = np.zeros(26)
    step[16:24] = 100 * np.array([-1, -1, -1, -1, 1, 1, 1, 1])
    new = model.apply_step([(np.zeros((4, 3)), np.zeros(4)), (np.zeros((2, 4)), np.zeros(2))], step, 1.0)
    assert np.abs(new[1][0]).max() <= 1.0
    assert model.layers[1].weight_bound == 1.0


def test_an_int_bound_past_2_53_is_kept_as_a_float_no_larger():
    # audit attack_dense_update.py: float(2**53 + 3) rounds up to 2^53 + 4, and weights clipped there left the set
    layer = Dense(1, 1, 2**53 + 3, 2**53 + 3)
    assert Fraction(layer.weight_bound) <= 2**53 + 3 and Fraction(layer.bias_bound) <= 2**53 + 3
    W, b = layer.apply_step(np.array([[2.0**53 + 6]]), np.array([2.0**53 + 6]), np.zeros(1), np.zeros(1), 1.0, True)
    assert Fraction(float(W[0, 0])) <= 2**53 + 3 and Fraction(float(b[0])) <= 2**53 + 3
    W2, b2 = layer.project(np.array([[2.0**53 + 6]]), np.array([2.0**53 + 6]))
    assert Fraction(float(W2[0, 0])) <= 2**53 + 3 and Fraction(float(b2[0])) <= 2**53 + 3


@pytest.mark.parametrize("dtype", [np.float32, np.longdouble, ">f8", np.float16])
def test_a_step_of_any_float_dtype_is_applied_in_float64_by_both_paths(dtype):
    layer = Dense(3, 1, 10.0, 10.0)
    W, b = np.array([[0.1, 0.2, 0.3]]), np.array([0.7])
    step = np.array([1 / 3, 1 / 7, 1 / 11, 1 / 13]).astype(dtype)
    fast = layer.update((W, b), step, 0.1, True)
    reference = (W - 0.1 * step[:3].astype(np.float64).reshape(1, 3), b - 0.1 * step[3:].astype(np.float64))
    assert np.array_equal(fast[0], reference[0]) and np.array_equal(fast[1], reference[1])
    careful = layer.apply_step(W, b, step[:3], step[3:], 0.1, False)
    assert np.array_equal(careful[0], reference[0]) and np.array_equal(careful[1], reference[1])


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_step_of_the_wrong_length_is_refused_by_every_path(delta, monkeypatch):
    model = MLP([Dense(5, 3, 0.5, 0.1), Dense(3, 2, 2.0, 1.0, norm_ball=True)], [Tanh(), Identity()], SoftmaxCrossEntropy())
    params = model.init(np.random.default_rng(0))
    step = np.zeros(model.num_parameters + delta)
    with pytest.raises(ValueError, match="parameters"):
        model.apply_step(params, step, 0.1)
    with pytest.raises(ValueError, match="parameters"):
        model._seq.apply_step(model._seq_params(params), step, 0.1)
