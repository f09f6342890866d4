"""The notebook's exercises end to end, each returning a plain dataclass for the report."""

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from core.engine.fold import fold
from core.makemore.diagnostics import Recorder
from core.makemore.evaluate import FoldAgreement, fold_agreement
from core.makemore.model import VOCAB_SIZE, CharMLP, e01_mlp, e02_mlp
from core.makemore.train import train

Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]  # part ('train', 'dev', ...) -> (X, Y)


def label_entropy(Y: torch.Tensor, num_classes: int = VOCAB_SIZE) -> float:
    """H(ĉ) = -Σ_k ĉ_k log ĉ_k in nats, ĉ the labels' marginal (0 log 0 = 0).

    It is the lowest cross-entropy a model that ignores its input can reach on these labels.
    """
    counts = torch.bincount(Y.flatten().cpu(), minlength=num_classes).double()
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum().item()


@dataclass
class E01Result:
    """E01 (all Linear weights and biases at 0): where the loss floors, and which parameters ever learned."""

    steps: int
    train_loss: float
    dev_loss: float
    dev_entropy: float  # H of the dev labels' marginal
    gap: float  # |dev_loss - dev_entropy|
    alive: list[str]  # parameters that got a nonzero gradient at some step
    losses: list[float] = field(repr=False)  # minibatch loss per step
    wall_time: float  # seconds, the whole experiment


def trained_e02(X: torch.Tensor, Y: torch.Tensor, steps: int, generator: torch.Generator) -> CharMLP:
    """The E02 net after `steps` SGD steps on (X, Y), in eval mode: its BatchNorms hold realistic statistics."""
    model = e02_mlp(generator)
    train(model, X, Y, steps, generator=generator, progress=False)
    return model.eval()


@torch.no_grad()
def _loss(model: CharMLP, X: torch.Tensor, Y: torch.Tensor, device: torch.device) -> float:
    return model.loss(X.to(device), Y.to(device)).item()


def run_e01(splits: Splits, steps: int = 100_000, batch_size: int = 64, lr: float = 0.1, seed: int = 42,
            device: torch.device | str | None = None, progress: bool = True, init: str = "zeros") -> E01Result:
    """Train the notebook's E01 net on splits['train'] with plain SGD, recording which parameters ever got a gradient.

    `splits` maps 'train' and 'dev' to (X, Y). One generator seeded with `seed` draws the embedding
    and every minibatch, so a seed fixes the run.
    """
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device or "cpu")
    model = e01_mlp(g, init=init).to(device)
    X, Y = splits["train"]
    with Recorder(model) as recorder:
        history = train(model, X, Y, steps, batch_size=batch_size, lr=lr, generator=g, device=device,
                        progress=progress, on_step=recorder.on_step)
    model.eval()
    dev_X, dev_Y = splits["dev"]
    dev_loss, dev_entropy = _loss(model, dev_X, dev_Y, device), label_entropy(dev_Y)
    return E01Result(
        steps=steps,
        train_loss=_loss(model, X, Y, device),
        dev_loss=dev_loss,
        dev_entropy=dev_entropy,
        gap=abs(dev_loss - dev_entropy),
        alive=recorder.alive,
        losses=history.losses,
        wall_time=time.perf_counter() - start,
    )


@dataclass
class E02Result:
    """E02 (Linear→BatchNorm1d→Tanh net): the trained net, its folded twin, and how closely they agree on dev."""

    steps: int
    dev: FoldAgreement
    bn_left: int  # BatchNorms the fold had to keep (0 for this architecture)
    losses: list[float] = field(repr=False)
    unfolded: nn.Module = field(repr=False)
    folded: nn.Module = field(repr=False)
    wall_time: float


def run_e02(splits: Splits, steps: int = 100_000, batch_size: int = 64, lr: float = 0.1, seed: int = 42,
            device: torch.device | str | None = None, progress: bool = True) -> E02Result:
    """Train the notebook's E02 net, fold every BatchNorm into its Linear, and compare both on the dev set in eval."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device or "cpu")
    model = e02_mlp(g).to(device)
    X, Y = splits["train"]
    history = train(model, X, Y, steps, batch_size=batch_size, lr=lr, generator=g, device=device, progress=progress)
    model.eval()
    folded, report = fold(model)
    dev_X, dev_Y = (t.to(device) for t in splits["dev"])
    return E02Result(
        steps=steps,
        dev=fold_agreement(model, folded, dev_X, dev_Y, report.plan),
        bn_left=len(report.kept),
        losses=history.losses,
        unfolded=model,
        folded=folded,
        wall_time=time.perf_counter() - start,
    )
