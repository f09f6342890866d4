"""Models as graphs of layers: reading a model (a layer list, or any module torch.fx can trace), the fold plan
along the graph's edges, the stages of single folds, and evaluating a stage.

A model is read as a torch.fx graph whose `call_module` nodes are its layers. A CharMLP's layer stack and a
Sequential without BatchNorms below its own children are read as a chain, one node per layer, named by
index; any other module is traced by torch.fx, keeping every layer of a kind in `core.engine.kinds` (and any
BatchNorm, subclass or hooked module) as one call, named by its qualified name.

The plan folds a BatchNorm along an edge only where nothing else can see the difference (docs/design-conv.md):
- after its producer, when that producer is an affine layer (Linear, convolution) whose only user is the
  BatchNorm;
- otherwise before its consumer, when the BatchNorm's only user is an affine layer that takes it as its
  input and folds it exactly (no zero-padded border), or a Flatten from dim 1 whose only user is a Linear.
A chain of BatchNorms each the only user of the one before (a run) folds as a whole: after (first to
last) or before (last to first). Every other BatchNorm is kept, with the reason. On a chain this is the
rule of the flat plan: a run of BNs folds into the Linear before it, else into the Linear after it.
"""

import copy
import inspect
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from core.engine.algebra import AFTER, BEFORE, fold_pair
from core.engine.kinds import AFFINE_TYPES, KINDS, LinearKind, hooked, is_batchnorm, norm_width
from core.errors import FoldError

KIND_TYPES = tuple(KINDS)


