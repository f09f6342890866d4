"""Laws of the error models of core.engine.bound: each rule bounds how far its layer's (or function's) output can move
when its input moves by at most the bound it is given, in float32 and float64. docs/design-conv.md derives each rule.

The law is checked the way error_bound uses it: x̂ is one model's input to a layer both models share, x̂' the
other's, with |x̂' − x̂| ≤ D elementwise; the rule's value at (x̂, D) must cover |L(x̂') − L(x̂)| as the kernels
compute them. Inputs, perturbations and slack are drawn by hypothesis.
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, note
from hypothesis import strategies as st
from torch import fx, nn

from core.engine.bound.propagation import propagate_graph
from core.engine.bound.rounding import SAFETY, TINY64
from core.engine.bound.rules import GELU_SLOPE, SILU_SLOPE, propagate
from core.engine.graph import FoldGraph
from core.engine.kinds import KINDS
from properties.strategies.floats import tensors
from properties.strategies.kinds import KIND_STRATEGIES, inputs_for

F32, F64 = torch.float32, torch.float64


def rule_name(kind) -> str:
    """A kind's rule by name: "affine" for core.engine.bound.rules.affine_rule."""
    return kind.rule.__name__.removesuffix("_rule")


RULE_TYPES: dict[str, list[type]] = {}
for _type, _kind in sorted(KINDS.items(), key=lambda item: str(item[0])):
    RULE_TYPES.setdefault(rule_name(_kind), []).append(_type)
SCALES = (0.0, 1e-7, 1e-3, 1.0, 1e2)  # sizes of the perturbation, absolute


def moved(x: torch.Tensor, r: torch.Tensor, scale: float, slack: float, dtype: torch.dtype):
    """(x̂, x̂', D): x̂ = x in dtype, x̂' = fl(x + scale·r) with |r| ≤ 1, D ≥ |x̂' − x̂| (times 1 + slack).

    The float64 difference of two values is off by at most one rounding, 2⁻⁵³ relative: D carries a factor
    1 + 2⁻⁵⁰ so it is at least the exact difference.
    """
    xh = x.to(dtype)
    xh2 = (xh.double() + scale * r).to(dtype)
    D = (xh2.double() - xh.double()).abs() * (1 + 2.0**-50) * (1 + slack)
    return xh, xh2, D


def difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| in float64, 0 where they are equal (a pooling window of padding alone gives −inf on both sides)."""
    a, b = a.double(), b.double()
    return torch.where(a == b, 0.0, (a - b).abs())


def covered(change: torch.Tensor, bound: torch.Tensor) -> bool:
    """change ≤ bound·SAFETY + TINY64, as error_bound uses a bound it evaluated in float64; the change (a float64
    difference, one rounding) is widened by 2⁻⁵² so the check is never lenient."""
    return bool((change * (1 + 2.0**-52) <= bound * SAFETY + TINY64).all())


@st.composite
def layer_cases(draw, rule):
    """(layer, x, r, scale, slack, dtype) for a layer of a kind whose rule is `rule`."""
    layer = draw(st.sampled_from(RULE_TYPES[rule]).flatmap(lambda t: KIND_STRATEGIES[t]))
    x = draw(inputs_for(layer))
    r = draw(tensors(tuple(x.shape), st.floats(-1, 1)))
    scale, slack = draw(st.sampled_from(SCALES)), draw(st.sampled_from((0.0, 0.5)))
    dtype = draw(st.sampled_from((F32, F64)))
    return layer, x, r, scale, slack, dtype


def check_layer(case):
    layer, x, r, scale, slack, dtype = case
    layer = copy.deepcopy(layer).to(dtype)
    xh, xh2, D = moved(x, r, scale, slack, dtype)
    with torch.no_grad():
        change = difference(layer(xh2), layer(xh))
        bound = propagate(layer, xh, D, type(layer).__name__)
    worst = (change / bound.clamp_min(torch.finfo(F64).tiny)).max().item() if change.numel() else 0.0
    largest = change.max().item() if change.numel() else 0.0
    note(f"{layer}, {dtype}: max change {largest:.3e}, worst change/bound {worst:.3e}")
    assert covered(change, bound)


@pytest.mark.parametrize("rule", sorted(RULE_TYPES))
@given(data=st.data())
def test_rule_covers_every_change_within_D(rule, data):
    """|L(x̂') − L(x̂)| ≤ R(L, x̂, D) whenever |x̂' − x̂| ≤ D, for each layer kind L of rule R, float32 and float64.

    Each rule is the exact map's slope over [x̂ − D, x̂ + D] times D (pooling and moves: the map of D itself, as
    they only select, average or copy), plus the rounding of each of the two evaluations, the second one's
    magnitude bounded through |x̂'| ≤ |x̂| + D (docs/design-conv.md, one section per rule).
    """
    check_layer(data.draw(layer_cases(rule)))


def scalar_layer(layer_type, *args):
    return layer_type(*args).eval()


@pytest.mark.parametrize("layer, x", [
    (scalar_layer(nn.Hardswish), torch.tensor([[-3.0, 3.0, -2.9999, 0.0, -1.5]])),
    (scalar_layer(nn.Hardsigmoid), torch.tensor([[-3.0, 3.0, 2.9999, -3.0001]])),
    (scalar_layer(nn.Hardtanh, -0.3, 0.7), torch.tensor([[-0.3, 0.7, -0.30000001, 0.69999999]])),
    (scalar_layer(nn.ReLU6), torch.tensor([[0.0, 6.0, -1e-30, 6.0000005]])),
    (scalar_layer(nn.ReLU), torch.tensor([[0.0, -1e-30, 1e-30]])),
])
@given(r=st.lists(st.floats(-1, 1), min_size=5, max_size=5), scale=st.sampled_from((1e-9, 1e-7, 1e-3)),
       dtype=st.sampled_from((F32, F64)))
def test_rules_at_the_kinks(layer, x, r, scale, dtype):
    """|L(x̂') − L(x̂)| ≤ R(L, x̂, D) at the kinks of the piecewise maps, where the flat-region tests decide.

    A flat region is claimed only where x̂ ± D lies beyond the threshold as every float dtype rounds it.
    """
    r = torch.tensor(r[: x.shape[1]], dtype=F64)[None]
    check_layer((layer, x.double(), r, scale, 0.0, dtype))


def test_the_affine_rule_carries_the_rounding_of_the_bias():
    """|L(x̂') − L(x̂)| ≤ R(L, x̂, D) for L(x) = x + 2 in float32 with x̂ = 2⁻²³, half an ulp of 2, and x̂' just above it.

    2 + x̂ is a tie and rounds (to even) to 2, 2 + x̂' rounds up to 2 + 2⁻²²: one ulp of the bias apart, however
    small D = |x̂' − x̂|. Only the rule's 2γ(n + 1)·|b| term covers it.
    """
    layer = nn.Linear(1, 1, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(2.0)
    x, x2 = torch.tensor([[2.0**-23]]), torch.tensor([[2.0**-23 * (1 + 2.0**-20)]])
    with torch.no_grad():
        change = difference(layer(x2), layer(x))
    bound = propagate(layer, x, difference(x2, x), "Linear")
    assert change.item() == 2.0**-22 and covered(change, bound), (change.item(), bound.item())


class Graph(nn.Module):
    """A function of tensors as a module torch.fx traces."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, a, b):
        return self.fn(a, b)


@functools.cache
def traced(fn) -> FoldGraph:
    """The graph of Graph(fn), traced once per function: the laws evaluate it on every example."""
    return FoldGraph(fx.symbolic_trace(Graph(fn)).graph, Graph(fn))


GRAPH_OPS = {  # name: f(a, b) on a, b of shape (N, 4, 3, 2) (b broadcast as (N, 4, 1, 1) where noted)
    "add": lambda a, b: a + b,
    "sub": lambda a, b: torch.sub(a, b),
    "add_scalar": lambda a, b: 2.5 + a,
    "add_inplace": lambda a, b: a.clone().add_(b),
    "mul": lambda a, b: a * b,
    "mul_broadcast": lambda a, b: a * b[:, :, :1, :1],
    "mul_scalar": lambda a, b: torch.mul(a, -3.0),
    "mean": lambda a, b: a.mean((2, 3)),
    "mean_keepdim": lambda a, b: torch.mean(a, dim=-1, keepdim=True),
    "view": lambda a, b: a.view(a.size(0), -1),
    "reshape_transpose": lambda a, b: torch.transpose(a.reshape(a.shape[0], 2, 2, 3, 2), 1, 2).contiguous(),
    "chunk": lambda a, b: a.chunk(2, dim=1)[1],
    "cat": lambda a, b: torch.cat([a, b], 1),
    "cat_keyword": lambda a, b: torch.cat([a, b], dim=3),
    "transpose_keyword": lambda a, b: torch.transpose(a, dim0=1, dim1=3),
    "cat_half": lambda a, b: torch.cat([a, torch.ones_like(b)], 1),
    "permute_flatten": lambda a, b: torch.flatten(a.permute(0, 2, 3, 1), 1),
    "getitem": lambda a, b: a[:, 1:3, ::2],
    "relu_fn": lambda a, b: F.relu(a, inplace=False),
    "relu6_fn": lambda a, b: F.relu6(a),
    "hardswish_fn": lambda a, b: F.hardswish(a),
    "sigmoid_fn": lambda a, b: torch.sigmoid(a),
    "silu_fn": lambda a, b: F.silu(a),
    "gelu_fn": lambda a, b: F.gelu(a, approximate="tanh"),
    "adaptive_avg_pool_fn": lambda a, b: F.adaptive_avg_pool2d(a, 1),
    "max_pool_fn": lambda a, b: F.max_pool2d(a, 2, 1, 1),
    "dropout_eval": lambda a, b: F.dropout(a, 0.5, False),
    "se_block": lambda a, b: a * torch.sigmoid(F.adaptive_avg_pool2d(b, 1)),
}


@pytest.mark.parametrize("name", sorted(GRAPH_OPS))
@given(a=tensors((2, 4, 3, 2)), b=tensors((2, 4, 3, 2)), ra=tensors((2, 4, 3, 2), st.floats(-1, 1)),
       rb=tensors((2, 4, 3, 2), st.floats(-1, 1)), scale=st.sampled_from(SCALES), slack=st.sampled_from((0.0, 0.5)),
       dtype=st.sampled_from((F32, F64)), moves=st.sampled_from(("a", "b", "ab")))
@example(a=torch.zeros(2, 4, 3, 2, dtype=F64), b=torch.zeros(2, 4, 3, 2, dtype=F64),
         ra=torch.ones(2, 4, 3, 2, dtype=F64), rb=-torch.ones(2, 4, 3, 2, dtype=F64), scale=1e-3, slack=0.0,
         dtype=F32, moves="ab")
def test_graph_rules_cover_every_change_within_D(name, a, b, ra, rb, scale, slack, dtype, moves):
    """|f(â', b̂') − f(â, b̂)| ≤ B_f(â, b̂, D_a, D_b) whenever |â' − â| ≤ D_a and |b̂' − b̂| ≤ D_b, for the function and
    method nodes of traced graphs (add, mul, mean, moves, joins, functional layers), float32 and float64.

    add: exact change ≤ D_a + D_b, one rounding per side of |a ± b| ≤ |a| + |b|; mul: |â|D_b + |b̂|D_a + D_aD_b
    plus one rounding per side; mean: a sum and a division, γ(N + 1); moves and joins copy values, so the same
    move of D bounds the change; a functional layer is its layer's rule (docs/design-conv.md).
    """
    graph = traced(GRAPH_OPS[name])
    ah, ah2, Da = moved(a, ra if "a" in moves else 0 * ra, scale, slack, dtype)
    bh, bh2, Db = moved(b, rb if "b" in moves else 0 * rb, scale, slack, dtype)
    env = graph.values(graph.modules, set(), (ah, bh))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    bound = propagate_graph(graph, graph.modules, env, dict(zip(placeholders, (Da, Db))))
    fn = GRAPH_OPS[name]
    change = difference(fn(ah2, bh2), fn(ah, bh))
    note(f"{name} {dtype}: max change {change.max().item():.3e}, max bound {bound.max().item():.3e}")
    assert covered(change, bound)


@pytest.mark.parametrize("name, fn, slope", [
    ("silu", F.silu, SILU_SLOPE),
    ("gelu", F.gelu, GELU_SLOPE),
    ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh"), GELU_SLOPE),
])
def test_gate_slopes_bound_the_derivatives(name, fn, slope):
    """sup_x |f'(x)| ≤ slope for SiLU (1.0998…) and GELU (1.1289…, tanh form 1.1290…) of the gate rule.

    On [−12, 12] the largest |f'| on a grid of step h is within h·max|f''| (≤ h for these f) of the supremum there;
    beyond, f' is within 10⁻⁴ of 0 or 1 (the gates are x·F(x) with F a CDF whose tail is below 10⁻²⁰ there).
    """
    x = torch.linspace(-12, 12, 240_001, dtype=F64, requires_grad=True)
    (d1,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    h = 24 / 240_000
    assert d2.abs().max().item() <= 1
    assert d1.abs().max().item() + h <= slope
