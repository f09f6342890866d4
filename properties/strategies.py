"""Shared hypothesis strategies. Each builds valid inputs directly rather than filtering."""

import functools
import itertools
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from hypothesis import strategies as st

from core.engine.bound.rules import move_rule
from core.engine.kinds import KINDS, ConvKind, LinearKind, MapKind, NormKind, NormTerms
from core.makemore.init import apply_init
from core.makemore.layers import ACTIVATIONS, BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from core.makemore.model import CharMLP

name_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
names_st = st.text(name_chars, min_size=1, max_size=12)
name_lists = st.lists(names_st, min_size=1, max_size=40)


# Folding: a Linear/BatchNorm1d pair, a conv/BatchNorm pair or a whole model, described by plain fields and the
# values of its tensors, all drawn by hypothesis: a failure shrinks to a small case of round values (1.0, 10.0, 0),
# and @example can pin an edge case (v = 0, γ = 0, batch 1, fan 1, huge or tiny values) by hand. A value field
# left None (as in most @examples) is filled by `spread`: fixed values over the same decades, in the case's modes.
#
# A value is ±10^e, e in a range of decades (one drawn byte, see tensor_values), so values spread over decades as
# the seeded randn did and shrink to 1.0, then 10.0, 0.1, .... A tensor draws at most CYCLE values and repeats them
# in row-major order over its shape (`cycled`): fan-in and fan-out 128 and batch 256 stay reachable within
# hypothesis' data budget for a few bytes. The laws need large n because a sum of n terms rounds n times, and
# repeated terms round like fresh ones (the running sums still differ); per-unit statistics differ over CYCLE
# neighbouring units. CYCLE is prime so that a cycled matrix's rows do not repeat in step with a small fan-out.

F64 = torch.float64
CYCLE = 11
VAR_MODES = ("loguniform", "mixed", "zero")  # v = 10^e; v_0 = 0 (v_1 > 0) and any other unit 0 or not; all 0
GAMMA_MODES = ("normal", "zero", "negative")  # γ = ±10^e or 0; all 0; all −10^e < 0
GAMMA_DECADES, BETA_DECADES = (-1, 1), (-1, 2)


