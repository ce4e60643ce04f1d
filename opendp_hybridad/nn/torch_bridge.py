"""Bring your own torch model: ``torch.nn.Sequential`` to :class:`~opendp_hybridad.nn.sequential.Sequential` and back.

* :func:`from_torch` converts a ``torch.nn.Sequential`` of supported modules into this
  library's parts and float64 parameters (one tuple of arrays per part, ``()`` for
  parameter-free parts), so DP-SGD can train it with certified bounds;
* :func:`to_torch` builds a fresh ``torch.nn.Sequential`` from a model and its (trained)
  parameters; :func:`load_into_torch` writes them into an existing torch module of the
  same architecture, in place, so a PyTorch user keeps their module object.

**Guarantees.** Weights are copied exactly: a float32 (or float16, bfloat16) tensor
converts to float64 without rounding, and ``to_torch(..., dtype=torch.float64)`` gives
back the same bits (``dtype=torch.float32`` too, for weights that are float32 values, as
those of a converted float32 module are). Each converter maps a module to a part that
computes the same function: a converter refuses (``DeclarationError`` naming the module
by its position in the Sequential and its class) every option it cannot reproduce
exactly, instead of approximating it.

**Weight sets.** A certificate (``K``, DP-SGD's noise scale) is over a *declared* weight
set, so every module with parameters needs one: ``weight_sets`` gives a :class:`WeightSet`
for all of them, or a mapping from a module's position (``int``) or torch name (``str``,
as ``named_modules`` spells it: ``"3"``, ``"block.0"``) to its set. The current weights must
lie in the declared set (the part's own projection, which rounds its norm test upward,
must leave them unchanged), else the conversion is refused. A module without a declared
set gets the default, a box that contains its current weights (:func:`default_weight_set`),
and a :class:`DefaultWeightSetWarning` says which modules got which box.

**What converts** (torch module -> part): ``Linear`` -> ``Dense``; ``Conv1d``/``Conv2d``
(dilation 1, groups 1, zero padding, ``padding='same'`` only with odd kernels) -> ``Conv1d``/
``Conv2d``; ``AvgPool1d``/``AvgPool2d`` (stride = kernel, no padding, ``ceil_mode=False``, no
divisor override) -> ``AvgPool1d``/``AvgPool2d``; ``Flatten`` (``start_dim=1`` to the last
axis) -> ``Flatten``; ``Embedding`` (no ``padding_idx``, ``max_norm`` or
``scale_grad_by_freq``) -> ``Embedding``; ``Tanh``, ``Sigmoid``, ``ReLU``, ``Identity`` ->
the activation part; this module's :class:`GroupSort` and :class:`TemperedSigmoid` torch
modules (torch has none) -> ``GroupSort``, ``TemperedSigmoid``. A nested
``torch.nn.Sequential`` is flattened (its modules named ``"2.0"``, ``"2.1"``, ...). A module
without a bias (``bias=False``) becomes a part whose bias set is ``{0}`` (``bias_bound=0``):
the function is the same, its bias gradient is counted in ``K`` and clipping (a
conservative norm) and projected away after each step; ``to_torch`` gives back a module
without a bias. Every parameter is trained (``requires_grad`` is not read). An embedding's indices outside the table
are clamped (the part's rule for bad input) where torch raises. ``ReLU`` and ``GroupSort``
convert, but their derivatives jump, so the computed gradient has no finite forward error
``e`` (:mod:`opendp_hybridad.nn.protocol`) and DP-SGD's float-sum argument does not apply to them.

The mappings are registries (a dict keyed by torch class name, filled by
:func:`register_torch_module`; and one keyed by part kind, filled by
:func:`register_part_to_torch`): a new module is one function plus a registration.

torch is optional: this module imports it on first use, so importing
``opendp_hybridad.nn`` (or this module) never loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from opendp_hybridad import validation
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.nn.layers import Activation, Identity, Logistic, Loss, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from opendp_hybridad.nn.layers import TemperedSigmoid as TemperedSigmoidActivation
from opendp_hybridad.nn.parts.activation import Elementwise
from opendp_hybridad.nn.parts.conv import Conv1d as Conv1dPart
from opendp_hybridad.nn.parts.conv import Conv2d as Conv2dPart
from opendp_hybridad.nn.parts.dense import Dense
from opendp_hybridad.nn.parts.embedding import Embedding as EmbeddingPart
from opendp_hybridad.nn.parts.flatten import Flatten as FlattenPart
from opendp_hybridad.nn.parts.groupsort import GroupSort as GroupSortPart
from opendp_hybridad.nn.parts.pooling import AvgPool1d as AvgPool1dPart
from opendp_hybridad.nn.parts.pooling import AvgPool2d as AvgPool2dPart
from opendp_hybridad.nn.protocol import Layer, Params, Shape
from opendp_hybridad.nn.registry import layer_kind
from opendp_hybridad.nn.sequential import Sequential

if TYPE_CHECKING:
    import torch

__all__ = ["DefaultWeightSetWarning", "WeightSet", "default_weight_set", "from_torch",
           "load_into_torch", "register_part_to_torch", "register_torch_module", "supported_modules", "to_torch"]

#: the smallest bound the default weight set uses: a zero bias (or table) still gets room to train
DEFAULT_FLOOR = 2.0**-4

#: the fields of a part that declare its weight set (not its architecture)
_WEIGHT_FIELDS = frozenset({"weight_bound", "bias_bound", "norm_ball"})


def _torch():
    """The torch package, imported on first use (an optional dependency)."""
    try:
        import torch
    except ModuleNotFoundError as missing:
        raise ModuleNotFoundError("the torch bridge needs PyTorch: pip install 'opendp-hybridad[torch]'", name="torch") from missing
    return torch


class DefaultWeightSetWarning(UserWarning):
    """:func:`from_torch` gave a module the default weight set (a box around its current weights): declare one to silence it."""


@dataclass(frozen=True)
class WeightSet:
    """A declared weight set for one module: the box ``|W_ij| <= weight_bound`` (or, ``norm_ball=True``, the
    Frobenius ball ``||W||_F <= weight_bound``) and ``|b_j| <= bias_bound``.

    ``bias_bound`` None means ``weight_bound``. An embedding has no bias (its bound is not read);
    a module without a bias gets ``bias_bound=0`` whatever is declared (its bias is zero).
    """

    weight_bound: float
    bias_bound: float | None = None
    norm_ball: bool = False

    def __post_init__(self) -> None:
        for name in ("weight_bound", "bias_bound"):
            value = getattr(self, name)
            if value is None and name == "bias_bound":
                continue
            # as a float no larger than declared (validation.set_bound)
            object.__setattr__(self, name, validation.set_bound(f"WeightSet: {name}", value))
        if not isinstance(self.norm_ball, bool):
            raise DeclarationError("WeightSet: norm_ball must be True or False")

    @property
    def bias(self) -> float:
        return self.weight_bound if self.bias_bound is None else self.bias_bound


def _power_of_two_above(value: float) -> float:
    """The smallest power of two ``>= max(value, DEFAULT_FLOOR)``, exactly (frexp, no rounding); ``inf`` for non-finite."""
    if not math.isfinite(value):
        return math.inf
    if value <= DEFAULT_FLOOR:
        return DEFAULT_FLOOR
    mantissa, exponent = math.frexp(value)  # value = mantissa 2^exponent, 0.5 <= mantissa < 1
    return math.ldexp(1.0, exponent - 1) if mantissa == 0.5 else math.ldexp(1.0, exponent)


def default_weight_set(weight: np.ndarray, bias: np.ndarray | None = None) -> WeightSet:
    """The default set: a box whose bounds are the smallest powers of two (at least ``DEFAULT_FLOOR``) not below
    the largest ``|W_ij|`` and the largest ``|b_j|`` (``0`` without a bias). It contains the given weights; training
    may move them up to about twice as far before the projection clips."""
    w = _power_of_two_above(float(np.abs(weight).max(initial=0.0)))
    b = 0.0 if bias is None else _power_of_two_above(float(np.abs(bias).max(initial=0.0)))
    return WeightSet(w, b, False)


# -- the registries -----------------------------------------------------------------------------------


@dataclass
class _Context:
    """What a converter reads besides its module: its name for messages, its input shape, and its weight set."""

    label: str  # "torch module 3 (Linear)"
    input_shape: Shape
    declared: WeightSet | None
    structure_only: bool = False  # load_into_torch: the architecture, no weight set needed
    defaulted: list[str] = field(default_factory=list)

    def refuse(self, message: str) -> DeclarationError:
        return DeclarationError(f"{self.label} is not supported: {message}")

    def weight_set(self, weight: np.ndarray, bias: np.ndarray | None) -> WeightSet:
        """The declared set (the bias bound 0 for a module without one), or the default with a note for the warning."""
        if self.structure_only:
            return WeightSet(1.0, 0.0 if bias is None else 1.0)
        if self.declared is not None:
            return dataclasses.replace(self.declared, bias_bound=0.0) if bias is None else self.declared
        chosen = default_weight_set(weight, bias)
        self.defaulted.append(f"{self.label}: |W_ij| <= {chosen.weight_bound:g}"
                              + (f", |b_j| <= {chosen.bias:g}" if bias is not None else ""))
        return chosen


#: a converter: (torch module, context) -> (part, its float64 parameters)
Converter = Callable[[Any, _Context], tuple[Layer, Params]]


@dataclass(frozen=True)
class _Entry:
    convert: Converter
    resolve: Callable[[], type]  # the one class accepted under this name (a subclass may change forward)


_FROM_TORCH: dict[str, _Entry] = {}
#: part kind -> (part, its params, dtype) -> a torch module with those weights
_TO_TORCH: dict[str, Callable[[Layer, Params, Any], Any]] = {}


def register_torch_module(name: str, resolve: Callable[[], type] | None = None) -> Callable[[Converter], Converter]:
    """Decorator: register ``convert`` for the torch module class ``name`` (by default ``torch.nn.<name>``).

    Only that exact class converts: a subclass of the same or another name may override ``forward``.
    """
    def decorate(convert: Converter) -> Converter:
        _FROM_TORCH[name] = _Entry(convert, resolve or (lambda: getattr(_torch().nn, name)))
        return convert

    return decorate


def register_part_to_torch(kind: str) -> Callable[[Callable[[Layer, Params, Any], Any]], Callable[[Layer, Params, Any], Any]]:
    """Decorator: register the builder of the torch module for parts of ``kind`` (``(part, params, dtype) -> module``)."""
    def decorate(build: Callable[[Layer, Params, Any], Any]) -> Callable[[Layer, Params, Any], Any]:
        _TO_TORCH[kind] = build
        return build

    return decorate


def supported_modules() -> list[str]:
    """Names of the torch module classes :func:`from_torch` converts."""
    return sorted(_FROM_TORCH)


# -- torch modules torch does not have ----------------------------------------------------------------------


@functools.cache
def _bridge_classes() -> dict[str, type]:
    """The bridge's own torch modules, built once (so ``isinstance`` and pickling see one class each)."""
    torch = _torch()

    class GroupSort(torch.nn.Module):
        """Sort each group of ``group_size`` consecutive units of dim 1 (ascending unless ``descending``; MaxMin is
        ``GroupSort(2, descending=True)``); the torch twin of :class:`opendp_hybridad.nn.parts.groupsort.GroupSort`."""

        def __init__(self, group_size: int = 2, descending: bool = False) -> None:
            super().__init__()
            self.group_size = int(group_size)
            self.descending = bool(descending)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            if len(shape) < 2 or shape[1] % self.group_size:
                raise ValueError(f"GroupSort: dim 1 must be a multiple of {self.group_size}")
            grouped = x.reshape(shape[0], shape[1] // self.group_size, self.group_size, *shape[2:])
            # stable, as the part's argsort: ties keep their order
            return torch.sort(grouped, dim=2, descending=self.descending, stable=True).values.reshape(shape)

        def extra_repr(self) -> str:
            return f"group_size={self.group_size}, descending={self.descending}"

    class TemperedSigmoid(torch.nn.Module):
        """``scale * sigmoid(inverse_temperature * x) - offset`` (Papernot et al. 2020); the torch twin of
        :class:`opendp_hybridad.nn.layers.TemperedSigmoid`."""

        def __init__(self, scale: float = 2.0, inverse_temperature: float = 2.0, offset: float = 1.0) -> None:
            super().__init__()
            self.scale, self.inverse_temperature, self.offset = float(scale), float(inverse_temperature), float(offset)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * torch.sigmoid(self.inverse_temperature * x) - self.offset

        def extra_repr(self) -> str:
            return f"scale={self.scale:g}, inverse_temperature={self.inverse_temperature:g}, offset={self.offset:g}"

    for cls in (GroupSort, TemperedSigmoid):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {"GroupSort": GroupSort, "TemperedSigmoid": TemperedSigmoid}


def __getattr__(name: str) -> Any:
    # the torch modules are built when first asked for, so importing this module does not import torch
    if name in ("GroupSort", "TemperedSigmoid"):
        return _bridge_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"GroupSort", "TemperedSigmoid"})


