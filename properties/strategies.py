"""Shared hypothesis strategies. Each builds valid inputs directly rather than filtering."""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from hypothesis import strategies as st

from core.init import apply_init
from core.kinds import KINDS, NormTerms
from core.layers import ACTIVATIONS, BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from core.model import CharMLP

name_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
names_st = st.text(name_chars, min_size=1, max_size=12)
name_lists = st.lists(names_st, min_size=1, max_size=40)


# Folding: a Linear/BatchNorm1d pair or a whole model, described by plain fields and built from a
# seed, so that @example can pin an edge case (v = 0, γ = 0, batch 1, fan 1) by hand.

F64 = torch.float64
VAR_MODES = ("loguniform", "mixed", "zero")  # v log-uniform in [1e-6, 1e6]; a quarter of them 0; all 0
GAMMA_MODES = ("normal", "zero", "negative")  # γ normal with a quarter 0; all 0; all < 0


def log_uniform(g, n, lo, hi):
    """n values 10^U(lo, hi)."""
    return 10 ** (lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64))


def some_zeros(g, t, fraction=0.25):
    return torch.where(torch.rand(t.shape, generator=g, dtype=F64) < fraction, 0.0, t)


def bn_stats(g, dim, var="loguniform", gamma="normal", mean_decades=(-3, 3), var_decades=(-6, 6)):
    """(μ, v, γ, β) in float64: μ = ±10^U(mean_decades), v = 10^U(var_decades) (see VAR_MODES), γ (GAMMA_MODES), β."""
    sign = torch.randint(0, 2, (dim,), generator=g, dtype=F64) * 2 - 1
    mean = sign * log_uniform(g, dim, *mean_decades)
    v = log_uniform(g, dim, *var_decades)
    v = {"loguniform": v, "mixed": some_zeros(g, v), "zero": torch.zeros(dim, dtype=F64)}[var]
    gm = torch.randn(dim, generator=g, dtype=F64) * log_uniform(g, dim, -1, 1)
    gm = {"normal": some_zeros(g, gm), "zero": torch.zeros(dim, dtype=F64), "negative": -gm.abs() - 1e-3}[gamma]
    beta = torch.randn(dim, generator=g, dtype=F64) * log_uniform(g, dim, -1, 2)
    return mean, v, gm, beta


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


@dataclass(frozen=True)
class PairCase:
    """A Linear(fan_in, fan_out) and a BatchNorm1d after it (direction 'after') or before it ('before')."""

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
    seed: int = 0

    def build(self):
        """(linear, bn, x): eval-mode layers of self.dtype and an input batch x for the pair."""
        g = torch.Generator().manual_seed(self.seed)
        W = torch.randn(self.fan_in, self.fan_out, generator=g, dtype=F64) / math.sqrt(self.fan_in)
        b = torch.randn(self.fan_out, generator=g, dtype=F64) * 10 if self.bias else None
        dim = self.fan_out if self.direction == "after" else self.fan_in
        stats = bn_stats(g, dim, self.var, self.gamma)
        x = torch.randn(self.batch, self.fan_in, generator=g, dtype=F64) * log_uniform(g, 1, -1, 2)
        if self.direction == "before":  # around the running mean, as a BatchNorm's inputs are
            x = x + stats[0]
        linear = make_linear(self.kind, W.to(self.dtype), None if b is None else b.to(self.dtype))
        return linear.eval(), make_bn(self.kind, stats, self.eps, self.affine, self.dtype), x.to(self.dtype)

    def sequential(self):
        """(torch.nn.Sequential of the pair in its order, x)."""
        linear, bn, x = self.build()
        return torch.nn.Sequential(*((linear, bn) if self.direction == "after" else (bn, linear))), x


def pair_cases(dtypes=(torch.float32, torch.float64), kinds=("core", "torch"), directions=("after", "before"),
               max_fan=128, max_batch=256):
    return st.builds(
        PairCase,
        kind=st.sampled_from(kinds),
        direction=st.sampled_from(directions),
        fan_in=st.integers(1, max_fan),
        fan_out=st.integers(1, max_fan),
        batch=st.integers(1, max_batch),
        bias=st.booleans(),
        affine=st.booleans(),
        dtype=st.sampled_from(dtypes),
        eps=st.floats(-8, -1).map(lambda e: 10.0**e),
        var=st.sampled_from(VAR_MODES),
        gamma=st.sampled_from(GAMMA_MODES),
        seed=st.integers(0, 2**32 - 1),
    )


