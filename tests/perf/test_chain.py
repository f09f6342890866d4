"""FrozenChain and CUDA-graph capture: bit-identical to the modules' eval forward, refusing what they cannot freeze."""

import pytest
import torch
from torch import nn
from torch.nn.utils import skip_init

from core.engine.fold import fold
from core.errors import UnsupportedInput, UnsupportedModel
from core.makemore.data import random_rows
from core.makemore.experiments import trained_e02
from core.makemore.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from core.makemore.model import CharMLP, e01_mlp
from core.perf.chain import FrozenChain, capture


def small_e02(seed=0):
    g = torch.Generator().manual_seed(seed)
    return trained_e02(*random_rows(500, g), 30, g)


@pytest.fixture(scope="module")
def nets():
    """{'unfolded': the trained E02 net in eval, 'folded': its folded twin in eval}."""
    unfolded = small_e02()
    return {"unfolded": unfolded, "folded": fold(unfolded)[0].eval()}


def batch(n, seed=1):
    return torch.randint(0, 27, (n, 4), generator=torch.Generator().manual_seed(seed))


def with_statistics(bn: BatchNorm1d, generator: torch.Generator) -> BatchNorm1d:
    """bn in eval with running statistics (and affine parameters, if any) drawn from generator."""
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.dim, generator=generator))
        bn.running_var.copy_(torch.rand(bn.dim, generator=generator) + 0.5)
        if bn.affine:
            bn.gamma.copy_(1 + 0.3 * torch.randn(bn.dim, generator=generator))
            bn.beta.copy_(0.3 * torch.randn(bn.dim, generator=generator))
    return bn.eval()


def sequential(kind: str, g: torch.Generator) -> nn.Sequential:
    """A Sequential of core layers: 'folded' (Linear and activations) or 'unfolded' (eval BatchNorms too)."""
    if kind == "folded":
        layers = [Linear(6, 5, generator=g), Tanh(), Linear(5, 4, bias=False, generator=g), ReLU(),
                  Linear(4, 3, generator=g), Sigmoid()]
    else:
        layers = [Linear(6, 5, bias=False, generator=g), with_statistics(BatchNorm1d(5), g), Tanh(),
                  Linear(5, 4, generator=g), with_statistics(BatchNorm1d(4, affine=False), g), ReLU(),
                  Linear(4, 3, bias=False, generator=g), with_statistics(BatchNorm1d(3), g), Sigmoid()]
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("kind", ["folded", "unfolded"])
def test_frozen_charmlp_is_bit_identical_to_its_modules(nets, kind, mode, n):
    model, X = nets[kind], batch(n)
    frozen = FrozenChain(model)
    with mode():
        assert torch.equal(frozen(X), model(X))


@pytest.mark.parametrize("n", [1, 9])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("kind", ["folded", "unfolded"])
def test_frozen_sequential_is_bit_identical_to_its_modules(kind, mode, n):
    g = torch.Generator().manual_seed(0)
    seq = sequential(kind, g)
    x = torch.randn(n, 6, generator=g)
    frozen = FrozenChain(seq)
    with mode():
        assert torch.equal(frozen(x), seq(x))


def test_charmlp_with_a_bias_free_linear():
    g = torch.Generator().manual_seed(0)
    model = CharMLP(torch.randn(27, 10, generator=g), [Linear(40, 8, bias=False, generator=g), Tanh(),
                                                       Linear(8, 27, generator=g)]).eval()
    X = batch(6)
    with torch.inference_mode():
        assert torch.equal(FrozenChain(model)(X), model(X))


@pytest.mark.parametrize("first", [Tanh, ReLU, Sigmoid, BatchNorm1d])
def test_the_input_is_never_written(first):
    g = torch.Generator().manual_seed(0)
    head = with_statistics(BatchNorm1d(6), g) if first is BatchNorm1d else first()
    seq = nn.Sequential(head, Tanh(), Linear(6, 3, generator=g), ReLU()).eval()
    x = torch.randn(9, 6, generator=g)
    x_before = x.clone()
    with torch.no_grad():
        out = FrozenChain(seq)(x)
        expected = seq(x)
    assert torch.equal(x, x_before)
    assert torch.equal(out, expected)


def test_outputs_are_fresh_and_never_require_grad(nets):
    frozen = FrozenChain(nets["folded"])
    first = frozen(batch(5))
    kept = first.clone()
    second = frozen(batch(5, seed=2))
    assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()
    assert torch.is_grad_enabled() and not first.requires_grad


@pytest.mark.parametrize("kind", ["folded", "unfolded"])
def test_in_place_updates_are_seen(kind):
    unfolded = small_e02(seed=4)
    model = fold(unfolded)[0].eval() if kind == "folded" else unfolded
    frozen = FrozenChain(model)
    other = small_e02(seed=5)
    with torch.no_grad():
        model.layers[0].weight.mul_(0.5)
        if kind == "unfolded":
            model.layers[1].running_mean.add_(0.25)
            model.layers[-1].gamma.mul_(3.0)
    X = batch(33)
    with torch.no_grad():
        assert torch.equal(frozen(X), model(X))
        if kind == "unfolded":
            model.load_state_dict(other.state_dict())  # copies into the same tensors
            assert torch.equal(frozen(X), model(X))


