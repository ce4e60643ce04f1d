"""The torch bridge (nn/torch_bridge.py) against torch itself: weights round trip bit for bit, the forward pass, and the
per-example gradients and clipped sums against ``torch.func.vmap(torch.func.grad(...))`` on the same float64 weights.

Skipped as a whole where torch is not installed. The references are torch's own autograd, an implementation
independent of this library's kernels; tolerances are relative to the largest reference entry (no hard-coded
outputs, no dependence on BLAS, CPU or thread count).
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers.layer_checks import flat, per_example_rows  # noqa: E402

from opendp_hybridad.errors import DeclarationError  # noqa: E402
from opendp_hybridad.nn.layers import Logistic, MeanSquaredError, SoftmaxCrossEntropy  # noqa: E402
from opendp_hybridad.nn.torch_bridge import (  # noqa: E402
    DefaultWeightSetWarning,
    GroupSort,
    TemperedSigmoid,
    WeightSet,
    default_weight_set,
    from_torch,
    load_into_torch,
    register_torch_module,
    supported_modules,
    to_torch,
)

nn = torch.nn
F = torch.nn.functional
B = 16


@dataclass
class Case:
    """A torch model, the matching loss on both sides, and a batch inside the declared input box."""

    net: Any
    loss: Any
    torch_loss: Any  # (outputs of one example, its label) -> scalar
    kwargs: dict
    x: np.ndarray
    y: np.ndarray

    def torch_x(self):
        return torch.from_numpy(self.x).long() if self.x.dtype.kind == "i" else torch.from_numpy(self.x)


def _ce(out, y):
    return F.cross_entropy(out, y.reshape(1), reduction="sum")


def _mse(out, y):
    return 0.5 * ((out - y.reshape(out.shape)) ** 2).sum()


def _bce(out, y):
    return F.binary_cross_entropy_with_logits(out[:, 0], y.reshape(1), reduction="sum")


def _case(name: str) -> Case:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    ws = WeightSet(1.0, 1.0)
    if name == "mlp":
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Sigmoid(), nn.Linear(5, 3))
        return Case(net.double(), SoftmaxCrossEntropy(), _ce, {"input_bound": 1.0, "weight_sets": ws},
                    rng.uniform(-1, 1, (B, 6)), rng.integers(0, 3, B))
    if name == "cnn":
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
        return Case(net.double(), SoftmaxCrossEntropy(), _ce, {"input_bound": 1.0, "input_shape": (1, 8, 8), "weight_sets": ws},
                    rng.uniform(-1, 1, (B, 1, 8, 8)), rng.integers(0, 10, B))
    if name == "cnn1d":
        net = nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Sigmoid(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(9, 2))
        return Case(net.double(), MeanSquaredError(), _mse, {"input_bound": 1.0, "input_shape": (2, 12), "weight_sets": ws},
                    rng.uniform(-1, 1, (B, 2, 12)), rng.uniform(-1, 1, (B, 2)))
    if name == "embedding":
        net = nn.Sequential(nn.Embedding(7, 4), nn.Flatten(), nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 1))
        x = rng.integers(0, 7, (B, 5))
        x[0] = 3  # every position the same row: the scatter adds five deltas into it
        return Case(net.double(), Logistic(), _bce, {"input_bound": 6.0, "input_shape": (5,), "weight_sets": WeightSet(4.0, 1.0)},
                    x, rng.integers(0, 2, B).astype(float))
    if name == "lipschitz":
        net = nn.Sequential(nn.Linear(6, 8), GroupSort(2), nn.Linear(8, 6), GroupSort(3, descending=True), nn.Linear(6, 3),
                            TemperedSigmoid(3.0, 0.5, 1.2))
        return Case(net.double(), SoftmaxCrossEntropy(), _ce, {"input_bound": 1.0, "weight_sets": WeightSet(2.0, 1.0, norm_ball=True)},
                    rng.uniform(-1, 1, (B, 6)), rng.integers(0, 3, B))
    raise AssertionError(name)


MODELS = ["mlp", "cnn", "cnn1d", "embedding", "lipschitz"]


def _rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    """``max |ours - theirs| / max |theirs|``: the difference relative to the reference's scale."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _torch_rows(case: Case) -> np.ndarray:
    """Per-example gradients by torch.func, as flat rows in the module's parameter order, ``(B, P)``."""
    net = case.net
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_fn(p, xi, yi):
        out = torch.func.functional_call(net, p, (xi.unsqueeze(0),))
        return case.torch_loss(out, yi)

    grads = torch.func.vmap(torch.func.grad(loss_fn), in_dims=(None, 0, 0))(params, case.torch_x(), torch.from_numpy(case.y))
    return np.concatenate([grads[k].reshape(B, -1).numpy() for k in params], axis=1)


