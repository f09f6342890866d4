"""torch's own layer types in the layer-kind table, each with its rule and the functions and methods that compute
the same map. Importing the engine registers them (`core.engine.__init__`).

Adding a layer kind or an activation is one entry here (or one `register` call beside the layer type's own
definition) with its rule from `core.engine.bound.rules`, plus its strategy and its laws (docs/design.md).
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.bound import rules
from core.engine.kinds import (
    ConvKind,
    ElementwiseKind,
    LinearKind,
    MapKind,
    NormKind,
    NormTerms,
    fill_norm,
    register,
)


def torch_linear(W: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding W (fan_in, fan_out) as its (fan_out, fan_in) weight, and b."""
    layer = nn.Linear(W.shape[0], W.shape[1], bias=b is not None, device="meta")  # meta: no draw from any RNG
    layer.weight = nn.Parameter(W.T.contiguous())
    layer.bias = None if b is None else nn.Parameter(b)  # type: ignore[assignment]
    return layer


def torch_norm(bn_type: Any) -> Callable[[NormTerms, float | None], nn.Module]:
    """build(terms, momentum) for one of torch's BatchNorm types."""
    def build(terms: NormTerms, momentum: float | None) -> nn.Module:
        bn = bn_type(len(terms.mean), eps=terms.eps, momentum=momentum, affine=terms.gamma is not None,
                     dtype=terms.mean.dtype, device=terms.mean.device)
        return fill_norm(bn, terms, "weight", "bias")
    return build


def torch_terms(bn: Any) -> NormTerms:
    return NormTerms(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def same(layer_type: Any, *attributes: str) -> Callable[[Any], nn.Module]:
    """build(layer) for an elementwise type: a new one with layer's `attributes` (e.g. negative_slope)."""
    def build(layer: Any) -> nn.Module:
        module: nn.Module = layer_type(**{a: getattr(layer, a) for a in attributes})
        return module
    return build


def flatten(start_dim: int = 0, end_dim: int = -1) -> nn.Module:
    """torch.flatten(x, start_dim, end_dim) and x.flatten(...) as a layer (nn.Flatten's own defaults differ)."""
    return nn.Flatten(start_dim, end_dim)


def dropout(p: float = 0.5, training: bool = True, inplace: bool = False) -> nn.Module:
    return nn.Dropout(p).train(training)


register(
    LinearKind(nn.Linear, matrix=lambda layer: layer.weight.T, build=torch_linear,
               linear_map=lambda layer, z, W: F.linear(z, W), rule=rules.affine_rule),
    *(ConvKind(t, spatial=d, rule=rules.affine_rule) for d, t in enumerate((nn.Conv1d, nn.Conv2d, nn.Conv3d), 1)),
    *(ConvKind(t, spatial=d, rule=rules.affine_rule, transposed=True)
      for d, t in enumerate((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), 1)),
    NormKind(nn.BatchNorm1d, build=torch_norm(nn.BatchNorm1d), terms=torch_terms, rule=rules.batchnorm_rule,
             spatial=(0, 1)),
    NormKind(nn.BatchNorm2d, build=torch_norm(nn.BatchNorm2d), terms=torch_terms, rule=rules.batchnorm_rule,
             spatial=(2,)),
    NormKind(nn.BatchNorm3d, build=torch_norm(nn.BatchNorm3d), terms=torch_terms, rule=rules.batchnorm_rule,
             spatial=(3,)),
    ElementwiseKind(nn.Tanh, rules.tanh_rule, same(nn.Tanh), functions={torch.tanh: nn.Tanh, F.tanh: nn.Tanh},
                    methods={"tanh": nn.Tanh, "tanh_": nn.Tanh}),
    ElementwiseKind(nn.Sigmoid, rules.sigmoid_rule, same(nn.Sigmoid),
                    functions={torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid},
                    methods={"sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid}),
    ElementwiseKind(nn.ReLU, rules.relu_rule, same(nn.ReLU, "inplace"),
                    functions={F.relu: lambda inplace=False: nn.ReLU(), torch.relu: nn.ReLU, torch.relu_: nn.ReLU},
                    methods={"relu": nn.ReLU, "relu_": nn.ReLU}),
    ElementwiseKind(nn.ReLU6, rules.hardtanh_rule, same(nn.ReLU6, "inplace"),
                    functions={F.relu6: lambda inplace=False: nn.ReLU6()}),
    ElementwiseKind(nn.Hardtanh, rules.hardtanh_rule, same(nn.Hardtanh, "min_val", "max_val", "inplace"),
                    functions={F.hardtanh: lambda min_val=-1.0, max_val=1.0, inplace=False:
                               nn.Hardtanh(min_val, max_val)}),
    ElementwiseKind(nn.LeakyReLU, rules.leaky_relu_rule, same(nn.LeakyReLU, "negative_slope", "inplace"),
                    functions={F.leaky_relu: lambda negative_slope=0.01, inplace=False:
                               nn.LeakyReLU(negative_slope)}),
    ElementwiseKind(nn.Hardswish, rules.hardswish_rule, same(nn.Hardswish, "inplace"),
                    functions={F.hardswish: lambda inplace=False: nn.Hardswish()}),
    ElementwiseKind(nn.Hardsigmoid, rules.hardsigmoid_rule, same(nn.Hardsigmoid, "inplace"),
                    functions={F.hardsigmoid: lambda inplace=False: nn.Hardsigmoid()}),
    ElementwiseKind(nn.SiLU, rules.silu_rule, same(nn.SiLU, "inplace"),
                    functions={F.silu: lambda inplace=False: nn.SiLU()}),
    ElementwiseKind(nn.GELU, rules.gelu_rule, same(nn.GELU, "approximate"),
                    functions={F.gelu: lambda approximate="none": nn.GELU(approximate)}),
    ElementwiseKind(nn.Identity, rules.identity_rule, same(nn.Identity)),
    ElementwiseKind(nn.Dropout, rules.dropout_rule, same(nn.Dropout, "p", "inplace"), functions={F.dropout: dropout}),
    *(MapKind(t, rules.max_pool_rule, functions={f: t}) for t, f in (
        (nn.MaxPool1d, F.max_pool1d), (nn.MaxPool2d, F.max_pool2d), (nn.MaxPool3d, F.max_pool3d),
        (nn.AdaptiveMaxPool1d, F.adaptive_max_pool1d), (nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d),
        (nn.AdaptiveMaxPool3d, F.adaptive_max_pool3d))),
    *(MapKind(t, rules.avg_pool_rule, functions={f: t}) for t, f in (
        (nn.AvgPool1d, F.avg_pool1d), (nn.AvgPool2d, F.avg_pool2d), (nn.AvgPool3d, F.avg_pool3d))),
    *(MapKind(t, rules.adaptive_avg_pool_rule, functions={f: t}) for t, f in (
        (nn.AdaptiveAvgPool1d, F.adaptive_avg_pool1d), (nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d),
        (nn.AdaptiveAvgPool3d, F.adaptive_avg_pool3d))),
    MapKind(nn.Flatten, rules.move_rule, functions={torch.flatten: flatten}, methods={"flatten": flatten}),
)
