"""Folding traced models by example: refusals, what is kept and why, the report of a graph model, hooks, shared and
nested modules, inference mode, and why a BatchNorm before a zero-padded conv is kept."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from core.engine.algebra import BEFORE, fold_pair
from core.engine.bound.pair import pair_bound
from core.engine.bound.propagation import error_bound
from core.engine.bound.rounding import unit_roundoff
from core.engine.fold import fold
from core.errors import BoundError, FoldError
from core.makemore.model import CharMLP
from properties.strategies import NetCase, silent_hook

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
    with torch.random.fork_rng(devices=[]):  # nn.Conv2d draws its init from the global RNG
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        return nn.Conv2d(c_in, c_out, k, padding=padding, **kw)


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
    assert [(p.bn, p.layer, p.direction, p.layer_type) for p in report.folded] == [
        ("stem_bn", "stem", "after", "Conv2d"), ("pre_bn2", "reflect", "before", "Conv2d")]
    reasons = {k.bn: k.reason for k in report.kept}
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
    reasons = {k.bn: k.reason for k in report.kept}
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
    assert [(p.bn, p.direction) for p in report.folded] == [("0.1", "after"), ("2.0", "before")]
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
def bfloat16_cpu_convolutions(precision_settings):
    """float32 convolutions on the CPU allowed to run in bfloat16 for the test (torch.backends.mkldnn.conv)."""
    precision_settings.mkldnn.conv.fp32_precision = "bf16"


def test_the_report_bounds_each_layer_in_the_precision_torch_runs_it(bfloat16_cpu_convolutions):
    """With float32 convolutions allowed in bfloat16 (u = 2⁻⁷ counted twice per rounding, as `unit_roundoff` says),
    a conv pair's ρ counts those roundings, ρ ≥ (n + 9)·2⁻⁷, while a Linear pair's stays at float32's, ρ ≤
    2(n + 9)·2⁻²⁴·(1 + 10⁻³)."""
    (conv_pair,) = fold(nn.Sequential(conv(2, 3, padding=0), nn.BatchNorm2d(3)).eval())[1].folded
    linear_layer = linear(18, 3, torch.Generator().manual_seed(21))  # to_empty alone leaves any bits, nan included
    (linear_pair,) = fold(nn.Sequential(linear_layer, nn.BatchNorm1d(3)).eval())[1].folded
    assert conv_pair.fan_in == linear_pair.fan_in == 18
    assert conv_pair.bound_factor >= (18 + 9) * 2.0**-7
    assert linear_pair.bound_factor <= 2 * (18 + 9) * 2.0**-24 * 1.001


IEEE, TF32, BF16 = 2.0**-24, 2.0**-10, 2.0**-7
def unit_roundoffs() -> list[float]:
    """u of a float32 CPU matmul, CPU conv, CUDA matmul and CUDA conv under the settings of the moment."""
    return [unit_roundoff(torch.float32, device, conv) for device in ("cpu", "cuda") for conv in (False, True)]


def test_unit_roundoff_follows_every_precision_setting_of_torch(precision_settings):
    """u of a float32 (CPU matmul, CPU conv, CUDA matmul, CUDA conv) under each of torch's settings, legacy flags
    and per-backend fp32_precision alike (no GPU needed: only the settings are read).

    cuDNN convolutions run in TF32 by default; "high" and "medium" widen every matmul (torch reports "high" once
    cuBLAS's allow_tf32 is set, so the CPU's matmuls are counted in TF32 too); each per-backend setting widens its
    own op. Once a per-backend setting is used torch refuses to read the legacy flags (a RuntimeError): u then
    follows the per-backend settings alone.
    """
    B = precision_settings
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, TF32]
    B.cudnn.allow_tf32 = False
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, IEEE]
    B.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    assert unit_roundoffs() == [TF32, IEEE, TF32, TF32]
    torch.set_float32_matmul_precision("medium")
    assert unit_roundoffs() == [BF16, IEEE, BF16, TF32]
    torch.set_float32_matmul_precision("highest")
    B.cuda.matmul.allow_tf32 = True
    assert unit_roundoffs() == [TF32, IEEE, TF32, TF32]
    B.cuda.matmul.allow_tf32 = False
    B.mkldnn.matmul.fp32_precision = "bf16"
    assert unit_roundoffs() == [BF16, IEEE, IEEE, TF32]
    B.mkldnn.matmul.fp32_precision = "ieee"
    B.mkldnn.conv.fp32_precision = "tf32"
    assert unit_roundoffs() == [IEEE, TF32, IEEE, TF32]
    B.mkldnn.conv.fp32_precision = "ieee"
    B.cuda.matmul.fp32_precision = "tf32"
    assert unit_roundoffs() == [IEEE, IEEE, TF32, TF32]
    B.cuda.matmul.fp32_precision = "ieee"
    B.cudnn.conv.fp32_precision = "ieee"
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, IEEE]
    B.cudnn.conv.fp32_precision = "tf32"  # now only cuDNN's own setting says TF32 (allow_tf32 cannot be read)
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, TF32]


class DenseResidual(nn.Module):
    """Linear → BN → Tanh, then a Linear whose output is added to its input: a graph of matmuls and an add."""

    def __init__(self):
        super().__init__()
        self.lin1, self.bn, self.lin2 = linear(4, 3, g), nn.BatchNorm1d(3), linear(3, 3, g)

    def forward(self, x):
        y = torch.tanh(self.bn(self.lin1(x)))
        return self.lin2(y) + y


def test_the_bound_reads_the_precision_of_each_layer(bfloat16_cpu_convolutions):
    """With float32 CPU convolutions allowed in bfloat16, error_bound of a Linear model (with an add, whose rule
    reads the matmul setting too) is the IEEE one bit for bit, and that of a conv model ≥ 2¹⁷·(1 − 10⁻⁶) times the
    IEEE one.

    Each pair bound and each rule reads the precision setting of the op it models (matmul or conv): u = 2⁻⁷ (twice
    bfloat16's) against 2⁻²⁴. Every term grows at least as fast as u (γ(k) = ku/(1 − ku) faster) but the underflow
    terms and the float64 part of the pair factor, under 10⁻⁸ of the bound here.
    """
    dense = with_statistics(DenseResidual())
    convolutional = with_statistics(nn.Sequential(conv(2, 3), nn.BatchNorm2d(3), nn.ReLU(), conv(3, 2)))
    X = torch.randn(2, 4, generator=g), torch.randn(2, 2, 5, 5, generator=g)
    bf16 = [error_bound(model, x) for model, x in zip((dense, convolutional), X)]
    torch.backends.mkldnn.conv.fp32_precision = "ieee"  # the fixture restores the setting
    ieee = [error_bound(model, x) for model, x in zip((dense, convolutional), X)]
    assert torch.equal(bf16[0], ieee[0])
    assert (bf16[1] >= 2**17 * (1 - 1e-6) * ieee[1]).all()


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv(2, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y, y.sum((2, 3))


def test_a_model_with_nothing_to_fold_has_a_bound_of_float64_zeros_shaped_like_its_outputs():
    """fold changes nothing in a model without BatchNorms, so folded(X) = model(X) bit for bit and error_bound is
    exactly 0: float64 zeros (the dtype of every bound) shaped like each output, a tuple of outputs included."""
    X = torch.randn(3, 2, 4, 4, generator=g)
    bound = error_bound(TwoOutputs().eval(), X)
    assert isinstance(bound, tuple) and [(b.shape, b.dtype) for b in bound] == [
        ((3, 2, 4, 4), torch.float64), ((3, 2), torch.float64)]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in bound)


class TwoBlocks(nn.Module):
    """conv → BN → ReLU → conv → BN, returning its output and, if `sized`, the output's channel count too."""

    def __init__(self, sized: bool):
        super().__init__()
        self.sized = sized
        self.net = nn.Sequential(conv(2, 3), nn.BatchNorm2d(3), nn.ReLU(), conv(3, 2), nn.BatchNorm2d(2))

    def forward(self, x):
        y = self.net(x)
        return (y, y.shape[1], None) if self.sized else y


def test_an_output_that_is_no_tensor_has_a_bound_of_zero():
    """A model returning (y, y.shape[1], None) has the bound (B_y, 0, 0): a size or a constant is the same in both
    models, and y's bound, summed over two folds, is the one of the model returning y alone."""
    model, plain = with_statistics(TwoBlocks(sized=True)), TwoBlocks(sized=False)
    plain.load_state_dict(model.state_dict())
    X = torch.randn(2, 2, 4, 4, generator=g)
    bound = error_bound(model, X)
    assert isinstance(bound, tuple) and bound[1:] == (0, 0)
    assert torch.equal(bound[0], error_bound(plain.eval(), X))


class PairThen(nn.Module):
    """conv → BN, then head(x, y) of the input x and the pair's output y: what the bound meets downstream of a fold."""

    def __init__(self, head):
        super().__init__()
        self.conv, self.bn, self.head = conv(2, 2), nn.BatchNorm2d(2), head

    def forward(self, x):
        return self.head(x, self.bn(self.conv(x)))


def test_a_fold_the_output_does_not_read_has_a_bound_of_zero():
    """A folded pair whose value forward drops changes nothing the model returns: the bound is 0 shaped like each
    output, plus the floor 2⁻¹⁰²² that covers the bound's own underflow once a fold is bounded."""
    X = torch.randn(2, 2, 3, 3, generator=g)
    model = with_statistics(PairThen(lambda x, y: (torch.relu(x), x.sum())))  # y dropped
    assert [p.bn for p in fold(model)[1].folded] == ["bn"]
    bound = error_bound(model, X)
    assert isinstance(bound, tuple) and len(bound) == 2
    assert all(torch.equal(b, torch.full(shape, 2.0**-1022, dtype=torch.float64))
               for b, shape in zip(bound, ((2, 2, 3, 3), ())))


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
    with pytest.raises(BoundError) as info:
        error_bound(model, X)
    assert str(info.value) == ("error_bound needs stochastic_depth in eval mode (in training it is random): call "
                               "model.eval()")
    model.depth.p = 0.0
    assert torch.equal(error_bound(model, X), error_bound(plain, X))
    drawn = Residual(DrawnDepth())
    drawn.load_state_dict(model.state_dict())
    with pytest.raises(BoundError, match="bernoulli_.*draws random numbers"):
        error_bound(drawn.eval(), X)


def test_an_add_with_alpha_downstream_of_a_fold_is_refused():
    """torch.add(a, b, alpha=0.5) scales b by a rounded product the add rule does not count: error_bound says so."""
    model = with_statistics(PairThen(lambda x, y: torch.add(x, y, alpha=0.5)))
    with pytest.raises(BoundError) as info:
        error_bound(model, torch.randn(1, 2, 3, 3, generator=g))
    assert str(info.value) == "error_bound models add/sub without alpha"


def test_a_bound_meeting_infinity_times_zero_is_infinite_not_nan():
    """In float64, pair → (copy, then w − w with |w| = 10²⁰⁰) twice → Linear(0): the values stay 0 after each
    difference while the bound grows by 2·10²⁰⁰ and overflows to +∞; the zero weight then makes ∞·0 = nan, which
    the bound turns into +∞ (a bound, if a useless one), never nan, 0 or the largest float."""
    weights = [[[1.0], [1.0]], [[1e200, -1e200]], [[1.0], [1.0]], [[1e200, -1e200]], [[0.0]]]
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1), nn.Linear(1, 2), nn.Linear(2, 1), nn.Linear(1, 2),
                          nn.Linear(2, 1), nn.Linear(1, 1)).double().eval()
    with torch.no_grad():
        for layer, w in zip(model[2:], weights):
            layer.weight.copy_(torch.tensor(w, dtype=torch.float64))
            layer.bias.zero_()
        assert torch.equal(model(torch.ones(2, 1, dtype=torch.float64)), torch.zeros(2, 1, dtype=torch.float64))
    bound = error_bound(model, torch.ones(2, 1, dtype=torch.float64))
    assert torch.equal(bound, torch.full((2, 1), math.inf, dtype=torch.float64))


