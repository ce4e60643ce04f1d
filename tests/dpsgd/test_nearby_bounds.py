"""Per-step bounds read off nearby entries (dpsgd/nearby_bounds.py): the same result as computing every step."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from opendp_hybridad.dpsgd import DPSGD
from opendp_hybridad.dpsgd.nearby_bounds import CLIPS, NearbyStepBounds
from opendp_hybridad.dpsgd.plan import StepBound
from opendp_hybridad.nn import MLP, Dense, Identity, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.sequential import STEP_NORM_SLOTS


def _norms(*parts: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in p) for p in parts)


A = StepBound(False, 1.0, 1e-12)
B = StepBound(False, 1.0625, 1e-12)


def test_a_sandwich_of_equal_results_answers_between_them_and_nowhere_else():
    cache = NearbyStepBounds()
    cache.add(_norms((1.0, 2.0), ()), A)
    cache.add(_norms((1.5, 2.5), ()), A)
    assert cache.read(_norms((1.25, 2.25), ())) == A
    assert cache.read(_norms((1.0, 2.0), ())) == A  # an exact key
    assert cache.read(_norms((1.25, 2.75), ())) is None  # above the upper entry in one norm
    assert cache.read(_norms((0.75, 2.25), ())) is None  # below the lower entry in one norm
    assert cache.reads == {"exact": 1, "sandwich": 1, "clip": 0, "computed": 2}


def test_different_results_at_the_ends_answer_nothing():
    cache = NearbyStepBounds()
    cache.add(_norms((1.0, 2.0)), A)
    cache.add(_norms((1.5, 2.5)), B)
    assert cache.read(_norms((1.25, 2.25))) is None


def test_a_clipping_entry_proves_clipping_only_at_larger_norms():
    cache = NearbyStepBounds()
    cache.add(_norms((1.0, 2.0)), CLIPS)
    assert cache.read(_norms((1.0, 2.5))) is CLIPS
    assert cache.read(_norms((3.0, 4.0))) is CLIPS
    assert cache.read(_norms((0.5, 2.5))) is None  # one norm smaller: K there may be below C
    # a clipping entry above and a non-clipping one below prove nothing in between
    cache.add(_norms((0.25, 1.0)), A)
    assert cache.read(_norms((0.5, 1.5))) is None


def test_entries_are_evicted_oldest_first_and_a_new_shape_starts_afresh():
    cache = NearbyStepBounds(capacity=2)
    cache.add(_norms((1.0,)), A)
    cache.add(_norms((2.0,)), A)
    cache.add(_norms((3.0,)), B)  # evicts (1.0,)
    assert cache.read(_norms((1.0,))) is None
    assert cache.read(_norms((2.0,))) == A
    cache.add(_norms((1.0, 1.0)), B)
    assert cache.read(_norms((2.0,))) is None
    assert cache.read(_norms((1.0, 1.0))) == B


def test_nan_norms_match_nothing():
    cache = NearbyStepBounds()
    cache.add(_norms((1.0, 2.0)), CLIPS)
    assert cache.read(_norms((float("nan"), 3.0))) is None


def _model() -> MLP:
    return MLP([Dense(8, 16, 0.05, 0.05, norm_ball=True), Dense(16, 3, 0.05, 0.05, norm_ball=True)], [Tanh(), Identity()],
               SoftmaxCrossEntropy(), input_bound=0.5)


def test_the_model_bound_is_nondecreasing_in_every_norm():
    # the rule the identity with computing rests on (module docstring): each field, one norm raised by a slot or more
    model = _model()
    rng = np.random.default_rng(4)
    for _ in range(30):
        params = [(W * rng.uniform(0.5, 40.0), b + rng.normal(0, 0.5, b.shape)) for W, b in model.init(rng)]
        base = model.step_norms(params)
        low = model.bound_at(base)
        for p, k in itertools.product(range(len(base)), range(4)):
            if not base[p]:
                continue
            raised = list(map(list, base))
            raised[p][k] = raised[p][k] * (1 + rng.integers(1, 40) / STEP_NORM_SLOTS)
            high = model.bound_at(tuple(map(tuple, raised)))
            for field in ("upper", "rounding", "norm_relative_error", "norm_absolute_error"):
                assert getattr(high, field) >= getattr(low, field), (field, p, k)
            for clip in (None, 0.5, 3.0):
                assert high.row_error(clip) >= low.row_error(clip)


# weights that barely move (sandwiches), grow (computed each step), grow past C (clip proofs), and bound mode
@pytest.mark.parametrize(("mode", "lr", "clip"), [("auto", 0.001, 3.0), ("auto", 0.05, 3.0), ("auto", 1.0, 3.0), ("auto", 0.3, 0.8),
                                                  ("bound", 0.3, 3.0)])
def test_each_step_of_a_run_gets_what_computing_gives(mode, lr, clip):
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (640, 8))
    y = rng.integers(0, 3, 640)
    trainer = DPSGD(model, noise_multiplier=0.5, batch_size=32, epochs=3, learning_rate=lr, mode=mode, clip=clip,
                    granularity="step")
    plan = trainer.plan(len(x))
    summer = plan.gradient_sum
    at = summer.at
    seen = []

    def recording(params):
        bounds = at(params)
        norms = summer.model.step_norms(params)
        computed = summer._step_at(norms)
        expected = summer._clipping_step(norms) if computed is CLIPS else computed
        seen.append((bounds, expected))
        if not bounds.clip:  # sound at these weights: at least the certified K (or C where that is smaller)
            exact = model.certified_bound(params).upper
            assert bounds.sensitivity >= (min(exact, clip) if mode == "auto" else min(exact, summer.bound.upper))
        return bounds

    object.__setattr__(summer, "at", recording)
    trainer.run(plan, x, y, seed=2, insecure_noise_seed=3)
    assert len(seen) > 50
    for bounds, expected in seen:
        assert bounds == expected
    reads = summer.nearby.reads
    assert sum(reads.values()) == len(seen)
    if lr == 0.001:  # the noise moves the norms about a fixed point: some steps lie between earlier ones
        assert reads["sandwich"] > 0
    if mode == "auto" and lr >= 1.0:
        assert reads["clip"] > 0 and any(b.clip for b, _ in seen)


def test_a_replaced_gradient_sum_starts_its_own_cache():
    # adversarial review: the cache was an init field, so dataclasses.replace shared it, and an auto-mode variant of a
    # bound-mode plan read the bound-mode result (S = the global K, below the certified K at these weights)
    model = _model()
    summer = DPSGD(model, noise_multiplier=1.0, batch_size=32, epochs=1, learning_rate=0.1, mode="bound", clip=1.0,
                   granularity="step").plan(320).gradient_sum
    params = [(W * 40.0, b + 0.3) for W, b in model.init(np.random.default_rng(0))]
    summer.at(params)
    variant = dataclasses.replace(summer, mode="auto", clip_norm=100.0)
    assert variant.nearby is not summer.nearby
    bounds = variant.at(params)
    assert bounds == variant._step_at(model.step_norms(params))
    assert bounds.sensitivity >= model.certified_bound(params).upper


def test_no_norms_answer_only_their_own_key():
    cache = NearbyStepBounds()
    cache.add(((), ()), A)
    assert cache.read(((),)) is None
    assert cache.read(((), ())) == A
