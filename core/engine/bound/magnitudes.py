"""|t| in float64, computed once per tensor while a bound is being evaluated (the weights are read once per fold
upstream of them)."""

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from core.engine.algebra import f64

_MAGNITUDES: contextvars.ContextVar[dict[int, tuple[torch.Tensor, torch.Tensor]] | None] = contextvars.ContextVar(
    "magnitudes", default=None)


def absolute(t: torch.Tensor) -> torch.Tensor:
    """|t| in float64 on the CPU; within `magnitudes_kept()` computed once per tensor (error_bound reads each weight
    once per fold upstream of it)."""
    kept = _MAGNITUDES.get()
    if kept is None:
        return f64(t).abs()
    if id(t) not in kept:
        kept[id(t)] = (t, f64(t).abs())  # t itself is held too, so no other tensor takes its id meanwhile
    return kept[id(t)][1]


@contextlib.contextmanager
def magnitudes_kept() -> Iterator[None]:
    """Within it, `absolute` computes |t| once per tensor and keeps it (until the block ends)."""
    token = _MAGNITUDES.set({})
    try:
        yield
    finally:
        _MAGNITUDES.reset(token)
