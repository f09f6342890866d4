"""Folding one BatchNorm into one affine layer (a Linear or a convolution): the algebra and its application to layers.

An eval-mode BatchNorm is the per-channel affine map BN(z) = s·z + t with s = γ/√(v + ε), t = β − μ·s
(γ = 1, β = 0 without affine), so with W laid out (fan_in, fan_out):

    BN after a Linear:   BN(xW + b) = x·(W·diag(s)) + (b·s + t)
    BN before a Linear:  BN(x)W + b = x·(diag(s)·W) + (t·W + b)

A convolution is that Linear on each patch, per group: its weight reads as blocks (g, C_in/g·K, C_out/g)
(`core.engine.kinds`), whose columns are output channels (BN after: scale columns) and whose rows are
(input channel, kernel offset) pairs (BN before: s and t repeated over the K offsets). A BatchNorm
before Flatten → Linear repeats s and t over the spatial positions each channel flattens into.

The algebra is written once, on plain arrays, in `bn_affine`, `fold_after` and `fold_before`; layers
reach it through the layer-kind table (`core.engine.kinds`). Folds are computed in float64 and cast to the
layer's dtype. docs/design.md derives the algebra; docs/design-conv.md the channel views.
"""

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from core.engine.kinds import KINDS, Array, ConvKind, LinearKind, NormTerms, affine_kind, norm_kind
from core.errors import FoldError

AFTER, BEFORE = "after", "before"  # where the BatchNorm sits relative to its affine layer


# The algebra: any arrays with * + - / @ (torch tensors, numpy object arrays of Fractions). W may be one
# (fan_in, fan_out) matrix or a stack of them (..., fan_in, fan_out), with s, t, b stacked alike.

def bn_affine(mean: Array, var: Array, gamma: Array, beta: Array, eps: Array,
              sqrt: Callable[[Array], Array] = torch.sqrt) -> tuple[Array, Array]:
    """(s, t) with eval BN(z) = s·z + t: s = γ / sqrt(v + ε), t = β − μ·s."""
    s = gamma / sqrt(var + eps)
    return s, beta - mean * s


def fold_after(W: Array, b: Array, s: Array, t: Array) -> tuple[Array, Array]:
    """(W', b') with (xW + b)·s + t = xW' + b': W' = W·diag(s), b' = b·s + t."""
    return W * s[..., None, :], b * s + t


def fold_before(s: Array, t: Array, W: Array, b: Array) -> tuple[Array, Array]:
    """(W', b') with (x·s + t)W + b = xW' + b': W' = diag(s)·W, b' = t·W + b."""
    return s[..., :, None] * W, (t[..., None, :] @ W)[..., 0, :] + b


# Layers, through the kind table, as float64 CPU tensors of the algebra.

def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def affine_terms(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) in float64: W as blocks (g, fan_in/g, fan_out/g) (`core.engine.kinds`), b (fan_out,), 0 if it has none."""
    kind = affine_kind(layer)
    W, b = f64(kind.blocks(layer)), kind.bias(layer)
    return W, torch.zeros(kind.channels(layer)[1], dtype=torch.float64) if b is None else f64(b)


def expand_rows(v: torch.Tensor, layer: nn.Module, spread: int) -> torch.Tensor:
    """A per-channel vector of the BatchNorm before `layer` as the rows of its blocks: (g, fan_in/g).

    Each channel feeds `spread` consecutive inputs (the positions it flattens into before a Linear),
    and each input feeds K rows of a conv's block, one per kernel offset.
    """
    kind = affine_kind(layer)
    return v.repeat_interleave(spread).reshape(kind.groups(layer), -1).repeat_interleave(kind.kernel_volume(layer), 1)


def norm_terms(bn: nn.Module) -> NormTerms:
    """(μ, v, γ, β, ε) in float64, with γ = 1 and β = 0 for a BatchNorm without affine."""
    mean, var, gamma, beta, eps = norm_kind(bn).terms(bn)
    mean, var = f64(mean), f64(var)
    gamma = torch.ones_like(mean) if gamma is None else f64(gamma)
    beta = torch.zeros_like(mean) if beta is None else f64(beta)
    return NormTerms(mean, var, gamma, beta, eps)


def norm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of an eval-mode BatchNorm in float64."""
    return bn_affine(*norm_terms(bn))


