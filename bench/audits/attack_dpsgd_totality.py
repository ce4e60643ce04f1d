"""make_dp_sgd totality: in clip mode the weights are never projected and the per-step row
error e is recomputed from the current weights; once ||W||_F^2 overflows (so e is infinite),
noise_function raises DeclarationError mid-run. Whether that happens depends on the data
(one example's clipped gradient times the learning rate), so neighbours differ:
D (one example) raises at step 2 w.p. ~1, D' (empty, its add/remove neighbour) releases."""
import numpy as np
import opendp.prelude as dp

from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd
from opendp_hybridad.nn import MLP, Dense, Identity, MeanSquaredError

dp.enable_features("contrib", "honest-but-curious")


def trainer(lr=5e152, nm=0.005):
    model = MLP([Dense(2, 1, 1.0, 1.0)], [Identity()], MeanSquaredError(), input_bound=100.0, label_bound=1.0)
    return DPSGD(model, noise_multiplier=nm, batch_size=1, epochs=2, learning_rate=lr, mode="clip", clip=1.0,
                 noise="opendp")


def run(data, **kw):
    # the Renyi form (OpenDP's noise) avoids a huge PLD for the small noise multiplier
    m = make_dp_sgd(trainer(**kw), 1, measure="renyi", max_size=1)
    assert m.input_domain.member(data)
    try:
        out = m(data)
        return "ok", [float(np.abs(W).max()) for W, b in out]
    except Exception as exc:
        return "raised", str(exc).strip().splitlines()[-1][:160]


D = (np.array([[100.0, 100.0]]), np.array([-1.0]))   # one example: gradient clipped to norm 1
D_ = (np.zeros((0, 2)), np.zeros(0))                 # its neighbour: that example removed

if __name__ == "__main__":
    import warnings
    warnings.simplefilter("ignore")
    for _ in range(5):
        print("D :", run(D))
        print("D':", run(D_))
