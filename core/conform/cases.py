"""A conformance case: a few standard torch layers with their tensor values written out, and an input.

A case builds its model (`build`, the global RNG forked around the constructors, whose values it then overwrites),
prints it as a few lines of Python that rebuild the same model and input bit for bit (`code`), and gives the model
the certified bound is computed on (`twin`): the model itself, or for a layer called at two places a model with
one copy of it per call, which computes the same outputs and whose plan folds every pair a correct folder may fold.
"""

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CHAIN, SHARED, PAIRED = "chain", "shared", "paired"  # an nn.Sequential; SharedConv; SharedPair
# The case families (core.conform.strategies draws each): the layer kinds of a chain of layer → BatchNorm pairs, and
# the shapes a law is about. A folder claims families (core.conform.folder); a law draws from one.
CONV, LINEAR, GROUPED, DEPTHWISE, DILATED, STRIDED, TRANSPOSED, CONV1D, CONV3D, CHANNELS_LAST = (
    "conv", "linear", "grouped", "depthwise", "dilated", "strided", "transposed", "conv1d", "conv3d", "channels_last")
SHARED_FAMILY, SHARED_PAIR, TRAINING, HALF, PADDED = "shared", "shared_pair", "training", "half", "padded"
FOLD_COLUMNS = {CONV: "conv", LINEAR: "linear", GROUPED: "grouped", DEPTHWISE: "depthwise", DILATED: "dilated",
                STRIDED: "strided", TRANSPOSED: "transposed", CONV1D: "1-d", CONV3D: "3-d",
                CHANNELS_LAST: "channels-last"}  # each family of layer → BatchNorm chains and its column
FOLD_FAMILIES = tuple(FOLD_COLUMNS)
FAMILIES = (*FOLD_FAMILIES, SHARED_FAMILY, SHARED_PAIR, TRAINING, HALF, PADDED)


def all_but(*families: str) -> frozenset[str]:
    """Every case family except these: what a folder claims, said by what it does not."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"no case family {', '.join(sorted(unknown))}: the families are {', '.join(FAMILIES)}")
    return frozenset(FAMILIES) - set(families)


class SharedConv(nn.Module):
    """One conv on two paths, a BatchNorm after it on the first only."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return self.bn(self.conv(x)), self.conv(x)


class SharedPair(nn.Module):
    """One conv and the BatchNorm after it, both called twice."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return self.bn(self.conv(x)), self.bn(self.conv(2 * x))


class UntiedConv(nn.Module):
    """SharedConv with a copy of the conv per path: the same outputs, bit for bit."""

    def __init__(self, first: nn.Module, conv: nn.Module):
        super().__init__()
        self.first, self.conv = first, conv

    def forward(self, x):
        return self.first(x), self.conv(x)


class UntiedPair(nn.Module):
    """SharedPair with a copy of the conv and the BatchNorm per call: the same outputs, bit for bit."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.first(x), self.second(2 * x)