class LayerTracer(fx.Tracer):
    """torch.fx's tracer, keeping each layer of a kind in the table (subclasses too), each BatchNorm and each hooked
    module as one call: fold reads those as layers, and a hooked module keeps running its hooks."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, KIND_TYPES) or is_batchnorm(m) or hooked(m)
                or super().is_leaf_module(m, module_qualified_name))


@dataclass(frozen=True)
class Step:
    """One single fold: the BatchNorm at node `bn` into the affine layer at node `layer`, `direction` AFTER or BEFORE.

    `spread` is the number of features each BatchNorm channel becomes through a Flatten before a Linear (1 otherwise).
    """

    layer: fx.Node
    bn: fx.Node
    direction: str
    spread: int = 1


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


def flattens_from_1(node: fx.Node, module: nn.Module | None) -> bool:
    """node is a Flatten of all dims from 1 on (nn.Flatten(), torch.flatten(x, 1), x.flatten(1))."""
    if node.op == "call_module":
        return type(module) is nn.Flatten and (module.start_dim, module.end_dim) == (1, -1) and not hooked(module)
    if (node.op, node.target) in (("call_function", torch.flatten), ("call_method", "flatten")):
        return _flatten_dims(*node.args, **node.kwargs) == (1, -1)
    return False


def _flatten_dims(input, start_dim=0, end_dim=-1) -> tuple:
    """(start_dim, end_dim) of a call torch.flatten(input, start_dim=0, end_dim=-1) or x.flatten(...)."""
    return start_dim, end_dim


class FoldGraph:
    """A model as a torch.fx graph of layers; `root` holds every module and attribute the graph names.

    `chain`: read from a layer list, nodes named "0", "1", ... and layers named "<Type> at index i".
    """

    def __init__(self, graph: fx.Graph, root: nn.Module, chain: bool):
        self.graph, self.root, self.chain = graph, root, chain
        self.nodes = list(graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        self.modules = {n.target: root.get_submodule(n.target) for n in self.nodes if n.op == "call_module"}
        self.calls = Counter(n.target for n in self.nodes if n.op == "call_module")
        self.in_place = {n for n in self.nodes if writes_in_place(n, self.modules)}

    @classmethod
    def from_layers(cls, layers: Sequence[nn.Module]) -> "FoldGraph":
        """A chain: input → layers[0] → layers[1] → ... → output."""
        graph = fx.Graph()
        x = graph.placeholder("x")
        for i in range(len(layers)):
            x = graph.call_module(str(i), (x,))
        graph.output(x)
        return cls(graph, nn.Sequential(*layers), chain=True)  # its layers by index, whatever the model named them

    @classmethod
    def trace(cls, model: nn.Module) -> "FoldGraph":
        """The model as torch.fx traces it; FoldError if it cannot be traced."""
        try:
            graph = LayerTracer().trace(model)
        except Exception as e:  # torch.fx raises TraceError, TypeError, RuntimeError, ... on untraceable code
            children = ", ".join(f"model.{name}" for name, _ in model.named_children()) or "its submodules"
            raise FoldError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no message'}): fold its traceable submodules "
                            f"instead ({children}) and put them back into the model") from e
        return cls(graph, model, chain=False)

    # Names for messages and reports.

    def key(self, target: str) -> int | str:
        """How the report names a layer: its index in a chain, its qualified name otherwise."""
        return int(target) if self.chain else target

    def name(self, target: str) -> str:
        where = f"at index {target}" if self.chain else f"'{target}'"
        return f"{type(self.modules[target]).__name__} {where}"

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__ if self.chain else self.name(node.target)
        if node.op == "placeholder":
            return "the input" if self.chain else f"the model's input '{node.target}'"
        if node.op == "output":
            return "the output" if self.chain else "the model's output"
        if node.op == "call_method":
            return f".{node.target}()"
        return getattr(node.target, "__name__", str(node.target))

    # The plan.

    def plan(self) -> tuple[list[Step], list[tuple[int | str, str]]]:
        """(single folds in the order they apply, [(key, reason)] per kept BatchNorm); module docstring: the rule."""
        steps, kept, seen = [], [], set()
        bn_nodes = [n for n in self.nodes if n.op == "call_module" and is_batchnorm(self.modules[n.target])]
        for node in bn_nodes:
            why = self.bn_problem(node)
            if why is not None and node.target not in seen:
                kept.append((node, f"{self.name(node.target)} {why}: kept as it is"))
            seen.add(node.target)
        in_run = set()
        for node in bn_nodes:
            if node in in_run or self.bn_problem(node) is not None:
                continue
            run = [node]
            while len(run[-1].users) == 1:
                (user,) = run[-1].users
                if user.op != "call_module" or not is_batchnorm(self.modules[user.target]) or self.bn_problem(user):
                    break
                run.append(user)
            in_run.update(run)
            producer, after = self.after_partner(run[0])
            if after is None:
                steps += [Step(producer, bn, AFTER) for bn in run]
                continue
            consumer, spread, before = self.before_partner(run[-1])
            if before is None:
                steps += [Step(consumer, bn, BEFORE, spread) for bn in reversed(run)]
                continue
            kept += [(bn, self.kept_reason(bn, run, after, before)) for bn in run]
        kept.sort()  # fx.Node orders by position in the graph
        return steps, [(self.key(n.target), reason) for n, reason in kept] + self.hidden_bns()

    def bn_problem(self, node: fx.Node) -> str | None:
        """Why the BatchNorm at node cannot fold whatever its neighbours, or None."""
        why = unfoldable(self.modules[node.target])
        if why is None and self.calls[node.target] > 1:
            why = f"is called at {self.calls[node.target]} places in forward (one module, shared)"
        if why is None and not node.args:  # bn(input=x): a BatchNorm takes one input, so it is this or bn(x)
            why = "is not called with its input as its one positional argument, where fold reads it"
        return why

    def layer_problem(self, node: fx.Node) -> tuple[str | None, bool]:
        """(why the affine layer at node cannot take a fold, or None; whether that is one the flat plan knew)."""
        module = self.modules[node.target]
        why = unfoldable(module)
        if why is not None:
            return why, True
        if self.calls[node.target] > 1:
            return f"is called at {self.calls[node.target]} places in forward (one module, shared)", False
        return None, False

    def after_partner(self, head: fx.Node) -> tuple[fx.Node | None, tuple[str, bool] | None]:
        """(producer, None) if the run starting at head folds after its producer, else (None, (why not, flat))."""
        producer = head.args[0]
        if producer.op != "call_module" or not isinstance(self.modules[producer.target], AFFINE_TYPES):
            return None, (f"its producer is {self.describe(producer)}, not a Linear or convolution", True)
        why, flat = self.layer_problem(producer)
        if why is not None:
            return None, (f"its producer {self.name(producer.target)} {why}", flat)
        if len(producer.users) > 1:
            others = ", ".join(self.describe(u) for u in producer.users if u is not head)
            return None, (f"its producer {self.name(producer.target)} has other users ({others})", False)
        if not pairs(self.modules[producer.target], self.modules[head.target]):
            why = (f"its producer {self.name(producer.target)} keeps its features in another dim than the "
                   f"{type(self.modules[head.target]).__name__} normalises")
            return None, (why, False)
        return producer, None

    def before_partner(self, tail: fx.Node) -> tuple[fx.Node | None, int, tuple[str, bool] | None]:
        """(consumer, spread, None) if the run ending at tail folds before its consumer, else (None, 1, (why, flat))."""
        users = list(tail.users)
        if len(users) != 1:
            return _refused(f"it has {len(users)} users ({', '.join(self.describe(u) for u in users)})")
        (user,) = users
        spread, bn = 1, self.modules[tail.target]
        consumer = user
        if flattens_from_1(user, self.modules.get(user.target)) and len(user.users) == 1:
            (after_flatten,) = user.users
            if after_flatten.op == "call_module" and isinstance(KINDS.get(type(self.modules[after_flatten.target])),
                                                               LinearKind):
                consumer = after_flatten
                fan_in = KINDS[type(self.modules[consumer.target])].terms(self.modules[consumer.target])
                width = norm_width(bn)
                if fan_in % width:
                    raise FoldError(f"{self.name(tail.target)} has {width} features but {self.name(consumer.target)}, "
                                    f"after a Flatten, has fan_in {fan_in}, no multiple of it: check the architecture")
                spread = fan_in // width
        if consumer.op != "call_module" or not isinstance(self.modules[consumer.target], AFFINE_TYPES):
            return _refused(f"it feeds {self.describe(user)}", flat=True)  # a consumer past a Flatten is affine
        layer = self.modules[consumer.target]
        why, flat = self.layer_problem(consumer)
        if why is not None:
            return _refused(f"its consumer {self.name(consumer.target)} {why}", flat)
        if not consumer.args:  # layer(input=x): an affine layer takes one input, so it is this or layer(x)
            return _refused(f"{self.name(consumer.target)} does not take it as its first positional argument alone")
        kind = KINDS[type(layer)]
        exact = kind.exact_before(layer)
        if exact is not None:
            return _refused(f"it is before {self.name(consumer.target)}: {exact}")
        if consumer is user and not pairs(layer, bn):
            why = (f"its consumer {self.name(consumer.target)} keeps its features in another dim than the "
                   f"{type(bn).__name__} normalises")
            return _refused(why)
        return consumer, spread, None

    def kept_reason(self, bn: fx.Node, run: list[fx.Node], after: tuple[str, bool], before: tuple[str, bool]) -> str:
        if self.chain and after[1] and before[1]:  # the flat plan's words for what it also kept
            left, right = self.neighbour(bn.args[0]), self.neighbour(next(iter(bn.users)))
            return f"{self.name(bn.target)} sits between {left} and {right}: no adjacent Linear"
        within = f" (in a run of {len(run)} BatchNorms)" if len(run) > 1 else ""
        return f"{self.name(bn.target)}{within} is kept: {after[0]}; {before[0]}"

    def neighbour(self, node: fx.Node) -> str:
        """The type name of the layer at node and, for an affine layer that cannot take a fold, why."""
        if node.op != "call_module":
            return self.describe(node)
        module = self.modules[node.target]
        why = unfoldable(module) if isinstance(module, AFFINE_TYPES) else None
        return type(module).__name__ + (f" (which {why})" if why else "")

    def hidden_bns(self) -> list[tuple[str, str]]:
        """(name, reason) for each BatchNorm of the model that the graph does not call as a layer of its own."""
        if self.chain:
            return []
        called = set(self.calls)
        hidden = []
        for name, module in self.root.named_modules():
            if not is_batchnorm(module) or name in called:
                continue
            owners = [t for t in called if name.startswith(t + ".")]
            if owners:
                owner = max(owners)  # the innermost: owners are prefixes of one name, the longest is the largest
                what = self.modules[owner]
                why = "it has a hook registered" if hooked(what) else "torch.fx keeps it as one call"
                reason = (f"{type(module).__name__} '{name}' is inside {self.name(owner)}, which fold calls as one "
                          f"layer ({why}): kept as it is")
            else:
                reason = (f"{type(module).__name__} '{name}' is never called by forward: kept as it is (the folded "
                          f"model, traced from forward, does not hold it)")
            hidden.append((name, reason))
        return hidden

    # Stages and evaluation.

    def fold_step(self, modules: dict[str, nn.Module], step: Step) -> nn.Module:
        """The affine layer after `step`, from the current `modules`."""
        return fold_pair(modules[step.layer.target], modules[step.bn.target], step.direction,
                         self.name(step.bn.target), self.name(step.layer.target), step.spread)

    def final_modules(self, steps: Iterable[Step]) -> dict[str, nn.Module]:
        """{target: module} after every step: folded layers are new, the others are the model's own."""
        modules = dict(self.modules)
        for step in steps:
            modules[step.layer.target] = self.fold_step(modules, step)
        return modules

    def evaluate(self, modules: dict[str, nn.Module], bypassed: set, inputs: tuple,
                 env: dict | None = None, changed: Iterable[fx.Node] = ()) -> dict:
        """{node: value} of the stage with `modules`, where each node in `bypassed` passes its input on.

        With the values `env` of another stage, only `changed` nodes and those downstream of them are
        computed again. Values are never written in place: an in-place op gets a copy of its input.
        """
        fresh = env is None
        env = {} if fresh else dict(env)
        dirty = set(changed)
        placeholders = iter(inputs)
        for node in self.nodes:
            if node.op == "placeholder":
                value = next(placeholders, node.args[0] if node.args else None)
                if fresh:
                    env[node] = value
                continue
            if not fresh and node not in dirty and not any(a in dirty for a in node.all_input_nodes):
                continue
            dirty.add(node)
            env[node] = env[node.args[0]] if node in bypassed else self.run_node(node, modules, env)
        return env

    def run_node(self, node: fx.Node, modules: dict[str, nn.Module], env: dict):
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node in self.in_place and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])
        if node.op == "call_module":
            return modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return attribute(self.root, node.target)
        return args[0]  # output

    # The folded model.

    def folded_graph(self, steps: Iterable[Step]) -> fx.Graph:
        """A copy of the graph without the folded BatchNorms: each one's users read its input instead."""
        graph = copy.deepcopy(self.graph)
        by_name = {n.name: n for n in graph.nodes}
        for step in steps:
            bn = by_name[step.bn.name]
            bn.replace_all_uses_with(bn.args[0])
            graph.erase_node(bn)
        return graph

    def folded_module(self, model: nn.Module, steps: list[Step]) -> fx.GraphModule:
        """A GraphModule computing the model with every step folded; it shares no tensor with the model.

        Folded layers are new; every other module and attribute is a deep copy (one per target, so a module
        called at several places stays one module); containers keep the model's training flags.
        """
        modules = self.final_modules(steps)
        folded = {s.layer.target for s in steps}
        graph = self.folded_graph(steps)
        root = {}
        for node in graph.nodes:
            if node.op == "call_module" and node.target not in root:
                module = modules[node.target]
                root[node.target] = module if node.target in folded else copy.deepcopy(module)
            elif node.op == "get_attr" and node.target not in root:
                root[node.target] = copy.deepcopy(attribute(self.root, node.target))
        gm = fx.GraphModule(root, graph, class_name=type(model).__name__)
        for name, module in gm.named_modules():
            try:
                module.training = model.get_submodule(name).training
            except AttributeError:
                pass
        return gm

    def folded_layers(self, steps: list[Step]) -> list[nn.Module]:
        """A chain's layers with every step folded: folded layers new, the others deep copies."""
        modules = self.final_modules(steps)
        removed = {s.bn.target for s in steps}
        return [m if m is not self.modules[t] else copy.deepcopy(m) for t, m in modules.items() if t not in removed]


