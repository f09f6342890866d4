"""Folding eval-mode BatchNorm1d into an adjacent Linear: the algebra, whole-model folding, the report, a certified bound.

An eval-mode BatchNorm with running statistics (μ, v), affine (γ, β) (γ = 1, β = 0 without affine)
and eps ε is the per-unit affine map BN(z) = s·z + t with s = γ / sqrt(v + ε), t = β − μ·s, so

    BN after a Linear:   BN(xW + b) = x·(W·diag(s)) + (b·s + t)
    BN before a Linear:  BN(x)W + b = x·(diag(s)·W) + (t·W + b)

with W laid out (fan_in, fan_out) as core `Linear` stores it (`torch.nn.Linear` stores Wᵀ).
The algebra is written once, on plain arrays, in `bn_affine`, `fold_after` and `fold_before`;
everything else adapts layers to it. Folds are computed in float64 and cast to the Linear's dtype.
"""

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import FoldError
from core.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from core.model import CharMLP

AFTER, BEFORE = "after", "before"  # where the BatchNorm sits relative to its Linear
LINEARS = (Linear, nn.Linear)
BATCHNORMS = (BatchNorm1d, nn.BatchNorm1d)

U64 = 2.0**-53  # unit roundoff of float64, in which folds are computed
BN_ROUNDINGS = 8  # roundings on any term of an eval BatchNorm (error_bound's derivation)
BOUND_C = BN_ROUNDINGS + 1  # c of γ(n + c): the BN's roundings plus one for the Linear's bias
FOLD_ROUNDINGS = 6  # float64 roundings on any term of a folded weight or bias (plus n for t·W)
ACTIVATION_ROUNDINGS = 8  # tanh and sigmoid kernels are within 4 ulp, i.e. 8u relative
SAFETY = 1 + 2.0**-30  # the bound is itself evaluated in float64: this covers its own rounding


# The algebra: any arrays with * + - / @ (torch tensors, numpy object arrays of Fractions).

def bn_affine(mean, var, gamma, beta, eps, sqrt=torch.sqrt):
    """(s, t) with eval BN(z) = s·z + t: s = γ / sqrt(v + ε), t = β − μ·s."""
    s = gamma / sqrt(var + eps)
    return s, beta - mean * s


def fold_after(W, b, s, t):
    """(W', b') with (xW + b)·s + t = xW' + b': W' = W·diag(s), b' = b·s + t."""
    return W * s, b * s + t


def fold_before(s, t, W, b):
    """(W', b') with (x·s + t)W + b = xW' + b': W' = diag(s)·W, b' = t·W + b."""
    return s[:, None] * W, t @ W + b


# Adapters between layers (core or torch.nn) and the plain float64 tensors of the algebra.

def _f64(t):
    return t.detach().to("cpu", torch.float64)


def _linear_terms(linear):
    """(W, b) in float64: W as (fan_in, fan_out) whatever the layer's layout, b = 0 when it has none."""
    W = _f64(linear.weight).T if isinstance(linear, nn.Linear) else _f64(linear.weight)
    b = torch.zeros(W.shape[1], dtype=torch.float64) if linear.bias is None else _f64(linear.bias)
    return W, b


def _fan_in(linear):
    return linear.weight.shape[1] if isinstance(linear, nn.Linear) else linear.weight.shape[0]


def _bn_terms(bn):
    """(μ, v, γ, β, ε) in float64; γ = 1 and β = 0 for a BatchNorm without affine."""
    mean, var = _f64(bn.running_mean), _f64(bn.running_var)
    gamma, beta = (bn.gamma, bn.beta) if isinstance(bn, BatchNorm1d) else (bn.weight, bn.bias)
    gamma = torch.ones_like(mean) if gamma is None else _f64(gamma)
    beta = torch.zeros_like(mean) if beta is None else _f64(beta)
    return mean, var, gamma, beta, bn.eps


