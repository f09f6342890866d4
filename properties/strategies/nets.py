"""Random conv nets to fold (`net_cases`): structure and values drawn by hypothesis, the values by decades
(values.py).

Every block ends with an op that is no affine layer, so whether a BatchNorm folds depends on its own block alone:
each block records, per BatchNorm, "folded" or a phrase its kept reason must hold.
"""

import functools
from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

from properties.strategies.pairs import BN_TYPES
from properties.strategies.values import (
    F64,
    NormStats,
    bits,
    cycled,
    drawn_size,
    fill_missing,
    norm_stats,
    spread,
    tensor_values,
)

MODELLED_BLOCKS = ("conv_bn", "bn_conv", "bn_conv_zero_padded", "bn_run", "residual", "bn_after_add", "shared",
                   "two_users", "concat", "depthwise", "transposed", "squeeze_excite", "pool")
BLOCKS = (*MODELLED_BLOCKS, "hooked", "subclass")  # error_bound has no error model for a hooked or subclassed BN
HEADS = ("none", "flatten_linear", "linear_bn")
PADDING_MODES = ("reflect", "replicate", "circular")  # a bn_conv's; bn_conv_zero_padded pads with zeros
CONV_ND = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_T_ND = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}
POOL_ND = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}
GAP_ND = {1: torch.nn.AdaptiveAvgPool1d, 2: torch.nn.AdaptiveAvgPool2d, 3: torch.nn.AdaptiveAvgPool3d}
NET_DECADES = {"W": (-2, 0), "b": (-1, 0), "X": (-1, 1)}
NET_STATS = {"mean_decades": (-2, 1), "var_decades": (-2, 2)}


class SubclassBatchNorm2d(torch.nn.BatchNorm2d):
    """A BatchNorm subclass: its forward could differ, so fold keeps it."""


def silent_hook(module, inputs, output):
    return None


@dataclass(frozen=True)
class NetCase:
    """A conv net over `spatial` dims: input (batch, channels, size^spatial), then `blocks`, then `head`.

    widths[i] is the channels a widening block i (conv_bn, bn_conv, bn_run, concat, transposed) convolves to, and
    modes[i] a bn_conv block's padding mode (reflect needs size > 1: at size 1 it replicates). weights holds (W, b)
    per conv and Linear in the order the net adds them (b None: no bias), norms one NormStats per BatchNorm in order,
    X the input's values, each cycled over its shape.
    """

    spatial: int = 2
    channels: int = 1
    size: int = 3
    blocks: tuple = ("conv_bn",)
    head: str = "none"
    batch: int = 1
    dtype: torch.dtype = torch.float32
    widths: tuple | None = None
    modes: tuple | None = None
    weights: tuple | None = None
    norms: tuple | None = None
    X: tuple | None = None

    def input_shape(self):
        return (self.batch, self.channels, *(self.size,) * self.spatial)

    @functools.cached_property
    def layout(self):
        """([(W's shape, b's shape) per conv and Linear], [channels per BatchNorm]), in the order the net adds them."""
        net = RandomNet(self)
        return [(m.weight.shape, m.bias.shape) for m in net.weighted()], [bn.num_features for bn in net.batchnorms()]

    def __post_init__(self):
        fill_missing(self, widths=(2,) * len(self.blocks),
                     modes=tuple(PADDING_MODES[i % len(PADDING_MODES)] for i in range(len(self.blocks))))
        if None not in (self.weights, self.norms, self.X):
            return
        weighted, bn_widths = self.layout
        fill_missing(
            self,
            weights=tuple((spread(drawn_size(W), NET_DECADES["W"]),
                           spread(drawn_size(b), NET_DECADES["b"]) if k % 2 == 0 else None)  # every other
                          for k, (W, b) in enumerate(weighted)),
            norms=tuple(NormStats.spread(c, **NET_STATS) for c in bn_widths),
            X=spread(drawn_size(self.input_shape()), NET_DECADES["X"]))

    def build(self):
        """(model, X, expected): an eval-mode RandomNet, an input batch and {BN name: "folded" or a reason phrase}."""
        net = RandomNet(self)
        with torch.no_grad():
            for m, (W, b) in zip(net.weighted(), self.weights, strict=True):
                m.weight = torch.nn.Parameter(cycled(W, m.weight.shape))
                m.bias = None if b is None else torch.nn.Parameter(cycled(b, m.bias.shape))
            for bn, stats in zip(net.batchnorms(), self.norms, strict=True):
                for tensor, value in zip((bn.running_mean, bn.running_var, bn.weight, bn.bias),
                                         stats.tensors(bn.num_features)):
                    tensor.copy_(value)
        X = cycled(self.X, self.input_shape())
        return net.to(self.dtype).eval(), X.to(self.dtype), net.expected


