"""Laws of folding one Linear/BatchNorm1d pair: exactness within the certified bound, the bound's size,
exact algebra in ℚ, agreement with torch's fuser, and low-precision casts."""

import copy
from dataclasses import replace
from fractions import Fraction
from math import isqrt

import numpy as np
import pytest
import torch
from hypothesis import example, given, note
from hypothesis import strategies as st
from torch.nn.utils.fusion import fuse_linear_bn_eval

from core.engine.algebra import (
    bn_affine,
    fold_after,
    fold_before,
    fold_bn_linear,
    fold_linear_bn,
)
from core.engine.bound.pair import pair_underflow
from core.engine.bound.propagation import error_bound
from core.engine.bound.rounding import TINY64, unit_roundoff
from core.engine.fold import fold
from core.errors import FoldError
from properties.checks import assert_within_bound, worst_ratio
from properties.strategies.pairs import PairCase, pair_cases
from properties.strategies.values import NormStats

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


def fold_case(case: PairCase, linear, bn):
    return fold_linear_bn(linear, bn) if case.direction == "after" else fold_bn_linear(bn, linear)


def folded_pair(case: PairCase):
    """(the pair as a Sequential, its input, the folded layer)."""
    model, x = case.sequential()
    linear, bn = (model[0], model[1]) if case.direction == "after" else (model[1], model[0])
    return model, x, fold_case(case, linear, bn)


# The ends of every drawn range, huge next to tiny: |W|, |b|, |x|, |μ|, v, |γ|, |β| at their largest and smallest.
EXTREMES = PairCase(fan_in=2, fan_out=2, batch=2, W=(10.0, -0.01), b=(100.0, -0.1), x=(100.0, -0.01),
                    stats=NormStats(mean=(1e3, -1e-3), var=(1e6, 1e-6), gamma=(10.0, -0.1), beta=(100.0, -0.1)))



@given(pair_cases())
@example(PairCase(var="zero", gamma="zero", fan_in=1, fan_out=1, batch=1))
@example(PairCase(kind="torch", direction="before", var="zero", gamma="negative", eps=1e-8, fan_in=128, fan_out=1,
                  batch=1, dtype=F64))
@example(PairCase(direction="before", affine=False, bias=False, fan_in=1, fan_out=128, batch=256, var="mixed"))
@example(PairCase(kind="torch", var="mixed", gamma="negative", eps=1e-1, fan_in=128, fan_out=128, batch=256))
@example(EXTREMES)
@example(replace(EXTREMES, direction="before", dtype=F64))
def test_pair_within_bound(case):
    """|BN(xW + b) − (xW' + b')| ≤ B (BN after) and |BN(x)W + b − (xW' + b')| ≤ B (BN before), B = error_bound.

    Folding is an identity of affine maps (s = γ/√(v+ε), t = β − μs); the two float evaluations
    differ only by rounding, which error_bound counts term by term: ρ·M_j with ρ ≤ 2γ(n+9).
    """
    model, x, folded = folded_pair(case)
    assert_within_bound(model, folded, x)
    assert folded.weight.dtype == case.dtype and folded.bias is not None and folded.weight.requires_grad


def magnitude(case: PairCase, linear, bn, x):
    """M_j of docs/design.md: the sum of the magnitudes of the terms of output j, in float64."""
    W = (linear.weight.T if case.kind == "torch" else linear.weight).double().abs()
    b = 0 if linear.bias is None else linear.bias.double().abs()
    gm, beta = (bn.gamma, bn.beta) if case.kind == "core" else (bn.weight, bn.bias)
    s = (1 if gm is None else gm.double()) / (bn.running_var.double() + bn.eps).sqrt()
    beta = 0 if beta is None else beta.double().abs()
    mu, ax = bn.running_mean.double(), x.double().abs()
    if case.direction == "after":
        return s.abs() * (ax @ W + b + mu.abs()) + beta
    return (ax * s.abs() + (mu * s).abs() + beta) @ W + b


@given(pair_cases())
@example(PairCase(direction="before", dtype=F64, fan_in=128, fan_out=3, batch=4))
def test_bound_is_not_vacuous(case):
    """B_j ≤ 2(n' + 9)·u·M_j·(1 + 10⁻³) + 2A + 2⁻¹⁰²², n' = n except 2n for a BN before its Linear in float64; the
    report's ρ ≤ 2(n' + 9)·u·(1 + 10⁻³) too.

    ρ = γ(n+9) + (1+γ₆₄(k))(1+γ(n+2)) − 1 ≤ 2γ(n'+9), and γ(m) = mu/(1 − mu) < 1.001·mu for mu ≤ 10⁻³:
    the bound is a few hundred roundings of the magnitude of the terms at most, never vacuous. A
    (`pair_underflow`) is what underflow may add, a few hundred subnormals; 2⁻¹⁰²² covers the bound's own.
    """
    linear, bn, x = case.build()
    model = torch.nn.Sequential(*((linear, bn) if case.direction == "after" else (bn, linear)))
    n = case.fan_in * (2 if case.direction == "before" and case.dtype == F64 else 1)
    M = magnitude(case, linear, bn, x)
    bound = error_bound(model, x)
    ratio = (bound / M.clamp_min(torch.finfo(F64).tiny)).max().item() / unit_roundoff(case.dtype)
    note(f"max B/(u·M) {ratio:.1f}, allowed {2 * (n + 9) * 1.001:.1f}")
    floor = 2 * pair_underflow(linear, bn, x) + TINY64
    assert (bound <= 2 * (n + 9) * unit_roundoff(case.dtype) * M * 1.001 + floor).all()
    (pair,) = fold(model)[1].folded
    assert pair.bound_factor <= 2 * (n + 9) * unit_roundoff(case.dtype) * 1.001


