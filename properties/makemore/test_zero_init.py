"""Laws of zero-init gradient death (E01) and of its neighbours: zero_last, constant(c), sigmoid, BatchNorm.

Notation: the net has L = depth + 1 Linears, h_l = φ(z_l) with z_l = h_{l-1} W_l + b_l, h_0 = C[X]
flattened, logits z_L; δ_l = ∂loss/∂z_l, so ∇W_l = h_{l-1}ᵀ δ_l, ∇b_l = Σ_rows δ_l and
δ_{l-1} = (δ_l W_lᵀ) ⊙ φ'(z_{l-1}). "After t updates" counts SGD steps taken; the Recorder's
first_grad[name] is the number of updates made before the first nonzero gradient of `name`.
u is the unit roundoff (2⁻⁵³ in float64) and γ(k) = k·u / (1 - k·u).
"""

import math

import torch
from hypothesis import assume, example, given, note
from hypothesis import strategies as st

from core.engine.bound.rounding import U64, rounding_bound, unit_roundoff
from core.makemore.diagnostics import LayerProbe, Recorder, alive, preserved_buffers
from core.makemore.experiments import label_entropy
from core.makemore.layers import BatchNorm1d, Linear
from core.makemore.train import train
from properties.strategies.floats import tensors
from properties.strategies.mlps import MLPCase, Problem, label_lists, mlp_cases, problems

F32, F64 = torch.float32, torch.float64
U32 = unit_roundoff(F32)
LOG27 = math.log(27)

seeds = st.integers(0, 2**32 - 1)
steps_st = st.integers(1, 50)
batch_sizes = st.integers(1, 128)
lrs = st.floats(1e-3, 2.0)


def sgd(model, X, Y, steps, batch_size, lr, seed) -> tuple[list[float], Recorder]:
    """core.makemore.train (minibatch SGD) under a Recorder: (losses, recorder)."""
    with Recorder(model) as rec:
        history = train(model, X, Y, steps, batch_size=batch_size, lr=lr,
                        generator=torch.Generator().manual_seed(seed), progress=False, on_step=rec.on_step)
    return history.losses, rec


def first_batch_labels(Y, batch_size, seed) -> torch.Tensor:
    """The labels of train's first minibatch: it draws torch.randint(0, N, (B,), generator) per step."""
    return Y[torch.randint(0, len(Y), (batch_size,), generator=torch.Generator().manual_seed(seed))]


def histogram(Y) -> torch.Tensor:
    """ĉ: the share of each of the 27 labels, in float64."""
    return torch.bincount(Y, minlength=27).double() / len(Y)


def linear_names(model) -> list[str]:
    """'layers.i' of every Linear, input side first."""
    return [f"layers.{i}" for i, layer in enumerate(model.layers) if isinstance(layer, Linear)]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def gradients(model, X, Y) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return dict(zip(params, torch.autograd.grad(model.loss(X, Y), list(params.values()))))


@given(p=problems(mlp_cases(dtypes=(F32, F64), embedding=True)), steps=steps_st, batch_size=batch_sizes, lr=lrs,
       seed=seeds)
@example(p=Problem.of(MLPCase(hidden=(1,), activation="relu", dtype=F32), [0]), steps=1, batch_size=1, lr=2.0, seed=0)
@example(p=Problem.of(MLPCase(hidden=(64,) * 6, context_length=4, emb_size=8), list(range(27))), steps=50,
         batch_size=128, lr=2.0, seed=1)
@example(p=Problem.of(MLPCase(hidden=(2,), dtype=F32, embedding=(3e38,) * 27), [1, 2]), steps=3, batch_size=2, lr=1.0,
         seed=0)  # C near float32's largest value: 0·C is still exactly 0
