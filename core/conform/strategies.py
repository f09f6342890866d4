"""The case families: hypothesis strategies that draw small models (one or two layer → BatchNorm pairs, or the
shapes a law is about) with their values.

Values lie on a dyadic grid, k/8 for |k| ≤ 32 (inputs of the half-precision family k/1024, weights scaled by 2^e):
exact in float16 and bfloat16, they shrink to 0, 1, 1/2, ..., and every value a fold forms from them in exact
arithmetic (s = γ/√(v + ε), W·s, (b − μ)·s + β, ...) is 0 or at least 2⁻¹⁰ in magnitude, so a folder's own
arithmetic never underflows, which the allowance of its fold assumes (docs/design-conv.md §11). Choices are listed
with the one a counterexample should shrink to first: a transposed conv draws groups 2 before 1, the form of a
grouped ConvTranspose that folders get wrong.
"""

from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

from core.conform.cases import (
    CHANNELS_LAST,
    CONV,
    CONV1D,
    CONV3D,
    DEPTHWISE,
    DILATED,
    FAMILIES,
    FOLD_FAMILIES,
    GROUPED,
    HALF,
    LINEAR,
    PADDED,
    PAIRED,
    SHARED,
    SHARED_FAMILY,
    SHARED_PAIR,
    STRIDED,
    TRAINING,
    TRANSPOSED,
    Case,
    LayerSpec,
)

GRID = 8  # values are k / GRID
LIMIT = 32  # |k| ≤ LIMIT: values in [−4, 4]
EPS = (1e-5, 1e-3, 0.25)


def values(n: int, grid: int = GRID, scale: float = 1.0, low: int = -LIMIT):
    """n values k/grid·scale, k in [low, LIMIT]."""
    return st.lists(st.integers(low, LIMIT), min_size=n, max_size=n).map(
        lambda ks: torch.tensor([k / grid * scale for k in ks], dtype=torch.float32))


@st.composite
def tensor(draw, shape: tuple[int, ...], grid: int = GRID, scale: float = 1.0, low: int = -LIMIT) -> torch.Tensor:
    n = 1
    for size in shape:
        n *= size
    return draw(values(n, grid, scale, low)).reshape(shape)


