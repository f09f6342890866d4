"""Exact statistics of float tensors (as Fractions) and bounds on how far torch's float64 mean, variance and
standard deviation can be from them: the references of the BatchNorm laws and of the diagnostics tests."""

from fractions import Fraction

import torch

from core.engine.bound.rounding import SAFETY, TINY64, U64, rounding_bound


def exact_stats(x: torch.Tensor):
    """Per column: exact mean m and exact S = Σ (x − m)², as Fractions of the float64 inputs."""
    cols = [[Fraction(v) for v in col] for col in x.T.tolist()]
    means = [sum(c) / len(c) for c in cols]
    return means, [sum((v - m) ** 2 for v in c) for c, m in zip(cols, means)]


def stat_errors(x, S, divisor):
    """(Δm, Δv): bounds on the float64 errors of the batch mean and of the variance S / divisor.

    With a = max|x|, ‖x‖ the column's 2-norm and n rows, a backward-stable mean has
    |m̂ − m| ≤ γ(n+1)·a, and two-pass or Welford variance has
    |Ŝ − S| ≤ γ(n+3)·(S + ‖x‖·√S) + n·(γ(n+1)·a)² (Chan, Golub & LeVeque; the last term is the
    second-order effect of the mean's error), plus one rounding for the division.
    """
    n = x.shape[0]
    S = torch.tensor([float(v) for v in S], dtype=torch.float64)
    dm = rounding_bound(n + 1, U64) * x.abs().amax(0)
    dv = (rounding_bound(n + 3, U64) * (S + x.norm(dim=0) * S.sqrt()) + n * dm**2) / divisor + U64 * S / divisor
    return dm, dv


def population_std(values: torch.Tensor) -> tuple[float, float, float, float]:
    """(m, Δm, σ, Δσ) of the entries of `values` (any shape, read as float64): the exact mean m and population
    standard deviation σ = √(S/n), each rounded once, and bounds on the error of torch's float64 mean and
    std(correction=0). From `stat_errors` with divisor n: |√v̂ − √v| ≤ min(Δv/σ, √Δv), plus the rounding of
    the square root; the rounding of m and σ themselves adds u·|m|, u·σ.
    """
    x = values.detach().double().reshape(-1, 1)
    (mean,), (S,) = exact_stats(x)
    dm, dv = (t.item() for t in stat_errors(x, [S], x.shape[0]))
    sigma = float((S / x.shape[0]) ** 0.5) if S else 0.0
    dsigma = min(dv / sigma if sigma else float("inf"), dv**0.5) * (1 + U64) + 2 * U64 * sigma
    return float(mean), dm + U64 * abs(float(mean)), sigma, dsigma


def ratio_bound(a: float, da: float, b: float, db: float) -> float:
    """Bound on |fl(â / b̂) − a / b| for |â − a| ≤ da, |b̂ − b| ≤ db, 0 ≤ db < b, a ≥ 0: spread + u·(a/b + spread),
    spread = (da + (a/b)·db)/(b − db); evaluated in float64, so times SAFETY for its own roundings and plus TINY64
    for its own underflow."""
    spread = (da + a / b * db) / (b - db)
    return (spread + U64 * (a / b + spread)) * SAFETY + TINY64
