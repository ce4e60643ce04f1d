"""Which gradient sums keep the caller's BLAS threads: one block of large products (a rule on public shapes)."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh, sequential


def _mlp(widths: tuple[int, ...]) -> MLP:
    layers = [Dense(i, o, 1.0, 1.0) for i, o in itertools.pairwise(widths)]
    return MLP(layers, [Tanh()] * (len(layers) - 1) + [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)


def test_one_block_of_large_products_keeps_the_callers_threads_and_anything_else_runs_on_one(monkeypatch):
    limited = []

    @contextlib.contextmanager
    def recording():
        limited.append(True)
        yield

    monkeypatch.setattr(sequential, "_one_blas_thread", recording)
    rng = np.random.default_rng(0)
    for widths, rows, expect_limited in (((64, 128, 10), 256, True), ((784, 256, 10), 256, False), ((64, 128, 10), 512, False),
                                         ((784, 1024, 256, 10), 1024, True)):  # the last in several blocks
        model = _mlp(widths)
        params = model.init(rng)
        x, y = rng.uniform(-1, 1, (rows, widths[0])), rng.integers(0, widths[-1], rows)
        limited.clear()
        model.gradient_sum(params, x, y, clip=1.0)
        blocks = model._seq._blocks(rows, model._seq._block_rows())
        threaded = len(blocks) == 1 and rows * model.num_parameters >= sequential._THREADED_PRODUCT
        assert bool(limited) == expect_limited == (not threaded), (widths, rows, len(blocks))
