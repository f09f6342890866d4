"""Folding every foldable BatchNorm of a model into an adjacent affine layer; the report of what was folded and kept.

`fold(model)` takes any module torch.fx can trace (or a model type registered with an adapter, `core.engine.adapters`).
The model is traced and planned along its graph's edges (`core.engine.plan`); each single fold is
`core.engine.algebra`'s, and its certified bound `core.engine.bound`'s. docs/design.md and docs/design-conv.md state
the rules.
"""

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from core.engine.adapters import adapter_for
from core.engine.algebra import AFTER
from core.engine.bound.pair import pair_factor
from core.engine.bound.rounding import convolves, unit_roundoff
from core.engine.graph import attribute, refuse_unusable
from core.engine.kinds import fan_in
from core.engine.plan import Plan, plan_folds


@dataclass(frozen=True)
class FoldedPair:
    """One BatchNorm folded into one affine layer, both named by qualified module name (the folded layer keeps it)."""

    bn: str
    layer: str
    direction: str  # AFTER: the BN follows the layer; BEFORE: it precedes it
    fan_in: int  # products summed into each output (C_in/groups × kernel volume for a conv)
    bound_factor: float  # ρ of error_bound: |unfolded_j − folded_j| ≤ ρ·M_j for this fold
    layer_type: str


@dataclass(frozen=True)
class KeptBN:
    """A BatchNorm fold left as it is, and why."""

    bn: str
    reason: str


@dataclass(frozen=True)
class FoldReport:
    """What fold did: the pairs it folded, in the order folded, the BNs it kept, with why, and the plan it applied
    (for error_bound); str() is a table."""

    folded: tuple[FoldedPair, ...]
    kept: tuple[KeptBN, ...]
    plan: Plan | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        lines = [f"BatchNorm folding: {len(self.folded)} folded, {len(self.kept)} kept"]
        if self.folded:
            bn_width = max([len("BatchNorm"), *(len(p.bn) for p in self.folded)])
            layer_width = max([len("into layer"), *(len(p.layer) for p in self.folded)])
            row = f"  {{:<{bn_width}}}  {{:<{layer_width}}}  {{:<20}}  {{:>6}}  {{}}"
            lines.append(row.format("BatchNorm", "into layer", "direction", "fan_in", "bound |Δy_j| <= ρ·M_j"))
            for p in self.folded:
                arrow = f"{p.layer_type} -> BN" if p.direction == AFTER else f"BN -> {p.layer_type}"
                lines.append(row.format(p.bn, p.layer, arrow, p.fan_in, f"ρ = {p.bound_factor:.3e}"))
        lines += [f"  kept: {k.reason}" for k in self.kept]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data: each fold's fields, and each kept BatchNorm with its reason."""
        return {"folded": [dataclasses.asdict(p) for p in self.folded],
                "kept": [dataclasses.asdict(k) for k in self.kept]}


def fold(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """(folded, FoldReport): the model with every foldable BN folded, and what was folded and kept, with why.

    A Sequential of layers gives a Sequential, a lone layer a Sequential of it, a model of a type with an adapter a
    model of that type, and any other module a torch.fx GraphModule with the same inputs and outputs, traced in the
    model's current mode. Never mutates `model`. Unchanged layers are deep copies, folded layers are new layers with
    a bias whose requires_grad is the source layer weight's; every tensor is an ordinary one, even under inference
    mode. FoldError if the model cannot be traced, or a BatchNorm that would fold is in training mode or has
    unusable statistics.
    """
    with torch.inference_mode(False):  # ordinary tensors even when called under inference mode
        adapter = adapter_for(model)
        if adapter is not None:
            refuse_unusable(model)  # the wrapper's own hooks and tensors (the inner module is checked when traced)
            folded_inner, report = fold(adapter.inner(model))
            return adapter.wrap(model, folded_inner), report
        plan = plan_folds(model)
        folded = as_sequential(plan, folded_module(plan))
    folded.training = model.training
    return folded, report_of(plan)


def report_of(plan: Plan) -> FoldReport:
    pairs = []
    for step in plan.steps:
        layer = plan.graph.modules[str(step.layer.target)]
        weight, n = layer.weight, fan_in(layer)
        assert isinstance(weight, torch.Tensor)
        factor = pair_factor(n, step.direction, unit_roundoff(weight.dtype, weight.device, convolves(layer)))
        pairs.append(FoldedPair(str(step.bn.target), str(step.layer.target), step.direction, n, factor,
                                type(layer).__name__))
    return FoldReport(tuple(pairs), tuple(KeptBN(name, reason) for name, reason in plan.kept), plan)


def folded_graph(plan: Plan) -> fx.Graph:
    """A copy of the model's graph without the folded BatchNorms: each one's users read its input instead."""
    graph = copy.deepcopy(plan.graph.graph)
    by_name = {n.name: n for n in graph.nodes}
    for step in plan.steps:
        bn = by_name[step.bn.name]
        bn.replace_all_uses_with(bn.args[0])
        graph.erase_node(bn)
    return graph


def folded_module(plan: Plan) -> fx.GraphModule:
    """A GraphModule computing the model with every step folded; it shares no tensor with the model.

    Folded layers are new; every other module and attribute is a deep copy (one per target, so a module
    called at several places stays one module); containers keep the model's training flags.
    """
    modules = plan.final_modules()
    folded = {str(s.layer.target) for s in plan.steps}
    graph = folded_graph(plan)
    root: dict[str, object] = {}
    for node in graph.nodes:
        target = str(node.target)
        if node.op == "call_module" and target not in root:
            root[target] = modules[target] if target in folded else copy.deepcopy(modules[target])
        elif node.op == "get_attr" and target not in root:
            root[target] = copy.deepcopy(attribute(plan.graph.root, target))
    gm = fx.GraphModule(root, graph, class_name=type(plan.model).__name__)
    for name, module in gm.named_modules():
        try:
            module.training = plan.graph.root.get_submodule(name).training
        except AttributeError:
            pass
    return gm


def as_sequential(plan: Plan, folded: fx.GraphModule) -> nn.Module:
    """A Sequential of the folded layers, under their names, when the model is a Sequential (or a lone layer) whose
    folded graph is a chain of its own children; `folded` itself otherwise."""
    model = plan.model
    if plan.graph.root is model and not (isinstance(model, nn.Sequential)
                                         and type(model).forward is nn.Sequential.forward):
        return folded
    nodes = list(folded.graph.nodes)
    calls = nodes[1:-1]
    chain = (nodes[0].op == "placeholder" and nodes[-1].op == "output"
             and all(n.op == "call_module" and "." not in str(n.target) for n in calls)
             and all(n.args == (previous,) and not n.kwargs for previous, n in zip(nodes, calls))
             and nodes[-1].args == (nodes[-2],))
    if not chain:
        return folded
    return nn.Sequential(OrderedDict((str(n.target), folded.get_submodule(str(n.target))) for n in calls))
