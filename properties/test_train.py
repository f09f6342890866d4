"""Laws of training: determinism per generator seed, and the SGD step itself."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from core.data import build_dataset
from core.model import e01_mlp, e02_mlp
from core.train import train
from properties.strategies import name_lists

archs = st.sampled_from(["e01-kaiming", "e01-zeros", "e02"])


def small_model(arch: str, seed: int, context_length: int):
    g = torch.Generator().manual_seed(seed)
    if arch == "e02":
        return e02_mlp(g, context_length=context_length, emb_size=3, n_hidden=8)
    return e01_mlp(g, init=arch.split("-")[1], context_length=context_length, emb_size=3, n_hidden=8)


@given(name_lists, archs, st.integers(1, 4), st.integers(1, 20), st.integers(2, 16), st.integers(0, 2**32 - 1))
def test_same_seed_same_parameters(names, arch, context_length, steps, batch_size, seed):
    """train(model(s), seed s') = train(model(s), seed s') parameter for parameter, bit for bit.

    Initial weights and every minibatch come from explicit generators, and the CPU kernels are
    deterministic for a fixed thread count, so two runs perform the same float operations.
    """
    X, Y = build_dataset(names, context_length)
    runs = []
    for _ in range(2):
        model = small_model(arch, seed, context_length)
        history = train(model, X, Y, steps, batch_size=batch_size, lr=0.1,
                        generator=torch.Generator().manual_seed(seed + 1), progress=False)
        runs.append((model.state_dict(), history.losses))
    (sd_a, loss_a), (sd_b, loss_b) = runs
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert loss_a == loss_b and len(loss_a) == steps


@given(name_lists, st.integers(2, 16), st.floats(1e-3, 1.0), st.integers(0, 2**32 - 1))
def test_one_step_is_plain_sgd(names, batch_size, lr, seed):
    """After one step, p₁ = p₀ − lr·∇p L(p₀; batch₀), with batch₀ the first draw of the generator.

    train() draws indices with torch.randint(0, N, (B,), generator) and applies the plain update,
    so replaying that draw and taking the gradient by hand gives the same gradient bit for bit.
    The update is a product and a sum (or one fused multiply-add): each side is within
    2u·(|p₀| + |lr·g|) of the exact p₀ − lr·g, u = 2⁻²⁴ in float32, hence the 4u bound.
    """
    X, Y = build_dataset(names, 3)
    model = small_model("e01-kaiming", seed, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = small_model("e01-kaiming", seed, 3)
    ix = torch.randint(0, X.shape[0], (batch_size,), generator=torch.Generator().manual_seed(seed + 7))
    loss = reference.loss(X[ix], Y[ix])
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    train(model, X, Y, 1, batch_size=batch_size, lr=lr, generator=torch.Generator().manual_seed(seed + 7), progress=False)
    u = torch.finfo(torch.float32).eps / 2
    for (name, p), g in zip(reference.named_parameters(), grads):
        p0, step = before[name], lr * g
        bound = 4 * u * (p0.abs() + step.abs())
        assert ((model.state_dict()[name] - (p0 - step)).abs() <= bound).all(), name
