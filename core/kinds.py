"""The layer-kind table: what bnfold knows about each layer type, in one entry per exact type.

An entry says which role a layer plays and how to read and rebuild it:
- `LinearKind` (core `Linear`, `torch.nn.Linear`): the weight as a (fan_in, fan_out) matrix and the
  bias, and how to build a layer of that kind from such a matrix;
- `NormKind` (core `BatchNorm1d`, `torch.nn.BatchNorm1d`): the eval-mode terms (μ, v, γ, β, ε) and how
  to build one from them;
- `ElementwiseKind` (tanh, sigmoid, ReLU, identity, dropout): how to build one.
Every entry also names its `rule`, the error model that `core.bound` propagates through it.

`fold`, `error_bound`, the torch.nn conversion (`core.torchnn`) and the property strategies
(`properties/strategies.py`, keyed by the same types) go through this table, so adding a layer kind
means adding an entry here, its rule in `core.bound`, its strategy, and its laws (docs/design.md).

Lookups are by exact type: a subclass may override `forward`, so nothing is assumed about it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from core.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh

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
    """y = x·W + b with W (fan_in, fan_out); `matrix` reads W in that layout, `build` makes a layer from it."""

    type: type
    matrix: Callable[[nn.Module], torch.Tensor]
    build: Callable[[torch.Tensor, torch.Tensor | None], nn.Module]
    rule: str = "linear"

    def bias(self, layer: nn.Module) -> torch.Tensor | None:
        return layer.bias


@dataclass(frozen=True)
class NormKind:
    """An eval-mode BatchNorm: z ↦ γ·(z − μ)/√(v + ε) + β per feature."""

    type: type
    terms: Callable[[nn.Module], NormTerms]
    build: Callable[[NormTerms, float | None], nn.Module]
    rule: str = "batchnorm"


@dataclass(frozen=True)
class ElementwiseKind:
    """A map applied to each element on its own: `rule` names its error model."""

    type: type
    rule: str
    build: Callable[[], nn.Module]


Kind = LinearKind | NormKind | ElementwiseKind


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


def _torch_norm(terms: NormTerms, momentum: float | None) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(len(terms.mean), eps=terms.eps, momentum=momentum, affine=terms.gamma is not None,
                        dtype=terms.mean.dtype, device=terms.mean.device)
    return _fill_norm(bn, terms, "weight", "bias")


KINDS: dict[type, Kind] = {kind.type: kind for kind in (
    LinearKind(Linear, matrix=lambda layer: layer.weight, build=Linear.from_tensors),
    LinearKind(nn.Linear, matrix=lambda layer: layer.weight.T, build=_torch_linear),
    NormKind(BatchNorm1d, build=_core_norm,
             terms=lambda bn: NormTerms(bn.running_mean, bn.running_var, bn.gamma, bn.beta, bn.eps)),
    NormKind(nn.BatchNorm1d, build=_torch_norm,
             terms=lambda bn: NormTerms(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)),
    ElementwiseKind(Tanh, "tanh", Tanh),
    ElementwiseKind(nn.Tanh, "tanh", nn.Tanh),
    ElementwiseKind(Sigmoid, "sigmoid", Sigmoid),
    ElementwiseKind(nn.Sigmoid, "sigmoid", nn.Sigmoid),
    ElementwiseKind(ReLU, "relu", ReLU),
    ElementwiseKind(nn.ReLU, "relu", nn.ReLU),
    ElementwiseKind(nn.Identity, "identity", nn.Identity),
    ElementwiseKind(nn.Dropout, "dropout", nn.Dropout),
)}


def kind_of(layer: nn.Module) -> Kind | None:
    """The entry for layer's exact type, or None for a type (or subclass) the table does not know."""
    return KINDS.get(type(layer))


def is_linear(layer: nn.Module) -> bool:
    return isinstance(kind_of(layer), LinearKind)


def is_norm(layer: nn.Module) -> bool:
    return isinstance(kind_of(layer), NormKind)


def hooked(module: nn.Module) -> bool:
    """True if a hook is registered on the module (or hooks cannot be seen): calling it may differ from its kind's map."""
    return any(getattr(module, name, None) != {} for name in HOOK_ATTRIBUTES)


def fan_in(layer: nn.Module) -> int:
    return KINDS[type(layer)].matrix(layer).shape[0]


def norm_width(bn: nn.Module) -> int:
    return KINDS[type(bn)].terms(bn).mean.shape[0]


def rebuild_as(layer: nn.Module, target: type) -> nn.Module:
    """A layer of type `target` (same role) computing what `layer` computes, holding copies of its tensors."""
    source, kind = KINDS[type(layer)], KINDS[target]
    if type(source) is not type(kind):
        raise TypeError(f"a {type(layer).__name__} cannot become a {target.__name__}: they play different roles")
    with torch.no_grad():
        if isinstance(source, LinearKind):
            bias = source.bias(layer)
            return kind.build(source.matrix(layer).clone(), None if bias is None else bias.clone())
        if isinstance(source, NormKind):
            terms = NormTerms(*(t if t is None or isinstance(t, float) else t.clone() for t in source.terms(layer)))
            return kind.build(terms, layer.momentum)
    return kind.build()
