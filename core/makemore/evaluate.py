"""Evaluation in bounded memory: losses over whole splits, and how closely a folded net agrees with its original,
computed chunk by chunk and combined in float64 (losses) or exact rationals (agreements).

Memory grows with the chunk (CHUNK_ROWS rows), never with the split: a split of one 50 MB name is
evaluated in pieces like any other. Logits are cast to float64 before the cross-entropy, so a float16
or bfloat16 model's mean is neither rounded nor overflowed in its own dtype.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.bound.loss import loss_bound
from core.engine.bound.propagation import error_bound
from core.engine.plan import Plan, plan_folds
from core.makemore.data import CHUNK_ROWS, dataset_chunks
from core.makemore.model import CharMLP


@torch.no_grad()
def mean_loss(model: nn.Module, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean cross-entropy of the eval-mode `model` over every row of the (X, Y) `chunks`: Σ CE / rows in float64.

    Raises ValueError when there is no row at all (an empty split has no mean).
    """
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    rows = 0
    for X, Y in chunks:
        logits = model(X.to(device)).double()
        total += F.cross_entropy(logits, Y.to(device), reduction="sum").cpu()
        rows += Y.shape[0]
    if rows == 0:
        raise ValueError("no rows to evaluate")
    return (total / rows).item()


def split_losses(model: CharMLP, parts: dict[str, list[str]], chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """{part: mean loss} for each {part: names} in `parts`, the model in eval mode, chunk_rows rows at a time."""
    model.eval()
    return {part: mean_loss(model, dataset_chunks(names, model.context_length, chunk_rows))
            for part, names in parts.items()}


@dataclass
class FoldAgreement:
    """How closely a folded net matches its unfolded original on `rows` rows, both in eval, with certified bounds."""

    loss_unfolded: float  # mean cross-entropy in float64, the precision loss_bound assumes
    loss_folded: float
    loss_bound: float  # certified bound on |loss_folded − loss_unfolded|
    max_abs_logit_diff: float
    max_bound: float  # the largest certified bound on |Δlogit|
    rows: int
    chunks: int = 1  # the pieces the rows were evaluated in (combine_agreements)
    # |Δlogit| / bound per logit, all ≤ 1; None for an agreement combined over chunks, which keeps no per-row values
    bound_ratios: torch.Tensor | None = field(default=None, repr=False)


@torch.no_grad()
def fold_agreement(model: nn.Module, folded: nn.Module, X: torch.Tensor, Y: torch.Tensor,
                   plan: Plan | None = None) -> FoldAgreement:
    """The losses and logits of `model` and its fold on (X, Y), both in eval, against their certified bounds (`plan`:
    the one fold applied, as `error_bound` takes it)."""
    logits, folded_logits = model(X), folded(X)
    bound = error_bound(model, X, plan)
    diff = (logits.double() - folded_logits.double()).abs().cpu()
    return FoldAgreement(
        loss_unfolded=F.cross_entropy(logits.double(), Y).item(),
        loss_folded=F.cross_entropy(folded_logits.double(), Y).item(),
        loss_bound=loss_bound(logits, bound, Y),
        max_abs_logit_diff=diff.max().item(),
        max_bound=bound.max().item(),
        rows=X.shape[0],
        bound_ratios=diff / bound,
    )


def combine_agreements(parts: Sequence[tuple[int, FoldAgreement]]) -> FoldAgreement:
    """One FoldAgreement from per-chunk (rows, FoldAgreement) pairs.

    Means combine with weights w_c = rows_c / N, evaluated exactly in rationals and rounded once, so
    each reported loss is within ulp/2 of the exact weighted mean of the chunk losses. Then
    |L − L'| ≤ Σ w_c·|L_c − L'_c| + ulp(L) + ulp(L') ≤ Σ w_c·β_c + ulp(L) + ulp(L'), β_c each chunk's
    certified loss bound; the sum is rounded up by one ulp. Logit bounds are elementwise, so their
    maxima combine by max. A single chunk keeps its values as they are.
    """
    if not parts:
        raise ValueError("no chunks to combine")
    rows = sum(n for n, _ in parts)
    if len(parts) == 1:
        (n, a), = parts
        return FoldAgreement(a.loss_unfolded, a.loss_folded, a.loss_bound, a.max_abs_logit_diff, a.max_bound, n)

    def weighted(values: Iterable[float]) -> Fraction:
        return sum((Fraction(n) * Fraction(v) for (n, _), v in zip(parts, values, strict=True)), Fraction(0)) / rows

    unfolded = float(weighted(a.loss_unfolded for _, a in parts))
    folded = float(weighted(a.loss_folded for _, a in parts))
    bound = float(weighted(a.loss_bound for _, a in parts))
    bound += math.ulp(bound) + math.ulp(unfolded) + math.ulp(folded)
    return FoldAgreement(unfolded, folded, bound, max(a.max_abs_logit_diff for _, a in parts),
                         max(a.max_bound for _, a in parts), rows, len(parts))


def split_agreement(model: CharMLP, folded: nn.Module, names: list[str], chunk_rows: int = CHUNK_ROWS,
                    plan: Plan | None = None) -> FoldAgreement:
    """`fold_agreement` of the eval-mode model and its fold over every row of `names`, chunk_rows rows at a time, each
    chunk bounded with one plan (the one given, else planned once here)."""
    model.eval()
    folded.eval()
    plan = plan_folds(model.layers) if plan is None else plan
    parts = [(X.shape[0], fold_agreement(model, folded, X, Y, plan))
             for X, Y in dataset_chunks(names, model.context_length, chunk_rows)]
    return combine_agreements(parts)
