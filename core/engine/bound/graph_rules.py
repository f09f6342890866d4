"""Graph rules: the bound carried through one node of a traced graph. A module call goes through its kind's rule; a
function or method is read as the layer it computes (the `functions` and `methods` of the kind entries) or has a
rule of its own (add, mul, mean, moves, joins); docs/design-conv.md §6 derives them.
"""

import math
import operator
import sys
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import fx, nn

from core.engine.algebra import f64
from core.engine.bound.rounding import ETA64, U64, rounding_bound, underflow, unit_roundoff
from core.engine.bound.rules import propagate
from core.engine.graph import FoldGraph
from core.engine.kinds import FUNCTIONS, METHODS, Bound, hooked
from core.errors import BoundError

# Graph rules: ops with several inputs, or that move values around. Each takes what it reads of (args, kwargs, Ds,
# u, η), where args are the call's values (x̂ side) and Ds the same structure with a bound (float64) or None (no
# difference).

def _add_rule(args: tuple[Any, ...], kwargs: dict[str, Any], Ds: tuple[Bound | None, ...], u: float) -> Bound:
    """a + b (or a − b): (1 + u)(D_a + D_b) + 2u(|â| + |b̂|): one rounding of |a ± b| ≤ |a| + |b| per side."""
    if kwargs.get("alpha", 1) != 1:
        raise BoundError("error_bound models add/sub without alpha")
    a, b, Da, Db = _magnitude(args[0]), _magnitude(args[1]), _or_zero(Ds[0]), _or_zero(Ds[1])
    return (1 + u) * (Da + Db) + 2 * u * (a + b)


def _mul_rule(args: tuple[Any, ...], Ds: tuple[Bound | None, ...], u: float, eta: float) -> Bound:
    """a·b: |â|D_b + |b̂|D_a + D_aD_b, plus one rounding of |ab| per side, the other's ≤ (|â| + D_a)(|b̂| + D_b)."""
    a, b, Da, Db = _magnitude(args[0]), _magnitude(args[1]), _or_zero(Ds[0]), _or_zero(Ds[1])
    return a * Db + b * Da + Da * Db + u * (a * b + (a + Da) * (b + Db)) + 2 * eta


def _mean_rule(args: tuple[Any, ...], kwargs: dict[str, Any], Ds: tuple[Bound, ...], u: float, eta: float) -> Bound:
    """mean over N elements is a sum and a division: (1 + g)·mean(D) + 2g·mean(|x̂|), g = γ(N + 1)."""
    x, rest = args[0], args[1:]
    out = x.mean(*rest, **kwargs)
    N = x.numel() // max(out.numel(), 1)
    g = rounding_bound(N + 1, u)
    return ((1 + g) * Ds[0] + 2 * g * f64(x).abs()).mean(*rest, **kwargs) + 4 * eta


def _stochastic_depth_arguments(input: torch.Tensor, p: float, mode: str, training: bool = True) -> tuple[float, bool]:
    """p and training of a call to torchvision's stochastic_depth(input, p, mode, training=True), however passed."""
    return p, training


def _stochastic_depth_rule(args: tuple[Any, ...], kwargs: dict[str, Any], Ds: tuple[Bound | None, ...]) -> Bound:
    """torchvision's stochastic_depth(x, p, mode, training) is x itself when not training or p = 0."""
    p, training = _stochastic_depth_arguments(*args, **kwargs)
    if training and p > 0:
        raise BoundError("error_bound needs stochastic_depth in eval mode (in training it is random): "
                         "call model.eval()")
    return Ds[0]


def _magnitude(v: torch.Tensor | float) -> torch.Tensor:
    return f64(v).abs() if isinstance(v, torch.Tensor) else torch.tensor(abs(float(v)), dtype=torch.float64)


def _or_zero(d: Bound | None) -> Bound:
    return 0.0 if d is None else d


ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, "add", "add_", "sub", "sub_"}
MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
MEAN = {torch.mean, "mean"}
# Moves copy values to new places (views, reshapes, transposes, splits, selections): f(D) bounds f(x̂) − f(x̂').
MOVES = {torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split,
         torch.narrow, torch.t, operator.getitem, "view", "reshape", "transpose", "permute", "contiguous", "chunk",
         "split", "squeeze", "unsqueeze", "expand", "narrow", "t", "unflatten", "clone"}
JOINS = {torch.cat, torch.concat, torch.stack}  # moves of several inputs: a missing bound is 0
# Random draws (traced through, e.g. a stochastic depth in training): each model draws its own, so no bound holds.
RANDOM = {torch.bernoulli, torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint,
          torch.randint_like, torch.randperm, torch.multinomial, torch.normal, torch.poisson, "bernoulli", "bernoulli_",
          "uniform_", "normal_", "exponential_", "geometric_", "log_normal_", "cauchy_", "random_"}
META_METHODS = {"size", "dim", "numel", "nelement", "ndimension"}
META_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
SHAPE_ONLY = {torch.ones_like, torch.zeros_like, torch.empty_like, torch.full_like}


