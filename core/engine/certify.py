"""The certificate of a folded model: the artefact itself, checked fold by fold on the activations the original
really computes, everything else compared exactly, the whole model within its bound, and what folding costs in
accuracy (docs/design.md, "The certificate").

- **Each fold, locally.** For every folded layer, the original's layer and BatchNorms (in their order) and the
  folded layer taken from the artefact run on the input the original feeds that layer on X. Their difference must
  lie within the bound of that fold alone: depth 1, so tight (slack = max_j observed_j / bound_j ≤ 1).
- **Everything else is untouched.** The artefact's graph is the original's less the folded BatchNorms, node for
  node; every module and attribute no fold replaced equals the original's (torch.equal, same hyperparameters, same
  hooks, same mode).
- **End to end.** |model(X) − folded(X)| lies within the whole-model bound (`error_bound`): sound, but on deep
  networks loose by many orders of magnitude, so it is reported and never the only oracle.
- **Accuracy.** With the original evaluated in float64 as the reference, max |folded₃₂ − model₆₄| over
  max |model₃₂ − model₆₄|: near 1, folding made the model no less accurate. Reported, not part of `holds`.
"""

import copy
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from core.engine.adapters import adapter_for
from core.engine.algebra import AFTER, BEFORE
from core.engine.bound.propagation import error_bound, inner_and_inputs
from core.engine.fold import FoldReport
from core.engine.graph import FoldGraph, attribute, flattens_from_1
from core.engine.kinds import HOOK_ATTRIBUTES, affine_types, fan_in, is_batchnorm, norm_width
from core.engine.plan import Plan, Step, plan_steps
from core.errors import BoundError, CertificateError, FoldError


class WithinBound:
    """A comparison measured against its bound (`measure`): it holds where its slack is at most 1."""

    slack: float

    @property
    def holds(self) -> bool:
        return self.slack <= 1


def measure(expected: list[Any], actual: list[Any], bounds: list[torch.Tensor]) -> tuple[float, float, float]:
    """(largest |Δ|, largest bound, slack max_j |Δ_j| / bound_j) over pairs of tensors (or arrays) and their
    bounds: a Δ_j of 0 has slack 0 whatever its bound; pairs without elements count for nothing."""
    observed, largest, slack = 0.0, 0.0, 0.0
    for e, a, B in zip(expected, actual, bounds):
        diff = (torch.as_tensor(e).double().cpu() - torch.as_tensor(a).double().cpu()).abs()
        if not diff.numel():
            continue
        ratio = torch.where(diff == 0, 0.0, diff / B)
        observed, largest = max(observed, diff.max().item()), max(largest, B.max().item())
        slack = max(slack, ratio.max().item())
    return observed, largest, slack


@dataclass(frozen=True)
class PairCheck(WithinBound):
    """One folded layer checked on its real input: the BatchNorms folded into it (in the order they apply), the
    largest |original − folded| over its outputs, the bound there, and the slack max_j observed_j / bound_j."""

    layer: str
    bns: tuple[str, ...]
    direction: str
    observed: float
    bound: float
    slack: float

    def describe(self) -> str:
        arrow = "into" if self.direction == AFTER else "before, into"
        return f"{', '.join(self.bns)} {arrow} {self.layer}"