def _check_bn(bn, name):
    """Refuse a BatchNorm that is no fixed affine map, or whose map is undefined."""
    if bn.training:
        raise FoldError(f"{name} is in training mode, so it normalises with batch statistics, not a fixed "
                        f"affine map: call model.eval() before folding")
    if not getattr(bn, "track_running_stats", True):
        raise FoldError(f"{name} has track_running_stats=False: it always normalises with batch statistics and "
                        f"has no running statistics to fold; rebuild it with track_running_stats=True and "
                        f"estimate the statistics on training data")
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError(f"{name} has no running_mean/running_var: load a state_dict that holds them "
                        f"(or estimate them on training data) before folding")
    for stat in ("running_mean", "running_var"):
        bad = (~torch.isfinite(getattr(bn, stat))).nonzero()
        if len(bad):
            j = bad[0].item()
            raise FoldError(f"{name} has a non-finite {stat} ({getattr(bn, stat)[j].item()} at unit {j}): "
                            f"re-estimate the statistics on training data before folding")
    bad = (_f64(bn.running_var) + bn.eps <= 0).nonzero()
    if len(bad):
        j = bad[0].item()
        raise FoldError(f"{name} has running_var + eps <= 0 at unit {j} (running_var {bn.running_var[j].item()}, "
                        f"eps {bn.eps}), so 1/sqrt(var + eps) is undefined: re-estimate the statistics or raise eps")


def _new_linear(like, W, b, where):
    """A Linear of like's kind, dtype, device and mode holding float64 W (fan_in, fan_out) and b, cast down."""
    dtype, device = like.weight.dtype, like.weight.device
    if not (torch.isfinite(W.to(dtype)).all() and torch.isfinite(b.to(dtype)).all()):
        largest = max(W.abs().max().item(), b.abs().max().item())
        raise FoldError(f"{where} gives values that do not fit {dtype} (largest |value| {largest:.6g}, {dtype} max "
                        f"{torch.finfo(dtype).max:.6g}): fold a float32 or float64 copy of the model instead")
    W, b = W.to(dtype), b.to(dtype)
    if isinstance(like, nn.Linear):
        new = nn.Linear(W.shape[0], W.shape[1], device="meta")  # meta: no init, no draw from the global RNG
        new.weight, new.bias = nn.Parameter(W.T.contiguous().to(device)), nn.Parameter(b.to(device))
    else:
        new = Linear.from_tensors(W.to(device), b.to(device))
    return new.train(like.training)


def _fold_pair(linear, bn, direction, bn_name="the BatchNorm1d", linear_name="the Linear"):
    _check_bn(bn, bn_name)
    W, b = _linear_terms(linear)
    units = W.shape[1] if direction == AFTER else W.shape[0]
    if bn.running_mean.shape[0] != units:
        side = "fan_out" if direction == AFTER else "fan_in"
        raise FoldError(f"{bn_name} has {bn.running_mean.shape[0]} features but {linear_name} has {side} {units}: "
                        f"they are no Linear/BatchNorm pair; check the architecture")
    s, t = bn_affine(*_bn_terms(bn))
    W, b = fold_after(W, b, s, t) if direction == AFTER else fold_before(s, t, W, b)
    return _new_linear(linear, W, b, f"folding {bn_name} into {linear_name}")


def fold_linear_bn(linear, bn):
    """The Linear equal to BN(linear(x)) in eval: a new Linear of linear's kind, dtype and device, with a bias."""
    return _fold_pair(linear, bn, AFTER)


def fold_bn_linear(bn, linear):
    """The Linear equal to linear(BN(x)) in eval: a new Linear of linear's kind, dtype and device, with a bias."""
    return _fold_pair(linear, bn, BEFORE)


# Whole models.

@dataclass(frozen=True)
class FoldedPair:
    """One BatchNorm folded into one Linear; indices are the input model's, layer_index the folded model's."""

    bn_index: int
    linear_index: int
    direction: str  # AFTER: the BN follows the Linear; BEFORE: it precedes it
    layer_index: int
    fan_in: int
    bound_factor: float  # ρ of error_bound: |unfolded_j − folded_j| ≤ ρ·M_j for this fold


@dataclass(frozen=True)
class KeptBN:
    index: int
    reason: str


@dataclass(frozen=True)
class FoldReport:
    """What fold did: the pairs it folded, in the order it folded them, and the BNs it kept, with why; str() is a table."""

    folded: tuple[FoldedPair, ...]
    kept: tuple[KeptBN, ...]

    def __str__(self):
        row = "  {:>3}  {:>6}  {:<16}  {:>8}  {:>6}  {}"
        lines = [f"BatchNorm folding: {len(self.folded)} folded, {len(self.kept)} kept"]
        if self.folded:
            lines.append(row.format("BN", "Linear", "direction", "-> layer", "fan_in", "bound |Δy_j| <= ρ·M_j"))
        for p in self.folded:
            arrow = "Linear -> BN" if p.direction == AFTER else "BN -> Linear"
            lines.append(row.format(p.bn_index, p.linear_index, arrow, p.layer_index, p.fan_in, f"ρ = {p.bound_factor:.3e}"))
        lines += [f"  kept: {k.reason}" for k in self.kept]
        return "\n".join(lines)


