"""The certified error bound of folding: rounding model, per-pair factor, propagation rules, whole-model bound.

Floating point follows the standard model fl(a ∘ b) = (a ∘ b)(1 + δ), |δ| ≤ u. A term that passes
through k roundings is off by at most γ(k)·|term|. docs/design.md derives the constants of the
Linear/BatchNorm1d case: the pair factor ρ (`pair_factor`), the rules of the notebook's layers, the
whole-model sum (`error_bound`) and the loss bound (`loss_bound`); docs/design-conv.md derives the
rest: convolutions and their fan-in, channelwise BatchNorms, pooling, the ReLU family, hard and
smooth gates, and the graph rules (add, mul, mean, moves) that carry a bound through any traced model.

Each layer kind names its rule in `core.engine.kinds`; a function or method in a traced graph is read as the
layer it computes (`FUNCTION_LAYERS`, `METHOD_LAYERS`) or has a graph rule of its own (`GRAPH_RULES`).
"""

import contextlib
import contextvars
import math
import operator
import sys

import torch
import torch.nn.functional as F
from torch import fx, nn

from core.errors import FoldError
from core.engine.graph import model_graph
from core.engine.kinds import KINDS, ConvKind, hooked
from core.makemore.model import CharMLP
from core.engine.algebra import AFTER, check_norm, f64, norm_affine, norm_terms


def ieee_unit_roundoff(dtype: torch.dtype) -> float:
    """u = ε/2 of `dtype` under IEEE round to nearest: 2⁻²⁴ for float32, 2⁻⁵³ for float64."""
    return torch.finfo(dtype).eps / 2


U64 = ieee_unit_roundoff(torch.float64)  # float64, in which folds are computed
U32 = ieee_unit_roundoff(torch.float32)  # float32 whatever torch's matmul settings
ETA64 = 2.0**-1074  # the smallest float64 subnormal: the most a float64 product or quotient loses to underflow
TINY64 = torch.finfo(torch.float64).tiny  # added once to a bound: covers underflow in the bound's own evaluation
BN_ROUNDINGS = 8  # roundings on any term of an eval BatchNorm
BOUND_C = BN_ROUNDINGS + 1  # c of γ(n + c): the BN's roundings plus one for the Linear's bias
FOLD_ROUNDINGS = 6  # float64 roundings on any term of a folded weight or bias (plus n for t·W)
ACTIVATION_ROUNDINGS = 8  # tanh and sigmoid kernels are within 4 ulp, i.e. 8u relative
GATE_ROUNDINGS = ACTIVATION_ROUNDINGS + 8  # x·φ(x) gates (SiLU, GELU): a 4-ulp kernel, then ≤ 8 roundings
SILU_SLOPE = 1.1  # sup |d/dx x·σ(x)| = 1.0998... (docs/design-conv.md)
GELU_SLOPE = 1.13  # sup |d/dx x·Φ(x)| = 1.1289..., and 1.1288... for the tanh form
SAFETY = 1 + 2.0**-30  # the bound is itself evaluated in float64: this covers its own rounding


def rounding_bound(k: float, u: float) -> float:
    """γ(k) = k·u / (1 − k·u): |Π(1 + δ_i)^(±1) − 1| ≤ γ(k) for k roundings |δ_i| ≤ u (Higham, Lemma 3.1)."""
    return k * u / (1 - k * u) if k * u < 1 else math.inf


REDUCED = {"tf32": 2.0**-10, "bf16": 2.0**-7}  # 2u of TF32 and of bfloat16
LEGACY_MATMUL = {"high": "tf32", "medium": "bf16"}  # torch.set_float32_matmul_precision's names


def _setting(read) -> str:
    """A float32 precision setting read by `read`, or "none" where torch refuses to read it: a process that sets
    both torch's legacy flags (allow_tf32, set_float32_matmul_precision) and the per-backend fp32_precision gets
    a RuntimeError from the legacy getters, and the per-backend settings then say what runs."""
    try:
        return read()
    except RuntimeError:
        return "none"


def _fp32_precision(backend: str, op: str) -> str:
    """torch.backends.<backend>.<op>.fp32_precision where this torch has it ('none' otherwise)."""
    return getattr(getattr(getattr(torch.backends, backend, None), op, None), "fp32_precision", "none")


