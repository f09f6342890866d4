"""onnxoptimizer's fuse_bn_into_conv pass on a torch.onnx export: Conv → BatchNormalization becomes a Conv whose
weight and bias are computed by Add, Sqrt, Div, Mul and Sub nodes from the originals, in the model's dtype."""

from typing import Any

from core.conform.adapters.onnx_export import OptimizedExport
from core.conform.cases import CHANNELS_LAST, HALF, LINEAR, TRANSPOSED, all_but


class OnnxOptimizer(OptimizedExport):
    key = "onnxoptimizer"
    name = "onnxoptimizer"
    distribution = "onnxoptimizer"
    modules = ("onnx", "onnxscript", "onnxoptimizer")
    claims = all_but(LINEAR, TRANSPOSED, CHANNELS_LAST, HALF)  # the pass folds into a Conv only
    usage = ("import onnxoptimizer\n"
             "exported = torch.onnx.export(model, (x,), dynamo=True, optimize=False).model_proto\n"
             "folded = onnxoptimizer.optimize(exported, ['fuse_bn_into_conv'])")

    def optimize(self, proto: Any) -> Any:
        import onnxoptimizer

        return onnxoptimizer.optimize(proto, ["fuse_bn_into_conv"])
