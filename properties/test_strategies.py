"""Laws of the strategies themselves (properties/strategies/): each draws exactly the inputs its docstring claims.

A strategy that quietly drew less (no BatchNorm, one label, a fixed depth) would make every law that uses
it weaker without failing: these pin what the zero-init and layer laws rely on.
"""

import math
import re

import pytest
import torch
from hypothesis import Phase, example, find, given, settings
from hypothesis import strategies as st

from core.engine.kinds import is_batchnorm
from core.makemore.data import Vocab
from core.makemore.layers import ACTIVATIONS, BatchNorm1d, Linear
from core.makemore.model import CharMLP
from properties.strategies.floats import UNDERFLOW_FLOOR, floats_without_underflow
from properties.strategies.mlps import MLPCase, Problem, contexts, label_lists, mlp_cases, problems
from properties.strategies.models import ModelCase, model_cases
from properties.strategies.names import name_lists, names_st
from properties.strategies.nets import NetCase, net_cases
from properties.strategies.pairs import ConvPairCase, PairCase, channelwise, conv_pair_cases, pair_cases
from properties.strategies.values import CYCLE, GAMMA_MODES, VAR_MODES, NormStats, cycled

F32, F64 = torch.float32, torch.float64


@st.composite
def label_list_requests(draw):
    """(min_size, max_size, every_class, the drawn list) for any valid request."""
    every_class = draw(st.booleans())
    min_size = draw(st.integers(0 if every_class else 1, 60))
    max_size = draw(st.integers(max(min_size, 27 if every_class else 1), 128))
    return min_size, max_size, every_class, draw(label_lists(min_size, max_size, every_class))


@given(label_list_requests())
def test_label_lists_hold_what_they_claim(request):
    """ys = label_lists(a, b, every) ⇒ ys ⊆ {0..26}, max(a, 27·every) ≤ |ys| ≤ b, and every ⇒ {0..26} ⊆ ys."""
    min_size, max_size, every_class, ys = request
    assert all(isinstance(y, int) and 0 <= y <= 26 for y in ys)
    assert max(min_size, 27 if every_class else 0) <= len(ys) <= max_size
    if every_class:
        assert set(ys) == set(range(27))


def expected_layout(case: MLPCase) -> list[tuple]:
    """(type, fan_in, fan_out, bias) per Linear, (BatchNorm1d, width) per BN, (activation,) per activation."""
    widths = (case.context_length * case.emb_size, *case.hidden, 27)
    layout = []
    for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layout.append((Linear, fan_in, fan_out, not case.batchnorm))
        if case.batchnorm:
            layout.append((BatchNorm1d, fan_out))
        if k < case.depth:
            layout.append((ACTIVATIONS[case.activation],))
    return layout


def layout(model: CharMLP) -> list[tuple]:
    described = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            described.append((Linear, layer.fan_in, layer.fan_out, layer.bias is not None))
        elif isinstance(layer, BatchNorm1d):
            described.append((BatchNorm1d, layer.dim))
        else:
            described.append((type(layer),))
    return described


@given(st.sampled_from([False, True]).flatmap(
    lambda bn: mlp_cases(activations=tuple(ACTIVATIONS), batchnorm=bn, dtypes=(F32, F64), embedding=bn)))
def test_mlp_cases_build_the_described_net(case):
    """build(case) = C (27 × emb) then, per hidden width, Linear (bias iff no BN) [+ BN] + φ; Linear to 27 [+ BN].

    Also: depth = len(hidden) ∈ 1..6, widths ∈ 1..64, context ∈ 1..4, emb ∈ 1..8, every tensor of the
    case's dtype, C = the case's embedding values when it has them, and the init scheme recorded.
    """
    model = case.build("zeros")
    assert 1 <= case.depth <= 6 and all(1 <= w <= 64 for w in case.hidden)
    assert 1 <= case.context_length <= 4 and 1 <= case.emb_size <= 8
    assert layout(model) == expected_layout(case)
    assert model.C.shape == (27, case.emb_size) and model.context_length == case.context_length
    assert all(p.dtype == case.dtype for p in model.parameters())
    assert model.init_scheme == "zeros"
    if case.embedding is not None:
        assert torch.equal(model.C, torch.tensor(case.embedding, dtype=case.dtype).reshape(27, case.emb_size))


