"""A torch.nn.Sequential CNN trains end to end through this library and comes back as a torch model (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_a_torch_cnn_trains_with_dp_sgd_and_comes_back_to_torch():
    from sklearn.datasets import load_digits

    from opendp_hybridad.dpsgd import DPSGD
    from opendp_hybridad.dpsgd.accounting import dp_sgd_epsilon
    from opendp_hybridad.nn import SoftmaxCrossEntropy
    from opendp_hybridad.nn.torch_bridge import WeightSet, from_torch, load_into_torch, to_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = [p.detach().clone() for p in net.parameters()]
    model, params = from_torch(net, SoftmaxCrossEntropy(), input_shape=(1, 8, 8), input_bound=1.0,
                               weight_sets={0: WeightSet(2.0, 0.5, norm_ball=True), 4: WeightSet(4.0, 0.5, norm_ball=True)})
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0 * 2 - 1).reshape(-1, 1, 8, 8)
    n = 1400
    trainer = DPSGD(model, noise_multiplier=1.0, batch_size=100, epochs=6, learning_rate=2.0, clip=1.0)
    trained_params, history = trainer.fit(X[:n], y[:n], params=params, n=n)
    assert history.private and history.epsilon == dp_sgd_epsilon(n, 100, 1.0, 6, 1e-5)["epsilon"]
    ours = trainer.predict(trained_params, X[n:])
    assert (ours == y[n:]).mean() > 0.5  # chance is 0.1

    # back to torch: a new float64 model and the user's own module, both computing our model's function
    trained = to_torch(model, trained_params)
    load_into_torch(net, model, trained_params)
    held_out = torch.from_numpy(X[n:])
    ours_logits = model.forward(trained_params, X[n:])[0][-1]
    np.testing.assert_allclose(trained(held_out).detach().numpy(), ours_logits, rtol=1e-12, atol=1e-12)
    assert (net(held_out.float()).argmax(1).numpy() == ours).mean() > 0.99  # float32 may flip a near tie
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # trained in place
