"""Wrong folds planted into one folded layer of a folded model, and what a fold's layer sees on the original model:
the reference the certificate laws and tests hold `certify` to.

The plants: the BatchNorm's mean dropped (μ = 0), the original weight kept (with the folded bias), one output
channel's scale off by 10 % (γ_j·1.1), two channels swapped (the BatchNorm's terms of j and k exchanged). Each is
refolded from the original layer and BatchNorms with the wrong terms, so it is a whole, plausible wrong fold.
"""

import copy
from typing import Any

import torch
from torch import fx, nn

from core.engine.algebra import fold_pair
from core.engine.kinds import KINDS
from core.engine.plan import Plan, Step

PLANTS = ("mean_dropped", "weight_kept", "scale_off", "channels_swapped")


def steps_into(plan: Plan, layer: str) -> list[Step]:
    """The plan's steps that fold into the layer named `layer`, in the order they apply."""
    return [step for step in plan.steps if str(step.layer.target) == layer]


def plantable(plan: Plan) -> list[str]:
    """The folded layers a plant can go into: every one but a transposed convolution (whose output channels sit in
    dim 1 of its weight, per group)."""
    names = dict.fromkeys(str(step.layer.target) for step in plan.steps)
    return [name for name in names if not getattr(KINDS[type(plan.graph.modules[name])], "transposed", False)]


def wrong_norm(bn: nn.Module, kind: str, channels: tuple[int, int]) -> nn.Module:
    """A copy of the BatchNorm with the terms a plant gets wrong."""
    wrong: Any = copy.deepcopy(bn)
    width = wrong.running_mean.shape[0]
    j, k = channels[0] % width, channels[1] % width
    with torch.no_grad():
        if kind == "mean_dropped":
            wrong.running_mean.zero_()
        elif kind == "scale_off" and wrong.weight is not None:
            wrong.weight[j] *= 1.1
        elif kind == "scale_off":
            wrong.running_var[j] /= 1.21  # 1/√(v + ε) grows by about 10 % where ε ≪ v
        elif kind == "channels_swapped":
            for tensor in (wrong.running_mean, wrong.running_var, wrong.weight, wrong.bias):
                if tensor is not None:
                    tensor[[j, k]] = tensor[[k, j]]
    module: nn.Module = wrong
    return module


def plant(plan: Plan, folded: nn.Module, layer: str, kind: str, channels: tuple[int, int]) -> nn.Module:
    """A copy of `folded` whose layer `layer` holds the plant `kind` (module docstring) instead of the right fold."""
    planted = copy.deepcopy(folded)
    target: Any = planted.get_submodule(layer)
    original: Any = plan.graph.modules[layer]
    wrong: Any = original
    steps = steps_into(plan, layer)
    for step in steps:
        bn = plan.graph.modules[str(step.bn.target)]
        if step is steps[0] and kind != "weight_kept":
            bn = wrong_norm(bn, kind, channels)
        wrong = fold_pair(wrong, bn, step.direction, spread=step.spread)
    with torch.no_grad():
        target.weight.copy_(original.weight if kind == "weight_kept" else wrong.weight)
        target.bias.copy_(wrong.bias)
    return planted


def recorded(plan: Plan, X: torch.Tensor, layer: str) -> tuple[nn.Sequential, torch.Tensor, bool]:
    """(the original's layer and BatchNorms as a Sequential in their order, the input the original feeds the first of
    them on X, whether a Flatten stands before the layer)."""
    steps = steps_into(plan, layer)
    graph = plan.graph
    bns = sorted((step.bn for step in steps), key=graph.position.__getitem__)
    env = graph.values(graph.modules, set(), (X,))
    modules = [graph.modules[str(bn.target)] for bn in bns]
    if steps[0].direction == "after":
        source = steps[0].layer.args[0]
        assert isinstance(source, fx.Node)
        return nn.Sequential(graph.modules[layer], *modules), env[source], False
    source = bns[0].args[0]
    assert isinstance(source, fx.Node)
    flatten = steps[0].layer not in bns[-1].users
    return nn.Sequential(*modules, *([nn.Flatten()] if flatten else []), graph.modules[layer]), env[source], flatten
