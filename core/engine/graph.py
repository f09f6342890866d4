"""A model as a graph of layers: torch.fx's trace, keeping each layer of a kind in the table (and any BatchNorm,
subclass or hooked module) as one call, the names messages give its layers, and the evaluation of one stage of
folding (`Stage`, a torch.fx.Interpreter).
"""

import inspect
import operator
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from core.engine.kinds import KINDS, affine_kind, hooked, is_batchnorm, kind_types, norm_kind
from core.errors import FoldError


class LayerTracer(fx.Tracer):
    """torch.fx's tracer, keeping each layer of a kind in the table (subclasses too), each BatchNorm and each hooked
    module as one call: fold reads those as layers, and a hooked module keeps running its hooks."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, kind_types()) or is_batchnorm(m) or hooked(m)
                or super().is_leaf_module(m, module_qualified_name))


def unfoldable(layer: nn.Module) -> str | None:
    """Why a layer cannot take part in a fold (calling it may differ from its kind's map), or None."""
    if type(layer) not in KINDS:
        base = next((t for t in type(layer).__mro__ if t in KINDS), None)
        if base is None:
            return f"is a {type(layer).__name__}, a BatchNorm type fold has no kind for"
        return f"is a subclass of {base.__name__}, whose forward may differ"
    if hooked(layer):
        return "has a hook registered, so calling it may differ from its plain map"
    return None


def refuse_hooked_root(model: nn.Module) -> None:
    """FoldError for a model with a hook registered on itself: torch.fx traces its forward, not its call, so the hook
    would be lost (a hook on a layer inside is kept: that layer stays one call)."""
    if hooked(model):
        raise FoldError(f"{type(model).__name__} has a hook registered on the model itself, which torch.fx does not "
                        f"trace, so its fold would compute without it: remove the hook, fold, and register it on the "
                        f"folded model")


def flattens_from_1(node: fx.Node, module: nn.Module | None) -> bool:
    """node is a Flatten of all dims from 1 on (nn.Flatten(), torch.flatten(x, 1), x.flatten(1))."""
    if node.op == "call_module":
        return (isinstance(module, nn.Flatten) and type(module) is nn.Flatten
                and (module.start_dim, module.end_dim) == (1, -1) and not hooked(module))
    if (node.op, node.target) in (("call_function", torch.flatten), ("call_method", "flatten")):
        return _flatten_dims(*node.args, **node.kwargs) == (1, -1)
    return False


def _flatten_dims(input: Any, start_dim: Any = 0, end_dim: Any = -1) -> tuple[Any, Any]:
    """(start_dim, end_dim) of a call torch.flatten(input, start_dim=0, end_dim=-1) or x.flatten(...)."""
    return start_dim, end_dim


class FoldGraph:
    """A model as a torch.fx graph of layers; `root` holds every module and attribute the graph names.

    Layers are named by qualified module name (the `node.target` of their call): a Sequential's are "0", "1", ....
    """

    def __init__(self, graph: fx.Graph, root: nn.Module):
        self.graph, self.root = graph, root
        self.nodes: list[fx.Node] = list(graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        self.modules: dict[str, nn.Module] = {str(n.target): root.get_submodule(str(n.target))
                                              for n in self.nodes if n.op == "call_module"}
        self.calls = Counter(str(n.target) for n in self.nodes if n.op == "call_module")
        self.in_place = {n for n in self.nodes if writes_in_place(n, self.modules)}

    @classmethod
    def trace(cls, model: nn.Module) -> "FoldGraph":
        """The model as torch.fx traces it (a lone layer as the one layer of a Sequential, named "0"); FoldError if
        it cannot be traced."""
        root = nn.Sequential(model) if isinstance(model, kind_types()) or is_batchnorm(model) else model
        if root is model:
            refuse_hooked_root(model)
        try:
            graph = LayerTracer().trace(root)
        except Exception as e:  # torch.fx raises TraceError, TypeError, RuntimeError, ... on untraceable code
            children = ", ".join(f"model.{name}" for name, _ in model.named_children()) or "its submodules"
            raise FoldError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no message'}): fold its traceable submodules "
                            f"instead ({children}) and put them back into the model") from e
        return cls(graph, root)

    def name(self, target: Any) -> str:
        """How messages name a layer: its type and qualified name."""
        return f"{type(self.modules[str(target)]).__name__} '{target}'"

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return self.name(node.target)
        if node.op == "placeholder":
            return f"the model's input '{node.target}'"
        if node.op == "output":
            return "the model's output"
        if node.op == "call_method":
            return f".{node.target}()"
        return str(getattr(node.target, "__name__", node.target))

    def values(self, modules: dict[str, nn.Module], bypassed: set[fx.Node], inputs: tuple[Any, ...],
               env: dict[fx.Node, Any] | None = None, changed: Iterable[fx.Node] = ()) -> dict[fx.Node, Any]:
        """{node: value} of the stage with `modules`, where each node in `bypassed` passes its input on.

        With the values `env` of another stage, only `changed` nodes and those downstream of them are computed
        again. Values are never written in place: an in-place op gets a copy of its input.
        """
        initial = None
        if env is not None:
            dirty = set(changed)
            for node in self.nodes:
                if any(a in dirty for a in node.all_input_nodes):
                    dirty.add(node)
            initial = {node: value for node, value in env.items() if node not in dirty}
        stage = Stage(self, modules, bypassed)
        stage.run(*inputs, initial_env=initial)
        return stage.env


class Stage(fx.Interpreter):
    """The graph of a FoldGraph run with the layers `modules` holds, each `bypassed` node passing its input on, and
    every value kept; an in-place op is given a copy of its input, so no kept value is overwritten."""

    def __init__(self, graph: FoldGraph, modules: dict[str, nn.Module], bypassed: set[fx.Node]):
        super().__init__(graph.root, garbage_collect_values=False, graph=graph.graph)
        self.extra_traceback = False  # a layer's own error reaches the caller as it was raised
        self.modules, self.bypassed, self.in_place = modules, bypassed, graph.in_place

    def run_node(self, n: fx.Node) -> Any:
        if n in self.bypassed:
            assert isinstance(n.args[0], fx.Node)
            return self.env[n.args[0]]
        return super().run_node(n)

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if n in self.in_place and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])
        return args, kwargs

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.modules[str(target)](*args, **kwargs)


def pairs(layer: nn.Module, bn: nn.Module) -> bool:
    """layer keeps its output channels where bn normalises (dim 1): a Linear with a BatchNorm1d, a Conv2d with a
    BatchNorm2d, ..."""
    layer_kind, bn_kind = affine_kind(layer), norm_kind(bn)
    return layer_kind.spatial in bn_kind.spatial


def attribute(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv}


def writes_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the call writes into its first argument: an inplace=True module or function, x.op_(), x += y."""
    if node.op == "call_module":
        return getattr(modules[str(node.target)], "inplace", False) is True
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op != "call_function":
        return False
    if node.target in IN_PLACE_OPERATORS or getattr(node.target, "__name__", "").endswith("_"):
        return True
    assert callable(node.target)  # torch.fx makes no call_function node of anything else
    try:  # inplace as a keyword (how torch.fx records torch's own functions) or by position
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        return bound.arguments.get("inplace") is True
    except (TypeError, ValueError):  # no signature to read, or a call it does not bind
        return False
