"""The allowance of a fold computed in another arithmetic (docs/design-conv.md §11): pair_factor with a fold unit u_f
and k_f roundings is its documented formula, a folder that computes W' and b' in float32 stays within it, and one
that computes them in float16 while declaring float32 does not, nor does a float32 fold held to bnfold's float64
allowance."""

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from core.conform.cases import CONV, LINEAR, Case, LayerSpec
from core.conform.folder import PEER_FOLD_ROUNDINGS, Folded, Folder, TorchFolded
from core.conform.laws import BOUND, within_bound
from core.conform.strategies import cases
from core.engine.algebra import AFTER, BEFORE
from core.engine.bound.pair import pair_bound, pair_factor, pair_magnitude, pair_underflow
from core.engine.bound.rounding import FOLD_ROUNDINGS, U32, U64, ieee_unit_roundoff


def gamma(k: float, u: float) -> float:
    return k * u / (1 - k * u) if k * u < 1 else math.inf  # no bound once k·u reaches 1


@pytest.mark.parametrize("n", [1, 9, 64, 4608])
@pytest.mark.parametrize("direction", [AFTER, BEFORE])
@pytest.mark.parametrize("fold_unit, k", [(U64, FOLD_ROUNDINGS), (U32, PEER_FOLD_ROUNDINGS), (2.0**-11, 7)])
def test_pair_factor_with_a_fold_arithmetic_is_its_formula(n, direction, fold_unit, k):
    """ρ_f = γ(n + 9) + (1 + γ_f(k_f (+ n before)))(1 + γ(n + 2)) − 1, evaluated here from γ alone; bnfold's own
    arithmetic is the default."""
    for u in (2.0**-24, 2.0**-11, 2.0**-8):
        kf = k + (n if direction == BEFORE else 0)
        expected = gamma(n + 9, u) + (1 + gamma(kf, fold_unit)) * (1 + gamma(n + 2, u)) - 1
        assert math.isclose(pair_factor(n, direction, u, fold_unit, k), expected, rel_tol=2.0**-50)
        assert pair_factor(n, direction, u) == pair_factor(n, direction, u, U64, FOLD_ROUNDINGS)
        if fold_unit <= u and direction == AFTER:
            assert pair_factor(n, direction, u, fold_unit, k) <= 2 * gamma(n + 9, u)  # the ceiling of §11


@pytest.mark.parametrize("fold_unit, k", [(U32, PEER_FOLD_ROUNDINGS), (2.0**-11, 9)])
def test_pair_bound_holds_the_fold_arithmetic_it_is_given(fold_unit, k):
    """pair_bound at (u_f, k_f) = ρ_f·M + A with ρ_f of that arithmetic (the formula above), not bnfold's own."""
    case = pair_case()
    conv, bn = case.build()
    x = case.example()
    n = conv.weight[0].numel()
    u = ieee_unit_roundoff(torch.float64)
    rho = gamma(n + 9, u) + (1 + gamma(k, fold_unit)) * (1 + gamma(n + 2, u)) - 1
    expected = rho * pair_magnitude(conv, bn, AFTER, x) + pair_underflow(conv, bn, x)
    got = pair_bound(conv, bn, AFTER, x, fold_unit, k)
    # Both sides are the same few float64 operations on non-negative terms, at most 8 each: 2⁻⁵⁰ = 8·u₆₄ relative.
    assert torch.allclose(got, expected, rtol=2.0**-50, atol=0)
    assert not torch.allclose(got, pair_bound(conv, bn, AFTER, x), rtol=2.0**-50, atol=0)


class FoldIn(Folder):
    """torch.nn.utils.fusion's formula computed in `computes` on a float64 model, declaring `declares`."""

    key = name = "fold-in"
    distribution = "torch"
    claims = frozenset({CONV, LINEAR})
    usage = ""

    def __init__(self, computes: torch.dtype, declares: float, roundings: int = PEER_FOLD_ROUNDINGS):
        self.computes, self.declares = computes, declares
        self.fold_roundings = roundings

    def fold_unit(self, dtype: torch.dtype) -> float:
        return self.declares

    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

        layers, out, i = list(model), [], 0
        while i < len(layers):
            layer, bn = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not isinstance(layer, nn.ReLU):
                dtype = layer.weight.dtype
                low = copy.deepcopy(nn.Sequential(layer, bn)).to(self.computes)
                fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
                out.append(fuse(low[0], low[1]).to(dtype))
                i += 2
            else:
                out.append(layer)
                i += 1
        return TorchFolded(nn.Sequential(*out))


def in_float64(case: Case) -> Case:
    return dataclasses.replace(case, dtype=torch.float64)


@settings(max_examples=20)
@given(cases(CONV))
def test_a_float32_fold_is_within_its_allowance(case):
    """A correct folder computing in float32 on a float64 model: within the bound with u_f = 2⁻²⁴, k_f = 7."""
    assert within_bound(FoldIn(torch.float32, ieee_unit_roundoff(torch.float32)), in_float64(case)) is None


def pair_case() -> Case:
    """A float64 Conv2d(1, 1, 1) → BatchNorm2d whose fold rounds visibly in float32 and float16."""
    conv = LayerSpec("Conv2d", (1, 1, 1), (), (("weight", torch.tensor([0.3]).reshape(1, 1, 1, 1)),
                                                ("bias", torch.tensor([0.1]))))
    bn = LayerSpec("BatchNorm2d", (1,), (), (("running_mean", torch.tensor([0.2])),
                                             ("running_var", torch.tensor([0.7])), ("weight", torch.tensor([1.3])),
                                             ("bias", torch.tensor([-0.4]))))
    return Case(CONV, (conv, bn), torch.tensor([1.1, -2.3]).reshape(2, 1, 1, 1), dtype=torch.float64)


def test_a_float32_fold_leaves_the_float64_allowance():
    """The same float32 folder held to bnfold's allowance (u_f = 2⁻⁵³) leaves it: the allowance is needed."""
    case = pair_case()
    assert within_bound(FoldIn(torch.float32, ieee_unit_roundoff(torch.float32)), case) is None
    violation = within_bound(FoldIn(torch.float32, U64, FOLD_ROUNDINGS), case)
    assert violation is not None and violation.kind == BOUND


def test_a_float16_fold_declared_float32_is_caught():
    """A folder computing the fold in float16 while declaring float32 leaves the bound it declared."""
    violation = within_bound(FoldIn(torch.float16, ieee_unit_roundoff(torch.float32)), pair_case())
    assert violation is not None and violation.kind == BOUND
