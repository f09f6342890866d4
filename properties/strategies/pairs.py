"""A Linear/BatchNorm1d pair (`pair_cases`) and a conv/BatchNorm pair of 1 to 3 spatial dims (`conv_pair_cases`),
the BatchNorm after or before its layer, their values drawn by decades (values.py); and the core or torch.nn
Linear and BatchNorm1d built from given values (`make_linear`, `make_bn`)."""

from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

from core.engine.kinds import KINDS, ConvKind, NormTerms
from core.makemore.layers import BatchNorm1d, Linear
from properties.strategies.values import (
    F64,
    GAMMA_MODES,
    VAR_MODES,
    NormStats,
    cycled,
    drawn_size,
    fill_missing,
    norm_stats,
    spread,
    tensor_values,
)

LINEAR_TYPES = {"core": Linear, "torch": torch.nn.Linear}
NORM_TYPES = {"core": BatchNorm1d, "torch": torch.nn.BatchNorm1d}


def make_linear(kind, W, b):
    """A core or torch.nn Linear holding W (fan_in, fan_out) and b (None: no bias), built without the global RNG."""
    return KINDS[LINEAR_TYPES[kind]].build(W, b)


def make_bn(kind, stats, eps, affine=True, dtype=F64):
    """An eval-mode core or torch.nn BatchNorm1d with running stats μ, v and (if affine) γ, β from `stats`,
    each clamped into the finite range of `dtype` (float16 ends at 65504)."""
    top = torch.finfo(dtype).max
    mean, var, gm, beta = (t.clamp(-top, top).to(dtype) for t in stats)
    terms = NormTerms(mean, var, gm if affine else None, beta if affine else None, eps)
    return KINDS[NORM_TYPES[kind]].build(terms, 0.1).eval()


PAIR_DECADES = {"W": (-2, 1), "b": (-1, 2), "x": (-2, 2)}


@dataclass(frozen=True)
class PairCase:
    """A Linear(fan_in, fan_out) and a BatchNorm1d after it (direction 'after') or before it ('before').

    W, b and x hold the values of the weight (fan_in, fan_out), the bias (fan_out) and the input batch
    (batch, fan_in), cycled over those shapes; for 'before', x holds offsets from μ, since a BatchNorm's inputs
    sit around its running mean. var and gamma name the modes of `stats`.
    """

    kind: str = "core"
    direction: str = "after"
    fan_in: int = 1
    fan_out: int = 1
    batch: int = 1
    bias: bool = True
    affine: bool = True
    dtype: torch.dtype = torch.float32
    eps: float = 1e-5
    var: str = "loguniform"
    gamma: str = "normal"
    W: tuple | None = None
    b: tuple | None = None
    x: tuple | None = None
    stats: NormStats | None = None

    def shapes(self):
        return {"W": (self.fan_in, self.fan_out), "b": (self.fan_out,), "x": (self.batch, self.fan_in)}

    @property
    def bn_dim(self):
        return self.fan_out if self.direction == "after" else self.fan_in

    def __post_init__(self):
        fill_missing(self, **{name: spread(drawn_size(shape), PAIR_DECADES[name])
                              for name, shape in self.shapes().items()},
                     stats=NormStats.spread(self.bn_dim, self.var, self.gamma))

    def build(self):
        """(linear, bn, x): eval-mode layers of self.dtype and an input batch x for the pair."""
        W, b, x = (cycled(getattr(self, name), shape) for name, shape in self.shapes().items())
        stats = self.stats.tensors(self.bn_dim)
        if self.direction == "before":
            x = x + stats[0]
        linear = make_linear(self.kind, W.to(self.dtype), b.to(self.dtype) if self.bias else None)
        return linear.eval(), make_bn(self.kind, stats, self.eps, self.affine, self.dtype), x.to(self.dtype)

    def sequential(self):
        """(torch.nn.Sequential of the pair in its order, x)."""
        linear, bn, x = self.build()
        return torch.nn.Sequential(*((linear, bn) if self.direction == "after" else (bn, linear))), x


eps_values = st.floats(-8, -1).map(lambda e: 10.0**e)


@st.composite
def pair_cases(draw, dtypes=(torch.float32, torch.float64), kinds=("core", "torch"), directions=("after", "before"),
               max_fan=128, max_batch=256):
    """PairCases of fan-in and fan-out 1..max_fan, batch 1..max_batch, any kind, direction, mode and ε ∈ [1e-8, 0.1].

    Values (see CYCLE): |W| ∈ [0.01, 10], |b| ∈ [0.1, 100], |x − μ| (before) or |x| ∈ [0.01, 100], statistics as
    norm_stats draws them.
    """
    case = PairCase(draw(st.sampled_from(kinds)), draw(st.sampled_from(directions)), draw(st.integers(1, max_fan)),
                    draw(st.integers(1, max_fan)), draw(st.integers(1, max_batch)), draw(st.booleans()),
                    draw(st.booleans()), draw(st.sampled_from(dtypes)), draw(eps_values),
                    draw(st.sampled_from(VAR_MODES)), draw(st.sampled_from(GAMMA_MODES)))
    return replace(case, **draw(tensor_values(case.shapes(), PAIR_DECADES)),
                   stats=draw(norm_stats(case.bn_dim, case.var, case.gamma)))

# Convolutions with a BatchNorm after or before them.

CONV_TYPES = {(d, transposed): t for t, kind in KINDS.items() if isinstance(kind, ConvKind)
              for d, transposed in [(kind.spatial, kind.transposed)]}
BN_TYPES = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}
CONV_DECADES = {"W": (-2, 1), "b": (-1, 1), "x": (-2, 2)}


