"""Checks several laws share."""

import torch
from hypothesis import note

from core.engine.bound.propagation import error_bound
from core.engine.fold import fold


def worst_ratio(err: torch.Tensor, bound: torch.Tensor) -> float:
    """max err/bound, with a zero bound read as the smallest normal float64 (so a nonzero error there shows)."""
    return (err / bound.clamp_min(torch.finfo(torch.float64).tiny)).max().item()


def assert_fold_within_bound(model: torch.nn.Module, X: torch.Tensor) -> None:
    """|model(X) − fold(model)(X)| ≤ error_bound(model, X) elementwise, noting the worst ratio for a failure."""
    assert_within_bound(model, fold(model)[0], X)


def assert_within_bound(model: torch.nn.Module, folded: torch.nn.Module, X: torch.Tensor) -> None:
    """|model(X) − folded(X)| ≤ error_bound(model, X) elementwise for a folded form of model, noting the worst ratio."""
    with torch.no_grad():
        err = (model(X).double() - folded(X).double()).abs()
    bound = error_bound(model, X)
    note(f"max err {err.max().item():.3e}, max bound {bound.max().item():.3e}, max err/bound "
         f"{worst_ratio(err, bound):.3e}")
    assert (err <= bound).all()
