"""Each rule of core.engine.bound is the formula docs/design-conv.md states for it (§4 to §6), term for term.

The soundness laws (test_bound_rules.py, test_fold_pair.py) see a rule that is too small, not one that is larger
than its derivation: a kernel allowance of 9u for 8u, a range clamp at 3 for 2, a flat region not claimed, a
window counted too wide. Torch's kernels are more accurate than the allowances, so no observation of them pins
those terms. These laws pin them to the derivation instead: each documented formula is evaluated here on its own,
element by element in Python floats and from the layer's own parameters, with the unit roundoff u and the underflow
η drawn far from any dtype's, so that every term of the formula shows in the result; the rule must give the same
value up to the rounding of the two evaluations (`agree`).
"""

import copy
import functools
import math

import pytest
import torch
from hypothesis import example, given, note
from hypothesis import strategies as st
from torch import nn

from core.engine.bound.loss import loss_bound
from core.engine.bound.magnitudes import absolute, magnitudes_kept
from core.engine.bound.pair import pair_bound, pair_factor, pair_magnitude, pair_underflow
from core.engine.bound.propagation import error_bound, propagate_graph
from core.engine.bound.rounding import rounding_bound
from core.engine.bound.rules import adaptive_window
from core.engine.kinds import KINDS, ConvKind
from properties.engine.test_bound_rules import GRAPH_OPS, RULE_TYPES, rule_name, traced
from properties.strategies.floats import tensors
from properties.strategies.kinds import KIND_STRATEGIES, inputs_for
from properties.strategies.pairs import conv_pair_cases, pair_cases

F32, F64 = torch.float32, torch.float64
U64 = 2.0**-53
# Both sides evaluate the same formula from non-negative terms: at most 256 float64 operations along any path (an
# affine map sums n ≤ 54 products here; cosh, exp and sqrt count as 4 each, as kernels within 4 ulp), so each is
# within γ₆₄(256) of the exact value, and the two within twice that: 2⁻⁴⁴ relative.
SPEC_ROUNDINGS = 256
UNITS = (0.0, 2.0**-24, 2.0**-10)  # u: none, float32's, and one where every allowance term is 2¹⁴ times larger
ETAS = (0.0, 2.0**-149, 2.0**-12)  # η likewise


def gamma(k: float, u: float) -> float:
    """γ(k) = ku / (1 − ku) (Higham, Lemma 3.1)."""
    return k * u / (1 - k * u)


REL = 2 * gamma(SPEC_ROUNDINGS, U64)
# Where a float64 product or quotient underflows it loses up to 2⁻¹⁰⁷⁴ absolute: 2⁻¹⁰²² covers 2⁵² of them (§5).
ABS = 2.0**-1022


def assert_agree(rule: torch.Tensor, spec: torch.Tensor) -> None:
    """|rule − spec| ≤ REL·max(rule, spec) + ABS elementwise, of the same shape: two evaluations of one formula."""
    assert rule.shape == spec.shape, (rule.shape, spec.shape)
    apart = (rule - spec).abs() > REL * torch.maximum(rule, spec) + ABS
    assert not apart.any(), f"rule {rule[apart][:4].tolist()} where the spec is {spec[apart][:4].tolist()}"