def test_a_batchnorm_in_training_downstream_of_a_fold_is_refused_by_the_bound():
    """conv → BN → ReLU → BN in training: the second BN is kept (nothing to fold it into) and normalises with batch
    statistics, so no bound carries through it: error_bound refuses, naming it and saying to call eval()."""
    model = with_statistics(nn.Sequential(conv(2, 2), nn.BatchNorm2d(2), nn.ReLU(), nn.BatchNorm2d(2)))
    model[3].train()
    with pytest.raises(FoldError) as info:
        error_bound(model, torch.randn(2, 2, 3, 3, generator=g))
    assert str(info.value) == ("BatchNorm2d '3' is in training mode, so it normalises with batch statistics, "
                               "not a fixed affine map: call model.eval() before folding")


def test_a_layer_without_an_error_model_downstream_of_a_fold_is_refused_naming_it():
    """conv → BN → ELU: fold folds the pair, but the bound has no rule for ELU: error_bound says where one goes."""
    model = with_statistics(nn.Sequential(conv(2, 2), nn.BatchNorm2d(2), nn.ELU()))
    with pytest.raises(BoundError) as info:
        error_bound(model, torch.randn(2, 2, 3, 3, generator=g))
    assert str(info.value) == ("error_bound has no error model for ELU '2': register its kind, with its rule "
                               "(core.engine.kinds.register; docs/design.md, \"Adding a layer kind\")")


class TwoInputLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.bilinear = conv(2, 2), nn.BatchNorm2d(2), nn.Bilinear(3, 3, 1)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.bilinear(y, y)


def test_a_module_of_two_inputs_downstream_of_a_fold_is_refused_naming_it():
    """conv → BN → Bilinear(y, y): the bound has rules for layers of one input only, and says which layer has two."""
    model = with_statistics(TwoInputLayer())
    with pytest.raises(BoundError) as info:
        error_bound(model, torch.randn(1, 2, 3, 3, generator=g))
    assert str(info.value) == "error_bound has no error model for Bilinear 'bilinear' called with more than one input"


def test_a_function_without_a_rule_downstream_of_a_fold_is_refused_naming_it():
    """conv → BN → torch.exp: exp has no rule (it is no move: its change is not exp of the change), so error_bound
    names the node and says where a rule goes."""
    with pytest.raises(BoundError) as info:
        error_bound(with_statistics(PairThen(lambda x, y: torch.exp(y))), torch.randn(1, 2, 3, 3, generator=g))
    assert str(info.value) == ("error_bound has no error model for exp (node 'exp'): give it a rule in "
                               "core.engine.bound.graph_rules, or the function to the kind whose layer computes it "
                               "(docs/design-conv.md says how)")


def test_a_hooked_layer_downstream_of_a_fold_is_refused_naming_it():
    """conv → BN → ReLU with a forward hook: the hook may change the ReLU's output, so no rule bounds it."""
    model = with_statistics(nn.Sequential(conv(2, 2), nn.BatchNorm2d(2), nn.ReLU()))
    model[2].register_forward_hook(lambda module, inputs, output: output)
    with pytest.raises(BoundError) as info:
        error_bound(model, torch.randn(1, 2, 3, 3, generator=g))
    assert str(info.value) == ("error_bound has no error model for ReLU '2': it has a hook registered, which "
                               "may change its output; remove the hook to bound the model")


def test_dropout_in_training_is_refused_saying_to_call_eval():
    """A Dropout in training downstream of a fold is refused: each model would draw its own mask."""
    model = with_statistics(nn.Sequential(conv(2, 2), nn.BatchNorm2d(2), nn.Dropout(0.5)))
    model[2].train()
    with torch.random.fork_rng(devices=[]), pytest.raises(BoundError) as info:  # the mask drawn in training
        error_bound(model, torch.randn(2, 2, 4, 4, generator=g))
    assert str(info.value) == "error_bound needs Dropout in eval mode (in training it is random): call model.eval()"


def linear(fan_in: int, fan_out: int, gen: torch.Generator) -> nn.Linear:
    """An nn.Linear whose weight and bias are drawn from gen (nn.Linear's own init draws from the global RNG)."""
    layer = nn.Linear(fan_in, fan_out, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5)
        layer.bias.copy_(torch.randn(fan_out, generator=gen))
    return layer


class BnFlattenLinear(nn.Module):
    """bn → op (a module, or a function of x: a flatten) → Linear on (2, 2, 2, 4) inputs."""

    def __init__(self, flatten, fan_in: int, gen: torch.Generator):
        super().__init__()
        self.bn, self.flatten, self.linear = nn.BatchNorm2d(2), flatten, linear(fan_in, 3, gen)

    def forward(self, x):
        return self.linear(self.flatten(self.bn(x)))


