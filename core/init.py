"""Init schemes for the Linear layers of a CharMLP; the model remembers which scheme built it."""

import torch

from core.layers import Linear


def _linears(model):
    return [layer for layer in model.layers if isinstance(layer, Linear)]


@torch.no_grad()
def kaiming(model, generator: torch.Generator, gain: float = 1.0):
    """The seed's init: W ~ gain * randn(fan_in, fan_out) / sqrt(fan_in), b = 0."""
    for layer in _linears(model):
        w = torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype)
        layer.weight.copy_(w * (gain / layer.fan_in**0.5))
        if layer.bias is not None:
            layer.bias.zero_()


@torch.no_grad()
def zeros(model, generator: torch.Generator | None = None):
    """Every Linear weight and bias is 0 (E01)."""
    for layer in _linears(model):
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()


SCHEMES = {"kaiming": kaiming, "zeros": zeros}


def apply_init(model, scheme: str, generator: torch.Generator):
    """Apply the named scheme in place, record it on the model, and return the model."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    SCHEMES[scheme](model, generator=generator)
    model.init_scheme = scheme
    return model