@dataclass(frozen=True)
class ModelCase:
    """A model of Linears widths[0] -> widths[1] -> ...; gaps[k] lists the 'bn'/'tanh'/'relu' layers before Linear k
    (the last gap follows the last Linear). kind 'charmlp' wraps the core layers in a CharMLP of context 1."""

    kind: str
    widths: tuple
    gaps: tuple
    batch: int
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def build(self):
        """(model, X) in eval mode, dtype self.dtype; X indices for a CharMLP, else a float batch."""
        g = torch.Generator().manual_seed(self.seed)
        layer_kind = "torch" if self.kind == "torch" else "core"
        activations = {"tanh": torch.nn.Tanh if layer_kind == "torch" else Tanh,
                       "relu": torch.nn.ReLU if layer_kind == "torch" else ReLU}
        layers, width = [], self.widths[0]
        for k, gap in enumerate(self.gaps):
            for token in gap:
                if token == "bn":
                    stats = bn_stats(g, width, mean_decades=(-3, 1), var_decades=(-2, 2))
                    layers.append(make_bn(layer_kind, stats, 1e-5, dtype=self.dtype))
                else:
                    layers.append(activations[token]())
            if k + 1 < len(self.widths):
                W = torch.randn(width, self.widths[k + 1], generator=g, dtype=F64) / math.sqrt(width)
                b = torch.randn(self.widths[k + 1], generator=g, dtype=F64) if torch.rand(1, generator=g) < 0.5 else None
                layers.append(make_linear(layer_kind, W.to(self.dtype), None if b is None else b.to(self.dtype)))
                width = self.widths[k + 1]
        if self.kind == "charmlp":
            C = torch.randn(27, self.widths[0], generator=g, dtype=F64).to(self.dtype)
            model = CharMLP(C, layers, context_length=1)
            return model.eval(), torch.randint(0, 27, (self.batch, 1), generator=g)
        X = torch.randn(self.batch, self.widths[0], generator=g, dtype=F64) * 3
        return torch.nn.Sequential(*layers).eval(), X.to(self.dtype)


@st.composite
def model_cases(draw, dtypes=(torch.float32, torch.float64), max_width=32, max_batch=64):
    """Depth 1..6, widths 1..max_width, each gap 0..3 of BatchNorm/Tanh/ReLU: BNs land after, before and away from Linears."""
    depth = draw(st.integers(1, 6))
    widths = tuple(draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1)))
    gap = st.lists(st.sampled_from(("bn", "bn", "tanh", "relu")), max_size=3).map(tuple)
    gaps = tuple(draw(st.lists(gap, min_size=depth + 1, max_size=depth + 1)))
    return ModelCase(draw(st.sampled_from(("core", "torch", "charmlp"))), widths, gaps,
                     draw(st.integers(1, max_batch)), draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**32 - 1)))


# One strategy per layer kind of core.kinds.KINDS (keyed by the same types): values drawn by hypothesis.

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
    return KINDS[layer_type].build(NormTerms(mean, var, gm if affine else None, beta if affine else None, eps), 0.1).eval()


KIND_STRATEGIES = {
    Linear: linear_layers(Linear),
    torch.nn.Linear: linear_layers(torch.nn.Linear),
    BatchNorm1d: norm_layers(BatchNorm1d),
    torch.nn.BatchNorm1d: norm_layers(torch.nn.BatchNorm1d),
    **{t: st.builds(t).map(torch.nn.Module.eval) for t in (Tanh, torch.nn.Tanh, Sigmoid, torch.nn.Sigmoid, ReLU, torch.nn.ReLU, torch.nn.Identity)},
    torch.nn.Dropout: st.floats(0, 0.9).map(lambda p: torch.nn.Dropout(p).eval()),
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
        for k, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
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
