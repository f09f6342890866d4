"""ONNX folders' common parts: the torch.onnx export they optimize, and their artefact, an ONNX model that runs in
ONNX Runtime and is computed op for op with torch's kernels (`evaluate`).

The export is torch.onnx's (dynamo, `optimize=False`: its default optimizer is itself a folder, `onnxscript`), made
once per model and input and shared by the ONNX folders. `evaluate` computes a node as the layer the exporter
made it from computes it (Conv as F.conv2d with the same arguments, Gemm as F.linear, BatchNormalization as
F.batch_norm, ...), so the nodes no folder changed give the original's values bit for bit, and what differs is
the folder's doing; the nodes a folder inserts (Add, Sqrt, Div, Mul, ...) are IEEE operations, correctly rounded in
torch as in any runtime. An op it does not know is an UnreadableGraph, a gap of the suite, not of the folder.
"""

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.conform.folder import Folded, peer
from core.deploy import onnx_model

SHOW = """import onnxruntime as ort

session = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
with torch.no_grad():
    print(model(x), session.run(None, {session.get_inputs()[0].name: x.numpy()}), sep="\\n")"""
CACHE_SIZE = 512  # exports kept (a few kB each): the ONNX folders draw the same cases of a law in turn
_exports: "OrderedDict[str, bytes]" = OrderedDict()


class UnreadableGraph(Exception):
    """The ONNX model holds an op or attribute `evaluate` does not compute."""


def model_key(model: nn.Module, example: torch.Tensor) -> str:
    """A digest of the model's structure, every tensor, training flag and memory format, and the input."""
    digest = hashlib.sha256(repr(model).encode())
    for name, value in model.state_dict().items():
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}:{value.stride()}".encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    digest.update(str([m.training for m in model.modules()]).encode())
    digest.update(f"{example.dtype}:{tuple(example.shape)}:{example.stride()}".encode())
    digest.update(example.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export(model: nn.Module, example: torch.Tensor) -> Any:
    """torch.onnx's export of `model` on `example`, unoptimized (core.deploy.onnx_model), made once per model and
    input."""
    onnx = peer("onnx", "an ONNX folder")
    key = model_key(model, example)
    if key not in _exports:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _exports[key] = onnx_model(model, example).SerializeToString()
        while len(_exports) > CACHE_SIZE:
            _exports.popitem(last=False)
    _exports.move_to_end(key)
    return onnx.load_from_string(_exports[key])


class OnnxFolded(Folded):
    """An optimized ONNX model: run by ONNX Runtime (its optimizations off: the folder's output as it is), computed
    with torch's kernels by `evaluate`, its initializers its tensors."""

    def __init__(self, proto: Any):
        self.proto = proto

    def __call__(self, x: torch.Tensor) -> Any:
        ort = peer("onnxruntime", "running an ONNX model")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(self.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        (name,) = [i.name for i in session.get_inputs()]
        outputs = [torch.from_numpy(o) for o in session.run(None, {name: x.detach().contiguous().numpy()})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> Any:
        return evaluate(self.proto, x)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {i.name: to_tensor(i) for i in self.proto.graph.initializer}


def to_tensor(proto: Any) -> torch.Tensor:
    from onnx import numpy_helper

    return torch.from_numpy(numpy_helper.to_array(proto).copy())


def attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
          10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def dtype_of(code: int) -> torch.dtype:
    if code not in DTYPES:
        raise UnreadableGraph(f"ONNX element type {code}")
    return DTYPES[code]


def evaluate(proto: Any, x: torch.Tensor) -> Any:
    """The outputs of the ONNX model on x, each node computed with torch's kernels (module docstring)."""
    graph = proto.graph
    env: dict[str, torch.Tensor | None] = {i.name: to_tensor(i) for i in graph.initializer}
    env[""] = None
    inputs = [i.name for i in graph.input if i.name not in env]
    if len(inputs) != 1:
        raise UnreadableGraph(f"{len(inputs)} graph inputs")
    env[inputs[0]] = x
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnreadableGraph(f"op {node.domain}.{node.op_type}")
        args = [env[name] for name in node.input]
        results = compute(node.op_type, args, attributes(node))
        for name, value in zip(node.output, results):
            env[name] = value
    outputs = [env[o.name] for o in graph.output]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _conv_geometry(a: dict[str, Any], dims: int) -> tuple[list[int], list[int], list[int]]:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnreadableGraph(f"auto_pad {a['auto_pad']!r}")
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:
        raise UnreadableGraph(f"asymmetric pads {pads}")
    return list(a.get("strides", [1] * dims)), pads[:dims], list(a.get("dilations", [1] * dims))


def _conv(x: Any, w: Any, b: Any, a: dict[str, Any]) -> torch.Tensor:
    dims = w.ndim - 2
    stride, padding, dilation = _conv_geometry(a, dims)
    function = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return function(x, w, b, stride, padding, dilation, a.get("group", 1))


def _conv_transpose(x: Any, w: Any, b: Any, a: dict[str, Any]) -> torch.Tensor:
    dims = w.ndim - 2
    if "output_shape" in a:
        raise UnreadableGraph("ConvTranspose with output_shape")
    stride, padding, dilation = _conv_geometry(a, dims)
    output_padding = list(a.get("output_padding", [0] * dims))
    function = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    return function(x, w, b, stride, padding, output_padding, a.get("group", 1), dilation)


def _batch_norm(args: list[Any], a: dict[str, Any]) -> list[Any]:
    x, scale, bias, mean, var = args[:5]
    eps = float(a.get("epsilon", 1e-5))
    if not a.get("training_mode", 0):
        return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)]
    mean, var = mean.clone(), var.clone()
    y = F.batch_norm(x, mean, var, scale, bias, True, 1 - float(a.get("momentum", 0.9)), eps)
    return [y, mean, var]


def _gemm(A: Any, B: Any, C: Any, a: dict[str, Any]) -> torch.Tensor:
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)
    if (alpha, beta, trans_a, trans_b) == (1.0, 1.0, 0, 1):
        return F.linear(A, B, C)  # nn.Linear's own call
    product = alpha * ((A.T if trans_a else A) @ (B.T if trans_b else B))
    return product if C is None else product + beta * C