# -- torch -> parts ------------------------------------------------------------------------------------


def _array(tensor: torch.Tensor, ctx: _Context) -> np.ndarray:
    """A float64 C-order copy: exact from any real floating dtype (float16, bfloat16, float32 embed in float64)."""
    torch = _torch()
    if not tensor.is_floating_point():
        raise ctx.refuse("its parameters are not real floating point")
    return np.array(tensor.detach().to(device="cpu", dtype=torch.float64).numpy(), dtype=np.float64, order="C", copy=True)


def _ints(value: Any, nd: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * nd


def _bias(module: Any, out: int, ctx: _Context) -> tuple[np.ndarray, np.ndarray | None]:
    """``(bias as float64, the module's own bias or None)``: zeros for a module without a bias."""
    if module.bias is None:
        return np.zeros(out), None
    b = _array(module.bias, ctx)
    return b, b


@register_torch_module("Linear")
def _linear(module: Any, ctx: _Context) -> tuple[Layer, Params]:
    W = _array(module.weight, ctx)
    b, own = _bias(module, module.out_features, ctx)
    ws = ctx.weight_set(W, own)
    return Dense(int(module.in_features), int(module.out_features), float(ws.weight_bound), float(ws.bias), ws.norm_ball), (W, b)


def _conv(part_cls: type, nd: int) -> Converter:
    def convert(module: Any, ctx: _Context) -> tuple[Layer, Params]:
        if module.padding_mode != "zeros":
            raise ctx.refuse(f"padding_mode={module.padding_mode!r} (only zero padding is)")
        if _ints(module.dilation, nd) != (1,) * nd:
            raise ctx.refuse("dilation other than 1")
        if module.groups != 1:
            raise ctx.refuse("groups other than 1")
        kernel = _ints(module.kernel_size, nd)
        if module.padding == "valid":
            padding = (0,) * nd
        elif module.padding == "same":
            if any(k % 2 == 0 for k in kernel):
                raise ctx.refuse("padding='same' with an even kernel pads unevenly")
            padding = tuple((k - 1) // 2 for k in kernel)
        else:
            padding = _ints(module.padding, nd)
        W = _array(module.weight, ctx)
        b, own = _bias(module, module.out_channels, ctx)
        ws = ctx.weight_set(W, own)
        part = part_cls(int(module.in_channels), int(module.out_channels), kernel, _ints(module.stride, nd), padding,
                        float(ws.weight_bound), float(ws.bias), ws.norm_ball)
        return part, (W, b)

    return convert


register_torch_module("Conv1d")(_conv(Conv1dPart, 1))
register_torch_module("Conv2d")(_conv(Conv2dPart, 2))


def _avgpool(part_cls: type, nd: int) -> Converter:
    def convert(module: Any, ctx: _Context) -> tuple[Layer, Params]:
        kernel = _ints(module.kernel_size, nd)
        stride = kernel if module.stride is None else _ints(module.stride, nd)
        if stride != kernel:
            raise ctx.refuse("a stride other than the kernel size (windows must not overlap)")
        if _ints(module.padding, nd) != (0,) * nd:
            raise ctx.refuse("padding")
        if module.ceil_mode:
            raise ctx.refuse("ceil_mode=True (a partial window)")
        if getattr(module, "divisor_override", None) is not None:
            raise ctx.refuse("divisor_override")
        return part_cls(kernel), ()

    return convert


register_torch_module("AvgPool1d")(_avgpool(AvgPool1dPart, 1))
register_torch_module("AvgPool2d")(_avgpool(AvgPool2dPart, 2))


@register_torch_module("Flatten")
def _flatten(module: Any, ctx: _Context) -> tuple[Layer, Params]:
    last = len(ctx.input_shape)  # the batch axis is 0, so the last per-example axis is len(shape)
    if module.start_dim != 1 or module.end_dim not in (-1, last):
        raise ctx.refuse("only Flatten(start_dim=1, end_dim=-1) (every per-example axis) is")
    return FlattenPart(), ()


@register_torch_module("Embedding")
def _embedding(module: Any, ctx: _Context) -> tuple[Layer, Params]:
    if module.padding_idx is not None:
        raise ctx.refuse("padding_idx (its row gets no gradient)")
    if module.max_norm is not None:
        raise ctx.refuse("max_norm (rows renormalised in the forward pass)")
    if module.scale_grad_by_freq:
        raise ctx.refuse("scale_grad_by_freq")
    E = _array(module.weight, ctx)
    ws = ctx.weight_set(E, None)
    return EmbeddingPart(int(module.num_embeddings), int(module.embedding_dim), float(ws.weight_bound), ws.norm_ball), (E,)


def _activation(act: Callable[[], Activation]) -> Converter:
    def convert(module: Any, ctx: _Context) -> tuple[Layer, Params]:
        return Elementwise(act()), ()

    return convert


for _name, _act in (("Tanh", Tanh), ("Sigmoid", Sigmoid), ("ReLU", ReLU), ("Identity", Identity)):
    register_torch_module(_name)(_activation(_act))


@register_torch_module("GroupSort", resolve=lambda: _bridge_classes()["GroupSort"])
def _groupsort(module: Any, ctx: _Context) -> tuple[Layer, Params]:
    return GroupSortPart(module.group_size, module.descending), ()


@register_torch_module("TemperedSigmoid", resolve=lambda: _bridge_classes()["TemperedSigmoid"])
def _tempered(module: Any, ctx: _Context) -> tuple[Layer, Params]:
    return Elementwise(TemperedSigmoidActivation(module.scale, module.inverse_temperature, module.offset)), ()


#: why a common module is refused, where the general message would not say
_HINTS = {
    "BatchNorm1d": "it mixes the examples of a batch, so per-example gradients (and clipping) are undefined",
    "BatchNorm2d": "it mixes the examples of a batch, so per-example gradients (and clipping) are undefined",
    "Dropout": "it is random in training; the certified model is deterministic (remove it)",
    "Softmax": "the loss applies the softmax (end the model with the logits)",
    "LogSoftmax": "the loss applies the softmax (end the model with the logits)",
    "MaxPool1d": "use AvgPool1d (max pooling's derivative jumps)",
    "MaxPool2d": "use AvgPool2d (max pooling's derivative jumps)",
}


def _leaves(module: Any, prefix: str = "", position: str = "") -> list[tuple[str, str, Any]]:
    """``(position, torch name, module)`` of each module, nested ``torch.nn.Sequential`` flattened (positions ``"2.1"``)."""
    torch = _torch()
    out = []
    for i, (name, child) in enumerate(module.named_children()):
        where, called = f"{position}{i}", f"{prefix}{name}"
        if type(child) is torch.nn.Sequential:
            out += _leaves(child, f"{called}.", f"{where}.")
        else:
            out.append((where, called, child))
    return out


def _label(position: str, name: str, module: Any) -> str:
    named = "" if name == position else f" '{name}'"
    return f"torch module {position}{named} ({type(module).__name__})"


def _check_sequential(module: Any, who: str) -> None:
    torch = _torch()
    if type(module) is not torch.nn.Sequential:
        raise DeclarationError(f"{who} takes a torch.nn.Sequential, not {type(module).__name__}")


def _convert(position: str, name: str, module: Any, ctx: _Context) -> tuple[Layer, Params]:
    cls_name = type(module).__name__
    entry = _FROM_TORCH.get(cls_name)
    if entry is None or type(module) is not entry.resolve():
        hint = _HINTS.get(cls_name) if entry is None else f"only {cls_name} of torch itself is, not another class of that name"
        raise ctx.refuse(hint or f"the bridge converts {', '.join(supported_modules())}")
    try:
        return entry.convert(module, ctx)
    except DeclarationError as refused:
        message = str(refused)
        raise DeclarationError(message if message.startswith(ctx.label) else f"{ctx.label}: {message}") from None


def _weight_set_for(weight_sets: WeightSet | Mapping[int | str, WeightSet] | None, position: str, name: str) -> WeightSet | None:
    if weight_sets is None or isinstance(weight_sets, WeightSet):
        return weight_sets
    for key in (name, position, int(position) if position.isdigit() else None):
        if key is not None and key in weight_sets:
            return weight_sets[key]
    return None


def _torch_loss(loss: Any) -> Loss:
    if isinstance(loss, Loss):
        return loss
    torch = _torch()
    if type(loss) is torch.nn.CrossEntropyLoss:
        if loss.weight is not None or loss.label_smoothing != 0.0:
            raise DeclarationError("loss CrossEntropyLoss: class weights and label smoothing are not supported")
        return SoftmaxCrossEntropy()
    if type(loss) is torch.nn.BCEWithLogitsLoss:
        if loss.weight is not None or loss.pos_weight is not None:
            raise DeclarationError("loss BCEWithLogitsLoss: weight and pos_weight are not supported")
        return Logistic()
    if type(loss) is torch.nn.MSELoss:
        raise DeclarationError("loss MSELoss averages the squares; use nn.MeanSquaredError() (0.5 ||z - y||^2 per example)")
    raise DeclarationError(f"loss {type(loss).__name__} is not supported: give an nn.layers loss "
                           "(SoftmaxCrossEntropy, MeanSquaredError, Logistic), CrossEntropyLoss or BCEWithLogitsLoss")


def from_torch(module: torch.nn.Sequential, loss: Loss | Any = None, *, input_bound: float | np.ndarray,
               input_shape: Sequence[int] | None = None, label_bound: float = 1.0,
               weight_sets: WeightSet | Mapping[int | str, WeightSet] | None = None) -> tuple[Sequential, list[Params]]:
    """``(model, params)``: the parts computing ``module``'s function and its weights as float64 arrays, copied exactly.

    :param loss: an :mod:`opendp_hybridad.nn.layers` loss, or torch's ``CrossEntropyLoss`` /
        ``BCEWithLogitsLoss``; default softmax cross-entropy.
    :param input_bound, input_shape, label_bound: as :class:`~opendp_hybridad.nn.sequential.Sequential`
        (``input_shape`` per example; by default a first ``Linear``'s ``(in_features,)``).
    :param weight_sets: the declared weight sets (module docstring); a module with parameters
        and none declared gets :func:`default_weight_set` and a :class:`DefaultWeightSetWarning`.

    Raises ``DeclarationError`` naming the module (position and class) for a module or an
    option that does not convert, a shape that does not fit, or weights outside their declared set.
    """
    _check_sequential(module, "from_torch")
    leaves = _leaves(module)
    if isinstance(weight_sets, Mapping):
        known = {key for position, name, _ in leaves for key in (position, name, int(position) if position.isdigit() else None)}
        unknown = [key for key in weight_sets if key not in known]
        if unknown:
            raise DeclarationError(f"weight_sets names no module of the Sequential: {unknown!r}")
    elif weight_sets is not None and not isinstance(weight_sets, WeightSet):
        raise DeclarationError("weight_sets must be a WeightSet or a mapping from module positions or names to WeightSets")
    if not leaves:
        raise DeclarationError("from_torch: the torch.nn.Sequential is empty")
    shape: Shape | None = tuple(int(s) for s in input_shape) if input_shape is not None else None
    parts: list[Layer] = []
    params: list[Params] = []
    defaulted: list[str] = []
    for position, name, child in leaves:
        label = _label(position, name, child)
        ctx = _Context(label, shape if shape is not None else (), _weight_set_for(weight_sets, position, name))
        part, ps = _convert(position, name, child, ctx)
        if shape is None:
            shape = part.expected_input_shape()
            if shape is None:
                raise DeclarationError(f"{label}: declare input_shape= (the per-example input shape)")
        try:
            out_shape = tuple(part.output_shape(shape))
        except DeclarationError as refused:
            raise DeclarationError(f"{label}: {refused}") from None
        if ps and any(not np.array_equal(a, p) for a, p in zip(ps, part.project_params(ps), strict=True)):
            raise DeclarationError(f"{label}: its current weights lie outside the declared weight set (declare one that contains them)")
        parts.append(part)
        params.append(tuple(ps))
        defaulted += ctx.defaulted
        shape = out_shape
    if defaulted:
        warnings.warn("no weight set declared, so boxes around the current weights: " + "; ".join(defaulted)
                      + " (declare weight_sets= for the certificate you mean)", DefaultWeightSetWarning, stacklevel=2)
    model = Sequential(parts, _torch_loss(SoftmaxCrossEntropy() if loss is None else loss), input_bound=input_bound,
                       label_bound=label_bound, input_shape=input_shape if input_shape is not None else parts[0].expected_input_shape())
    return model, params


# -- parts -> torch ----------------------------------------------------------------------------------------


def _tensor(array: np.ndarray, dtype: Any) -> torch.Tensor:
    torch = _torch()
    return torch.from_numpy(np.array(array, dtype=np.float64, order="C", copy=True)).to(dtype)


def _set(param: torch.Tensor, array: np.ndarray) -> None:
    """Write ``array`` into a torch parameter in place (its own dtype and device)."""
    torch = _torch()
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.array(array, dtype=np.float64, order="C", copy=True)).reshape(param.shape))