def exact_sqrt(q: Fraction) -> Fraction:
    root = Fraction(isqrt(q.numerator), isqrt(q.denominator))
    assert root * root == q
    return root


rationals = st.fractions(-50, 50, max_denominator=16)


@st.composite
def rational_pairs(draw):
    """(direction, x, W, b, μ, v, γ, β, ε, q) as numpy object arrays of Fractions, with v + ε = q² (q > 0)."""
    n_in, n_out, batch = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    direction = draw(st.sampled_from(["after", "before"]))
    dim = n_out if direction == "after" else n_in

    def array(*shape, elements=rationals):
        size = int(np.prod(shape))
        return np.array(draw(st.lists(elements, min_size=size, max_size=size)), dtype=object).reshape(shape)

    q = array(dim, elements=st.fractions(Fraction(1, 16), 16, max_denominator=16))
    eps = min(q) ** 2 * draw(st.fractions(Fraction(1, 100), 1, max_denominator=100))
    var = q * q - eps  # ≥ 0 since eps ≤ min(q)²
    return (direction, array(batch, n_in), array(n_in, n_out), array(n_out), array(dim), var, array(dim), array(dim),
            eps, q)


@given(rational_pairs())
@example(("after", *(np.array(v, dtype=object) for v in ([[Fraction(1)]], [[Fraction(2)]], [Fraction(0)],
                                                          [Fraction(3)])),
          np.array([Fraction(0)], dtype=object), np.array([Fraction(0)], dtype=object),
          np.array([Fraction(-1)], dtype=object),
          Fraction(1, 4), np.array([Fraction(1, 2)], dtype=object)))
def test_algebra_is_exact_in_rationals(case):
    """x·W' + b' = BN(x·W + b) (after) and x·W' + b' = BN(x)·W + b (before) exactly, for rationals with √(v + ε) ∈ ℚ.

    bn_affine, fold_after and fold_before use only + − · / and √; in ℚ none of them rounds, so
    the identity (z − μ)·γ/√(v+ε) + β = z·s + t, s = γ/√(v+ε), t = β − μs, holds with equality.
    """
    direction, x, W, b, mean, var, gm, beta, eps, q = case
    s, t = bn_affine(mean, var, gm, beta, eps, sqrt=np.vectorize(exact_sqrt, otypes=[object]))

    def bn(z):  # eval BatchNorm by its definition, with √(v + ε) = q
        return (z - mean) / q * gm + beta

    if direction == "after":
        W2, b2 = fold_after(W, b, s, t)
        unfolded = bn(x @ W + b)
    else:
        W2, b2 = fold_before(s, t, W, b)
        unfolded = bn(x) @ W + b
    assert (x @ W2 + b2).tolist() == unfolded.tolist()


@given(pair_cases(kinds=("torch",), directions=("after",)))
@example(PairCase(kind="torch", affine=False, var="zero", fan_in=1, fan_out=1, batch=1))
@example(PairCase(kind="torch", affine=True, bias=False, gamma="zero", fan_in=128, fan_out=128, batch=256, dtype=F64))
def test_agrees_with_torch_fuser(case):
    """|fuse_linear_bn_eval(L, B)(x) − ours(x)| ≤ B; with affine=False torch's fuser raises, ours is within B of BN∘L.

    torch's fused Linear is one more float evaluation of the same affine map, with at most n + 9
    roundings per term (scale: ε, v + ε, sqrt, reciprocal, ·γ; then W·scale, or (b − μ)·scale + β;
    then n + 1 in its forward), the count error_bound allows the unfolded pair.
    """
    model, x = case.sequential()
    linear, bn = model
    ours = fold_linear_bn(linear, bn)
    bound = error_bound(model, x)
    if not case.affine:  # pytorch/pytorch#122183: bn.weight is None
        with pytest.raises(TypeError):
            fuse_linear_bn_eval(linear, bn)
        reference = model
    else:
        reference = fuse_linear_bn_eval(linear, bn)
    with torch.no_grad():
        err = (reference(x).double() - ours(x).double()).abs()
    note(f"max err {err.max().item():.3e}, max bound {bound.max().item():.3e}, "
         f"max err/bound {worst_ratio(err, bound):.3e}")
    assert (err <= bound).all()


@given(pair_cases(dtypes=(F16, BF16), max_fan=32, max_batch=4))
@example(PairCase(dtype=F16, var="zero", eps=1e-8, fan_in=4, fan_out=4, bias=True, gamma="negative"))
@example(PairCase(dtype=BF16, direction="before", var="mixed", eps=1e-8, fan_in=32, fan_out=1))
def test_low_precision_is_float64_fold_cast_down(case):
    """fold(L, B) in float16/bfloat16 = cast(fold(float64 L, float64 B)) bit for bit, or FoldError iff that overflows.

    The fold widens the layers to float64 (exactly), folds there, and rounds once to the layer's
    dtype; values beyond the dtype's range would become ±inf, which the fold refuses instead.
    """
    linear, bn, _ = case.build()
    wide = fold_case(case, copy.deepcopy(linear).double(), copy.deepcopy(bn).double())
    W, b = wide.weight.detach().to(case.dtype), wide.bias.detach().to(case.dtype)
    fits = bool(torch.isfinite(W).all() and torch.isfinite(b).all())
    largest_W, largest_b = wide.weight.abs().max().item(), wide.bias.abs().max().item()
    note(f"float64 fold: max |W'| {largest_W:.3e}, max |b'| {largest_b:.3e}, fits {fits}")
    if not fits:
        with pytest.raises(FoldError, match=f"do not fit {case.dtype}"):
            fold_case(case, linear, bn)
        return
    folded = fold_case(case, linear, bn)
    assert torch.equal(folded.weight, W) and torch.equal(folded.bias, b)