class RandomNet(torch.nn.Module):
    """The net a NetCase describes; `expected` maps each BatchNorm's name to "folded" or a phrase of its reason.

    Built without values: its convs and Linears are on the meta device and its BatchNorms hold the default
    statistics until NetCase.build gives them the case's.
    """

    def __init__(self, case: NetCase):
        super().__init__()
        self.case, self.plan, self.expected, self.weighted_names = case, [], {}, []
        d, c, size = case.spatial, case.channels, case.size
        self.layers = torch.nn.ModuleDict()
        for i, block in enumerate(case.blocks):
            c, size = self.add_block(i, block, c, size)
        self.head = case.head
        if case.head == "flatten_linear":
            self.bn_layer("head_bn", c, "folded")
            self.linear_layer("head_linear", c * size**d, 3)
        elif case.head == "linear_bn":
            self.layers["head_pool"] = GAP_ND[d](1)
            self.linear_layer("head_linear", c, 3)
            self.layers["head_bn"] = torch.nn.BatchNorm1d(3, dtype=F64)
            self.expected["layers.head_bn"] = "folded"

    def weighted(self):
        """The convs and Linears, in the order they were added."""
        return [self.layers[name] for name in self.weighted_names]

    def batchnorms(self):
        """The BatchNorms, in the order they were added."""
        return [self.get_submodule(name) for name in self.expected]

    def bn_layer(self, name, c, expect, bn_type=None):
        self.layers[name] = (bn_type or BN_TYPES[self.case.spatial])(c, dtype=F64)  # its init draws nothing
        self.expected[f"layers.{name}"] = expect

    def conv_layer(self, name, c_in, c_out, kernel=1, padding=0, mode="zeros", groups=1, transposed=False):
        conv_type = (CONV_T_ND if transposed else CONV_ND)[self.case.spatial]
        extra = {} if transposed else {"padding_mode": mode}
        self.layers[name] = conv_type(c_in, c_out, kernel, padding=padding, groups=groups, device="meta", **extra)
        self.weighted_names.append(name)

    def linear_layer(self, name, fan_in, fan_out):
        self.layers[name] = torch.nn.Linear(fan_in, fan_out, device="meta")
        self.weighted_names.append(name)

    def add_block(self, i, block, c, size):
        """Adds block i's layers under prefix b{i}; returns (channels, size) after it."""
        d, p, widen = self.case.spatial, f"b{i}", self.case.widths[i]
        if block == "conv_bn":
            self.conv_layer(f"{p}_conv", c, widen, 3, 1)
            self.bn_layer(f"{p}_bn", widen, "folded")
            c = widen
        elif block in ("bn_conv", "bn_conv_zero_padded"):
            zero = block == "bn_conv_zero_padded"
            mode = "zeros" if zero else self.case.modes[i]
            mode = "replicate" if mode == "reflect" and size == 1 else mode
            self.bn_layer(f"{p}_bn", c, "pads with zeros" if zero else "folded")
            self.conv_layer(f"{p}_conv", c, widen, 3, 1, mode)
            c = widen
        elif block == "bn_run":
            self.bn_layer(f"{p}_bn1", c, "folded")
            self.bn_layer(f"{p}_bn2", c, "folded")
            self.conv_layer(f"{p}_conv", c, widen, 1, 0)
            c = widen
        elif block in ("residual", "bn_after_add", "shared"):
            self.conv_layer(f"{p}_conv", c, c, 3, 1)
            expect = {"residual": "folded", "bn_after_add": "producer is add", "shared": "has other users"}[block]
            self.bn_layer(f"{p}_bn", c, expect)
        elif block == "two_users":
            self.bn_layer(f"{p}_bn", c, "has 2 users")
            self.conv_layer(f"{p}_conv", c, c, 1, 0)
        elif block == "concat":
            self.conv_layer(f"{p}_conv", c, widen, 3, 1)
            self.bn_layer(f"{p}_bn", widen, "folded")
            c = c + widen
        elif block == "depthwise":
            self.conv_layer(f"{p}_conv", c, c, 3, 1, groups=c)
            self.bn_layer(f"{p}_bn", c, "folded")
        elif block == "transposed":
            self.conv_layer(f"{p}_conv", c, widen, 2, transposed=True)
            self.bn_layer(f"{p}_bn", widen, "folded")
            c, size = widen, size + 1
        elif block == "squeeze_excite":
            self.layers[f"{p}_pool"] = GAP_ND[d](1)
            self.conv_layer(f"{p}_conv", c, c, 1, 0)
        elif block == "pool":
            self.layers[f"{p}_pool"] = POOL_ND[d](2, 1) if size > 1 else torch.nn.Identity()
            size = size - 1 if size > 1 else size
        elif block == "hooked":
            self.conv_layer(f"{p}_conv", c, c, 1, 0)
            self.bn_layer(f"{p}_bn", c, "has a hook")
            self.layers[f"{p}_bn"].register_forward_hook(silent_hook)
        elif block == "subclass":
            self.conv_layer(f"{p}_conv", c, c, 1, 0)
            self.bn_layer(f"{p}_bn", c, "subclass", SubclassBatchNorm2d if d == 2 else None)
            if d != 2:
                self.expected[f"layers.{p}_bn"] = "folded"
        self.plan.append((p, block))
        return c, size

    def forward(self, x):
        L = self.layers
        for p, block in self.plan:
            if block in ("conv_bn", "depthwise", "transposed", "hooked", "subclass"):
                x = torch.relu(L[f"{p}_bn"](L[f"{p}_conv"](x)))
            elif block in ("bn_conv", "bn_conv_zero_padded"):
                x = torch.nn.functional.hardswish(L[f"{p}_conv"](L[f"{p}_bn"](x)))
            elif block == "bn_run":
                x = torch.sigmoid(L[f"{p}_conv"](L[f"{p}_bn2"](L[f"{p}_bn1"](x))))
            elif block == "residual":
                x = x + L[f"{p}_bn"](L[f"{p}_conv"](torch.relu(x)))
            elif block == "bn_after_add":
                x = torch.relu(L[f"{p}_bn"](x + L[f"{p}_conv"](x)))
            elif block == "shared":
                z = L[f"{p}_conv"](x)
                x = torch.relu(L[f"{p}_bn"](z) + z)
            elif block == "two_users":
                b = L[f"{p}_bn"](x)
                x = torch.relu(b) + torch.relu(L[f"{p}_conv"](b))
            elif block == "concat":
                x = torch.cat([x, torch.nn.functional.relu6(L[f"{p}_bn"](L[f"{p}_conv"](x)))], 1)
            elif block == "squeeze_excite":
                x = x * torch.sigmoid(L[f"{p}_conv"](L[f"{p}_pool"](x)))
            elif block == "pool":
                x = L[f"{p}_pool"](x)
        if self.head == "flatten_linear":
            x = L["head_linear"](torch.flatten(L["head_bn"](x), 1))
        elif self.head == "linear_bn":
            x = L["head_bn"](L["head_linear"](L["head_pool"](x).flatten(1)))
        return x


