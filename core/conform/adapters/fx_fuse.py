"""torch.fx.experimental.optimization.fuse: symbolic trace, then Conv{1,2,3}d → BatchNorm and Linear → BatchNorm1d
folded where the layer's output has no other user (no transposed conv)."""

import torch
from torch import nn

from core.conform.cases import TRANSPOSED, all_but
from core.conform.folder import Folded, Folder, TorchFolded


class FxFuse(Folder):
    key = "fx-fuse"
    name = "torch.fx fuse"
    distribution = "torch"
    claims = all_but(TRANSPOSED)  # it has no ConvTranspose + BatchNorm pattern
    usage = "from torch.fx.experimental.optimization import fuse\nfolded = fuse(model)"

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        from torch.fx.experimental.optimization import fuse

        return TorchFolded(fuse(model))