def unit_roundoff(dtype: torch.dtype, device=None, conv: bool = False) -> float:
    """u of `dtype`; float32 matmuls (or convolutions, with `conv`) that any of torch's settings allows to run in
    TF32 or bfloat16 get 2u of the narrowest such format.

    Twice the narrower format's u makes each counted rounding cover two, which pays for the rounding of both
    operands of every product (TF32: u = 2^-11, bfloat16: u = 2^-8). The settings read: on the CPU, oneDNN's
    fp32_precision for the op and (matmuls) torch.get_float32_matmul_precision(); on CUDA, cuDNN's (convolutions,
    which run in TF32 while torch.backends.cudnn.allow_tf32 is True, the default) or cuBLAS's (matmuls:
    allow_tf32 and the float32 matmul precision).
    """
    u = ieee_unit_roundoff(dtype)
    if dtype != torch.float32:
        return u
    cuda = device is not None and torch.device(device).type == "cuda"
    if conv:
        settings = [_fp32_precision("cudnn" if cuda else "mkldnn", "conv")]
        if cuda:
            settings.append(_setting(lambda: "tf32" if torch.backends.cudnn.allow_tf32 else "none"))
    else:
        settings = [_fp32_precision("cuda" if cuda else "mkldnn", "matmul"),
                    _setting(lambda: LEGACY_MATMUL.get(torch.get_float32_matmul_precision(), "none"))]
        if cuda:
            settings.append(_setting(lambda: "tf32" if torch.backends.cuda.matmul.allow_tf32 else "none"))
    return max([u] + [REDUCED[s] for s in settings if s in REDUCED])


def underflow(dtype: torch.dtype) -> float:
    """η: the smallest subnormal of dtype, a bound on the absolute error of a product or quotient that underflows.

    With gradual underflow fl(a·b) = a·b(1 + δ) + η', |δ| ≤ u, |η'| ≤ η; sums of floats that underflow are
    exact. (Flush-to-zero, torch.set_flush_denormal(True), breaks this model: error_bound assumes it is off.)
    """
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


def convolves(layer: nn.Module) -> bool:
    """Whether torch's float32 convolution setting governs the layer's products (else its matmul setting)."""
    return isinstance(KINDS.get(type(layer)), ConvKind)


def pair_factor(n: int, direction: str, u: float) -> float:
    """ρ = γ(n + c) + (1 + γ₆₄(k))(1 + γ(n + 2)) − 1, k = 6 (+ n before): |unfolded_j − folded_j| ≤ ρ·M_j."""
    k = FOLD_ROUNDINGS + (n if direction != AFTER else 0)
    return rounding_bound(n + BOUND_C, u) + (1 + rounding_bound(k, U64)) * (1 + rounding_bound(n + 2, u)) - 1