FLATTENS_FROM_1 = {  # every way to write "all dims from 1 on" that torch.fx records
    "nn.Flatten()": nn.Flatten,
    "torch.flatten(x, 1)": lambda: lambda x: torch.flatten(x, 1),
    "torch.flatten(x, 1, -1)": lambda: lambda x: torch.flatten(x, 1, -1),
    "torch.flatten(x, start_dim=1)": lambda: lambda x: torch.flatten(x, start_dim=1),
    "torch.flatten(x, 1, end_dim=-1)": lambda: lambda x: torch.flatten(x, 1, end_dim=-1),
    "torch.flatten(x, start_dim=1, end_dim=-1)": lambda: lambda x: torch.flatten(x, start_dim=1, end_dim=-1),
    "x.flatten(1)": lambda: lambda x: x.flatten(1),
    "x.flatten(1, -1)": lambda: lambda x: x.flatten(1, -1),
    "x.flatten(start_dim=1)": lambda: lambda x: x.flatten(start_dim=1),
}

NOT_FLATTENS_FROM_1_INTO_A_LINEAR = {  # (what the bn feeds, the Linear's fan_in, how the reason names that op)
    "torch.flatten(x)": (lambda: lambda x: torch.flatten(x), 32, "flatten"),  # no start_dim: dim 0 too, rows mix
    "x.flatten()": (lambda: lambda x: x.flatten(), 32, ".flatten()"),
    "torch.flatten(x, 2)": (lambda: lambda x: torch.flatten(x, 2), 8, "flatten"),
    "x.flatten(2)": (lambda: lambda x: x.flatten(2), 8, ".flatten()"),
    "torch.flatten(x, 1, 2)": (lambda: lambda x: torch.flatten(x, 1, 2), 4, "flatten"),
    "torch.flatten(x, 1, end_dim=2)": (lambda: lambda x: torch.flatten(x, 1, end_dim=2), 4, "flatten"),
    "torch.flatten(x, start_dim=1, end_dim=2)": (lambda: lambda x: torch.flatten(x, start_dim=1, end_dim=2), 4,
                                                 "flatten"),
    "x.flatten(1, 2)": (lambda: lambda x: x.flatten(1, 2), 4, ".flatten()"),
    "x.flatten(start_dim=1, end_dim=2)": (lambda: lambda x: x.flatten(start_dim=1, end_dim=2), 4, ".flatten()"),
    "nn.Flatten(1, 2)": (lambda: nn.Flatten(1, 2), 4, "Flatten 'flatten'"),
    "torch.relu(x)": (lambda: lambda x: torch.relu(x), 4, "relu"),  # the Linear reads the last dim, W = 4
    "torch.flatten(x, 1).relu()": (lambda: lambda x: torch.flatten(x, 1).relu(), 16, "flatten"),
}


@pytest.mark.parametrize("how", FLATTENS_FROM_1)
def test_a_bn_before_a_flatten_from_dim_1_folds_into_the_linear_after_it(how):
    """bn → flatten(x, 1) → Linear folds into the Linear, however the Flatten is written (module, function, method,
    positional or keyword dims): |m(X) − fold(m)(X)| ≤ error_bound(m, X).

    Flattening dims 1.. of (N, C, H, W) puts channel c at features c·HW .. (c + 1)·HW − 1 of each row, so the
    BatchNorm is a per-feature affine map of the Linear's input, each channel's spread over HW = 8 features.
    """
    gen = torch.Generator().manual_seed(10)
    model = with_statistics(BnFlattenLinear(FLATTENS_FROM_1[how](), 16, gen))
    folded, report = fold(model)
    assert [(p.bn, p.layer, p.direction) for p in report.folded] == [("bn", "linear", "before")]
    assert report.kept == () and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    X = torch.randn(2, 2, 2, 4, generator=gen)
    with torch.no_grad():
        assert ((model(X) - folded(X)).abs() <= error_bound(model, X)).all()


@pytest.mark.parametrize("how", NOT_FLATTENS_FROM_1_INTO_A_LINEAR)
def test_a_bn_before_anything_but_a_flatten_from_dim_1_into_a_linear_is_kept(how):
    """bn → op → Linear keeps the bn unless op flattens exactly dims 1 to the last and feeds the Linear itself (here
    op starts at 0 or 2, ends before the last dim, is a relu, or is followed by one); fold(m)(X) = m(X) exactly.

    Otherwise a channel's values do not fill one block of each row's features as the Linear reads them (the batch
    mixes in, the Linear reads a dim other than the flattened channels, or a nonlinear op lies between), so no
    per-feature scaling of the Linear's input is the BatchNorm. Every fan_in here is a multiple of the 2 channels:
    a fold would not fail, it would be wrong. The reason names the op the bn feeds.
    """
    gen = torch.Generator().manual_seed(11)
    op, fan_in, described = NOT_FLATTENS_FROM_1_INTO_A_LINEAR[how]
    model = with_statistics(BnFlattenLinear(op(), fan_in, gen))
    folded, report = fold(model)
    assert report.folded == () and [(k.bn, k.reason) for k in report.kept] == [
        ("bn", f"BatchNorm2d 'bn' is kept: its producer is the model's input 'x', not a Linear or convolution; it "
               f"feeds {described}")]
    X = torch.randn(2, 2, 2, 4, generator=gen)
    with torch.no_grad():
        assert torch.equal(folded(X), model(X))