def _reshape(x: Any, shape: Any, a: dict[str, Any]) -> torch.Tensor:
    target = [int(s) for s in shape.tolist()]
    if not a.get("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _axes(x: Any, args: list[Any], a: dict[str, Any], rank: int) -> list[int]:
    axes = args[1].tolist() if len(args) > 1 and args[1] is not None else list(a.get("axes", []))
    return sorted(int(k) % rank for k in axes)


def _unsqueeze(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    for k in _axes(x, args, a, x.ndim + len(args[1] if len(args) > 1 else a.get("axes", []))):
        x = x.unsqueeze(k)
    return x


def _squeeze(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    axes = _axes(x, args, a, x.ndim) if (len(args) > 1 or "axes" in a) else [k for k, s in enumerate(x.shape)
                                                                             if s == 1]
    for k in reversed(axes):
        x = x.squeeze(k)
    return x


def _pad(args: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, pads = args[0], [int(p) for p in args[1].tolist()]
    if len(args) > 3 and args[3] is not None:
        raise UnreadableGraph("Pad with axes")
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    rank = x.ndim
    torch_pads: list[int] = []
    for k in reversed(range(rank)):
        torch_pads += [pads[k], pads[k + rank]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        value = float(args[2].item()) if len(args) > 2 and args[2] is not None else 0.0
        return F.pad(x, torch_pads, "constant", value)
    return F.pad(x, torch_pads, {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


def _constant(a: dict[str, Any]) -> torch.Tensor:
    if "value" in a:
        return to_tensor(a["value"])
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                        ("value_ints", torch.int64)):
        if name in a:
            return torch.tensor(a[name], dtype=dtype)
    raise UnreadableGraph(f"Constant with {sorted(a)}")


def compute(op: str, args: list[Any], a: dict[str, Any]) -> list[Any]:
    """The outputs of one node."""
    arg = args + [None] * 3
    if op == "Conv":
        return [_conv(arg[0], arg[1], arg[2], a)]
    if op == "ConvTranspose":
        return [_conv_transpose(arg[0], arg[1], arg[2], a)]
    if op == "BatchNormalization":
        return _batch_norm(args, a)
    if op == "Gemm":
        return [_gemm(arg[0], arg[1], arg[2], a)]
    simple: dict[str, Callable[..., Any]] = {
        "Relu": torch.relu, "Sqrt": torch.sqrt, "Identity": lambda t: t, "Neg": torch.neg, "Add": torch.add,
        "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "MatMul": torch.matmul}
    if op in simple:
        return [simple[op](*args)]
    if op == "Reshape":
        return [_reshape(args[0], args[1], a)]
    if op == "Flatten":
        axis = a.get("axis", 1) % max(args[0].ndim, 1)
        return [args[0].reshape(int(torch.tensor(args[0].shape[:axis]).prod()), -1)]
    if op == "Cast":
        return [args[0].to(dtype_of(a["to"]))]
    if op == "CastLike":
        return [args[0].to(args[1].dtype)]
    if op == "Constant":
        return [_constant(a)]
    if op == "Unsqueeze":
        return [_unsqueeze(args, a)]
    if op == "Squeeze":
        return [_squeeze(args, a)]
    if op == "Concat":
        return [torch.cat(args, dim=a["axis"])]
    if op == "Shape":
        shape = list(args[0].shape)[a.get("start", 0):a.get("end", None)]
        return [torch.tensor(shape, dtype=torch.int64)]
    if op == "Expand":
        shape = torch.broadcast_shapes(tuple(args[0].shape), tuple(int(s) for s in args[1].tolist()))
        return [torch.broadcast_to(args[0], shape).clone()]
    if op == "Transpose":
        return [args[0].permute(*a.get("perm", reversed(range(args[0].ndim))))]
    if op == "Pad":
        return [_pad(args, a)]
    raise UnreadableGraph(f"op {op}")
