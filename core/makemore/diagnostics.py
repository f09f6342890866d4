"""Activation and gradient statistics through hooks, alive parameters, and a recorder for training runs.

These are the diagnostics of makemore part 3 (activation / gradient histograms, grad:data and
update:data ratios), taken with hooks instead of a stored `.out` on every layer: hooks live for
the duration of a `with` block and are removed on exit, and no diagnostic changes the model
(BatchNorm running statistics are restored after a training-mode pass).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from core.makemore.model import CharMLP

SATURATION = 0.97  # a tanh output with |t| above this passes less than 1 - 0.97² ≈ 6% of the gradient


@dataclass
class LayerStats:
    """One layer's output t on a batch, and the loss gradient dL/dt (None when no gradient reached it)."""

    index: int
    kind: str
    mean: float
    std: float
    saturation: float  # share of entries with |t| > SATURATION; meaningful for Tanh outputs
    grad_mean: float | None = None
    grad_std: float | None = None


@dataclass
class ParamStats:
    """One parameter's gradient on a batch; the ratios are nan or inf where the parameter is constant."""

    name: str
    shape: tuple[int, ...]
    grad_mean: float
    grad_std: float
    grad_data: float  # std(grad) / std(data)
    update_data: float  # std(lr * grad) / std(data), the size of a plain SGD step relative to the data


@dataclass
class Diagnosis:
    loss: float
    layers: list[LayerStats]
    params: list[ParamStats]


