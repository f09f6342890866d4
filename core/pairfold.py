"""Folding one BatchNorm into one Linear: the algebra, its application to layers, and the order of single folds.

An eval-mode BatchNorm is the per-feature affine map BN(z) = s·z + t with s = γ/√(v + ε), t = β − μ·s
(γ = 1, β = 0 without affine), so with W laid out (fan_in, fan_out):

    BN after a Linear:   BN(xW + b) = x·(W·diag(s)) + (b·s + t)
    BN before a Linear:  BN(x)W + b = x·(diag(s)·W) + (t·W + b)

The algebra is written once, on plain arrays, in `bn_affine`, `fold_after` and `fold_before`; layers
reach it through the layer-kind table (`core.kinds`). Folds are computed in float64 and cast to the
Linear's dtype. docs/design.md derives the algebra and the plan.
"""

from collections.abc import Sequence

import torch
from torch import nn

from core.errors import FoldError
from core.kinds import KINDS, LinearKind, NormKind, NormTerms, hooked, is_linear, is_norm

AFTER, BEFORE = "after", "before"  # where the BatchNorm sits relative to its Linear


# The algebra: any arrays with * + - / @ (torch tensors, numpy object arrays of Fractions).

def bn_affine(mean, var, gamma, beta, eps, sqrt=torch.sqrt):
    """(s, t) with eval BN(z) = s·z + t: s = γ / sqrt(v + ε), t = β − μ·s."""
    s = gamma / sqrt(var + eps)
    return s, beta - mean * s


def fold_after(W, b, s, t):
    """(W', b') with (xW + b)·s + t = xW' + b': W' = W·diag(s), b' = b·s + t."""
    return W * s, b * s + t


def fold_before(s, t, W, b):
    """(W', b') with (x·s + t)W + b = xW' + b': W' = diag(s)·W, b' = t·W + b."""
    return s[:, None] * W, t @ W + b


# Layers, through the kind table, as float64 CPU tensors of the algebra.

def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def linear_terms(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) in float64: W as (fan_in, fan_out) whatever the layer's layout, b = 0 when it has none."""
    kind = KINDS[type(linear)]
    W, b = f64(kind.matrix(linear)), kind.bias(linear)
    return W, torch.zeros(W.shape[1], dtype=torch.float64) if b is None else f64(b)


def norm_terms(bn: nn.Module) -> NormTerms:
    """(μ, v, γ, β, ε) in float64, with γ = 1 and β = 0 for a BatchNorm without affine."""
    mean, var, gamma, beta, eps = KINDS[type(bn)].terms(bn)
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
    bad = (f64(bn.running_var) + bn.eps <= 0).nonzero()
    if len(bad):
        j = bad[0].item()
        raise FoldError(f"{name} has running_var + eps <= 0 at unit {j} (running_var {bn.running_var[j].item()}, "
                        f"eps {bn.eps}), so 1/sqrt(var + eps) is undefined: re-estimate the statistics or raise eps")


def rebuild_linear(like: nn.Module, W: torch.Tensor, b: torch.Tensor, where: str) -> nn.Module:
    """A Linear of like's kind, dtype, device, mode and requires_grad holding float64 W (fan_in, fan_out), b, cast down.

    Its tensors are made outside inference mode, so they are ordinary trainable tensors whatever
    mode fold was called in.
    """
    dtype, device = like.weight.dtype, like.weight.device
    with torch.inference_mode(False):
        W, b = W.to(dtype), b.to(dtype)
        if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
            largest = max(f64(W).abs().max().item(), f64(b).abs().max().item())
            raise FoldError(f"{where} gives values that do not fit {dtype} (largest |value| {largest:.6g}, {dtype} "
                            f"max {torch.finfo(dtype).max:.6g}): fold a float32 or float64 copy of the model instead")
        new = KINDS[type(like)].build(W.to(device), b.to(device))
        new.requires_grad_(like.weight.requires_grad)
    return new.train(like.training)


def fold_pair(linear: nn.Module, bn: nn.Module, direction: str,
              bn_name: str = "the BatchNorm", linear_name: str = "the Linear") -> nn.Module:
    """The Linear equal to BN∘linear (direction AFTER) or linear∘BN (BEFORE) in eval, with a bias."""
    check_norm(bn, bn_name)
    W, b = linear_terms(linear)
    units = W.shape[1] if direction == AFTER else W.shape[0]
    if bn.running_mean.shape[0] != units:
        side = "fan_out" if direction == AFTER else "fan_in"
        raise FoldError(f"{bn_name} has {bn.running_mean.shape[0]} features but {linear_name} has {side} {units}: "
                        f"they are no Linear/BatchNorm pair; check the architecture")
    s, t = norm_affine(bn)
    W, b = fold_after(W, b, s, t) if direction == AFTER else fold_before(s, t, W, b)
    return rebuild_linear(linear, W, b, f"folding {bn_name} into {linear_name}")


