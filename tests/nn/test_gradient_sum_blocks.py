"""The clipped gradient sum over blocks of rows, written in place (nn/sequential.py, nn/parts/dense.py), against an
independent numpy reference: per-example gradients of a tanh MLP with softmax cross-entropy written out here, clipped
and summed one example at a time.

Tolerances hold for any summation order (any BLAS, block size or thread count): each entry is compared within
``1e-10`` of the sum of the absolute values of its terms. No timing is asserted.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts import dense as dense_module
from opendp_hybridad.nn.sequential import Sequential

WIDTHS = [(3, 2), (6, 9, 4), (17, 33, 8, 5)]
RTOL = 1e-10


def _model(widths: tuple[int, ...]) -> MLP:
    layers = [Dense(i, o, 1.0, 1.0) for i, o in itertools.pairwise(widths)]
    return MLP(layers, [Tanh()] * (len(layers) - 1) + [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)


def _data(model: MLP, widths: tuple[int, ...], batch: int, seed: int):
    rng = np.random.default_rng(seed)
    params = model.init(rng)
    # biases away from 0, so the bias gradients are exercised too
    params = [(W * 3.0, rng.uniform(-0.5, 0.5, b.shape)) for W, b in params]
    x = rng.uniform(-1.0, 1.0, (batch, widths[0]))
    y = rng.integers(0, widths[-1], batch)
    return params, x, y


def _reference_rows(params, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Per-example flat gradients (one row per example, each layer's W row-major then b) and their |.|, by hand."""
    rows = []
    for xi, yi in zip(x, y, strict=True):
        acts = [xi]
        for k, (W, b) in enumerate(params):
            z = W @ acts[-1] + b
            acts.append(np.tanh(z) if k < len(params) - 1 else z)
        p = np.exp(acts[-1] - acts[-1].max())
        p /= p.sum()
        p[yi] -= 1.0
        delta, blocks = p, []
        for k in range(len(params) - 1, -1, -1):
            blocks.append((np.outer(delta, acts[k]).ravel(), delta.copy()))
            if k:
                delta = (params[k][0].T @ delta) * (1.0 - acts[k] ** 2)
        rows.append(np.concatenate([v for pair in blocks[::-1] for v in pair]))
    size = sum(W.size + b.size for W, b in params)
    return np.array(rows).reshape(len(rows), size), size


