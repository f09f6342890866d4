"""The layer rules: how far a layer's output can move when its input moves by at most D, for a layer both models
share (docs/design.md, "A whole model"; docs/design-conv.md §4 to §6 derive each rule).

Each rule is named by the entries of the layer-kind table (`core.engine.catalog`) that it bounds. Each side is its
exact value plus its own rounding; the exact values differ by at most the map's slope times D, and x̂' is bounded
by |x̂| + D. Every rule takes (layer, x̂ in float64, D, u, η); η (`underflow`) is the most a product or quotient
that underflows loses, added once per such operation on each side.
"""

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from core.engine.algebra import check_norm, f64, norm_affine, norm_terms
from core.engine.bound.magnitudes import absolute
from core.engine.bound.pair import channelwise, per_output
from core.engine.bound.rounding import BN_ROUNDINGS, convolves, rounding_bound, underflow, unit_roundoff
from core.engine.kinds import AdaptiveAvgPool, AvgPool, NormKind, affine_kind, kind_of
from core.errors import BoundError

ACTIVATION_ROUNDINGS = 8  # tanh and sigmoid kernels are within 4 ulp, i.e. 8u relative
GATE_ROUNDINGS = ACTIVATION_ROUNDINGS + 8  # x·φ(x) gates (SiLU, GELU): a 4-ulp kernel, then ≤ 8 roundings
SILU_SLOPE = 1.1  # sup |d/dx x·σ(x)| = 1.0998... (docs/design-conv.md)
GELU_SLOPE = 1.13  # sup |d/dx x·Φ(x)| = 1.1289..., and 1.1288... for the tanh form


def affine_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """Linear and conv: (1 + g)·|W|D + 2g·(|W||x̂| + |b|), g = γ(n + 1), as one map of (1 + g)D + 2g|x̂|."""
    kind = affine_kind(layer)
    n = kind.terms(layer)
    g = rounding_bound(n + 1, u)
    assert isinstance(layer.weight, torch.Tensor)
    out = kind.linear_map(layer, (1 + g) * D + 2 * g * x64.abs(), absolute(layer.weight)) + 4 * n * eta
    b = kind.bias(layer)
    return out if b is None else out + 2 * g * per_output(layer, absolute(b), out.ndim)


def batchnorm_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    mean, _, _, beta, _ = norm_terms(layer)
    assert beta is not None  # norm_terms gives β = 0 to a BatchNorm without affine
    s = norm_affine(layer)[0].abs()
    s, mean, beta = (channelwise(v, x64.ndim) for v in (s, mean, beta))
    g = rounding_bound(BN_ROUNDINGS, u)
    return (1 + g) * s * D + 2 * g * (s * (x64.abs() + mean.abs()) + beta.abs()) + 2 * BN_ROUNDINGS * eta


def tanh_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """tanh' = 1/cosh², largest on [|x̂| − D, |x̂| + D] at its point nearest 0; |tanh a| ≤ min(1, |a|), so the exact
    outputs also differ by at most 2."""
    ax = x64.abs()
    near0 = (ax - D).clamp(min=0)
    return ((D / near0.cosh() ** 2).clamp(max=2) + ACTIVATION_ROUNDINGS * u * (ax.clamp(max=1) + (ax + D).clamp(max=1))
            + 2 * ACTIVATION_ROUNDINGS * eta)


def sigmoid_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """σ' = σ(a)σ(−a), largest at the point of [|x̂| − D, |x̂| + D] nearest 0; σ ∈ [0, 1], so the exact outputs also
    differ by at most 1."""
    near0 = (x64.abs() - D).clamp(min=0)
    return (D * near0.sigmoid() * (-near0).sigmoid()).clamp(max=1) + 2 * ACTIVATION_ROUNDINGS * u + 2 * eta


def relu_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """Exact; both inputs are ≤ 0, so both outputs 0, where x̂ + D ≤ 0."""
    return torch.where(x64 + D <= 0, 0.0, D)