def _layers_of(model):
    if isinstance(model, CharMLP):
        return list(model.layers)
    if isinstance(model, nn.Sequential):
        return list(model)
    raise TypeError(f"fold works on a CharMLP or a torch.nn.Sequential, not a {type(model).__name__}")


def _name(layers, i):
    return f"{type(layers[i]).__name__} at index {i}"


def _plan(layers):
    """The single folds in the order they apply, as (linear_index, bn_index, direction), and the kept BNs.

    Per maximal run of adjacent BatchNorms: after a Linear, all fold into it (left to right);
    otherwise, before a Linear, all fold into that one (right to left); otherwise all stay. A run's
    neighbours are never BatchNorms, so folding makes no new pair: a folded model has nothing to fold.
    """
    steps, kept = [], []
    for i, layer in enumerate(layers):
        if not isinstance(layer, BATCHNORMS) and any(isinstance(m, BATCHNORMS) for m in layer.modules()):
            raise FoldError(f"{_name(layers, i)} holds BatchNorms inside it: flatten the model into one Sequential before folding")
    i = 0
    while i < len(layers):
        j = i
        while j < len(layers) and isinstance(layers[j], BATCHNORMS):
            j += 1
        if j == i:
            i += 1
            continue
        if i > 0 and isinstance(layers[i - 1], LINEARS):
            steps += [(i - 1, k, AFTER) for k in range(i, j)]
        elif j < len(layers) and isinstance(layers[j], LINEARS):
            steps += [(j, k, BEFORE) for k in reversed(range(i, j))]
        else:
            for k in range(i, j):
                left = type(layers[k - 1]).__name__ if k > 0 else "the input"
                right = type(layers[k + 1]).__name__ if k + 1 < len(layers) else "the output"
                kept.append(KeptBN(k, f"{_name(layers, k)} sits between {left} and {right}: no adjacent Linear"))
        i = j
    return steps, kept


def _apply(layers, steps):
    """The model after 0, 1, ..., len(steps) single folds, each as {input index: layer}, the folded Linear keeping its index."""
    current = dict(enumerate(layers))
    stages = [dict(current)]
    for lin, bn, direction in steps:
        current[lin] = _fold_pair(current[lin], current[bn], direction, _name(layers, bn), _name(layers, lin))
        del current[bn]
        stages.append(dict(current))
    return stages


def fold(model):
    """(folded, FoldReport): the same kind of model (CharMLP or torch.nn.Sequential) with every foldable BN folded.

    Never mutates `model`. Unchanged layers are deep copies, folded Linears are new layers with a
    bias and ordinary trainable parameters; a CharMLP keeps a copy of C, its context_length and init_scheme.
    """
    layers = _layers_of(model)
    steps, kept = _plan(layers)
    final = _apply(layers, steps)[-1]
    final = [layer if layer is not layers[i] else copy.deepcopy(layer) for i, layer in final.items()]
    removed = {bn for _, bn, _ in steps}
    pairs = []
    for lin, bn, direction in steps:
        weight, fan_in = layers[lin].weight, _fan_in(layers[lin])
        factor = pair_factor(fan_in, direction, unit_roundoff(weight.dtype, weight.device))
        pairs.append(FoldedPair(bn, lin, direction, lin - sum(r < lin for r in removed), fan_in, factor))
    if isinstance(model, CharMLP):
        folded = CharMLP(model.C.detach().clone(), final, model.context_length, model.init_scheme)
        folded.layers.training = model.layers.training
    else:
        folded = nn.Sequential(*final)
    folded.training = model.training
    return folded, FoldReport(tuple(pairs), tuple(kept))


# The certified error bound.

def gamma(k, u):
    """γ(k) = k·u / (1 − k·u): |Π(1 + δ_i)^(±1) − 1| ≤ γ(k) for k roundings |δ_i| ≤ u (Higham, Lemma 3.1)."""
    return k * u / (1 - k * u) if k * u < 1 else math.inf