def channelwise(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over dim 1 of an ndim-D tensor (N, C, *spatial)."""
    return v.reshape(-1, *([1] * (ndim - 2)))


def per_output(layer: nn.Module, v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-output vector of an affine layer, shaped for its ndim-D output: dim 1 for a conv, last for a Linear."""
    return channelwise(v, ndim) if isinstance(KINDS[type(layer)], ConvKind) else v


_MAGNITUDES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("magnitudes", default=None)


def absolute(t: torch.Tensor) -> torch.Tensor:
    """|t| in float64 on the CPU; within `magnitudes_kept()` computed once per tensor (error_bound reads each weight
    once per fold upstream of it)."""
    kept = _MAGNITUDES.get()
    if kept is None:
        return f64(t).abs()
    if id(t) not in kept:
        kept[id(t)] = (t, f64(t).abs())  # t itself is held too, so no other tensor takes its id meanwhile
    return kept[id(t)][1]


@contextlib.contextmanager
def magnitudes_kept():
    """Within it, `absolute` computes |t| once per tensor and keeps it (until the block ends)."""
    token = _MAGNITUDES.set({})
    try:
        yield
    finally:
        _MAGNITUDES.reset(token)


def pair_magnitude(layer: nn.Module, bn: nn.Module, direction: str, x: torch.Tensor) -> torch.Tensor:
    """M_j: the sum of the magnitudes of the terms of output j of the unfolded pair, in float64.

    after:  M_j = |s_j|·(Σ_i |x_i||W_ij| + |b_j| + |μ_j|) + |β_j|
    before: M_j = Σ_i (|x_i||s_i| + |μ_i s_i| + |β_i|)·|W_ij| + |b_j|
    where Σ_i runs over a conv's patch, and before a Linear through a Flatten over every flattened input.
    """
    kind = KINDS[type(layer)]
    mean, _, _, beta, _ = norm_terms(bn)
    s = norm_affine(bn)[0].abs()
    W, b = absolute(layer.weight), kind.bias(layer)
    b = W.new_zeros(kind.channels(layer)[1]) if b is None else absolute(b)
    ax = f64(x).abs()
    if direction == AFTER:
        z = kind.linear_map(layer, ax, W)
        return per_output(layer, s, z.ndim) * (z + per_output(layer, b + mean.abs(), z.ndim)) \
            + per_output(layer, beta.abs(), z.ndim)
    m = ax * channelwise(s, ax.ndim) + channelwise((mean * s).abs() + beta.abs(), ax.ndim)
    if not isinstance(kind, ConvKind):  # a Linear, perhaps after a Flatten
        m = m.flatten(1)
    z = kind.linear_map(layer, m, W)
    return z + per_output(layer, b, z.ndim)


def pair_underflow(linear: nn.Module, bn: nn.Module, x: torch.Tensor) -> float:
    """A: what underflow adds to |unfolded_j − folded_j|, with η = `underflow(dtype)`, n the terms per output:

    A = η·(2n(2 + max|s|) + 2·8·(1 + max_j Σ_i |W_ij|) + n·max|x| + 1): n products of 2η each on both sides (after
    the BN's |s| on the unfolded side), the BN's 8 roundings (through |W| when it comes first), and each folded
    weight and bias cast down to the layer's dtype off by η on top of its rounding (times |x_i|).
    """
    n = KINDS[type(linear)].terms(linear)
    s = norm_affine(bn)[0].abs().max().item() if len(bn.running_mean) else 0.0
    W = absolute(linear.weight)
    rows = f64(KINDS[type(linear)].blocks(linear)).abs().sum(-2).max().item() if W.numel() else 0.0
    largest = f64(x).abs().max().item() if x.numel() else 0.0
    return underflow(x.dtype) * (2 * n * (2 + s) + 2 * BN_ROUNDINGS * (1 + rows) + n * largest + 1)


def pair_bound(linear: nn.Module, bn: nn.Module, direction: str, x: torch.Tensor) -> torch.Tensor:
    """ρ·M_j + A: the bound on |unfolded_j − folded_j| for one pair at input x."""
    n = KINDS[type(linear)].terms(linear)
    u = unit_roundoff(x.dtype, x.device, convolves(linear))
    return pair_factor(n, direction, u) * pair_magnitude(linear, bn, direction, x) \
        + pair_underflow(linear, bn, x)


# Propagation: |layer(x̂) − layer(x̂')| given |x̂ − x̂'| ≤ D, for a layer both models share. Each side is its
# exact value plus its own rounding; the exact values differ by at most the map's slope times D, and
# x̂' is bounded by |x̂| + D. Every rule takes (layer, x̂ in float64, D, u, η); η (`underflow`) is the most
# a product or quotient that underflows loses, added once per such operation on each side.

def _affine_rule(layer, x64, D, u, eta):
    """Linear and conv: (1 + g)·|W|D + 2g·(|W||x̂| + |b|), g = γ(n + 1), as one map of (1 + g)D + 2g|x̂|."""
    kind = KINDS[type(layer)]
    n = kind.terms(layer)
    g = rounding_bound(n + 1, u)
    out = kind.linear_map(layer, (1 + g) * D + 2 * g * x64.abs(), absolute(layer.weight)) + 4 * n * eta
    b = kind.bias(layer)
    return out if b is None else out + 2 * g * per_output(layer, absolute(b), out.ndim)


def _batchnorm_rule(layer, x64, D, u, eta):
    mean, _, _, beta, _ = norm_terms(layer)
    s = norm_affine(layer)[0].abs()
    s, mean, beta = (channelwise(v, x64.ndim) for v in (s, mean, beta))
    g = rounding_bound(BN_ROUNDINGS, u)
    return (1 + g) * s * D + 2 * g * (s * (x64.abs() + mean.abs()) + beta.abs()) + 2 * BN_ROUNDINGS * eta


def _tanh_rule(layer, x64, D, u, eta):
    """tanh' = 1/cosh², largest on [|x̂| − D, |x̂| + D] at its point nearest 0; |tanh a| ≤ min(1, |a|), so the exact
    outputs also differ by at most 2."""
    ax = x64.abs()
    near0 = (ax - D).clamp(min=0)
    return ((D / near0.cosh() ** 2).clamp(max=2) + ACTIVATION_ROUNDINGS * u * (ax.clamp(max=1) + (ax + D).clamp(max=1))
            + 2 * ACTIVATION_ROUNDINGS * eta)


def _sigmoid_rule(layer, x64, D, u, eta):
    """σ' = σ(a)σ(−a), largest at the point of [|x̂| − D, |x̂| + D] nearest 0; σ ∈ [0, 1], so the exact outputs also
    differ by at most 1."""
    near0 = (x64.abs() - D).clamp(min=0)
    return (D * near0.sigmoid() * (-near0).sigmoid()).clamp(max=1) + 2 * ACTIVATION_ROUNDINGS * u + 2 * eta


def _relu_rule(layer, x64, D, u, eta):
    """Exact; both inputs are ≤ 0, so both outputs 0, where x̂ + D ≤ 0."""
    return torch.where(x64 + D <= 0, 0.0, D)


def _hardtanh_rule(layer, x64, D, u, eta):
    """clamp(·, lo, hi) is exact and 1-Lipschitz, its outputs differ by at most hi − lo, and are equal where both
    inputs are ≤ lo or both ≥ hi."""
    lo, hi = thresholds(layer.min_val, min), thresholds(layer.max_val, max)
    flat = (x64 + D <= lo) | (x64 - D >= hi)
    return torch.where(flat, 0.0, D.clamp(max=hi - lo))


def thresholds(value: float, pick) -> float:
    """The threshold a kernel compares with, rounded to whichever float dtype the input has: `pick` (min for a lower
    threshold, max for an upper one) of its roundings, so a flat region is claimed only where it is flat in each."""
    return pick(torch.tensor(value, dtype=t).double().item() for t in (torch.float64, torch.float32, torch.float16,
                                                                         torch.bfloat16))


def _leaky_relu_rule(layer, x64, D, u, eta):
    """Slope max(1, |a|); a·x is one rounding, u·|a||x| on each side; a as large as the kernel's dtype rounds it."""
    a = thresholds(abs(layer.negative_slope), max)
    return max(1.0, a) * D + u * a * (2 * x64.abs() + D) + 2 * eta


def _hardswish_rule(layer, x64, D, u, eta):
    """f = x·relu6(x + 3)/6: f' = (2x + 3)/6 on (−3, 3), 0 below, 1 above; |f'| is convex on [−3, 3], so its
    largest value on [x̂ − D, x̂ + D] is at an end clamped to [−3, 3]; 0 where x̂ + D ≤ −3. |f(x)| ≤ |x|. The upper end
    needs neither the clamp at −3 nor |·|: it counts only where x̂ + D > −3, and below −3/2 the lower end is larger."""
    slope = torch.maximum(((2 * (x64 - D).clamp(-3, 3) + 3) / 6).abs(), (2 * (x64 + D).clamp(max=3) + 3) / 6)
    slope = torch.where(x64 + D <= -3, 0.0, slope)
    return slope * D + rounding_bound(ACTIVATION_ROUNDINGS, u) * (2 * x64.abs() + D) + 2 * ACTIVATION_ROUNDINGS * eta


def _hardsigmoid_rule(layer, x64, D, u, eta):
    """f = relu6(x + 3)/6: slope 1/6 where [x̂ − D, x̂ + D] meets (−3, 3), else both outputs equal; f ∈ [0, 1]."""
    flat = (x64 + D <= -3) | (x64 - D >= 3)
    return torch.where(flat, 0.0, (D / 6).clamp(max=1)) + 2 * ACTIVATION_ROUNDINGS * u + 2 * eta


def _gate(slope, x64, D, u, eta):
    """x·φ(x) with sup |f'| ≤ slope and |f(x)| ≤ |x|: slope·D + γ(16)·(|x̂| + |x̂'|) (SiLU, GELU)."""
    return slope * D + rounding_bound(GATE_ROUNDINGS, u) * (2 * x64.abs() + D) + 2 * GATE_ROUNDINGS * eta


def _silu_rule(layer, x64, D, u, eta):
    return _gate(SILU_SLOPE, x64, D, u, eta)


def _gelu_rule(layer, x64, D, u, eta):
    return _gate(GELU_SLOPE, x64, D, u, eta)


def _identity_rule(layer, x64, D, u, eta):
    return D


def _dropout_rule(layer, x64, D, u, eta):
    if layer.training:
        raise TypeError("error_bound needs Dropout in eval mode (in training it is random): call model.eval()")
    return D


def _max_pool_rule(layer, x64, D, u, eta):
    """Exact: |max_w a − max_w a'| ≤ max_w |a − a'|, so the same pooling of D bounds it (a window of padding
    alone is −∞ on both sides: 0)."""
    return layer(D).clamp(min=0)


def _kernel_volume(layer) -> int:
    """The number of values an average pooling window holds (AvgPool2d/3d keep a one-int kernel as an int)."""
    k = layer.kernel_size
    return math.prod(k) if isinstance(k, tuple | list) else k ** (2 if isinstance(layer, nn.AvgPool2d) else 3)


def _avg_pool_rule(layer, x64, D, u, eta):
    """Sum of N ≤ kernel-volume terms and a division: (1 + g)·avg(D) + 2g·avg(|x̂|), g = γ(N + 1)."""
    g = rounding_bound(_kernel_volume(layer) + 1, u)
    return layer((1 + g) * D + 2 * g * x64.abs()) + 4 * eta


def adaptive_window(size: int, out: int | None) -> int:
    """The largest window of adaptive pooling from `size` to `out`: max_i ⌈(i+1)·size/out⌉ − ⌊i·size/out⌋."""
    out = size if out is None else out
    return max(-(-(i + 1) * size // out) - (i * size) // out for i in range(out))


def _adaptive_avg_pool_rule(layer, x64, D, u, eta):
    """As avg_pool, with N the largest window (`adaptive_window` per spatial dim)."""
    spatial = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}[type(layer)]
    sizes = layer.output_size if isinstance(layer.output_size, tuple | list) else (layer.output_size,) * spatial
    N = math.prod(adaptive_window(n, o) for n, o in zip(x64.shape[-spatial:], sizes))
    g = rounding_bound(N + 1, u)
    return layer((1 + g) * D + 2 * g * x64.abs()) + 4 * eta


def _move_rule(layer, x64, D, u, eta):
    """Flatten copies values: the same flatten of D bounds the difference exactly."""
    return layer(D)


RULES = {"linear": _affine_rule, "conv": _affine_rule, "batchnorm": _batchnorm_rule, "tanh": _tanh_rule,
         "sigmoid": _sigmoid_rule, "relu": _relu_rule, "hardtanh": _hardtanh_rule, "leaky_relu": _leaky_relu_rule,
         "hardswish": _hardswish_rule, "hardsigmoid": _hardsigmoid_rule, "silu": _silu_rule,
         "gelu": _gelu_rule, "identity": _identity_rule, "dropout": _dropout_rule,
         "max_pool": _max_pool_rule, "avg_pool": _avg_pool_rule, "adaptive_avg_pool": _adaptive_avg_pool_rule,
         "move": _move_rule}


def propagate(layer: nn.Module, x: torch.Tensor, D: torch.Tensor, name: str) -> torch.Tensor:
    """Bound on |layer(x̂) − layer(x̂')| given |x̂ − x̂'| ≤ D, by the rule its kind names."""
    kind = KINDS.get(type(layer))
    if kind is None or kind.rule not in RULES:
        raise TypeError(f"error_bound has no error model for {name}: add its kind to core.engine.kinds and its rule "
                        f"to core.engine.bound.RULES")
    if kind.rule == "batchnorm":
        check_norm(layer, name)
    return RULES[kind.rule](layer, f64(x), D, unit_roundoff(x.dtype, x.device, convolves(layer)), underflow(x.dtype))


# Functions and methods of a traced graph, read as the layer they compute: call(*rest) -> that layer.

FUNCTION_LAYERS = {
    F.relu: lambda inplace=False: nn.ReLU(), torch.relu: nn.ReLU, torch.relu_: nn.ReLU,
    F.relu6: lambda inplace=False: nn.ReLU6(),
    F.hardtanh: lambda min_val=-1.0, max_val=1.0, inplace=False: nn.Hardtanh(min_val, max_val),
    F.leaky_relu: lambda negative_slope=0.01, inplace=False: nn.LeakyReLU(negative_slope),
    F.hardswish: lambda inplace=False: nn.Hardswish(), F.hardsigmoid: lambda inplace=False: nn.Hardsigmoid(),
    F.silu: lambda inplace=False: nn.SiLU(), F.gelu: lambda approximate="none": nn.GELU(approximate),
    torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid, torch.tanh: nn.Tanh, F.tanh: nn.Tanh,
    F.dropout: lambda p=0.5, training=True, inplace=False: nn.Dropout(p).train(training),
    torch.flatten: lambda start_dim=0, end_dim=-1: nn.Flatten(start_dim, end_dim),
    F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d,
    F.adaptive_max_pool1d: nn.AdaptiveMaxPool1d, F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
    F.adaptive_max_pool3d: nn.AdaptiveMaxPool3d,
    F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
    F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d, F.avg_pool3d: nn.AvgPool3d,
}
METHOD_LAYERS = {
    "relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid, "tanh": nn.Tanh,
    "tanh_": nn.Tanh, "flatten": lambda start_dim=0, end_dim=-1: nn.Flatten(start_dim, end_dim),
}


# Graph rules: ops with several inputs, or that move values around. Each takes what it reads of (args, kwargs, Ds,
# u, η), where args are the call's values (x̂ side) and Ds the same structure with a bound (float64) or None (no
# difference).

def _add_rule(args, kwargs, Ds, u):
    """a + b (or a − b): (1 + u)(D_a + D_b) + 2u(|â| + |b̂|): one rounding of |a ± b| ≤ |a| + |b| per side."""
    if kwargs.get("alpha", 1) != 1:
        raise TypeError("error_bound models add/sub without alpha")
    a, b, Da, Db = _magnitude(args[0]), _magnitude(args[1]), _or_zero(Ds[0]), _or_zero(Ds[1])
    return (1 + u) * (Da + Db) + 2 * u * (a + b)


def _mul_rule(args, Ds, u, eta):
    """a·b: |â|D_b + |b̂|D_a + D_aD_b, plus one rounding of |ab| per side, the other's ≤ (|â| + D_a)(|b̂| + D_b)."""
    a, b, Da, Db = _magnitude(args[0]), _magnitude(args[1]), _or_zero(Ds[0]), _or_zero(Ds[1])
    return a * Db + b * Da + Da * Db + u * (a * b + (a + Da) * (b + Db)) + 2 * eta


def _mean_rule(args, kwargs, Ds, u, eta):
    """mean over N elements is a sum and a division: (1 + g)·mean(D) + 2g·mean(|x̂|), g = γ(N + 1)."""
    x, rest = args[0], args[1:]
    out = x.mean(*rest, **kwargs)
    N = x.numel() // max(out.numel(), 1)
    g = rounding_bound(N + 1, u)
    return ((1 + g) * Ds[0] + 2 * g * f64(x).abs()).mean(*rest, **kwargs) + 4 * eta


def _stochastic_depth_arguments(input, p, mode, training=True):
    """p and training of a call to torchvision's stochastic_depth(input, p, mode, training=True), however passed."""
    return p, training


def _stochastic_depth_rule(args, kwargs, Ds):
    """torchvision's stochastic_depth(x, p, mode, training) is x itself when not training or p = 0."""
    p, training = _stochastic_depth_arguments(*args, **kwargs)
    if training and p > 0:
        raise TypeError("error_bound needs stochastic_depth in eval mode (in training it is random): call model.eval()")
    return Ds[0]


def _magnitude(v):
    return f64(v).abs() if isinstance(v, torch.Tensor) else torch.tensor(abs(float(v)), dtype=torch.float64)


def _or_zero(d):
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


def _is_stochastic_depth(target) -> bool:
    """target is torchvision's stochastic_depth (a model that calls it has imported torchvision)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    return module is not None and target is module.stochastic_depth


def _zeros_like(value):
    """A zero bound shaped like a value: a tensor, a tuple or list of values, or 0 for any other value."""
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=torch.float64)
    if isinstance(value, tuple | list):
        return type(value)(_zeros_like(v) for v in value)
    return 0  # a value that is no tensor (a size, a flag) is the same in both models


def propagate_node(graph, node: fx.Node, modules: dict, env: dict, Ds: dict):
    """Bound on the difference at node given the bounds Ds at its inputs (None: no difference), or None.

    A bound that overflows float64 is +inf, still a bound; a rule meeting one may compute ∞·0 = nan, which
    becomes +inf too, so a bound is never nan.
    """
    return _no_nan(_propagate_node(graph, node, modules, env, Ds))


def _no_nan(D):
    """D with nan made +inf (a tuple of bounds comes from a move of D, which makes no nan of its own)."""
    return torch.where(D.isnan(), math.inf, D) if isinstance(D, torch.Tensor) else D


def _propagate_node(graph, node: fx.Node, modules: dict, env: dict, Ds: dict):
    if node.target in RANDOM:
        raise TypeError(f"error_bound needs a model without random ops, but {graph.describe(node)} (node "
                        f"'{node.name}') draws random numbers, which differ between the two models: call "
                        f"model.eval() (random layers such as Dropout and stochastic depth are the identity in eval)")
    inputs = node.all_input_nodes
    if not any(Ds.get(a) is not None for a in inputs):
        return None
    op, target = node.op, node.target
    if op == "call_method" and target in META_METHODS or op == "call_function" and target in SHAPE_ONLY or \
            op == "call_function" and target is getattr and node.args[1] in META_ATTRIBUTES:
        return None  # shapes and types, and tensors made from them alone: the same in both models
    if op == "output":
        return fx.node.map_aggregate(node.args[0], lambda a: _bound_or_zero(a, env, Ds))
    name = graph.name(target) if op == "call_module" else f"{graph.describe(node)} (node '{node.name}')"
    args = fx.node.map_arg(node.args, env.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
    arg_D = tuple(Ds.get(a) if isinstance(a, fx.Node) else None for a in node.args)
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    u = unit_roundoff(first.dtype, first.device) if first is not None else U64
    eta = underflow(first.dtype) if first is not None else ETA64
    if op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            raise TypeError(f"error_bound has no error model for {name} called with more than one input")
        if hooked(modules[target]):
            raise TypeError(f"error_bound has no error model for {name}: it has a hook registered, which may change "
                            f"its output; remove the hook to bound the model")
        return propagate(modules[target], args[0], arg_D[0], name)
    key = target
    layers = FUNCTION_LAYERS if op == "call_function" else METHOD_LAYERS  # placeholders and get_attrs have no bound
    if key in layers:
        return propagate(layers[key](*args[1:], **kwargs), args[0], arg_D[0], name)
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
        tensors = [Ds.get(a) if Ds.get(a) is not None else _zeros_like(env[a]) for a in node.args[0]]
        return target(tensors, *args[1:], **kwargs)
    raise TypeError(f"error_bound has no error model for {name}: add a rule for it to core.engine.bound "
                    f"(docs/design-conv.md says how)")


def _bound_or_zero(a, env, Ds):
    if not isinstance(a, fx.Node):
        return 0  # a constant the output holds
    D = Ds.get(a)
    return _zeros_like(env[a]) if D is None else D


def propagate_graph(graph, modules: dict, env: dict, D: dict):
    """The bound at the output, carried from the bounds D at some nodes ({node: bound}) through every node after
    them, each by its rule; env holds the values of the model at hand.

    No BatchNorm folded by an earlier step lies after the first of them: the plan folds runs in graph order, and a
    step starts at its pair's output, after every BatchNorm of the runs before it (docs/design-conv.md §7).
    """
    Ds = dict(D)
    for node in graph.nodes[min(graph.position[n] for n in D) + 1:]:
        bound = propagate_node(graph, node, modules, env, Ds)
        if bound is not None:
            Ds[node] = bound
    out = Ds.get(graph.nodes[-1])
    return _zeros_like(env[graph.nodes[-1]]) if out is None else out


def model_input(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """What the layer graph sees: C[X] flattened for a CharMLP, X itself otherwise."""
    return F.embedding(X, model.C).view(X.shape[0], -1) if isinstance(model, CharMLP) else X


@torch.no_grad()
@magnitudes_kept()
def error_bound(model: nn.Module, X):
    """Certified elementwise bound B (float64, CPU) with |model(X) − fold(model)[0](X)| ≤ B, both in eval.

    The folds apply one at a time, and consecutive models M_{k−1}, M_k differ in one pair only, so
    |M_0(X) − M_K(X)| ≤ Σ_k |M_{k−1}(X) − M_k(X)|. Each term is the pair bound ρ·M_j at the pair
    (identical inputs there), carried by the rules through every node of M_{k−1} downstream of the pair;
    nodes elsewhere compute the same values in both. The bound is itself computed in float64; the factor
    1 + 2⁻³⁰ covers that rounding. X is the input (a tuple for a model of several inputs); the result has
    the structure of the output. Derivation: docs/design.md, docs/design-conv.md.
    """
    graph = model_graph(model)
    steps, _ = graph.plan()
    inputs = X if isinstance(X, tuple) else (model_input(model, X),)
    modules, bypassed = dict(graph.modules), set()
    env = graph.evaluate(modules, bypassed, inputs)
    total = None
    for step in steps:
        layer, bn = modules[step.layer.target], modules[step.bn.target]
        if step.direction == AFTER:
            start, x, at_layer = step.bn, env[step.layer.args[0]], env[step.bn.args[0]]
        else:
            start, x, at_layer = step.layer, env[step.bn.args[0]], env[step.layer.args[0]]
        check_rank(graph, step, at_layer)
        D = {start: pair_bound(layer, bn, step.direction, x)}
        out = propagate_graph(graph, modules, env, D)
        total = out if total is None else _add_bounds(total, out)
        modules[step.layer.target] = graph.fold_step(modules, step)
        bypassed.add(step.bn)
        env = graph.evaluate(modules, bypassed, inputs, env, changed=(step.layer, step.bn))
    if total is None:  # nothing to fold: folded(X) is computed exactly as model(X)
        return _zeros_like(env[graph.nodes[-1]])
    return _scale(total, SAFETY, TINY64)


def check_rank(graph, step, at_layer: torch.Tensor) -> None:
    """FoldError unless the layer of a folded pair keeps its channels in dim 1 of `at_layer`, the tensor it writes
    (after) or reads (before) on the BatchNorm's side, where the BatchNorm normalises dim 1.

    fold sees no inputs: it pairs a Linear with a BatchNorm1d, or a convolution over d dims with a BatchNorm,
    for (N, C) and (N, C, *d spatial) tensors (a Flatten between maps channels to blocks of features). A Linear
    on (N, L, C) keeps its features last while BatchNorm1d normalises dim 1, so such a fold (or one on unbatched
    input) scales the wrong dim.
    """
    rank = 2 + KINDS[type(graph.modules[step.layer.target])].spatial
    if at_layer.ndim != rank:
        layer, bn = graph.name(step.layer.target), graph.name(step.bn.target)
        raise FoldError(f"{bn} normalises dim 1 of a {at_layer.ndim}-D tensor here, but {layer} keeps its channels "
                        f"in dim 1 only of {rank}-D tensors (N, C{', ...' if rank > 2 else ''}): fold(model) folded "
                        f"them as if it did, so it does not compute model on this input. Give the pair {rank}-D "
                        f"tensors, e.g. transpose (N, L, C) to (N, C, L) before a BatchNorm1d (which then folds "
                        f"no more)")


def _add_bounds(a, b):
    if isinstance(a, torch.Tensor):
        return a + b
    return type(a)(_add_bounds(x, y) for x, y in zip(a, b)) if isinstance(a, tuple | list) else a


def _scale(bound, factor: float, floor: float):
    if isinstance(bound, torch.Tensor):
        return bound * factor + floor
    return type(bound)(_scale(v, factor, floor) for v in bound) if isinstance(bound, tuple | list) else bound


def loss_bound(logits: torch.Tensor, bound: torch.Tensor, Y: torch.Tensor) -> float:
    """Bound on |CE(z, Y) − CE(z', Y)|, mean cross-entropies evaluated in float64, given |z − z'| ≤ bound.

    Per row CE = logsumexp(z) − z_y, and logsumexp is 1-Lipschitz in the max-norm: the exact values
    differ by at most max_k bound_k + bound_y. Each float64 evaluation (the max shift, V exps and
    additions, a log, the label term, a mean of N rows) is off by at most γ₆₄(N + V + 8) times
    2·max_k |z_k| + log V per row, where |z'| ≤ |z| + bound.
    """
    N, V = logits.shape
    lipschitz = (bound.amax(1) + bound.gather(1, Y[:, None].cpu())[:, 0]).mean().item()
    size = (2 * (f64(logits).abs() + bound).amax(1) + math.log(V)).mean().item()
    return (lipschitz + 2 * rounding_bound(N + V + 8, U64) * size) * SAFETY
