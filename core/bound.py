"""The certified error bound of folding: rounding model, per-pair factor, propagation rules, whole-model bound.

Floating point follows the standard model fl(a ∘ b) = (a ∘ b)(1 + δ), |δ| ≤ u. A term that passes
through k roundings is off by at most γ(k)·|term|. docs/design.md derives every constant here:
the pair factor ρ (`pair_factor`), each layer kind's propagation rule (`RULES`, named by the kind
table's `rule`), the whole-model sum (`error_bound`) and the loss bound (`loss_bound`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.kinds import KINDS
from core.model import CharMLP
from core.pairfold import (
    AFTER,
    BEFORE,
    check_norm,
    f64,
    layer_name,
    linear_terms,
    norm_affine,
    norm_terms,
    plan,
    stages,
)

U64 = 2.0**-53  # unit roundoff of float64, in which folds are computed
BN_ROUNDINGS = 8  # roundings on any term of an eval BatchNorm
BOUND_C = BN_ROUNDINGS + 1  # c of γ(n + c): the BN's roundings plus one for the Linear's bias
FOLD_ROUNDINGS = 6  # float64 roundings on any term of a folded weight or bias (plus n for t·W)
ACTIVATION_ROUNDINGS = 8  # tanh and sigmoid kernels are within 4 ulp, i.e. 8u relative
SAFETY = 1 + 2.0**-30  # the bound is itself evaluated in float64: this covers its own rounding


def rounding_bound(k: float, u: float) -> float:
    """γ(k) = k·u / (1 − k·u): |Π(1 + δ_i)^(±1) − 1| ≤ γ(k) for k roundings |δ_i| ≤ u (Higham, Lemma 3.1)."""
    return k * u / (1 - k * u) if k * u < 1 else math.inf


def unit_roundoff(dtype: torch.dtype, device=None) -> float:
    """u of `dtype`; float32 matmuls allowed to run in TF32 or bfloat16 get 2u of that format.

    Twice the narrower format's u makes each counted rounding cover two, which pays for
    the rounding of both operands of every product (TF32: u = 2^-11, bfloat16: u = 2^-8).
    """
    u = torch.finfo(dtype).eps / 2
    if dtype == torch.float32:
        precision = torch.get_float32_matmul_precision()
        cuda_tf32 = device is not None and torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        if precision == "medium":
            u = 2.0**-7
        elif precision == "high" or cuda_tf32:
            u = 2.0**-10
    return u


def pair_factor(n: int, direction: str, u: float) -> float:
    """ρ = γ(n + c) + (1 + γ₆₄(k))(1 + γ(n + 2)) − 1, k = 6 (+ n before): |unfolded_j − folded_j| ≤ ρ·M_j."""
    k = FOLD_ROUNDINGS + (n if direction == BEFORE else 0)
    return rounding_bound(n + BOUND_C, u) + (1 + rounding_bound(k, U64)) * (1 + rounding_bound(n + 2, u)) - 1


def pair_magnitude(linear: nn.Module, bn: nn.Module, direction: str, x: torch.Tensor) -> torch.Tensor:
    """M_j: the sum of the magnitudes of the terms of output j of the unfolded pair, in float64.

    after:  M_j = |s_j|·(Σ_i |x_i||W_ij| + |b_j| + |μ_j|) + |β_j|
    before: M_j = Σ_i (|x_i||s_i| + |μ_i s_i| + |β_i|)·|W_ij| + |b_j|
    """
    W, b = linear_terms(linear)
    mean, _, _, beta, _ = norm_terms(bn)
    s = norm_affine(bn)[0].abs()
    ax, aW = f64(x).abs(), W.abs()
    if direction == AFTER:
        return s * (ax @ aW + b.abs() + mean.abs()) + beta.abs()
    return (ax * s + (mean * s).abs() + beta.abs()) @ aW + b.abs()


def pair_bound(linear: nn.Module, bn: nn.Module, direction: str, x: torch.Tensor) -> torch.Tensor:
    """ρ·M_j: the bound on |unfolded_j − folded_j| for one pair at input x."""
    n = linear_terms(linear)[0].shape[0]
    return pair_factor(n, direction, unit_roundoff(x.dtype, x.device)) * pair_magnitude(linear, bn, direction, x)


# Propagation: |layer(x̂) − layer(x̂')| given |x̂ − x̂'| ≤ D, for a layer both models share. Each side is its
# exact value plus its own rounding; the exact values differ by at most the map's slope times D, and
# x̂' is bounded by |x̂| + D.

def _linear_rule(layer, x64, D, u):
    W, b = linear_terms(layer)
    g = rounding_bound(W.shape[0] + 1, u)
    return (1 + g) * (D @ W.abs()) + 2 * g * (x64.abs() @ W.abs() + b.abs())


def _batchnorm_rule(layer, x64, D, u):
    mean, _, _, beta, _ = norm_terms(layer)
    s = norm_affine(layer)[0].abs()
    g = rounding_bound(BN_ROUNDINGS, u)
    return (1 + g) * s * D + 2 * g * (s * (x64.abs() + mean.abs()) + beta.abs())


def _tanh_rule(layer, x64, D, u):
    """tanh' = 1/cosh², largest on [|x̂| − D, |x̂| + D] at its point nearest 0; |tanh a| ≤ min(1, |a|)."""
    ax = x64.abs()
    near0 = (ax - D).clamp(min=0)
    return D / near0.cosh() ** 2 + ACTIVATION_ROUNDINGS * u * (ax.clamp(max=1) + (ax + D).clamp(max=1))