@st.composite
def net_cases(draw, dtypes=(torch.float32, torch.float64), max_blocks=5, blocks=BLOCKS):
    """Spatial dims 1..3, 1..3 input channels, size 2..4 (3-D: 2..3), 1..max_blocks blocks each widening to 1..3
    channels, a head, batch 1..2.

    Each conv and Linear has a bias or not as drawn; values (see CYCLE): |W| ∈ [0.01, 1], |b| ∈ [0.1, 1],
    |X| ∈ [0.1, 10], statistics as norm_stats draws them with μ over [10⁻², 10] and v ∈ [10⁻², 10²] loguniform.
    """
    d = draw(st.integers(1, 3))
    channels, size = draw(st.integers(1, 3)), draw(st.integers(2, 4 if d < 3 else 3))
    chosen = tuple(draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=max_blocks)))
    n = len(chosen)
    case = NetCase(d, channels, size, chosen, draw(st.sampled_from(HEADS)), draw(st.integers(1, 2)),
                   draw(st.sampled_from(dtypes)), draw(st.tuples(*[st.integers(1, 3)] * n)),
                   draw(st.tuples(*[st.sampled_from(PADDING_MODES)] * n)))
    weighted, bn_widths = case.layout
    shapes = {"X": case.input_shape()}
    for k, (W, b) in enumerate(weighted):
        shapes |= {f"W{k}": W, f"b{k}": b}
    drawn = draw(tensor_values(shapes, {name: NET_DECADES[name[0]] for name in shapes}))
    biases = draw(bits(len(weighted)))
    weights = tuple((drawn[f"W{k}"], drawn[f"b{k}"] if bias else None) for k, bias in enumerate(biases))
    norms = tuple(draw(norm_stats(c, **NET_STATS)) for c in bn_widths)
    return replace(case, weights=weights, norms=norms, X=drawn["X"])
