"""torch.nn.utils.fusion: `fuse_conv_bn_eval` (transpose=True for a transposed conv, as documented) and
`fuse_linear_bn_eval`, applied to each adjacent layer → BatchNorm pair of a Sequential."""

import copy
from typing import Any

import torch
from torch import nn

from core.conform.cases import SHARED_FAMILY, SHARED_PAIR, all_but
from core.conform.folder import Folded, Folder, TorchFolded

CONVS: dict[type, type] = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
TRANSPOSED_CONVS: dict[type, type] = {nn.ConvTranspose1d: nn.BatchNorm1d, nn.ConvTranspose2d: nn.BatchNorm2d,
                    nn.ConvTranspose3d: nn.BatchNorm3d}


def pairs(table: dict[type, type], layer: nn.Module, bn: nn.Module) -> bool:
    """Whether bn is exactly the BatchNorm type `table` pairs with layer's exact type."""
    return table.get(type(layer)) is type(bn)


class TorchFusion(Folder):
    key = "torch-fusion"
    name = "torch.nn.utils.fusion"
    distribution = "torch"
    claims = all_but(SHARED_FAMILY, SHARED_PAIR)  # it pairs the adjacent layers of a Sequential
    usage = """from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

layers, i = [], 0
while i < len(model):  # each adjacent (layer, BatchNorm) pair becomes one layer
    layer, bn = model[i], model[i + 1] if i + 1 < len(model) else None
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
        transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
        layers.append(fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear)
                      else fuse_conv_bn_eval(layer, bn, transpose=transposed))
        i += 2
    else:
        layers.append(layer)
        i += 1
folded = nn.Sequential(*layers)"""

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

        if not isinstance(model, nn.Sequential):
            raise TypeError("torch.nn.utils.fusion is applied to the adjacent pairs of a Sequential")
        layers: list[Any] = list(model)  # (the pair's second member: nn.Identity() past the end)
        out, i = [], 0
        while i < len(layers):
            layer: Any = layers[i]
            bn: Any = layers[i + 1] if i + 1 < len(layers) else nn.Identity()
            if pairs(CONVS, layer, bn):
                out.append(fuse_conv_bn_eval(layer, bn))
            elif pairs(TRANSPOSED_CONVS, layer, bn):
                out.append(fuse_conv_bn_eval(layer, bn, transpose=True))
            elif type(layer) is nn.Linear and type(bn) is nn.BatchNorm1d:
                out.append(fuse_linear_bn_eval(layer, bn))
            else:
                out.append(copy.deepcopy(layer))
                i += 1
                continue
            i += 2
        folded = nn.Sequential(*out)
        folded.training = model.training  # the container's flag; each layer keeps its own
        return TorchFolded(folded)
