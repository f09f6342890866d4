"""Seeded minibatch SGD: the same generator seed gives the same parameters, bit for bit.

Two guards refuse, with a TrainingError, what no number of steps would fix: a freshly built net whose loss is
already nan or inf (`check_initial_loss`), and parameters that turn nan or inf during training (`train`'s
`check_every`).
"""

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.errors import TrainingError
from core.makemore.model import nonfinite_tensors

DIVERGENCE_CHECK_EVERY = 100  # steps between checks that every parameter is still finite
INIT_CHECK_ROWS = 256  # rows of the training set on which a fresh net's loss must be finite


@dataclass
class History:
    losses: list[float] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)


def train(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 0.1, *,
          generator: torch.Generator, device: torch.device | str | None = None, progress: bool = True,
          on_step: Callable[[int, nn.Module], None] | None = None, check_every: int | None = None) -> History:
    """Plain SGD p -= lr * grad on cross-entropy, batches drawn with `generator` (on the CPU, so any device agrees).

    `on_step(step, model)` runs after each update (diagnostics use it). With `check_every` (e.g.
    DIVERGENCE_CHECK_EVERY), every `check_every` steps and after the last one, a parameter that is nan or inf (or,
    at the end, a last loss that is) stops training with a TrainingError. The model is left in training mode.
    """
    target = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(target)
    model.train()
    X, Y = X.to(target), Y.to(target)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    losses = torch.empty(steps, device=target)
    bar = tqdm(total=steps, disable=not (progress and sys.stderr.isatty()), unit="step", leave=False)  # on stderr
    start = time.perf_counter()
    with bar:
        for step in range(steps):
            ix = torch.randint(X.shape[0], (batch_size,), generator=generator, device=generator.device).to(target)
            loss = F.cross_entropy(model(X.index_select(0, ix)), Y.index_select(0, ix))  # = X[ix], Y[ix], a cheaper op
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-lr)
            losses[step] = loss.detach()
            if on_step is not None:
                on_step(step, model)
            if check_every is not None and (step + 1) % check_every == 0:
                refuse_nonfinite_parameters(model, step + 1)
            if step % 1000 == 999 or step == steps - 1:
                bar.set_postfix(loss=f"{losses[step]:.4f}", refresh=False)
                bar.update(step + 1 - bar.n)
    values = losses.tolist()  # waits for the device, so the wall time below includes its work
    if check_every is not None and values:
        refuse_nonfinite_parameters(model, steps)
        if not math.isfinite(values[-1]):
            raise TrainingError(f"training diverged: the last loss is {values[-1]}; lower the learning rate")
    return History(losses=values, wall_time=time.perf_counter() - start)


def refuse_nonfinite_parameters(model: nn.Module, steps_done: int) -> None:
    """TrainingError if any parameter or buffer of `model` holds a nan or an inf after `steps_done` steps."""
    if nonfinite_tensors(model):
        raise TrainingError(f"training diverged: parameters became nan or inf by step {steps_done}; "
                            f"lower the learning rate")


def check_initial_loss(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, rows: int = INIT_CHECK_ROWS) -> None:
    """Refuse (TrainingError) a freshly built net whose loss on the first `rows` rows is already nan or inf: its
    activations overflow, and training could only diverge. The model's training mode is left as it was."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(X[:rows]), Y[:rows]).item()
    model.train(was_training)
    if not math.isfinite(loss):
        raise TrainingError(f"the freshly built net's loss is already {loss} (its activations overflow); "
                            f"build it with a smaller init value")