def hardtanh_rule(layer: nn.Hardtanh, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """clamp(·, lo, hi) is exact and 1-Lipschitz, its outputs differ by at most hi − lo, and are equal where both
    inputs are ≤ lo or both ≥ hi."""
    lo, hi = thresholds(layer.min_val, min), thresholds(layer.max_val, max)
    flat = (x64 + D <= lo) | (x64 - D >= hi)
    return torch.where(flat, 0.0, D.clamp(max=hi - lo))


def thresholds(value: float, pick: Callable[[Iterable[float]], float]) -> float:
    """The threshold a kernel compares with, rounded to whichever float dtype the input has: `pick` (min for a lower
    threshold, max for an upper one) of its roundings, so a flat region is claimed only where it is flat in each."""
    return pick(torch.tensor(value, dtype=t).double().item() for t in (torch.float64, torch.float32, torch.float16,
                                                                         torch.bfloat16))


def leaky_relu_rule(layer: nn.LeakyReLU, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """Slope max(1, |a|); a·x is one rounding, u·|a||x| on each side; a as large as the kernel's dtype rounds it."""
    a = thresholds(abs(layer.negative_slope), max)
    return max(1.0, a) * D + u * a * (2 * x64.abs() + D) + 2 * eta


def hardswish_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """f = x·relu6(x + 3)/6: f' = (2x + 3)/6 on (−3, 3), 0 below, 1 above; |f'| is convex on [−3, 3], so its
    largest value on [x̂ − D, x̂ + D] is at an end clamped to [−3, 3]; 0 where x̂ + D ≤ −3. |f(x)| ≤ |x|. The upper end
    needs neither the clamp at −3 nor |·|: it counts only where x̂ + D > −3, and below −3/2 the lower end is larger."""
    slope = torch.maximum(((2 * (x64 - D).clamp(-3, 3) + 3) / 6).abs(), (2 * (x64 + D).clamp(max=3) + 3) / 6)
    slope = torch.where(x64 + D <= -3, 0.0, slope)
    return slope * D + rounding_bound(ACTIVATION_ROUNDINGS, u) * (2 * x64.abs() + D) + 2 * ACTIVATION_ROUNDINGS * eta


def hardsigmoid_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """f = relu6(x + 3)/6: slope 1/6 where [x̂ − D, x̂ + D] meets (−3, 3), else both outputs equal; f ∈ [0, 1]."""
    flat = (x64 + D <= -3) | (x64 - D >= 3)
    return torch.where(flat, 0.0, (D / 6).clamp(max=1)) + 2 * ACTIVATION_ROUNDINGS * u + 2 * eta


def _gate(slope: float, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """x·φ(x) with sup |f'| ≤ slope and |f(x)| ≤ |x|: slope·D + γ(16)·(|x̂| + |x̂'|) (SiLU, GELU)."""
    return slope * D + rounding_bound(GATE_ROUNDINGS, u) * (2 * x64.abs() + D) + 2 * GATE_ROUNDINGS * eta


def silu_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    return _gate(SILU_SLOPE, x64, D, u, eta)


def gelu_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    return _gate(GELU_SLOPE, x64, D, u, eta)


def identity_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    return D


def dropout_rule(layer: nn.Dropout, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    if layer.training:
        raise BoundError("error_bound needs Dropout in eval mode (in training it is random): call model.eval()")
    return D


def max_pool_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """Exact: |max_w a − max_w a'| ≤ max_w |a − a'|, so the same pooling of D bounds it (a window of padding
    alone is −∞ on both sides: 0)."""
    pooled: torch.Tensor = layer(D)
    return pooled.clamp(min=0)


def _kernel_volume(layer: AvgPool) -> int:
    """The number of values an average pooling window holds (AvgPool2d/3d keep a one-int kernel as an int)."""
    k = layer.kernel_size
    return math.prod(k) if isinstance(k, tuple | list) else k ** (2 if isinstance(layer, nn.AvgPool2d) else 3)


def avg_pool_rule(layer: AvgPool, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """Sum of N ≤ kernel-volume terms and a division: (1 + g)·avg(D) + 2g·avg(|x̂|), g = γ(N + 1)."""
    g = rounding_bound(_kernel_volume(layer) + 1, u)
    pooled: torch.Tensor = layer((1 + g) * D + 2 * g * x64.abs())
    return pooled + 4 * eta


def adaptive_window(size: int, out: int | None) -> int:
    """The largest window of adaptive pooling from `size` to `out`: max_i ⌈(i+1)·size/out⌉ − ⌊i·size/out⌋."""
    out = size if out is None else out
    return max(-(-(i + 1) * size // out) - (i * size) // out for i in range(out))


def adaptive_avg_pool_rule(layer: AdaptiveAvgPool, x64: torch.Tensor, D: torch.Tensor, u: float,
                           eta: float) -> torch.Tensor:
    """As avg_pool, with N the largest window (`adaptive_window` per spatial dim)."""
    spatial = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}[type(layer)]
    sizes = layer.output_size if isinstance(layer.output_size, tuple | list) else (layer.output_size,) * spatial
    N = math.prod(adaptive_window(n, o) for n, o in zip(x64.shape[-spatial:], sizes))
    g = rounding_bound(N + 1, u)
    pooled: torch.Tensor = layer((1 + g) * D + 2 * g * x64.abs())
    return pooled + 4 * eta


def move_rule(layer: nn.Module, x64: torch.Tensor, D: torch.Tensor, u: float, eta: float) -> torch.Tensor:
    """Flatten copies values: the same flatten of D bounds the difference exactly."""
    moved: torch.Tensor = layer(D)
    return moved


def propagate(layer: nn.Module, x: torch.Tensor, D: torch.Tensor, name: str) -> torch.Tensor:
    """Bound on |layer(x̂) − layer(x̂')| given |x̂ − x̂'| ≤ D, by its kind's rule."""
    kind = kind_of(layer)
    if kind is None:
        raise BoundError(f"error_bound has no error model for {name}: register its kind, with its rule "
                         f"(core.engine.kinds.register; docs/design.md, \"Adding a layer kind\")")
    if isinstance(kind, NormKind):
        check_norm(layer, name)
    bound: torch.Tensor = kind.rule(layer, f64(x), D, unit_roundoff(x.dtype, x.device, convolves(layer)),
                                    underflow(x.dtype))
    return bound