def _reference(params, x, y, clip: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``sum_i c_i g_i`` and ``sum_i |c_i g_i|`` (the scale of each entry's float error, for any order)."""
    rows, size = _reference_rows(params, x, y)
    if clip is not None:
        norms = np.sqrt((rows * rows).sum(axis=1))
        rows = rows * np.minimum(1.0, clip / np.maximum(norms, 1e-300))[:, None]
    return rows.sum(axis=0) if len(rows) else np.zeros(size), np.abs(rows).sum(axis=0) if len(rows) else np.zeros(size)


def _flat(views) -> np.ndarray:
    return np.concatenate([v.ravel() for pair in views for v in pair])


def _close(got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= RTOL * scale + 1e-300), np.max(np.abs(got - want) - RTOL * scale)


@pytest.fixture
def block_rows(monkeypatch):
    """Set the rows per block (at most) of every Sequential for one test."""

    def set_rows(rows: int) -> None:
        monkeypatch.setattr(Sequential, "_block_rows", lambda self: rows)

    return set_rows


@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("batch", [0, 1, 2, 7, 16, 17, 45])
@pytest.mark.parametrize("rows", [1, 3, 16, 1000])
@pytest.mark.parametrize("clipped", [False, True])
def test_blocked_sum_is_the_reference_sum(widths, batch, rows, clipped, block_rows):
    block_rows(rows)
    model = _model(widths)
    params, x, y = _data(model, widths, batch, seed=batch + 31 * rows)
    clip = None
    if clipped:
        norms = model.per_example_norms(params, x, y)
        clip = float(np.median(norms)) if batch else 1.0  # about half the rows clipped
    want, scale = _reference(params, x, y, clip)
    # into garbage, so that the first block must overwrite what was there
    out = np.full(model.num_parameters, np.nan)
    views = model.gradient_sum(params, x, y, clip=clip, out=out)
    _close(out, want, scale)
    _close(_flat(views), want, scale)
    assert all(np.shares_memory(v, out) for pair in views for v in pair)  # views of out
    _close(_flat(model.gradient_sum(params, x, y, clip=clip)), want, scale)  # out=None: a fresh array


@pytest.mark.parametrize("widths", WIDTHS)
def test_every_block_count_gives_the_single_block_sum(widths, block_rows):
    model = _model(widths)
    params, x, y = _data(model, widths, 23, seed=5)
    clip = float(np.median(model.per_example_norms(params, x, y)))
    block_rows(10_000)
    single = model.gradient_sum(params, x, y, clip=clip, out=np.empty(model.num_parameters))
    single = _flat(single).copy()
    _, scale = _reference(params, x, y, clip)
    for rows in (1, 2, 5, 11, 12, 22, 23):
        block_rows(rows)
        _close(_flat(model.gradient_sum(params, x, y, clip=clip)), single, scale)


def test_the_default_blocks_cover_a_wide_model_batch(monkeypatch):
    """The rule's own block size on a wide model: several blocks, the sum still the reference's."""
    widths = (40, 300, 20, 3)
    model = _model(widths)
    monkeypatch.setattr("opendp_hybridad.nn.sequential._BLOCK_BYTES", 8 * 64 * sum(widths))  # small blocks, many of them
    rows = model._seq._block_rows()
    batch = 3 * rows + 5
    params, x, y = _data(model, widths, batch, seed=2)
    assert len(Sequential._blocks(batch, rows)) >= 3
    for clip in (None, 0.05):
        want, scale = _reference(params, x, y, clip)
        _close(_flat(model.gradient_sum(params, x, y, clip=clip)), want, scale)


@pytest.mark.parametrize("batch, most", [(1, 1), (1, 5), (5, 5), (6, 5), (10, 5), (11, 5), (1024, 272), (256, 159), (1000, 1)])
def test_blocks_are_equal_and_cover_the_batch(batch, most):
    blocks = Sequential._blocks(batch, most)
    assert blocks[0][0] == 0 and blocks[-1][1] == batch
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) <= most and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert len(blocks) == -(-batch // most)


def _delta_and_x(rng, rows: int, out: int, inp: int):
    return rng.standard_normal((rows, out)), rng.uniform(-1.0, 1.0, (rows, inp))


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (33, 17)])
def test_dense_accumulate_first_then_later_blocks(shape):
    """The first block writes over what was there; later blocks (gemm with beta = 1) add theirs: the product of all rows."""
    out_f, in_f = shape
    layer = Dense(in_f, out_f)
    rng = np.random.default_rng(3)
    parts = [_delta_and_x(rng, rows, out_f, in_f) for rows in (5, 1, 8, 3)]
    delta = np.concatenate([d for d, _ in parts])
    x = np.concatenate([a for _, a in parts])
    want_W = sum(np.outer(d, a) for d, a in zip(delta, x, strict=True))
    scale_W = sum(np.abs(np.outer(d, a)) for d, a in zip(delta, x, strict=True))
    flat = np.full(out_f * in_f + out_f, np.nan)
    gW, gb = flat[:out_f * in_f].reshape(out_f, in_f), flat[out_f * in_f:]
    for k, (d, a) in enumerate(parts):
        layer.accumulate((None, None), a, None, d, (gW, gb), k == 0)
        if k == 0:
            _close(gW, d.T @ a, np.abs(d).T @ np.abs(a))  # the first block alone, garbage overwritten
    _close(gW, want_W, scale_W)
    _close(gb, delta.sum(axis=0), np.abs(delta).sum(axis=0))
    # one block of all the rows: the same sum
    flat2 = np.full_like(flat, np.nan)
    layer.accumulate((None, None), x, None, delta, (flat2[:out_f * in_f].reshape(out_f, in_f), flat2[out_f * in_f:]), True)
    _close(flat2, flat, np.concatenate([scale_W.ravel(), np.abs(delta).sum(axis=0)]))


