"""The bound of one fold: |unfolded_j − folded_j| ≤ ρ·M_j + A for each output j of a layer/BatchNorm pair
(docs/design.md, "One pair"; docs/design-conv.md for convolutions)."""

import torch
from torch import nn

from core.engine.algebra import AFTER, f64, norm_affine, norm_terms
from core.engine.bound.magnitudes import absolute
from core.engine.bound.rounding import (
    BN_ROUNDINGS,
    BOUND_C,
    FOLD_ROUNDINGS,
    U64,
    convolves,
    rounding_bound,
    underflow,
    unit_roundoff,
)
from core.engine.kinds import KINDS, ConvKind, affine_kind


def pair_factor(n: int, direction: str, u: float, fold_unit: float = U64,
                fold_roundings: int = FOLD_ROUNDINGS) -> float:
    """ρ = γ(n + c) + (1 + γ_f(k))(1 + γ(n + 2)) − 1, k = 6 (+ n before): |unfolded_j − folded_j| ≤ ρ·M_j.

    γ_f is γ at the unit roundoff `fold_unit` of the arithmetic the fold is computed in, and k = `fold_roundings`
    (+ n before) the roundings it puts on any term of W' and b': bnfold's, float64 and 6, by default; a folder that
    computes W' and b' in float32 (float16, ...) with k roundings passes that unit and k (docs/design-conv.md §11).
    """
    k = fold_roundings + (n if direction != AFTER else 0)
    return rounding_bound(n + BOUND_C, u) + (1 + rounding_bound(k, fold_unit)) * (1 + rounding_bound(n + 2, u)) - 1


def channelwise(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over dim 1 of an ndim-D tensor (N, C, *spatial)."""
    return v.reshape(-1, *([1] * (ndim - 2)))


def per_output(layer: nn.Module, v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-output vector of an affine layer, shaped for its ndim-D output: dim 1 for a conv, last for a Linear."""
    return channelwise(v, ndim) if isinstance(KINDS[type(layer)], ConvKind) else v


def pair_magnitude(layer: nn.Module, bn: nn.Module, direction: str, x: torch.Tensor) -> torch.Tensor:
    """M_j: the sum of the magnitudes of the terms of output j of the unfolded pair, in float64.

    after:  M_j = |s_j|·(Σ_i |x_i||W_ij| + |b_j| + |μ_j|) + |β_j|
    before: M_j = Σ_i (|x_i||s_i| + |μ_i s_i| + |β_i|)·|W_ij| + |b_j|
    where Σ_i runs over a conv's patch, and before a Linear through a Flatten over every flattened input.
    """
    kind = affine_kind(layer)
    mean, _, _, beta, _ = norm_terms(bn)
    assert beta is not None  # norm_terms gives β = 0 to a BatchNorm without affine
    s = norm_affine(bn)[0].abs()
    assert isinstance(layer.weight, torch.Tensor)
    W, b = absolute(layer.weight), kind.bias(layer)
    b = W.new_zeros(kind.channels(layer)[1]) if b is None else absolute(b)
    ax = f64(x).abs()
    if direction == AFTER:
        z = kind.linear_map(layer, ax, W)
        return per_output(layer, s, z.ndim) * (z + per_output(layer, b + mean.abs(), z.ndim)) \
            + per_output(layer, beta.abs(), z.ndim)
    m = ax * channelwise(s, ax.ndim) + channelwise((mean * s).abs() + beta.abs(), ax.ndim)
    if not isinstance(kind, ConvKind):  # a Linear, perhaps after a Flatten
        m = m.flatten(1)
    z = kind.linear_map(layer, m, W)
    return z + per_output(layer, b, z.ndim)


def pair_underflow(linear: nn.Module, bn: nn.Module, x: torch.Tensor) -> float:
    """A: what underflow adds to |unfolded_j − folded_j|, with η = `underflow(dtype)`, n the terms per output:

    A = η·(2n(2 + max|s|) + 2·8·(1 + max_j Σ_i |W_ij|) + n·max|x| + 1): n products of 2η each on both sides (after
    the BN's |s| on the unfolded side), the BN's 8 roundings (through |W| when it comes first), and each folded
    weight and bias cast down to the layer's dtype off by η on top of its rounding (times |x_i|).
    """
    n = affine_kind(linear).terms(linear)
    assert isinstance(bn.running_mean, torch.Tensor) and isinstance(linear.weight, torch.Tensor)
    s = norm_affine(bn)[0].abs().max().item() if len(bn.running_mean) else 0.0
    W = absolute(linear.weight)
    rows = f64(affine_kind(linear).blocks(linear)).abs().sum(-2).max().item() if W.numel() else 0.0
    largest = f64(x).abs().max().item() if x.numel() else 0.0
    return underflow(x.dtype) * (2 * n * (2 + s) + 2 * BN_ROUNDINGS * (1 + rows) + n * largest + 1)


def pair_bound(linear: nn.Module, bn: nn.Module, direction: str, x: torch.Tensor, fold_unit: float = U64,
               fold_roundings: int = FOLD_ROUNDINGS) -> torch.Tensor:
    """ρ·M_j + A: the bound on |unfolded_j − folded_j| for one pair at input x, the fold computed with
    `fold_roundings` roundings at unit roundoff `fold_unit` (`pair_factor`)."""
    n = affine_kind(linear).terms(linear)
    u = unit_roundoff(x.dtype, x.device, convolves(linear))
    return pair_factor(n, direction, u, fold_unit, fold_roundings) * pair_magnitude(linear, bn, direction, x) \
        + pair_underflow(linear, bn, x)