def _bits(t) -> Any:
    return t.detach().contiguous().view(torch.int64 if t.dtype == torch.float64 else torch.int32)


@pytest.mark.parametrize("name", MODELS)
def test_weights_round_trip_bit_for_bit(name):
    case = _case(name)
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    ours = [a for ps in params for a in ps]
    theirs = list(case.net.parameters())
    assert len(ours) == len(theirs)
    for a, t in zip(ours, theirs, strict=True):
        assert a.dtype == np.float64 and a.flags.c_contiguous
        np.testing.assert_array_equal(a, t.detach().numpy())
    back = to_torch(model, params)
    assert [type(m) for m in back] == [type(m) for m in case.net]
    for a, t in zip(back.parameters(), case.net.parameters(), strict=True):
        assert a.dtype == torch.float64 and torch.equal(_bits(a), _bits(t))


@pytest.mark.parametrize("name", MODELS)
def test_float32_weights_convert_exactly_and_come_back(name):
    case = _case(name)
    net32 = case.net.float()
    model, params = from_torch(net32, case.loss, **case.kwargs)
    for a, t in zip([a for ps in params for a in ps], net32.parameters(), strict=True):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a.astype(np.float32).astype(np.float64), a)  # float32 values, unrounded
        np.testing.assert_array_equal(a, t.detach().numpy().astype(np.float64))
    back = to_torch(model, params, dtype=torch.float32)
    for a, t in zip(back.parameters(), net32.parameters(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(_bits(a), _bits(t))


@pytest.mark.parametrize("name", MODELS)
def test_forward_equals_torch(name):
    case = _case(name)
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    theirs = case.net(case.torch_x()).detach().numpy()
    ours = model.forward(params, case.x.astype(float))[0][-1]
    assert _rel(ours, theirs) <= 1e-12
    np.testing.assert_allclose(model.loss_value(params, case.x.astype(float), case.y),
                               [case.torch_loss(case.net(case.torch_x()[i:i + 1]), torch.as_tensor(case.y[i])).item() for i in range(B)],
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", MODELS)
def test_per_example_gradients_equal_torch_func(name):
    """The acceptance criterion: per-example gradients within 1e-8 (relative) of torch.func's on the same float64 weights."""
    case = _case(name)
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    theirs = _torch_rows(case)
    ours = per_example_rows(model, params, case.x.astype(float), case.y)
    assert _rel(ours, theirs) <= 1e-8
    # each row on its own scale too (a small row is not hidden by a large one)
    for i in range(B):
        assert _rel(ours[i], theirs[i]) <= 1e-8
    # the certified K is over the declared sets, which hold these weights, and the inputs lie in the box
    assert model.certified_bound().upper >= np.sqrt((theirs ** 2).sum(axis=1)).max()


@pytest.mark.parametrize("name", MODELS)
def test_clipped_gradient_sum_equals_clipped_torch_rows(name):
    case = _case(name)
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    rows = _torch_rows(case)
    norms = np.sqrt((rows ** 2).sum(axis=1))
    for clip in (float(np.median(norms)), float(norms.max()) * 2):  # some rows clipped; none clipped
        expected = (rows * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)
        ours = flat(model.gradient_sum(params, case.x.astype(float), case.y, clip=clip))
        assert _rel(ours, expected) <= 1e-8


@pytest.mark.parametrize("name", MODELS)
def test_to_torch_reproduces_the_outputs(name):
    case = _case(name)
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    back = to_torch(model, params)
    assert back is not case.net
    assert _rel(back(case.torch_x()).detach().numpy(), case.net(case.torch_x()).detach().numpy()) <= 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_trained_params_load_into_the_users_module(name):
    """One clipped step of the library's update, then back into the same torch module object, in place."""
    case = _case(name)
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    step = flat(model.gradient_sum(params, case.x.astype(float), case.y, clip=1.0))
    trained = model.apply_step(params, step, 0.1)
    assert not np.array_equal(flat(trained), flat(params))
    net = case.net
    assert load_into_torch(net, model, trained) is net
    for a, t in zip([a for ps in trained for a in ps], net.parameters(), strict=True):
        np.testing.assert_array_equal(a, t.detach().numpy())
    ours = model.forward(trained, case.x.astype(float))[0][-1]
    assert _rel(ours, net(case.torch_x()).detach().numpy()) <= 1e-12
    assert _rel(to_torch(model, trained)(case.torch_x()).detach().numpy(), net(case.torch_x()).detach().numpy()) <= 1e-12


def test_load_into_a_float32_module_keeps_its_dtype():
    case = _case("cnn")
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    net32 = _case("cnn").net.float()
    load_into_torch(net32, model, params)
    for a, t in zip([a for ps in params for a in ps], net32.parameters(), strict=True):
        assert t.dtype == torch.float32
        np.testing.assert_array_equal(a.astype(np.float32), t.detach().numpy())


def test_load_refuses_another_architecture():
    case = _case("mlp")
    model, params = from_torch(case.net, case.loss, **case.kwargs)
    other = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    with pytest.raises(DeclarationError, match=r"^torch module 1 \(ReLU\) does not match part 1 \(tanh\)"):
        load_into_torch(other, model, params)
    with pytest.raises(DeclarationError, match="3 modules, the model 5 parts"):
        load_into_torch(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), model, params)


def test_an_unsupported_module_is_named_with_its_index():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.BatchNorm1d(72), nn.Linear(72, 2))
    with pytest.raises(DeclarationError, match=r"^torch module 3 \(BatchNorm1d\) is not supported: ") as refused:
        from_torch(net, input_shape=(1, 8, 8), input_bound=1.0, weight_sets=WeightSet(1.0))
    assert "\n" not in str(refused.value)
    nested = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Tanh(), nn.LeakyReLU()), nn.Linear(4, 2))
    with pytest.raises(DeclarationError, match=r"^torch module 1\.1 \(LeakyReLU\) is not supported: the bridge converts .*Linear"):
        from_torch(nested, input_bound=1.0, weight_sets=WeightSet(1.0))
    named = nn.Sequential(OrderedDict(fc=nn.Linear(4, 4), drop=nn.Dropout(0.1)))
    with pytest.raises(DeclarationError, match=r"^torch module 1 'drop' \(Dropout\) is not supported: it is random"):
        from_torch(named, input_bound=1.0, weight_sets=WeightSet(1.0))