@example(p=Problem.of(MLPCase(hidden=(2,), embedding=(5e-324,) * 27), [1, 2]), steps=3, batch_size=2, lr=1.0, seed=0)
def test_all_zero_init_only_the_output_bias_learns(p, steps, batch_size, lr, seed):
    """zeros, any t steps: W_l = 0 ∀l, b_l = 0 ∀l < L, C = C⁰, ∇θ = 0 ∀θ ≠ b_L, and logits(x) = b_L ∀x.

    Induction on t. With every W and hidden b at 0, each z_l (l < L) is 0·h + 0 = 0 and
    h_l = φ(0) = 0 (tanh, relu), so logits = 0·W_L + b_L = b_L whatever the input. Backward:
    ∇W_L = h_{L-1}ᵀ δ_L = 0 and δ_{L-1} = δ_L W_Lᵀ ⊙ φ' = 0, hence every δ below is 0 and so are
    ∇W_l, ∇b_l (l < L) and ∇C = δ_1 W_1ᵀ. The step moves b_L only. Each product has an exact 0
    factor and finite others, so it holds bit for bit, in float32 as in float64. It needs a
    hidden layer: with none, h_0 = C[X] ≠ 0 feeds W_L, which then learns and wakes C.
    """
    model = p.case.build("zeros")
    C0 = model.C.detach().clone()
    _, rec = sgd(model, p.X, p.Y, steps, batch_size, lr, seed)
    out_bias = linear_names(model)[-1] + ".bias"
    note(f"alive during training: {rec.alive}; output bias {model.get_parameter(out_bias).tolist()}")
    assert set(rec.alive) <= {out_bias}
    for name, param in model.named_parameters():
        if name not in ("C", out_bias):
            assert torch.count_nonzero(param) == 0, name
    assert torch.equal(model.C, C0)
    assert set(alive(model, p.X_probe, p.Y_probe)) <= {out_bias}
    with torch.no_grad():
        assert torch.equal(model(p.X_probe), model.get_parameter(out_bias).expand(len(p.X_probe), 27))


def stayed_finite(model, losses) -> bool:
    """Every loss and parameter finite. The gradient-death laws are about finite arithmetic: once a step
    overflows, δ = nan, and nan·0 = nan reaches even the units a zero should have cut off."""
    return all(map(math.isfinite, losses)) and all(bool(torch.isfinite(p).all()) for p in model.parameters())


def with_hidden_layer(problem_strategy):
    """(problem, l): l a hidden layer of the problem's net, 1..depth, drawn after the net."""
    return problem_strategy.flatmap(lambda p: st.tuples(st.just(p), st.integers(1, p.case.depth)))


@given(cut=with_hidden_layer(problems(mlp_cases(dtypes=(F32, F64), embedding=True))), steps=steps_st,
       batch_size=batch_sizes, lr=st.floats(1e-3, 1.0), seed=seeds)
@example(cut=(Problem.of(MLPCase(hidden=(3, 1), activation="relu"), [5, 5]), 1), steps=50, batch_size=2, lr=1.0, seed=0)
@example(cut=(Problem.of(MLPCase(hidden=(3, 1), activation="tanh"), [5, 5]), 2), steps=50, batch_size=2, lr=1.0, seed=0)
def test_a_zero_cut_freezes_everything_below_it(cut, steps, batch_size, lr, seed):
    """W_l = b_l = W_{l+1} = 0 at t = 0 (rest kaiming) ⟹ ∀t: C, W_k, b_k (k ≤ l) and W_{l+1} keep their values.

    z_l = h_{l-1}·0 + 0 = 0 gives h_l = φ(0) = 0, so ∇W_{l+1} = h_lᵀ δ_{l+1} = 0; and
    δ_l = δ_{l+1} W_{l+1}ᵀ ⊙ φ' = 0 zeroes ∇W_l, ∇b_l and, through every δ below, the gradient of
    every earlier Linear and of C. So nothing at or below the cut moves, W_{l+1} stays 0, and
    the cut persists. Above it b_{l+1} and later layers train freely; exact as long as every step
    stays finite (a run that overflows, possible in float32 at lr near 1, is discarded).
    """
    p, cut = cut  # cut: the hidden layer l whose W_l, b_l and W_{l+1} start at 0
    model = p.case.build("kaiming")
    names = linear_names(model)
    with torch.no_grad():
        for name in (names[cut - 1] + ".weight", names[cut - 1] + ".bias", names[cut] + ".weight"):
            model.get_parameter(name).zero_()
    before = snapshot(model)
    losses, _ = sgd(model, p.X, p.Y, steps, batch_size, lr, seed)
    note(f"losses {losses[0]:.4f} .. {losses[-1]:.4f}")
    assume(stayed_finite(model, losses))
    frozen = ["C", names[cut] + ".weight"] + [f"{n}.{kind}" for n in names[:cut] for kind in ("weight", "bias")]
    for name in frozen:
        assert torch.equal(model.get_parameter(name), before[name]), name


