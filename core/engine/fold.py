"""Folding every foldable BatchNorm of a model into an adjacent affine layer; the report of what was folded and kept.

`fold(model)` takes a CharMLP, a torch.nn.Sequential or any module torch.fx can trace. The model is read
as a graph of layers and planned along its edges (`core.engine.graph`); each single fold is `core.engine.algebra`'s
algebra and its certified bound is `core.engine.bound`'s. docs/design.md and docs/design-conv.md state the rules.
"""

from dataclasses import dataclass

import torch
from torch import nn

from core.engine.algebra import AFTER
from core.engine.bound.pair import pair_factor
from core.engine.bound.rounding import convolves, unit_roundoff
from core.engine.graph import model_graph
from core.engine.kinds import fan_in
from core.makemore.model import CharMLP


@dataclass(frozen=True)
class FoldedPair:
    """One BatchNorm folded into one affine layer.

    Layers are named by index in a CharMLP or a Sequential read as a chain (bn_index, linear_index: the input
    model's, layer_index: the folded model's), by qualified module name in any other model (the folded layer
    keeps its name there).
    """

    bn_index: int | str
    linear_index: int | str
    direction: str  # AFTER: the BN follows the layer; BEFORE: it precedes it
    layer_index: int | str
    fan_in: int  # products summed into each output (C_in/groups × kernel volume for a conv)
    bound_factor: float  # ρ of error_bound: |unfolded_j − folded_j| ≤ ρ·M_j for this fold
    layer_type: str = "Linear"


@dataclass(frozen=True)
class KeptBN:
    index: int | str
    reason: str


@dataclass(frozen=True)
class FoldReport:
    """What fold did: the pairs it folded, in the order folded, and the BNs it kept, with why; str() is a table."""

    folded: tuple[FoldedPair, ...]
    kept: tuple[KeptBN, ...]

    def __str__(self):
        lines = [f"BatchNorm folding: {len(self.folded)} folded, {len(self.kept)} kept"]
        if all(isinstance(p.bn_index, int) for p in self.folded):
            row = "  {:>3}  {:>6}  {:<16}  {:>8}  {:>6}  {}"
            if self.folded:
                lines.append(row.format("BN", "Linear", "direction", "-> layer", "fan_in", "bound |Δy_j| <= ρ·M_j"))
            for p in self.folded:
                arrow = f"{p.layer_type} -> BN" if p.direction == AFTER else f"BN -> {p.layer_type}"
                lines.append(row.format(p.bn_index, p.linear_index, arrow, p.layer_index, p.fan_in,
                                        f"ρ = {p.bound_factor:.3e}"))
        else:
            bn_width = max(len("BatchNorm"), *(len(p.bn_index) for p in self.folded))
            layer_width = max(len("into layer"), *(len(p.linear_index) for p in self.folded))
            row = f"  {{:<{bn_width}}}  {{:<{layer_width}}}  {{:<20}}  {{:>6}}  {{}}"
            lines.append(row.format("BatchNorm", "into layer", "direction", "fan_in", "bound |Δy_j| <= ρ·M_j"))
            for p in self.folded:
                arrow = f"{p.layer_type} -> BN" if p.direction == AFTER else f"BN -> {p.layer_type}"
                lines.append(row.format(p.bn_index, p.linear_index, arrow, p.fan_in, f"ρ = {p.bound_factor:.3e}"))
        lines += [f"  kept: {k.reason}" for k in self.kept]
        return "\n".join(lines)


def fold(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """(folded, FoldReport): the model with every foldable BN folded, and what was folded and kept, with why.

    A CharMLP gives a CharMLP (with a copy of C, its context_length and init_scheme), a Sequential without
    BatchNorms below its own children a Sequential, any other module a torch.fx GraphModule with the same
    inputs and outputs, traced in the model's current mode. Never mutates `model`. Unchanged layers are deep
    copies, folded layers are new layers with a bias whose requires_grad is the source layer weight's; every
    tensor is an ordinary one, even under inference mode. FoldError if the model cannot be traced, or a
    BatchNorm that would fold is in training mode or has unusable statistics.
    """
    graph = model_graph(model)
    steps, kept = graph.plan()
    with torch.inference_mode(False):  # ordinary tensors even when called under inference mode
        if graph.chain:
            final = graph.folded_layers(steps)
            if isinstance(model, CharMLP):
                folded = CharMLP(model.C.detach().clone(), final, model.context_length, model.init_scheme)
                folded.C.requires_grad_(model.C.requires_grad)
                folded.layers.training = model.layers.training
            else:
                folded = nn.Sequential(*final)
        else:
            folded = graph.folded_module(model, steps)
    folded.training = model.training
    removed = [graph.key(s.bn.target) for s in steps]
    pairs = []
    for step in steps:
        layer = graph.modules[step.layer.target]
        weight, n = layer.weight, fan_in(layer)
        factor = pair_factor(n, step.direction, unit_roundoff(weight.dtype, weight.device, convolves(layer)))
        key = graph.key(step.layer.target)
        index = key - sum(r < key for r in removed) if graph.chain else key
        pairs.append(FoldedPair(graph.key(step.bn.target), key, step.direction, index, n, factor,
                                type(layer).__name__))
    return folded, FoldReport(tuple(pairs), tuple(KeptBN(k, reason) for k, reason in kept))