@pytest.mark.parametrize(("module", "what"), [
    (lambda: nn.Conv2d(1, 2, 3, dilation=2), "dilation"),
    (lambda: nn.Conv2d(2, 2, 3, groups=2), "groups"),
    (lambda: nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
    (lambda: nn.Conv2d(1, 2, 2, padding="same"), "even kernel"),
    (lambda: nn.AvgPool2d(2, stride=1), "stride"),
    (lambda: nn.AvgPool2d(2, padding=1), "padding"),
    (lambda: nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
    (lambda: nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
    (lambda: nn.Flatten(2), "Flatten"),
], ids=["dilation", "groups", "padding_mode", "same-even", "pool-stride", "pool-padding", "ceil", "divisor", "flatten-dim"])
def test_options_that_do_not_convert_are_refused(module, what):
    net = nn.Sequential(nn.Identity(), module(), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(DeclarationError, match=rf"^torch module 1 \(\w+\) is not supported: .*{what}"):
        from_torch(net, input_shape=(2, 8, 8), input_bound=1.0, weight_sets=WeightSet(1.0))


def test_embedding_options_and_subclasses_are_refused():
    for option in ({"padding_idx": 0}, {"max_norm": 1.0}, {"scale_grad_by_freq": True}):
        with pytest.raises(DeclarationError, match=rf"^torch module 0 \(Embedding\) is not supported: {next(iter(option))}"):
            from_torch(nn.Sequential(nn.Embedding(5, 2, **option), nn.Flatten(), nn.Linear(6, 2)), input_shape=(3,),
                       input_bound=4.0, weight_sets=WeightSet(1.0))

    class Linear(nn.Linear):  # a class of the same name: its forward may differ
        pass

    with pytest.raises(DeclarationError, match=r"^torch module 0 \(Linear\) is not supported: only Linear of torch itself"):
        from_torch(nn.Sequential(Linear(3, 2)), input_bound=1.0, weight_sets=WeightSet(1.0))
    with pytest.raises(DeclarationError, match=r"takes a torch\.nn\.Sequential, not Linear"):
        from_torch(nn.Linear(3, 2), input_bound=1.0)


def test_shapes_that_do_not_fit_name_the_module():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(72, 2))
    with pytest.raises(DeclarationError, match=r"^torch module 1 \(Linear\): dense\(72->2\): takes inputs of shape \(72,\)"):
        from_torch(net, input_shape=(1, 8, 8), input_bound=1.0, weight_sets=WeightSet(1.0))
    with pytest.raises(DeclarationError, match=r"^torch module 0 \(Conv2d\): declare input_shape="):
        from_torch(net, input_bound=1.0, weight_sets=WeightSet(1.0))


def test_weight_sets_are_declared_checked_or_defaulted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[0].weight[0, 0] = 0.75
        net[2].bias.zero_()
    # declared per module (by position or torch name): no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = from_torch(net, input_bound=1.0, weight_sets={0: WeightSet(1.0, 0.5), "2": WeightSet(2.0, 0.25, norm_ball=True)})
    assert (model.parts[0].weight_bound, model.parts[0].bias_bound, model.parts[0].norm_ball) == (1.0, 0.5, False)
    assert (model.parts[2].weight_bound, model.parts[2].bias_bound, model.parts[2].norm_ball) == (2.0, 0.25, True)
    # the default: powers of two around the current weights (a zero bias gets the floor), and a warning naming the modules
    with pytest.warns(DefaultWeightSetWarning, match=r"torch module 0 \(Linear\): \|W_ij\| <= 1, .*torch module 2 \(Linear\)"):
        model, params = from_torch(net, input_bound=1.0, weight_sets=None)
    assert model.parts[0].weight_bound == 1.0 and model.parts[2].bias_bound == 2.0**-4
    for part, ps in zip(model.parts, params, strict=True):
        assert all(np.array_equal(a, p) for a, p in zip(ps, part.project_params(ps), strict=True))  # contains them
    assert default_weight_set(np.array([[0.3, -0.5]]), np.array([1.5])) == WeightSet(0.5, 2.0)
    # current weights outside the declared set
    with pytest.raises(DeclarationError, match=r"^torch module 0 \(Linear\): its current weights lie outside the declared weight set"):
        from_torch(net, input_bound=1.0, weight_sets=WeightSet(0.5, 1.0))
    with pytest.raises(DeclarationError, match="names no module"):
        from_torch(net, input_bound=1.0, weight_sets={5: WeightSet(1.0)})
    with pytest.raises(DeclarationError, match=r"^WeightSet: weight_bound must be"):
        from_torch(net, input_bound=1.0, weight_sets=WeightSet(-1.0))
    with pytest.raises(DeclarationError, match="norm_ball must be True or False"):
        WeightSet(1.0, norm_ball="yes")


def test_a_module_without_bias_keeps_none():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 2, 3, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2, bias=False)).double()
    model, params = from_torch(net, input_shape=(1, 6), input_bound=1.0, weight_sets=WeightSet(1.0, 1.0))
    assert model.parts[0].bias_bound == 0.0 and not params[0][1].any()
    back = to_torch(model, params)
    assert back[0].bias is None and back[3].bias is None
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (4, 1, 6)))
    assert _rel(back(x).detach().numpy(), net(x).detach().numpy()) <= 1e-12
    assert _rel(model.forward(params, x.numpy())[0][-1], net(x).detach().numpy()) <= 1e-12
    load_into_torch(net, model, params)  # a zero bias loads into a module without one
    biased = [(params[0][0], np.ones(2)), *params[1:]]
    with pytest.raises(DeclarationError, match=r"^torch module 0 \(Conv1d\): conv1d\(1->2, k=3\): the torch module has no bias"):
        load_into_torch(net, model, biased)