class Calibrated(nn.Module):
    """conv → bn (folds), scaled per channel by a Parameter and shifted by a buffer of a submodule, both read by
    forward directly (torch.fx get_attr nodes), the scale twice."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.conv, self.bn = conv(2, 3), nn.BatchNorm2d(3)
        self.scale = nn.Parameter(torch.randn(3, 1, 1, generator=gen))
        self.inner = nn.Module()
        self.inner.register_buffer("shift", torch.randn(3, 1, 1, generator=gen))

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale + self.inner.shift * self.scale


def test_a_model_reading_its_tensors_directly_folds_and_the_folded_model_holds_copies():
    """A model whose forward reads a Parameter or a (nested) buffer itself folds within the bound, and fold(m) holds
    its own copy of each: torch.equal to m's, sharing no storage, a Parameter still a Parameter.

    torch.fx records those reads as get_attr nodes; fold deep-copies each tensor they name (once, however often
    forward reads it) into the folded GraphModule, and error_bound reads them from the model as forward does.
    """
    gen = torch.Generator().manual_seed(12)
    model = with_statistics(Calibrated(gen))
    folded, report = fold(model)
    assert [(p.bn, p.layer) for p in report.folded] == [("bn", "conv")]
    for name in ("scale", "inner.shift"):
        ours, theirs = folded.get_submodule(name.rpartition(".")[0]), model.get_submodule(name.rpartition(".")[0])
        copy, source = getattr(ours, name.rpartition(".")[2]), getattr(theirs, name.rpartition(".")[2])
        assert torch.equal(copy, source) and type(copy) is type(source)
        assert copy.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()
    X = torch.randn(2, 2, 4, 4, generator=gen)
    with torch.no_grad():
        assert ((model(X) - folded(X)).abs() <= error_bound(model, X)).all()


def test_the_folded_graph_module_is_named_after_the_model():
    """type(fold(m)).__name__ is type(m).__name__: the folded model prints, and shows in tracebacks, as the model it
    computes."""
    folded, _ = fold(with_statistics(Calibrated(torch.Generator().manual_seed(13))))
    assert isinstance(folded, fx.GraphModule) and type(folded).__name__ == "Calibrated"


class AfterAdd(nn.Module):
    """bn1 → bn2 (a run) between an add and a mul: neither end has an affine layer."""

    def __init__(self):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn2(self.bn1(x + 1)) * 2


def test_a_kept_run_of_batchnorms_says_so():
    """Each BN of a run of two kept together names the run ("in a run of 2 BatchNorms") and the run's two ends.

    A run folds as a whole or not at all: its first BN's producer and its last BN's consumer decide for all, so
    a BN's reason names ends that are not its own neighbours, and says why.
    """
    _, report = fold(with_statistics(AfterAdd()))
    assert report.folded == ()
    assert [(k.bn, k.reason) for k in report.kept] == [
        (name, f"BatchNorm1d '{name}' (in a run of 2 BatchNorms) is kept: its producer is add, not a Linear or "
               f"convolution; it feeds mul") for name in ("bn1", "bn2")]


def test_a_sequential_with_named_layers_folds_like_its_layers_in_order():
    """fold(Sequential(OrderedDict(name → layer))) folds the pairs fold(Sequential(*layers)) folds, named by the
    layers' names, and gives an nn.Sequential of the folded layers under those names, computing the same values,
    torch.equal.

    A Sequential of layers traces to a chain of its children in order, whatever they are called.
    """
    gen = torch.Generator().manual_seed(14)
    layers = OrderedDict(embed=linear(4, 3, gen), norm=nn.BatchNorm1d(3), act=nn.Tanh(), pre=nn.BatchNorm1d(3),
                         head=linear(3, 2, gen))
    named = with_statistics(nn.Sequential(layers))
    folded, report = fold(named)
    plain, plain_report = fold(nn.Sequential(*layers.values()).eval())
    assert [(p.bn, p.layer) for p in report.folded] == [("norm", "embed"), ("pre", "head")]
    assert [(p.bn, p.layer) for p in plain_report.folded] == [("1", "0"), ("3", "4")]
    assert isinstance(folded, nn.Sequential) and [(name, type(m)) for name, m in folded.named_children()] == [
        ("embed", nn.Linear), ("act", nn.Tanh), ("head", nn.Linear)]
    X = torch.randn(5, 4, generator=gen)
    with torch.no_grad():
        assert torch.equal(folded(X), plain(X))


def test_a_bn_with_no_linear_beside_it_names_its_neighbours_and_why_they_take_no_fold():
    """A BN between two layers that are not affine is kept for that, its neighbours named; only an affine neighbour
    that cannot take a fold says why (a hooked Linear).

    Neither a hooked Tanh nor a Softplus (which fold has no kind for) could take a fold whatever they were: what
    keeps the BN is that they are not Linears. A hooked Linear would take one but for its hook.
    """
    gen = torch.Generator().manual_seed(15)
    hooked_tanh, hooked_linear = nn.Tanh(), linear(3, 3, gen)
    hooked_tanh.register_forward_hook(silent_hook)
    hooked_linear.register_forward_hook(silent_hook)
    _, report = fold(with_statistics(nn.Sequential(hooked_tanh, nn.BatchNorm1d(3), nn.Softplus())))
    assert [k.reason for k in report.kept] == [
        "BatchNorm1d '1' is kept: its producer is Tanh '0', not a Linear or convolution; it feeds Softplus '2'"]
    _, report = fold(with_statistics(nn.Sequential(hooked_linear, nn.BatchNorm1d(3), nn.Tanh())))
    assert [k.reason for k in report.kept] == [
        "BatchNorm1d '1' is kept: its producer Linear '0' has a hook registered, so calling it may differ from its "
        "plain map; it feeds Tanh '2'"]


class TwoUsers(nn.Module):
    """bn read twice, by a relu and by a conv: bn → relu + conv."""

    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(2), conv(2, 2)

    def forward(self, x):
        b = self.bn(x)
        return torch.relu(b) + self.conv(b)


class Upsample(nn.Module):
    """bn → a transposed conv called with its output size (as U-Net decoders call it)."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)
        self.up = nn.ConvTranspose2d(2, 2, 2, stride=2, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            self.up.weight.copy_(torch.randn(self.up.weight.shape, generator=gen))
            self.up.bias.copy_(torch.randn(2, generator=gen))

    def forward(self, x):
        return self.up(self.bn(x), [5, 9])


def test_a_kept_bn_names_what_stands_in_its_way_after_it():
    """The reason of a BN kept for what follows it names that: each of its users when it has several, the border
    of a transposed conv it precedes (even one called with an output size as well as the BN's values).

    A BN folds before a layer only into the one layer that alone reads it; a transposed conv never takes one,
    whatever else it is given: its border outputs sum fewer terms, so no bias holds the BN's shift.
    """
    gen = torch.Generator().manual_seed(16)
    inputs = "BatchNorm2d 'bn' is kept: its producer is the model's input 'x', not a Linear or convolution; "
    _, report = fold(with_statistics(TwoUsers()))
    assert [(k.bn, k.reason) for k in report.kept] == [("bn", inputs + "it has 2 users (relu, Conv2d 'conv')")]
    model = with_statistics(Upsample(gen))
    folded, report = fold(model)
    assert [(k.bn, k.reason) for k in report.kept] == [
        ("bn", inputs + "it is before ConvTranspose2d 'up': a transposed convolution sums fewer terms at its border, "
                        "so no bias can hold t·W")]
    X = torch.randn(2, 2, 2, 4, generator=gen)
    with torch.no_grad():
        assert folded(X).shape == (2, 2, 5, 9) and torch.equal(folded(X), model(X))


def test_a_flatten_into_a_linear_of_the_wrong_width_is_refused():
    """bn (C channels) → Flatten → Linear with fan_in no multiple of C raises FoldError naming both layers and both
    numbers: C·H·W features never make such a fan_in, so the model cannot run as written."""
    model = with_statistics(BnFlattenLinear(nn.Flatten(), 15, torch.Generator().manual_seed(17)))
    with pytest.raises(FoldError) as info:
        fold(model)
    assert str(info.value) == ("BatchNorm2d 'bn' has 2 features but Linear 'linear', after a Flatten, has fan_in 15, "
                               "no multiple of it: check the architecture")


class Branchy(nn.Module):
    """No submodules; control flow on values, which torch.fx cannot trace."""

    def forward(self, x):
        return x.relu() if x.sum() > 0 else x


class Abstract(nn.Module):
    """A base class leaving forward to its subclasses."""

    def forward(self, x):
        raise NotImplementedError


def test_an_untraceable_model_is_refused_with_torch_fxs_reason():
    """FoldError names the model, torch.fx's error type and the first line of its message ("no message" for an empty
    one), and the way out, even for a model with no submodules to fold instead."""
    with pytest.raises(FoldError) as info:
        fold(Branchy())
    assert str(info.value) == (
        "Branchy cannot be traced by torch.fx (TraceError: symbolically traced variables cannot be used as inputs to "
        "control flow): fold its traceable submodules instead (its submodules) and put them back into the model")
    with pytest.raises(FoldError) as info:
        fold(Abstract())
    assert str(info.value) == ("Abstract cannot be traced by torch.fx (NotImplementedError: no message): fold its "
                               "traceable submodules instead (its submodules) and put them back into the model")


class UnknownNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm type written outside torch.nn (as libraries write their own), of no kind fold knows."""

    def _check_input_dim(self, input):
        pass


class ConvUnknownNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv(2, 2), UnknownNorm(2)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_a_batchnorm_of_a_type_fold_has_no_kind_for_stays_one_layer_and_is_kept():
    """A BatchNorm of an unknown type after a conv is kept, the reason naming its type; fold(m) holds it unchanged as
    one module and computes m exactly.

    torch.fx would trace into a module defined outside torch.nn; fold keeps every BatchNorm one call, so it sees
    the layer (not its F.batch_norm inside, reported as never called) and says why it cannot fold it.
    """
    model = with_statistics(ConvUnknownNorm())
    folded, report = fold(model)
    assert report.folded == () and [(k.bn, k.reason) for k in report.kept] == [
        ("bn", "UnknownNorm 'bn' is a UnknownNorm, a BatchNorm type fold has no kind for: kept as it is")]
    assert type(folded.get_submodule("bn")) is UnknownNorm
    X = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(18))
    with torch.no_grad():
        assert torch.equal(folded(X), model(X))


def test_a_batchnorm2d_before_a_linear_is_kept_for_the_dims_they_act_on():
    """In Sequential(Tanh, BatchNorm2d, Linear) the BN is kept, its reason saying the Linear keeps its features in
    another dim (not that no Linear is adjacent): a Linear maps the last dim, a BatchNorm2d normalises dim 1."""
    gen = torch.Generator().manual_seed(19)
    model = with_statistics(nn.Sequential(nn.Tanh(), nn.BatchNorm2d(2), linear(4, 3, gen)))
    folded, report = fold(model)
    assert report.folded == () and [k.reason for k in report.kept] == [
        "BatchNorm2d '1' is kept: its producer is Tanh '0', not a Linear or convolution; its consumer Linear '2' "
        "keeps its features in another dim than the BatchNorm2d normalises"]
    X = torch.randn(2, 2, 3, 4, generator=gen)
    with torch.no_grad():
        assert torch.equal(folded(X), model(X))


class SharedConsumer(nn.Module):
    """A BatchNorm between an add and a conv that forward also calls on its own input."""

    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.conv(self.bn(x + 1)) + self.conv(x)


def test_a_batchnorm_before_a_shared_layer_is_kept_saying_why_its_consumer_cannot_take_it():
    """BN → conv, where forward calls the conv at two places: the BN is kept, its reason naming the consumer and why
    it cannot take a fold (folding it in would change the conv's other call)."""
    model = with_statistics(SharedConsumer())
    folded, report = fold(model)
    assert report.folded == () and [k.reason for k in report.kept] == [
        "BatchNorm2d 'bn' is kept: its producer is add, not a Linear or convolution; its consumer Conv2d 'conv' is "
        "called at 2 places in forward (one module, shared)"]
    X = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(20))
    with torch.no_grad():
        assert torch.equal(folded(X), model(X))


class SharedNorm(nn.Module):
    """first: kept for its neighbours (after an add, read twice); shared: one BatchNorm called at two places."""

    def __init__(self):
        super().__init__()
        self.first, self.shared = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

    def forward(self, x):
        a = self.first(x + 1)
        return self.shared(a + 1) + self.shared(a * 2)


def test_a_batchnorm_called_twice_is_kept_once_and_kept_ones_come_in_forward_order():
    """A BatchNorm forward calls at two places is kept, reported once; report.kept lists BNs in the order forward
    first calls them, whatever kept them.

    Folding a shared BN into one neighbour would change its other call; the report reads like the model.
    """
    _, report = fold(with_statistics(SharedNorm()))
    assert report.folded == () and [(k.bn, k.reason) for k in report.kept] == [
        ("first", "BatchNorm1d 'first' is kept: its producer is add, not a Linear or convolution; it has 2 users "
                  "(add, mul)"),
        ("shared", "BatchNorm1d 'shared' is called at 2 places in forward (one module, shared): kept as it is")]


class ConvThreeUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv(2, 2), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + torch.relu(y) * torch.sigmoid(y)


def test_a_kept_bn_names_what_stands_in_its_way_before_it():
    """The reason of a BN kept for what precedes it names that: every other user of its producer; a Linear before
    a BatchNorm2d keeping its features in another dim (not that no Linear is adjacent).

    A BN folds after a layer only into the one layer that alone feeds it, and whose output channels are the dim
    the BN normalises: a Linear maps the last dim, a BatchNorm2d normalises dim 1.
    """
    _, report = fold(with_statistics(ConvThreeUsers()))
    assert [k.reason for k in report.kept] == [
        "BatchNorm2d 'bn' is kept: its producer Conv2d 'conv' has other users (relu, sigmoid); it feeds add"]
    gen = torch.Generator().manual_seed(20)
    model = with_statistics(nn.Sequential(linear(4, 4, gen), nn.BatchNorm2d(2), nn.Tanh()))
    _, report = fold(model)
    assert [k.reason for k in report.kept] == [
        "BatchNorm2d '1' is kept: its producer Linear '0' keeps its features in another dim than the BatchNorm2d "
        "normalises; it feeds Tanh '2'"]


class NormedConv(nn.Conv2d):
    """A Conv2d subclass holding a BatchNorm it applies in its forward: torch.fx keeps it as one call."""

    def __init__(self):
        super().__init__(2, 2, 1, device="meta")
        self.to_empty(device="cpu")
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=g))
            self.bias.copy_(torch.randn(2, generator=g))
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(super().forward(x))