@given(p=problems(mlp_cases(batchnorm=True, dtypes=(F32, F64), embedding=True), min_probe=2),
       steps=st.integers(0, 50), batch_size=st.integers(2, 128), lr=lrs, seed=seeds)
@example(p=Problem.of(MLPCase(hidden=(1,), batchnorm=True, activation="relu", dtype=F32), [0]), steps=0, batch_size=2,
         lr=1.0, seed=0)
def test_zero_weights_before_batchnorm_only_the_logit_beta_learns(p, steps, batch_size, lr, seed):
    """Linear (no bias) → BN after each, W = 0: ∀t every BN outputs its β; ∇γ = 0 for all; ∇β = 0 but for the logit BN.

    A BN's input xW = 0 is a constant column, so its batch mean is 0, its variance 0 and
    x̂ = 0·(0 + ε)^(-1/2) = 0: the output is γ·0 + β = β. Hence ∇γ = Σ_rows ∂loss/∂y · x̂ = 0.
    For a hidden BN, ∂loss/∂y = (δ_next W_nextᵀ) ⊙ φ'(β) = 0 as W_next = 0, so ∇β = 0; the BN
    after the last Linear produces the logits and gets ∇β = softmax(β) − ĉ. The hidden β stay 0,
    so h = φ(0) = 0 and ∇W = hᵀ δ = 0 for the last Linear; every weight stays 0 and the
    argument repeats at every step. Needs Linears without bias: a bias b makes the column b,
    whose computed mean Σb/n can differ from b by rounding, and x̂ would be rounding noise.
    """
    model = p.case.build("zeros")
    sgd(model, p.X, p.Y, steps, batch_size, lr, seed)
    bns = [(i, layer) for i, layer in enumerate(model.layers) if isinstance(layer, BatchNorm1d)]
    logit_bn = bns[-1][0]
    with preserved_buffers(model), LayerProbe(model, keep_outputs=True) as probe:
        grads = gradients(model, p.X_probe, p.Y_probe)
    for name in linear_names(model):
        assert torch.count_nonzero(model.get_parameter(name + ".weight")) == 0, name
    for i, bn in bns:
        note(f"BN {i}: beta {bn.beta.tolist()}")
        assert torch.equal(probe.outputs[i], bn.beta.detach().expand(len(p.X_probe), -1)), i
        assert torch.count_nonzero(grads[f"layers.{i}.gamma"]) == 0, i
        if i != logit_bn:
            assert torch.count_nonzero(grads[f"layers.{i}.beta"]) == 0, i


bias_values = st.floats(-4.0, 4.0, allow_subnormal=False)  # ±0 included; subnormals: slow and pinned by @example


def with_hidden_biases(problem_strategy):
    """(problem, biases): one drawn bias vector per hidden layer of the problem's net."""
    def biases(p):
        return st.tuples(st.just(p), st.tuples(*(tensors((w,), bias_values) for w in p.case.hidden)))
    return problem_strategy.flatmap(biases)


@given(case=with_hidden_biases(problems(mlp_cases(activations=("relu",), dtypes=(F32, F64), embedding=True))),
       steps=steps_st, batch_size=batch_sizes, lr=st.floats(1e-3, 1.0), seed=seeds)
@example(case=(Problem.of(MLPCase(hidden=(2, 2), activation="relu"), [1, 2]),
               (torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([-0.0, -1.0], dtype=F64))),
         steps=50, batch_size=2, lr=1.0, seed=0)
@example(case=(Problem.of(MLPCase(hidden=(2,), activation="relu"), [1, 2]),
               (torch.tensor([5e-324, -5e-324], dtype=F64),)),
         steps=2, batch_size=2, lr=1.0, seed=0)  # subnormal biases: alive and dead by sign alone
