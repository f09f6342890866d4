"""The fold plan: which BatchNorm folds into which layer along the model's graph, in which order, with the layer each
single fold gives, and why every other BatchNorm is kept.

The plan folds a BatchNorm along an edge only where nothing else can see the difference (docs/design-conv.md):
- after its producer, when that producer is an affine layer (Linear, convolution) whose only user is the
  BatchNorm;
- otherwise before its consumer, when the BatchNorm's only user is an affine layer that takes it as its
  input and folds it exactly (no zero-padded border), or a Flatten from dim 1 whose only user is a Linear.
A chain of BatchNorms each the only user of the one before (a run) folds as a whole: after (first to
last) or before (last to first). Every other BatchNorm is kept, with the reason.
"""

from dataclasses import dataclass

from torch import fx, nn

from core.engine.algebra import AFTER, BEFORE, fold_pair
from core.engine.graph import FoldGraph, flattens_from_1, pairs, unfoldable
from core.engine.kinds import KINDS, LinearKind, affine_kind, affine_types, hooked, is_batchnorm, norm_width
from core.errors import FoldError


@dataclass(frozen=True)
class Step:
    """One single fold: the BatchNorm at node `bn` into the affine layer at node `layer`, `direction` AFTER or BEFORE.

    `spread` is the number of features each BatchNorm channel becomes through a Flatten before a Linear (1 otherwise).
    """

    layer: fx.Node
    bn: fx.Node
    direction: str
    spread: int = 1


@dataclass(frozen=True)
class Plan:
    """What fold applies to `model`: its traced graph, the single folds in the order they apply with the affine
    layer each one gives (`layers[k]` after `steps[k]`), and (name, reason) for every BatchNorm kept.

    It holds the model's own modules: change the model, and plan it again.
    """

    model: nn.Module
    graph: FoldGraph
    steps: tuple[Step, ...]
    layers: tuple[nn.Module, ...]
    kept: tuple[tuple[str, str], ...]

    def final_modules(self) -> dict[str, nn.Module]:
        """{target: module} after every step: folded layers are new, the others are the model's own."""
        modules = dict(self.graph.modules)
        for step, layer in zip(self.steps, self.layers):
            modules[str(step.layer.target)] = layer
        return modules


def plan_folds(model: nn.Module) -> Plan:
    """The plan of `model`: traced once, each single fold computed once (FoldError if a BatchNorm that would fold
    is in training mode or has unusable statistics)."""
    graph = FoldGraph.trace(model)
    steps, kept = Planner(graph).steps()
    return plan_steps(model, graph, steps, kept)


def plan_steps(model: nn.Module, graph: FoldGraph, steps: list[Step],
               kept: list[tuple[str, str]] | None = None) -> Plan:
    """The plan that applies `steps` to the traced `model`, each single fold computed once, in order."""
    modules = dict(graph.modules)
    layers = []
    for step in steps:
        layer, bn = str(step.layer.target), str(step.bn.target)
        modules[layer] = fold_pair(modules[layer], modules[bn], step.direction, graph.name(bn), graph.name(layer),
                                   step.spread)
        layers.append(modules[layer])
    return Plan(model, graph, tuple(steps), tuple(layers), tuple(kept or ()))


