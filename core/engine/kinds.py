"""The layer-kind table: what the engine knows about each layer type, in one entry per exact type.

An entry says which role a layer plays, how to read and rebuild it, and which rule bounds how far its output moves
when its input moves (`core.engine.bound.rules`):
- `LinearKind` and `ConvKind`: affine layers with channels. Both read their weight as `blocks`, one
  (rows, out-channels) matrix per group whose rows are the group's input channels times the kernel
  offsets (channel-major), and rebuild a layer like the original from such blocks and a bias;
  a Linear is one group with a kernel of one offset. `LinearKind` also reads the weight as the
  plain (fan_in, fan_out) `matrix` and builds a layer from it;
- `NormKind`: the eval-mode terms (μ, v, γ, β, ε) of a BatchNorm, how to build one from them, and which affine
  layers it can pair with (`spatial`);
- `ElementwiseKind` (activations, identity, dropout) and `MapKind` (pooling, flatten): how to build one like a
  given one, and the torch functions and tensor methods that compute the same map (`functions`, `methods`), so
  that a traced graph's call of one reads as the layer.

The table is filled by registration (`register`): `core.engine.catalog` registers torch's own layer types, and a
package with layer types of its own registers them the same way, so the engine never imports them. Lookups are by
exact type: a subclass may override `forward`, so nothing is assumed about it.
"""

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

# Where a module keeps its hooks. torch has no public way to list them; if a torch release renames
# these, `hooked` answers True for every layer, so fold keeps layers rather than folding unproven ones.
HOOK_ATTRIBUTES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

