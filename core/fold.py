"""Folding every foldable BatchNorm of a model into an adjacent Linear, and the report of what was folded and kept.

`fold(model)` takes a CharMLP or a torch.nn.Sequential. The single folds come from `core.pairfold`
(the algebra and the plan), their certified bound from `core.bound`; docs/design.md states the rules.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from core.bound import model_layers, pair_factor, unit_roundoff
from core.kinds import fan_in
from core.model import CharMLP
from core.pairfold import AFTER, plan, stages


@dataclass(frozen=True)
class FoldedPair:
    """One BatchNorm folded into one Linear; indices are the input model's, layer_index the folded model's."""

    bn_index: int
    linear_index: int
    direction: str  # AFTER: the BN follows the Linear; BEFORE: it precedes it
    layer_index: int
    fan_in: int
    bound_factor: float  # ρ of error_bound: |unfolded_j − folded_j| ≤ ρ·M_j for this fold


@dataclass(frozen=True)
class KeptBN:
    index: int
    reason: str


@dataclass(frozen=True)
class FoldReport:
    """What fold did: the pairs it folded, in the order it folded them, and the BNs it kept, with why; str() is a table."""

    folded: tuple[FoldedPair, ...]
    kept: tuple[KeptBN, ...]

    def __str__(self):
        row = "  {:>3}  {:>6}  {:<16}  {:>8}  {:>6}  {}"
        lines = [f"BatchNorm folding: {len(self.folded)} folded, {len(self.kept)} kept"]
        if self.folded:
            lines.append(row.format("BN", "Linear", "direction", "-> layer", "fan_in", "bound |Δy_j| <= ρ·M_j"))
        for p in self.folded:
            arrow = "Linear -> BN" if p.direction == AFTER else "BN -> Linear"
            lines.append(row.format(p.bn_index, p.linear_index, arrow, p.layer_index, p.fan_in, f"ρ = {p.bound_factor:.3e}"))
        lines += [f"  kept: {k.reason}" for k in self.kept]
        return "\n".join(lines)


def fold(model: nn.Module) -> tuple[nn.Module, "FoldReport"]:
    """(folded, FoldReport): the same kind of model (CharMLP or torch.nn.Sequential) with every foldable BN folded.

    Never mutates `model`. Unchanged layers are deep copies, folded Linears are new layers with a
    bias whose requires_grad is the source Linear weight's; every tensor is an ordinary one, even
    under inference mode. A CharMLP keeps a copy of C, its context_length and init_scheme.
    """
    layers = model_layers(model)
    steps, kept = plan(layers)
    with torch.inference_mode(False):  # ordinary tensors even when called under inference mode
        final = stages(layers, steps)[-1]
        final = [layer if layer is not layers[i] else copy.deepcopy(layer) for i, layer in final.items()]
        if isinstance(model, CharMLP):
            folded = CharMLP(model.C.detach().clone(), final, model.context_length, model.init_scheme)
            folded.C.requires_grad_(model.C.requires_grad)
            folded.layers.training = model.layers.training
        else:
            folded = nn.Sequential(*final)
    folded.training = model.training
    removed = {bn for _, bn, _ in steps}
    pairs = []
    for lin, bn, direction in steps:
        weight, n = layers[lin].weight, fan_in(layers[lin])
        factor = pair_factor(n, direction, unit_roundoff(weight.dtype, weight.device))
        pairs.append(FoldedPair(bn, lin, direction, lin - sum(r < lin for r in removed), n, factor))
    return folded, FoldReport(tuple(pairs), tuple(KeptBN(i, reason) for i, reason in kept))