def test_relu_units_with_nonpositive_bias_never_change(case, steps, batch_size, lr, seed):
    """ReLU, W = 0, any b: every hidden unit j with b_j ≤ 0 keeps W[:, j] = 0, b_j and W_next[j, :] = 0 ∀t.

    z_j = h·W[:, j] + b_j = b_j ≤ 0 for every row, so h_j = relu(b_j) = 0 and relu'(b_j) = 0
    (torch's relu passes no gradient at 0 either). Then δ_j = 0 gives ∇W[:, j] = hᵀδ_j = 0 and
    ∇b_j = 0, and h_j = 0 gives ∇W_next[j, :] = h_jᵀ δ_next = 0: the unit's column, bias and
    outgoing row never move, and z_j = b_j holds again at the next step. Units with b_j > 0
    output the constant b_j and do learn, which can overflow in float32 at lr near 1: such a run
    is discarded (`stayed_finite`). b_j = ±0 counts as dead (pinned by @example).
    """
    p, biases = case
    model = p.case.build("zeros")
    names = linear_names(model)
    with torch.no_grad():
        for name, b in zip(names, biases):
            model.get_parameter(name + ".bias").copy_(b)
    before = snapshot(model)
    losses, _ = sgd(model, p.X, p.Y, steps, batch_size, lr, seed)
    assume(stayed_finite(model, losses))
    for name, nxt in zip(names, names[1:]):
        dead = before[name + ".bias"] <= 0
        note(f"{name}: dead units {dead.nonzero().flatten().tolist()}")
        assert torch.count_nonzero(model.get_parameter(name + ".weight")[:, dead]) == 0, name
        assert torch.equal(model.get_parameter(name + ".bias")[dead], before[name + ".bias"][dead]), name
        assert torch.count_nonzero(model.get_parameter(nxt + ".weight")[dead, :]) == 0, nxt


@given(p=problems(mlp_cases(embedding=True)), batch_size=batch_sizes, lr=lrs, seed=seeds)
@example(p=Problem.of(MLPCase(), [3]), batch_size=1, lr=2.0, seed=0)
def test_first_step_loss_is_log27_and_moves_the_output_bias_to_the_label_histogram(p, batch_size, lr, seed):
    """zeros: loss₀ = log 27 and, after one step, b_L = −lr·(1/27 − ĉ₀), ĉ₀ the first batch's label histogram / B.

    The logits are b_L = 0 (first law), so softmax is uniform and every row's loss is log 27.
    ∇b_L = mean over rows of (softmax − onehot(y)) = 1/27 − ĉ₀, and SGD from 0 gives −lr·∇b_L.
    Rounding (float64 model, loss logged in float32): each row's log 27 is within 2u, their
    mean within γ(B) more, the float32 record within u₃₂, so |loss₀ − log 27| ≤ (γ(B+3) + 2u₃₂)·log 27.
    For b_L: fl(1/27) from exp(−fl(log 27)) is within 9u/27; each (p − y)/B term adds 3
    roundings, the sum over B rows γ(B), the update 2 and the reference −lr·(1/27 − ĉ₀) itself 4:
    |b̂_k − b_k| ≤ lr·γ(B+17)·(ĉ₀_k + 1/27).
    """
    model = p.case.build("zeros")
    c0 = histogram(first_batch_labels(p.Y, batch_size, seed))
    losses, _ = sgd(model, p.X, p.Y, 1, batch_size, lr, seed)
    bias = model.get_parameter(linear_names(model)[-1] + ".bias").detach()
    expected = -lr * (1 / 27 - c0)
    note(f"loss₀ {losses[0]!r}; ĉ₀ {c0.tolist()}; max |b − expected| {(bias - expected).abs().max().item():.3g}")
    assert abs(losses[0] - LOG27) <= (rounding_bound(batch_size + 3, U64) + 2 * U32) * LOG27
    assert torch.all((bias - expected).abs() <= lr * rounding_bound(batch_size + 17, U64) * (c0 + 1 / 27))


def bias_sum_bound(lr: float, steps: int, batch_size: int) -> float:
    """Rounding bound on |Σ_k b_L,k| after `steps` float64 SGD steps from zeros (see the law below)."""
    return lr * steps * (2 * rounding_bound(batch_size + 23, U64) + rounding_bound(2 * steps + 2, U64)
                         + rounding_bound(54, U64))