def test_replaced_parameters_and_layers_are_not_seen_until_frozen_again():
    model = fold(small_e02(seed=3))[0].eval()
    frozen = FrozenChain(model)
    X = batch(4)
    before = frozen(X)
    model.layers[0].weight = nn.Parameter(model.layers[0].weight * 2)
    model.layers[1] = ReLU()
    with torch.no_grad():
        after = model(X)
    assert torch.equal(frozen(X), before)
    assert torch.equal(FrozenChain(model)(X), after)


def in_training(model, index):
    model.layers[index].train()
    return model


@pytest.mark.parametrize("make, message", [
    (lambda g: small_e02().train(), r"layers\.1 \(BatchNorm1d\) is in training mode.*model\.eval\(\)"),
    (lambda g: in_training(small_e02(), 4), r"layers\.4 \(BatchNorm1d\) is in training mode"),
    (lambda g: nn.Sequential(skip_init(nn.Linear, 3, 3)), r"0 \(Linear\) has no frozen eval op.*call the model itself"),
    (lambda g: nn.Sequential(type("MyTanh", (Tanh,), {})()), r"0 \(MyTanh\) has no frozen eval op"),
    (lambda g: nn.Sequential(nn.Sequential(Tanh())), r"0 \(Sequential\) has no frozen eval op"),
    (lambda g: nn.ModuleList([Tanh()]), r"CharMLP or an nn\.Sequential.*got a ModuleList"),
    (lambda g: Linear(3, 3, generator=g), r"got a Linear"),
], ids=["batchnorm-training", "one-layer-training", "torch-linear", "subclass", "nested", "module-list", "bare-layer"])
def test_what_cannot_be_frozen_is_refused_by_name(make, message):
    with pytest.raises(UnsupportedModel, match=message):
        FrozenChain(make(torch.Generator().manual_seed(0)))


def test_frozen_chain_runs_no_forward_hook(nets):
    seen = []
    handle = nets["folded"].layers[1].register_forward_hook(lambda module, inputs, out: seen.append(out))
    try:
        FrozenChain(nets["folded"])(batch(3))
    finally:
        handle.remove()
    assert seen == []


def test_forward_hooks_run_with_autograd_off(nets):
    seen = []
    handle = nets["folded"].layers[1].register_forward_hook(lambda module, inputs, out: seen.append(out.clone()))
    try:
        with torch.no_grad():
            nets["folded"](batch(3))
    finally:
        handle.remove()
    assert len(seen) == 1


def test_global_forward_hooks_run_with_autograd_off(nets):
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, inputs, out: seen.append(type(module)))
    try:
        with torch.inference_mode():
            nets["folded"](batch(3))
    finally:
        handle.remove()
    assert Tanh in seen and Linear in seen


def test_layers_that_compute_the_same_in_training_mode_are_frozen():
    g = torch.Generator().manual_seed(0)
    model = e01_mlp(g, init="kaiming").train()
    X = batch(8)
    with torch.no_grad():
        assert torch.equal(FrozenChain(model)(X), model(X))


def test_training_path_is_unchanged():
    g = torch.Generator().manual_seed(0)
    model = e01_mlp(g, init="kaiming").train()
    X = batch(8)
    out = model(X)
    assert out.requires_grad
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(X), out.detach())


@pytest.mark.parametrize("frozen", [False, True], ids=["module", "frozen-chain"])
def test_capture_needs_a_cuda_input(nets, frozen):
    model = FrozenChain(nets["folded"]) if frozen else nets["folded"]
    with pytest.raises(UnsupportedInput, match="needs an input on a CUDA device.*move the model and the input"):
        capture(model, batch(2))


@pytest.mark.gpu
@pytest.mark.parametrize("frozen", [False, True], ids=["module", "frozen-chain"])
@pytest.mark.parametrize("n", [1, 64, 4096])
def test_cuda_graph_replay_equals_eager(n, frozen):
    # The graph may hold other cuBLAS kernels than an eager call picks (capture runs on a side
    # stream with its own workspace), so equal up to float32 rounding; replays are bit-stable.
    model = fold(small_e02())[0].eval().cuda()
    X, other = batch(n).cuda(), batch(n, seed=5).cuda()
    replay = capture(FrozenChain(model) if frozen else model, X)
    first = replay(X).clone()
    with torch.no_grad():
        torch.testing.assert_close(first, model(X))
        torch.testing.assert_close(replay(other).clone(), model(other))
    assert torch.equal(replay(X), first)


@pytest.mark.gpu
def test_cuda_graph_sees_in_place_updates_and_checks_the_shape():
    model = fold(small_e02())[0].eval().cuda()
    X = batch(8).cuda()
    replay = capture(FrozenChain(model), X)
    before = replay(X).clone()
    with torch.no_grad():
        model.layers[-1].bias.add_(1.0)
    torch.testing.assert_close(replay(X), before + 1.0)
    with pytest.raises(UnsupportedInput, match="captured for inputs of shape.*capture again"):
        replay(batch(9).cuda())


@pytest.mark.gpu
def test_capture_refuses_training_mode():
    model = fold(small_e02())[0].cuda().train()
    with pytest.raises(UnsupportedModel, match=r"training mode: call model\.eval\(\) first"):
        capture(model, batch(2).cuda())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["folded", "unfolded"])
def test_cuda_frozen_chain_is_bit_identical(kind):
    unfolded = small_e02().cuda()
    model = fold(unfolded)[0].eval() if kind == "folded" else unfolded
    X = batch(64).cuda()
    with torch.inference_mode():
        assert torch.equal(FrozenChain(model)(X), model(X))
