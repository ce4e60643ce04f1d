"""DP-SGD trains any Sequential model: inputs of shape (B, *input_shape) with a per-entry box, labels by the loss's
``label_kind``, imputation per entry, plan strings and domain descriptors for any shape (issue 13).

The end-to-end test trains a small CNN on scikit-learn's digits (1x8x8 images) through
``make_dp_sgd`` and ``opendp_hybridad.release`` and checks its held-out accuracy against
chance (0.1) and the measurement's epsilon against ``dp_sgd_epsilon``'s.
"""

from __future__ import annotations

import numpy as np
import opendp.prelude as dp
import pytest

import opendp_hybridad as hd
from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd
from opendp_hybridad.dpsgd.accounting import dp_sgd_epsilon
from opendp_hybridad.errors import DataError, DeclarationError
from opendp_hybridad.nn import MLP, Dense, Flatten, Identity, Logistic, MeanSquaredError, Sequential, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.parts.conv import Conv2d
from opendp_hybridad.nn.parts.pooling import AvgPool2d

SECRET = 987654.321


def _cnn(shape=(1, 8, 8), channels: int = 6, input_bound: float | np.ndarray = 1.0) -> Sequential:
    pooled = channels * (shape[1] // 2) * (shape[2] // 2)
    return Sequential([Conv2d(shape[0], channels, 3, padding=1, weight_bound=1.0, bias_bound=0.5, norm_ball=True), Tanh(),
                       AvgPool2d(2), Flatten(), Dense(pooled, 10, 2.0, 0.5, norm_ball=True)],
                      SoftmaxCrossEntropy(), input_bound=input_bound, input_shape=shape)


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0 * 2 - 1).reshape(-1, 1, 8, 8)  # a public scaling into the declared box [-1, 1]
    order = np.random.default_rng(0).permutation(len(X))
    return X[order], y[order]


@pytest.mark.parametrize(("mode", "granularity"), [("clip", "global"), ("auto", "step")])
def test_a_cnn_trains_end_to_end_through_make_dp_sgd_and_release(mode, granularity):
    pytest.importorskip("sklearn")
    dp.enable_features("contrib", "honest-but-curious")
    X, y = _digits()
    n = 1400
    trainer = DPSGD(_cnn(), noise_multiplier=1.0, batch_size=100, epochs=6, learning_rate=2.0, mode=mode, clip=1.0,
                    granularity=granularity)
    measurement = make_dp_sgd(trainer, n)
    params = hd.release(measurement, (X[:n], y[:n]))
    accuracy = float((trainer.predict(params, X[n:]) == y[n:]).mean())
    assert accuracy > 0.5  # chance is 0.1; about 0.9 in clip mode on the development machine
    eps, delta = measurement.map(1)
    assert eps == dp_sgd_epsilon(n, 100, 1.0, 6, 1e-5)["epsilon"]
    assert delta == trainer.epsilon(n)["delta"] > 1e-5  # the table sampler's distance added
    assert "shape=1x8x8" in str(measurement.input_domain)


def test_inputs_must_have_the_models_shape_and_are_clamped_entry_by_entry():
    box = np.linspace(0.1, 1.0, 16).reshape(1, 4, 4)
    model = Sequential([Conv2d(1, 2, 3, padding=1), Tanh(), AvgPool2d(2), Flatten(), Dense(8, 3)], SoftmaxCrossEntropy(),
                       input_bound=box, input_shape=(1, 4, 4))
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1)
    x = np.full((3, 1, 4, 4), SECRET)
    x[1] = -np.inf
    x[2, 0, 0, 0] = np.nan
    clean, _ = trainer._check(x, np.zeros(3, dtype=int))
    np.testing.assert_array_equal(clean[0], box)
    np.testing.assert_array_equal(clean[1], -box)
    assert clean[2, 0, 0, 0] == 0.0 and clean[2, 0, 0, 1] == box[0, 0, 1]  # imputed with the default 0, then clamped
    for bad in (np.zeros((3, 16)), np.zeros((3, 1, 4, 5)), np.zeros((3, 4, 4)), np.zeros((1, 4, 4))):
        assert trainer._membership_error(bad, np.zeros(len(bad), dtype=int), 3, 3) is not None
        with pytest.raises(DataError, match=r"\(examples, 1, 4, 4\)") as info:
            trainer.fit(bad, np.zeros(len(bad), dtype=int), n=3, seed=0)
        assert "987654" not in str(info.value)


