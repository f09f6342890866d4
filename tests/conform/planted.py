"""A folder written independently of bnfold, correct, and the same folder with one defect planted: the laws must
pass the first and catch each of the others."""

import copy

import torch
from torch import nn

from core.conform.cases import FAMILIES, SharedConv, SharedPair
from core.conform.folder import Folded, Folder, TorchFolded
from core.engine.bound.rounding import U64

AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def affine_of(bn: nn.Module, mean_too: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """s = γ/√(v + ε), t = β − μ·s in float64 (3 roundings on s, 5 on t)."""
    gamma = torch.ones_like(bn.running_var) if bn.weight is None else bn.weight
    beta = torch.zeros_like(bn.running_var) if bn.bias is None else bn.bias
    s = gamma.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    mean = bn.running_mean.double() if mean_too else torch.zeros_like(s)
    return s, beta.double() - mean * s


def fold_after(layer: nn.Module, bn: nn.Module, defect: str | None = None) -> nn.Module:
    """W' scales each output channel by s (dim 0, or dim 1 per group of a transposed conv), b' = b·s + t; with a
    defect: the mean left out ("mean"), a transposed conv scaled on its input axis ("axis"), W' and b' left in
    float32 ("mixed")."""
    s, t = affine_of(bn, mean_too=defect != "mean")
    folded = copy.deepcopy(layer)
    W = layer.weight.double()
    dtype = torch.float32 if defect == "mixed" else layer.weight.dtype
    if isinstance(layer, nn.modules.conv._ConvTransposeNd) and defect != "axis":
        g = layer.groups
        blocks = W.reshape(g, W.shape[0] // g, W.shape[1], *W.shape[2:])
        scale = s.reshape(g, 1, W.shape[1], *[1] * (W.ndim - 2))
        W = (blocks * scale).reshape(W.shape)
    else:
        W = W * s.reshape(-1, *[1] * (W.ndim - 1))
    b = torch.zeros_like(s) if layer.bias is None else layer.bias.double()
    with torch.no_grad():
        folded.weight = nn.Parameter(W.to(dtype))
        folded.bias = nn.Parameter((b * s + t).to(dtype))
    if not (torch.isfinite(folded.weight).all() and torch.isfinite(folded.bias).all()):
        raise OverflowError("the fold overflows the layer's dtype")
    return folded


class Planted(Folder):
    """Folds each adjacent (affine layer, eval BatchNorm) of a Sequential, in float64; keeps everything else. With
    `defect` set, it makes that one mistake."""

    key = name = "planted"
    distribution = "torch"
    claims = frozenset(FAMILIES)
    fold_roundings = 6  # s: 3, W·s: 4, t = β − μs: 5, b·s + t: 6
    usage = "folded = Planted().fold(model, x)"

    def __init__(self, defect: str | None = None):
        self.defect = defect

    def fold_unit(self, dtype: torch.dtype) -> float:
        return U64

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        defect = self.defect
        if isinstance(model, (SharedConv, SharedPair)):
            folded = copy.deepcopy(model)
            if defect == "shared":  # the conv folded once for all its calls, its BatchNorm dropped
                folded.conv, folded.bn = fold_after(model.conv, model.bn), nn.Identity()
            elif defect == "pair-twice":  # folded once per call into the one shared conv
                folded.conv, folded.bn = fold_after(fold_after(model.conv, model.bn), model.bn), nn.Identity()
            return TorchFolded(folded)
        layers, out, i = list(model), [], 0
        while i < len(layers):
            layer, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, AFFINE) and isinstance(nxt, NORMS) and (not nxt.training or defect == "training"):
                folded_layer = fold_after(layer, nxt, defect)
                if defect == "inplace":
                    with torch.no_grad():
                        layer.weight.copy_(folded_layer.weight)
                if defect == "twice":
                    folded_layer.again = copy.deepcopy(nxt)  # remembered, and folded again by refold
                out.append(folded_layer)
                i += 2
            elif defect == "padded" and isinstance(layer, NORMS) and isinstance(nxt, nn.Conv2d):
                s, t = affine_of(layer)
                conv = copy.deepcopy(nxt)
                W = nxt.weight.double()
                with torch.no_grad():
                    shift = (W * t.reshape(1, -1, 1, 1)).sum((1, 2, 3))
                    conv.weight = nn.Parameter((W * s.reshape(1, -1, 1, 1)).float())
                    b = torch.zeros_like(shift) if nxt.bias is None else nxt.bias.double()
                    conv.bias = nn.Parameter((b + shift).float())
                out.append(conv)
                i += 2
            else:
                out.append(copy.deepcopy(layer))
                i += 1
        for layer in out:
            if defect == "twice" and hasattr(layer, "again") and getattr(model, "folded_once", False):
                with torch.no_grad():
                    layer.weight.mul_(affine_of(layer.again)[0].reshape(-1, *[1] * (layer.weight.ndim - 1)).float())
        result = nn.Sequential(*out)
        result.training = model.training
        result.folded_once = True
        return TorchFolded(result)