def check_norm(bn: nn.Module, name: str) -> None:
    """Refuse a BatchNorm that is no fixed affine map, or whose map is undefined."""
    if bn.training:
        raise FoldError(f"{name} is in training mode, so it normalises with batch statistics, not a fixed "
                        f"affine map: call model.eval() before folding")
    if not getattr(bn, "track_running_stats", True):
        raise FoldError(f"{name} has track_running_stats=False: it always normalises with batch statistics and "
                        f"has no running statistics to fold; rebuild it with track_running_stats=True and "
                        f"estimate the statistics on training data")
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError(f"{name} has no running_mean/running_var: load a state_dict that holds them "
                        f"(or estimate them on training data) before folding")
    for stat in ("running_mean", "running_var"):
        bad = (~torch.isfinite(getattr(bn, stat))).nonzero()
        if len(bad):
            j = bad[0].item()
            raise FoldError(f"{name} has a non-finite {stat} ({getattr(bn, stat)[j].item()} at unit {j}): "
                            f"re-estimate the statistics on training data before folding")
    assert isinstance(bn.running_var, torch.Tensor)
    bad = (f64(bn.running_var) + cast(float, bn.eps) <= 0).nonzero()  # eps: a number, an int if given one
    if len(bad):
        j = bad[0].item()
        assert isinstance(j, int)
        raise FoldError(f"{name} has running_var + eps <= 0 at unit {j} (running_var {bn.running_var[j].item()}, "
                        f"eps {bn.eps}), so 1/sqrt(var + eps) is undefined: re-estimate the statistics or raise eps")


def rebuild_affine(like: nn.Module, W: torch.Tensor, b: torch.Tensor, where: str) -> nn.Module:
    """An affine layer of like's kind, dtype, device, mode and requires_grad from float64 blocks W and bias b.

    Its tensors are made outside inference mode, so they are ordinary trainable tensors whatever
    mode fold was called in.
    """
    assert isinstance(like.weight, torch.Tensor)
    dtype, device = like.weight.dtype, like.weight.device
    with torch.inference_mode(False):
        W, b = W.to(dtype), b.to(dtype)
        # A finite sum means every value is finite (one pass); a sum may overflow, so only then check each value.
        finite = bool(torch.isfinite(W.sum()) and torch.isfinite(b.sum())) or \
            bool(torch.isfinite(W).all() and torch.isfinite(b).all())
        if not finite:
            largest = max(f64(W).abs().max().item(), f64(b).abs().max().item())
            raise FoldError(f"{where} gives values that do not fit {dtype} (largest |value| {largest:.6g}, {dtype} "
                            f"max {torch.finfo(dtype).max:.6g}): fold a float32 or float64 copy of the model instead")
        new = affine_kind(like).rebuild(like, W.to(device), b.to(device))
        new.requires_grad_(like.weight.requires_grad)
    return new.train(like.training)


def side_name(layer: nn.Module, direction: str) -> str:
    """What the BatchNorm's features must match: fan_out/fan_in of a Linear, out_/in_channels of a conv."""
    conv = isinstance(KINDS[type(layer)], ConvKind)
    return ("out_channels" if conv else "fan_out") if direction == AFTER else ("in_channels" if conv else "fan_in")


def fold_pair(layer: nn.Module, bn: nn.Module, direction: str, bn_name: str = "the BatchNorm",
              linear_name: str = "the Linear", spread: int = 1) -> nn.Module:
    """The affine layer equal to BN∘layer (direction AFTER) or layer∘BN (BEFORE) in eval, with a bias.

    `spread`: before a Linear through a Flatten, the number of flattened features per BatchNorm channel (else 1).
    """
    check_norm(bn, bn_name)
    kind = affine_kind(layer)
    W, b = affine_terms(layer)
    c_in, c_out = kind.channels(layer)
    units = c_out if direction == AFTER else c_in
    assert isinstance(bn.running_mean, torch.Tensor)  # check_norm refused a BatchNorm without it
    width = bn.running_mean.shape[0]
    if width * spread != units:
        per = f" x {spread} flattened positions" if spread > 1 else ""
        raise FoldError(f"{bn_name} has {width} features{per} but {linear_name} has {side_name(layer, direction)} "
                        f"{units}: they are no {'Linear' if isinstance(kind, LinearKind) else 'convolution'}"
                        f"/BatchNorm pair; check the architecture")
    s, t = norm_affine(bn)
    g = W.shape[0]
    if direction == AFTER:
        W, b = fold_after(W, b.reshape(g, -1), s.reshape(g, -1), t.reshape(g, -1))
    else:
        W, b = fold_before(expand_rows(s, layer, spread), expand_rows(t, layer, spread), W, b.reshape(g, -1))
    return rebuild_affine(layer, W, b.reshape(-1), f"folding {bn_name} into {linear_name}")


def fold_linear_bn(linear: nn.Module, bn: nn.Module) -> nn.Module:
    """The affine layer equal to BN(linear(x)) in eval: a new layer of linear's kind, dtype and device, with a bias."""
    return fold_pair(linear, bn, AFTER)


def fold_bn_linear(bn: nn.Module, linear: nn.Module) -> nn.Module:
    """The affine layer equal to linear(BN(x)) in eval: a new layer of linear's kind, dtype and device, with a bias."""
    return fold_pair(linear, bn, BEFORE)
