"""The fast eval path: bit-identical to calling the modules, taken only where that is guaranteed."""

import pytest
import torch
from torch import nn

from core.data import random_rows
from core.experiments import trained_e02
from core.fold import fold
from core.inference import FrozenChain, capture, forward, plan
from core.layers import Linear, ReLU, Sigmoid, Tanh
from core.model import CharMLP, e01_mlp


def small_e02(seed=0):
    g = torch.Generator().manual_seed(seed)
    return trained_e02(*random_rows(500, g), 30, g)


@pytest.fixture(scope="module")
def folded():
    return fold(small_e02())[0].eval()


def batch(n, seed=1):
    return torch.randint(0, 27, (n, 4), generator=torch.Generator().manual_seed(seed))


def module_path(model, X):
    """model(X) through the modules: the fast path is off while autograd records."""
    with torch.enable_grad():
        return model(X).detach()


@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_folded_fast_path_is_bit_identical(folded, n, mode):
    X = batch(n)
    expected = module_path(folded, X)
    with mode():
        assert plan(folded.layers) is not None
        assert torch.equal(folded(X), expected)


def test_outputs_are_fresh_and_the_input_is_untouched(folded):
    X = batch(5)
    X_before = X.clone()
    with torch.inference_mode():
        first = folded(X)
        kept = first.clone()
        second = folded(batch(5, seed=2))
    assert torch.equal(X, X_before)
    assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()


def test_sequential_input_is_never_written():
    g = torch.Generator().manual_seed(0)
    seq = nn.Sequential(Linear(6, 5, generator=g), Tanh(), Linear(5, 4, bias=False, generator=g), ReLU(),
                        Linear(4, 3, generator=g), Sigmoid())
    x = torch.randn(9, 6, generator=g)
    x_before = x.clone()
    with torch.no_grad():
        fast = forward(seq, x)
        expected = seq(x)  # the modules themselves, called by nn.Sequential
    assert torch.equal(x, x_before)
    assert torch.equal(fast, expected)


def test_stacks_that_are_not_plain_take_the_module_path():
    g = torch.Generator().manual_seed(0)

    class MyLinear(Linear):
        pass

    unfolded = small_e02()
    assert plan(unfolded.layers) is None  # BatchNorm1d
    assert plan(nn.Sequential(Tanh(), Linear(3, 3, generator=g))) is None  # activation first
    assert plan(nn.Sequential(Linear(3, 3, generator=g), Tanh(), Tanh())) is None
    assert plan(nn.Sequential(MyLinear(3, 3, generator=g))) is None
    assert plan(nn.ModuleList([Linear(3, 3, generator=g)])) is None
    with torch.no_grad():
        assert forward(nn.Sequential(Linear(3, 3, generator=g)), torch.zeros(2, 5, 3)) is None  # 3-D input
    with torch.enable_grad():
        assert forward(nn.Sequential(Linear(3, 3, generator=g)), torch.zeros(2, 3)) is None


def test_forward_hooks_still_run(folded):
    seen = []
    handle = folded.layers[1].register_forward_hook(lambda module, inputs, out: seen.append(out.clone()))
    try:
        with torch.no_grad():
            assert plan(folded.layers) is None
            folded(batch(3))
    finally:
        handle.remove()
    assert len(seen) == 1
    assert plan(folded.layers) is not None


def test_global_forward_hooks_still_run(folded):
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, inputs, out: seen.append(type(module)))
    try:
        with torch.no_grad():
            folded(batch(3))
    finally:
        handle.remove()
    assert Tanh in seen and Linear in seen


def test_replaced_parameters_and_layers_are_read_at_every_call():
    model = fold(small_e02(seed=3))[0].eval()
    X = batch(4)
    with torch.no_grad():
        model(X)  # a first fast call must not freeze anything
        model.layers[0].weight = nn.Parameter(model.layers[0].weight * 2)
        model.layers[2].bias = None
        model.layers[3] = ReLU()
        assert torch.equal(model(X), module_path(model, X))


def test_training_path_is_unchanged():
    g = torch.Generator().manual_seed(0)
    model = e01_mlp(g, init="kaiming").train()
    X = batch(8)
    out = model(X)
    assert out.requires_grad
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():  # training mode, autograd off: the stack is plain, so the fast path is exact here too
        assert torch.equal(model(X), out.detach())


def test_charmlp_with_a_bias_free_linear():
    g = torch.Generator().manual_seed(0)
    model = CharMLP(torch.randn(27, 10, generator=g), [Linear(40, 8, bias=False, generator=g), Tanh(),
                                                       Linear(8, 27, generator=g)])
    X = batch(6)
    with torch.inference_mode():
        assert torch.equal(model(X), module_path(model, X))


def test_frozen_chain_is_bit_identical_and_sees_in_place_updates():
    model = fold(small_e02(seed=4))[0].eval()
    frozen = FrozenChain(model)
    X = batch(33)
    assert torch.equal(frozen(X), module_path(model, X))
    assert not frozen(X).requires_grad
    with torch.no_grad():
        model.layers[0].weight.mul_(0.5)
    assert torch.equal(frozen(X), module_path(model, X))


def test_frozen_chain_of_a_sequential_and_its_refusals():
    g = torch.Generator().manual_seed(0)
    seq = nn.Sequential(Linear(6, 5, generator=g), ReLU(), Linear(5, 2, bias=False, generator=g))
    x = torch.randn(4, 6, generator=g)
    assert torch.equal(FrozenChain(seq)(x), seq(x).detach())
    with pytest.raises(ValueError, match="fold the BatchNorms"):
        FrozenChain(small_e02())


def test_capture_needs_a_cuda_input(folded):
    with pytest.raises(ValueError, match="CUDA"):
        capture(folded, batch(2))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 64, 4096])
def test_cuda_graph_replay_equals_eager(n):
    # The graph may hold other cuBLAS kernels than an eager call picks (capture runs on a side
    # stream with its own workspace), so equal up to float32 rounding; replays are bit-stable.
    model = fold(small_e02())[0].eval().cuda()
    X, other = batch(n).cuda(), batch(n, seed=5).cuda()
    replay = capture(model, X)
    first = replay(X).clone()
    with torch.no_grad():
        torch.testing.assert_close(first, model(X))
        torch.testing.assert_close(replay(other).clone(), model(other))
    assert torch.equal(replay(X), first)


@pytest.mark.gpu
def test_cuda_graph_sees_in_place_updates_and_checks_the_shape():
    model = fold(small_e02())[0].eval().cuda()
    X = batch(8).cuda()
    replay = capture(model, X)
    before = replay(X).clone()
    with torch.no_grad():
        model.layers[-1].bias.add_(1.0)
    torch.testing.assert_close(replay(X), before + 1.0)
    with pytest.raises(ValueError, match="shape"):
        replay(batch(9).cuda())


@pytest.mark.gpu
def test_capture_refuses_training_mode():
    model = fold(small_e02())[0].cuda().train()
    with pytest.raises(ValueError, match="eval"):
        capture(model, batch(2).cuda())


@pytest.mark.gpu
def test_cuda_fast_path_is_bit_identical():
    model = fold(small_e02())[0].eval().cuda()
    X = batch(64).cuda()
    with torch.inference_mode():
        fast = model(X)
    assert torch.equal(fast, module_path(model, X))