def unit_roundoff(dtype, device=None):
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


def pair_factor(n, direction, u):
    """ρ = γ(n + c) + (1 + γ₆₄(k))(1 + γ(n + 2)) − 1, k = 6 (+ n before): |unfolded_j − folded_j| ≤ ρ·M_j."""
    k = FOLD_ROUNDINGS + (n if direction == BEFORE else 0)
    return gamma(n + BOUND_C, u) + (1 + gamma(k, U64)) * (1 + gamma(n + 2, u)) - 1


def _pair_bound(linear, bn, direction, x):
    W, b = _linear_terms(linear)
    mean, var, g, beta, eps = _bn_terms(bn)
    s, _ = bn_affine(mean, var, g, beta, eps)
    ax, aW = _f64(x).abs(), W.abs()
    if direction == AFTER:
        M = s.abs() * (ax @ aW + b.abs() + mean.abs()) + beta.abs()
    else:
        M = (ax * s.abs() + (mean * s).abs() + beta.abs()) @ aW + b.abs()
    return pair_factor(W.shape[0], direction, unit_roundoff(x.dtype, x.device)) * M


def _propagate(layer, x, D, name):
    """Bound on |layer(x̂) − layer(x̂')| for one layer present in both models, given |x̂ − x̂'| ≤ D.

    Each side is its exact value plus its own rounding error; the exact values differ by at
    most Lipschitz·D, and x̂' is bounded by |x̂| + D.
    """
    u = unit_roundoff(x.dtype, x.device)
    x64 = _f64(x)
    ax = x64.abs()
    if isinstance(layer, LINEARS):
        W, b = _linear_terms(layer)
        g = gamma(W.shape[0] + 1, u)
        return (1 + g) * (D @ W.abs()) + 2 * g * (ax @ W.abs() + b.abs())
    if isinstance(layer, BATCHNORMS):
        _check_bn(layer, name)
        mean, var, gm, beta, eps = _bn_terms(layer)
        s = bn_affine(mean, var, gm, beta, eps)[0].abs()
        g = gamma(BN_ROUNDINGS, u)
        return (1 + g) * s * D + 2 * g * (s * (ax + mean.abs()) + beta.abs())
    # tanh and sigmoid: mean value theorem with the largest slope on [|x̂| − D, |x̂| + D], at its point nearest 0
    near0 = (ax - D).clamp(min=0)
    if isinstance(layer, (Tanh, nn.Tanh)):  # tanh' = 1/cosh², |tanh a| ≤ min(1, |a|)
        return D / near0.cosh() ** 2 + ACTIVATION_ROUNDINGS * u * (ax.clamp(max=1) + (ax + D).clamp(max=1))
    if isinstance(layer, (Sigmoid, nn.Sigmoid)):  # σ' = σ(a)σ(−a), |σ| ≤ 1
        return D * near0.sigmoid() * (-near0).sigmoid() + 2 * ACTIVATION_ROUNDINGS * u
    if isinstance(layer, (ReLU, nn.ReLU)):  # exact; both inputs ≤ 0 where x̂ + D ≤ 0
        return torch.where(x64 + D <= 0, 0.0, D)
    if isinstance(layer, nn.Identity) or (isinstance(layer, nn.Dropout) and not layer.training):
        return D
    raise TypeError(f"error_bound has no error model for {name}")


def _model_input(model, X):
    return F.embedding(X, model.C).view(X.shape[0], -1) if isinstance(model, CharMLP) else X


