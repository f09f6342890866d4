"""The certified bound a folder's output is held to, and the comparisons the laws make.

A folder may fold any subset of the pairs bnfold's plan folds (a peer folds fewer kinds of pair), and computes each
fold in its own arithmetic. For a subset S of the plan's single folds, error_bound with a plan of S alone bounds
|model(X) − M_S(X)| for any M_S that folds exactly S, each fold's W' and b' rounded as the folder's arithmetic
rounds them (`fold_unit`, `fold_roundings`: docs/design-conv.md §11). The folder's S is unknown, so the bound is
the largest over every S a correct folder may make: for each layer a prefix of the folds into it, in plan order
(a run of BatchNorms folds first to last). A fold whose values overflow the dtype is one no folder can make
finite, so no S holds it. Every bound is an upper bound on one S's, so the largest is sound for whichever S it is.
"""

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.engine.bound.propagation import error_bound
from core.engine.graph import FoldGraph
from core.engine.plan import Planner, Step, plan_steps
from core.errors import FoldError


def fold_sets(steps: list[Step]) -> list[list[Step]]:
    """Every set of folds a correct folder may make: per layer a prefix of its folds, in plan order."""
    by_layer: dict[Any, list[Step]] = {}
    for step in steps:
        by_layer.setdefault(step.layer, []).append(step)
    choices = [range(len(folds) + 1) for folds in by_layer.values()]
    sets = []
    for lengths in itertools.product(*choices):
        chosen = {id(s) for folds, k in zip(by_layer.values(), lengths) for s in folds[:k]}
        sets.append([s for s in steps if id(s) in chosen])
    return sets


@torch.no_grad()
def certified_bound(model: nn.Module, x: torch.Tensor, fold_unit: float, fold_roundings: int) -> Any:
    """The largest error_bound over the fold sets of `model` (module docstring), float64, shaped as its output."""
    graph = FoldGraph.trace(model)
    steps, _ = Planner(graph).steps()
    best: Any = None
    for chosen in fold_sets(steps):
        try:
            plan = plan_steps(model, graph, chosen)
        except FoldError:  # a fold that overflows the dtype: no folder makes it finite
            continue
        bound = error_bound(model, x, plan, fold_unit, fold_roundings)
        best = bound if best is None else largest(best, bound)
    return best


def largest(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.maximum(a, b)
    return type(a)(largest(p, q) for p, q in zip(a, b))


def leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in leaves(v)]


def finite(value: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in leaves(value) if t.is_floating_point())


@dataclass(frozen=True)
class Excess:
    """Where the folded output leaves the bound: which output, which element, |Δ| there and the bound."""

    output: int
    index: tuple[int, ...]
    observed: float
    bound: float
    expected: float
    actual: float

    def __str__(self) -> str:
        where = f"output {self.output}, element {list(self.index)}" if self.index else f"output {self.output}"
        return (f"{where}: original {self.expected:.9g}, folded {self.actual:.9g}, |Δ| = {self.observed:.3e} > "
                f"bound {self.bound:.3e}")


def outside(expected: Any, actual: Any, bound: Any) -> Excess | str | None:
    """None when every element of `actual` is within `bound` of `expected`; else the element furthest outside
    (largest |Δ|/bound), or what differs in shape or dtype."""
    wanted, got, bounds = leaves(expected), leaves(actual), leaves(bound)
    if len(wanted) != len(got):
        return f"{len(got)} outputs where the original has {len(wanted)}"
    worst: Excess | None = None
    worst_ratio = 0.0
    for k, (e, a, b) in enumerate(zip(wanted, got, bounds)):
        if tuple(a.shape) != tuple(e.shape) or a.dtype != e.dtype:
            return (f"output {k} is {str(a.dtype).removeprefix('torch.')} {tuple(a.shape)} where the original's is "
                    f"{str(e.dtype).removeprefix('torch.')} {tuple(e.shape)}")
        diff = (a.double() - e.double()).abs()
        out = ~(diff <= b)  # nan is outside
        if not bool(out.any()):
            continue
        ratio = torch.where(out, diff / b, torch.zeros_like(diff)).nan_to_num(nan=math.inf)
        if worst is None or float(ratio.max()) > worst_ratio:
            flat = int(ratio.flatten().argmax())
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape))
            worst_ratio = float(ratio.max())
            worst = Excess(k, index, float(diff[index]), float(b[index]), float(e[index]), float(a[index]))
    return worst


def identical(a: Any, b: Any) -> bool:
    """torch.equal leaf by leaf (nan never equals)."""
    x, y = leaves(a), leaves(b)
    return len(x) == len(y) and all(p.dtype == q.dtype and torch.equal(p, q) for p, q in zip(x, y))