def test_later_blocks_with_other_layouts_and_another_matmul(monkeypatch):
    """Inputs that are not C-contiguous float64 (the in-place gemm refuses them) and a ``_matmul`` put in by tests give the same sums."""
    rng = np.random.default_rng(4)
    layer = Dense(6, 4)
    d1, x1 = _delta_and_x(rng, 7, 4, 6)
    d2, x2 = _delta_and_x(rng, 9, 4, 6)
    x2 = x2.astype(np.float32).astype(np.float64)  # exact in float32 too
    want = d1.T @ x1 + d2.T @ x2
    scale = np.abs(d1).T @ np.abs(x1) + np.abs(d2).T @ np.abs(x2)
    variants = [(d2, x2), (np.asfortranarray(d2), x2), (d2, np.asfortranarray(x2)), (d2, x2.astype(np.float32)),
                (np.ascontiguousarray(d2[:, ::-1])[:, ::-1], x2)]
    for d, x in variants:
        gW, gb = np.empty((4, 6)), np.empty(4)
        layer.accumulate((None, None), x1, None, d1, (gW, gb), True)
        layer.accumulate((None, None), x, None, d, (gW, gb), False)
        _close(gW, want, scale)
    # a gradient array that is not C-contiguous: refused by the in-place gemm, added through a temporary
    g = np.empty((6, 4)).T
    assert not dense_module._add_product(g, d2, x2)
    layer.accumulate((None, None), x1, None, d1, (g, np.empty(4)), True)
    layer.accumulate((None, None), x2, None, d2, (g, np.empty(4)), False)
    _close(g, want, scale)
    # another summation order put in place of the product (as tests of the forward error do)
    monkeypatch.setattr(dense_module, "_matmul", lambda a, b: np.einsum("ij,jk->ik", a, b))
    gW = np.empty((4, 6))
    layer.accumulate((None, None), x1, None, d1, (gW, np.empty(4)), True)
    layer.accumulate((None, None), x2, None, d2, (gW, np.empty(4)), False)
    _close(gW, want, scale)


def test_in_place_gemm_writes_into_the_given_array():
    """``_add_product`` updates the array it is given (no copy handed back): a view into a flat vector sees the sum."""
    rng = np.random.default_rng(6)
    d, x = _delta_and_x(rng, 12, 5, 7)
    flat = rng.standard_normal(5 * 7 + 3)
    before = flat.copy()
    g = flat[3:].reshape(5, 7)
    assert dense_module._add_product(g, d, x)
    _close(flat[3:].reshape(5, 7), before[3:].reshape(5, 7) + d.T @ x, np.abs(before[3:].reshape(5, 7)) + np.abs(d).T @ np.abs(x))
    assert np.array_equal(flat[:3], before[:3])  # nothing outside the view moved


def test_clipping_leaves_a_shared_delta_consistent():
    """Two parts with parameters in a row (dense, dense): each delta scaled once, whatever arrays the pass shares."""
    widths = (5, 6, 3)
    layers = [Dense(5, 6), Dense(6, 3)]
    seq = Sequential([layers[0], Identity(), layers[1], Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    mlp = MLP(layers, [Identity(), Identity()], SoftmaxCrossEntropy(), input_bound=1.0)
    rng = np.random.default_rng(8)
    params = [(W * 4.0, b) for W, b in mlp.init(rng)]
    x = rng.uniform(-1.0, 1.0, (9, widths[0]))
    y = rng.integers(0, 3, 9)
    clip = float(np.median(mlp.per_example_norms(params, x, y)))
    rows = np.array([np.concatenate([v.ravel() for pair in mlp.per_example_gradients(params, x[i:i + 1], y[i:i + 1])
                                     for v in pair]) for i in range(9)])
    norms = np.sqrt((rows * rows).sum(axis=1))
    clipped = rows * np.minimum(1.0, clip / norms)[:, None]
    got = seq.gradient_sum([params[0], (), params[1], ()], x, y, clip=clip)
    _close(_flat(got), clipped.sum(axis=0), np.abs(clipped).sum(axis=0))
