"""CharMLPs for the zero-init laws (makemore/test_zero_init.py): cases of random depth and width built under an init
scheme (`mlp_cases`), the rows they train on (`contexts`, `label_lists`, `problems`), and labels."""

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from hypothesis import strategies as st

from core.makemore.init import apply_init
from core.makemore.layers import ACTIVATIONS, BatchNorm1d, Linear
from core.makemore.model import CharMLP
from properties.strategies.values import F64

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