@given(p=problems(mlp_cases(embedding=True)), steps=steps_st, batch_size=batch_sizes, lr=lrs, seed=seeds)
@example(p=Problem.of(MLPCase(), list(range(27)) * 4), steps=50, batch_size=128, lr=2.0, seed=0)
def test_the_output_bias_keeps_summing_to_zero(p, steps, batch_size, lr, seed):
    """zeros, float64: |Σ_k b_L,k| ≤ lr·T·(2γ(B+23) + γ(2T+2) + γ(54)) after T SGD steps of batch B.

    Exactly, Σ_k ∇b_L,k = mean over rows of (Σ_k softmax_k − 1) = 0, so Σ b_L stays at its
    initial 0. In float64 softmax is exp of log-softmax, whose entries l_k are within
    3u·|l_k| + γ(28), so Σ_k |p̂ − p| ≤ 3u·H(p) + γ(30) ≤ γ(40); the (p − y)/B terms and the row
    sum add 3u and γ(B) on a total mass of 2, so |Σ_k ĝ_k| ≤ 2γ(B+23). The update b − lr·ĝ
    rounds twice per entry, ≤ γ(2)(Σ|b| + 2.01·lr), and Σ|b| ≤ 2.01·lr·t after t steps; summing
    over T steps and the final 27-term sum (γ(26)·Σ|b|) gives the bound: at most 5.1e-12 for
    T ≤ 50, lr ≤ 2, B ≤ 128.
    """
    model = p.case.build("zeros")
    sgd(model, p.X, p.Y, steps, batch_size, lr, seed)
    total = model.get_parameter(linear_names(model)[-1] + ".bias").sum().item()
    bound = bias_sum_bound(lr, steps, batch_size)
    note(f"Σ b_L = {total!r}, bound {bound:.3g}")
    assert abs(total) <= bound


def full_batch_gd(model, X, Y, lr: float, steps: int) -> list[torch.Tensor]:
    """Plain gradient descent on the whole (X, Y); returns the output bias before each step and after the last."""
    params = list(model.parameters())
    bias = model.get_parameter(linear_names(model)[-1] + ".bias")
    trajectory = []
    for _ in range(steps):
        trajectory.append(bias.detach().clone())
        grads = torch.autograd.grad(model.loss(X, Y), params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-lr)
    return trajectory + [bias.detach().clone()]


GD_STEPS = 400


@given(p=problems(mlp_cases(max_depth=2, max_width=8, embedding=True), label_lists(max_size=40, every_class=True)),
       lr=st.floats(1.0, 2.0))
@example(p=Problem.of(MLPCase(), list(range(27)) + [0] * 13), lr=1.0)
def test_full_batch_descent_drives_the_output_bias_to_log_label_shares(p, lr):
    """zeros, full GD, lr ≤ 2: ‖b_T − b*‖ ≤ Π(1 − lr·μ_t)‖b*‖, b* = log ĉ − mean log ĉ; 0 ≤ loss_T − H ≤ ‖b_T − b*‖²/4.

    The logits are b (first law), so descent runs on f(b) = −Σ ĉ_k log softmax(b)_k, whose
    minimisers are softmax(b) = ĉ; with Σ b = 0 (kept, previous law) that is b*, and f(b*) = H(ĉ).
    ∇²f = diag(p) − ppᵀ has eigenvalues ≤ 1/2 and, on 1⊥, ≥ min_k p_k (Var_p(v) ≥ min p·‖v‖² for
    v ⊥ 1). On the segment [b_t, b*], log p_k is at least its smaller end value, so
    b_{t+1} − b* = (I − lr·H̄)(b_t − b*) contracts by 1 − lr·μ_t, μ_t = min_k min(p_t,k, ĉ_k),
    for lr ≤ 2. The loss bound is 1/2-smoothness at the minimiser. Every label must occur, or
    some b*_k = −∞. Rounding: per step each entry of b rounds twice (≤ γ(2)(‖b_t‖∞ + lr)) and each
    gradient entry is within 2γ(N+35) (see the bias-sum law), ×√27 for the norm; b* itself is
    within γ(33)·max|log ĉ| per entry; the loss and H each within γ(N+64)·(value + 1).
    """
    model = p.case.build("zeros")
    X, Y = p.X, p.Y
    n = len(Y)
    c = histogram(Y)
    b_star = c.log() - c.log().mean()
    trajectory = full_batch_gd(model, X, Y, lr, GD_STEPS)
    contraction, rounding = 1.0, math.sqrt(27) * rounding_bound(33, U64) * b_star.abs().max().item()
    for b in trajectory[:-1]:
        mu = torch.minimum(torch.softmax(b, 0), c).min().item() * (1 - rounding_bound(64, U64))  # p̂: within γ(64) of p
        contraction *= 1 - lr * mu
        rounding += math.sqrt(27) * (rounding_bound(2, U64) * (b.abs().max().item() + lr)
                                     + lr * 2 * rounding_bound(n + 35, U64))
    distance_bound = contraction * b_star.norm().item() + rounding
    distance = (trajectory[-1] - b_star).norm().item()
    with torch.no_grad():
        loss = model.loss(X, Y).item()
    H = label_entropy(Y)
    slack = rounding_bound(n + 64, U64) * (loss + H + 2)
    note(f"‖b_T − b*‖ = {distance:.3g}, certified ≤ {distance_bound:.3g} (contraction {contraction:.3g}); "
         f"loss {loss!r}, H {H!r}")
    assert distance <= distance_bound
    assert -slack <= loss - H <= distance_bound**2 / 4 + slack


