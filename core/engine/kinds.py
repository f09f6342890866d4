"""The layer-kind table: what bnfold knows about each layer type, in one entry per exact type.

An entry says which role a layer plays and how to read and rebuild it:
- `LinearKind` (core `Linear`, `torch.nn.Linear`) and `ConvKind` (`torch.nn.Conv1d/2d/3d`,
  `ConvTranspose1d/2d/3d`): affine layers with channels. Both read their weight as `blocks`, one
  (rows, out-channels) matrix per group whose rows are the group's input channels times the kernel
  offsets (channel-major), and rebuild a layer like the original from such blocks and a bias;
  a Linear is one group with a kernel of one offset. `LinearKind` also reads the weight as the
  plain (fan_in, fan_out) `matrix` and builds a layer from it;
- `NormKind` (core `BatchNorm1d`, `torch.nn.BatchNorm1d/2d/3d`): the eval-mode terms (μ, v, γ, β, ε) and
  how to build one from them, and which affine layers it can pair with (`spatial`);
- `ElementwiseKind` (tanh, sigmoid, the ReLU family, hard and smooth gates, identity, dropout) and
  `MapKind` (pooling, flatten): how to build one like a given one.
Every entry also names its `rule`, the error model that `core.engine.bound` propagates through it.

`fold`, `error_bound`, the torch.nn conversion (`core.makemore.torchnn`) and the property strategies
(`properties/strategies.py`, keyed by the same types) go through this table, so adding a layer kind
means adding an entry here, its rule in `core.engine.bound`, its strategy, and its laws (docs/design.md,
docs/design-conv.md).

Lookups are by exact type: a subclass may override `forward`, so nothing is assumed about it.
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from core.makemore.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh

# Where a module keeps its hooks. torch has no public way to list them; if a torch release renames
# these, `hooked` answers True for every layer, so fold keeps layers rather than folding unproven ones.
HOOK_ATTRIBUTES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class NormTerms(NamedTuple):
    """An eval-mode BatchNorm's running mean μ, running variance v, scale γ, shift β (None without affine), ε."""

    mean: torch.Tensor
    var: torch.Tensor
    gamma: torch.Tensor | None
    beta: torch.Tensor | None
    eps: float