@given(mlp_cases(embedding=True), mlp_cases(embedding=False))
def test_mlp_cases_draw_c_only_when_asked(drawn, generic):
    """mlp_cases(embedding=True) draws 27·emb values in [−4, 4], none subnormal; embedding=False leaves C generic."""
    assert len(drawn.embedding) == 27 * drawn.emb_size
    assert all(v == 0 or 2.0**-1022 <= abs(v) <= 4 for v in drawn.embedding)
    assert generic.embedding is None


@given(st.tuples(st.integers(1, 40), st.integers(1, 4)).flatmap(lambda s: st.tuples(st.just(s), contexts(*s))))
def test_contexts_are_character_indices(drawn):
    """contexts(rows, n) is an int64 (rows × n) tensor of indices in 0..26."""
    shape, X = drawn
    assert X.dtype == torch.int64 and X.shape == shape
    assert bool(((X >= 0) & (X <= 26)).all())


def problem_is_consistent(p: Problem, min_probe=1):
    assert p.X.dtype == p.Y.dtype == p.X_probe.dtype == p.Y_probe.dtype == torch.int64
    assert p.X.shape == (len(p.Y), p.case.context_length) and len(p.Y) >= 1
    assert p.X_probe.shape == (len(p.Y_probe), p.case.context_length) and len(p.Y_probe) >= min_probe
    for t in p:
        if isinstance(t, torch.Tensor):
            assert bool(((t >= 0) & (t <= 26)).all())


@given(problems(mlp_cases(max_depth=2, max_width=4), min_probe=2))
def test_problems_pair_contexts_with_labels(p):
    """problems(...) = (case, X, Y, X', Y'): one context of the case's length per label, a probe of ≥ min_probe rows."""
    problem_is_consistent(p, min_probe=2)


def test_problem_of_is_an_example_of_the_same_shape():
    """Problem.of(case, ys) satisfies what problems() draws: it stands in for a drawn problem in @example."""
    p = Problem.of(MLPCase(context_length=3), [4, 0, 26])
    problem_is_consistent(p)
    assert p.X.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]] and sorted(p.Y_probe.tolist()) == list(range(27))


@given(names_st)
def test_names_are_valid_names(name):
    """names_st draws 1..12 characters of a-z: what load_names accepts, encoded without '.'."""
    assert re.fullmatch(r"[a-z]{1,12}", name)
    assert 0 not in Vocab().encode(name)


@given(name_lists)
def test_name_lists_hold_1_to_40_names(names):
    """1 ≤ |name_lists| ≤ 40."""
    assert 1 <= len(names) <= 40


@given(st.floats(-1e3, 0.0), st.floats(0.0, 1e3), st.data())
def test_floats_without_underflow_stay_normal(lo, hi, data):
    """v = draw(floats_without_underflow(lo, hi)) ⇒ lo ≤ v ≤ hi and (v = 0 or |v| ≥ 1e-100)."""
    v = data.draw(floats_without_underflow(lo, hi))
    assert lo <= v <= hi
    assert v == 0 or abs(v) >= UNDERFLOW_FLOOR


def assert_stats_in_modes(stats, dim, var, gamma):
    """The NormStats of a case hold min(dim, CYCLE) units per statistic, in the modes the case names."""
    n = min(dim, CYCLE)
    assert all(len(t) == n for t in (stats.mean, stats.var, stats.gamma, stats.beta))
    assert all(1e-3 <= abs(m) <= 1e3 for m in stats.mean) and all(0.1 <= abs(b) <= 100 for b in stats.beta)
    if var == "zero":
        assert all(v == 0 for v in stats.var)
    else:
        assert all(v == 0 or 1e-6 <= v <= 1e6 for v in stats.var)
        assert (var == "mixed") == (stats.var[0] == 0)
        assert n < 2 or stats.var[1] > 0
    if gamma == "zero":
        assert all(g == 0 for g in stats.gamma)
    elif gamma == "negative":
        assert all(-10 <= g <= -0.1 for g in stats.gamma)
    else:
        assert all(g == 0 or 0.1 <= abs(g) <= 10 for g in stats.gamma)