def _is_stochastic_depth(target: fx.node.Target) -> bool:
    """target is torchvision's stochastic_depth (a model that calls it has imported torchvision)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    return module is not None and target is module.stochastic_depth


def zeros_like_bound(value: Any) -> Bound:
    """A zero bound shaped like a value: a tensor, a tuple or list of values, or 0 for any other value."""
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=torch.float64)
    if isinstance(value, tuple | list):
        return type(value)(zeros_like_bound(v) for v in value)
    return 0  # a value that is no tensor (a size, a flag) is the same in both models


def propagate_node(graph: FoldGraph, node: fx.Node, modules: dict[str, nn.Module], env: dict[fx.Node, Any],
                   Ds: dict[fx.Node, Bound]) -> Bound | None:
    """Bound on the difference at node given the bounds Ds at its inputs (None: no difference), or None.

    A bound that overflows float64 is +inf, still a bound; a rule meeting one may compute ∞·0 = nan, which
    becomes +inf too, so a bound is never nan.
    """
    return _no_nan(_propagate_node(graph, node, modules, env, Ds))


def _no_nan(D: Bound | None) -> Bound | None:
    """D with nan made +inf (a tuple of bounds comes from a move of D, which makes no nan of its own)."""
    return torch.where(D.isnan(), math.inf, D) if isinstance(D, torch.Tensor) else D


def _propagate_node(graph: FoldGraph, node: fx.Node, modules: dict[str, nn.Module], env: dict[fx.Node, Any],
                    Ds: dict[fx.Node, Bound]) -> Bound | None:
    if node.target in RANDOM:
        raise BoundError(f"error_bound needs a model without random ops, but {graph.describe(node)} (node "
                        f"'{node.name}') draws random numbers, which differ between the two models: call "
                        f"model.eval() (random layers such as Dropout and stochastic depth are the identity in eval)")
    inputs = node.all_input_nodes
    if not any(Ds.get(a) is not None for a in inputs):
        return None
    target: Any  # a function for call_function, a name for call_method and call_module: each branch reads it so
    op, target = node.op, node.target
    if op == "call_method" and target in META_METHODS or op == "call_function" and target in SHAPE_ONLY or \
            op == "call_function" and target is getattr and node.args[1] in META_ATTRIBUTES:
        return None  # shapes and types, and tensors made from them alone: the same in both models
    if op == "output":
        return fx.node.map_aggregate(node.args[0], lambda a: _bound_or_zero(a, env, Ds))
    name = graph.name(target) if op == "call_module" else f"{graph.describe(node)} (node '{node.name}')"
    args: tuple[Any, ...] = fx.node.map_arg(node.args, env.__getitem__)
    kwargs: dict[str, Any] = fx.node.map_arg(node.kwargs, env.__getitem__)
    arg_D = tuple(Ds.get(a) if isinstance(a, fx.Node) else None for a in node.args)
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    u = unit_roundoff(first.dtype, first.device) if first is not None else U64
    eta = underflow(first.dtype) if first is not None else ETA64
    if op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            raise BoundError(f"error_bound has no error model for {name} called with more than one input")
        if hooked(modules[str(target)]):
            raise BoundError(f"error_bound has no error model for {name}: it has a hook registered, which may change "
                            f"its output; remove the hook to bound the model")
        return propagate(modules[str(target)], *one_tensor(args, arg_D, name), name)
    key = target
    layers = FUNCTIONS if op == "call_function" else METHODS  # placeholders and get_attrs have no bound
    if key in layers:
        return propagate(layers[key](*args[1:], **kwargs), *one_tensor(args, arg_D, name), name)
    if key in ADD:
        return _add_rule(args, kwargs, arg_D, u)
    if key in MUL:
        return _mul_rule(args, arg_D, u, eta)
    if key in MEAN:
        return _mean_rule(args, kwargs, arg_D, u, eta)
    if op == "call_function" and _is_stochastic_depth(target):
        return _stochastic_depth_rule(args, kwargs, arg_D)
    if key in MOVES and arg_D[0] is not None and all(d is None for d in arg_D[1:]):
        D = arg_D[0]
        return getattr(D, target)(*args[1:], **kwargs) if op == "call_method" else target(D, *args[1:], **kwargs)
    if key in JOINS:
        return target(joined_bounds(node.args[0], env, Ds), *args[1:], **kwargs)
    raise BoundError(f"error_bound has no error model for {name}: give it a rule in core.engine.bound.graph_rules, "
                     f"or the function to the kind whose layer computes it (docs/design-conv.md says how)")


def _bound_or_zero(a: fx.node.Argument, env: dict[fx.Node, Any], Ds: dict[fx.Node, Bound]) -> Bound:
    if not isinstance(a, fx.Node):
        return 0  # a constant the output holds
    D = Ds.get(a)
    return zeros_like_bound(env[a]) if D is None else D


def one_tensor(args: tuple[Any, ...], arg_D: tuple[Bound, ...], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, D) of a layer's one input; BoundError when the input is no tensor (a tuple or list of them)."""
    x, D = args[0], arg_D[0]
    if not isinstance(x, torch.Tensor) or not isinstance(D, torch.Tensor):
        raise BoundError(f"error_bound has no error model for {name} called on a {type(x).__name__}: the rules bound "
                         f"layers of one tensor input")
    return x, D


def joined_bounds(joined: fx.node.Argument, env: dict[fx.Node, Any], Ds: dict[fx.Node, Bound]) -> list[Bound]:
    """The bounds of the inputs of a join (cat, stack): one per input, 0 where an input does not differ. The inputs
    are a list of nodes, or one node whose value is a tuple or list (torch.cat(x.chunk(2))), which then carries the
    bound (a join is bounded only when one of its inputs is)."""
    if isinstance(joined, fx.Node):
        return list(Ds[joined])
    nodes = cast(Sequence[fx.Node], joined)
    return [zeros_like_bound(env[a]) if Ds.get(a) is None else Ds[a] for a in nodes]
