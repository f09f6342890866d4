"""Laws of the certified bound's size: it covers what a legal float evaluation can reach, and it is not far above it.

Soundness laws elsewhere check observed ≤ bound on drawn nets; they pass a bound that forgets part of the error as
long as the rest stays above the observed error, which sits orders of magnitude below the bound on deep nets. The
laws here fail such a bound:

- an attainable error: IEEE arithmetic lets a dot product sum its terms in any order. Summed left to right,
  1 + h + h + … (h just below half an ulp of 1) never leaves 1 and loses (n − 1)·h, about (n − 1)·u of a
  magnitude of 1. The folded layer may be evaluated that way and the unfolded one exactly, so the bound must
  cover that loss; and the bound is at most a stated factor above it (ratio (n − 1)/(4.4(n + 9))), so a bound
  that drops the fan-in n, or is a constant factor of 8 too small at n ≥ 64, fails; so does one that carries a
  fold's error through a later layer without that layer's gain;
- the kernels torch runs: on cancellation-heavy pairs of fan-in 1 and 2 the largest observed error reaches 1/8
  of the bound, so a pair bound 8× too small fails on torch's own arithmetic too;
- composition: the bound of a model whose folds sit on separate paths is exactly the bounds of its folds, each
  on its own; a whole-model bound that forgets a fold's share fails;
- the loss: at logits moved to the corner of their bound, the mean cross-entropy moves by the loss bound's
  Lipschitz part to within 10⁻⁶.
"""

from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, note
from hypothesis import strategies as st
from torch import nn

from core.engine.bound.loss import loss_bound
from core.engine.bound.propagation import error_bound
from core.engine.bound.rounding import ieee_unit_roundoff
from core.engine.fold import fold
from core.engine.kinds import KINDS
from properties.strategies.floats import tensors
from properties.strategies.pairs import PairCase, make_bn, make_linear, pair_cases

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DTYPES = (F16, BF16, F32, F64)


def largest_fan_in(dtype: torch.dtype) -> int:
    """n with n·u ≤ 1/16, at most 4096: the lost (n − 1)·h stays below 1/16 of the magnitude 1 it is lost from."""
    return min(4096, int(1 / (16 * ieee_unit_roundoff(dtype))))


@st.composite
def stagnation_pairs(draw):
    """(kind, direction, dtype, n, k): a pair whose BN scales by s = 2^k exactly (γ = 2^k, v = 1, ε = 0, μ = β = 0)."""
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(2, largest_fan_in(dtype)))
    return draw(st.sampled_from(("core", "torch"))), draw(st.sampled_from(("after", "before"))), dtype, n, \
        draw(st.integers(-4, 4))


def stagnation_pair(kind: str, direction: str, dtype: torch.dtype, n: int, k: int):
    """(model, x, h): Linear(n, 1) with W = (1, h, …, h), no bias, beside a BN of scale 2^k; x = 1.

    h = u·(1 − 2⁻⁸): below half an ulp of 1 (an ulp is 2u), representable in every float dtype. Every product
    x_i·W'_i and the scale are powers of two times W's entries, so the only rounding is in the sum.
    """
    h = ieee_unit_roundoff(dtype) * (1 - 2.0**-8)
    W = torch.tensor([[1.0]] + [[h]] * (n - 1), dtype=F64)
    width = 1 if direction == "after" else n
    ones = torch.ones(width, dtype=F64)
    bn = make_bn(kind, (0 * ones, ones, 2.0**k * ones, 0 * ones), 0.0, dtype=dtype)
    linear = make_linear(kind, W.to(dtype), None).eval()
    model = nn.Sequential(*((linear, bn) if direction == "after" else (bn, linear))).eval()
    return model, torch.ones(1, n, dtype=dtype), h


def left_to_right(terms: list[Fraction], dtype: torch.dtype) -> Fraction:
    """Σ terms summed left to right, each partial sum rounded to dtype (float64 adds of two dtype values are exact
    here, so rounding their sum to dtype is one correct rounding)."""
    total = torch.tensor(float(terms[0]), dtype=dtype)
    for term in terms[1:]:
        total = (total.double() + float(term)).to(dtype)
    return Fraction(total.item())


