"""Laws of the notebook's layers: BatchNorm1d against torch's and against exact arithmetic, running stats, Linear.

Reference values come from exact rational statistics (fractions.Fraction), so each float64
result is compared with the true value, within a bound derived below from unit roundoff.
"""

import math
from typing import NamedTuple

import torch
from hypothesis import example, given, note
from hypothesis import strategies as st

from core import notebook
from core.engine.bound.rounding import U64, rounding_bound
from core.makemore.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh, layer_from_spec
from properties.exact import exact_stats, stat_errors
from properties.strategies.floats import floats_without_underflow, tensors


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
eps_st = st.floats(1e-8, 1e-1)
F64 = torch.float64


class Batch(NamedTuple):
    """A float64 batch x (n × d) and a BatchNorm's γ, β, ε and running statistics μ, v ≥ 0."""

    x: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    eps: float
    mean: torch.Tensor
    var: torch.Tensor


def batch(rows, gamma=None, beta=None, eps=1e-5, mean=None, var=None) -> Batch:
    """For @example: x from nested lists; γ = 1, β = 0, μ = 0, v = 1 unless given."""
    x = torch.tensor(rows, dtype=F64)

    def vector(values, default):
        return torch.full((x.shape[1],), default, dtype=F64) if values is None else torch.tensor(values, dtype=F64)

    return Batch(x, vector(gamma, 1.0), vector(beta, 0.0), eps, vector(mean, 0.0), vector(var, 1.0))


@st.composite
def batches(draw, min_rows=2):
    """x = centre + spread·z per column, every value drawn: centre ∈ [−1e3, 1e3], spread = 10^[−3, 3],
    z ∈ [−4, 4] (z = 0 everywhere gives a constant column), so some columns sit far from 0 relative to
    their spread; γ, β ∈ [−10, 10], running μ ∈ [−1e2, 1e2], v ∈ [0, 1e6]."""
    n, d = draw(st.integers(min_rows, 64)), draw(dims)
    centre = draw(tensors((d,), floats_without_underflow(-1e3, 1e3)))
    spread = 10 ** draw(tensors((d,), st.floats(-3, 3)))
    z = draw(tensors((n, d), floats_without_underflow(-4, 4)))
    gamma, beta = (draw(tensors((d,), floats_without_underflow(-10, 10))) for _ in range(2))
    mean = draw(tensors((d,), floats_without_underflow(-1e2, 1e2)))
    var = draw(tensors((d,), floats_without_underflow(0, 1e6)))
    return Batch(centre + spread * z, gamma, beta, draw(eps_st), mean, var)


# Edge cases pinned below: a constant column (zero variance), γ = 0, the smallest batch, huge and tiny magnitudes.
CONSTANT = batch([[1.0], [1.0]])
GAMMA_ZERO = batch([[1.0, -3.0], [2.0, 5.0], [4.0, 0.0]], gamma=[0.0, 0.0], beta=[1.5, -2.0])
HUGE = batch([[1e100, -3e99], [1.1e100, 2e99], [0.9e100, 1e99]], gamma=[1e50, -2.0], beta=[1e60, 0.0],
             mean=[1e100, 0.0], var=[1e198, 1e200])
TINY = batch([[1e-100, 0.0], [-2e-100, 3e-100]], gamma=[1e-50, 7.0], eps=1e-8, mean=[1e-100, 0.0], var=[0.0, 1e-100])


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


@given(batches(min_rows=1))
@example(batch([[3.0]], var=[0.0]))
@example(GAMMA_ZERO)
@example(HUGE)
@example(TINY)
def test_eval_equals_torch_eval(batch):
    """core.BatchNorm1d.eval()(x) = torch.nn.BatchNorm1d.eval()(x) bit for bit, given the same (μ, v, γ, β, ε).

    In eval both compute γ (x − μ) / sqrt(v + ε) + β from the running statistics with the
    same kernel; only training differs (unbiased vs biased variance).
    """
    x, gamma, beta, eps, mean, var = batch
    d = x.shape[1]
    ours = core_bn(d, gamma, beta, eps, mean, var).eval()(x)
    theirs = torch_bn(d, gamma, beta, eps, mean, var).eval()(x)
    assert torch.equal(ours, theirs)