def cycled(values, shape) -> torch.Tensor:
    """A float64 tensor of `shape` holding `values` (a tuple, or a tuple of them) repeated in row-major order."""
    flat = torch.tensor(values, dtype=F64).flatten()
    size = math.prod(shape)
    return flat.repeat(-(-size // len(flat)))[:size].reshape(shape)


def drawn_size(shape, cycle=CYCLE) -> int:
    """How many values a tensor of `shape` draws: all of them, up to `cycle`."""
    return min(math.prod(shape), cycle)


@functools.cache
def bits(n):
    """n booleans, the bits of one drawn integer (a single draw for all n): shrinks to all False."""
    return st.integers(0, 2**n - 1).map(lambda m: tuple(bool(m >> k & 1) for k in range(n)))


@functools.cache
def exponents(lo, hi):
    """128 exponents in [lo, hi] ∋ 0, the roundest first: the integers (0, 1, −1, 2, −2, ...), then the odd multiples
    of 1/2, of 1/4, ... (each set by |e|), so 10^e for the first is 1.0, then 10.0, 0.1, 100.0, ..."""
    table, step = [], 1.0
    while len(table) < 128:
        grid = (k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1))
        table += sorted((e for e in grid if e not in table), key=lambda e: (abs(e), -e))
        step /= 2
    return tuple(table[:128])


@st.composite
def tensor_values(draw, shapes, decades, cycle=CYCLE):
    """{name: the values of a tensor of shapes[name]}: drawn_size(shape) values ±10^e, e ∈ decades[name] ∋ 0.

    Each value is one drawn byte: its low bit the sign, the rest an index into `exponents`, so a value shrinks to
    1.0 (byte 0), then to the next roundest. One string of bytes serves all the tensors, and each tensor takes
    `cycle` bytes of it whatever its shape (using the first drawn_size): hypothesis' cost is per draw (a float
    apiece would make the ci profile markedly slower), and a draw whose length changed with the shape would
    overrun when hypothesis mutates a case to a larger one.
    """
    data = draw(st.binary(min_size=cycle * len(shapes), max_size=cycle * len(shapes)))
    values = {}
    for i, (name, shape) in enumerate(shapes.items()):
        table = exponents(*decades[name])
        chunk = data[i * cycle:i * cycle + drawn_size(shape, cycle)]
        values[name] = tuple((-1.0 if b & 1 else 1.0) * 10.0 ** table[b >> 1] for b in chunk)
    return values


def spread(n, decades, signed=True):
    """n fixed values for a hand-built case: 10^e for e = 0, 1, −1, 2, −2, ... within decades, in turn; signs
    alternating (+ first) if signed."""
    exponents = sorted(range(math.ceil(decades[0]), math.floor(decades[1]) + 1), key=lambda e: (abs(e), -e))
    return tuple((-1.0 if signed and k % 2 else 1.0) * 10.0 ** exponents[k % len(exponents)] for k in range(n))


def zeroed(values, zero):
    return tuple(0.0 if z else v for v, z in zip(values, zero))


@dataclass(frozen=True)
class NormStats:
    """A BatchNorm's running mean μ, variance v, scale γ and shift β as tuples of floats, cycled over its units."""

    mean: tuple
    var: tuple
    gamma: tuple
    beta: tuple

    def tensors(self, dim):
        """(μ, v, γ, β), float64 tensors of `dim` units."""
        return tuple(cycled(t, (dim,)) for t in (self.mean, self.var, self.gamma, self.beta))

    @classmethod
    def spread(cls, dim, var="loguniform", gamma="normal", mean_decades=(-3, 3), var_decades=(-6, 6)):
        """Fixed statistics in the modes of norm_stats: zeros at the even units for var 'mixed', at the odd units
        for γ 'normal'."""
        n = min(dim, CYCLE)
        v = {"loguniform": spread(n, var_decades, signed=False), "zero": (0.0,) * n,
             "mixed": zeroed(spread(n, var_decades, signed=False), [k % 2 == 0 for k in range(n)])}[var]
        gm = {"normal": zeroed(spread(n, GAMMA_DECADES), [k % 2 == 1 for k in range(n)]), "zero": (0.0,) * n,
              "negative": tuple(-abs(g) for g in spread(n, GAMMA_DECADES))}[gamma]
        return cls(spread(n, mean_decades), v, gm, spread(n, BETA_DECADES))


@st.composite
def norm_stats(draw, dim, var="loguniform", gamma="normal", mean_decades=(-3, 3), var_decades=(-6, 6), cycle=CYCLE):
    """NormStats of min(dim, cycle) drawn units: μ = ±10^e (e ∈ mean_decades); v = 10^e (e ∈ var_decades) in the
    VAR_MODES; γ = ±10^e (e ∈ [−1, 1]) in the GAMMA_MODES; β = ±10^e (e ∈ [−1, 2])."""
    n = min(dim, cycle)
    decades = {"mean": mean_decades, "var": var_decades, "gamma": GAMMA_DECADES, "beta": BETA_DECADES}
    drawn = draw(tensor_values(dict.fromkeys(decades, (dim,)), decades, cycle))
    v, gm = tuple(map(abs, drawn["var"])), drawn["gamma"]
    var_zeros, gamma_zeros = draw(bits(cycle)), draw(bits(cycle))  # drawn in every mode: a fixed number of draws
    if var == "zero":
        v = (0.0,) * n
    elif var == "mixed":
        v = zeroed(v, (True, False, *var_zeros[2:]))
    if gamma == "zero":
        gm = (0.0,) * n
    elif gamma == "negative":
        gm = tuple(-abs(g) for g in gm)
    else:
        gm = zeroed(gm, gamma_zeros)
    return NormStats(drawn["mean"], v, gm, drawn["beta"])


def fill_missing(case, **values):
    """Sets each field in `values` that the frozen `case` holds as None (a hand-built case's fixed values)."""
    for name, value in values.items():
        if getattr(case, name) is None:
            object.__setattr__(case, name, value)


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


MODEL_DECADES = {"W": (-2, 1), "b": (-1, 1), "X": (-2, 1), "C": (-1, 1)}
MODEL_STATS = {"mean_decades": (-3, 1), "var_decades": (-2, 2)}


@dataclass(frozen=True)
class ModelCase:
    """A model of Linears widths[0] -> widths[1] -> ...; gaps[k] lists the 'bn'/'tanh'/'relu' layers before Linear k
    (the last gap follows the last Linear). kind 'charmlp' wraps the core layers in a CharMLP of context 1.

    linears holds (W, b) per Linear (b None: no bias), norms one NormStats per BatchNorm in order, X the input's
    values (a CharMLP's: character indices) and C a CharMLP's embedding, each cycled over its shape.
    """

    kind: str
    widths: tuple
    gaps: tuple
    batch: int
    dtype: torch.dtype = torch.float32
    linears: tuple | None = None
    norms: tuple | None = None
    X: tuple | None = None
    C: tuple | None = None

    def bn_widths(self):
        """The width at each BatchNorm, in order."""
        return [self.widths[k] for k, gap in enumerate(self.gaps) for token in gap if token == "bn"]

    def linear_shapes(self):
        return list(itertools.pairwise(self.widths))

    def input_shape(self):
        return (self.batch, 1) if self.kind == "charmlp" else (self.batch, self.widths[0])

    def __post_init__(self):
        fill_missing(
            self,
            linears=tuple((spread(drawn_size(shape), MODEL_DECADES["W"]),
                           spread(drawn_size(shape[1:]), MODEL_DECADES["b"]) if k % 2 == 0 else None)  # every other
                          for k, shape in enumerate(self.linear_shapes())),
            norms=tuple(NormStats.spread(w, **MODEL_STATS) for w in self.bn_widths()),
            X=tuple(range(drawn_size(self.input_shape()))) if self.kind == "charmlp"
            else spread(drawn_size(self.input_shape()), MODEL_DECADES["X"]),
            C=spread(drawn_size((27, self.widths[0])), MODEL_DECADES["C"]))

    def build(self):
        """(model, X) in eval mode, dtype self.dtype; X indices for a CharMLP, else a float batch."""
        layer_kind = "torch" if self.kind == "torch" else "core"
        activations = {"tanh": torch.nn.Tanh if layer_kind == "torch" else Tanh,
                       "relu": torch.nn.ReLU if layer_kind == "torch" else ReLU}
        norms, linears = iter(self.norms), iter(self.linears)
        layers, width = [], self.widths[0]
        for k, gap in enumerate(self.gaps):
            for token in gap:
                if token == "bn":
                    layers.append(make_bn(layer_kind, next(norms).tensors(width), 1e-5, dtype=self.dtype))
                else:
                    layers.append(activations[token]())
            if k + 1 < len(self.widths):
                W, b = next(linears)
                W = cycled(W, (width, self.widths[k + 1])).to(self.dtype)
                b = None if b is None else cycled(b, (self.widths[k + 1],)).to(self.dtype)
                layers.append(make_linear(layer_kind, W, b))
                width = self.widths[k + 1]
        if self.kind == "charmlp":
            model = CharMLP(cycled(self.C, (27, self.widths[0])).to(self.dtype), layers, context_length=1)
            return model.eval(), cycled(self.X, self.input_shape()).long()
        return torch.nn.Sequential(*layers).eval(), cycled(self.X, self.input_shape()).to(self.dtype)


@st.composite
def model_cases(draw, dtypes=(torch.float32, torch.float64), max_width=32, max_batch=64):
    """Depth 1..6, widths 1..max_width, gaps of 0..3 BatchNorm/Tanh/ReLU: BNs after, before and away from Linears.

    Each Linear has a bias or not as drawn; values as for pair_cases: |W| ∈
    [0.01, 10], |b| ∈ [0.1, 10], |X| ∈ [0.01, 10], |C| ∈ [0.1, 10], μ over [10⁻³, 10], v ∈ [10⁻², 10²] loguniform.
    """
    depth = draw(st.integers(1, 6))
    widths = tuple(draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1)))
    gap = st.lists(st.sampled_from(("bn", "bn", "tanh", "relu")), max_size=3).map(tuple)
    gaps = tuple(draw(st.lists(gap, min_size=depth + 1, max_size=depth + 1)))
    kind, batch = draw(st.sampled_from(("core", "torch", "charmlp"))), draw(st.integers(1, max_batch))
    case = ModelCase(kind, widths, gaps, batch, draw(st.sampled_from(dtypes)))
    shapes = {"C": (27, widths[0]), "X": case.input_shape()}
    decades = {"C": MODEL_DECADES["C"], "X": MODEL_DECADES["X"]}
    for k, shape in enumerate(case.linear_shapes()):
        shapes |= {f"W{k}": shape, f"b{k}": shape[1:]}
        decades |= {f"W{k}": MODEL_DECADES["W"], f"b{k}": MODEL_DECADES["b"]}
    drawn = draw(tensor_values(shapes, decades))
    if kind == "charmlp":  # character indices instead
        drawn["X"] = tuple(b % 27 for b in draw(st.binary(min_size=CYCLE, max_size=CYCLE))[:drawn_size(shapes["X"])])
    linears = tuple((drawn[f"W{k}"], drawn[f"b{k}"] if bias else None) for k, bias in enumerate(draw(bits(depth))))
    norms = tuple(draw(norm_stats(w, **MODEL_STATS)) for w in case.bn_widths())
    return replace(case, linears=linears, norms=norms, X=drawn["X"], C=drawn["C"])


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