def test_imputation_is_per_entry_of_the_input_shape_and_the_plan_says_so():
    box = np.ones((1, 4, 4))
    model = Sequential([Conv2d(1, 2, 3, padding=1), Tanh(), AvgPool2d(2), Flatten(), Dense(8, 3)], SoftmaxCrossEntropy(),
                       input_bound=box, input_shape=(1, 4, 4))
    fill = np.arange(16, dtype=float).reshape(1, 4, 4) / 20.0
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, impute=fill)
    x = np.full((2, 1, 4, 4), np.nan)
    x[1, 0, 2, 2] = 0.5
    clean, _ = trainer._check(x, np.zeros(2, dtype=int))
    np.testing.assert_array_equal(clean[0], fill)
    expected = fill.copy()
    expected[0, 2, 2] = 0.5
    np.testing.assert_array_equal(clean[1], expected)
    text = str(trainer.plan(4))
    assert "one per input entry (shape (1, 4, 4))" in text
    assert "declared value 0.25" in str(DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1,
                                              impute=0.25).plan(4))
    lower = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, impute="lower")
    np.testing.assert_array_equal(lower._check(x[:1], np.zeros(1, dtype=int), 1)[0][0], -box)
    with pytest.raises(DeclarationError, match="impute"):
        DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, impute=np.zeros(5))


def test_the_domain_descriptor_names_the_shape_and_tells_different_boxes_apart():
    dp.enable_features("contrib", "honest-but-curious")
    box = np.linspace(0.1, 1.0, 64).reshape(1, 8, 8)
    described = []
    for b in (box, box * 2, 1.0):
        trainer = DPSGD(_cnn(input_bound=b), noise_multiplier=1.0, batch_size=4, epochs=1, learning_rate=0.1)
        described.append(str(make_dp_sgd(trainer, 10).input_domain))
    assert all("shape=1x8x8" in d for d in described)
    assert len(set(described)) == 3 and "box=1," in described[2]


class _RenamedCrossEntropy(SoftmaxCrossEntropy):
    """The same loss under another name: labels are validated by label_kind, never by the loss's name."""

    name = "my cross-entropy"


@pytest.mark.parametrize(
    ("loss", "out", "good", "bad"),
    [
        (_RenamedCrossEntropy(), 3, np.array([0, 2, 1.0]), np.array([0, 3, 1])),
        (Logistic(), 1, np.array([0, 1, 1.0]), np.array([0, 0.5, 1])),
        (MeanSquaredError(), 2, np.zeros((3, 2)), np.zeros((3, 3))),
    ],
)
def test_labels_are_validated_by_the_losses_label_kind(loss, out, good, bad):
    model = MLP([Dense(2, out, 1.0, 1.0)], [Identity()], loss, input_bound=1.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1)
    x = np.zeros((3, 2))
    assert trainer._membership_error(x, good, 3, 3) is None
    assert trainer._membership_error(x, bad, 3, 3) is not None
    params, _ = trainer.fit(x, good, seed=0)
    assert len(params) == 1


def test_predict_gives_classes_probabilities_or_outputs_by_label_kind():
    from scipy.special import expit

    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (7, 3))
    clamped = np.clip(x, -1, 1)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    for loss, out in ((SoftmaxCrossEntropy(), 4), (Logistic(), 1), (MeanSquaredError(), 4)):
        model = MLP([Dense(3, out, 10.0, 10.0)], [Identity()], loss, input_bound=1.0)
        trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1)
        params = [(W[:out], b[:out])]
        logits = np.array([[sum(W[o, i] * clamped[r, i] for i in range(3)) + b[o] for o in range(out)] for r in range(7)])
        got = trainer.predict(params, x)
        if loss.label_kind == "class":
            np.testing.assert_array_equal(got, logits.argmax(axis=1))
        elif loss.label_kind == "binary":
            np.testing.assert_allclose(got, expit(logits[:, 0]), rtol=1e-13)
        else:
            np.testing.assert_allclose(got, logits, rtol=1e-13, atol=1e-14)
    with pytest.raises(DataError):
        trainer.predict(params, np.zeros((2, 4)))


def test_a_model_whose_float_error_is_unbounded_is_refused_in_clip_mode_too():
    from opendp_hybridad.nn.parts.groupsort import GroupSort

    model = Sequential([Dense(4, 4), GroupSort(2), Dense(4, 2)], SoftmaxCrossEntropy(), input_bound=1.0)
    with pytest.raises(DeclarationError, match="unbounded"):
        DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, mode="clip")


def test_a_declared_input_ball_is_applied_before_training_so_k_holds():
    # Sequential(input_norm_bound=R): K starts from min(||box||, R); DP-SGD must move every example into the ball too
    model = Sequential([Dense(4, 1, weight_bound=1.0, bias_bound=0.0)], MeanSquaredError(), input_bound=1.0,
                       input_norm_bound=0.5, label_bound=0.0)
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=2, epochs=1, learning_rate=0.1, mode="bound")
    x = np.vstack([np.ones((3, 4)), np.full((1, 4), 0.1)])
    clean, y = trainer._check(x, np.zeros((4, 1)), 4, 4)
    assert np.all(np.linalg.norm(clean, axis=1) <= 0.5)
    np.testing.assert_array_equal(clean[3], x[3])  # inside the ball: unchanged
    params = [(np.ones((1, 4)) / 2, np.zeros(1))]  # on the edge of the weight box's largest-norm direction
    assert model.per_example_norms(params, clean, y).max() <= trainer.bound.upper
    assert np.abs(trainer.predict(params, x)).max() <= 0.5 * (1 + 1e-12)  # ||w|| = 1, ||x|| <= 0.5 (2.0 unclamped)
