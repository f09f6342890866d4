"""The bound on the change of a mean cross-entropy, given a bound on the change of its logits."""

import math

import torch

from core.engine.algebra import f64
from core.engine.bound.rounding import SAFETY, U64, rounding_bound


def loss_bound(logits: torch.Tensor, bound: torch.Tensor, Y: torch.Tensor) -> float:
    """Bound on |CE(z, Y) − CE(z', Y)|, mean cross-entropies evaluated in float64, given |z − z'| ≤ bound.

    Per row CE = logsumexp(z) − z_y, and logsumexp is 1-Lipschitz in the max-norm: the exact values
    differ by at most max_k bound_k + bound_y. Each float64 evaluation (the max shift, V exps and
    additions, a log, the label term, a mean of N rows) is off by at most γ₆₄(N + V + 8) times
    2·max_k |z_k| + log V per row, where |z'| ≤ |z| + bound.
    """
    N, V = logits.shape
    lipschitz = (bound.amax(1) + bound.gather(1, Y[:, None].cpu())[:, 0]).mean().item()
    size = (2 * (f64(logits).abs() + bound).amax(1) + math.log(V)).mean().item()
    return (lipschitz + 2 * rounding_bound(N + V + 8, U64) * size) * SAFETY