# One strategy per layer kind of core.engine.kinds.KINDS (keyed by the same types): values drawn by hypothesis.

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


def tensors(shape, elements=finite):
    """A float64 tensor of `shape` whose every value hypothesis draws (so a failure shrinks to a readable tensor)."""
    size = math.prod(shape)
    return st.lists(elements, min_size=size, max_size=size).map(lambda v: torch.tensor(v, dtype=F64).reshape(shape))


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


# Zero-init (test_zero_init.py): CharMLPs of random depth and width, the rows they train on, and labels.

labels = st.integers(0, 26)
# C's entries: the scale of randn, ±0 included. Subnormals are left to @example: arithmetic on them is
# ~100x slower on CPUs, and a zero init never lets C's values reach a rounding.
embedding_values = st.floats(-4.0, 4.0, allow_subnormal=False)


@dataclass(frozen=True)
class MLPCase:
    """A CharMLP: C (27, emb_size); per hidden width Linear (+ BatchNorm1d) + activation; Linear to 27 (+ BatchNorm1d).

    Depth is the number of hidden layers, so the net has depth + 1 Linears. With batchnorm the
    Linears have no bias (as in E02). `embedding` holds C's 27·emb_size values row by row; without
    it C is randn from the seed's generator: generic values, for the laws that hold for all but a
    measure-zero set of C (a shrinker would drive drawn values into that set). The seed also
    feeds the init scheme, which draws from a generator by definition (kaiming, zero_last, ...).
    """

    hidden: tuple = (1,)
    activation: str = "tanh"
    context_length: int = 1
    emb_size: int = 1
    batchnorm: bool = False
    dtype: torch.dtype = F64
    seed: int = 0
    embedding: tuple | None = None

    @property
    def depth(self) -> int:
        return len(self.hidden)

    def build(self, init: str) -> CharMLP:
        g = torch.Generator().manual_seed(self.seed)
        widths = (self.context_length * self.emb_size, *self.hidden, 27)
        layers = []
        for k, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            layers.append(Linear(fan_in, fan_out, bias=not self.batchnorm, generator=g, dtype=self.dtype))
            if self.batchnorm:
                layers.append(BatchNorm1d(fan_out, dtype=self.dtype))
            if k < self.depth:
                layers.append(ACTIVATIONS[self.activation]())
        if self.embedding is None:
            C = torch.randn(27, self.emb_size, generator=g, dtype=self.dtype)
        else:
            C = torch.tensor(self.embedding, dtype=self.dtype).reshape(27, self.emb_size)
        return apply_init(CharMLP(C, layers, self.context_length), init, generator=g)