def _zero_bias(part: Layer, params: Params) -> bool:
    """A part whose bias set is ``{0}`` and whose bias is zero: a torch module without a bias."""
    return getattr(part, "bias_bound", None) == 0.0 and not np.any(params[1])


@register_part_to_torch("dense")
def _to_linear(part: Layer, params: Params, dtype: Any) -> Any:
    torch = _torch()
    assert isinstance(part, Dense)
    m = torch.nn.Linear(part.in_features, part.out_features, bias=not _zero_bias(part, params), dtype=dtype)
    _write(m, part, params)
    return m


def _to_conv(part: Layer, params: Params, dtype: Any) -> Any:
    torch = _torch()
    assert isinstance(part, (Conv1dPart, Conv2dPart))
    cls = torch.nn.Conv1d if isinstance(part, Conv1dPart) else torch.nn.Conv2d
    m = cls(part.in_channels, part.out_channels, part.kernel_size, stride=part.stride, padding=part.padding,
            bias=not _zero_bias(part, params), dtype=dtype)
    _write(m, part, params)
    return m


register_part_to_torch("conv1d")(_to_conv)
register_part_to_torch("conv2d")(_to_conv)
register_part_to_torch("spectral_conv1d")(_to_conv)  # a subclass of Conv1d: the same module, the same weights
register_part_to_torch("spectral_conv2d")(_to_conv)