def test_losses_from_torch():
    net = nn.Sequential(nn.Linear(3, 2)).double()
    assert isinstance(from_torch(net, nn.CrossEntropyLoss(), input_bound=1.0, weight_sets=WeightSet(1.0))[0].loss, SoftmaxCrossEntropy)
    one = nn.Sequential(nn.Linear(3, 1)).double()
    assert isinstance(from_torch(one, nn.BCEWithLogitsLoss(), input_bound=1.0, weight_sets=WeightSet(1.0))[0].loss, Logistic)
    with pytest.raises(DeclarationError, match="MSELoss averages"):
        from_torch(net, nn.MSELoss(), input_bound=1.0, weight_sets=WeightSet(1.0))
    with pytest.raises(DeclarationError, match="label smoothing"):
        from_torch(net, nn.CrossEntropyLoss(label_smoothing=0.1), input_bound=1.0, weight_sets=WeightSet(1.0))


def test_to_torch_takes_an_mlp_and_refuses_what_torch_lacks():
    from opendp_hybridad.nn import MLP, Dense, Identity, Tanh
    from opendp_hybridad.nn.parts.embedding import Embedding
    from opendp_hybridad.nn.parts.flatten import Flatten
    from opendp_hybridad.nn.sequential import Sequential

    mlp = MLP([Dense(3, 4), Dense(4, 2)], [Tanh(), Identity()], SoftmaxCrossEntropy())
    params = mlp.init(np.random.default_rng(0))
    net = to_torch(mlp, params)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 3))
    z = mlp.to_sequential().forward([params[0], (), params[1], ()], x)[0][-1]
    assert _rel(net(torch.from_numpy(x)).detach().numpy(), z) <= 1e-12
    seq = Sequential([Embedding(5, 2, channels_first=True), Flatten(), Dense(2, 2)], SoftmaxCrossEntropy(), input_bound=4.0,
                     input_shape=(1,))
    with pytest.raises(DeclarationError, match=r"^part 0: embedding\(5x2\): channels_first=True has no torch module"):
        to_torch(seq, seq.init(np.random.default_rng(0)))
    with pytest.raises(DeclarationError, match="dtype must be a real floating"):
        to_torch(mlp, params, dtype=torch.int32)
    with pytest.raises(DeclarationError, match=r"params of part 0 \(dense\(3->4\)\): shapes must be"):
        to_torch(mlp, [(params[0][0].T, params[0][1]), params[1]])