@given(batches())
@example(CONSTANT)
@example(GAMMA_ZERO)
@example(HUGE)
@example(TINY)
def test_train_output_is_unbiased_normalisation(batch):
    """BN_train(x) = γ (x − mean(x)) / sqrt(Σ(x − mean)² / (n − 1) + ε) + β within the float64 bound.

    The seed normalises with the unbiased batch variance; the fused kernel gets the same value
    through sqrt(c)(x − m)/sqrt(v_b + cε) with c = (n−1)/n, which is exact algebra, so only
    rounding separates it from the exact value (bound: `normalise_bound`).
    """
    x, gamma, beta, eps, _, _ = batch
    n, d = x.shape
    mean, S = exact_stats(x)
    var = torch.tensor([float(s / (n - 1)) for s in S], dtype=torch.float64)
    y = core_bn(d, gamma, beta, eps).train()(x)
    err = (y - reference(x, mean, var, gamma, beta, eps)).abs()
    bound = normalise_bound(x, mean, S, n - 1, gamma, beta, eps)
    note(f"max err {err.max():.3e}, max err/bound {(err / bound.clamp_min(1e-300)).max():.3e}")
    assert (err <= bound).all()


@given(batches())
@example(CONSTANT)
@example(HUGE)
@example(TINY)
def test_train_relation_to_torch(batch):
    """(BN_ours(x) − β) = r ⊙ (BN_torch(x) − β) with r = sqrt((v_b + ε) / (v_u + ε)), v_b = S/n, v_u = S/(n−1).

    Both compute γ (x − m) / sqrt(v + ε) + β in training; torch divides S by n, the notebook by n − 1,
    so the centred outputs differ by exactly the per-column factor r (up to each one's rounding).
    """
    x, gamma, beta, eps, _, _ = batch
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
@example(CONSTANT, 1.0)
@example(HUGE, 0.1)
@example(TINY, 0.0)
def test_running_stats_update(batch, momentum):
    """running ← (1 − m)·running + m·batch_stat, for the mean and the unbiased variance, within the bound.

    This is the notebook's momentum update; the batch statistics carry the mean/variance errors
    of `normalise_bound`, and the update itself adds three roundings.
    """
    x, gamma, beta, eps, rm0, rv0 = batch
    n, d = x.shape
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


@given(batches(), st.booleans())
@example(CONSTANT, True)
def test_without_affine_is_gamma_one_beta_zero(batch, training):
    """BN(affine=False)(x) = BN(γ = 1, β = 0)(x) bit for bit, in training (running stats too) and in eval.

    Without affine parameters the notebook's layer scales by 1 and shifts by 0: the same kernel
    then gets a weight of ones (and no bias), which multiplies and adds exactly.
    """
    x, _, _, eps, mean, var = batch
    d = x.shape[1]
    plain = BatchNorm1d(d, eps=eps, affine=False, dtype=F64)
    ones = core_bn(d, torch.ones(d, dtype=F64), torch.zeros(d, dtype=F64), eps, mean, var)
    with torch.no_grad():
        plain.running_mean.copy_(mean)
        plain.running_var.copy_(var)
    assert plain.gamma is None and plain.beta is None and list(plain.parameters()) == []
    with torch.no_grad():
        assert torch.equal(plain.train(training)(x), ones.train(training)(x))
    assert torch.equal(plain.running_mean, ones.running_mean) and torch.equal(plain.running_var, ones.running_var)