def test_a_batchnorm_inside_a_layer_fold_calls_as_one_is_kept_saying_why():
    """A BN inside a layer torch.fx keeps as one call (a Conv2d subclass) is kept, the reason naming that layer and
    saying torch.fx keeps it as one call (not a hook, as for a hooked block)."""
    _, report = fold(with_statistics(nn.Sequential(nn.Tanh(), NormedConv())))  # traced: a BN below a child
    assert [(k.bn, k.reason) for k in report.kept] == [
        ("1.bn", "BatchNorm2d '1.bn' is inside NormedConv '1', which fold calls as one layer (torch.fx keeps it as "
                 "one call): kept as it is")]


def test_a_batchnorm_forward_never_calls_is_reported_and_not_in_the_folded_model():
    """A BN the model holds but forward never calls is reported kept, named with its type, and fold(m), traced from
    forward, does not hold it."""
    model = with_statistics(Residual())
    model.spare = nn.BatchNorm1d(3)
    folded, report = fold(model)
    assert [(k.bn, k.reason) for k in report.kept] == [
        ("spare", "BatchNorm1d 'spare' is never called by forward: kept as it is (the folded model, traced from "
                  "forward, does not hold it)")]
    assert not hasattr(folded, "spare")


def test_a_lone_layer_folds_as_a_sequential_of_one():
    """fold(layer) for a single layer is nn.Sequential(copy of layer), nothing folded, the layer named "0"; a lone
    BatchNorm of any type is kept, no Linear beside it, and one of a type fold has no kind for is named for that."""
    gen = torch.Generator().manual_seed(25)
    layer = linear(3, 2, gen)
    folded, report = fold(layer)
    assert isinstance(folded, nn.Sequential) and len(folded) == 1 and report.folded == report.kept == ()
    assert torch.equal(folded[0].weight, layer.weight) and folded[0].weight.data_ptr() != layer.weight.data_ptr()
    _, report = fold(with_statistics(nn.BatchNorm1d(3)))
    assert [k.reason for k in report.kept] == [
        "BatchNorm1d '0' is kept: its producer is the model's input 'input', not a Linear or convolution; it feeds "
        "the model's output"]
    _, report = fold(with_statistics(UnknownNorm(3)))
    assert [k.reason for k in report.kept] == [
        "UnknownNorm '0' is a UnknownNorm, a BatchNorm type fold has no kind for: kept as it is"]