def _to_avgpool(part: Layer, params: Params, dtype: Any) -> Any:
    torch = _torch()
    assert isinstance(part, (AvgPool1dPart, AvgPool2dPart))
    cls = torch.nn.AvgPool1d if isinstance(part, AvgPool1dPart) else torch.nn.AvgPool2d
    return cls(part.kernel_size, stride=part.kernel_size)


register_part_to_torch("avgpool1d")(_to_avgpool)
register_part_to_torch("avgpool2d")(_to_avgpool)


@register_part_to_torch("flatten")
def _to_flatten(part: Layer, params: Params, dtype: Any) -> Any:
    return _torch().nn.Flatten()


@register_part_to_torch("embedding")
def _to_embedding(part: Layer, params: Params, dtype: Any) -> Any:
    assert isinstance(part, EmbeddingPart)
    if part.channels_first:
        raise DeclarationError(f"{part.describe()}: channels_first=True has no torch module (torch's Embedding gives (L, dim))")
    m = _torch().nn.Embedding(part.num_embeddings, part.dim, dtype=dtype)
    _write(m, part, params)
    return m


@register_part_to_torch("activation")
def _to_activation(part: Layer, params: Params, dtype: Any) -> Any:
    torch = _torch()
    assert isinstance(part, Elementwise)
    act = part.activation
    simple = {Tanh: torch.nn.Tanh, Sigmoid: torch.nn.Sigmoid, ReLU: torch.nn.ReLU, Identity: torch.nn.Identity}
    if type(act) in simple:
        return simple[type(act)]()
    if type(act) is TemperedSigmoidActivation:
        return _bridge_classes()["TemperedSigmoid"](act.scale, act.inverse_temperature, act.offset)
    raise DeclarationError(f"activation {act.name} has no torch module")


