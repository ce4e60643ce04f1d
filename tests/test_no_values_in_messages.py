"""Issue 11: no data value ever appears in an exception message, a warning or a log record.

A sentinel is planted in every input path reachable with data: frame constructors and
``check_frame``, DP-SGD (``fit`` and the ``make_dp_sgd`` measurement) with bad features
and labels, and the CLI. Every exception message (with its chain), every warning and every
log record is collected and searched for the sentinel. DP-SGD used to raise
``ValueError: could not convert string to float: '123456.789x'``.
"""

from __future__ import annotations

import logging
import warnings
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

import opendp_hybridad as hd
from opendp_hybridad import frame as fr

SENTINELS = ("SENTINEL-8731", "123456.789", "123456,789", "1234567")


class Secret:
    """An object whose text is the sentinel (a message that formats it would leak)."""

    def __repr__(self) -> str:
        return "SENTINEL-8731"

    __str__ = __repr__

    def __float__(self) -> float:
        raise ValueError("SENTINEL-8731 cannot be a float")


#: values that each carry the sentinel one way or another
BAD_VALUES = ["SENTINEL-8731", "123456.789x", b"123456.789x", Secret(), Decimal("123456.789"), 1234567 * 10**20,
              complex(123456.789, 1), "123456.789"]


def _texts(exc: BaseException) -> list[str]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc)]
        # what a traceback shows: the cause, or the context unless suppressed (``raise ... from None``)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return out


def _run(fn, caplog) -> list[str]:
    """Everything ``fn`` says: its exception chain, warnings and log records."""
    texts: list[str] = []
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        try:
            fn()
        except (Exception, SystemExit) as exc:
            texts += _texts(exc)
    texts += [str(w.message) for w in caught]
    texts += [r.getMessage() for r in caplog.records]
    caplog.clear()
    return texts


def _assert_clean(texts: list[str]) -> None:
    for text in texts:
        for sentinel in SENTINELS:
            assert sentinel not in text, f"a data value leaked into: {text[:300]!r}"


# -- frames ---------------------------------------------------------------------------------------
def _schema():
    return hd.Schema(a=hd.Field(0, 10), b=hd.Field(0, 10, missing="impute", impute=1))


def _frames():
    for value in BAD_VALUES:
        for position in (0, 2, 1500):
            a = pd.Series([1.0] * 1600, dtype=object)
            a[position] = value
            yield pd.DataFrame({"a": a, "b": [2.0] * 1600})
    yield pd.DataFrame({"a": pd.Categorical(["SENTINEL-8731", "x"]), "b": [1.0, 2.0]})
    yield pd.DataFrame({"a": pd.array(["SENTINEL-8731", None], dtype="string"), "b": [1.0, 2.0]})
    yield pd.DataFrame({"a": ["123456.789x", "1"], "b": [1.0, 2.0]})
    yield pd.DataFrame({"a": [b"123456.789x", b"1"], "b": [1.0, 2.0]})
    yield pd.DataFrame({"a": [1.0, np.nan], "SENTINEL-8731": [1.0, 2.0]})  # only a column name: not data, but kept off
    yield pd.DataFrame({"b": [123456.789, 1.0]})  # missing column
    yield pd.DataFrame({"a": pd.to_datetime(["2001-01-01", "2002-02-02"]), "b": [123456.789, 1.0]})


@pytest.mark.parametrize("index", range(len(list(_frames()))))
def test_frame_paths_never_show_a_value(index, caplog):
    import opendp.prelude as dp

    dp.enable_features("contrib", "honest-but-curious")
    frame = list(_frames())[index]
    schema = _schema()
    f = hd.RecordFunction("a + b", schema)
    domain = fr.make_frame_domain(schema)
    texts: list[str] = []
    texts += _run(lambda: fr.check_frame(frame, schema), caplog)
    texts += _run(lambda: fr.make_private_sum(schema, f, epsilon=1.0)(frame), caplog)
    texts += _run(lambda: fr.make_private_mean(schema, f, epsilon=1.0)(frame), caplog)
    texts += _run(lambda: fr.make_private_count(schema, epsilon=1.0)(frame), caplog)
    texts += _run(lambda: fr.make_sum_of(domain, dp.symmetric_distance(), f)(frame), caplog)
    texts += _run(lambda: fr.make_row_map(domain, dp.symmetric_distance(), f)(frame), caplog)
    texts += _run(lambda: fr.prepare_frame(frame, schema), caplog)
    _assert_clean(texts)


# -- DP-SGD ---------------------------------------------------------------------------------------
def _trainer(**kw):
    from opendp_hybridad.dpsgd import DPSGD
    from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh

    model = MLP([Dense(3, 4, 1.0, 1.0), Dense(4, 3, 1.0, 1.0)], [Tanh(), Identity()], kw.pop("loss", SoftmaxCrossEntropy()),
                input_bound=1.0, label_bound=1.0)
    return DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, **kw)


def _datasets():
    for value in BAD_VALUES:
        x = [[0.1, 0.2, 0.3] for _ in range(4)]
        x[2][1] = value
        yield x, [0, 1, 2, 0]
        yield np.zeros((4, 3)), [0, 1, value, 0]
        yield pd.DataFrame(x), pd.Series([0, 1, 2, 0])
    yield np.zeros((4, 3)), [123456.789, 0, 1, 2]  # out-of-range labels
    yield np.zeros((4, 3)), np.eye(3)[[0, 1, 2, 0]] * 123456.789  # one-hot-like labels
    yield np.full((4, 3), 123456.789), [0, 1, 2, 3]
    yield [[0.1, 0.2], [0.3, 123456.789]], [0, 1]  # wrong shape


def _takes_impute() -> bool:
    import inspect

    from opendp_hybridad.dpsgd import DPSGD

    return "impute" in inspect.signature(DPSGD.__init__).parameters


@pytest.mark.parametrize("index", range(len(list(_datasets()))))
def test_dp_sgd_paths_never_show_a_value(index, caplog):
    from opendp_hybridad import dpsgd
    from opendp_hybridad.nn import MeanSquaredError

    x, y = list(_datasets())[index]
    texts: list[str] = []
    for trainer in (_trainer(), _trainer(impute=None) if _takes_impute() else _trainer()):
        texts += _run(lambda t=trainer: t.fit(x, y, seed=1), caplog)  # n defaults to len(x)
        if hasattr(dpsgd, "make_dp_sgd"):
            texts += _run(lambda t=trainer: dpsgd.make_dp_sgd(t, 4)((x, y)), caplog)
    regression = _trainer(loss=MeanSquaredError())
    texts += _run(lambda: regression.fit(x, y, seed=1), caplog)
    _assert_clean(texts)


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_never_repeats_a_value(capsys, caplog):
    from opendp_hybridad.cli import main

    texts = _run(lambda: main(["privacy", "dp-sgd", "--n", "123456.789x", "--batch-size", "1", "--epochs", "1",
                               "--delta", "1e-5", "--noise-multiplier", "1"]), caplog)
    texts += _run(lambda: main(["privacy", "dp-sgd", "--n", "100", "--batch-size", "10", "--epochs", "1",
                                "--delta", "123456.789", "--noise-multiplier", "1"]), caplog)
    texts += _run(lambda: main(["analyse", "x", "-b", "x=0:1", "--tolerance", "123456.789x"]), caplog)
    captured = capsys.readouterr()
    _assert_clean([*texts, captured.err])