def assert_pair_built_from_its_values(case: PairCase):
    """build() uses the case's values: W, b, μ, v as cycled, and x = offsets + μ for a BN before its Linear."""
    linear, bn, x = case.build()
    W = linear.weight.T if case.kind == "torch" else linear.weight
    assert torch.equal(W, cycled(case.W, (case.fan_in, case.fan_out)))
    assert (linear.bias is not None) == case.bias and torch.equal(bn.running_var, case.stats.tensors(case.bn_dim)[1])
    mean = bn.running_mean if case.direction == "before" else 0
    assert torch.equal(x, cycled(case.x, (case.batch, case.fan_in)) + mean)


@given(pair_cases(dtypes=(F64,)))
def test_pair_cases_draw_values_in_their_modes(case):
    """pair_cases: min(size, CYCLE) values per tensor, |W| ∈ [0.01, 10], |b| ∈ [0.1, 100], |x − μ| ∈ [0.01, 100];
    v all 0 ('zero'), v_0 = 0 < v_1 ('mixed'), else v ∈ [10⁻⁶, 10⁶]; γ all 0, all < 0, or 0 or ±[0.1, 10].

    x sits around the running mean for a BN before its Linear (x = offsets + μ exactly, in float64).
    """
    assert (len(case.W), len(case.b), len(case.x)) == tuple(
        min(math.prod(shape), CYCLE) for shape in case.shapes().values())
    assert all(0.01 <= abs(w) <= 10 for w in case.W) and all(0.1 <= abs(b) <= 100 for b in case.b)
    assert all(0.01 <= abs(x) <= 100 for x in case.x)
    assert_stats_in_modes(case.stats, case.bn_dim, case.var, case.gamma)
    assert_pair_built_from_its_values(case)


@pytest.mark.parametrize("var", VAR_MODES)
@pytest.mark.parametrize("gamma", GAMMA_MODES)
@pytest.mark.parametrize("direction", ["after", "before"])
def test_hand_built_pairs_fill_values_in_their_modes(var, gamma, direction):
    """PairCase(...) and ConvPairCase(...) with no values, as @example builds them, get fixed values of the ranges
    and modes the strategies draw."""
    for fan_in, fan_out, batch in [(1, 1, 1), (2, 3, 1), (128, 128, 256)]:
        case = PairCase(direction=direction, fan_in=fan_in, fan_out=fan_out, batch=batch, var=var, gamma=gamma,
                        dtype=F64)
        assert_stats_in_modes(case.stats, case.bn_dim, var, gamma)
        assert_pair_built_from_its_values(case)
    for groups in (1, 3):
        conv = ConvPairCase(direction=direction, groups=groups, in_per_group=2, var=var, gamma=gamma)
        assert_stats_in_modes(conv.stats, conv.bn_dim, var, gamma)


@given(conv_pair_cases(dtypes=(F64,)))
def test_conv_pair_cases_draw_values_in_their_modes(case):
    """conv_pair_cases: statistics as pair_cases' per channel, and x = offsets + μ_c per channel for a BN before."""
    assert_stats_in_modes(case.stats, case.bn_dim, case.var, case.gamma)
    conv, bn, x = case.build()
    assert torch.equal(conv.weight, cycled(case.W, case.shapes()["W"]))
    mean = channelwise(bn.running_mean, x.ndim) if case.direction == "before" else 0
    assert torch.equal(x, cycled(case.x, case.shapes()["x"]) + mean)


@given(model_cases())
def test_model_cases_hold_one_value_set_per_layer(case: ModelCase):
    """model_cases: one (W, b) per Linear, one NormStats per BatchNorm (v ∈ [10⁻², 10²], γ 0 or ±[0.1, 10]), a batch."""
    assert len(case.linears) == len(case.widths) - 1
    assert len(case.norms) == sum(gap.count("bn") for gap in case.gaps)
    for stats in case.norms:
        assert all(1e-2 <= v <= 1e2 for v in stats.var) and all(g == 0 or 0.1 <= abs(g) <= 10 for g in stats.gamma)
    model, X = case.build()
    assert X.shape[0] == case.batch


WIDENING_BLOCKS = ("conv_bn", "bn_conv", "bn_conv_zero_padded", "bn_run", "concat", "transposed")


def padding_mode_at(case: NetCase, i):
    """The padding mode block i's conv should have: its drawn mode, but replicate for reflect at size 1 (the size
    before block i: 1 more after a transposed conv, 1 less after a pool of a size above 1)."""
    size = case.size
    for block in case.blocks[:i]:
        size += 1 if block == "transposed" else -1 if block == "pool" and size > 1 else 0
    return "replicate" if case.modes[i] == "reflect" and size == 1 else case.modes[i]


