"""Inductor's conv → BatchNorm fold, torch._inductor.fx_passes.pre_grad.fuse_conv_bn: a GraphModule in, the same
GraphModule out with each Conv{1,2,3}d → BatchNorm in eval folded (Inductor runs it on the traced graph when
freezing)."""

import torch
from torch import fx, nn

from core.conform.cases import LINEAR, TRANSPOSED, all_but
from core.conform.folder import Folded, Folder, TorchFolded


class InductorFuseConvBn(Folder):
    key = "inductor"
    name = "inductor fuse_conv_bn"
    distribution = "torch"
    claims = all_but(LINEAR, TRANSPOSED)  # Conv{1,2,3}d → BatchNorm only
    usage = ("from torch._inductor.fx_passes.pre_grad import fuse_conv_bn\n"
             "folded = fuse_conv_bn(torch.fx.symbolic_trace(model))")

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        from torch._inductor.fx_passes.pre_grad import fuse_conv_bn

        return TorchFolded(fuse_conv_bn(fx.symbolic_trace(model)))