def fold_linear_bn(linear: nn.Module, bn: nn.Module) -> nn.Module:
    """The Linear equal to BN(linear(x)) in eval: a new Linear of linear's kind, dtype and device, with a bias."""
    return fold_pair(linear, bn, AFTER)


def fold_bn_linear(bn: nn.Module, linear: nn.Module) -> nn.Module:
    """The Linear equal to linear(BN(x)) in eval: a new Linear of linear's kind, dtype and device, with a bias."""
    return fold_pair(linear, bn, BEFORE)


# The plan: which BatchNorm folds into which Linear, and in what order.

def layer_name(layers: Sequence[nn.Module], i: int) -> str:
    return f"{type(layers[i]).__name__} at index {i}"


NORM_TYPES = tuple(t for t, kind in KINDS.items() if isinstance(kind, NormKind))
LINEAR_TYPES = tuple(t for t, kind in KINDS.items() if isinstance(kind, LinearKind))


def unfoldable(layer: nn.Module) -> str | None:
    """Why a layer cannot take part in a fold (calling it may differ from its kind's map), or None."""
    if type(layer) not in KINDS:
        base = next(t for t in type(layer).__mro__ if t in KINDS)
        return f"is a subclass of {base.__name__}, whose forward may differ"
    if hooked(layer):
        return "has a hook registered, so calling it may differ from its plain map"
    return None


def plan(layers: Sequence[nn.Module]) -> tuple[list[tuple[int, int, str]], list[tuple[int, str]]]:
    """The single folds in the order they apply, as (linear_index, bn_index, direction), and (index, reason) per kept BN.

    A BatchNorm is any layer that is an instance of a BatchNorm kind; it and a Linear take part in
    a fold only if their exact type is in the kind table and no hook is registered on them. Per
    maximal run of adjacent foldable BatchNorms: after a Linear, all fold into it (left to right);
    otherwise, before a Linear, all fold into that one (right to left); otherwise all stay. A run's
    neighbours are never BatchNorms, so folding makes no new pair: a folded model has nothing to fold.
    """
    for i, layer in enumerate(layers):
        if not isinstance(layer, NORM_TYPES) and any(isinstance(m, NORM_TYPES) for m in layer.modules()):
            raise FoldError(f"{layer_name(layers, i)} holds BatchNorms inside it: flatten the model into one "
                            f"Sequential before folding")

    def norm(k):
        return 0 <= k < len(layers) and is_norm(layers[k]) and unfoldable(layers[k]) is None

    def linear(k):
        return 0 <= k < len(layers) and is_linear(layers[k]) and unfoldable(layers[k]) is None

    steps = []
    kept = [(k, f"{layer_name(layers, k)} {unfoldable(layer)}: kept as it is")
            for k, layer in enumerate(layers) if isinstance(layer, NORM_TYPES) and not norm(k)]
    i = 0
    while i < len(layers):
        j = i
        while norm(j):
            j += 1
        if j == i:
            i += 1
            continue
        if linear(i - 1):
            steps += [(i - 1, k, AFTER) for k in range(i, j)]
        elif linear(j):
            steps += [(j, k, BEFORE) for k in reversed(range(i, j))]
        else:
            for k in range(i, j):
                left, right = neighbour(layers, k - 1, "the input"), neighbour(layers, k + 1, "the output")
                kept.append((k, f"{layer_name(layers, k)} sits between {left} and {right}: no adjacent Linear"))
        i = j
    return steps, sorted(kept)


def neighbour(layers: Sequence[nn.Module], k: int, end: str) -> str:
    """The type name of layers[k] and, for a Linear that cannot take a fold, why; `end` past either end."""
    if not 0 <= k < len(layers):
        return end
    why = unfoldable(layers[k]) if isinstance(layers[k], LINEAR_TYPES) else None
    return type(layers[k]).__name__ + (f" (which {why})" if why else "")


def stages(layers: Sequence[nn.Module], steps) -> list[dict[int, nn.Module]]:
    """The model after 0, 1, ..., len(steps) single folds, each as {input index: layer}; a folded Linear keeps its index."""
    current = dict(enumerate(layers))
    result = [dict(current)]
    for lin, bn, direction in steps:
        current[lin] = fold_pair(current[lin], current[bn], direction, layer_name(layers, bn), layer_name(layers, lin))
        del current[bn]
        result.append(dict(current))
    return result
