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

from core.engine.kinds import (
    KINDS,
    Array,
    ConvKind,
    LinearKind,
    NormKind,
    NormTerms,
    affine_kind,
    kind_of,
    norm_kind,
)
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


def tensor_name(module: nn.Module, tensor: torch.Tensor, default: str) -> str:
    """The attribute under which `module` holds `tensor` (one of its own parameters or buffers), else `default`."""
    for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if value is tensor:
            return name
    return default


def first_non_finite(t: torch.Tensor) -> tuple[tuple[int, ...], float] | None:
    """(index, value) of the first nan or inf of `t` in its own layout, or None when every value is finite."""
    t = t.detach()  # isfinite of a parameter made in inference mode fails outside it
    bad = (~torch.isfinite(t)).nonzero()
    if not len(bad):
        return None
    index = tuple(int(i) for i in bad[0].tolist())
    return index, float(t[index].item())


def position(index: tuple[int, ...]) -> str:
    """'unit j' for a vector's entry, 'index [i, j, ...]' for any other tensor's."""
    return f"unit {index[0]}" if len(index) == 1 else f"index [{', '.join(map(str, index))}]"


def variance_sums(var: torch.Tensor, eps: float) -> list[tuple[torch.dtype, torch.Tensor]]:
    """v + ε per dtype, as an eval BatchNorm computes it: in the precision torch's kernels add ε in (the BatchNorm's
    own dtype, at least float32: they compute a float16 or bfloat16 BatchNorm in float32, with ε rounded to it), and
    in float64 (the fold's algebra)."""
    dtypes = dict.fromkeys([torch.promote_types(var.dtype, torch.float32), torch.float64])
    return [(dtype, var.detach().to(dtype) + eps) for dtype in dtypes]


def check_norm(bn: nn.Module, name: str) -> None:
    """Refuse a BatchNorm that is no fixed affine map, or whose map is undefined or not finite.

    Undefined: v + ε ≤ 0 at some unit in a dtype of `variance_sums`: as torch's own eval BatchNorm computes it, where
    it divides by the square root of zero or of a negative number (nan at z = μ), or in the fold's float64. Not
    finite: a nan or inf in μ, v, γ or β, where the BatchNorm's output is nan or inf whatever its input.
    """
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
    mean, var, gamma, beta, eps = norm_kind(bn).terms(bn)
    for tensor, default in ((var, "running_var"), (gamma, "γ"), (beta, "β")):
        if tensor is not None and tensor.shape != mean.shape:
            raise FoldError(f"{name} has {tensor_name(bn, tensor, default)} of shape {tuple(tensor.shape)} but "
                            f"running_mean of shape {tuple(mean.shape)}: a BatchNorm holds one value per feature in "
                            f"each; load a state_dict that matches the architecture")
    for stat in ("running_mean", "running_var"):
        bad = first_non_finite(getattr(bn, stat))
        if bad is not None:
            raise FoldError(f"{name} has a non-finite {stat} ({bad[1]} at unit {bad[0][0]}): "
                            f"re-estimate the statistics on training data before folding")
    for tensor, role, default in ((gamma, "scale γ", "weight"), (beta, "shift β", "bias")):
        bad = None if tensor is None else first_non_finite(tensor)
        if bad is not None:
            assert tensor is not None
            raise FoldError(f"{name} has a non-finite {role} '{tensor_name(bn, tensor, default)}' ({bad[1]} at "
                            f"unit {bad[0][0]}), so it outputs nan or inf at that unit whatever its input: load finite "
                            f"parameters (retrain, or a checkpoint saved before training diverged) before folding")
    for dtype, total in variance_sums(var, eps):
        undefined = (total <= 0).nonzero()
        if len(undefined):
            j = int(undefined[0].item())
            sum_in = f": {total[j].item()} in {dtype}" if dtype != torch.float64 else ""
            raise FoldError(f"{name} has running_var + eps <= 0 at unit {j} (running_var {var[j].item()}, eps "
                            f"{eps}{sum_in}), so 1/sqrt(var + eps) is undefined: re-estimate the statistics or "
                            f"raise eps")