FORMS = {SHARED: SharedConv, PAIRED: SharedPair}


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One torch.nn layer: its class name in torch.nn, constructor arguments, tensor values (float32, exactly
    representable in every dtype the case runs in) and training flag."""

    type: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()
    tensors: tuple[tuple[str, torch.Tensor], ...] = ()
    training: bool = False

    def constructor(self) -> str:
        """`nn.Conv2d(2, 3, 3, groups=2)`: the call that builds the layer."""
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"nn.{self.type}({', '.join(arguments)})"

    def build(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # the constructors draw initial values from the global RNG
            layer: nn.Module = getattr(nn, self.type)(*self.args, **dict(self.kwargs))
        with torch.no_grad():
            for name, value in self.tensors:
                getattr(layer, name).copy_(value)
        return layer.train(self.training)


@dataclass(frozen=True, eq=False)
class Case:
    """A model of `layers` in `form` (a Sequential, or one conv and BatchNorm called at two places), its input, the
    dtype both run in and whether they are channels-last; `family` names the strategy that drew it."""

    family: str
    layers: tuple[LayerSpec, ...]
    input: torch.Tensor
    form: str = CHAIN
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    def build(self) -> nn.Module:
        """The model, in eval mode but for the layers drawn in training mode."""
        layers = [spec.build() for spec in self.layers]
        model = nn.Sequential(*layers) if self.form == CHAIN else FORMS[self.form](*layers)
        model.training = False
        model = model.to(self.dtype)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def example(self) -> torch.Tensor:
        x = self.input.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def twin(self) -> nn.Module:
        """A model with the outputs of `build()`, bit for bit, and a layer per call: what the bound is computed on."""
        model = self.build()
        twin: nn.Module
        if isinstance(model, SharedConv):
            twin = UntiedConv(nn.Sequential(copy.deepcopy(model.conv), model.bn), model.conv)
        elif isinstance(model, SharedPair):
            first = nn.Sequential(copy.deepcopy(model.conv), copy.deepcopy(model.bn))
            twin = UntiedPair(first, nn.Sequential(model.conv, model.bn))
        else:
            return model
        for module in twin.modules():  # containers in eval like the model's; the layers keep their own flags
            if isinstance(module, (UntiedConv, UntiedPair, nn.Sequential)):
                module.training = False
        return twin

    def prefixes(self) -> list[str]:
        return [str(i) for i in range(len(self.layers))] if self.form == CHAIN else ["conv", "bn"]

    def describe(self) -> str:
        """One line: the layers in order, the input's shape and the dtype."""
        layers = " → ".join(spec.constructor().removeprefix("nn.") for spec in self.layers)
        form = {CHAIN: "", SHARED: "one conv on two paths, a BatchNorm after it on the first: ",
                PAIRED: "one conv → BatchNorm called twice: "}[self.form]
        extras = [str(self.dtype).removeprefix("torch.")] + (["channels-last"] if self.channels_last else [])
        return f"{form}{layers}; x {tuple(self.input.shape)}, {', '.join(extras)}"

    def code(self) -> str:
        """Python that builds this model (as `model`) and input (as `x`), bit for bit."""
        lines = ["import torch", "from torch import nn", ""]
        if self.form == CHAIN:
            lines.append("model = nn.Sequential(")
            lines += [f"    {spec.constructor()}," for spec in self.layers]
            lines.append(")")
        else:
            lines += [*inspect.getsource(FORMS[self.form]).splitlines(), ""]
            calls = ", ".join(spec.constructor() for spec in self.layers)
            lines.append(f"model = {FORMS[self.form].__name__}({calls})")
        lines.append("model.load_state_dict({")
        for prefix, spec in zip(self.prefixes(), self.layers):
            lines += [f"    {prefix + '.' + name!r}: {tensor_code(value)}," for name, value in spec.tensors]
        lines += ["}, strict=False)", "model.eval()"]
        lines += [f"model.{prefix}.train()" if prefix.isidentifier() else f"model[{prefix}].train()"
                  for prefix, spec in zip(self.prefixes(), self.layers) if spec.training]
        if self.dtype != torch.float32:
            lines.append(f"model = model.to({self.dtype})")
        x = f"x = {tensor_code(self.input)}"
        if self.dtype != torch.float32:
            x += f".to({self.dtype})"
        if self.channels_last:
            lines.append("model = model.to(memory_format=torch.channels_last)")
            x += ".contiguous(memory_format=torch.channels_last)"
        return "\n".join([*lines, x])


def tensor_code(value: torch.Tensor) -> str:
    """`torch.tensor([...]).reshape(...)`: a float32 tensor written out exactly (repr of a float round-trips)."""
    values = ", ".join(repr(float(v)) for v in value.flatten().tolist())
    shape = tuple(value.shape)
    if len(shape) == 1:
        return f"torch.tensor([{values}])"
    if math.prod(shape) == 0:
        return f"torch.zeros{shape}"
    return f"torch.tensor([{values}]).reshape{shape}"