@given(p=problems(mlp_cases(activations=("tanh",))), steps=steps_st, batch_size=batch_sizes, lr=st.floats(1e-3, 1.0),
       seed=seeds)
@example(p=Problem.of(MLPCase(hidden=(1, 1, 1, 1, 1, 1)), [0]), steps=1, batch_size=1, lr=1e-3, seed=0)
def test_zero_last_wakes_every_parameter_after_one_step(p, steps, batch_size, lr, seed):
    """zero_last, tanh: before any update only W_L, b_L have a gradient; after one update every parameter does.

    Before the first update W_L = 0, so δ_{L-1} = δ_L W_Lᵀ ⊙ φ' = 0 and every gradient below the
    output layer is exactly 0, while ∇W_L = h_{L-1}ᵀ δ_L with h random and δ_L = (softmax −
    onehot)/B, whose every row is nonzero. After the step W_L = −lr·∇W_L ≠ 0 and, tanh' being
    positive, δ reaches every layer and C. Nonzero means nonzero for all but a measure-zero set of
    initial weights and embeddings (exact cancellation), so C and the weights are generic (randn),
    never drawn; the contexts are drawn, and even all-equal rows give ∇W_L = h ⊗ (1/27 − ĉ₀), zero
    only for an exactly uniform first batch. ReLU is left out: a layer dead on the whole batch stops δ.
    """
    model = p.case.build("zero_last")
    X, Y = p.X, p.Y
    names = linear_names(model)
    output = {names[-1] + ".weight", names[-1] + ".bias"}
    assert set(alive(model, X, Y)) <= output
    _, rec = sgd(model, X, Y, steps, batch_size, lr, seed)
    note(f"first nonzero gradient (0-based step): {rec.first_grad}")
    assert rec.first_grad[names[-1] + ".weight"] == 0
    for name, first in rec.first_grad.items():
        if name not in output:
            assert first == (1 if steps > 1 else None), name
    assert set(alive(model, p.X_probe, p.Y_probe)) == set(rec.names)


def unit_spread(model) -> list[float]:
    """Per hidden layer: max_j ‖u_j − u_0‖∞ / ‖u‖∞, u_j = (W_l[:, j], b_l[j], W_{l+1}[j, :]) unit j's parameters."""
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    spreads = []
    for layer, nxt in zip(linears, linears[1:]):
        units = torch.cat([layer.weight.T, layer.bias[:, None], nxt.weight], dim=1).detach()
        scale = units.abs().max()
        spreads.append(0.0 if scale == 0 else ((units - units[:1]).abs().max() / scale).item())
    return spreads


CONSTANT_STEPS = 1000  # the longest run drawn; lr ≤ 1e-3 keeps lr·T ≤ 1


@given(p=problems(mlp_cases(max_depth=3, max_width=16), label_lists(max_size=32)), c=st.floats(-1.0, 1.0),
       steps=st.integers(1, CONSTANT_STEPS), batch_size=st.integers(1, 32), lr=st.floats(1e-4, 1e-3), seed=seeds)