class Planner:
    """The planning rule (module docstring) over one graph."""

    def __init__(self, graph: FoldGraph):
        self.graph = graph
        self.modules = graph.modules
        self.read_elsewhere = read_elsewhere(graph)

    def steps(self) -> tuple[list[Step], list[tuple[str, str]]]:
        """(single folds in the order they apply, [(name, reason)] per kept BatchNorm)."""
        steps: list[Step] = []
        kept: list[tuple[fx.Node, str]] = []
        seen: set[str] = set()
        bn_nodes = [n for n in self.graph.nodes if n.op == "call_module" and is_batchnorm(self.module(n))]
        for node in bn_nodes:
            why = self.bn_problem(node)
            if why is not None and node.target not in seen:
                kept.append((node, f"{self.graph.name(node.target)} {why}: kept as it is"))
            seen.add(str(node.target))
        in_run: set[fx.Node] = set()
        for node in bn_nodes:
            if node in in_run or self.bn_problem(node) is not None:
                continue
            run = [node]
            while len(run[-1].users) == 1:
                (user,) = run[-1].users
                if user.op != "call_module" or not is_batchnorm(self.module(user)) or self.bn_problem(user):
                    break
                run.append(user)
            in_run.update(run)
            producer, after = self.after_partner(run[0])
            if producer is not None:
                steps += [Step(producer, bn, AFTER) for bn in run]
                continue
            consumer, spread, before = self.before_partner(run[-1])
            if consumer is not None:
                steps += [Step(consumer, bn, BEFORE, spread) for bn in reversed(run)]
                continue
            within = f" (in a run of {len(run)} BatchNorms)" if len(run) > 1 else ""
            kept += [(bn, f"{self.graph.name(bn.target)}{within} is kept: {after}; {before}") for bn in run]
        kept.sort(key=lambda item: self.graph.position[item[0]])
        return steps, [(str(n.target), reason) for n, reason in kept] + self.hidden_bns()

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[str(node.target)]

    def is_affine(self, node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(self.module(node), affine_types())

    def bn_problem(self, node: fx.Node) -> str | None:
        """Why the BatchNorm at node cannot fold whatever its neighbours, or None."""
        why = self.layer_problem(node)
        if why is None and not node.args:  # bn(input=x): a BatchNorm takes one input, so it is this or bn(x)
            why = "is not called with its input as its one positional argument, where fold reads it"
        return why

    def layer_problem(self, node: fx.Node) -> str | None:
        """Why the layer or BatchNorm at node cannot take part in a fold, or None: calling it may differ from its
        kind's map, or its tensors serve more than this one call."""
        target = str(node.target)
        why = unfoldable(self.module(node))
        if why is None and self.graph.calls[target] > 1:
            why = f"is called at {self.graph.calls[target]} places in forward (one module, shared)"
        return why if why is not None else self.read_elsewhere.get(target)

    def after_partner(self, head: fx.Node) -> tuple[fx.Node | None, str]:
        """(producer, "") if the run starting at head folds after its producer, else (None, why not)."""
        producer = head.args[0]
        assert isinstance(producer, fx.Node)
        if not self.is_affine(producer):
            return None, f"its producer is {self.graph.describe(producer)}, not a Linear or convolution"
        why = self.layer_problem(producer)
        if why is not None:
            return None, f"its producer {self.graph.name(producer.target)} {why}"
        if len(producer.users) > 1:
            others = ", ".join(self.graph.describe(u) for u in producer.users if u is not head)
            return None, f"its producer {self.graph.name(producer.target)} has other users ({others})"
        if not pairs(self.module(producer), self.module(head)):
            return None, (f"its producer {self.graph.name(producer.target)} keeps its features in another dim than "
                          f"the {type(self.module(head)).__name__} normalises")
        return producer, ""

    def before_partner(self, tail: fx.Node) -> tuple[fx.Node | None, int, str]:
        """(consumer, spread, "") if the run ending at tail folds before its consumer, else (None, 1, why not)."""
        users = list(tail.users)
        if len(users) != 1:
            return None, 1, f"it has {len(users)} users ({', '.join(self.graph.describe(u) for u in users)})"
        (user,) = users
        spread, bn = 1, self.module(tail)
        consumer = user
        if flattens_from_1(user, self.modules.get(str(user.target))) and len(user.users) == 1:
            (after_flatten,) = user.users
            if after_flatten.op == "call_module" and isinstance(KINDS.get(type(self.module(after_flatten))),
                                                               LinearKind):
                consumer = after_flatten
                fan_in = affine_kind(self.module(consumer)).terms(self.module(consumer))
                width = norm_width(bn)
                if fan_in % width:
                    raise FoldError(f"{self.graph.name(tail.target)} has {width} features but "
                                    f"{self.graph.name(consumer.target)}, after a Flatten, has fan_in {fan_in}, no "
                                    f"multiple of it: check the architecture")
                spread = fan_in // width
        if not self.is_affine(consumer):
            return None, 1, f"it feeds {self.graph.describe(user)}"  # a consumer past a Flatten is affine
        layer = self.module(consumer)
        why = self.layer_problem(consumer)
        if why is not None:
            return None, 1, f"its consumer {self.graph.name(consumer.target)} {why}"
        if not consumer.args:  # layer(input=x): an affine layer takes one input, so it is this or layer(x)
            return None, 1, (f"{self.graph.name(consumer.target)} does not take it as its first positional argument "
                             f"alone")
        exact = affine_kind(layer).exact_before(layer)
        if exact is not None:
            return None, 1, f"it is before {self.graph.name(consumer.target)}: {exact}"
        if consumer is user and not pairs(layer, bn):
            return None, 1, (f"its consumer {self.graph.name(consumer.target)} keeps its features in another dim than "
                             f"the {type(bn).__name__} normalises")
        return consumer, spread, ""

    def hidden_bns(self) -> list[tuple[str, str]]:
        """(name, reason) for each BatchNorm of the model that the graph does not call as a layer of its own."""
        called = set(self.graph.calls)
        hidden = []
        for name, module in self.graph.root.named_modules():
            if not is_batchnorm(module) or name in called:
                continue
            owners = [t for t in called if name.startswith(t + ".")]
            if owners:
                owner = max(owners)  # the innermost: owners are prefixes of one name, the longest is the largest
                why = "it has a hook registered" if hooked(self.modules[owner]) else "torch.fx keeps it as one call"
                reason = (f"{type(module).__name__} '{name}' is inside {self.graph.name(owner)}, which fold calls as "
                          f"one layer ({why}): kept as it is")
            else:
                reason = (f"{type(module).__name__} '{name}' is never called by forward: kept as it is (the folded "
                          f"model, traced from forward, does not hold it)")
            hidden.append((name, reason))
        return hidden


def read_elsewhere(graph: FoldGraph) -> dict[str, str]:
    """{called module: how forward reads its tensors besides calling it}: a get_attr of one of them (say
    x.to(self.conv.weight.dtype)), or a tensor it shares with another module (a tied weight). Folding would give such
    a module new tensors, while the other reader keeps the old ones."""
    found: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        attribute = str(node.target)
        for name in graph.modules:
            if attribute.startswith(name + ".") and name not in found:
                found[name] = f"has its tensor '{attribute}' read elsewhere in forward, not only by its call"
    owners: dict[int, list[str]] = {}
    for name, tensor in [*graph.root.named_parameters(remove_duplicate=False),
                         *graph.root.named_buffers(remove_duplicate=False)]:
        owners.setdefault(id(tensor), []).append(name)
    for names in owners.values():
        for name in names:
            module, _, _ = name.rpartition(".")
            others = [other for other in names if other.rpartition(".")[0] != module]
            if module in graph.modules and others and module not in found:
                found[module] = f"shares its tensor '{name}' with '{others[0]}' (tied), which keeps reading it"
    return found