def test_batchnorm_defaults_are_the_notebooks():
    """BatchNorm1d(d) has the notebook's ε = 1e-5, momentum = 0.1, affine, running μ = 0 and v = 1."""
    ours = BatchNorm1d(3)
    theirs = notebook.BatchNorm1d(torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3))
    assert (ours.eps, ours.momentum) == (theirs.eps, theirs.momentum) == (1e-5, 0.1)
    assert torch.equal(ours.gamma, theirs.gamma) and torch.equal(ours.beta, theirs.beta)
    assert torch.equal(ours.running_mean, torch.zeros(3)) and torch.equal(ours.running_var, torch.ones(3))


@given(st.integers(1, 32), st.integers(1, 32), st.booleans(), st.integers(0, 2**32 - 1))
@example(1, 1, True, 0)
def test_linear_draws_its_weights_from_its_generator(fan_in, fan_out, bias, seed):
    """Linear(fan_in, fan_out, generator=g): W = randn(fan_in, fan_out, generator=g) / √fan_in bit for bit, b = 0.

    The layer's only randomness is one randn draw of W's shape from the generator it is given, scaled
    by 1/√fan_in (the notebook's init); the bias, if any, starts at exactly 0. The seed here is the
    input of the law: a seed fixes the draw.
    """
    layer = Linear(fan_in, fan_out, bias, generator=torch.Generator().manual_seed(seed), dtype=F64)
    expected = torch.randn(fan_in, fan_out, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert torch.equal(layer.weight, expected / math.sqrt(fan_in))
    assert (layer.fan_in, layer.fan_out) == (fan_in, fan_out)
    if bias:
        assert torch.equal(layer.bias, torch.zeros(fan_out, dtype=F64))
    else:
        assert layer.bias is None


@st.composite
def linear_inputs(draw, max_fan=16, max_rows=8):
    """(x, W, b): x (rows × fan_in), W (fan_in × fan_out), b (fan_out) or None, every value drawn."""
    fan_in, fan_out, rows = draw(st.integers(1, max_fan)), draw(st.integers(1, max_fan)), draw(st.integers(1, max_rows))
    values = floats_without_underflow(-1e3, 1e3)
    b = draw(st.none() | tensors((fan_out,), values))
    return draw(tensors((rows, fan_in), values)), draw(tensors((fan_in, fan_out), values)), b


@given(linear_inputs())
@example((torch.tensor([[2.0]], dtype=F64), torch.tensor([[3.0]], dtype=F64), None))
@example((torch.tensor([[1e300, -1e300]], dtype=F64), torch.tensor([[1.0], [1.0]], dtype=F64),
          torch.tensor([1.0], dtype=F64)))  # cancellation: the bound is relative to Σ|x||W| + |b|, not to |y|
def test_linear_computes_the_notebook_product(case):
    """|Linear(x) − notebook.Linear(x)| ≤ 2γ(n+1)·(|x|·|W| + |b|) elementwise, W laid out (fan_in, fan_out).

    The notebook computes x @ W and then adds b; the layer one addmm. Each is within γ(n+1)·(|x||W| + |b|)
    of the exact x·W + b (n products and n additions, the bias's included, in any order), so they are
    within twice that of each other. The bound is computed in float64 too: its n + 3 roundings are
    paid by the factor 1 + γ(n+3).
    """
    x, W, b = case
    n = W.shape[0]
    with torch.no_grad():
        ours = Linear.from_tensors(W, b)(x)
    theirs = notebook.Linear(W, b)(x)
    bias = 0 if b is None else b.abs()
    bound = 2 * rounding_bound(n + 1, U64) * (x.abs() @ W.abs() + bias) * (1 + rounding_bound(n + 3, U64))
    note(f"max err {(ours - theirs).abs().max().item():.3e}, max bound {bound.max().item():.3e}")
    assert ours.shape == (x.shape[0], W.shape[1])
    assert ((ours - theirs).abs() <= bound).all()


@st.composite
def core_layers(draw):
    """(layer, the spec it was built from): a core Linear, BatchNorm1d, Tanh, ReLU or Sigmoid, float64."""
    kind = draw(st.sampled_from(["linear", "batchnorm", "tanh", "relu", "sigmoid"]))
    if kind == "linear":
        spec = {"type": kind, "fan_in": draw(st.integers(1, 8)), "fan_out": draw(st.integers(1, 8)),
                "bias": draw(st.booleans())}
        g = torch.Generator().manual_seed(0)
        return Linear(spec["fan_in"], spec["fan_out"], spec["bias"], generator=g, dtype=F64), spec
    if kind == "batchnorm":
        spec = {"type": kind, "dim": draw(st.integers(1, 8)), "eps": draw(eps_st), "momentum": draw(st.floats(0, 1)),
                "affine": draw(st.booleans())}
        return BatchNorm1d(spec["dim"], spec["eps"], spec["momentum"], spec["affine"], dtype=F64), spec
    return {"tanh": Tanh, "relu": ReLU, "sigmoid": Sigmoid}[kind](), {"type": kind}


@given(core_layers())
def test_spec_describes_the_layer_and_rebuilds_it(case):
    """L.spec() = the arguments L was built with, and layer_from_spec(L.spec()) ≅ L: same type, spec and state shapes.

    A checkpoint stores the specs and the state_dict; loading rebuilds each layer from its spec and
    then loads the tensors, so the rebuilt layer must accept exactly L's state_dict.
    """
    layer, spec = case
    assert layer.spec() == spec
    rebuilt = layer_from_spec(spec, dtype=F64)
    assert type(rebuilt) is type(layer) and rebuilt.spec() == spec
    state = layer.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in rebuilt.state_dict().items()} == {k: (v.shape, v.dtype)
                                                                               for k, v in state.items()}
    rebuilt.load_state_dict(state, strict=True)
    x = torch.linspace(-3, 3, 2 * spec.get("fan_in", spec.get("dim", 3)), dtype=F64).reshape(2, -1)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), layer.eval()(x))


