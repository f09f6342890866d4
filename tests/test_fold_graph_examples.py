"""Folding traced models by example: refusals, what is kept and why, the report of a graph model, hooks, shared and
nested modules, inference mode, and why a BatchNorm before a zero-padded conv is kept."""


import pytest
import torch
from torch import fx, nn

from core.bound import error_bound, pair_bound
from core.errors import FoldError
from core.fold import fold
from core.pairfold import BEFORE, fold_pair
from properties.strategies import NetCase

g = torch.Generator().manual_seed(0)


def with_statistics(model: nn.Module) -> nn.Module:
    """The model in eval mode, every BatchNorm's statistics and affine terms drawn from the module's generator."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def conv(c_in, c_out, k=3, padding=1, **kw):
    return seeded(nn.Conv2d, c_in, c_out, k, padding=padding, **kw)


def seeded(layer_type, *args, **kw):
    """layer_type(*args, **kw) initialised from a seed drawn from g, the global RNG left as it was."""
    with torch.random.fork_rng(devices=[]):  # torch's layers draw their init from the global RNG
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        return layer_type(*args, **kw)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv(3, 4), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x.relu() if x.sum() > 0 else x  # control flow on values: torch.fx cannot trace it


def test_an_untraceable_model_is_refused_with_a_way_out():
    with pytest.raises(FoldError, match=r"DataDependent cannot be traced by torch\.fx") as info:
        fold(with_statistics(DataDependent()))
    assert "fold its traceable submodules instead (model.conv, model.bn)" in str(info.value)


class Blocks(nn.Module):
    """stem conv → bn (folds); a residual whose conv output is also added (bn kept: other users); a bn after the add
    (kept: producer is add); a bn before a zero-padded conv (kept) and one before a reflect-padded conv (folds)."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = conv(3, 4), nn.BatchNorm2d(4)
        self.res, self.res_bn, self.add_bn = conv(4, 4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.pre_bn, self.padded = nn.BatchNorm2d(4), conv(4, 4)
        self.pre_bn2, self.reflect = nn.BatchNorm2d(4), conv(4, 2, padding_mode="reflect")

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        r = self.res(x)
        x = self.add_bn(x + self.res_bn(r) + r)
        x = torch.relu(self.padded(self.pre_bn(x)))
        return self.reflect(self.pre_bn2(x))


def test_a_graph_report_names_layers_and_reasons():
    model = with_statistics(Blocks())
    folded, report = fold(model)
    assert isinstance(folded, fx.GraphModule) and not folded.training
    assert [(p.bn_index, p.linear_index, p.direction, p.layer_type) for p in report.folded] == [
        ("stem_bn", "stem", "after", "Conv2d"), ("pre_bn2", "reflect", "before", "Conv2d")]
    reasons = {k.index: k.reason for k in report.kept}
    assert reasons["res_bn"].startswith("BatchNorm2d 'res_bn' is kept: its producer Conv2d 'res' has other users (add")
    assert "its producer is add, not a Linear or convolution" in reasons["add_bn"]
    assert "it is before Conv2d 'padded': the Conv2d pads with zeros (padding (1, 1))" in reasons["pre_bn"]
    rho = [f"ρ = {p.bound_factor:.3e}" for p in report.folded]
    assert str(report).splitlines()[:4] == [
        "BatchNorm folding: 2 folded, 3 kept",
        "  BatchNorm  into layer  direction             fan_in  bound |Δy_j| <= ρ·M_j",
        f"  stem_bn    stem        Conv2d -> BN              27  {rho[0]}",
        f"  pre_bn2    reflect     BN -> Conv2d              36  {rho[1]}"]
    X = torch.randn(2, 3, 5, 5, generator=g)
    with torch.no_grad():
        assert ((model(X) - folded(X)).abs() <= error_bound(model, X)).all()


def test_why_a_bn_before_a_zero_padded_conv_is_kept():
    """Folding it anyway is exact inside and wrong at the border: there the conv saw 0, not the BN's shift."""
    bn, padded = with_statistics(nn.BatchNorm2d(2)), conv(2, 3).eval()
    with torch.no_grad():
        bn.bias.fill_(5.0)
    model = nn.Sequential(bn, padded).eval()
    naive = fold_pair(padded, bn, BEFORE)
    x = torch.randn(1, 2, 5, 5, generator=g)
    with torch.no_grad():
        err = (model(x) - naive(x)).abs().double()
    bound = pair_bound(padded, bn, BEFORE, x)
    assert (err[..., 1:-1, 1:-1] <= bound[..., 1:-1, 1:-1]).all()
    assert (err[..., 0, 0] > 1e3 * bound[..., 0, 0]).all()
    assert fold(model)[1].kept[0].reason.endswith("pads with zeros (padding (1, 1)): its border would see 0, not the "
                                                  "BatchNorm's shift")


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv(3, 3), nn.BatchNorm2d(3)
        self.block = nn.Sequential(conv(3, 3), nn.BatchNorm2d(3))
        self.unused = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.block(self.bn(self.conv(self.conv(x))))


def test_shared_hooked_and_unused_modules():
    """A conv called twice takes no fold; a hooked block is one opaque layer whose BN is kept (and its hook still
    runs); a BN forward never calls is reported too."""
    model = with_statistics(Shared())
    calls = []
    model.block.register_forward_hook(lambda module, inputs, output: calls.append(1))
    folded, report = fold(model)
    reasons = {k.index: k.reason for k in report.kept}
    assert set(reasons) == {"bn", "block.1", "unused"} and report.folded == ()
    assert "its producer Conv2d 'conv' is called at 2 places in forward" in reasons["bn"]
    assert "inside Sequential 'block', which fold calls as one layer (it has a hook registered)" in reasons["block.1"]
    assert "never called by forward" in reasons["unused"]
    with torch.no_grad():
        folded(torch.randn(1, 3, 4, 4, generator=g))
    assert calls == [1]


def test_a_nested_sequential_is_traced_and_folded():
    model = with_statistics(nn.Sequential(nn.Sequential(conv(3, 4), nn.BatchNorm2d(4)), nn.ReLU(),
                                          nn.Sequential(nn.BatchNorm2d(4), conv(4, 2, padding=0))))
    folded, report = fold(model)
    assert [(p.bn_index, p.direction) for p in report.folded] == [("0.1", "after"), ("2.0", "before")]
    assert isinstance(folded, fx.GraphModule) and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_fold_under_inference_mode_gives_trainable_layers_that_keep_requires_grad():
    model = with_statistics(Blocks())
    model.stem.requires_grad_(False)
    with torch.inference_mode():
        folded, _ = fold(model)
    stem, reflect = folded.get_submodule("stem"), folded.get_submodule("reflect")
    assert not stem.weight.requires_grad and reflect.weight.requires_grad
    assert not stem.weight.is_inference() and isinstance(reflect.bias, nn.Parameter)


def test_global_rng_is_untouched_by_fold_and_bound():
    model, X, _ = NetCase(2, 2, 3, ("conv_bn", "bn_conv", "concat"), "linear_bn", 2).build()
    state = torch.random.get_rng_state()
    fold(model)
    error_bound(model, X)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.fixture
def bfloat16_cpu_convolutions():
    """float32 convolutions on the CPU allowed to run in bfloat16 for the test (torch.backends.mkldnn.conv)."""
    before = torch.backends.mkldnn.conv.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    yield
    torch.backends.mkldnn.conv.fp32_precision = before


def test_the_report_bounds_each_layer_in_the_precision_torch_runs_it(bfloat16_cpu_convolutions):
    """With float32 convolutions allowed in bfloat16 (u = 2⁻⁷ counted twice per rounding, as `unit_roundoff` says),
    a conv pair's ρ counts those roundings, ρ ≥ (n + 9)·2⁻⁷, while a Linear pair's stays at float32's, ρ ≤
    2(n + 9)·2⁻²⁴·(1 + 10⁻³)."""
    (conv_pair,) = fold(nn.Sequential(conv(2, 3, padding=0), nn.BatchNorm2d(3)).eval())[1].folded
    (linear_pair,) = fold(nn.Sequential(nn.Linear(18, 3, device="meta").to_empty(device="cpu"),
                                        nn.BatchNorm1d(3)).eval())[1].folded
    assert conv_pair.fan_in == linear_pair.fan_in == 18
    assert conv_pair.bound_factor >= (18 + 9) * 2.0**-7
    assert linear_pair.bound_factor <= 2 * (18 + 9) * 2.0**-24 * 1.001


def test_the_bound_reads_the_precision_of_each_layer(bfloat16_cpu_convolutions):
    """With float32 CPU convolutions allowed in bfloat16, error_bound of a Linear model is the IEEE one bit for bit,
    and that of a conv model ≥ 2¹⁷·(1 − 10⁻⁶) times the IEEE one.

    Each pair bound and each rule reads the precision setting of the op it models (matmul or conv): u = 2⁻⁷ (twice
    bfloat16's) against 2⁻²⁴. Every term grows at least as fast as u (γ(k) = ku/(1 − ku) faster) but the underflow
    terms and the float64 part of the pair factor, under 10⁻⁸ of the bound here.
    """
    linear = with_statistics(nn.Sequential(seeded(nn.Linear, 4, 3), nn.BatchNorm1d(3), nn.Tanh(),
                                           seeded(nn.Linear, 3, 2)))
    convolutional = with_statistics(nn.Sequential(conv(2, 3), nn.BatchNorm2d(3), nn.ReLU(), conv(3, 2)))
    X = torch.randn(2, 4, generator=g), torch.randn(2, 2, 5, 5, generator=g)
    bf16 = [error_bound(model, x) for model, x in zip((linear, convolutional), X)]
    torch.backends.mkldnn.conv.fp32_precision = "ieee"  # the fixture restores the setting
    ieee = [error_bound(model, x) for model, x in zip((linear, convolutional), X)]
    assert torch.equal(bf16[0], ieee[0])
    assert (bf16[1] >= 2**17 * (1 - 1e-6) * ieee[1]).all()


class Residual(nn.Module):
    """x + bn(conv(x)), its branch passed through `depth` (torchvision's StochasticDepth in EfficientNet) if given."""

    def __init__(self, depth: nn.Module | None = None):
        super().__init__()
        self.depth, self.conv, self.bn = depth, conv(2, 2), nn.BatchNorm2d(2)

    def forward(self, x):
        branch = self.bn(self.conv(x))
        return x + (branch if self.depth is None else self.depth(branch))


class DrawnDepth(nn.Module):
    """Stochastic depth written out: each row kept with probability 1 − p, and scaled to keep the mean."""

    def forward(self, x):
        keep = torch.empty_like(x[:, :1, :1, :1]).bernoulli_(0.5)
        return x * keep / 0.5


def test_stochastic_depth_passes_the_bound_in_eval_and_random_draws_are_refused():
    """stochastic_depth is x itself in eval or at p = 0: the bound goes through it unchanged, equal to the bound
    without it. In training with p > 0 it is random, and a random draw traced through (each model draws its own)
    breaks every bound: error_bound refuses both, naming why."""
    ops = pytest.importorskip("torchvision.ops")
    X = torch.randn(2, 2, 4, 4, generator=g)
    model, plain = with_statistics(Residual(ops.StochasticDepth(0.5, "row"))), Residual()
    plain.load_state_dict(model.state_dict())
    assert torch.equal(error_bound(model, X), error_bound(plain.eval(), X))
    model.depth.train()
    with pytest.raises(TypeError, match="stochastic_depth in eval mode"):
        error_bound(model, X)
    model.depth.p = 0.0
    assert torch.equal(error_bound(model, X), error_bound(plain, X))
    drawn = Residual(DrawnDepth())
    drawn.load_state_dict(model.state_dict())
    with pytest.raises(TypeError, match="bernoulli_.*draws random numbers"):
        error_bound(drawn.eval(), X)