def _sigmoid_rule(layer, x64, D, u):
    """σ' = σ(a)σ(−a), largest at the point of [|x̂| − D, |x̂| + D] nearest 0; |σ| ≤ 1."""
    near0 = (x64.abs() - D).clamp(min=0)
    return D * near0.sigmoid() * (-near0).sigmoid() + 2 * ACTIVATION_ROUNDINGS * u


def _relu_rule(layer, x64, D, u):
    """Exact; both inputs are ≤ 0, so both outputs 0, where x̂ + D ≤ 0."""
    return torch.where(x64 + D <= 0, 0.0, D)


def _identity_rule(layer, x64, D, u):
    return D


def _dropout_rule(layer, x64, D, u):
    if layer.training:
        raise TypeError("error_bound needs Dropout in eval mode (in training it is random): call model.eval()")
    return D


RULES = {"linear": _linear_rule, "batchnorm": _batchnorm_rule, "tanh": _tanh_rule, "sigmoid": _sigmoid_rule,
         "relu": _relu_rule, "identity": _identity_rule, "dropout": _dropout_rule}


def propagate(layer: nn.Module, x: torch.Tensor, D: torch.Tensor, name: str) -> torch.Tensor:
    """Bound on |layer(x̂) − layer(x̂')| given |x̂ − x̂'| ≤ D, by the rule its kind names."""
    kind = KINDS.get(type(layer))
    if kind is None or kind.rule not in RULES:
        raise TypeError(f"error_bound has no error model for {name}: add its kind to core.kinds and its rule "
                        f"to core.bound.RULES")
    if kind.rule == "batchnorm":
        check_norm(layer, name)
    return RULES[kind.rule](layer, f64(x), D, unit_roundoff(x.dtype, x.device))


def model_layers(model: nn.Module) -> list[nn.Module]:
    """The layer list that fold and the bound walk: a CharMLP's stack or a Sequential's modules."""
    if isinstance(model, CharMLP):
        return list(model.layers)
    if isinstance(model, nn.Sequential):
        return list(model)
    raise TypeError(f"fold works on a CharMLP or a torch.nn.Sequential, not a {type(model).__name__}")


def model_input(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """What the layer stack sees: C[X] flattened for a CharMLP, X itself for a Sequential."""
    return F.embedding(X, model.C).view(X.shape[0], -1) if isinstance(model, CharMLP) else X


@torch.no_grad()
def error_bound(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Certified elementwise bound B (float64, CPU) with |model(X) − fold(model)[0](X)| ≤ B, both in eval.

    The folds apply one at a time, and consecutive models M_{k−1}, M_k differ in one pair only, so
    |M_0(X) − M_K(X)| ≤ Σ_k |M_{k−1}(X) − M_k(X)|. Each term is the pair bound ρ·M_j at the pair
    (identical inputs there), carried through the layers after it by their rules. The bound is itself
    computed in float64; the factor 1 + 2⁻³⁰ covers that rounding. Derivation: docs/design.md.
    """
    layers = model_layers(model)
    steps, _ = plan(layers)
    h0 = model_input(model, X)
    total = None
    for (lin, bn, direction), stage in zip(steps, stages(layers, steps)):
        indices, current = list(stage), list(stage.values())
        p = indices.index(min(lin, bn))
        trace = [h0]
        for layer in current[:-1]:
            trace.append(layer(trace[-1]))
        linear, norm = (current[p], current[p + 1]) if direction == AFTER else (current[p + 1], current[p])
        D = pair_bound(linear, norm, direction, trace[p])
        for q in range(p + 2, len(current)):
            D = propagate(current[q], trace[q], D, layer_name(layers, indices[q]))
        total = D if total is None else total + D
    if total is None:  # nothing to fold: folded(X) is computed exactly as model(X)
        return torch.zeros(model(X).shape, dtype=torch.float64)
    return total * SAFETY


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