def test_layers_describe_themselves():
    """repr shows what spec() holds; an unknown spec type and a one-row training batch are refused by name."""
    g = torch.Generator().manual_seed(0)
    assert repr(Linear(3, 5, bias=False, generator=g)) == "Linear(fan_in=3, fan_out=5, bias=False)"
    assert repr(Linear(2, 1, generator=g)) == "Linear(fan_in=2, fan_out=1, bias=True)"
    bn = BatchNorm1d(4, eps=1e-3, momentum=0.5, affine=False)
    assert repr(bn) == "BatchNorm1d(4, eps=0.001, momentum=0.5, affine=False)"
    try:
        layer_from_spec({"type": "conv1d"})
    except ValueError as e:
        assert str(e) == "unknown layer type 'conv1d'"
    else:
        raise AssertionError("layer_from_spec built an unknown layer")
    try:
        BatchNorm1d(2).train()(torch.ones(1, 2))
    except ValueError as e:
        assert str(e).startswith("BatchNorm1d in training needs a batch of at least 2 rows")
        assert str(e).endswith("; call .eval() to use running stats")
    else:
        raise AssertionError("a one-row batch was normalised in training")


@given(st.integers(1, 4), st.integers(1, 4), st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_layers_are_built_on_the_device_and_dtype_asked(fan_in, fan_out, flag, dtype):
    """Linear(..., dtype, device) and BatchNorm1d(..., dtype, device) hold every tensor in that dtype, on that device.

    Checked on the meta device, which every machine has: a tensor built anywhere else would show it.
    """
    linear = Linear(fan_in, fan_out, flag, generator=torch.Generator().manual_seed(0), dtype=dtype, device="meta")
    bn = BatchNorm1d(fan_out, affine=flag, dtype=dtype, device="meta")
    tensors_ = list(linear.parameters()) + list(bn.parameters()) + list(bn.buffers())
    assert len(tensors_) == (2 if flag else 1) + (2 if flag else 0) + 2
    assert all(t.device.type == "meta" and t.dtype == dtype for t in tensors_)
