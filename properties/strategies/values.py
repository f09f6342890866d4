"""Tensor values by decades, and BatchNorm statistics drawn the same way in modes: the values of the folding cases.

The cases (a Linear/BatchNorm1d or a conv/BatchNorm pair in pairs.py, a whole model in models.py, a conv net in
nets.py) are described by plain fields and the values of their tensors, all drawn by hypothesis: a failure shrinks
to a small case of round values (1.0, 10.0, 0), and @example can pin an edge case (v = 0, γ = 0, batch 1, fan 1,
huge or tiny values) by hand. A value field left None (as in most @examples) is filled by `spread`: fixed values
over the same decades, in the case's modes.

A value is ±10^e, e in a range of decades (one drawn byte, see tensor_values), so values spread over decades as
the seeded randn did and shrink to 1.0, then 10.0, 0.1, .... A tensor draws at most CYCLE values and repeats them
in row-major order over its shape (`cycled`): fan-in and fan-out 128 and batch 256 stay reachable within
hypothesis' data budget for a few bytes. The laws need large n because a sum of n terms rounds n times, and
repeated terms round like fresh ones (the running sums still differ); per-unit statistics differ over CYCLE
neighbouring units. CYCLE is prime so that a cycled matrix's rows do not repeat in step with a small fan-out.
"""

import functools
import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

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