def check_conv_shape(layer: nn.Module, name: str) -> None:
    """FoldError for a convolution whose channels, groups and kernel size do not give its weight's shape: the fold
    reads the weight through them (a lazy convolution loaded from a state_dict before its first call keeps
    in_channels 0)."""
    kind = KINDS[type(layer)]
    if not isinstance(kind, ConvKind):
        return
    assert isinstance(layer.weight, torch.Tensor)
    c_in, c_out, g = (int(cast(int, getattr(layer, a))) for a in ("in_channels", "out_channels", "groups"))
    kernel = tuple(cast(tuple[int, ...], layer.kernel_size))
    expected = (c_in, c_out // g, *kernel) if kind.transposed else (c_out, c_in // g, *kernel)
    if tuple(layer.weight.shape) != expected:
        raise FoldError(f"{name} has a weight of shape {tuple(layer.weight.shape)}, but its in_channels {c_in}, "
                        f"out_channels {c_out}, groups {g} and kernel_size {kernel} give {expected}: set them to match "
                        f"the weight (a lazy convolution loaded from a state_dict before its first call keeps "
                        f"in_channels 0) before folding")


def check_affine(layer: nn.Module, W: torch.Tensor, b: torch.Tensor, name: str) -> None:
    """Refuse an affine layer with a nan or inf among its tensors: it outputs nan or inf whatever its input, and no
    bound holds for it. W and b are its terms in float64 (`affine_terms`); their sums are finite unless a value is
    not (or a float64 sum overflows: then each tensor is scanned, and a layer whose values are all finite folds)."""
    if bool(torch.isfinite(W.sum()) and torch.isfinite(b.sum())):
        return
    for attribute, tensor in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]:
        bad = first_non_finite(tensor) if tensor.is_floating_point() else None
        if bad is not None:
            raise non_finite_layer(name, attribute, f"{bad[1]} at {position(bad[0])}")
    for attribute, tensor in (("weight", W), ("bias", b)):  # tensors the layer holds in no parameter or buffer
        bad = first_non_finite(tensor)
        if bad is not None:
            raise non_finite_layer(name, attribute, str(bad[1]))


def non_finite_layer(name: str, attribute: str, where: str) -> FoldError:
    return FoldError(f"{name} has a non-finite {attribute} ({where}), so some of its outputs are nan or inf whatever "
                     f"its input: load finite parameters (retrain, or a checkpoint saved before training diverged) "
                     f"before folding")


def all_finite(W: torch.Tensor, b: torch.Tensor) -> bool:
    """Every value of W and b is finite. A finite sum means every value is finite (one pass); a sum may overflow, so
    only then check each value."""
    return bool(torch.isfinite(W.sum()) and torch.isfinite(b.sum())) or \
        bool(torch.isfinite(W).all() and torch.isfinite(b).all())


def rebuild_affine(like: nn.Module, W: torch.Tensor, b: torch.Tensor, where: str) -> nn.Module:
    """An affine layer of like's kind, dtype, device, mode and requires_grad from float64 blocks W and bias b.

    Its tensors are made outside inference mode, so they are ordinary trainable tensors whatever
    mode fold was called in.
    """
    assert isinstance(like.weight, torch.Tensor)
    dtype, device = like.weight.dtype, like.weight.device
    with torch.inference_mode(False):
        if not all_finite(W, b):  # the terms are finite (`check_norm`, `check_affine`): the float64 fold overflowed
            units = (torch.isfinite(W).all(dim=-2).reshape(-1) & torch.isfinite(b)).logical_not().nonzero()
            raise FoldError(f"{where} gives values beyond float64's range at output unit {units[0].item()} (the fold "
                            f"computes in float64), so no dtype holds the folded layer: the BatchNorm's scale "
                            f"γ/√(v + ε) or shift β − μ·s is beyond any trained value; check its weight, running_var "
                            f"and eps")
        W64, b64 = W, b
        W, b = W.to(dtype), b.to(dtype)
        if not all_finite(W, b):
            largest = max(W64.abs().max().item(), b64.abs().max().item())
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
    for module, name, role in ((bn, bn_name, "BatchNorm"), (layer, linear_name, "Linear or convolution")):
        if not isinstance(kind_of(module), NormKind if module is bn else LinearKind | ConvKind):
            raise FoldError(f"{name} cannot be folded: {type(module).__name__} is no {role} type of fold's kind "
                            f"table (a subclass may compute another map); fold folds the exact types registered "
                            f"with core.engine.kinds.register")
    check_norm(bn, bn_name)
    check_conv_shape(layer, linear_name)
    kind = affine_kind(layer)
    W, b = affine_terms(layer)
    check_affine(layer, W, b, linear_name)
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
