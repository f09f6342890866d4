"""Laws of the notebook's layers: BatchNorm1d against torch's and against exact arithmetic, running stats, Linear.

Reference values come from exact rational statistics (fractions.Fraction), so each float64
result is compared with the true value, within a bound derived below from unit roundoff.
"""

import math
from fractions import Fraction

import torch
from hypothesis import example, given, note
from hypothesis import strategies as st

from core.bound import U64, rounding_bound
from core.layers import BatchNorm1d, Linear


def exact_stats(x: torch.Tensor):
    """Per column: exact mean m and exact S = Σ (x − m)², as Fractions of the float64 inputs."""
    cols = [[Fraction(v) for v in col] for col in x.T.tolist()]
    means = [sum(c) / len(c) for c in cols]
    return means, [sum((v - m) ** 2 for v in c) for c, m in zip(cols, means)]


def stat_errors(x, S, divisor):
    """(Δm, Δv): bounds on the float64 errors of the batch mean and of the variance S / divisor.

    With a = max|x|, ‖x‖ the column's 2-norm and n rows, a backward-stable mean has
    |m̂ − m| ≤ γ(n+1)·a, and two-pass or Welford variance has
    |Ŝ − S| ≤ γ(n+3)·(S + ‖x‖·√S) + n·(γ(n+1)·a)² (Chan, Golub & LeVeque; the last term is the
    second-order effect of the mean's error), plus one rounding for the division.
    """
    n = x.shape[0]
    S = torch.tensor([float(v) for v in S], dtype=torch.float64)
    dm = rounding_bound(n + 1, U64) * x.abs().amax(0)
    dv = (rounding_bound(n + 3, U64) * (S + x.norm(dim=0) * S.sqrt()) + n * dm**2) / divisor + U64 * S / divisor
    return dm, dv


def normalise_bound(x, mean, S, divisor, gamma, beta, eps):
    """Bound on |ŷ − y| for y = γ (x − m) / sqrt(S / divisor + ε) + β with batch statistics, in float64.

    From `stat_errors`: |ŝ − s| ≤ Δv / s + 2u·s for s = √(v+ε), |d̂ − d| ≤ 2·Δm + u·|d| for
    d = x − m, and the quotient, scale and shift add |γ|·(|d̂−d| / ŝ + |d|·|ŝ−s| / (s·ŝ)) +
    8u·(|γ d / s| + |β|) (rounding of the products, the sqrt, and the fused kernel's rescaled
    γ and ε).
    """
    dm, dv = stat_errors(x, S, divisor)
    var = torch.tensor([float(v / divisor) for v in S], dtype=torch.float64)
    s = (var + eps).sqrt()
    ds = dv / s + 2 * U64 * s
    s_lo = (s - ds).clamp_min(s / 2)
    d = (x - torch.tensor([float(v) for v in mean], dtype=torch.float64)).abs()
    g = gamma.abs()
    return g * ((2 * dm + U64 * d) / s_lo + d * ds / (s * s_lo)) + 8 * U64 * (g * d / s + beta.abs())


def reference(x, mean, var, gamma, beta, eps):
    """γ (x − m) / sqrt(v + ε) + β from the exact statistics rounded once: its own few roundings
    fit inside the bound's 8u slack and its Δm ≥ 2u·max|x| term."""
    m = torch.tensor([float(v) for v in mean], dtype=torch.float64)
    return gamma * (x - m) / (var + eps).sqrt() + beta


dims = st.integers(1, 8)
rows = st.integers(2, 64)
eps_st = st.floats(1e-8, 1e-1)


@st.composite
def batches(draw, min_rows=2):
    """(x, gamma, beta, eps): columns with random centre and spread, so some are badly centred."""
    n, d = draw(st.integers(min_rows, 64)), draw(dims)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    centre = draw(st.floats(-1e3, 1e3))
    spread = 10 ** draw(st.floats(-3, 3))
    x = centre + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    gamma = torch.randn(d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.0, 0.1, 1.0, 10.0]))
    beta = torch.randn(d, generator=g, dtype=torch.float64)
    return x, gamma, beta, draw(eps_st)