@given(stagnation_pairs())
@example(("core", "after", F32, 2, 0))
@example(("torch", "before", F64, 4096, 4))
@example(("core", "before", BF16, largest_fan_in(BF16), -4))
@example(("torch", "after", F16, largest_fan_in(F16), 0))
def test_bound_covers_a_legal_order_and_is_within_a_stated_factor_of_it(case):
    """e ≤ B and e ≥ B·(n − 1)/(4.4(n + 9)), e = |left-to-right folded(x) − exact|, at W = (1, h, …, h), x = 1.

    Left to right, fl(1 + h) = 1, so the folded layer loses e = (n − 1)·h·|s| while the unfolded one, summing the
    h first, may be exact: any sound bound covers e. The bound is ρ·M + A with M = |s|(1 + (n − 1)h) ≤
    1.0625|s| (n·u ≤ 1/16) and ρ ≤ 2(n' + 9)u·1.001 (n' = n, or 2n before a Linear in float64; test_fold_pair),
    while h = u(1 − 2⁻⁸), so e/B ≥ (n − 1)(1 − 2⁻⁸)/(2.13(n' + 9)) ≥ (n − 1)/(4.4(n + 9)).
    """
    kind, direction, dtype, n, k = case
    model, x, h = stagnation_pair(kind, direction, dtype, n, k)
    folded, _ = fold(model)
    W = KINDS[type(folded[0])].blocks(folded[0])[0, :, 0].detach()
    products = [Fraction(float(w)) for w in W.double()]  # x = 1: the products are W' itself, exactly
    exact = sum(products, Fraction(0)) + Fraction(folded[0].bias[0].item())
    e = abs(left_to_right(products, dtype) + Fraction(folded[0].bias[0].item()) - exact)
    B = Fraction(error_bound(model, x)[0, 0].item())
    note(f"n {n}, u {ieee_unit_roundoff(dtype):.3e}, lost e {float(e):.6e}, bound {float(B):.6e}, "
         f"e/B {float(e / B):.4f}, stated {(n - 1) / (4.4 * (n + 9)):.4f}")
    assert e == (n - 1) * Fraction(h) * Fraction(2) ** k  # the construction loses what it should
    assert e <= B
    assert e >= B * Fraction(n - 1) / (Fraction(44, 10) * (n + 9))


@given(stagnation_pairs(), st.integers(2, 10), st.sampled_from(("core", "torch")))
@example(("core", "after", F32, 64, 0), 2, "torch")
def test_a_layer_after_the_fold_carries_the_lost_error(case, j, kind):
    """e·2^j ≤ B for pair → Linear(1, 1) with weight 2^j: the bound carries a fold's error through the gain of the
    layers after it.

    Multiplying by 2^j is exact, so the left-to-right folded chain loses 2^j·e (e as above) while the unfolded one
    may be exact. A bound that carried D through a layer without its |W| would stay near the pair's B < 2^j·e
    (e/B_pair > 1/4 once n ≥ 64).
    """
    pair_kind, direction, dtype, n, k = case
    pair, x, h = stagnation_pair(pair_kind, direction, dtype, n, k)
    gain = make_linear(kind, torch.tensor([[2.0**j]], dtype=dtype), None).eval()
    e = (n - 1) * Fraction(h) * Fraction(2) ** (k + j)
    B = Fraction(error_bound(nn.Sequential(*pair, gain).eval(), x)[0, 0].item())
    note(f"n {n}, 2^j {2**j}, lost 2^j·e {float(e):.6e}, bound {float(B):.6e}")
    assert e <= B