def test_a_charmlp_with_a_batchnorm_nested_in_a_layer_is_refused():
    """fold(CharMLP) refuses a layer holding BatchNorms inside it, naming the layer and its index: the folded layer
    stack must be a chain of layers to go back into a CharMLP."""
    gen = torch.Generator().manual_seed(26)
    model = CharMLP(torch.randn(27, 2, generator=gen), [linear(8, 3, gen), nn.Sequential(nn.BatchNorm1d(3)),
                                                        linear(3, 27, gen)]).eval()
    with pytest.raises(FoldError) as info:
        fold(model)
    assert str(info.value) == ("Sequential at index 1 of the CharMLP's layers holds BatchNorms inside it: flatten "
                               "the model into one Sequential before folding")


class ByKeyword(nn.Module):
    """conv → bn called as bn(input=...); bn2 → linear called as linear(input=...)."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.conv, self.bn = conv(2, 2), nn.BatchNorm2d(2)
        self.bn2, self.linear = nn.BatchNorm1d(3), linear(3, 2, gen)

    def forward(self, x, v):
        return self.bn(input=self.conv(x)), self.linear(input=self.bn2(v))


def test_a_batchnorm_or_layer_called_by_keyword_keeps_the_bn_saying_so():
    """bn(input=y) and layer(input=bn(y)) keep the BN, the reason saying the input is not passed as the one positional
    argument; fold(m) computes m exactly, and error_bound(m, (X, V)), running m with those keyword calls, is 0.

    fold reads a BatchNorm's input, and the input a layer folds a BN into, at the first positional argument.
    """
    gen = torch.Generator().manual_seed(22)
    model = with_statistics(ByKeyword(gen))
    folded, report = fold(model)
    assert report.folded == () and [(k.bn, k.reason) for k in report.kept] == [
        ("bn", "BatchNorm2d 'bn' is not called with its input as its one positional argument, where fold reads it: "
               "kept as it is"),
        ("bn2", "BatchNorm1d 'bn2' is kept: its producer is the model's input 'v', not a Linear or convolution; "
                "Linear 'linear' does not take it as its first positional argument alone")]
    X, V = torch.randn(2, 2, 3, 3, generator=gen), torch.randn(4, 3, generator=gen)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(folded(X, V), model(X, V), strict=True))
    assert all(not bound.any() for bound in error_bound(model, (X, V)))


class Scaled(nn.Module):
    """conv → bn (folds), times a forward argument with a default."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv(2, 2), nn.BatchNorm2d(2)

    def forward(self, x, scale=-3.0):
        return self.bn(self.conv(x)) * scale