@torch.no_grad()
def error_bound(model, X):
    """Certified elementwise bound B (float64, CPU) with |model(X) − fold(model)[0](X)| ≤ B, both in eval.

    One pair, output unit j, fan-in n, unit roundoff u of the model's dtype, standard model
    fl(a ∘ b) = (a ∘ b)(1 + δ), |δ| ≤ u (no underflow; running variances v ≥ 0). Every output is a
    sum of terms; a term that passes through k roundings is off by at most γ(k)·|term|, so an
    output is off by γ(max k)·M_j, M_j the sum of its terms' magnitudes (DESIGN.md):
        after:  M_j = |s_j|·(Σ_i |x_i||W_ij| + |b_j| + |μ_j|) + |β_j|
        before: M_j = Σ_i (|x_i||s_i| + |μ_i s_i| + |β_i|)·|W_ij| + |b_j|
    Unfolded: the Linear puts n + 1 roundings on a term (n products and additions, bias
    included, in any summation order); eval BatchNorm puts at most 8 more on any term: the cast
    of ε, v + ε, sqrt, the reciprocal or division, the product with γ, z − μ (or μ·α and β − μα),
    the product with z, the addition of β. Hence γ(n + c) with c = 8 + 1 = 9.
    Folded: s costs 3 float64 roundings, W·s one more, the bias b·s + t at most 6 (t = β − μs:
    5, b·s + t: 1), and before a Linear t·W + b adds n more (a float64 dot product); the cast
    to the dtype adds one rounding and the folded forward n + 1: γ₆₄(6 or n + 6) and γ(n + 2).
    With γ(a) + γ(b) + γ(a)γ(b) ≤ γ(a + b) and γ₆₄(n + 6) ≤ u for narrower dtypes (n < 2²⁹):
        |unfolded_j − folded_j| ≤ ρ·M_j ≤ 2γ(n + 9)·M_j
    (for a BN before its Linear in float64, n counts twice: 2γ(2n + 9)). So the bound is at most
    2(n + 9)·u·M_j(1 + O(nu)): a small multiple of u·M_j, never vacuous.

    Whole model: the folds apply one at a time, and consecutive models M_{k−1}, M_k differ in one
    pair only, so |M_0(X) − M_K(X)| ≤ Σ_k |M_{k−1}(X) − M_k(X)|. Each term is the pair bound at
    the pair (identical inputs there), carried through the layers after it, which both models
    share. A layer given inputs x̂, x̂' with |x̂ − x̂'| ≤ D gives outputs that differ by at most its
    exact map's slope times D plus the rounding of each side (x̂' bounded by |x̂| + D):
        Linear:  (1 + γ(n+1))·D|W| + 2γ(n+1)·(|x̂||W| + |b|)
        kept BN: (1 + γ(8))·|s|·D + 2γ(8)·(|s|(|x̂| + |μ|) + |β|)
        tanh:    D·sech²(a) + 8u·(min(1, |x̂|) + min(1, |x̂| + D)),  a = max(|x̂| − D, 0)
        sigmoid: D·σ(a)σ(−a) + 16u
        ReLU:    D, and 0 where x̂ + D ≤ 0 (both sides are 0 there)
    taking tanh and sigmoid kernels to be within 4 ulp (8u) of the exact function. The bound is
    itself computed in float64; the factor 1 + 2⁻³⁰ covers that rounding.
    """
    layers = _layers_of(model)
    steps, _ = _plan(layers)
    h0 = _model_input(model, X)
    total = None
    for (lin, bn, direction), stage in zip(steps, _apply(layers, steps)):
        indices, current = list(stage), list(stage.values())
        p = indices.index(min(lin, bn))
        trace = [h0]
        for layer in current[:-1]:
            trace.append(layer(trace[-1]))
        linear, norm = (current[p], current[p + 1]) if direction == AFTER else (current[p + 1], current[p])
        D = _pair_bound(linear, norm, direction, trace[p])
        for q in range(p + 2, len(current)):
            D = _propagate(current[q], trace[q], D, _name(layers, indices[q]))
        total = D if total is None else total + D
    if total is None:  # nothing to fold: folded(X) is computed exactly as model(X)
        return torch.zeros(model(X).shape, dtype=torch.float64)
    return total * SAFETY


def loss_bound(logits, bound, Y):
    """Bound on |CE(z, Y) − CE(z', Y)|, mean cross-entropies evaluated in float64, given |z − z'| ≤ bound.

    Per row CE = logsumexp(z) − z_y, and logsumexp is 1-Lipschitz in the max-norm: the exact values
    differ by at most max_k bound_k + bound_y. Each float64 evaluation (the max shift, V exps and
    additions, a log, the label term, a mean of N rows) is off by at most γ₆₄(N + V + 8) times
    2·max_k |z_k| + log V per row, where |z'| ≤ |z| + bound.
    """
    N, V = logits.shape
    lipschitz = (bound.amax(1) + bound.gather(1, Y[:, None].cpu())[:, 0]).mean().item()
    size = (2 * (_f64(logits).abs() + bound).amax(1) + math.log(V)).mean().item()
    return (lipschitz + 2 * gamma(N + V + 8, U64) * size) * SAFETY