@dataclass(frozen=True)
class Certificate:
    """What `certify` found. `holds` when every fold is within its bound, nothing else differs, and the whole model
    is within its bound; `accuracy_ratio` is reported beside (None where it is undefined)."""

    pairs: tuple[PairCheck, ...]
    differences: tuple[str, ...]
    observed: float  # max |model(X) − folded(X)|
    bound: float | None  # the largest whole-model bound, None where a layer downstream of a fold has no rule
    end_to_end: bool | None  # |model(X) − folded(X)| ≤ bound, elementwise (None: no bound to compare with)
    accuracy_ratio: float | None
    unbounded: str = ""  # why there is no whole-model bound

    @property
    def holds(self) -> bool:
        return all(p.holds for p in self.pairs) and not self.differences and self.end_to_end is not False

    @property
    def worst(self) -> PairCheck | None:
        return max(self.pairs, key=lambda p: p.slack, default=None)

    @property
    def median_slack(self) -> float | None:
        return statistics.median(p.slack for p in self.pairs) if self.pairs else None

    def __str__(self) -> str:
        lines = [f"certificate: {'holds' if self.holds else 'FAILS'}"]
        worst = self.worst
        if worst is None:
            lines.append("  no fold to check")
        else:
            lines.append(f"  {len(self.pairs)} folded layer(s) checked on the real activations: worst slack "
                         f"{worst.slack:.3g} ({worst.describe()}), median {self.median_slack:.3g}")
        for p in self.pairs:
            if not p.holds:
                lines.append(f"  FAILS: {p.describe()}: max |Δ| {p.observed:.3e} against a bound of {p.bound:.3e} "
                             f"(slack {p.slack:.3g})")
        if self.differences:
            lines += [f"  differs: {d}" for d in self.differences]
        else:
            lines.append("  everything no fold replaced: equal to the original")
        accuracy = "—" if self.accuracy_ratio is None else f"{self.accuracy_ratio:.3g}"
        lines.append(f"  accuracy: max |folded − float64 model| / max |model − float64 model| = {accuracy}")
        if self.bound is None:
            lines.append(f"  whole-model bound: none ({self.unbounded}); max |Δ| {self.observed:.3e}")
        else:
            within = "within" if self.end_to_end else "NOT within"
            lines.append(f"  whole-model bound (sound, loose through depth): max |Δ| {self.observed:.3e} {within} "
                         f"{self.bound:.3e}")
        return "\n".join(lines)

    def failure(self) -> str:
        """What fails the certificate, in one line ("" when it holds)."""
        failing = [f"{p.describe()} (slack {p.slack:.3g})" for p in self.pairs if not p.holds]
        if self.end_to_end is False:
            failing.append(f"max |Δ| {self.observed:.3e} exceeds the whole-model bound")
        return "; ".join(failing + list(self.differences))

    def require(self) -> None:
        """CertificateError naming what fails, unless the certificate holds."""
        if not self.holds:
            raise CertificateError(f"the folded model's certificate does not hold: {self.failure()}")

    def as_dict(self) -> dict[str, Any]:
        """The certificate as plain data (strict JSON: no nan or inf, those become None)."""
        def number(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None
        worst = self.worst
        return {
            "holds": self.holds,
            "pairs": [{"layer": p.layer, "bns": list(p.bns), "direction": p.direction, "observed": number(p.observed),
                       "bound": number(p.bound), "slack": number(p.slack), "holds": p.holds} for p in self.pairs],
            "worst": None if worst is None else {"layer": worst.layer, "bns": list(worst.bns),
                                                 "slack": number(worst.slack)},
            "median_slack": number(self.median_slack),
            "differences": list(self.differences),
            "whole_model": {"observed": number(self.observed), "bound": number(self.bound),
                            "holds": self.end_to_end, "unbounded": self.unbounded or None},
            "accuracy_ratio": number(self.accuracy_ratio),
        }


@dataclass(frozen=True)
class Fold:
    """One folded layer of the original graph: the layer's node, its BatchNorms' nodes in graph order, the direction,
    and whether a Flatten stands between the BatchNorms and the layer."""

    layer: fx.Node
    bns: tuple[fx.Node, ...]
    direction: str
    flatten: bool


@torch.no_grad()
def certify(model: nn.Module, folded: nn.Module, X: Any, report: FoldReport | None = None) -> Certificate:
    """The certificate of `folded` as a fold of `model` on input X (module docstring), both in eval.

    With fold's `report`, the folds are the plan it records; without one, a BatchNorm of `model` that `folded` no
    longer calls, beside a layer whose tensors changed, is a fold. FoldError for a folded model of another type or
    one torch.fx cannot trace; BoundError for a fold whose bound has no rule.
    """
    inner, inputs = inner_and_inputs(model, X)
    if adapter_for(model) is not None:
        if type(folded) is not type(model):
            raise FoldError(f"certify compares a {type(model).__name__} with its fold, not with a "
                            f"{type(folded).__name__}")
        folded_inner = adapter_for(model).inner(folded)  # type: ignore[union-attr]
    else:
        folded_inner = folded
    plan = None if report is None else report.plan
    if plan is not None and plan.model is not inner:
        raise FoldError(f"the report given to certify is that of another {type(plan.model).__name__}: pass the report "
                        f"fold(model) returned for this model, or none")
    original = plan.graph if plan is not None else FoldGraph.trace(inner)
    target = FoldGraph.trace(folded_inner)
    planned = None if plan is None else {step.bn for step in plan.steps}
    match, differences = align(original, target, planned)
    folds = list(folds_of(original, target, match, plan, differences))
    if plan is None:
        plan = plan_steps(inner, original, steps_of(folds, original))
    env = original.values(original.modules, set(), inputs)
    pairs = tuple(check_fold(fold, original, target, match, env) for fold in folds)
    replaced = {f.layer for f in folds} | set(removed_bns(original, match))
    differences += compare_untouched(original, target, match, replaced)
    observed, bound, end_to_end, unbounded = whole_model(model, folded, X, plan)
    return Certificate(pairs, tuple(differences), observed, bound, end_to_end, accuracy_ratio(model, folded, X),
                       unbounded)


def align(original: FoldGraph, target: FoldGraph,
          planned: set[fx.Node] | None) -> tuple[dict[fx.Node, fx.Node], list[str]]:
    """({original node: artefact node}, differences): the artefact's graph read as the original's without the folded
    BatchNorms, node by node in order. A removed BatchNorm maps to what its input maps to. `planned`, when given, is
    the set of BatchNorms the plan folded: exactly those may be missing."""
    match: dict[fx.Node, fx.Node] = {}
    differences: list[str] = []
    nodes = iter(target.nodes)
    pending = next(nodes, None)
    for node in original.nodes:
        removable = node.op == "call_module" and is_batchnorm(original.modules[str(node.target)])
        must_go = planned is not None and node in planned
        if pending is not None and not must_go and corresponds(node, pending, original, target, match):
            match[node] = pending
            pending = next(nodes, None)
        elif removable and (planned is None or must_go) and isinstance(node.args[0], fx.Node):
            match[node] = match[node.args[0]]
        else:
            where = "" if pending is None else f" (the folded model has {target.describe(pending)} there)"
            differences.append(f"the folded model's graph departs from the original's at "
                               f"{original.describe(node)}{where}")
            return match, differences
    if pending is not None:
        differences.append(f"the folded model has {target.describe(pending)} and more, which the original has not")
    return match, differences


def corresponds(node: fx.Node, other: fx.Node, original: FoldGraph, target: FoldGraph,
                match: dict[fx.Node, fx.Node]) -> bool:
    """other stands where node stands: the same op on the same kind of callee, reading what node's arguments map to
    (constants equal)."""
    if node.op != other.op:
        return False
    if node.op == "call_module":
        if type(original.modules[str(node.target)]) is not type(target.modules[str(other.target)]):
            return False
    elif node.op in ("call_function", "call_method") and node.target != other.target:
        return False
    elif node.op == "placeholder" and node.target != other.target:
        return False

    def mapped(a: Any) -> Any:
        return match.get(a, a) if isinstance(a, fx.Node) else a
    try:
        return bool(fx.node.map_aggregate(node.args, mapped) == other.args
                    and fx.node.map_aggregate(node.kwargs, mapped) == other.kwargs)
    except RuntimeError:  # a tensor constant compared with ==
        return False


def removed_bns(original: FoldGraph, match: dict[fx.Node, fx.Node]) -> list[fx.Node]:
    """The BatchNorms of the original that the artefact no longer calls (each maps to what its input maps to)."""
    return [n for n in original.nodes if n.op == "call_module" and is_batchnorm(original.modules[str(n.target)])
            and n in match and isinstance(n.args[0], fx.Node) and match[n] is match.get(n.args[0])]


def folds_of(original: FoldGraph, target: FoldGraph, match: dict[fx.Node, fx.Node], plan: Plan | None,
             differences: list[str]) -> Iterator[Fold]:
    """The folded layers, each with its BatchNorms: the plan's, or those read off the artefact (module docstring)."""
    if plan is not None:
        groups: dict[fx.Node, list[fx.Node]] = {}
        for step in plan.steps:
            groups.setdefault(step.layer, []).append(step.bn)
        for step in plan.steps:
            if step.layer in groups:
                bns = tuple(sorted(groups.pop(step.layer), key=original.position.__getitem__))
                flatten = step.direction == BEFORE and step.layer not in bns[-1].users
                yield Fold(step.layer, bns, step.direction, flatten)
        return
    removed = removed_bns(original, match)
    seen: set[fx.Node] = set()
    for bn in removed:
        if bn in seen:
            continue
        run = [bn]
        while len(run[-1].users) == 1 and next(iter(run[-1].users)) in removed:
            run.append(next(iter(run[-1].users)))
        seen.update(run)
        producer = run[0].args[0]
        assert isinstance(producer, fx.Node)
        if changed_layer(producer, original, target, match):
            yield Fold(producer, tuple(run), AFTER, False)
            continue
        users = list(run[-1].users)
        consumer, flatten = (users[0] if len(users) == 1 else None), False
        if consumer is not None and flattens_from_1(consumer, original.modules.get(str(consumer.target))) \
                and len(consumer.users) == 1:
            consumer, flatten = next(iter(consumer.users)), True
        if consumer is not None and changed_layer(consumer, original, target, match):
            yield Fold(consumer, tuple(run), BEFORE, flatten)
            continue
        differences.append(f"{original.name(bn.target)} is missing from the folded model, and no layer beside it "
                           f"changed to hold it")


def changed_layer(node: fx.Node, original: FoldGraph, target: FoldGraph, match: dict[fx.Node, fx.Node]) -> bool:
    """node calls an affine layer whose counterpart in the artefact holds other tensors."""
    if node.op != "call_module" or node not in match:
        return False
    layer = original.modules[str(node.target)]
    return isinstance(layer, affine_types()) and not same_state(layer, target.modules[str(match[node].target)])


def steps_of(folds: list[Fold], original: FoldGraph) -> list[Step]:
    """The plan's steps for folds read off an artefact: a run after its layer first to last, before it last to first;
    through a Flatten, each BatchNorm channel spreads over fan-in / width of the layer's inputs."""
    steps = []
    for fold in folds:
        if fold.direction == AFTER:
            steps += [Step(fold.layer, bn, AFTER) for bn in fold.bns]
            continue
        width = norm_width(original.modules[str(fold.bns[-1].target)])
        spread = fan_in(original.modules[str(fold.layer.target)]) // width if fold.flatten else 1
        steps += [Step(fold.layer, bn, BEFORE, spread) for bn in reversed(fold.bns)]
    return steps


def submodel(fold: Fold, original: FoldGraph) -> nn.Sequential:
    """The fold's layer and BatchNorms, in their order, as a Sequential of the original's own modules."""
    layer = original.modules[str(fold.layer.target)]
    bns = [original.modules[str(bn.target)] for bn in fold.bns]
    if fold.direction == AFTER:
        return nn.Sequential(layer, *bns)
    return nn.Sequential(*bns, *([nn.Flatten()] if fold.flatten else []), layer)


def check_fold(fold: Fold, original: FoldGraph, target: FoldGraph, match: dict[fx.Node, fx.Node],
               env: dict[fx.Node, Any]) -> PairCheck:
    """The fold checked on the input the original feeds it: the original's layer and BatchNorms against the
    artefact's layer, within the bound of this fold alone."""
    first = fold.layer if fold.direction == AFTER else fold.bns[0]
    source = first.args[0]
    assert isinstance(source, fx.Node), f"{original.name(first.target)} reads its input as its first argument"
    x: torch.Tensor = env[source]
    pair = submodel(fold, original)
    folded_layer = target.modules[str(match[fold.layer].target)]
    expected = pair(x)
    got = folded_layer(x.flatten(1) if fold.flatten else x)
    return PairCheck(str(fold.layer.target), tuple(str(bn.target) for bn in fold.bns), fold.direction,
                     *measure([expected], [got], [error_bound(pair, x)]))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """a and b hold the same tensors under the same names (torch.equal, same dtype)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def hooks(module: nn.Module) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(getattr(module, name, {}).values()) for name in HOOK_ATTRIBUTES)


def compare_untouched(original: FoldGraph, target: FoldGraph, match: dict[fx.Node, fx.Node],
                      replaced: set[fx.Node]) -> list[str]:
    """What differs in a module or attribute of the artefact that no fold replaced."""
    differences = []
    for node, other in match.items():
        if node in replaced or node.op not in ("call_module", "get_attr"):
            continue
        if node.op == "get_attr":
            a, b = attribute(original.root, str(node.target)), attribute(target.root, str(other.target))
            equal = torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b
            if not equal:
                differences.append(f"the tensor '{node.target}' differs from the original's")
            continue
        a, b = original.modules[str(node.target)], target.modules[str(other.target)]
        if not (same_state(a, b) and a.extra_repr() == b.extra_repr() and a.training == b.training
                and hooks(a) == hooks(b)):
            differences.append(f"{original.name(node.target)} differs from the original's, though no fold replaced it")
    return differences


def whole_model(model: nn.Module, folded: nn.Module, X: Any,
                plan: Plan) -> tuple[float, float | None, bool | None, str]:
    """(max |model(X) − folded(X)|, the largest whole-model bound, whether the difference is within it everywhere,
    and why there is no bound: a layer downstream of a fold without an error model leaves the whole model unbounded,
    while each fold is still checked where it stands)."""
    inputs = X if isinstance(X, tuple) else (X,)
    differences = [(a.double() - b.double()).abs().cpu() for a, b in zip(leaves(model(*inputs)),
                                                                         leaves(folded(*inputs)))]
    observed = max((d.max().item() for d in differences if d.numel()), default=0.0)
    try:
        bound = leaves(error_bound(model, X, plan))
    except BoundError as e:
        return observed, None, None, str(e)
    largest = max((B.max().item() for B in bound if B.numel()), default=0.0)
    return observed, largest, all(bool((d <= B).all()) for d, B in zip(differences, bound)), ""


def leaves(value: Any) -> list[torch.Tensor]:
    """The tensors of an output (a tensor, or a tuple, list or dict of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in leaves(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in leaves(v)]
    return []


def accuracy_ratio(model: nn.Module, folded: nn.Module, X: Any) -> float | None:
    """max |folded₃₂(X) − model₆₄(X)| / max |model₃₂(X) − model₆₄(X)|, or None when the model is not float32 or the
    denominator is 0."""
    tensors = [*model.parameters(), *model.buffers()]
    if not tensors or any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        return None
    inputs = X if isinstance(X, tuple) else (X,)
    reference = copy.deepcopy(model).double()
    exact = leaves(reference(*(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                               for x in inputs)))
    ours, theirs = leaves(model(*inputs)), leaves(folded(*inputs))
    folding = max(((f.double() - e).abs().max().item() for f, e in zip(theirs, exact) if e.numel()), default=0.0)
    rounding = max(((m.double() - e).abs().max().item() for m, e in zip(ours, exact) if e.numel()), default=0.0)
    return folding / rounding if rounding > 0 else None
