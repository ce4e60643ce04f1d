"""make_dp_sgd: what is public, its relation, domain and map (issue 10 class 10), and totality on its domain (class 4).

Poisson sampling is accounted under add/remove with ``q = batch_size / n`` for a declared
public ``n``: the domain holds datasets of any size up to ``max_size`` and the rate and
step count never read ``len(x)``. Shuffled fixed-size batches are accounted under
replace-one on datasets of exactly ``n``. ``map(0)``, ``map(1)`` and ``map(k)`` (group
privacy) agree with that; the Rényi form refuses ``k > 1``. On random neighbouring
members (NaN, infinities, values far outside the box, edge labels, sizes 0 to
``max_size``) the measurement releases for both or neither; a non-member is refused with
the library's error, naming no value, before training.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import opendp.prelude as dp
import pytest
from helpers.totality import assert_total_on_neighbours

import opendp_hybridad as hd
from opendp_hybridad.accounting import dp_sgd_epsilon
from opendp_hybridad.dpsgd import DPSGD, make_dp_sgd
from opendp_hybridad.dpsgd import selection as selection_module
from opendp_hybridad.errors import DataError, DeclarationError
from opendp_hybridad.nn import MLP, Dense, Identity, MeanSquaredError, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.relations import ADD_REMOVE, REPLACE_ONE

SECRET = 987654.321  # must never appear in an error message
N, MAX, D, CLASSES = 12, 14, 3, 3


def _model(loss=None, out=CLASSES):
    return MLP([Dense(D, 4, 1.0, 1.0), Dense(4, out, 1.0, 1.0)], [Tanh(), Identity()], loss or SoftmaxCrossEntropy(),
               input_bound=1.0, label_bound=1.0)


def _trainer(sampling="poisson", mode="clip", **kw):
    return DPSGD(_model(kw.pop("loss", None), kw.pop("out", CLASSES)), noise_multiplier=1.0, batch_size=4, epochs=1,
                 learning_rate=0.1, sampling=sampling, mode=mode, **kw)


# -- class 10: relation, domain and map ------------------------------------------------------------
def test_poisson_is_add_remove_over_datasets_of_any_size_up_to_the_declared_maximum():
    trainer = _trainer()
    m = make_dp_sgd(trainer, N, max_size=MAX)
    assert m.input_metric == dp.symmetric_distance() == ADD_REMOVE.metric()
    for size in (0, 1, N - 1, N, N + 1, MAX):
        assert m.input_domain.member((np.zeros((size, D)), np.zeros(size, dtype=int)))
    assert not m.input_domain.member((np.zeros((MAX + 1, D)), np.zeros(MAX + 1, dtype=int)))
    plan = trainer.plan(N, MAX)
    assert plan.neighbouring_relation is ADD_REMOVE and plan.public_size == N and plan.max_size == MAX
    eps, delta = m.map(1)
    report = trainer.epsilon(N)
    assert eps >= report["epsilon"] and eps == pytest.approx(report["epsilon"], rel=1e-15) and delta == report["delta"]
    assert m.map(0) == (0.0, 0.0)
    for k in (2, 3):  # group privacy: (k eps, delta sum_{j<k} e^(j eps)), rounded up
        eps_k, delta_k = m.map(k)
        assert Fraction(eps_k) >= k * Fraction(eps)
        assert delta_k >= delta * sum(math.exp(j * eps) for j in range(k)) and delta_k <= 1.0
        assert delta_k == pytest.approx(delta * sum(math.exp(j * eps) for j in range(k)), rel=1e-12)
    assert m.map(10_000)[1] == 1.0


def test_the_rate_and_the_steps_come_from_the_public_size_not_the_data(monkeypatch):
    trainer = _trainer()
    calls = []
    real = selection_module.BatchSelector.poisson

    def spy(self, count, batch_size, n=None):
        calls.append((count, batch_size, n))
        return real(self, count, batch_size, n)

    monkeypatch.setattr(selection_module.BatchSelector, "poisson", spy)
    m = make_dp_sgd(trainer, N, max_size=MAX)
    steps = trainer.epsilon(N)["steps"]
    for size in (N - 1, N, N + 1, 0):  # neighbours of every size: the same rate, the same steps
        calls.clear()
        m((np.zeros((size, D)), np.zeros(size, dtype=int)))
        assert calls == [(size, 4, N)] * steps
    # fewer examples than a batch is fine under Poisson sampling with a public n
    assert len(m((np.zeros((2, D)), np.zeros(2, dtype=int)))) == 2


def test_shuffling_is_replace_one_over_datasets_of_exactly_n():
    trainer = _trainer("shuffle")
    m = make_dp_sgd(trainer, N)
    assert m.input_metric == dp.change_one_distance() == REPLACE_ONE.metric()
    assert m.input_domain.member((np.zeros((N, D)), np.zeros(N, dtype=int)))
    for size in (N - 1, N + 1):
        assert not m.input_domain.member((np.zeros((size, D)), np.zeros(size, dtype=int)))
    assert trainer.plan(N).neighbouring_relation is REPLACE_ONE
    eps, _ = m.map(1)
    assert eps == pytest.approx(dp_sgd_epsilon(N, 4, 1.0, 1, trainer.delta, "shuffle")["epsilon"], rel=1e-12)
    assert m.map(2)[0] >= 2 * eps
    with pytest.raises(DeclarationError, match="exactly n"):
        make_dp_sgd(trainer, N, max_size=N + 1)
    with pytest.raises(Exception, match=r"DataError: .*exactly n"):  # OpenDP wraps the library's error
        m((np.zeros((N + 1, D)), np.zeros(N + 1, dtype=int)))
    with pytest.raises(DataError, match="exactly n"):  # checked first: the library's error itself
        hd.release(m, (np.zeros((N + 1, D)), np.zeros(N + 1, dtype=int)))


def test_the_renyi_form_refuses_group_privacy():
    trainer = _trainer(noise="opendp")
    m = make_dp_sgd(trainer, N, measure="renyi")
    assert m.map(0)(2.0) == 0.0 and 0 < m.map(1)(2.0) < math.inf
    # the proven curve: never below the continuous Gaussian's (the lattice noise's add direction is it)
    import dp_accounting
    from dp_accounting import rdp

    from opendp_hybridad.dpsgd.accounting import reference_event

    for order in (1.5, 2.0, 3.0, 8.0, 32.0):
        continuous = rdp.RdpAccountant(orders=[order])
        continuous.compose(reference_event(N, trainer.batch_size, trainer.noise_multiplier, trainer.epochs))
        if math.isfinite(continuous.rdp[0]):  # dp-accounting gives inf where its series does not converge
            assert m.map(1)(order) >= continuous.rdp[0] * (1 - 1e-12)
    assert isinstance(dp_accounting.GaussianDpEvent(1.0), dp_accounting.DpEvent)
    with pytest.raises(Exception, match="group privacy"):
        m.map(2)


# -- class 4: total on the domain ----------------------------------------------------------------
def _feature(rng):
    kind = rng.integers(0, 7)
    if kind == 0:
        return math.nan
    if kind == 1:
        return float(rng.choice([-math.inf, math.inf, SECRET, -SECRET, 1e308]))
    if kind == 2:
        return float(rng.choice([-1.0, 1.0]))  # box corners
    return float(rng.uniform(-1.5, 1.5))


def _dataset(rng, size, labels):
    x = np.array([[_feature(rng) for _ in range(D)] for _ in range(size)]).reshape(size, D)
    return x, np.array([labels(rng) for _ in range(size)])


def _class_label(rng):
    return rng.choice([0, CLASSES - 1, 1, 2.0, 0.0])  # edge labels, integer-valued floats


def _pairs(rng, sampling, labels, count):
    for _ in range(count):
        if sampling == "poisson":
            x, y = _dataset(rng, int(rng.integers(0, MAX + 1)), labels)
            if len(x) and rng.random() < 0.5:
                drop = int(rng.integers(0, len(x)))
                yield (x, y), (np.delete(x, drop, 0), np.delete(y, drop, 0))
            elif len(x) < MAX:
                extra_x, extra_y = _dataset(rng, 1, labels)
                at = int(rng.integers(0, len(x) + 1))
                yield (x, y), (np.insert(x, at, extra_x[0], 0), np.insert(y, at, extra_y[0], 0))
        else:
            x, y = _dataset(rng, N, labels)
            other_x, other_y = _dataset(rng, 1, labels)
            at = int(rng.integers(0, N))
            x2, y2 = x.copy(), y.copy()
            x2[at], y2[at] = other_x[0], other_y[0]
            yield (x, y), (x2, y2)


@pytest.mark.parametrize("sampling", ["poisson", "shuffle"])
@pytest.mark.parametrize("mode", ["clip", "auto", "bound"])
def test_the_measurement_is_total_on_neighbouring_members(sampling, mode):
    rng = np.random.default_rng(hash((sampling, mode)) % 2**32)
    trainer = _trainer(sampling, mode, clip=0.5, granularity="step" if mode == "auto" else "global")
    m = make_dp_sgd(trainer, N, max_size=MAX if sampling == "poisson" else None)
    checked = assert_total_on_neighbours(m, _pairs(rng, sampling, _class_label, 25), m.input_domain.member)
    assert checked >= 20


def test_regression_labels_and_the_refusing_missing_policy_are_total_too():
    rng = np.random.default_rng(5)
    trainer = _trainer(loss=MeanSquaredError(), out=1, mode="bound")
    m = make_dp_sgd(trainer, N, max_size=MAX)
    labels = lambda r: float(r.choice([-math.inf, math.inf, SECRET, -1.0, 1.0, r.uniform(-3, 3)]))  # noqa: E731
    assert assert_total_on_neighbours(m, _pairs(rng, "poisson", labels, 20), m.input_domain.member) >= 15
    # impute=None: NaN is outside the domain, so only NaN-free pairs are members; they are total
    refusing = _trainer(impute=None)
    m = make_dp_sgd(refusing, N, max_size=MAX)
    pairs = [((np.nan_to_num(a[0], nan=0.5), a[1]), (np.nan_to_num(b[0], nan=0.5), b[1]))
             for a, b in _pairs(rng, "poisson", _class_label, 20)]
    assert assert_total_on_neighbours(m, pairs, m.input_domain.member) >= 15
    assert not m.input_domain.member((np.full((3, D), np.nan), np.zeros(3, dtype=int)))


@pytest.mark.parametrize(
    "data",
    [
        (np.zeros((4, D)), np.array([0, 1, SECRET, 2])),  # a label outside the label set
        (np.zeros((4, D)), np.array([0, 1, np.nan, 2])),
        (np.zeros((4, D)), np.array([0, 1, 1.5, 2])),
        (np.full((4, D + 1), SECRET), np.zeros(4, dtype=int)),  # the wrong width
        (np.zeros((4, D)), np.zeros(5, dtype=int)),
        (np.full((MAX + 1, D), SECRET), np.zeros(MAX + 1, dtype=int)),  # more examples than declared
        (np.array([["a", "b", "c"]] * 4), np.zeros(4, dtype=int)),
    ],
)
def test_non_members_are_refused_before_training_naming_no_value(data, monkeypatch):
    trainer = _trainer()
    m = make_dp_sgd(trainer, N, max_size=MAX)
    assert not m.input_domain.member(data)
    monkeypatch.setattr(trainer.model, "gradient_sum", lambda *a, **k: pytest.fail("trained on a non-member"))
    with pytest.raises(Exception) as info:
        m(data)
    # OpenDP wraps the error of the user function: its text names the library's error and no value
    assert "987654" not in str(info.value)
    assert "DataError" in str(info.value)
    with pytest.raises(DataError) as checked:  # checked first by release, the library's own error
        hd.release(m, data)
    assert "987654" not in str(checked.value)


def test_public_sizes_are_validated_before_any_data():
    trainer = _trainer()
    with pytest.raises(Exception, match="larger than the data"):
        make_dp_sgd(trainer, 3)  # batch 4 > public n 3: a public fact
    with pytest.raises(DeclarationError):
        make_dp_sgd(trainer, 0)