@st.composite
def mlp_cases(draw, activations=("tanh", "relu"), max_depth=6, max_width=64, batchnorm=False, dtypes=(F64,),
              embedding=False):
    """Depth 1..max_depth, widths 1..max_width, context 1..4, embedding 1..8. tanh and relu have φ(0) = 0.

    With embedding, hypothesis draws every entry of C (`embedding_values`); else C is generic (randn).
    """
    emb_size = draw(st.integers(1, 8))
    return MLPCase(
        hidden=tuple(draw(st.lists(st.integers(1, max_width), min_size=1, max_size=max_depth))),
        activation=draw(st.sampled_from(activations)),
        context_length=draw(st.integers(1, 4)),
        emb_size=emb_size,
        batchnorm=batchnorm,
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**32 - 1)),
        embedding=tuple(draw(st.lists(embedding_values, min_size=27 * emb_size, max_size=27 * emb_size)))
        if embedding else None,
    )


@st.composite
def label_lists(draw, min_size=1, max_size=128, every_class=False):
    """Next-character labels in 0..26; with every_class, each of the 27 occurs at least once (in a drawn order)."""
    if not every_class:
        return draw(st.lists(labels, min_size=min_size, max_size=max_size))
    extra = draw(st.lists(labels, min_size=max(min_size - 27, 0), max_size=max_size - 27))
    return draw(st.permutations(list(range(27)) + extra))


