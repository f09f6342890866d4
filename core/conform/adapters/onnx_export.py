"""torch.onnx's export alone (dynamo, optimize=False), the input of the ONNX folders: it folds nothing, so what it
breaks, every ONNX folder on it breaks too, and the matrix says so for each of their failures. `OptimizedExport` is
what the ONNX folders share: the same export, optimized, its fold computed in the float32 of the initializers."""

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from core.conform.cases import CHANNELS_LAST, HALF, all_but
from core.conform.folder import Folded, Folder
from core.conform.onnx_graph import SHOW, OnnxFolded, export
from core.engine.bound.rounding import U32


class OnnxExport(Folder):
    key = "onnx-export"
    name = "torch.onnx export (no optimizer)"
    distribution = "torch"
    modules: ClassVar[tuple[str, ...]] = ("onnx", "onnxscript")
    claims = all_but(CHANNELS_LAST, HALF)  # ONNX has no memory format; the laws run ONNX models in float32
    show = SHOW
    usage = "folded = torch.onnx.export(model, (x,), dynamo=True, optimize=False).model_proto"

    def fold_unit(self, dtype: torch.dtype) -> float:
        return U32

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        self.require()
        return OnnxFolded(export(model, example))

    def refold(self, folded: Folded, example: torch.Tensor) -> Folded:
        return folded  # an export of an ONNX model is that model


class OptimizedExport(OnnxExport):
    """An ONNX optimizer run on torch.onnx's export; its fold computed in float32, the initializers' dtype."""

    def upstream(self) -> Folder:
        return OnnxExport()

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        self.require()
        return OnnxFolded(self.optimize(export(model, example)))

    def refold(self, folded: Folded, example: torch.Tensor) -> Folded:
        self.require()
        assert isinstance(folded, OnnxFolded)
        return OnnxFolded(self.optimize(folded.proto))

    @abstractmethod
    def optimize(self, proto: Any) -> Any:
        """The optimized onnx.ModelProto."""