def _to_groupsort(part: Layer, params: Params, dtype: Any) -> Any:
    assert isinstance(part, GroupSortPart)
    return _bridge_classes()["GroupSort"](part.group_size, part.descending)


register_part_to_torch("groupsort")(_to_groupsort)
register_part_to_torch("maxmin")(_to_groupsort)


def _write(m: Any, part: Layer, params: Params) -> None:
    """Copy a part's arrays into its torch module's parameters (weight, then bias if the module has one)."""
    _set(m.weight, params[0])
    if len(params) > 1:
        if getattr(m, "bias", None) is not None:
            _set(m.bias, params[1])
        elif np.any(params[1]):
            raise DeclarationError(f"{part.describe()}: the torch module has no bias but the parameters' bias is not zero")


def _parts_and_params(model: Any, params: Sequence[Params]) -> tuple[list[Layer], list[Params]]:
    """The parts and per-part parameters, shapes checked (an MLP's ``(W, b)`` per dense layer is spread over its parts)."""
    parts = list(model.parts)
    params = [tuple(ps) for ps in params]
    if len(params) != len(parts) and hasattr(model, "to_sequential"):
        dense = iter(params)  # MLP: (W, b) per dense layer, its activations have none
        params = [next(dense, ()) if isinstance(p, Dense) else () for p in parts]
    if len(params) != len(parts):
        raise DeclarationError(f"params: {len(params)} entries for {len(parts)} parts (one tuple per part, () without parameters)")
    shape: Shape = tuple(model.input_shape)
    for i, (part, ps) in enumerate(zip(parts, params, strict=True)):
        expected = part.param_shapes(shape)
        if tuple(tuple(np.shape(a)) for a in ps) != tuple(expected):
            raise DeclarationError(f"params of part {i} ({part.describe()}): shapes must be {list(expected)}")
        shape = part.output_shape(shape)
    return parts, params