def contexts(rows: int, context_length: int):
    """`rows` contexts (int64, rows x context_length) whose every character index hypothesis draws."""
    size = rows * context_length
    return st.lists(labels, min_size=size, max_size=size).map(
        lambda v: torch.tensor(v, dtype=torch.int64).reshape(rows, context_length))


class Problem(NamedTuple):
    """A CharMLP case, the rows it trains on (X: contexts, Y: labels), and probe rows it never trains on."""

    case: MLPCase
    X: torch.Tensor
    Y: torch.Tensor
    X_probe: torch.Tensor
    Y_probe: torch.Tensor

    @classmethod
    def of(cls, case: MLPCase, ys) -> "Problem":
        """For @example: row i's context holds i, i + 1, ... (mod 27); the probe is one row per label."""
        def counting(rows):
            return (torch.arange(rows)[:, None] + torch.arange(case.context_length)) % 27

        return cls(case, counting(len(ys)), torch.tensor(ys, dtype=torch.int64), counting(27).flip(1), torch.arange(27))


@st.composite
def problems(draw, cases, ys=None, min_probe=1, max_probe=32):
    """A case from `cases`, labels from `ys` (label_lists() by default) with contexts of the case's length, and a
    probe of min_probe..max_probe drawn rows."""
    case = draw(cases)
    Y = draw(label_lists() if ys is None else ys)
    X = draw(contexts(len(Y), case.context_length))
    probe = draw(st.integers(min_probe, max_probe))
    X_probe = draw(contexts(probe, case.context_length))
    Y_probe = draw(st.lists(labels, min_size=probe, max_size=probe))
    return Problem(case, X, torch.tensor(Y, dtype=torch.int64), X_probe, torch.tensor(Y_probe, dtype=torch.int64))


# Floats for the float64 rounding laws (test_layers.py): the model fl(a ∘ b) = (a ∘ b)(1 + δ) assumes no
# underflow, so a drawn magnitude is 0 or at least 1e-100, and products and squares of a few such values
# stay normal. Hypothesis still shrinks towards 0 and small integers.

UNDERFLOW_FLOOR = 1e-100


def floats_without_underflow(lo: float, hi: float):
    """Floats in [lo, hi] (lo ≤ 0 ≤ hi; ±0 included) whose magnitude is 0 or ≥ UNDERFLOW_FLOOR."""
    return st.floats(lo, hi, allow_subnormal=False).map(lambda v: 0.0 if abs(v) < UNDERFLOW_FLOOR else v)


# Random conv nets (test_fold_graph.py): structure and values drawn by hypothesis, values as for the other cases
# (see CYCLE). Every block ends with an op that is no affine layer, so whether a BatchNorm folds depends on its own
# block alone: each block records, per BatchNorm, "folded" or a phrase its kept reason must hold.

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