# rule(layer, x̂ in float64, D, u, η) -> bound on |layer(x̂) − layer(x̂')| given |x̂ − x̂'| ≤ D (core.engine.bound.rules)
Rule: TypeAlias = Callable[[Any, torch.Tensor, Any, float, float], Any]
# A torch function or tensor method's arguments after the input -> the layer that computes the same map
LayerOfCall: TypeAlias = Callable[..., nn.Module]
# A bound on how far a value of a traced graph moves between the two models (core.engine.bound): a float64 tensor,
# a tuple or list of bounds for a tuple or list, or 0 for a value that is no tensor
Bound: TypeAlias = Any
# An array or scalar of the fold algebra (core.engine.algebra): a torch tensor or float, or a numpy object array or
# Fraction (the exact check in rationals)
Array: TypeAlias = Any


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
    matrix: Callable[[Any], torch.Tensor]
    build: Callable[[torch.Tensor, torch.Tensor | None], nn.Module]
    linear_map: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
    rule: Rule
    spatial: int = 0  # spatial dimensions of its input besides (batch, features)
    before: bool = True  # a BatchNorm right before it can fold into it

    def bias(self, layer: Any) -> torch.Tensor | None:
        bias: torch.Tensor | None = layer.bias
        return bias

    def blocks(self, layer: Any) -> torch.Tensor:
        """The weight as (1, fan_in, fan_out): one group, a kernel of one offset."""
        return self.matrix(layer)[None]

    def rebuild(self, layer: Any, blocks: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        return self.build(blocks[0], bias)

    def channels(self, layer: Any) -> tuple[int, int]:
        """(input channels, output channels) = (fan_in, fan_out)."""
        fan_in, fan_out = self.matrix(layer).shape
        return fan_in, fan_out

    def groups(self, layer: Any) -> int:
        return 1

    def kernel_volume(self, layer: Any) -> int:
        return 1

    def terms(self, layer: Any) -> int:
        """Products summed into each output: fan_in."""
        return int(self.matrix(layer).shape[0])

    def exact_before(self, layer: Any) -> str | None:
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
    rule: Rule
    transposed: bool = False

    @property
    def before(self) -> bool:
        """A BatchNorm before a transposed convolution does not fold: its border outputs sum fewer terms."""
        return not self.transposed

    def bias(self, layer: Any) -> torch.Tensor | None:
        bias: torch.Tensor | None = layer.bias
        return bias

    def groups(self, layer: Any) -> int:
        return int(layer.groups)

    def kernel_volume(self, layer: Any) -> int:
        return math.prod(layer.kernel_size)

    def channels(self, layer: Any) -> tuple[int, int]:
        return int(layer.in_channels), int(layer.out_channels)

    def blocks(self, layer: Any) -> torch.Tensor:
        W, g = layer.weight, layer.groups
        c_in, c_out, K = layer.in_channels // g, layer.out_channels // g, self.kernel_volume(layer)
        if self.transposed:  # (C_in, C_out/g, *k) -> (g, C_in/g, C_out/g, K) -> (g, C_in/g, K, C_out/g)
            blocks: torch.Tensor = W.reshape(g, c_in, c_out, K).permute(0, 1, 3, 2).reshape(g, c_in * K, c_out)
            return blocks
        # (C_out, C_in/g, *k) -> (g, C_out/g, C_in/g·K) -> transposed: a view, no copy
        blocks = W.reshape(g, c_out, c_in * K).transpose(1, 2)
        return blocks

    def rebuild(self, layer: Any, blocks: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """A layer with layer's hyperparameters, weight read back from `blocks`, and `bias` (None: none)."""
        g = layer.groups
        c_in, c_out, K = layer.in_channels // g, layer.out_channels // g, self.kernel_volume(layer)
        if self.transposed:
            W = blocks.reshape(g, c_in, K, c_out).permute(0, 1, 3, 2)
            W = W.reshape(layer.in_channels, c_out, *layer.kernel_size)
        else:  # a view when blocks are laid out as `blocks` reads them
            W = blocks.transpose(1, 2).reshape(layer.out_channels, c_in, *layer.kernel_size)
        new: Any
        if self.transposed:  # meta: no draw from any RNG
            new = self.type(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.output_padding, layer.groups, bias is not None, layer.dilation, layer.padding_mode,
                            device="meta")
        else:
            new = self.type(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, bias is not None, layer.padding_mode, device="meta")
        new.weight = nn.Parameter(W.contiguous())
        new.bias = None if bias is None else nn.Parameter(bias.contiguous())
        module: nn.Module = new
        return module

    def terms(self, layer: Any) -> int:
        """Products summed into each output: C_in/g·K, or for a transposed conv C_in/g·Π_d ⌈k_d·gcd(dil_d, s_d)/s_d⌉.

        Output p of a transposed conv sums input i at offset j where p = i·s − pad + j·dil, so
        j·dil ≡ p + pad (mod s): at most one j per residue class mod s/gcd(dil, s) (docs/design-conv.md).
        """
        per_channel: int = layer.in_channels // layer.groups
        if not self.transposed:
            return per_channel * self.kernel_volume(layer)
        offsets: int = math.prod(-(-k * math.gcd(d, s) // s)
                                 for k, d, s in zip(layer.kernel_size, layer.dilation, layer.stride))
        return per_channel * offsets

    def linear_map(self, layer: Any, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor
        if not self.transposed:
            out = layer._conv_forward(z, weight, None)
            return out
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.spatial - 1]
        out = fn(z, weight, None, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
        return out

    def exact_before(self, layer: Any) -> str | None:
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
    terms: Callable[[Any], NormTerms]
    build: Callable[[NormTerms, float | None], nn.Module]
    rule: Rule
    spatial: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class ElementwiseKind:
    """A map applied to each element on its own: `rule` bounds it, `build(layer)` makes a like one.

    `functions` maps a torch function computing the same map to the layer its call stands for (built from the call's
    arguments after the input); `methods` does the same for tensor methods, by name.
    """

    type: type
    rule: Rule
    build: Callable[[Any], nn.Module]
    functions: Mapping[Callable[..., Any], LayerOfCall] = field(default_factory=dict)
    methods: Mapping[str, LayerOfCall] = field(default_factory=dict)


@dataclass(frozen=True)
class MapKind:
    """A fixed map that is not elementwise (pooling, flatten): `rule` bounds it; functions and methods as above."""

    type: type
    rule: Rule
    build: Callable[[Any], nn.Module] = copy.deepcopy
    functions: Mapping[Callable[..., Any], LayerOfCall] = field(default_factory=dict)
    methods: Mapping[str, LayerOfCall] = field(default_factory=dict)


Kind: TypeAlias = LinearKind | ConvKind | NormKind | ElementwiseKind | MapKind
AffineKind: TypeAlias = LinearKind | ConvKind
# The layers of the pooling rules (core.engine.bound.rules)
AvgPool: TypeAlias = nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d
AdaptiveAvgPool: TypeAlias = nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d

KINDS: dict[type, Kind] = {}
FUNCTIONS: dict[Callable[..., Any], LayerOfCall] = {}  # torch function -> the layer its call computes
METHODS: dict[str, LayerOfCall] = {}  # tensor method name -> the layer its call computes


def register(*kinds: Kind) -> None:
    """Add each kind to the table, keyed by its exact type, and its functions and methods to the call readings."""
    for kind in kinds:
        KINDS[kind.type] = kind
        if isinstance(kind, ElementwiseKind | MapKind):
            FUNCTIONS.update(kind.functions)
            METHODS.update(kind.methods)


def kind_of(layer: nn.Module) -> Kind | None:
    """The entry for layer's exact type, or None for a type (or subclass) the table does not know."""
    return KINDS.get(type(layer))


def is_linear(layer: nn.Module) -> bool:
    return isinstance(kind_of(layer), LinearKind)


def is_norm(layer: nn.Module) -> bool:
    return isinstance(kind_of(layer), NormKind)


def kind_types() -> tuple[type, ...]:
    return tuple(KINDS)


def affine_types() -> tuple[type, ...]:
    """The layer types a BatchNorm can fold into: Linears and convolutions."""
    return tuple(t for t, kind in KINDS.items() if isinstance(kind, LinearKind | ConvKind))


def is_batchnorm(module: nn.Module) -> bool:
    """Any BatchNorm, foldable or not: an instance of a BatchNorm kind or of torch's _BatchNorm (SyncBatchNorm, ...)."""
    norm_types = tuple(t for t, kind in KINDS.items() if isinstance(kind, NormKind))
    return isinstance(module, norm_types + (nn.modules.batchnorm._BatchNorm,))


def hooked(module: nn.Module) -> bool:
    """True if a hook is registered on the module (or hooks cannot be seen): calling it may differ from its map."""
    return any(getattr(module, name, None) != {} for name in HOOK_ATTRIBUTES)


def forward_pre_hooks(module: nn.Module) -> list[Any]:
    """The forward pre-hooks registered on the module, read where `hooked` reads them ([] if they cannot be seen)."""
    hooks = getattr(module, "_forward_pre_hooks", None)
    return list(hooks.values()) if isinstance(hooks, dict) else []


def affine_kind(layer: nn.Module) -> AffineKind:
    """The entry of an affine layer (one `affine_types` holds)."""
    kind = KINDS[type(layer)]
    assert isinstance(kind, LinearKind | ConvKind), f"{type(layer).__name__} is no affine layer"
    return kind


def norm_kind(bn: nn.Module) -> NormKind:
    """The entry of a BatchNorm of a kind in the table."""
    kind = KINDS[type(bn)]
    assert isinstance(kind, NormKind), f"{type(bn).__name__} is no BatchNorm kind"
    return kind


def fan_in(layer: nn.Module) -> int:
    """Products summed into each output of an affine layer: the n of its rounding bound γ(n + 1)."""
    return affine_kind(layer).terms(layer)


def norm_width(bn: nn.Module) -> int:
    return int(norm_kind(bn).terms(bn).mean.shape[0])


def fill_norm(bn: Any, terms: NormTerms, scale: str, shift: str) -> nn.Module:
    """bn (freshly built) holding `terms`, its γ and β in the attributes named `scale` and `shift`, in eval mode."""
    with torch.no_grad():
        bn.running_mean.copy_(terms.mean)
        bn.running_var.copy_(terms.var)
        if terms.gamma is not None and terms.beta is not None:
            getattr(bn, scale).copy_(terms.gamma)
            getattr(bn, shift).copy_(terms.beta)
    module: nn.Module = bn.eval()
    return module


def rebuild_as(layer: nn.Module, target: type) -> nn.Module:
    """A layer of type `target` (same role) computing what `layer` computes, holding copies of its tensors."""
    source, kind = KINDS[type(layer)], KINDS[target]
    if type(source) is not type(kind) or (isinstance(kind, ConvKind) and target is not type(layer)):
        raise TypeError(f"a {type(layer).__name__} cannot become a {target.__name__}: they play different roles")
    with torch.no_grad():
        if isinstance(source, LinearKind) and isinstance(kind, LinearKind):
            bias = source.bias(layer)
            return kind.build(source.matrix(layer).clone(), None if bias is None else bias.clone())
        if isinstance(source, ConvKind) and isinstance(kind, ConvKind):
            bias = source.bias(layer)
            new = kind.rebuild(layer, source.blocks(layer).clone(), None if bias is None else bias.clone())
            return new.requires_grad_(bool(layer.weight.requires_grad))
        if isinstance(source, NormKind) and isinstance(kind, NormKind):
            terms = NormTerms._make(t.clone() if isinstance(t, torch.Tensor) else t for t in source.terms(layer))
            return kind.build(terms, getattr(layer, "momentum", None))
        assert isinstance(kind, ElementwiseKind | MapKind)
        return kind.build(layer)