def to_torch(model: Sequential | Any, params: Sequence[Params], dtype: Any = None) -> torch.nn.Sequential:
    """A new ``torch.nn.Sequential`` computing ``model`` with ``params`` (a :class:`Sequential`'s, or an MLP's), in ``dtype``.

    ``dtype`` default ``torch.float64``: the weights are copied exactly; another floating
    dtype rounds them to nearest (exact for weights that are values of it). Raises
    ``DeclarationError`` for a part with no torch module (named by its position and kind).
    """
    torch = _torch()
    dtype = torch.float64 if dtype is None else dtype
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point and not dtype.is_complex):
        raise DeclarationError("to_torch: dtype must be a real floating torch dtype")
    parts, params = _parts_and_params(model, params)
    modules = []
    for i, (part, ps) in enumerate(zip(parts, params, strict=True)):
        kind = layer_kind(part)
        build = _TO_TORCH.get(kind)
        if build is None:
            raise DeclarationError(f"part {i} ({kind}) has no torch module")
        try:
            modules.append(build(part, ps, dtype))
        except DeclarationError as refused:
            raise DeclarationError(f"part {i}: {refused}") from None
    return torch.nn.Sequential(*modules)


def _architecture(part: Layer) -> tuple[type, dict[str, Any]]:
    """What a part computes, without its weight set (an activation's own parameters included)."""
    fields = {k: v for k, v in vars(part).items() if k not in _WEIGHT_FIELDS}
    if isinstance(part, Elementwise):
        fields["activation"] = (type(part.activation), vars(part.activation))
    return type(part), fields


