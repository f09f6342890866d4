"""bnfold itself: `core.engine.fold`, which folds in float64 and casts once."""

import torch
from torch import nn

from core.conform.cases import all_but
from core.conform.folder import Folded, Folder, TorchFolded
from core.engine.bound.rounding import FOLD_ROUNDINGS, U64
from core.engine.fold import fold


class Bnfold(Folder):
    key = "bnfold"
    name = "bnfold"
    distribution = "bnfold"
    claims = all_but()
    fold_roundings = FOLD_ROUNDINGS
    usage = "from core import fold\nfolded, report = fold(model)"

    def fold_unit(self, dtype: torch.dtype) -> float:
        return U64

    def version(self) -> str:
        import core

        try:
            return super().version()
        except ModuleNotFoundError:
            return core.__version__

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        return TorchFolded(fold(model)[0])
