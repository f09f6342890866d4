"""ONNX Runtime's graph optimizer at its basic level (constant folding and the Conv/ConvTranspose + BatchNormalization
fusions) on a torch.onnx export, the optimized model saved through SessionOptions.optimized_model_filepath."""

import tempfile
from pathlib import Path
from typing import Any

from core.conform.adapters.onnx_export import OptimizedExport
from core.conform.cases import CHANNELS_LAST, HALF, LINEAR, all_but


class OnnxRuntime(OptimizedExport):
    key = "onnxruntime"
    name = "onnxruntime"
    distribution = "onnxruntime"
    modules = ("onnx", "onnxscript", "onnxruntime")
    claims = all_but(LINEAR, CHANNELS_LAST, HALF)  # its BatchNormalization fusions follow a Conv or ConvTranspose
    usage = ("import onnx, onnxruntime as ort\n"
             "onnx.save(torch.onnx.export(model, (x,), dynamo=True, optimize=False).model_proto, 'model.onnx')\n"
             "options = ort.SessionOptions()\n"
             "options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC\n"
             "options.optimized_model_filepath = 'folded.onnx'\n"
             "ort.InferenceSession('model.onnx', options, providers=['CPUExecutionProvider'])\n"
             "folded = onnx.load('folded.onnx')")

    def optimize(self, proto: Any) -> Any:
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="bnfold-conform-") as directory:
            source, target = Path(directory) / "model.onnx", Path(directory) / "folded.onnx"
            source.write_bytes(proto.SerializeToString())
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(target)
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
            return onnx.load(str(target))
