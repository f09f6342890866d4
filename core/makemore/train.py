"""Seeded minibatch SGD: the same generator seed gives the same parameters, bit for bit."""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


@dataclass
class History:
    losses: list[float] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)


def train(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 0.1, *,
          generator: torch.Generator, device: torch.device | str | None = None, progress: bool = True,
          on_step: Callable[[int, nn.Module], None] | None = None) -> History:
    """Plain SGD p -= lr * grad on cross-entropy, batches drawn with `generator` (on the CPU, so any device agrees).

    `on_step(step, model)` runs after each update (diagnostics use it). The model is left in training mode.
    """
    device = torch.device(device) if device is not None else model.C.device
    model.to(device)
    model.train()
    X, Y = X.to(device), Y.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = torch.empty(steps, device=device)
    bar = tqdm(total=steps, disable=not (progress and sys.stderr.isatty()), unit="step", leave=False)  # on stderr
    start = time.perf_counter()
    with bar:
        for step in range(steps):
            ix = torch.randint(X.shape[0], (batch_size,), generator=generator, device=generator.device).to(device)
            loss = F.cross_entropy(model(X.index_select(0, ix)), Y.index_select(0, ix))  # = X[ix], Y[ix], a cheaper op
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-lr)
            losses[step] = loss.detach()
            if on_step is not None:
                on_step(step, model)
            if step % 1000 == 999 or step == steps - 1:
                bar.set_postfix(loss=f"{losses[step]:.4f}", refresh=False)
                bar.update(step + 1 - bar.n)
    values = losses.tolist()  # waits for the device, so the wall time below includes its work
    return History(losses=values, wall_time=time.perf_counter() - start)