@dataclass(frozen=True)
class ConvPairCase:
    """A Conv{d}d (or ConvTranspose{d}d) and a BatchNorm{d}d after it ('after') or before it ('before').

    W, b and x hold the values of the weight, the bias and the input batch, cycled over their shapes (`shapes`);
    for 'before', x holds offsets from each channel's μ. var and gamma name the modes of `stats`.
    """

    spatial: int = 2
    transposed: bool = False
    direction: str = "after"
    groups: int = 1
    in_per_group: int = 1
    out_per_group: int = 1
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    padding: tuple = (0, 0)
    padding_mode: str = "zeros"
    size: tuple = (3, 3)  # spatial input size
    batch: int = 1
    bias: bool = True
    affine: bool = True
    dtype: torch.dtype = torch.float32
    eps: float = 1e-5
    var: str = "loguniform"
    gamma: str = "normal"
    W: tuple | None = None
    b: tuple | None = None
    x: tuple | None = None
    stats: NormStats | None = None

    @property
    def channels(self):
        """(C_in, C_out)."""
        return self.groups * self.in_per_group, self.groups * self.out_per_group

    @property
    def bn_dim(self):
        return self.channels[1] if self.direction == "after" else self.channels[0]

    def shapes(self):
        c_in, c_out = self.channels
        weight = (c_in, self.out_per_group) if self.transposed else (c_out, self.in_per_group)
        return {"W": (*weight, *self.kernel), "b": (c_out,), "x": (self.batch, c_in, *self.size)}

    def __post_init__(self):
        fill_missing(self, **{name: spread(drawn_size(shape), CONV_DECADES[name])
                              for name, shape in self.shapes().items()},
                     stats=NormStats.spread(self.bn_dim, self.var, self.gamma))

    def build(self):
        """(conv, bn, x): eval-mode layers of self.dtype and an input batch for the pair."""
        c_in, c_out = self.channels
        conv_type = CONV_TYPES[self.spatial, self.transposed]
        if self.transposed:
            conv = conv_type(c_in, c_out, self.kernel, self.stride, self.padding, 0, self.groups, self.bias,
                             self.dilation, device="meta")
        else:
            conv = conv_type(c_in, c_out, self.kernel, self.stride, self.padding, self.dilation, self.groups,
                             self.bias, self.padding_mode, device="meta")
        W, b, x = (cycled(getattr(self, name), shape) for name, shape in self.shapes().items())
        conv.weight = torch.nn.Parameter(W.to(self.dtype))
        conv.bias = torch.nn.Parameter(b.to(self.dtype)) if self.bias else None
        stats = self.stats.tensors(self.bn_dim)
        mean, var, gm, beta = (t.to(self.dtype) for t in stats)
        terms = NormTerms(mean, var, gm if self.affine else None, beta if self.affine else None, self.eps)
        bn = KINDS[BN_TYPES[self.spatial]].build(terms, 0.1).eval()
        if self.direction == "before":
            x = x + channelwise(stats[0], x.ndim)
        return conv.eval(), bn, x.to(self.dtype)

    def sequential(self):
        conv, bn, x = self.build()
        return torch.nn.Sequential(*((conv, bn) if self.direction == "after" else (bn, conv))), x


def channelwise(v, ndim):
    return v.reshape(-1, *([1] * (ndim - 2)))


@st.composite
def conv_pair_cases(draw, dtypes=(torch.float32, torch.float64), directions=("after", "before"), exact=True):
    """A conv/BN pair of any spatial dims, groups, kernel, stride, dilation, padding and padding mode.

    With exact, a BN before its conv gets padding 0 or a padding mode other than zeros (the folds that are
    exact); without, a BN before a conv may meet a zero-padded border. Values (see CYCLE): |W| ∈ [0.01, 10],
    |b| ∈ [0.1, 10], |x − μ| (before) or |x| ∈ [0.01, 100], statistics as norm_stats draws them.
    """
    d = draw(st.integers(1, 3))
    direction = draw(st.sampled_from(directions))
    transposed = direction == "after" and draw(st.booleans())
    per_dim = st.tuples(*[st.integers(1, 3 if d < 3 else 2)] * d)
    kernel, dilation, stride = draw(per_dim), draw(st.tuples(*[st.integers(1, 2)] * d)), draw(per_dim)
    mode = "zeros" if transposed else draw(st.sampled_from(("zeros", "reflect", "replicate", "circular")))
    if transposed:
        padding = tuple(draw(st.integers(0, dl * (k - 1) // 2)) for k, dl in zip(kernel, dilation))
    elif direction == "before" and mode == "zeros" and exact:
        padding = (0,) * d
    else:
        padding = draw(st.tuples(*[st.integers(0, 2)] * d))
    size = tuple(draw(st.integers(max(dl * (k - 1) + 1 - 2 * p, p + 1, 1), max(dl * (k - 1) + 1, p + 1) + 3))
                 for k, dl, p in zip(kernel, dilation, padding))
    case = ConvPairCase(d, transposed, direction, draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                        draw(st.integers(1, 3)), kernel, stride, dilation, padding, mode, size,
                        draw(st.integers(1, 4)), draw(st.booleans()), draw(st.booleans()),
                        draw(st.sampled_from(dtypes)), draw(eps_values), draw(st.sampled_from(VAR_MODES)),
                        draw(st.sampled_from(GAMMA_MODES)))
    return replace(case, **draw(tensor_values(case.shapes(), CONV_DECADES)),
                   stats=draw(norm_stats(case.bn_dim, case.var, case.gamma)))
