"""One strategy per layer kind of core.engine.kinds.KINDS (`KIND_STRATEGIES`, keyed by the same types), every value
drawn by hypothesis, and a batch of inputs a drawn layer accepts (`inputs_for`)."""

import torch
from hypothesis import strategies as st

from core.engine.bound.rules import move_rule
from core.engine.kinds import KINDS, ConvKind, LinearKind, MapKind, NormKind, NormTerms
from core.makemore.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from properties.strategies.floats import tensors


@st.composite
def linear_layers(draw, layer_type, max_fan=8):
    """A layer of the Linear kind `layer_type`: fan_in, fan_out in 1..max_fan, with or without bias, float64."""
    fan_in, fan_out = draw(st.integers(1, max_fan)), draw(st.integers(1, max_fan))
    W = draw(tensors((fan_in, fan_out)))
    b = draw(st.none() | tensors((fan_out,)))
    return KINDS[layer_type].build(W, b).eval()


@st.composite
def norm_layers(draw, layer_type, max_dim=8):
    """An eval-mode layer of the BatchNorm kind `layer_type`: v ≥ 0 (0 included), ε > 0, affine or not, float64."""
    dim = draw(st.integers(1, max_dim))
    mean, gm, beta = (draw(tensors((dim,))) for _ in range(3))
    var = draw(tensors((dim,), st.floats(0, 1e6)))
    affine = draw(st.booleans())
    eps = draw(st.floats(1e-8, 1e-1))
    terms = NormTerms(mean, var, gm if affine else None, beta if affine else None, eps)
    return KINDS[layer_type].build(terms, 0.1).eval()