def elementwise(fn, x: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """fn(x_i, D_i) for every element, in Python floats."""
    return torch.tensor([fn(a, d) for a, d in zip(x.flatten().tolist(), D.flatten().tolist())],
                        dtype=F64).reshape(x.shape)


def cosh_squared(m: float) -> float:
    """cosh(m)² as IEEE float64 evaluates it: +∞ beyond the largest float."""
    c = math.inf if m > 710 else math.cosh(m)
    return c * c


def rounded(value: float, dtype: torch.dtype) -> float:
    return torch.tensor(value, dtype=dtype).item()


def threshold(value: float, pick) -> float:
    """A threshold as a kernel may compare with it (§6, ReLU6 and Hardtanh): `pick` of its roundings to each float
    dtype of torch."""
    return pick(rounded(value, t) for t in (F64, F32, torch.float16, torch.bfloat16))


def tanh_spec(layer, u, eta):
    """D·max tanh' over [x̂ − D, x̂ + D], at most 2, plus 4 ulp (8u) of each side's |tanh| ≤ min(1, |x|), plus 8η each."""
    def at(x, d):
        return min(2.0, d / cosh_squared(max(abs(x) - d, 0.0))) + 8 * u * (min(1.0, abs(x)) + min(1.0, abs(x) + d)) \
            + 16 * eta
    return at


def sigmoid_spec(layer, u, eta):
    """D·max σ' over [x̂ − D, x̂ + D], at most 1, plus 4 ulp (8u) of each side's σ ≤ 1, plus η each."""
    def at(x, d):
        e = math.exp(-max(abs(x) - d, 0.0))
        return min(1.0, d * e / (1 + e) ** 2) + 16 * u + 2 * eta
    return at


def relu_spec(layer, u, eta):
    """D, exact; 0 where both inputs are ≤ 0."""
    return lambda x, d: 0.0 if x + d <= 0 else d


def hardtanh_spec(layer, u, eta):
    """min(D, hi − lo), exact; 0 where both inputs are ≤ lo or both ≥ hi, with lo and hi as any dtype rounds them."""
    lo, hi = threshold(layer.min_val, min), threshold(layer.max_val, max)
    return lambda x, d: 0.0 if x + d <= lo or x - d >= hi else min(d, hi - lo)


def leaky_relu_spec(layer, u, eta):
    """max(1, |a|)·D, plus one rounding of |a||x| per side (|x̂'| ≤ |x̂| + D) and η each; |a| as large as any dtype
    rounds it."""
    a = threshold(abs(layer.negative_slope), max)
    return lambda x, d: max(1.0, a) * d + u * a * (abs(x) + abs(x) + d) + 2 * eta


def hardswish_spec(layer, u, eta):
    """D·max |(2t + 3)/6| over t in [x̂ − D, x̂ + D] clamped to [−3, 3], 0 where x̂ + D ≤ −3, plus γ(8) of each side's
    |f| ≤ |x| and 8η each."""
    def slope(t):
        return abs(2 * min(max(t, -3.0), 3.0) + 3) / 6

    def at(x, d):
        s = 0.0 if x + d <= -3 else max(slope(x - d), slope(x + d))
        return s * d + gamma(8, u) * (abs(x) + abs(x) + d) + 16 * eta
    return at


def hardsigmoid_spec(layer, u, eta):
    """D/6, at most 1, where [x̂ − D, x̂ + D] meets (−3, 3), else 0; plus 8u per side and η each."""
    return lambda x, d: (0.0 if x + d <= -3 or x - d >= 3 else min(d / 6, 1.0)) + 16 * u + 2 * eta


def gate_spec(slope):
    """slope·D, plus γ(16) of each side's |f| ≤ |x| and 16η each: SiLU's slope 1.1, GELU's 1.13."""
    def spec(layer, u, eta):
        return lambda x, d: slope * d + gamma(16, u) * (abs(x) + abs(x) + d) + 32 * eta
    return spec


def identity_spec(layer, u, eta):
    return lambda x, d: d


ELEMENTWISE_SPECS = {"tanh": tanh_spec, "sigmoid": sigmoid_spec, "relu": relu_spec, "hardtanh": hardtanh_spec,
                     "leaky_relu": leaky_relu_spec, "hardswish": hardswish_spec, "hardsigmoid": hardsigmoid_spec,
                     "silu": gate_spec(1.1), "gelu": gate_spec(1.13), "identity": identity_spec,
                     "dropout": identity_spec}


def terms(layer) -> int:
    """n of §4: fan-in for a Linear, C_in/g·K for a conv, C_in/g·Π ⌈k·gcd(d, s)/s⌉ for a transposed conv."""
    if not isinstance(KINDS[type(layer)], ConvKind):
        return KINDS[type(layer)].matrix(layer).shape[0]
    per_group = layer.in_channels // layer.groups
    if KINDS[type(layer)].transposed:
        return per_group * math.prod(-(-k * math.gcd(d, s) // s)
                                     for k, d, s in zip(layer.kernel_size, layer.dilation, layer.stride))
    return per_group * math.prod(layer.kernel_size)


def magnitude_map(layer):
    """v ↦ the layer's own map of v with |W| and no bias (padding and geometry included), in float64."""
    probe = copy.deepcopy(layer).double()
    with torch.no_grad():
        probe.weight.abs_()
        if probe.bias is not None:
            probe.bias.zero_()
    return lambda v: probe(v).detach()


def per_output(layer, v: torch.Tensor, ndim: int) -> torch.Tensor:
    conv = isinstance(KINDS[type(layer)], ConvKind)
    return v.reshape(-1, *([1] * (ndim - 2))) if conv and ndim > 2 else v


def affine_spec(layer, x, D, u, eta):
    """(1 + g)·|W|D + 2g·(|W||x̂| + |b|) + 4nη, g = γ(n + 1)."""
    n, bias = terms(layer), KINDS[type(layer)].bias(layer)
    g = gamma(n + 1, u)
    W = magnitude_map(layer)
    out = (1 + g) * W(D) + 2 * g * W(x.abs()) + 4 * n * eta
    return out if bias is None else out + 2 * g * per_output(layer, bias.double().abs(), out.ndim)


def batchnorm_spec(layer, x, D, u, eta):
    """(1 + g)|s|D + 2g(|s|(|x̂| + |μ|) + |β|) + 16η per channel, g = γ(8), s = γ_c / √(v_c + ε)."""
    mean, var, gm, beta, eps = KINDS[type(layer)].terms(layer)
    g = gamma(8, u)
    channels = []
    for c in range(x.shape[1]):
        s = abs(1.0 if gm is None else gm[c].item()) / math.sqrt(var[c].item() + eps)
        terms = (s, abs(mean[c].item()), 0.0 if beta is None else abs(beta[c].item()))
        channels.append(elementwise(functools.partial(batchnorm_at, *terms, g, eta), x[:, c], D[:, c]))
    return torch.stack(channels, 1)


def batchnorm_at(s, m, shift, g, eta, a, d):
    return (1 + g) * s * d + 2 * g * (s * (abs(a) + m) + shift) + 16 * eta


def observed_window(size: int, out: int) -> int:
    """The most inputs any output of torch's adaptive average pooling from `size` to `out` reads: pooling the rows
    of an identity matrix marks which inputs each output averages."""
    reads = torch.nn.functional.adaptive_avg_pool1d(torch.eye(size, dtype=F64)[:, None, :], out)
    return int((reads[:, 0, :] > 0).sum(0).max())


def pool_spec(layer, x, D, u, eta):
    """layer((1 + g)D + 2g|x̂|) + 4η, g = γ(N + 1): N the kernel's volume, or (adaptive) the largest window."""
    name = type(layer).__name__
    d = int(name[-2])
    if name.startswith("Adaptive"):
        sizes = layer.output_size if isinstance(layer.output_size, tuple | list) else (layer.output_size,) * d
        N = math.prod(observed_window(n, n if o is None else o) for n, o in zip(x.shape[-d:], sizes))
    else:
        k = layer.kernel_size
        N = math.prod(k) if isinstance(k, tuple | list) else k ** d
    g = gamma(N + 1, u)
    return layer((1 + g) * D + 2 * g * x.abs()) + 4 * eta


def max_pool_spec(layer, x, D, u, eta):
    """The same pooling of D, at least 0."""
    return layer(D).clamp(min=0)


def move_spec(layer, x, D, u, eta):
    return layer(D)


MAP_SPECS = {"affine": affine_spec, "batchnorm": batchnorm_spec, "avg_pool": pool_spec,
             "adaptive_avg_pool": pool_spec, "max_pool": max_pool_spec, "move": move_spec}


def spec_of(rule, layer, x, D, u, eta) -> torch.Tensor:
    if rule in MAP_SPECS:
        return MAP_SPECS[rule](layer, x, D, u, eta)
    return elementwise(ELEMENTWISE_SPECS[rule](layer, u, eta), x, D)


bounds = st.floats(0, 1e3) | st.sampled_from((0.0, 1e-300, 3.0))


@pytest.mark.parametrize("rule, layer_type", [(rule, t) for rule in sorted(RULE_TYPES) for t in RULE_TYPES[rule]],
                         ids=lambda v: v if isinstance(v, str) else v.__module__.split(".")[0] + v.__name__)
@given(data=st.data(), u=st.sampled_from(UNITS), eta=st.sampled_from(ETAS))
def test_each_rule_is_its_documented_formula(rule, layer_type, data, u, eta):
    """R(L, x̂, D; u, η) = spec_R(L, x̂, D; u, η) for every layer kind L of rule R, with the spec evaluated from §6.

    Every term of a documented rule is a slope, a range, a flat region, a window, or an allowance in u or η; with u
    and η drawn up to 2⁻¹⁰ every one changes the value, so a rule larger (or smaller) than its derivation fails.
    """
    layer = data.draw(KIND_STRATEGIES[layer_type])
    x = data.draw(inputs_for(layer))
    if layer_type is nn.Linear and data.draw(st.booleans()):  # torch's maps the last dim of a tensor of any rank
        x = x[:, None, :].expand(-1, data.draw(st.integers(1, 3)), -1).clone()
    D = data.draw(tensors(tuple(x.shape), bounds))
    note(f"{layer}: u = {u}, η = {eta}")
    with torch.no_grad():
        assert_agree(KINDS[layer_type].rule(layer, x, D, u, eta), spec_of(rule, layer, x, D, u, eta))


KINK_LAYERS = [nn.Hardtanh(-0.3, 0.7), nn.Hardtanh(-1.5, 1.5), nn.ReLU6(), nn.ReLU(), nn.Hardswish(),
               nn.Hardsigmoid(), nn.Tanh(), nn.LeakyReLU(-0.3)]
KINK_POINTS = (-6.0, -4.5, -3.0, -1.5, -0.3, 0.0, 0.7, 1.0, 3.0, 4.5, 6.0, 7.5)
KINK_BOUNDS = (0.0, 1e-9, 1.5, 2.5, 3.0, 6.0)


@pytest.mark.parametrize("layer", KINK_LAYERS, ids=repr)
@pytest.mark.parametrize("u", UNITS)
@pytest.mark.parametrize("eta", ETAS)
def test_each_rule_is_its_documented_formula_at_the_kinks(layer, u, eta):
    """R(L, x̂, D) = spec_R(L, x̂, D) for every x̂ of KINK_POINTS and D of KINK_BOUNDS: x̂ ± D lands on each threshold,
    kink and range end (±3, ±3/2, −0.3, 0.7, 0, 6) from either side, where the flat tests and clamps decide."""
    rule = rule_name(KINDS[type(layer)])
    xs = torch.tensor([[x for x in KINK_POINTS for _ in KINK_BOUNDS]], dtype=F64)
    Ds = torch.tensor([[d for _ in KINK_POINTS for d in KINK_BOUNDS]], dtype=F64)
    assert_agree(KINDS[type(layer)].rule(layer, xs, Ds, u, eta), spec_of(rule, layer, xs, Ds, u, eta))


@given(size=st.integers(1, 40), out=st.integers(1, 40))
@example(size=7, out=3)
@example(size=5, out=5)
def test_adaptive_window_is_the_largest_window_torch_pools(size, out):
    """adaptive_window(L, O) = max_o #{inputs output o averages} in torch's adaptive pooling from L to O; None for O
    keeps L (a window of 1)."""
    assert adaptive_window(size, out) == observed_window(size, out)
    assert adaptive_window(size, None) == 1


def add_spec(a, b, Da, Db, u, eta):
    """a ± b: (1 + u)(D_a + D_b) + 2u(|â| + |b̂|)."""
    return (1 + u) * (Da + Db) + 2 * u * (a.abs() + b.abs())


GRAPH_SPECS = {
    "add": add_spec,
    "sub": add_spec,
    "add_inplace": add_spec,
    "add_scalar": lambda a, b, Da, Db, u, eta: (1 + u) * Da + 2 * u * (a.abs() + 0.1),
    "mul": lambda a, b, Da, Db, u, eta: a.abs() * Db + b.abs() * Da + Da * Db
    + u * (a.abs() * b.abs() + (a.abs() + Da) * (b.abs() + Db)) + 2 * eta,
    "mul_scalar": lambda a, b, Da, Db, u, eta: 3 * Da + u * (3 * a.abs() + (a.abs() + Da) * 3) + 2 * eta,
    "mean": lambda a, b, Da, Db, u, eta: mean_spec(a, Da, u, eta, (2, 3), False),
    "mean_keepdim": lambda a, b, Da, Db, u, eta: mean_spec(a, Da, u, eta, (-1,), True),
    "mean_all": lambda a, b, Da, Db, u, eta: mean_spec(a, Da, u, eta, tuple(range(a.ndim)), False),
}


def mean_spec(a, Da, u, eta, dims, keepdim):
    """mean over N elements: (1 + g)·mean(D) + 2g·mean(|x̂|) + 4η, g = γ(N + 1)."""
    N = math.prod(a.shape[d] for d in dims)
    g = gamma(N + 1, u)
    return ((1 + g) * Da + 2 * g * a.abs()).mean(dims, keepdim=keepdim) + 4 * eta


SPEC_OPS = {**{name: GRAPH_OPS[name] for name in GRAPH_SPECS if name in GRAPH_OPS}, "mean_all": lambda a, b: a.mean(),
            "add_scalar": lambda a, b: 0.1 + a}  # 0.1, no float32: the scalar's magnitude is read in float64
UNIT_OF = {F32: 2.0**-24, F64: 2.0**-53}
ETA_OF = {F32: 2.0**-149, F64: 2.0**-1074}


@pytest.mark.parametrize("name", sorted(GRAPH_SPECS))
@given(a=tensors((2, 4, 3, 2)), b=tensors((2, 4, 3, 2)), Da=tensors((2, 4, 3, 2), bounds),
       Db=tensors((2, 4, 3, 2), bounds), dtype=st.sampled_from((F32, F64)))
@example(a=torch.zeros(2, 4, 3, 2, dtype=F64), b=torch.zeros(2, 4, 3, 2, dtype=F64),
         Da=torch.zeros(2, 4, 3, 2, dtype=F64), Db=torch.zeros(2, 4, 3, 2, dtype=F64), dtype=F32)
def test_each_graph_rule_is_its_documented_formula(name, a, b, Da, Db, dtype):
    """B_f(â, b̂, D_a, D_b) = spec_f for add, sub, mul and mean nodes of a traced graph, with u and η of the dtype
    (§6: one rounding of |a ± b| per side; |â|D_b + |b̂|D_a + D_aD_b plus one rounding of |ab| per side and η each;
    a mean's γ(N + 1))."""
    fn = SPEC_OPS[name]
    graph = traced(fn)
    ah, bh = a.to(dtype), b.to(dtype)
    env = graph.values(graph.modules, set(), (ah, bh))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    bound = propagate_graph(graph, graph.modules, env, dict(zip(placeholders, (Da, Db))))
    spec = GRAPH_SPECS[name](ah.double(), bh.double(), Da, Db, UNIT_OF[dtype], ETA_OF[dtype])
    assert_agree(bound, spec.expand(bound.shape) if spec.ndim == bound.ndim else spec)


def pair_factor_spec(n: int, direction: str, u: float) -> float:
    """ρ = γ(n + 9) + (1 + γ₆₄(k))(1 + γ(n + 2)) − 1, k = 6, plus n before (docs/design.md, §4)."""
    k = 6 + (n if direction == "before" else 0)
    return gamma(n + 9, u) + (1 + gamma(k, U64)) * (1 + gamma(n + 2, u)) - 1


@given(n=st.integers(1, 2**16), direction=st.sampled_from(("after", "before")), u=st.sampled_from(UNITS[1:]))
@example(n=1, direction="after", u=2.0**-24)
def test_pair_factor_is_its_documented_formula(n, direction, u):
    """pair_factor(n, direction, u) = ρ of docs/design.md with the conv's n of §4."""
    assert_agree(torch.tensor(pair_factor(n, direction, u)), torch.tensor(pair_factor_spec(n, direction, u)))


def largest_weight_sum(layer) -> float:
    """max_j Σ_i |W_ij|, i over the inputs output j reads (every kernel offset of a transposed conv's group)."""
    if not isinstance(KINDS[type(layer)], ConvKind):
        return KINDS[type(layer)].matrix(layer).double().abs().sum(0).max().item()
    weight = layer.weight.double().abs()
    if KINDS[type(layer)].transposed:  # (C_in, C_out/g, *k): sum each group's inputs and offsets per output
        per_input = weight.flatten(2).sum(2)
        return per_input.reshape(layer.groups, -1, per_input.shape[1]).sum(1).max().item()
    return weight.flatten(1).sum(1).max().item()


def pair_parts(layer, bn, direction, x):
    """(M, A, n) of §4 and §5 for a pair: M per output, from the layer's own map with |W|; A from its parameters."""
    mean, var, gm, beta, eps = (None if v is None else (v.double() if isinstance(v, torch.Tensor) else v)
                                for v in KINDS[type(bn)].terms(bn))
    s = (torch.ones_like(mean) if gm is None else gm).abs() / (var + eps).sqrt()
    beta = torch.zeros_like(mean) if beta is None else beta.abs()
    b = KINDS[type(layer)].bias(layer)
    W, ax = magnitude_map(layer), x.double().abs()
    if direction == "after":
        z = W(ax)
        M = per_output(layer, s, z.ndim) * (z + per_output(layer, mean.abs() + (0 if b is None else b.double().abs()),
                                                             z.ndim)) + per_output(layer, beta, z.ndim)
    else:
        shape = (-1, *[1] * (x.ndim - 2))
        M = W(ax * s.reshape(shape) + ((mean * s).abs() + beta).reshape(shape))
        M = M if b is None else M + per_output(layer, b.double().abs(), M.ndim)
    n = terms(layer)
    rows = largest_weight_sum(layer)
    A = 2 * n * (2 + s.max().item()) + 16 * (1 + rows) + n * ax.max().item() + 1
    return M, A, n


@given(st.one_of(pair_cases(max_fan=8, max_batch=4), conv_pair_cases(exact=False)))
def test_pair_bound_is_its_documented_formula(case):
    """pair_bound = ρ·M_j + A per output: M_j the magnitudes of output j's terms (after: |s|(|W||x| + |b| + |μ|) +
    |β|; before: |W|(|x||s| + |μs| + |β|) + |b|, through the layer's own map), A = η(2n(2 + max|s|) + 16(1 +
    max_j Σ_i |W_ij|) + n·max|x| + 1) (§4, §5)."""
    layer, bn, x = case.build()
    M, A, n = pair_parts(layer, bn, case.direction, x)
    eta = ETA_OF[x.dtype]
    with torch.no_grad():
        assert_agree(pair_magnitude(layer, bn, case.direction, x), M)
        assert_agree(torch.tensor(pair_underflow(layer, bn, x)), torch.tensor(eta * A))
        assert_agree(pair_bound(layer, bn, case.direction, x),
                     pair_factor_spec(n, case.direction, UNIT_OF[x.dtype]) * M + eta * A)



@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_pair_underflow_of_a_pair_without_outputs():
    """A of §5 for Linear(3, 0) → BatchNorm1d(0): max|s| and max_j Σ_i |W_ij| are maxima over nothing, 0, so
    A = η(2·3·2 + 16 + 3·max|x| + 1), and η(2·3·2 + 16 + 1) for a batch of no rows."""
    linear, bn = nn.Linear(3, 0).eval(), nn.BatchNorm1d(0).eval()
    x = torch.tensor([[0.5, -4.0, 2.0]])
    assert pair_underflow(linear, bn, x) == 2.0**-149 * (2 * 3 * 2 + 16 + 3 * 4.0 + 1)
    assert pair_underflow(linear, bn, x[:0]) == 2.0**-149 * (2 * 3 * 2 + 16 + 1)  # and max|x| over no rows, 0



@pytest.mark.parametrize("direction", ["after", "before"])
def test_the_pair_bound_of_a_pair_of_zeros_is_its_underflow_term(direction):
    """pair_bound = ρ·0 + η·A for a float32 Linear(2, 2) with W = b = 0, a BatchNorm with μ = β = 0, and x = 0: every
    magnitude M_j is 0, so only what underflow may add is left (§5): η = 2⁻¹⁴⁹, A = 2·2·(2 + max|s|) + 16 + 1."""
    linear, bn = nn.Linear(2, 2).eval(), nn.BatchNorm1d(2).eval()
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    x = torch.zeros(3, 2)
    M, A, _ = pair_parts(linear, bn, direction, x)
    assert torch.equal(M, torch.zeros(3, 2, dtype=F64))
    assert_agree(pair_bound(linear, bn, direction, x), torch.full((3, 2), 2.0**-149 * A, dtype=F64))


@given(st.one_of(pair_cases(max_fan=8, max_batch=4), conv_pair_cases()))
def test_the_bound_of_a_model_that_is_one_pair_is_its_pair_bound(case):
    """error_bound(pair, x) = pair_bound(x)·(1 + 2⁻³⁰) + 2⁻¹⁰²², bit for bit: one fold, nothing downstream, and the
    factor and floor that cover the bound's own float64 rounding and underflow (§5, §7)."""
    model, x = case.sequential()
    layer, bn = (model[0], model[1]) if case.direction == "after" else (model[1], model[0])
    with torch.no_grad():
        expected = pair_bound(layer, bn, case.direction, x) * (1 + 2.0**-30) + 2.0**-1022
        assert torch.equal(error_bound(model, x), expected)


@given(data=st.data(), n=st.integers(1, 6), v=st.integers(2, 27))
def test_loss_bound_is_its_documented_formula(data, n, v):
    """loss_bound(z, B, Y) = (mean_rows(max_k B_k + B_y) + 2γ₆₄(N + V + 8)·mean_rows(2·max_k(|z_k| + B_k) + log V))
    ·(1 + 2⁻³⁰) (docs/design.md: the Lipschitz part of the mean cross-entropy, and the rounding of both float64
    evaluations); B drawn 0 in places leaves the rounding part alone, so each of its constants shows."""
    z = data.draw(tensors((n, v), st.floats(-30, 30)))
    B = data.draw(tensors((n, v), st.sampled_from((0.0, 1e-3)) | st.floats(0, 1)))
    Y = torch.tensor(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    rows = [(max(B[i].tolist()) + B[i, Y[i]].item(), 2 * max((z[i].abs() + B[i]).tolist()) + math.log(v))
            for i in range(n)]
    lipschitz, size = (sum(r[k] for r in rows) / n for k in (0, 1))
    spec = (lipschitz + 2 * gamma(n + v + 8, U64) * size) * (1 + 2.0**-30)
    # Both sum n rows of a few non-negative terms, then take a handful of steps: under n + 16 roundings each, and
    # under 2γ₆₄(n + 16) apart. (Dropping B from the size term would move the result by up to 8γ₆₄(N + V + 8) of
    # the Lipschitz part, more than that.)
    assert abs(loss_bound(z, B, Y) - spec) <= 2 * gamma(n + 16, U64) * spec


def test_absolute_is_computed_once_per_tensor_while_magnitudes_are_kept():
    """absolute(t) = |t| in float64; within magnitudes_kept() (all of error_bound) a tensor's is computed once and
    the same tensor returned after, so each weight is read once however many folds lie upstream of it."""
    w = torch.tensor([[-1.5, 2.0], [0.25, -3.0]])
    assert torch.equal(absolute(w), w.double().abs()) and absolute(w) is not absolute(w)
    with magnitudes_kept():
        first = absolute(w)
        assert torch.equal(first, w.double().abs()) and absolute(w) is first


@given(k=st.integers(0, 2**30), e=st.integers(1, 60))
@example(k=2**24, e=24)  # k·u = 1 exactly: no bound
@example(k=2**24 - 1, e=24)  # just below: the largest finite γ of float32
def test_gamma_is_its_formula_and_infinite_where_k_u_reaches_one(k, e):
    """γ(k) = k·u/(1 − k·u) for k·u < 1, and ∞ for k·u ≥ 1 (k roundings of relative size u then bound nothing).

    Higham's Lemma 3.1 needs k·u < 1; at and beyond it the product of the (1 + δ) factors can be anything."""
    u = 2.0**-e
    expected = k * u / (1 - k * u) if k * u < 1 else math.inf
    assert rounding_bound(k, u) == expected