def load_into_torch(module: torch.nn.Sequential, model: Sequential | Any, params: Sequence[Params]) -> torch.nn.Sequential:
    """Write ``params`` into ``module`` in place (each parameter keeps its dtype and device) and return ``module``.

    ``module`` must have ``model``'s architecture (the parts ``from_torch`` would make of it,
    weight sets aside); otherwise ``DeclarationError`` names the first module that differs.
    A module without a bias takes only a zero bias.
    """
    _check_sequential(module, "load_into_torch")
    parts, params = _parts_and_params(model, params)
    leaves = _leaves(module)
    if len(leaves) != len(parts):
        raise DeclarationError(f"load_into_torch: the torch module has {len(leaves)} modules, the model {len(parts)} parts")
    shape: Shape = tuple(model.input_shape)
    for i, ((position, name, child), part, ps) in enumerate(zip(leaves, parts, params, strict=True)):
        ctx = _Context(_label(position, name, child), shape, None, structure_only=True)
        mine, _ = _convert(position, name, child, ctx)
        if _architecture(mine) != _architecture(part):
            raise DeclarationError(f"{ctx.label} does not match part {i} ({part.describe()}) of the model")
        if ps:
            try:
                _write(child, part, ps)
            except DeclarationError as refused:
                raise DeclarationError(f"{ctx.label}: {refused}") from None
        shape = part.output_shape(shape)
    return module
