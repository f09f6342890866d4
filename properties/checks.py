"""Checks several laws share."""

import torch
from hypothesis import note

from core.bound import error_bound
from core.fold import fold


def assert_fold_within_bound(model: torch.nn.Module, X: torch.Tensor) -> None:
    """|model(X) − fold(model)(X)| ≤ error_bound(model, X) elementwise, noting the worst ratio for a failure."""
    folded, _ = fold(model)
    with torch.no_grad():
        err = (model(X).double() - folded(X).double()).abs()
    bound = error_bound(model, X)
    ratio = (err / bound.clamp_min(torch.finfo(torch.float64).tiny)).max().item()
    note(f"max err {err.max().item():.3e}, max bound {bound.max().item():.3e}, max err/bound {ratio:.3e}")
    assert (err <= bound).all()
