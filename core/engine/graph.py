"""A model as a graph of layers: torch.fx's trace, keeping each layer of a kind in the table (and any BatchNorm,
subclass or hooked module) as one call, the names messages give its layers, and the evaluation of one stage of
folding (`Stage`, a torch.fx.Interpreter).
"""

import inspect
import operator
from collections import Counter
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import fx, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from core.engine.kinds import (
    KINDS,
    affine_kind,
    forward_pre_hooks,
    hooked,
    is_batchnorm,
    kind_types,
    norm_kind,
)
from core.errors import FoldError


class LayerTracer(fx.Tracer):
    """torch.fx's tracer, keeping each layer of a kind in the table (subclasses too), each BatchNorm and each hooked
    module as one call: fold reads those as layers, and a hooked module keeps running its hooks."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, kind_types()) or is_batchnorm(m) or hooked(m)
                or super().is_leaf_module(m, module_qualified_name))


def unfoldable(layer: nn.Module) -> str | None:
    """Why a layer cannot take part in a fold (calling it may differ from its kind's map), or None."""
    if parametrize.is_parametrized(layer):
        names = [str(name) for name in cast(nn.ModuleDict, layer.parametrizations)]
        return (f"is parametrized (torch.nn.utils.parametrize computes its {', '.join(map(repr, names))} at every "
                f"call), so it holds no fixed tensor to fold (torch.nn.utils.parametrize.remove_parametrizations("
                f"module, {names[0]!r}) would let it fold)")
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


def refuse_unusable(model: nn.Module) -> None:
    """FoldError for a model fold cannot read as it is called: hooks on the model itself (`refuse_hooked_root`), or
    a tensor it can neither read nor copy (`refuse_unreadable`)."""
    refuse_hooked_root(model)
    refuse_unreadable(model)


# Old-style reparametrisations: a forward pre-hook recomputes a tensor of the module at every call, as a plain
# attribute (with autograd history after a forward outside torch.no_grad, so it cannot be deep-copied).
# (hook type, what applied it, where the tensor comes from, the call that removes it)
REPARAMETRISATIONS: tuple[tuple[type, str, str, str], ...] = (
    (WeightNorm, "torch.nn.utils.weight_norm", "'{0}_g' and '{0}_v'",
     "torch.nn.utils.remove_weight_norm(module, '{0}')"),
    (SpectralNorm, "torch.nn.utils.spectral_norm", "'{0}_orig' and its power-iteration vectors",
     "torch.nn.utils.remove_spectral_norm(module, '{0}')"),
    (BasePruningMethod, "torch.nn.utils.prune", "'{0}_orig' times '{0}_mask'",
     "torch.nn.utils.prune.remove(module, '{0}')"),
)


def refuse_unreadable(model: nn.Module) -> None:
    """FoldError for a model holding a tensor that fold can neither read nor copy, naming the module, the tensor and
    the fix: a tensor on the meta device (shapes, no values); an uninitialised one, or a lazy module that has not run
    (its type and hooks change at its first call, even after load_state_dict); a tensor an old-style
    reparametrisation hook recomputes at every call (weight_norm, spectral_norm, pruning); a tensor a layer of the
    kind table holds as a plain attribute (no Parameter or buffer: state_dict, .to() and .double() do not see it);
    and a plain tensor attribute with autograd history (which cannot be copied)."""
    for name, module in model.named_modules():
        who = f"{type(module).__name__} '{name}'" if name else f"the model ({type(module).__name__})"
        for hook in forward_pre_hooks(module):
            for hook_type, applied, source, remove in REPARAMETRISATIONS:
                if isinstance(hook, hook_type):
                    target = str(getattr(hook, "name", getattr(hook, "_tensor_name", "weight")))
                    raise FoldError(f"{who} has {applied} applied to its '{target}', which a forward pre-hook "
                                    f"recomputes from {source.format(target)} at every call, so fold can neither "
                                    f"copy nor fold it: remove it with {remove.format(target)} before folding (the "
                                    f"tensor keeps its current value)")
        plain = [(attribute, value) for attribute, value in vars(module).items() if isinstance(value, torch.Tensor)]
        tensors: list[tuple[str, torch.Tensor]] = [*module.named_parameters(recurse=False),
                                                   *module.named_buffers(recurse=False), *plain]
        for attribute, tensor in tensors:
            if is_lazy(tensor):
                raise FoldError(f"{who} has an uninitialised {attribute} (a lazy module that has not run yet): run "
                                f"the model once on an example input to initialise it (after load_state_dict, if you "
                                f"load one) before folding")
            if tensor.is_meta:
                raise FoldError(f"{who} has its {attribute} on the meta device, which holds shapes but no values: "
                                f"load the values first (model.load_state_dict(state_dict, assign=True), or "
                                f"model.to_empty(device=...) then load_state_dict) before folding")
        if isinstance(module, LazyModuleMixin):
            raise FoldError(f"{who} is a lazy module that has not run yet: its type and hooks change at its first "
                            f"call, so run the model once on an example input before folding")
        for attribute, tensor in plain:
            if type(module) in KINDS:
                raise FoldError(f"{who} holds its {attribute} as a plain tensor attribute, not a Parameter or "
                                f"buffer, so state_dict, .to() and .double() do not see it: register it "
                                f"(module.{attribute} = torch.nn.Parameter(module.{attribute}.detach())) before "
                                f"folding")
            if tensor.grad_fn is not None:
                raise FoldError(f"{who} holds the tensor '{attribute}' as a plain attribute computed with autograd "
                                f"history (not a Parameter or buffer), which cannot be copied: compute it under "
                                f"torch.no_grad(), or register it as a buffer, before folding")


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
            refuse_unusable(model)
        else:
            refuse_unreadable(root)
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
