"""The whole-model bound: each fold's pair bound carried through every node after it, summed over the folds
(docs/design.md, "A whole model")."""

from typing import Any

import torch
from torch import fx, nn

from core.engine.adapters import adapter_for
from core.engine.algebra import AFTER
from core.engine.bound.graph_rules import propagate_node, zeros_like_bound
from core.engine.bound.magnitudes import magnitudes_kept
from core.engine.bound.pair import pair_bound
from core.engine.bound.rounding import FOLD_ROUNDINGS, SAFETY, TINY64, U64
from core.engine.graph import FoldGraph, refuse_unusable
from core.engine.kinds import Bound, affine_kind
from core.engine.plan import Plan, Step, plan_folds
from core.errors import FoldError


def propagate_graph(graph: FoldGraph, modules: dict[str, nn.Module], env: dict[fx.Node, Any],
                    D: dict[fx.Node, Bound]) -> Bound:
    """The bound at the output, carried from the bounds D at some nodes ({node: bound}) through every node after
    them, each by its rule; env holds the values of the model at hand.

    No BatchNorm folded by an earlier step lies after the first of them: the plan folds runs in graph order, and a
    step starts at its pair's output, after every BatchNorm of the runs before it (docs/design-conv.md §7).
    """
    Ds = dict(D)
    for node in graph.nodes[min(graph.position[n] for n in D) + 1:]:
        bound = propagate_node(graph, node, modules, env, Ds)
        if bound is not None:
            Ds[node] = bound
    out = Ds.get(graph.nodes[-1])
    return zeros_like_bound(env[graph.nodes[-1]]) if out is None else out


def inner_and_inputs(model: nn.Module, X: Any) -> tuple[nn.Module, tuple[Any, ...]]:
    """(the module fold folds, its inputs when the model is called on X): a registered adapter's, or the model and X
    (a tuple for a model of several inputs)."""
    adapter = adapter_for(model)
    if adapter is not None:
        refuse_unusable(model)
        return adapter.inner(model), adapter.inputs(model, X)
    return model, X if isinstance(X, tuple) else (X,)


@torch.no_grad()
@magnitudes_kept()
def error_bound(model: nn.Module, X: Any, plan: Plan | None = None, fold_unit: float = U64,
                fold_roundings: int = FOLD_ROUNDINGS) -> Any:
    """Certified elementwise bound B (float64, CPU) with |model(X) − fold(model)[0](X)| ≤ B, both in eval.

    The folds apply one at a time, and consecutive models M_{k−1}, M_k differ in one pair only, so
    |M_0(X) − M_K(X)| ≤ Σ_k |M_{k−1}(X) − M_k(X)|. Each term is the pair bound ρ·M_j at the pair
    (identical inputs there), carried by the rules through every node of M_{k−1} downstream of the pair;
    nodes elsewhere compute the same values in both. The bound is itself computed in float64; the factor
    1 + 2⁻³⁰ covers that rounding. X is the input (a tuple for a model of several inputs); the result has
    the structure of the output. `plan` is the one fold applied (`fold(model)[1].plan`), else the model is planned
    here, once. `fold_unit` and `fold_roundings` describe the arithmetic of the folds' W' and b' (`pair_factor`):
    bnfold's own, float64 with 6 roundings, by default. Derivation: docs/design.md, docs/design-conv.md.
    """
    inner, inputs = inner_and_inputs(model, X)
    if plan is None:
        plan = plan_folds(inner)
    elif plan.model is not inner:
        raise FoldError(f"the plan given to error_bound is that of another {type(plan.model).__name__}, not of this "
                        f"{type(model).__name__}: pass the plan fold(model) returned for this model, or none")
    graph = plan.graph
    modules, bypassed = dict(graph.modules), set[fx.Node]()
    env = graph.values(modules, bypassed, inputs)
    total: Bound | None = None
    for step, folded_layer in zip(plan.steps, plan.layers):
        layer, bn = modules[str(step.layer.target)], modules[str(step.bn.target)]
        assert isinstance(step.layer.args[0], fx.Node) and isinstance(step.bn.args[0], fx.Node)
        if step.direction == AFTER:
            start, x, at_layer = step.bn, env[step.layer.args[0]], env[step.bn.args[0]]
        else:
            start, x, at_layer = step.layer, env[step.bn.args[0]], env[step.layer.args[0]]
        check_rank(graph, step, at_layer)
        D = {start: pair_bound(layer, bn, step.direction, x, fold_unit, fold_roundings)}
        out = propagate_graph(graph, modules, env, D)
        total = out if total is None else _add_bounds(total, out)
        modules[str(step.layer.target)] = folded_layer
        bypassed.add(step.bn)
        env = graph.values(modules, bypassed, inputs, env, changed=(step.layer, step.bn))
    if total is None:  # nothing to fold: folded(X) is computed exactly as model(X)
        return zeros_like_bound(env[graph.nodes[-1]])
    return _scale(total, SAFETY, TINY64)


def check_rank(graph: FoldGraph, step: Step, at_layer: torch.Tensor) -> None:
    """FoldError unless the layer of a folded pair keeps its channels in dim 1 of `at_layer`, the tensor it writes
    (after) or reads (before) on the BatchNorm's side, where the BatchNorm normalises dim 1.

    fold sees no inputs: it pairs a Linear with a BatchNorm1d, or a convolution over d dims with a BatchNorm,
    for (N, C) and (N, C, *d spatial) tensors (a Flatten between maps channels to blocks of features). A Linear
    on (N, L, C) keeps its features last while BatchNorm1d normalises dim 1, so such a fold (or one on unbatched
    input) scales the wrong dim.
    """
    rank = 2 + affine_kind(graph.modules[str(step.layer.target)]).spatial
    if at_layer.ndim != rank:
        layer, bn = graph.name(step.layer.target), graph.name(step.bn.target)
        raise FoldError(f"{bn} normalises dim 1 of a {at_layer.ndim}-D tensor here, but {layer} keeps its channels "
                        f"in dim 1 only of {rank}-D tensors (N, C{', ...' if rank > 2 else ''}): fold(model) folded "
                        f"them as if it did, so it does not compute model on this input. Give the pair {rank}-D "
                        f"tensors, e.g. transpose (N, L, C) to (N, C, L) before a BatchNorm1d (which then folds "
                        f"no more)")


def _add_bounds(a: Bound, b: Bound) -> Bound:
    if isinstance(a, torch.Tensor):
        return a + b
    return type(a)(_add_bounds(x, y) for x, y in zip(a, b)) if isinstance(a, tuple | list) else a


def _scale(bound: Bound, factor: float, floor: float) -> Bound:
    if isinstance(bound, torch.Tensor):
        return bound * factor + floor
    return type(bound)(_scale(v, factor, floor) for v in bound) if isinstance(bound, tuple | list) else bound
