"""A folded model written for deployment, and the written file checked against it.

`export(model, example, path)` writes a torch.export program (`.pt2`) or an ONNX file (`.onnx`, through torch's own
exporter), atomically, an ONNX file only once it is checked. `onnx_check(model, path, example)` runs the ONNX file in
ONNX Runtime and compares it with
the model layer by layer: every Linear and convolution's output is exposed as an output of the file, and the model
is run in torch with each of those values taken from ONNX Runtime. Between two such layers both runs see the same
inputs, so their difference is only each side's rounding, which the rules of `core.engine.bound` bound with D = 0
at the last layer both share (docs/design.md, "Exported files"). The bound has the depth of one layer and what
follows it up to the next, so it is tight, where a bound carried through the whole network would be vacuous.

torch.export needs nothing more than torch; ONNX needs the `onnx` extra (onnx, onnxscript, onnxruntime).
"""

import contextlib
import importlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from core.atomic import atomic_path, atomic_write_bytes
from core.engine.bound.graph_rules import propagate_node, zeros_like_bound
from core.engine.bound.propagation import inner_and_inputs
from core.engine.certify import WithinBound, measure
from core.engine.graph import FoldGraph, Stage
from core.engine.kinds import affine_types
from core.errors import ExportError, MissingDependency

SUFFIXES = {".pt2": "a torch.export program", ".onnx": "an ONNX file"}
ONNX_EXTRA = "pip install 'bnfold[onnx]'"


def optional(module: str, purpose: str, extra: str = ONNX_EXTRA) -> Any:
    """The optional package `module`, or MissingDependency naming it and the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{purpose} needs the package {module.split('.')[0]}, which is not installed: "
                                f"{extra}") from e


def arguments(example: Any) -> tuple[Any, ...]:
    return example if isinstance(example, tuple) else (example,)


def check_suffix(path: str | Path) -> str:
    """The suffix of a path export writes (.pt2 or .onnx), else ExportError naming the two."""
    suffix = Path(path).suffix
    if suffix not in SUFFIXES:
        kinds = ", ".join(f"{s} ({what})" for s, what in SUFFIXES.items())
        raise ExportError(f"{path}: bnfold writes {kinds}; give a path ending in one of those")
    return suffix


def export(model: nn.Module, example: Any, path: str | Path) -> "OnnxCheck | None":
    """Write `model` run on `example` (a tensor or a tuple of them) to `path`, atomically: a torch.export program for
    .pt2; for .onnx an ONNX file, checked in ONNX Runtime before it replaces anything (`onnx_check`), the check
    returned. ExportError for another suffix, a model the exporter refuses, or an ONNX file that does not compute the
    model; then nothing is written."""
    if check_suffix(path) == ".pt2":
        atomic_write_bytes(path, program_bytes(model, example))
        return None
    data = onnx_model(model, example).SerializeToString()
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
        check = onnx_check(model, temporary, example, named=str(path))
        check.require()
    return check


def program_bytes(model: nn.Module, example: Any) -> bytes:
    """The torch.export program of `model` on `example`, serialised."""
    try:
        program = torch.export.export(model, arguments(example))
    except Exception as e:  # torch.export raises many types for code it cannot capture
        raise ExportError(f"torch.export cannot capture {type(model).__name__} ({type(e).__name__}: "
                          f"{first_line(e)})") from e
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def onnx_model(model: nn.Module, example: Any) -> Any:
    """The ONNX model proto torch's exporter makes of `model` on `example`, as exported: torch.onnx's own optimizer
    (onnxscript's, `optimize=True`) is left off, so the file holds the model's layers one for one, and an unfolded
    model's BatchNorms stay BatchNorms."""
    for package in ("onnx", "onnxscript"):
        optional(package, "an ONNX export")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(model, arguments(example), dynamo=True, optimize=False, verbose=False)
    except Exception as e:  # the exporter raises many types for code it cannot capture or translate
        raise ExportError(f"torch.onnx cannot export {type(model).__name__} ({type(e).__name__}: "
                          f"{first_line(e)})") from e
    if program is None:  # torch.onnx returns None only when it writes a file itself, which this call does not ask
        raise ExportError(f"torch.onnx gave no program for {type(model).__name__}")
    return program.model_proto


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


@dataclass(frozen=True)
class LayerCheck(WithinBound):
    """One exposed value of the ONNX file against the model's own on the same inputs: the largest |Δ|, the bound
    there, and the slack max_j |Δ_j| / bound_j."""

    name: str
    observed: float
    bound: float
    slack: float


@dataclass(frozen=True)
class OnnxCheck:
    """The ONNX file against the model: every exposed layer and the outputs, each within its own bound; `observed`
    is the largest |Δ| at the outputs when ONNX Runtime runs the file end to end."""

    path: str
    layers: tuple[LayerCheck, ...]
    observed: float

    @property
    def holds(self) -> bool:
        return all(check.holds for check in self.layers)

    def __str__(self) -> str:
        worst = max(self.layers, key=lambda c: c.slack)
        verdict = "computes the folded model" if self.holds else "does NOT compute the folded model"
        return (f"{self.path} in ONNX Runtime {verdict}: {len(self.layers) - 1} layer(s) and the outputs checked, "
                f"worst slack {worst.slack:.3g} ({worst.name}); max |Δ| at the outputs {self.observed:.3e}")

    def require(self) -> None:
        """ExportError naming the values that differ beyond their bounds, unless the check holds."""
        failing = [f"{c.name} (slack {c.slack:.3g})" for c in self.layers if not c.holds]
        if failing:
            raise ExportError(f"{self.path} does not compute the folded model in ONNX Runtime: {', '.join(failing)}")


@torch.no_grad()
def onnx_check(model: nn.Module, path: str | Path, example: Any, named: str | None = None) -> OnnxCheck:
    """The ONNX file at `path` (reported as `named`, by default the path) run by ONNX Runtime on `example` against
    `model` (module docstring)."""
    onnx = optional("onnx", "checking an ONNX file")
    ort = optional("onnxruntime", "checking an ONNX file")
    proto = onnx.load(str(path))
    inner, inputs = inner_and_inputs(model, example)
    graph = FoldGraph.trace(inner)
    prefix = next(name for name, module in model.named_modules() if module is inner)
    exposed = layer_outputs(proto, graph, prefix)
    outputs = [o.name for o in proto.graph.output]
    for name in exposed.values():
        if name not in outputs:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    names = [*outputs, *(n for n in exposed.values() if n not in outputs)]
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(proto.graph.input, arguments(example))}
    faithful = ort.SessionOptions()
    faithful.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), faithful, providers=["CPUExecutionProvider"])
    values = dict(zip(names, session.run(names, feeds)))
    theirs = {node: torch.from_numpy(values[name]) for node, name in exposed.items()}
    run = Resynced(graph, theirs)
    ours = run.run(*inputs)
    final = [torch.from_numpy(values[name]) for name in outputs]
    checks = [*run.checks, check("the outputs", leaves(ours), final, leaves(run.bounds[graph.nodes[-1]]))]
    end_to_end = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    observed = max((float((a.double() - torch.from_numpy(b).double()).abs().max()) for a, b in
                    zip(leaves(model(*arguments(example))), end_to_end) if a.numel()), default=0.0)
    return OnnxCheck(named or str(path), tuple(checks), observed)