@dataclass(frozen=True)
class LinearKind:
    """y = x·W + b with W (fan_in, fan_out); `matrix` reads W in that layout, `build` makes a layer from it.

    `linear_map(layer, z, weight)` is z through the layer's map with `weight` (in the layer's own
    layout) in place of its weight and no bias: the bound evaluates Σ_i z_i·|W_ij| with it.
    """

    type: type
    matrix: Callable[[nn.Module], torch.Tensor]
    build: Callable[[torch.Tensor, torch.Tensor | None], nn.Module]
    linear_map: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    rule: str = "linear"
    spatial: int = 0  # spatial dimensions of its input besides (batch, features)
    before: bool = True  # a BatchNorm right before it can fold into it

    def bias(self, layer: nn.Module) -> torch.Tensor | None:
        return layer.bias

    def blocks(self, layer: nn.Module) -> torch.Tensor:
        """The weight as (1, fan_in, fan_out): one group, a kernel of one offset."""
        return self.matrix(layer)[None]

    def rebuild(self, layer: nn.Module, blocks: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        return self.build(blocks[0], bias)

    def channels(self, layer: nn.Module) -> tuple[int, int]:
        """(input channels, output channels) = (fan_in, fan_out)."""
        fan_in, fan_out = self.matrix(layer).shape
        return fan_in, fan_out

    def groups(self, layer: nn.Module) -> int:
        return 1

    def kernel_volume(self, layer: nn.Module) -> int:
        return 1

    def terms(self, layer: nn.Module) -> int:
        """Products summed into each output: fan_in."""
        return self.matrix(layer).shape[0]

    def exact_before(self, layer: nn.Module) -> str | None:
        """Why a BatchNorm right before this layer would not fold exactly, or None: a Linear has no border."""
        return None


@dataclass(frozen=True)
class ConvKind:
    """A convolution (or its transpose) over `spatial` dimensions: per group, y = x·W + b on each patch.

    The weight of a convolution is (C_out, C_in/g, *k), of a transposed one (C_in, C_out/g, *k); both
    read as `blocks` (g, C_in/g·K, C_out/g), K = the kernel volume, rows (input channel, kernel offset).
    """

    type: type
    spatial: int
    transposed: bool = False
    rule: str = "conv"

    @property
    def before(self) -> bool:
        """A BatchNorm before a transposed convolution does not fold: its border outputs sum fewer terms."""
        return not self.transposed

    def bias(self, layer: nn.Module) -> torch.Tensor | None:
        return layer.bias

    def groups(self, layer: nn.Module) -> int:
        return layer.groups

    def kernel_volume(self, layer: nn.Module) -> int:
        return math.prod(layer.kernel_size)

    def channels(self, layer: nn.Module) -> tuple[int, int]:
        return layer.in_channels, layer.out_channels

    def blocks(self, layer: nn.Module) -> torch.Tensor:
        W, g = layer.weight, layer.groups
        c_in, c_out, K = layer.in_channels // g, layer.out_channels // g, self.kernel_volume(layer)
        if self.transposed:  # (C_in, C_out/g, *k) -> (g, C_in/g, C_out/g, K) -> (g, C_in/g, K, C_out/g)
            return W.reshape(g, c_in, c_out, K).permute(0, 1, 3, 2).reshape(g, c_in * K, c_out)
        # (C_out, C_in/g, *k) -> (g, C_out/g, C_in/g·K) -> transposed: a view, no copy
        return W.reshape(g, c_out, c_in * K).transpose(1, 2)

    def rebuild(self, layer: nn.Module, blocks: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """A layer with layer's hyperparameters, weight read back from `blocks`, and `bias` (None: none)."""
        g = layer.groups
        c_in, c_out, K = layer.in_channels // g, layer.out_channels // g, self.kernel_volume(layer)
        if self.transposed:
            W = blocks.reshape(g, c_in, K, c_out).permute(0, 1, 3, 2)
            W = W.reshape(layer.in_channels, c_out, *layer.kernel_size)
        else:  # a view when blocks are laid out as `blocks` reads them
            W = blocks.transpose(1, 2).reshape(layer.out_channels, c_in, *layer.kernel_size)
        if self.transposed:  # meta: no draw from any RNG
            new = self.type(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.output_padding, layer.groups, bias is not None, layer.dilation, layer.padding_mode,
                            device="meta")
        else:
            new = self.type(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, bias is not None, layer.padding_mode, device="meta")
        new.weight = nn.Parameter(W.contiguous())
        new.bias = None if bias is None else nn.Parameter(bias.contiguous())
        return new

    def terms(self, layer: nn.Module) -> int:
        """Products summed into each output: C_in/g·K, or for a transposed conv C_in/g·Π_d ⌈k_d·gcd(dil_d, s_d)/s_d⌉.

        Output p of a transposed conv sums input i at offset j where p = i·s − pad + j·dil, so
        j·dil ≡ p + pad (mod s): at most one j per residue class mod s/gcd(dil, s) (docs/design-conv.md).
        """
        per_channel = layer.in_channels // layer.groups
        if not self.transposed:
            return per_channel * self.kernel_volume(layer)
        return per_channel * math.prod(-(-k * math.gcd(d, s) // s)
                                       for k, d, s in zip(layer.kernel_size, layer.dilation, layer.stride))

    def linear_map(self, layer: nn.Module, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self.transposed:
            return layer._conv_forward(z, weight, None)
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.spatial - 1]
        return fn(z, weight, None, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)

    def exact_before(self, layer: nn.Module) -> str | None:
        """Why a BatchNorm right before this conv would not fold exactly, or None.

        With zero padding the padded border is 0 after the BatchNorm, not its shift t: the folded
        bias t·W would count border terms the original never had. Other padding modes copy
        BatchNorm'd values into the border, and no padding has no border.
        """
        if self.transposed:
            return "a transposed convolution sums fewer terms at its border, so no bias can hold t·W"
        if layer.padding_mode != "zeros":
            return None
        if layer.padding == "valid" or all(p == 0 for p in layer._reversed_padding_repeated_twice):
            return None
        return (f"the {type(layer).__name__} pads with zeros (padding {layer.padding}): its border would "
                f"see 0, not the BatchNorm's shift")


@dataclass(frozen=True)
class NormKind:
    """An eval-mode BatchNorm: z ↦ γ·(z − μ)/√(v + ε) + β per feature (dim 1).

    `spatial` lists the spatial dimensions of the affine layers it pairs with: (0,) a Linear,
    (1,) a Conv1d, (2,) a Conv2d, ...; a BatchNorm normalises dim 1, where those layers keep channels.
    """

    type: type
    terms: Callable[[nn.Module], NormTerms]
    build: Callable[[NormTerms, float | None], nn.Module]
    spatial: tuple[int, ...] = (0,)
    rule: str = "batchnorm"


@dataclass(frozen=True)
class ElementwiseKind:
    """A map applied to each element on its own: `rule` names its error model, `build(layer)` makes a like one."""

    type: type
    rule: str
    build: Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class MapKind:
    """A fixed map that is not elementwise (pooling, flatten): `rule` names its error model."""

    type: type
    rule: str
    build: Callable[[nn.Module], nn.Module] = copy.deepcopy


Kind = LinearKind | ConvKind | NormKind | ElementwiseKind | MapKind
AffineKind = LinearKind | ConvKind


def _torch_linear(W: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(W.shape[0], W.shape[1], bias=b is not None, device="meta")  # meta: no draw from any RNG
    layer.weight = nn.Parameter(W.T.contiguous())
    layer.bias = None if b is None else nn.Parameter(b)
    return layer


def _fill_norm(bn: nn.Module, terms: NormTerms, scale: str, shift: str) -> nn.Module:
    with torch.no_grad():
        bn.running_mean.copy_(terms.mean)
        bn.running_var.copy_(terms.var)
        if terms.gamma is not None:
            getattr(bn, scale).copy_(terms.gamma)
            getattr(bn, shift).copy_(terms.beta)
    return bn.eval()


def _core_norm(terms: NormTerms, momentum: float | None) -> BatchNorm1d:
    bn = BatchNorm1d(len(terms.mean), eps=terms.eps, momentum=0.1 if momentum is None else momentum,
                     affine=terms.gamma is not None, dtype=terms.mean.dtype, device=terms.mean.device)
    return _fill_norm(bn, terms, "gamma", "beta")


def _torch_norm(bn_type: type) -> Callable[[NormTerms, float | None], nn.Module]:
    def build(terms: NormTerms, momentum: float | None) -> nn.Module:
        bn = bn_type(len(terms.mean), eps=terms.eps, momentum=momentum, affine=terms.gamma is not None,
                     dtype=terms.mean.dtype, device=terms.mean.device)
        return _fill_norm(bn, terms, "weight", "bias")
    return build


def _torch_terms(bn: nn.Module) -> NormTerms:
    return NormTerms(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def _same(layer_type: type, *attributes: str) -> Callable[[nn.Module], nn.Module]:
    """build(layer) for an elementwise type: a new one with layer's `attributes` (e.g. negative_slope)."""
    return lambda layer: layer_type(**{a: getattr(layer, a) for a in attributes})


KINDS: dict[type, Kind] = {kind.type: kind for kind in (
    LinearKind(Linear, matrix=lambda layer: layer.weight, build=Linear.from_tensors,
               linear_map=lambda layer, z, W: z @ W),
    LinearKind(nn.Linear, matrix=lambda layer: layer.weight.T, build=_torch_linear,
               linear_map=lambda layer, z, W: F.linear(z, W)),
    *(ConvKind(t, spatial=d) for d, t in enumerate((nn.Conv1d, nn.Conv2d, nn.Conv3d), 1)),
    *(ConvKind(t, spatial=d, transposed=True)
      for d, t in enumerate((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), 1)),
    NormKind(BatchNorm1d, build=_core_norm,
             terms=lambda bn: NormTerms(bn.running_mean, bn.running_var, bn.gamma, bn.beta, bn.eps)),
    NormKind(nn.BatchNorm1d, build=_torch_norm(nn.BatchNorm1d), terms=_torch_terms, spatial=(0, 1)),
    NormKind(nn.BatchNorm2d, build=_torch_norm(nn.BatchNorm2d), terms=_torch_terms, spatial=(2,)),
    NormKind(nn.BatchNorm3d, build=_torch_norm(nn.BatchNorm3d), terms=_torch_terms, spatial=(3,)),
    ElementwiseKind(Tanh, "tanh", _same(Tanh)),
    ElementwiseKind(nn.Tanh, "tanh", _same(nn.Tanh)),
    ElementwiseKind(Sigmoid, "sigmoid", _same(Sigmoid)),
    ElementwiseKind(nn.Sigmoid, "sigmoid", _same(nn.Sigmoid)),
    ElementwiseKind(ReLU, "relu", _same(ReLU)),
    ElementwiseKind(nn.ReLU, "relu", _same(nn.ReLU, "inplace")),
    ElementwiseKind(nn.ReLU6, "hardtanh", _same(nn.ReLU6, "inplace")),
    ElementwiseKind(nn.Hardtanh, "hardtanh", _same(nn.Hardtanh, "min_val", "max_val", "inplace")),
    ElementwiseKind(nn.LeakyReLU, "leaky_relu", _same(nn.LeakyReLU, "negative_slope", "inplace")),
    ElementwiseKind(nn.Hardswish, "hardswish", _same(nn.Hardswish, "inplace")),
    ElementwiseKind(nn.Hardsigmoid, "hardsigmoid", _same(nn.Hardsigmoid, "inplace")),
    ElementwiseKind(nn.SiLU, "silu", _same(nn.SiLU, "inplace")),
    ElementwiseKind(nn.GELU, "gelu", _same(nn.GELU, "approximate")),
    ElementwiseKind(nn.Identity, "identity", _same(nn.Identity)),
    ElementwiseKind(nn.Dropout, "dropout", _same(nn.Dropout, "p", "inplace")),
    *(MapKind(t, "max_pool") for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                                       nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)),
    *(MapKind(t, "avg_pool") for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)),
    *(MapKind(t, "adaptive_avg_pool") for t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)),
    MapKind(nn.Flatten, "move"),
)}


def kind_of(layer: nn.Module) -> Kind | None:
    """The entry for layer's exact type, or None for a type (or subclass) the table does not know."""
    return KINDS.get(type(layer))


def is_linear(layer: nn.Module) -> bool:
    return isinstance(kind_of(layer), LinearKind)


def is_affine(layer: nn.Module) -> bool:
    """A Linear or a convolution of an exact type in the table: a layer a BatchNorm can fold into."""
    return isinstance(kind_of(layer), LinearKind | ConvKind)


def is_norm(layer: nn.Module) -> bool:
    return isinstance(kind_of(layer), NormKind)


NORM_TYPES = tuple(t for t, kind in KINDS.items() if isinstance(kind, NormKind))
AFFINE_TYPES = tuple(t for t, kind in KINDS.items() if isinstance(kind, LinearKind | ConvKind))


def is_batchnorm(module: nn.Module) -> bool:
    """Any BatchNorm, foldable or not: an instance of a BatchNorm kind or of torch's _BatchNorm (SyncBatchNorm, ...)."""
    return isinstance(module, NORM_TYPES + (nn.modules.batchnorm._BatchNorm,))


def hooked(module: nn.Module) -> bool:
    """True if a hook is registered on the module (or hooks cannot be seen): calling it may differ from its map."""
    return any(getattr(module, name, None) != {} for name in HOOK_ATTRIBUTES)


def fan_in(layer: nn.Module) -> int:
    """Products summed into each output of an affine layer: the n of its rounding bound γ(n + 1)."""
    return KINDS[type(layer)].terms(layer)


def norm_width(bn: nn.Module) -> int:
    return KINDS[type(bn)].terms(bn).mean.shape[0]


def rebuild_as(layer: nn.Module, target: type) -> nn.Module:
    """A layer of type `target` (same role) computing what `layer` computes, holding copies of its tensors."""
    source, kind = KINDS[type(layer)], KINDS[target]
    if type(source) is not type(kind) or (isinstance(kind, ConvKind) and target is not type(layer)):
        raise TypeError(f"a {type(layer).__name__} cannot become a {target.__name__}: they play different roles")
    with torch.no_grad():
        if isinstance(source, LinearKind):
            bias = source.bias(layer)
            return kind.build(source.matrix(layer).clone(), None if bias is None else bias.clone())
        if isinstance(source, ConvKind):
            bias = source.bias(layer)
            new = kind.rebuild(layer, source.blocks(layer).clone(), None if bias is None else bias.clone())
            return new.requires_grad_(layer.weight.requires_grad)
        if isinstance(source, NormKind):
            terms = NormTerms(*(t if t is None or isinstance(t, float) else t.clone() for t in source.terms(layer)))
            return kind.build(terms, layer.momentum)
    return kind.build(layer)