@dataclass(frozen=True)
class Geometry:
    """One affine layer of a chain: its type, channels in and out, and keyword arguments."""

    type: str
    c_in: int
    c_out: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    def spec(self, bias: bool, tensors: tuple[tuple[str, torch.Tensor], ...]) -> LayerSpec:
        if self.type == "Linear":
            return LayerSpec("Linear", (self.c_in, self.c_out), (("bias", bias),), tensors)
        kwargs = [("stride", self.stride), ("padding", self.padding), ("dilation", self.dilation),
                  ("groups", self.groups)]
        defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
        chosen = tuple((k, v) for k, v in kwargs if v != defaults[k]) + ((("bias", False),) if not bias else ())
        return LayerSpec(self.type, (self.c_in, self.c_out, self.kernel), chosen, tensors)

    @property
    def transposed(self) -> bool:
        return self.type.startswith("ConvTranspose")

    def weight_shape(self, dims: int) -> tuple[int, ...]:
        if self.type == "Linear":
            return (self.c_out, self.c_in)
        if self.transposed:
            return (self.c_in, self.c_out // self.groups, *[self.kernel] * dims)
        return (self.c_out, self.c_in // self.groups, *[self.kernel] * dims)

    def smallest_input(self, out: int) -> int:
        """The least spatial size of input that gives an output of at least `out`."""
        reach = self.dilation * (self.kernel - 1) + 1
        if self.transposed:  # out = (in − 1)·stride − 2·padding + reach
            return max(1, -(-(out - reach + 2 * self.padding) // self.stride) + 1)
        return max(1, (out - 1) * self.stride + reach - 2 * self.padding)


@st.composite
def geometry(draw, family: str, c_in: int) -> Geometry:
    """An affine layer of `family` reading c_in channels (c_in = 0: the layer chooses)."""
    pick = draw
    if family == LINEAR:
        return Geometry("Linear", c_in or pick(st.integers(1, 4)), pick(st.integers(1, 4)))
    dims = {CONV1D: 1, CONV3D: 3}.get(family, 2)
    kind = ("ConvTranspose" if family == TRANSPOSED else "Conv") + f"{dims}d"
    kernel = pick(st.integers(1, 2 if dims == 3 else 3))
    if family in (GROUPED, TRANSPOSED):
        groups = pick(st.sampled_from((2, 1) if family == TRANSPOSED else (2, 3)))
        if c_in % groups:
            groups = 1
        c_in = c_in or groups * pick(st.integers(1, 2))
        return Geometry(kind, c_in, groups * pick(st.integers(1, 2)), kernel,
                        stride=pick(st.integers(1, 2)) if family == TRANSPOSED else 1, groups=groups)
    if family == DEPTHWISE:
        c_in = c_in or pick(st.integers(2, 4))
        return Geometry(kind, c_in, c_in * pick(st.integers(1, 2)), kernel, groups=c_in)
    c_in = c_in or pick(st.integers(1, 3))
    c_out = pick(st.integers(1, 3))
    if family == DILATED:
        return Geometry(kind, c_in, c_out, pick(st.integers(2, 3)), dilation=pick(st.integers(2, 3)))
    if family == STRIDED:
        return Geometry(kind, c_in, c_out, kernel, stride=pick(st.integers(2, 3)))
    return Geometry(kind, c_in, c_out, kernel, padding=pick(st.integers(0, 1)))


@st.composite
def batchnorm(draw, type: str, channels: int, training: bool = False) -> LayerSpec:
    """An eval BatchNorm (train mode if `training`) with drawn statistics, affine or not, and ε."""
    affine = draw(st.sampled_from((True, False)))
    eps = draw(st.sampled_from(EPS))
    tensors = [("running_mean", draw(tensor((channels,)))),
               ("running_var", draw(tensor((channels,), low=0)))]
    if affine:
        tensors += [("weight", draw(tensor((channels,)))), ("bias", draw(tensor((channels,))))]
    kwargs = (("eps", eps),) + ((("affine", False),) if not affine else ())
    return LayerSpec(type, (channels,), kwargs, tuple(tensors), training)


def norm_type(layer: Geometry) -> str:
    return "BatchNorm1d" if layer.type == "Linear" else f"BatchNorm{layer.type[-2:]}"


@st.composite
def weights(draw, layer: Geometry, dims: int, scale: float = 1.0) -> LayerSpec:
    bias = draw(st.sampled_from((True, False)))
    tensors = [("weight", draw(tensor(layer.weight_shape(dims), scale=scale)))]
    if bias:
        tensors.append(("bias", draw(tensor((layer.c_out,)))))
    return layer.spec(bias, tuple(tensors))


@st.composite
def chain(draw, family: str) -> Case:
    """One or two layer → BatchNorm pairs of `family`, a ReLU between them, and an input just large enough."""
    dims = {CONV1D: 1, CONV3D: 3, LINEAR: 0}.get(family, 2)
    pairs = draw(st.integers(1, 2))
    layers: list[Geometry] = []
    for _ in range(pairs):
        layers.append(draw(geometry(family, layers[-1].c_out if layers else 0)))
    specs: list[LayerSpec] = []
    for k, layer in enumerate(layers):
        if k:
            specs.append(LayerSpec("ReLU", ()))
        specs += [draw(weights(layer, dims)), draw(batchnorm(norm_type(layer), layer.c_out))]
    batch = 2
    if family == LINEAR:
        shape: tuple[int, ...] = (batch, layers[0].c_in)
    else:
        size = 1
        for layer in reversed(layers):
            size = layer.smallest_input(size)
        size += draw(st.integers(0, 2))
        shape = (batch, layers[0].c_in, *[size] * dims)
    return Case(family, tuple(specs), draw(tensor(shape)), channels_last=family == CHANNELS_LAST)


@st.composite
def shared(draw, form: str) -> Case:
    """A conv and a BatchNorm after it, the conv (SHARED) or both (PAIRED) called at two places."""
    layer = draw(geometry(CONV, 0))
    size = layer.smallest_input(1) + draw(st.integers(0, 2))
    specs = (draw(weights(layer, 2)), draw(batchnorm("BatchNorm2d", layer.c_out)))
    family = SHARED_FAMILY if form == SHARED else SHARED_PAIR
    return Case(family, specs, draw(tensor((2, layer.c_in, size, size))), form=form)


@st.composite
def training(draw) -> Case:
    """A conv → BatchNorm pair whose BatchNorm is in training mode, the rest in eval."""
    layer = draw(geometry(CONV, 0))
    size = layer.smallest_input(1) + draw(st.integers(0, 2))
    specs = (draw(weights(layer, 2)), draw(batchnorm("BatchNorm2d", layer.c_out, training=True)))
    return Case(TRAINING, specs, draw(tensor((2, layer.c_in, size, size))))


@st.composite
def half(draw) -> Case:
    """A conv → BatchNorm pair in float16 or bfloat16, its weights scaled by 2^e (up to 2^12), its running variances
    small and its input small (k/1024), so that W·s may overflow float16 while the model's own outputs stay
    finite."""
    dtype = draw(st.sampled_from((torch.float16, torch.bfloat16)))
    layer = Geometry("Conv2d", draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    scale = 2.0 ** draw(st.sampled_from((0, 12, 8, 4)))
    size = layer.smallest_input(1) + draw(st.integers(0, 1))
    bn = draw(batchnorm("BatchNorm2d", layer.c_out))
    variances = st.sampled_from((1.0, 0.0, 1 / 64, 1 / 8))
    var = torch.tensor(draw(st.lists(variances, min_size=layer.c_out, max_size=layer.c_out)))
    bn = replace(bn, tensors=tuple((name, var if name == "running_var" else t) for name, t in bn.tensors))
    specs = (draw(weights(layer, 2, scale)), bn)
    return Case(HALF, specs, draw(tensor((2, layer.c_in, size, size), grid=1024)), dtype=dtype)


@st.composite
def padded(draw) -> Case:
    """A BatchNorm before a zero-padded conv (and a ReLU after it, or not)."""
    channels = draw(st.integers(1, 3))
    layer = Geometry("Conv2d", channels, draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                     padding=draw(st.integers(1, 2)))
    specs = [draw(batchnorm("BatchNorm2d", channels)), draw(weights(layer, 2))]
    if draw(st.booleans()):
        specs.append(LayerSpec("ReLU", ()))
    size = layer.smallest_input(1) + draw(st.integers(0, 2))
    return Case(PADDED, tuple(specs), draw(tensor((2, channels, size, size))))


def cases(family: str) -> st.SearchStrategy[Case]:
    """The strategy of a case family."""
    special = {SHARED_FAMILY: lambda: shared(SHARED), SHARED_PAIR: lambda: shared(PAIRED), TRAINING: training,
               HALF: half, PADDED: padded}
    if family in special:
        return special[family]()
    if family not in FOLD_FAMILIES:
        raise ValueError(f"no case family {family!r}: the families are {', '.join(FAMILIES)}")
    return chain(family)