@example(p=Problem.of(MLPCase(hidden=(14,), context_length=2, emb_size=3, seed=2), list(range(27))), c=0.274,
         steps=CONSTANT_STEPS, batch_size=32, lr=1e-3, seed=5)
def test_constant_init_keeps_hidden_units_identical(p, c, steps, batch_size, lr, seed):
    """constant(c), float64, T ≤ 1000, lr·T ≤ 1: max_j ‖u_j − u_0‖∞ ≤ 1e-12·‖u‖∞ per layer, u_j = unit j's parameters.

    Permuting the units of a layer maps the net to itself and fixes constant(c), so it also fixes
    the gradient and the SGD step: in exact arithmetic the units stay identical and the net
    computes what a width-1 net computes. In floating point a kernel may order unit j's sums
    differently from unit 0's, so an update can differ between units by γ(m)·|lr·g| (m ≤ 32, the
    longest sum here): over T steps at most γ(32)·P, P = Σ_t |lr·g_t| the path length. A
    difference already there is carried along and grows by at most 1 + lr·λ per step, λ the
    loss's largest negative curvature across units: spread ≤ γ(32)·(P/|θ|)·e^(lr·T·λ). The 1e-12
    budget is γ(32)·280, enough for P/|θ| ≤ 17 and λ ≤ 2.8 at lr·T ≤ 1. The symmetric state is
    invariant but not stable: at lr = 0.5 the units of a 14-wide tanh layer part to O(1) within
    1000 steps (tests/makemore/test_init.py). Bit equality is never assumed.
    """
    model = p.case.build(f"constant({c!r})")
    sgd(model, p.X, p.Y, steps, batch_size, lr, seed)
    spreads = unit_spread(model)
    note(f"relative spread per hidden layer: {spreads}")
    assert max(spreads) <= 1e-12


@given(p=problems(mlp_cases(activations=("sigmoid",)), label_lists(min_size=2)), extra=st.integers(0, 3),
       batch_size=st.integers(2, 128), lr=st.floats(0.1, 2.0), seed=seeds)
@example(p=Problem.of(MLPCase(hidden=(1,) * 6, activation="sigmoid"), [0, 1]), extra=0, batch_size=2, lr=0.1, seed=0)
def test_with_sigmoid_the_gradient_reaches_one_layer_deeper_per_step(p, extra, batch_size, lr, seed):
    """zeros, sigmoid, float64: ∇W_l = ∇b_l = 0 after fewer than L−l updates and ≠ 0 after exactly L−l; ∇C = 0 for L.

    Counting steps from 1, ∇W_l first moves at step t = L+1−l. Now
    h_l = σ(0) = ½ ≠ 0. Induction: until W_{l+1} has had its first nonzero gradient it is 0, so
    δ_l = δ_{l+1} W_{l+1}ᵀ ⊙ σ' = 0 exactly. At the first step ∇W_L = ½·Σ_rows δ_L ≠ 0 unless the
    first batch's labels are exactly uniform. Once W_{l+1} ≠ 0, δ_l ≠ 0 and ∇W_l = h_{l-1}ᵀ δ_l
    with h_{l-1} = ½ (or C[X] for l = 1) is nonzero for all but a measure-zero set of inputs.
    Representability is the precise condition: δ_l carries the product W_{l+1}···W_L of weights
    each born in its own first step, so log|W_l| ≈ Σ_{m>l} log|W_m| and the magnitudes square at
    every layer: for six width-1 layers at lr = 0.1 and nearly uniform labels, W_1 is born near
    1e-224, still inside float64 (float32 ends at 1e-45), hence lr ≥ 0.1 here. C's first
    gradient, δ_1 W_1ᵀ, squares once more and may underflow to 0: only its exact zeros are asserted.
    """
    model = p.case.build("zeros")
    names = linear_names(model)
    L = len(names)
    _, rec = sgd(model, p.X, p.Y, L + 1 + extra, batch_size, lr, seed)
    first = rec.first_grad
    note(f"first nonzero gradient (updates before it): {first}")
    for depth, name in enumerate(names, start=1):
        assert first[name + ".weight"] == L - depth, name
        assert first[name + ".bias"] == L - depth, name
    assert first["C"] is None or first["C"] >= L