def test_a_new_module_is_one_function_and_a_registration():
    from opendp_hybridad.nn.layers import Identity as IdentityActivation
    from opendp_hybridad.nn.parts.activation import Elementwise
    from opendp_hybridad.nn.torch_bridge import _FROM_TORCH

    assert {"Linear", "Conv1d", "Conv2d", "AvgPool1d", "AvgPool2d", "Flatten", "Embedding", "Tanh", "Sigmoid", "ReLU", "Identity",
            "GroupSort"} <= set(supported_modules())
    net = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.0))
    with pytest.raises(DeclarationError, match=r"torch module 1 \(Dropout\)"):
        from_torch(net, input_bound=1.0, weight_sets=WeightSet(1.0))

    @register_torch_module("Dropout")
    def _dropout(module, ctx):  # p = 0 only: the identity
        if module.p != 0.0:
            raise ctx.refuse("p > 0")
        return Elementwise(IdentityActivation()), ()

    try:
        model, _ = from_torch(net, input_bound=1.0, weight_sets=WeightSet(1.0))
        assert model.parts[1].activation.name == "identity"
    finally:
        del _FROM_TORCH["Dropout"]


def test_importing_the_library_does_not_import_torch():
    code = ("import sys, opendp_hybridad, opendp_hybridad.nn, opendp_hybridad.nn.torch_bridge as tb\n"
            "from opendp_hybridad.nn import Sequential\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "tb.GroupSort\n"
            "assert 'torch' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