def layer_outputs(proto: Any, graph: FoldGraph, prefix: str) -> dict[fx.Node, str]:
    """{the node of each Linear and convolution of the model: the name of its output in the ONNX file}, found by the
    weight the file's node reads (torch's exporter names it after the layer), the bias added after a MatMul
    included."""
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(graph.modules[str(node.target)], affine_types()):
            continue
        qualified = f"{prefix}.{node.target}" if prefix else str(node.target)
        users = [n for n in consumers.get(f"{qualified}.weight", ()) if n.op_type in ("Conv", "ConvTranspose",
                                                                                       "Gemm", "MatMul")]
        if len(users) != 1:
            continue
        output = users[0].output[0]
        after = consumers.get(output, [])
        if users[0].op_type == "MatMul" and len(after) == 1 and f"{qualified}.bias" in after[0].input:
            output = after[0].output[0]
        found[node] = output
    return found


class Resynced(Stage):
    """The model's graph run in torch with each exposed layer's value replaced by ONNX Runtime's, and the bound on
    |torch − ONNX Runtime| carried from 0 at each replaced value (the inputs too) to the next."""

    def __init__(self, graph: FoldGraph, theirs: dict[fx.Node, torch.Tensor]):
        super().__init__(graph, graph.modules, set())
        self.fold_graph, self.theirs = graph, theirs
        self.bounds: dict[fx.Node, Any] = {}
        self.checks: list[LayerCheck] = []

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.op == "placeholder":
            self.bounds[n] = zeros_like_bound(value)
            return value
        bound = propagate_node(self.fold_graph, n, self.modules, self.env, self.bounds)
        if bound is not None:
            self.bounds[n] = bound
        if n not in self.theirs:
            return value
        theirs = self.theirs[n].to(value.dtype)
        self.checks.append(check(self.fold_graph.name(n.target), [value], [theirs], [bound]))
        self.bounds[n] = zeros_like_bound(theirs)
        return theirs


def check(name: str, ours: list[torch.Tensor], theirs: list[Any], bounds: list[Any]) -> LayerCheck:
    """The largest |Δ| of ours against theirs, the largest bound, and the slack max_j |Δ_j| / bound_j."""
    return LayerCheck(name, *measure(ours, theirs, bounds))


def leaves(value: Any) -> list[Any]:
    """The tensors of an output (a tensor, or a tuple or list of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in leaves(v)]
    return []

