"""The optimizer torch.onnx.export runs by default (optimize=True): onnxscript.optimizer, whose rewrite rules fold
BatchNormalization into a Conv, ConvTranspose or Gemm before it, in numpy float32, applied to the same export."""

from typing import Any

from core.conform.adapters.onnx_export import OptimizedExport


class OnnxScript(OptimizedExport):
    key = "onnxscript"
    name = "onnxscript (torch.onnx optimize)"
    distribution = "onnxscript"
    usage = "folded = torch.onnx.export(model, (x,), dynamo=True).model_proto  # optimize=True: onnxscript.optimizer"

    def optimize(self, proto: Any) -> Any:
        import onnxscript.optimizer

        return onnxscript.optimizer.optimize(proto)