def cancellation_pair(kind: str, fan_in: int, dtype: torch.dtype, seed: int, batch: int = 4096, fan_out: int = 8):
    """(model, x): Linear → BN with t = β − μs = 0, inputs over four decades: the terms of each output cancel."""
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(fan_in, fan_out, generator=g, dtype=F64), torch.randn(fan_out, generator=g, dtype=F64)
    mean = torch.randn(fan_out, generator=g, dtype=F64) * 10 ** (4 * torch.rand(fan_out, generator=g, dtype=F64) - 1)
    var = 10 ** (4 * torch.rand(fan_out, generator=g, dtype=F64) - 2)
    gamma = torch.randn(fan_out, generator=g, dtype=F64)
    beta = mean * gamma / (var + 1e-5).sqrt()
    x = torch.randn(batch, fan_in, generator=g, dtype=F64) * 10 ** (4 * torch.rand(batch, 1, generator=g,
                                                                                       dtype=F64) - 1)
    linear = make_linear(kind, W.to(dtype), b.to(dtype)).eval()
    return nn.Sequential(linear, make_bn(kind, (mean, var, gamma, beta), 1e-5, dtype=dtype)).eval(), x.to(dtype)


@pytest.mark.parametrize("kind", ["core", "torch"])
@pytest.mark.parametrize("fan_in", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_kernels_reach_an_eighth_of_the_pair_bound(kind, fan_in, seed):
    """max_j |BN(xW + b) − (xW' + b')|_j / B_j ≥ 1/8 over 4096 × 8 outputs of a cancellation-heavy float32 pair.

    With t = 0 and inputs over four decades, each output is a few roundings of terms that cancel, and the
    worst of 32768 outputs sits near a quarter of ρ·M (0.19 to 0.37 measured): a pair bound 8× too small fails
    here on torch's own kernels, at the fan-ins where the legal-order law above states least.
    """
    model, x = cancellation_pair(kind, fan_in, F32, seed)
    folded, _ = fold(model)
    with torch.no_grad():
        err = (model(x).double() - folded(x).double()).abs()
    ratio = (err / error_bound(model, x)).max().item()
    assert 1 / 8 <= ratio <= 1, f"largest observed/bound {ratio:.4f}"


class TwoPaths(nn.Module):
    """Two pairs on separate inputs, returning both outputs: no value of one path reaches the other."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, a, b):
        return self.first(a), self.second(b)


@given(pair_cases(max_fan=16, max_batch=16), pair_cases(max_fan=16, max_batch=16))
@example(PairCase(fan_in=3, fan_out=2, batch=2), PairCase(direction="before", dtype=F64, fan_in=2, batch=2))
def test_bound_of_separate_folds_is_the_bound_of_each(first, second):
    """error_bound(TwoPaths(P, Q), (x, y)) = (error_bound(P, x), error_bound(Q, y)), exactly.

    The whole-model bound is the sum over folds of each fold's bound carried to the output; a fold's bound
    reaches only its own path's output and adds 0 to the other, so each output's bound is its own pair's.
    """
    (p, x), (q, y) = first.sequential(), second.sequential()
    both = error_bound(TwoPaths(p, q), (x, y))
    alone = (error_bound(p, x), error_bound(q, y))
    note(f"largest bounds {[b.max().item() for b in both]} vs {[b.max().item() for b in alone]}")
    assert torch.equal(both[0], alone[0]) and torch.equal(both[1], alone[1])


@st.composite
def corner_logits(draw):
    """(z, B, Y): N×V float64 logits whose label logit sits 30 below the rest (p_y < e⁻²⁶), and a per-row bound."""
    n, v = draw(st.integers(1, 8)), draw(st.integers(2, 27))
    z = draw(tensors((n, v), st.floats(-10, 10)))
    Y = torch.tensor(draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    z[torch.arange(n), Y] = z.amin(1) - 30
    b = draw(tensors((n, 1), st.floats(1e-4, 1e-2)))
    return z, b.expand(n, v).clone(), Y


@given(corner_logits())
def test_loss_bound_is_reached_at_the_corner(case):
    """|CE(z′) − CE(z)| ≤ loss_bound ≤ |CE(z′) − CE(z)|·(1 + 10⁻⁶), z′ = z + B on the label and z − B elsewhere.

    logsumexp drops by B where the label's share p_y < e⁻²⁶ is negligible, and the label term rises by B: the
    mean loss moves by mean(max_k B_k + B_y)·(1 − O(p_y)), which is the bound's Lipschitz part; its rounding
    part, γ₆₄(N + V + 8) times |z| + log V, is below 10⁻¹⁰ of it here.
    """
    z, B, Y = case
    label = torch.nn.functional.one_hot(Y, z.shape[1]).bool()
    moved = torch.where(label, z + B, z - B)
    change = abs(torch.nn.functional.cross_entropy(moved, Y).item() - torch.nn.functional.cross_entropy(z, Y).item())
    bound = loss_bound(z, B, Y)
    note(f"change {change:.9e}, bound {bound:.9e}")
    assert change <= bound <= change * (1 + 1e-6)


# Each rule's bound attained: on a case built where the map's slope is largest (signs aligned, an interval across
# the steepest point, a clamp reached), the exact change of the map, |L(x̂') − L(x̂)| in float64, is within a stated
# factor of the rule's bound R(L, x̂, D) with D = |x̂' − x̂|, u and η of float32. The moves are large beside the
# rounding allowances (D ≥ 2⁻⁸ on values of magnitude ≤ 4), so R is its slope part up to a few in 10⁴, and the
# curvature of tanh, sigmoid, hardswish and the gates over D costs under 1 %: a factor 1.02 holds, and a slope made
# larger by 2 % (or a clamp, a flat region, a max taken too wide) fails. The rounding allowances themselves are
# pinned by the spec laws (test_bound_spec.py), since no kernel comes near them.

TIGHT_FACTOR = 1.02
moves = st.floats(2.0**-8, 2.0**-5)  # D: small enough that curvature is negligible, large beside rounding
spots = st.floats(-4, 4, allow_nan=False)
scales = st.floats(0.5, 2).flatmap(lambda v: st.sampled_from((v, -v)))


def at(values) -> torch.Tensor:
    return torch.tensor([values], dtype=F64)


@st.composite
def affine_case(draw):
    """Linear(n, 1) with |W_i| ∈ [1/2, 2]: x̂' = x̂ + D·sign(W) moves every product the same way."""
    n = draw(st.integers(1, 8))
    W, b = [draw(scales) for _ in range(n)], draw(spots)
    layer = nn.Linear(n, 1, dtype=F64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([W], dtype=F64))
        layer.bias.fill_(b)
    x, d = at([draw(spots) for _ in range(n)]), draw(moves)
    return layer, x, x + d * torch.sign(layer.weight.detach())


@st.composite
def batchnorm_case(draw):
    bn = nn.BatchNorm1d(1, dtype=F64).eval()
    with torch.no_grad():
        bn.running_mean.fill_(draw(spots))
        bn.running_var.fill_(draw(st.floats(0.25, 4)))
        bn.weight.fill_(draw(scales))
        bn.bias.fill_(draw(spots))
    x = at([draw(spots)])
    return bn, x, x + draw(moves)


def across(center: float, d: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂, x̂') = (center − d/2, center + d/2): an interval around the point of largest slope."""
    return at([center - d / 2]), at([center + d / 2])


@st.composite
def squashing_case(draw, layer_type):
    """tanh or sigmoid: across 0 (largest slope), or from −a to a (the output's range, the clamp)."""
    if draw(st.booleans()):
        return (layer_type(), *across(0.0, draw(moves)))
    a = draw(st.floats(20, 40))
    return layer_type(), at([-a]), at([a])


@st.composite
def piecewise_case(draw, layer_type):
    """ReLU, ReLU6 or Hardtanh(lo, hi): inside (slope 1); for a clamp of both ends, across the whole range (the
    outputs differ by hi − lo); or ending exactly on the lower flat region's edge (both outputs equal: the bound must
    be 0). lo and hi are multiples of 1/4, which every float dtype holds, as the rule's thresholds assume."""
    if layer_type is nn.Hardtanh:
        layer = nn.Hardtanh(draw(st.integers(-16, -2)) / 4, draw(st.integers(2, 16)) / 4)
    else:
        layer = layer_type()
    lo = 0.0 if layer_type is nn.ReLU else layer.min_val
    hi = 4.0 if layer_type is nn.ReLU else layer.max_val
    d = draw(moves)
    where = draw(st.sampled_from(("inside", "flat") if layer_type is nn.ReLU else ("inside", "across", "flat")))
    if where == "inside":
        return (layer, *across((lo + hi) / 2, d))
    if where == "across":
        return layer, at([lo - d]), at([hi + d])
    return layer, at([lo - d]), at([lo])


@st.composite
def leaky_relu_case(draw):
    """The side of 0 whose slope is larger: x̂ > 0 for |a| ≤ 1, x̂ < 0 for |a| > 1."""
    a = draw(st.floats(-2, 2))
    d, spot = draw(moves), draw(st.floats(0.5, 4))
    side = -1.0 if abs(a) > 1 else 1.0
    return nn.LeakyReLU(a), at([side * spot]), at([side * spot + d])


@st.composite
def hardswish_case(draw):
    """Just below 3, where f' = (2x + 3)/6 reaches its largest value 3/2."""
    d = draw(moves)
    return nn.Hardswish(), at([3.0 - d]), at([3.0])


@st.composite
def hardsigmoid_case(draw):
    d = draw(moves)
    return (nn.Hardsigmoid(), *across(draw(st.floats(-2.5, 2.5)), d))


GATE_ARGMAX = {"silu": 2.399357280515467, "gelu": 2.0**0.5}  # where |f'| is largest (docs/design-conv.md §6)


@st.composite
def gate_case(draw, name):
    """SiLU or GELU across the point of largest slope."""
    layer = nn.SiLU() if name == "silu" else nn.GELU(draw(st.sampled_from(("none", "tanh"))))
    return (layer, *across(GATE_ARGMAX[name], draw(moves)))


@st.composite
def shift_case(draw, build):
    """A layer that passes, picks or averages values: every input moved by the same D moves each output by D."""
    layer = build(draw)
    x = torch.tensor([[[draw(spots) for _ in range(4)]]], dtype=F64)
    return layer, x, x + draw(moves)


TIGHT_CASES = {
    "affine": affine_case(),
    "batchnorm": batchnorm_case(),
    "tanh": squashing_case(nn.Tanh),
    "sigmoid": squashing_case(nn.Sigmoid),
    "relu": piecewise_case(nn.ReLU),
    "hardtanh": st.sampled_from((nn.ReLU6, nn.Hardtanh)).flatmap(piecewise_case),
    "leaky_relu": leaky_relu_case(),
    "hardswish": hardswish_case(),
    "hardsigmoid": hardsigmoid_case(),
    "silu": gate_case("silu"),
    "gelu": gate_case("gelu"),
    "identity": shift_case(lambda draw: nn.Identity()),
    "dropout": shift_case(lambda draw: nn.Dropout(draw(st.floats(0, 0.9))).eval()),
    "max_pool": shift_case(lambda draw: nn.MaxPool1d(draw(st.integers(1, 4)))),
    "avg_pool": shift_case(lambda draw: nn.AvgPool1d(draw(st.integers(1, 4)))),
    "adaptive_avg_pool": shift_case(lambda draw: nn.AdaptiveAvgPool1d(draw(st.integers(1, 4)))),
    "move": shift_case(lambda draw: nn.Flatten(draw(st.integers(0, 1)))),
}


@pytest.mark.parametrize("rule", sorted(TIGHT_CASES))
@given(data=st.data())
def test_each_rule_is_attained_within_its_stated_factor(rule, data):
    """change ≤ R(L, x̂, D) ≤ 1.02·change, change = |L(x̂') − L(x̂)| of the map in float64, on a case built where the
    rule's slope is attained (u, η of float32); where both outputs are equal (a flat region), R = 0.

    The section comment above says why: D is large beside every rounding allowance, so R is the rule's slope part,
    and each case sits where the map's slope is that slope.
    """
    layer, x, x2 = data.draw(TIGHT_CASES[rule])
    kind = KINDS[type(layer)]
    D = (x2 - x).abs()
    with torch.no_grad():
        change = (layer(x2) - layer(x)).abs()
        bound = kind.rule(layer, x, D, ieee_unit_roundoff(F32), torch.finfo(F32).smallest_normal * 2.0**-23)
    note(f"{layer}: x̂ {x.flatten().tolist()}, D {D.flatten().tolist()}, change {change.flatten().tolist()}, "
         f"bound {bound.flatten().tolist()}")
    assert (change <= bound).all() and (bound <= TIGHT_FACTOR * change).all()