def _mean_std(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return t.mean().item(), t.std(correction=0).item()  # population std: defined for a single entry too


def std_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """std(a) / std(b) in float64: the grad:data and update:data ratios."""
    return (a.detach().double().std(correction=0) / b.detach().double().std(correction=0)).item()


def _remove_all(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class LayerProbe:
    """Forward hooks on every layer of `model.layers`; each records its output's stats, and dL/d(output)'s on backward.

    >>> with LayerProbe(model, keep_outputs=True) as probe:
    ...     model.loss(X, Y).backward()
    >>> probe.layers[0].saturation, probe.outputs[0], probe.output_grads[0]

    With keep_outputs, copies of every output and of its gradient are kept too (for histograms).
    """

    def __init__(self, model: CharMLP, keep_outputs: bool = False) -> None:
        self.model = model
        self.keep_outputs = keep_outputs
        self.layers: dict[int, LayerStats] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.output_grads: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> "LayerProbe":
        for index, layer in enumerate(self.model.layers):
            self._handles.append(layer.register_forward_hook(partial(self._forward, index)))
        return self

    def __exit__(self, *exc: object) -> None:
        _remove_all(self._handles)

    def _forward(self, index: int, layer: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
        mean, std = _mean_std(out)
        saturation = (out.detach().abs() > SATURATION).double().mean().item()
        self.layers[index] = LayerStats(index, type(layer).__name__, mean, std, saturation)
        if self.keep_outputs:
            self.outputs[index] = out.detach().clone()
        if out.requires_grad:
            out.register_hook(partial(self._backward, index))

    def _backward(self, index: int, grad: torch.Tensor) -> None:
        self.layers[index].grad_mean, self.layers[index].grad_std = _mean_std(grad)
        if self.keep_outputs:
            self.output_grads[index] = grad.detach().clone()


@contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer (BatchNorm running statistics) on exit, whatever the block did to them."""
    saved = [(buf, buf.clone()) for buf in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _gradients(model: CharMLP, X: torch.Tensor,
               Y: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, nn.Parameter, torch.Tensor | None]]]:
    """(loss, [(name, param, grad or None)]) for the batch, through autograd.grad: no `.grad` is written."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = model.loss(X, Y)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return loss, [(n, p, g) for (n, p), g in zip(named, grads)]


def diagnose(model: CharMLP, X: torch.Tensor, Y: torch.Tensor, lr: float = 0.1) -> Diagnosis:
    """Activation stats of every layer and gradient stats of every parameter on one batch (model's current mode)."""
    with preserved_buffers(model), LayerProbe(model) as probe:
        loss, named = _gradients(model, X, Y)
    params = []
    for name, p, g in named:
        g = torch.zeros_like(p) if g is None else g
        grad_mean, grad_std = _mean_std(g)
        params.append(ParamStats(name, tuple(p.shape), grad_mean, grad_std, std_ratio(g, p), std_ratio(lr * g, p)))
    return Diagnosis(loss.item(), [probe.layers[i] for i in sorted(probe.layers)], params)


def alive(model: CharMLP, X: torch.Tensor, Y: torch.Tensor) -> list[str]:
    """Names of the parameters whose gradient on the batch (X, Y) has a nonzero entry, in model order."""
    with preserved_buffers(model):
        _, named = _gradients(model, X, Y)
    return [name for name, _, g in named if g is not None and bool(g.count_nonzero())]


def output_bias(model: CharMLP) -> str:
    """The parameter name of the output Linear's bias (for E01's net "layers.8.bias"): E01's one live parameter."""
    last = len(model.layers) - 1
    if model.layers[last].bias is None:
        raise ValueError("the model's output layer has no bias")
    return f"layers.{last}.bias"


def _nonzero(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flag per tensor: does it have a nonzero (or nan) entry?"""
    return torch.stack([t.count_nonzero() for t in tensors]) > 0


def _first_true(flags: torch.Tensor, step: int, first: torch.Tensor) -> torch.Tensor:
    """Per entry: `step` where `flags` is set and nothing was recorded yet (-1), else the recorded step."""
    return torch.where(flags & (first < 0), step, first)


class Recorder:
    """During `train`, which parameters got a nonzero gradient and which changed value, and at which step first.

    >>> with Recorder(model) as rec:
    ...     train(model, X, Y, steps, generator=g, on_step=rec.on_step)
    >>> rec.alive, rec.first_grad[output_bias(model)], rec.changed

    Gradients are seen by hooks on the parameters (so any loop using autograd works); values are
    compared with the previous step's in `on_step`. Everything stays on the model's device
    (no synchronisation per step). With `every=k`, the update:data ratio std(p_t - p_{t-1}) / std(p_t)
    of each parameter is logged at steps k-1, 2k-1, ... in `update_data[name]` as (step, ratio).
    Enter it once the model is on the device it trains on.
    """

    def __init__(self, model: nn.Module, every: int | None = None) -> None:
        self.every = every
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self._params: list[torch.Tensor] = [p for _, p in named]
        self._grads: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._ratios: list[tuple[int, list[float]]] = []

    def __enter__(self) -> "Recorder":
        device = self._params[0].device if self._params else None
        self._first_grad = torch.full((len(self._params),), -1, dtype=torch.int64, device=device)
        self._first_change = self._first_grad.clone()
        self._previous = [p.detach().clone() for p in self._params]
        for i, p in enumerate(self._params):
            self._handles.append(p.register_hook(partial(self._keep_grad, i)))
        return self

    def __exit__(self, *exc: object) -> None:
        _remove_all(self._handles)
        self._grads.clear()

    def _keep_grad(self, i: int, grad: torch.Tensor) -> None:
        self._grads[i] = grad

    def on_step(self, step: int, model: nn.Module | None = None) -> None:
        """Call after each update (train's `on_step`): fold this step's gradients and changes into the record."""
        with torch.no_grad():
            grads = [self._grads.get(i, p.new_zeros(())) for i, p in enumerate(self._params)]
            self._grads.clear()
            self._first_grad = _first_true(_nonzero(grads), step, self._first_grad)
            current = [p.detach() for p in self._params]
            deltas = torch._foreach_sub(current, self._previous)
            self._first_change = _first_true(_nonzero(deltas), step, self._first_change)
            if self.every and step % self.every == self.every - 1:
                self._ratios.append((step, [std_ratio(d, p) for d, p in zip(deltas, current)]))
            torch._foreach_copy_(self._previous, current)

    def _by_name(self, first: torch.Tensor) -> dict[str, int | None]:
        return {n: (s if s >= 0 else None) for n, s in zip(self.names, first.tolist())}

    @property
    def first_grad(self) -> dict[str, int | None]:
        """Per parameter, the first step whose gradient had a nonzero entry (None: never)."""
        return self._by_name(self._first_grad)

    @property
    def first_change(self) -> dict[str, int | None]:
        """Per parameter, the first step whose update changed its value (None: never)."""
        return self._by_name(self._first_change)

    @property
    def alive(self) -> list[str]:
        """Names of the parameters that got a nonzero gradient at some step, in model order."""
        return [n for n, s in self.first_grad.items() if s is not None]

    @property
    def changed(self) -> list[str]:
        """Names of the parameters whose value changed at some step, in model order."""
        return [n for n, s in self.first_change.items() if s is not None]

    @property
    def update_data(self) -> dict[str, list[tuple[int, float]]]:
        """Per parameter, the logged (step, update:data ratio) pairs (every `every` steps)."""
        return {n: [(step, ratios[i]) for step, ratios in self._ratios] for i, n in enumerate(self.names)}