def _refused(why: str, flat: bool = False) -> tuple[None, int, tuple[str, bool]]:
    """FoldGraph.before_partner's answer when a run does not fold before its consumer: (None, 1, (why, flat))."""
    return None, 1, (why, flat)


def pairs(layer: nn.Module, bn: nn.Module) -> bool:
    """layer keeps its output channels where bn normalises (dim 1): a Linear with a BatchNorm1d, a Conv2d with a
    BatchNorm2d, ..."""
    return KINDS[type(layer)].spatial in KINDS[type(bn)].spatial


def attribute(root: nn.Module, target: str):
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv}


def writes_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the call writes into its first argument: an inplace=True module or function, x.op_(), x += y."""
    if node.op == "call_module":
        return getattr(modules[node.target], "inplace", False) is True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op != "call_function":
        return False
    if node.target in IN_PLACE_OPERATORS or getattr(node.target, "__name__", "").endswith("_"):
        return True
    try:  # inplace as a keyword (how torch.fx records torch's own functions) or by position
        return inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments.get("inplace") is True
    except (TypeError, ValueError):  # no signature to read, or a call it does not bind
        return False


def model_graph(model: nn.Module) -> FoldGraph:
    """The graph fold and error_bound read: a chain for a CharMLP or a Sequential (or a single layer) without
    BatchNorms below its own children, the torch.fx trace otherwise."""
    from core.makemore.model import CharMLP

    if isinstance(model, CharMLP):
        layers = model.layers
        for i, layer in enumerate(layers):
            if not is_batchnorm(layer) and any(is_batchnorm(m) for m in layer.modules()):
                raise FoldError(f"{type(layer).__name__} at index {i} holds BatchNorms inside it: flatten the "
                                f"model into one Sequential before folding")
        return FoldGraph.from_layers(layers)
    if isinstance(model, KIND_TYPES) or is_batchnorm(model):
        return FoldGraph.from_layers(nn.Sequential(model))
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward and not any(
            not is_batchnorm(layer) and any(is_batchnorm(m) for m in layer.modules()) for layer in model):
        return FoldGraph.from_layers(model)
    return FoldGraph.trace(model)