@given(net_cases(dtypes=(F64,)))
@example(NetCase(1, 3, 2, ("pool", "bn_conv", "transposed", "bn_conv"), "flatten_linear", 2, F64))
@example(NetCase(3, 2, 2, ("bn_conv", "bn_conv", "bn_conv_zero_padded", "subclass"), "linear_bn", 1, F64))
def test_net_cases_build_their_values_in_their_modes(case: NetCase):
    """net_cases: widths ∈ 1..3, modes ∈ PADDING_MODES; one (W, b) per conv and Linear with |W| ∈ [0.01, 1] and
    |b| ∈ [0.1, 1]; one NormStats per BN, v ∈ [10⁻², 10²] (loguniform), γ 0 or ±[0.1, 10]; |X| ∈ [0.1, 10].

    build() holds them: each conv's and Linear's W and b cycled (no bias where b is None), each BN's statistics,
    X cycled; a widening block's conv has widths[i] outputs and a bn_conv's its padding mode (replicate for
    reflect at size 1). Hand-built cases get fixed values of the same ranges.
    """
    assert all(w in (1, 2, 3) for w in case.widths) and len(case.widths) == len(case.modes) == len(case.blocks)
    model, X, expected = case.build()
    convs = [m for name, m in model.layers.items() if name.endswith(("_conv", "_linear"))]
    bns = [m for m in model.modules() if is_batchnorm(m)]
    assert len(case.weights) == len(convs) and len(case.norms) == len(bns) == len(expected)
    for m, (W, b) in zip(convs, case.weights):
        assert all(0.01 <= abs(w) <= 1 for w in W) and torch.equal(m.weight, cycled(W, m.weight.shape))
        assert (m.bias is None) == (b is None)
        if b is not None:
            assert all(0.1 <= abs(v) <= 1 for v in b) and torch.equal(m.bias, cycled(b, m.bias.shape))
    for bn, stats in zip(bns, case.norms):
        assert all(1e-2 <= v <= 1e2 for v in stats.var) and all(g == 0 or 0.1 <= abs(g) <= 10 for g in stats.gamma)
        assert all(torch.equal(t, u) for t, u in zip((bn.running_mean, bn.running_var, bn.weight, bn.bias),
                                                      stats.tensors(bn.num_features)))
    assert all(0.1 <= abs(x) <= 10 for x in case.X) and torch.equal(X, cycled(case.X, case.input_shape()))
    for i, block in enumerate(case.blocks):
        if block in WIDENING_BLOCKS:
            assert model.layers[f"b{i}_conv"].out_channels == case.widths[i]
        if block == "bn_conv":
            assert model.layers[f"b{i}_conv"].padding_mode == padding_mode_at(case, i)


shrinking = settings(database=None, derandomize=True, max_examples=200, phases=list(Phase))  # whatever the profile


def test_a_failing_pair_shrinks_to_round_values():
    """The smallest pair with some |W| > 1 is fan-in, fan-out and batch 1, W = (10.0,), every other value 1.0."""
    case = find(pair_cases(), lambda c: max(map(abs, c.W)) > 1, settings=shrinking)
    assert (case.fan_in, case.fan_out, case.batch) == (1, 1, 1) and case.W == (10.0,)
    assert case.b == case.x == case.stats.mean == case.stats.var == case.stats.gamma == case.stats.beta == (1.0,)



def test_a_failing_net_shrinks_to_one_block_of_round_values():
    """The smallest net of up to 2 blocks with some conv weight |w| < 1 is 1-D, one channel, size 2, one conv_bn block
    widening to 1 channel, no head, batch 1, float32, no bias, W = (1.0, 1.0, 0.1) and every other value 1.0."""
    case = find(net_cases(max_blocks=2), lambda c: any(abs(w) < 1 for W, _ in c.weights for w in W), settings=shrinking)
    assert case == NetCase(1, 1, 2, ("conv_bn",), "none", 1, F32, (1,), ("reflect",), (((1.0, 1.0, 0.1), None),),
                           (NormStats((1.0,), (1.0,), (1.0,), (1.0,)),), (1.0, 1.0))
