"""Models whose forward sees more of a layer/BatchNorm pair than its calls: a tensor of the pair read elsewhere (its
dtype, its shape, a tied function, the BatchNorm's γ, a module sharing the weight), or a hook at any level (the
model itself, a block, the layer, the BatchNorm, the activation after). Values drawn by hypothesis."""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from properties.strategies.floats import tensors

READS = ("dtype", "shape", "tied_function", "bn_weight", "tied_module")
HOOK_PLACES = ("model", "block", "layer", "bn", "activation")
HOOK_KINDS = ("forward", "forward_pre", "forward_with_kwargs", "forward_pre_with_kwargs")
values = st.floats(-4, 4, allow_nan=False, width=32)


def pair(spatial: int, width: int, W: torch.Tensor, b: torch.Tensor, stats: torch.Tensor) -> tuple[nn.Module, ...]:
    """(layer, BatchNorm) of `width` channels: a Linear and a BatchNorm1d, or a 1×1 Conv2d and a BatchNorm2d, in
    eval, holding the drawn W, b and the BatchNorm's (μ, v ≥ 0.25, γ, β) rows of `stats`."""
    layer: nn.Module
    if spatial == 0:
        layer, bn = nn.Linear(width, width, device="meta"), nn.BatchNorm1d(width)
        layer.weight = nn.Parameter(W.float())
    else:
        layer, bn = nn.Conv2d(width, width, 1, device="meta"), nn.BatchNorm2d(width)
        layer.weight = nn.Parameter(W.float()[:, :, None, None])
    layer.bias = nn.Parameter(b.float())
    with torch.no_grad():
        bn.running_mean.copy_(stats[0])
        bn.running_var.copy_(stats[1].abs() + 0.25)
        bn.weight.copy_(stats[2])
        bn.bias.copy_(stats[3])
    return layer.eval(), bn.eval()


class Rereads(nn.Module):
    """layer → BN, and forward reads a tensor of the pair once more, as `read` says."""

    def __init__(self, layer: nn.Module, bn: nn.Module, read: str):
        super().__init__()
        self.layer, self.bn, self.read = layer, bn, read
        self.function = F.linear if isinstance(layer, nn.Linear) else F.conv2d
        if read == "tied_module":
            self.head = nn.Linear(1, 1) if isinstance(layer, nn.Linear) else nn.Conv2d(1, 1, 1)
            self.head.weight = layer.weight  # tied: one Parameter, two modules
            self.head.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.read == "dtype":
            x = x.to(self.layer.weight.dtype)
        y = self.bn(self.layer(x))
        if self.read == "shape":
            y = y * self.layer.weight.shape[0]
        if self.read == "tied_function":
            y = self.function(y, self.layer.weight)
        if self.read == "bn_weight":
            y = y - self.bn.weight.sum()
        if self.read == "tied_module":
            y = self.head(y)
        return y


@dataclass(frozen=True)
class RereadCase:
    read: str
    spatial: int
    W: torch.Tensor
    b: torch.Tensor
    stats: torch.Tensor
    x: torch.Tensor

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        return Rereads(*pair(self.spatial, self.W.shape[0], self.W, self.b, self.stats), self.read).eval(), self.x


@st.composite
def reread_cases(draw: Any) -> RereadCase:
    """A pair of 1..3 channels (Linear or 1×1 Conv2d) whose tensors forward also reads elsewhere, and an input."""
    read, spatial, width = draw(st.sampled_from(READS)), draw(st.sampled_from((0, 2))), draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 3)), width, *((2, 2) if spatial else ()))
    return RereadCase(read, spatial, draw(tensors((width, width), values)), draw(tensors((width,), values)),
                      draw(tensors((4, width), values)), draw(tensors(shape, values)).float())


def hook(kind: str, scale: float) -> tuple[Any, dict[str, bool]]:
    """(a hook of `kind` that scales what it sees by `scale`, the keyword arguments that register it)."""
    if kind == "forward":
        return (lambda module, args, out: out * scale), {}
    if kind == "forward_pre":
        return (lambda module, args: (args[0] * scale,)), {}
    if kind == "forward_with_kwargs":
        return (lambda module, args, kwargs, out: out * scale), {"with_kwargs": True}
    return (lambda module, args, kwargs: ((args[0] * scale,), kwargs)), {"with_kwargs": True}


@dataclass(frozen=True)
class HookCase:
    place: str
    kind: str
    scale: float
    W: torch.Tensor
    b: torch.Tensor
    stats: torch.Tensor
    x: torch.Tensor

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        """Sequential(block = Sequential(Linear, BatchNorm1d), Tanh) with the hook at `place`."""
        layer, bn = pair(0, self.W.shape[0], self.W, self.b, self.stats)
        block = nn.Sequential(layer, bn)
        model = nn.Sequential(block, nn.Tanh()).eval()
        target = {"model": model, "block": block, "layer": layer, "bn": bn, "activation": model[1]}[self.place]
        fn, options = hook(self.kind, self.scale)
        if self.kind.startswith("forward_pre"):
            target.register_forward_pre_hook(fn, **options)
        else:
            target.register_forward_hook(fn, **options)
        return model, self.x


@st.composite
def hook_cases(draw: Any) -> HookCase:
    """Linear → BatchNorm1d → Tanh of 1..3 features, a hook of any kind at any level, and an input."""
    width = draw(st.integers(1, 3))
    return HookCase(draw(st.sampled_from(HOOK_PLACES)), draw(st.sampled_from(HOOK_KINDS)),
                    draw(st.sampled_from((-2.0, 0.5, 3.0))), draw(tensors((width, width), values)),
                    draw(tensors((width,), values)), draw(tensors((4, width), values)),
                    draw(tensors((draw(st.integers(1, 3)), width), values)).float())
