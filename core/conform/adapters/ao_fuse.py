"""torch.ao.quantization.fuse_modules: the named (layer, BatchNorm) pairs fused, named as a reader of forward names
them: each BatchNorm called on the output of a Conv, ConvTranspose or Linear module."""

import copy

import torch
from torch import fx, nn

from core.conform.cases import all_but
from core.conform.folder import Folded, Folder, TorchFolded

PAIRS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
         nn.ConvTranspose1d: nn.BatchNorm1d, nn.ConvTranspose2d: nn.BatchNorm2d, nn.ConvTranspose3d: nn.BatchNorm3d,
         nn.Linear: nn.BatchNorm1d}


def adjacent_pairs(model: nn.Module) -> list[list[str]]:
    """[[layer, bn], ...]: the module names of each BatchNorm called on a layer's output, in call order, once each."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs: list[list[str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        if source.op == "call_module" and PAIRS.get(type(modules[str(source.target)])) is type(
                modules[str(node.target)]):
            pair = [str(source.target), str(node.target)]
            if pair not in pairs:
                pairs.append(pair)
    return pairs


class AoFuseModules(Folder):
    key = "ao-fuse"
    name = "torch.ao fuse_modules"
    distribution = "torch"
    claims = all_but()
    usage = "from torch.ao.quantization import fuse_modules\nfolded = fuse_modules(model, {pairs})"

    def usage_for(self, model: nn.Module) -> str:
        return self.usage.format(pairs=adjacent_pairs(model))

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        from torch.ao.quantization import fuse_modules

        pairs = adjacent_pairs(model)
        if not pairs:  # nothing to name: fuse_modules would read [] as one empty group and raise
            return TorchFolded(copy.deepcopy(model))
        return TorchFolded(fuse_modules(model, pairs, inplace=False))
