"""Whole models to fold (`model_cases`): chains of Linears with BatchNorms, Tanh and ReLU in the gaps, as a core or
torch.nn Sequential or a CharMLP, their values drawn by decades (values.py)."""

import itertools
from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

from core.makemore.layers import ReLU, Tanh
from core.makemore.model import CharMLP
from properties.strategies.pairs import make_bn, make_linear
from properties.strategies.values import (
    CYCLE,
    NormStats,
    bits,
    cycled,
    drawn_size,
    fill_missing,
    norm_stats,
    spread,
    tensor_values,
)

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