def test_error_bound_runs_forward_with_its_default_arguments():
    """error_bound(m, X) bounds |m(X) − fold(m)(X)| for a forward with an argument left at its default: the bound
    runs the model as m(X) does, the default included."""
    model = with_statistics(Scaled())
    folded, report = fold(model)
    assert [(p.bn, p.layer) for p in report.folded] == [("bn", "conv")]
    X = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(23))
    with torch.no_grad():
        err = (model(X) - folded(X)).abs()
    bound = error_bound(model, X)
    assert (err <= bound).all()


def shift(x, amount, inplace=False):
    """x + amount, written into x when inplace: a user function torch.fx records as one call, as written."""
    return x.add_(amount) if inplace else x + amount


fx.wrap("shift")

IN_PLACE = {  # each form of an in-place op torch.fx records
    "x.add_(1)": lambda: lambda x: x.add_(1),
    "torch.relu_(x)": lambda: lambda x: torch.relu_(x),
    "F.relu(x, inplace=True)": lambda: lambda x: F.relu(x, inplace=True),
    "F.hardtanh(x, -2, 2, True)": lambda: lambda x: F.hardtanh(x, -2.0, 2.0, True),
    "nn.ReLU(inplace=True)": lambda: nn.ReLU(inplace=True),
    "shift(x, 1.0, True), wrapped": lambda: lambda x: shift(x, 1.0, True),
}


class InPlaceFirst(nn.Module):
    """op (in place) on the input, then conv → bn (folds)."""

    def __init__(self, op):
        super().__init__()
        self.op, self.conv, self.bn = op, conv(2, 2), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(self.op(x)))


@pytest.mark.parametrize("how", IN_PLACE)
def test_error_bound_leaves_its_input_as_it_was_when_forward_writes_in_place(how):
    """error_bound(m, X) leaves X unchanged, torch.equal, even where forward writes into its input in place (as m(X)
    itself does), and still bounds |m(X) − fold(m)(X)|, each model run on its own copy of X.

    error_bound evaluates the model's graph on X once per fold; each in-place op gets a copy of its input there,
    so neither X nor a value another stage reuses is written.
    """
    model = with_statistics(InPlaceFirst(IN_PLACE[how]()))
    folded, _ = fold(model)
    X = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(24))
    before = X.clone()
    bound = error_bound(model, X)
    assert torch.equal(X, before)
    with torch.no_grad():
        assert ((model(X.clone()) - folded(X.clone())).abs() <= bound).all()


class NormedTable(nn.Module):
    """A BatchNorm over a table the model holds (learned positions) added to the input, and one on the output."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(4, 3, generator=gen))
        self.bn, self.out_bn = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.out_bn(x + self.bn(self.pos))


def test_a_kept_bn_names_a_tensor_of_the_model_and_the_models_output_as_its_neighbours():
    """A BN over a tensor the model holds names that tensor as its producer; a BN whose only user is the output says
    it feeds the model's output. Neither is a layer a BN could fold into."""
    gen = torch.Generator().manual_seed(27)
    model = with_statistics(NormedTable(gen))
    folded, report = fold(model)
    assert report.folded == () and [(k.bn, k.reason) for k in report.kept] == [
        ("bn", "BatchNorm1d 'bn' is kept: its producer is pos, not a Linear or convolution; it feeds add"),
        ("out_bn", "BatchNorm1d 'out_bn' is kept: its producer is add, not a Linear or convolution; it feeds the "
                   "model's output")]
    X = torch.randn(4, 3, generator=gen)
    with torch.no_grad():
        assert torch.equal(folded(X), model(X))
