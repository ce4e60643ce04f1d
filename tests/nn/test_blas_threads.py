"""Which gradient sums run BLAS on one thread: the small products only (a rule on public shapes)."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np

from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn import sequential


def _mlp(widths: tuple[int, ...]) -> MLP:
    layers = [Dense(i, o, 1.0, 1.0) for i, o in itertools.pairwise(widths)]
    return MLP(layers, [Tanh()] * (len(layers) - 1) + [Identity()], SoftmaxCrossEntropy(), input_bound=1.0)


def test_small_products_run_on_one_blas_thread_and_large_ones_on_the_callers(monkeypatch):
    limited = []

    @contextlib.contextmanager
    def recording():
        limited.append(True)
        yield

    monkeypatch.setattr(sequential, "_one_blas_thread", recording)
    rng = np.random.default_rng(0)
    for widths, rows, expect_limited in (((64, 128, 10), 256, True), ((784, 256, 10), 256, False), ((64, 128, 10), 512, False)):
        model = _mlp(widths)
        params = model.init(rng)
        x, y = rng.uniform(-1, 1, (rows, widths[0])), rng.integers(0, widths[-1], rows)
        limited.clear()
        model.gradient_sum(params, x, y, clip=1.0)
        block = model._seq._blocks(rows, model._seq._block_rows())[0]
        product = (block[1] - block[0]) * model.num_parameters
        assert bool(limited) == expect_limited == (product < sequential._THREADED_PRODUCT), (widths, rows, product)