@st.composite
def conv_layers(draw, layer_type, max_group_channels=2, max_groups=3):
    """A layer of the conv kind `layer_type`: any groups (depthwise included), kernel, stride, dilation, padding and
    padding mode its type accepts, with or without bias, float64 weights drawn by hypothesis, eval mode."""
    kind = KINDS[layer_type]
    d = kind.spatial
    groups = draw(st.integers(1, max_groups))
    c_in, c_out = (groups * draw(st.integers(1, max_group_channels)) for _ in range(2))
    per_dim = st.tuples(*[st.integers(1, 3 if d < 3 else 2)] * d)
    kernel, dilation = draw(per_dim), draw(st.tuples(*[st.integers(1, 2)] * d))
    stride = draw(st.tuples(*[st.integers(1, 2)] * d))
    bias = draw(st.booleans())
    if kind.transposed:  # output size (L-1)s - 2p + dil(k-1) + op + 1 > 0 for every L >= 1 when 2p <= dil(k-1)
        padding = tuple(draw(st.integers(0, dl * (k - 1) // 2)) for k, dl in zip(kernel, dilation))
        output_padding = tuple(draw(st.integers(0, max(s, dl) - 1)) for s, dl in zip(stride, dilation))
        layer = layer_type(c_in, c_out, kernel, stride, padding, output_padding, groups, bias, dilation, device="meta")
        shape = (c_in, c_out // groups, *kernel)
    else:
        mode = draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular")))
        same = all(s == 1 for s in stride) and draw(st.booleans())
        padding = "same" if same else draw(st.tuples(*[st.integers(0, 1)] * d))
        layer = layer_type(c_in, c_out, kernel, stride, padding, dilation, groups, bias, mode, device="meta")
        shape = (c_out, c_in // groups, *kernel)
    layer.weight = torch.nn.Parameter(draw(tensors(shape)))
    layer.bias = torch.nn.Parameter(draw(tensors((c_out,)))) if bias else None
    return layer.eval()


def kernel_tuple(k, d):
    return tuple(k) if isinstance(k, tuple | list) else (k,) * d


@st.composite
def pool_layers(draw, layer_type):
    """A pooling layer of `layer_type` with a kernel (per dim, or one int for every dim), stride, padding (at most half
    the kernel), dilation, ceil mode and divisor its type accepts; adaptive ones with an output size per dim (None
    keeps the input's)."""
    name = layer_type.__name__
    d = int(name[-2])
    if name.startswith("Adaptive"):
        size = draw(st.tuples(*[st.none() | st.integers(1, 3)] * d)) if d > 1 else draw(st.integers(1, 3))
        return layer_type(size).eval()
    kernel = draw(st.tuples(*[st.integers(1, 3)] * d))
    one_int = name.startswith("Avg") and d > 1 and draw(st.booleans())  # AvgPool2d/3d keep an int kernel as an int
    if one_int:
        kernel = (kernel[0],) * d
    stride = draw(st.none() | st.tuples(*[st.integers(1, 2)] * d))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = draw(st.booleans())
    if name.startswith("Max"):
        dilation = draw(st.tuples(*[st.integers(1, 2)] * d))
        padding = tuple(min(p, ((k - 1) * dl + 1) // 2) for p, k, dl in zip(padding, kernel, dilation))
        return layer_type(kernel, stride, padding, dilation, ceil_mode=ceil_mode).eval()
    extra = {"divisor_override": draw(st.none() | st.integers(1, 4))} if d > 1 else {}
    return layer_type(kernel[0] if one_int else kernel, stride, padding, ceil_mode, draw(st.booleans()),
                      **extra).eval()


def spatial_min(layer) -> tuple[int, ...]:
    """The smallest spatial input size (per dim) the layer accepts."""
    kind = KINDS.get(type(layer))
    if isinstance(kind, ConvKind):
        d = kind.spatial
        if kind.transposed:
            return (1,) * d
        if layer.padding == "same":  # dil(k-1) split in two, the larger half on the right; reflect needs pad < L
            totals = [dl * (k - 1) for k, dl in zip(layer.kernel_size, layer.dilation)]
            return tuple(t - t // 2 + 1 if layer.padding_mode != "zeros" else 1 for t in totals)
        return tuple(max(dl * (k - 1) + 1 - 2 * p, p + 1, 1)
                     for k, dl, p in zip(layer.kernel_size, layer.dilation, layer.padding))
    name = type(layer).__name__
    d = int(name[-2])
    if name.startswith("Adaptive"):
        return (1,) * d
    kernel, padding = kernel_tuple(layer.kernel_size, d), kernel_tuple(layer.padding, d)
    if name.startswith("Avg"):  # avg_pool3d wants the kernel inside the unpadded input
        return kernel
    dilation = kernel_tuple(getattr(layer, "dilation", 1), d)
    return tuple(max(dl * (k - 1) + 1 - 2 * p, 1) for k, dl, p in zip(kernel, dilation, padding))


@st.composite
def inputs_for(draw, layer, max_rows=3):
    """A float64 batch of 1..max_rows inputs that `layer` accepts, every value drawn by hypothesis."""
    kind = KINDS.get(type(layer))
    rows = draw(st.integers(1, max_rows))
    if isinstance(kind, LinearKind):
        return draw(tensors((rows, kind.matrix(layer).shape[0])))
    if isinstance(kind, NormKind):
        width = kind.terms(layer).mean.shape[0]
        spatial = draw(st.sampled_from(kind.spatial if type(layer) is not BatchNorm1d else (0,)))
        return draw(tensors((rows, width, *draw(st.tuples(*[st.integers(1, 3)] * spatial)))))
    if isinstance(kind, ConvKind) or isinstance(kind, MapKind) and kind.rule is not move_rule:
        channels = layer.in_channels if isinstance(kind, ConvKind) else draw(st.integers(1, 2))
        low = spatial_min(layer)
        extra = 2 if len(low) < 3 else 1
        sizes = tuple(draw(st.integers(lo, lo + extra)) for lo in low)
        return draw(tensors((rows, channels, *sizes)))
    return draw(tensors((rows, *draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))))


ELEMENTWISE_TYPES = (Tanh, torch.nn.Tanh, Sigmoid, torch.nn.Sigmoid, ReLU, torch.nn.ReLU, torch.nn.ReLU6,
                     torch.nn.Identity, torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.SiLU)
KIND_STRATEGIES = {
    Linear: linear_layers(Linear),
    torch.nn.Linear: linear_layers(torch.nn.Linear),
    **{t: conv_layers(t) for t, kind in KINDS.items() if isinstance(kind, ConvKind)},
    **{t: norm_layers(t) for t, kind in KINDS.items() if isinstance(kind, NormKind)},
    **{t: st.builds(t).map(torch.nn.Module.eval) for t in ELEMENTWISE_TYPES},
    torch.nn.Hardtanh: st.builds(torch.nn.Hardtanh, st.floats(-4, 0), st.floats(0.125, 8)).map(torch.nn.Module.eval),
    torch.nn.LeakyReLU: st.builds(torch.nn.LeakyReLU, st.floats(-2, 2)).map(torch.nn.Module.eval),
    torch.nn.GELU: st.builds(torch.nn.GELU, st.sampled_from(("none", "tanh"))).map(torch.nn.Module.eval),
    torch.nn.Dropout: st.floats(0, 0.9).map(lambda p: torch.nn.Dropout(p).eval()),
    **{t: pool_layers(t) for t, kind in KINDS.items() if isinstance(kind, MapKind) and kind.rule is not move_rule},
    torch.nn.Flatten: st.builds(torch.nn.Flatten, st.integers(0, 1)).map(torch.nn.Module.eval),
}
