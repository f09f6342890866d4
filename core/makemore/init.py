"""Init schemes for the Linear layers of a CharMLP; the model remembers which scheme built it.

A scheme is named by a plain string, `name` or `name(x)` with x a number such as `0.5` or `5/3`:

- `kaiming`, `kaiming(gain)`: the notebook's W = gain * randn(fan_in, fan_out) / sqrt(fan_in), b = 0
  (tanh nets use gain 5/3, i.e. `kaiming(5/3)`).
- `zeros`: every Linear weight and bias is 0 (E01).
- `constant(c)`: every Linear weight and bias is c.
- `zero_last`, `zero_last(gain)`: kaiming(gain) for every Linear but the output one, which is 0 (Fixup-like).
- `zero_weights_random_bias`: every weight is 0, every bias is randn.

Only Linear layers are touched: the embedding C and any BatchNorm keep their values.
"""

import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol, TypeVar

import torch
from torch import nn

from core.errors import ModelError
from core.makemore.layers import Linear


class LayerStack(Protocol):
    """What a scheme initialises: a net with a layer stack and the name of the scheme that built it (a CharMLP)."""

    layers: nn.Sequential
    init_scheme: str | None


Net = TypeVar("Net", bound=LayerStack)


def _linears(model: LayerStack) -> list[Linear]:
    return [layer for layer in model.layers if isinstance(layer, Linear)]


def _set(tensor: torch.Tensor | None, value: float | torch.Tensor) -> None:
    """Overwrite `tensor` (a parameter or None) with a number or a tensor of its shape."""
    if tensor is None:
        return
    if isinstance(value, torch.Tensor):
        tensor.copy_(value)
    else:
        tensor.fill_(value)


@torch.no_grad()
def kaiming(model: LayerStack, gain: float = 1.0, *, generator: torch.Generator) -> None:
    """The notebook's init: W ~ gain * randn(fan_in, fan_out) / sqrt(fan_in), b = 0."""
    for layer in _linears(model):
        w = torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype)
        _set(layer.weight, w * (gain / layer.fan_in**0.5))
        _set(layer.bias, 0.0)


@torch.no_grad()
def constant(model: LayerStack, c: float, *, generator: torch.Generator | None = None) -> None:
    """Every Linear weight and bias is c: the hidden units of a layer start identical."""
    for layer in _linears(model):
        _set(layer.weight, c)
        _set(layer.bias, c)


@torch.no_grad()
def zeros(model: LayerStack, *, generator: torch.Generator | None = None) -> None:
    """Every Linear weight and bias is 0 (E01)."""
    constant(model, 0.0)


@torch.no_grad()
def zero_last(model: LayerStack, gain: float = 1.0, *, generator: torch.Generator) -> None:
    """kaiming(gain) for every Linear, then the output Linear's weight and bias set to 0."""
    kaiming(model, gain, generator=generator)
    last = _linears(model)[-1]
    _set(last.weight, 0.0)
    _set(last.bias, 0.0)


@torch.no_grad()
def zero_weights_random_bias(model: LayerStack, *, generator: torch.Generator) -> None:
    """Every Linear weight is 0 and every bias is drawn from randn."""
    for layer in _linears(model):
        _set(layer.weight, 0.0)
        if layer.bias is not None:
            _set(layer.bias, torch.randn(layer.bias.shape, generator=generator, dtype=layer.bias.dtype))


SCHEMES: dict[str, Callable[..., None]] = {
    "kaiming": kaiming,
    "zeros": zeros,
    "constant": constant,
    "zero_last": zero_last,
    "zero_weights_random_bias": zero_weights_random_bias,
}
_TAKES_ARG = {"kaiming", "constant", "zero_last"}
_SCHEME_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def parse_scheme(scheme: str) -> tuple[str, float | None]:
    """'constant(0.5)' -> ('constant', 0.5); 'kaiming(5/3)' -> ('kaiming', 1.666...); 'zeros' -> ('zeros', None).

    ModelError for a name it does not know, a missing or extra value, or a value that is no finite number."""
    match = _SCHEME_RE.match(scheme) if isinstance(scheme, str) else None
    name, arg = match.groups() if match else (None, None)
    if name not in SCHEMES:
        raise ModelError(f"unknown init scheme {scheme!r}; choose one of {', '.join(SCHEMES)} "
                         f"(constant takes a value: constant(0.5); kaiming and zero_last take a gain: kaiming(5/3))")
    if arg is None:
        if name == "constant":
            raise ModelError(f"init scheme {scheme!r} needs a value, e.g. constant(0.5)")
        return name, None
    if name not in _TAKES_ARG:
        raise ModelError(f"init scheme {name!r} takes no argument; write {name}")
    try:
        value = float(Fraction(arg))
    except (ValueError, ZeroDivisionError) as e:
        raise ModelError(f"init scheme {scheme!r}: {arg!r} is not a number like 0.5 or 5/3") from e
    except OverflowError as e:
        raise ModelError(f"init scheme {scheme!r}: its value overflows a float") from e
    if not math.isfinite(value):
        raise ModelError(f"init scheme {scheme!r}: its value must be a finite number")
    return name, value


def apply_init(model: Net, scheme: str, generator: torch.Generator) -> Net:
    """Apply the named scheme in place, record its name on the model (`model.init_scheme`), and return the model."""
    name, arg = parse_scheme(scheme)
    args = () if arg is None else (arg,)
    SCHEMES[name](model, *args, generator=generator)
    model.init_scheme = scheme.replace(" ", "")
    return model