def core_bn(d, gamma, beta, eps, mean=None, var=None):
    bn = BatchNorm1d(d, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        bn.gamma.copy_(gamma)
        bn.beta.copy_(beta)
        if mean is not None:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    return bn


def torch_bn(d, gamma, beta, eps, mean=None, var=None):
    bn = torch.nn.BatchNorm1d(d, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
        if mean is not None:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    return bn


@given(batches(min_rows=1), st.floats(1e-6, 1e6))
def test_eval_equals_torch_eval(batch, var_scale):
    """core.BatchNorm1d.eval()(x) = torch.nn.BatchNorm1d.eval()(x) bit for bit, given the same (μ, v, γ, β, ε).

    In eval both compute γ (x − μ) / sqrt(v + ε) + β from the running statistics with the
    same kernel; only training differs (unbiased vs biased variance).
    """
    x, gamma, beta, eps = batch
    d = x.shape[1]
    g = torch.Generator().manual_seed(d)
    mean = torch.randn(d, generator=g, dtype=torch.float64) * 100
    var = torch.rand(d, generator=g, dtype=torch.float64) * var_scale
    ours = core_bn(d, gamma, beta, eps, mean, var).eval()(x)
    theirs = torch_bn(d, gamma, beta, eps, mean, var).eval()(x)
    assert torch.equal(ours, theirs)


@given(batches())
@example((torch.tensor([[1.0], [1.0]], dtype=torch.float64), torch.ones(1, dtype=torch.float64),
          torch.zeros(1, dtype=torch.float64), 1e-5))
def test_train_output_is_unbiased_normalisation(batch):
    """BN_train(x) = γ (x − mean(x)) / sqrt(Σ(x − mean)² / (n − 1) + ε) + β within the float64 bound.

    The seed normalises with the unbiased batch variance; the fused kernel gets the same value
    through sqrt(c)(x − m)/sqrt(v_b + cε) with c = (n−1)/n, which is exact algebra, so only
    rounding separates it from the exact value (bound: `normalise_bound`).
    """
    x, gamma, beta, eps = batch
    n, d = x.shape
    mean, S = exact_stats(x)
    var = torch.tensor([float(s / (n - 1)) for s in S], dtype=torch.float64)
    y = core_bn(d, gamma, beta, eps).train()(x)
    err = (y - reference(x, mean, var, gamma, beta, eps)).abs()
    bound = normalise_bound(x, mean, S, n - 1, gamma, beta, eps)
    note(f"max err {err.max():.3e}, max err/bound {(err / bound.clamp_min(1e-300)).max():.3e}")
    assert (err <= bound).all()


@given(batches())
def test_train_relation_to_torch(batch):
    """(BN_ours(x) − β) = r ⊙ (BN_torch(x) − β) with r = sqrt((v_b + ε) / (v_u + ε)), v_b = S/n, v_u = S/(n−1).

    Both compute γ (x − m) / sqrt(v + ε) + β in training; torch divides S by n, the notebook by n − 1,
    so the centred outputs differ by exactly the per-column factor r (up to each one's rounding).
    """
    x, gamma, beta, eps = batch
    n, d = x.shape
    mean, S = exact_stats(x)
    v_u = torch.tensor([float(s / (n - 1)) for s in S], dtype=torch.float64)
    v_b = torch.tensor([float(s / n) for s in S], dtype=torch.float64)
    r = ((v_b + eps) / (v_u + eps)).sqrt()
    ours = core_bn(d, gamma, beta, eps).train()(x)
    theirs = torch_bn(d, gamma, beta, eps).train()(x)
    b_ours = normalise_bound(x, mean, S, n - 1, gamma, beta, eps)
    b_theirs = normalise_bound(x, mean, S, n, gamma, beta, eps)
    lhs, rhs = ours - beta, r * (theirs - beta)
    # r itself carries ≤ 4u relative error (two roundings of v, a quotient, a sqrt); subtracting β adds u·|β|.
    bound = b_ours + r * b_theirs + 4 * U64 * rhs.abs() + 2 * U64 * beta.abs()
    err = (lhs - rhs).abs()
    note(f"max err {err.max():.3e}, max bound {bound.max():.3e}")
    assert (err <= bound).all()


@given(batches(), st.floats(0.0, 1.0))
def test_running_stats_update(batch, momentum):
    """running ← (1 − m)·running + m·batch_stat, for the mean and the unbiased variance, within the bound.

    This is the notebook's momentum update; the batch statistics carry the mean/variance errors
    of `normalise_bound`, and the update itself adds three roundings.
    """
    x, gamma, beta, eps = batch
    n, d = x.shape
    g = torch.Generator().manual_seed(n * 31 + d)
    rm0 = torch.randn(d, generator=g, dtype=torch.float64)
    rv0 = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    bn = core_bn(d, gamma, beta, eps, rm0, rv0)
    bn.momentum = momentum
    bn.train()(x)
    mean, S = exact_stats(x)
    m = torch.tensor([float(v) for v in mean], dtype=torch.float64)
    v = torch.tensor([float(s / (n - 1)) for s in S], dtype=torch.float64)
    dm, dv = stat_errors(x, S, n - 1)
    exp_m = (1 - momentum) * rm0 + momentum * m
    exp_v = (1 - momentum) * rv0 + momentum * v
    bound_m = momentum * dm + 4 * U64 * ((1 - momentum) * rm0.abs() + momentum * m.abs())
    bound_v = momentum * dv + 4 * U64 * ((1 - momentum) * rv0.abs() + momentum * v.abs())
    note(f"mean err {(bn.running_mean - exp_m).abs().max():.3e}, var err {(bn.running_var - exp_v).abs().max():.3e}")
    assert ((bn.running_mean - exp_m).abs() <= bound_m).all()
    assert ((bn.running_var - exp_v).abs() <= bound_v).all()


@given(st.integers(1, 32), st.integers(1, 32), st.booleans(), st.integers(0, 2**32 - 1))
def test_linear_matches_matmul(fan_in, fan_out, bias, seed):
    """Linear(x) = x @ W + b with W of shape (fan_in, fan_out), W ~ randn/sqrt(fan_in) from the generator, b = 0.

    The same generator seed draws the same weights; the layer is the notebook's x @ W (+ b).
    Float64 dot products of k terms: |fl(x·w) − x·w| ≤ γ(k+1)·Σ|x||w| (the bias adds one term).
    """
    g = torch.Generator().manual_seed(seed)
    layer = Linear(fan_in, fan_out, bias, generator=g, dtype=torch.float64)
    expected_w = torch.randn(fan_in, fan_out, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / math.sqrt(fan_in)
    assert torch.equal(layer.weight, expected_w)
    assert (layer.bias is None) == (not bias)
    with torch.no_grad():
        if bias:
            layer.bias.copy_(torch.randn(fan_out, generator=g, dtype=torch.float64))
        x = torch.randn(5, fan_in, generator=g, dtype=torch.float64)
        y = layer(x)
        exact = x @ layer.weight + (layer.bias if bias else 0)
        bound = rounding_bound(fan_in + 1, U64) * (x.abs() @ layer.weight.abs() + (layer.bias.abs() if bias else 0))
    assert ((y - exact).abs() <= 2 * bound).all()
