"""What fold folds and what it keeps, by example: the report's table (names, directions, ρ), the reason each kept
BatchNorm gives (its producer, its consumer, its users, a run, a shared, hooked or unknown layer, a zero-padded
or transposed conv, a flatten), and the models fold refuses (untraceable ones, a flatten into a Linear of the
wrong width, a CharMLP with a BatchNorm nested in a layer)."""

import pytest
import torch
from torch import fx, nn

from core.engine.algebra import BEFORE, fold_pair
from core.engine.bound.pair import pair_bound
from core.engine.bound.propagation import error_bound
from core.engine.fold import FoldedPair, KeptBN, fold
from core.errors import FoldError
from core.makemore.layers import BatchNorm1d, Linear, Tanh
from core.makemore.model import CharMLP
from properties.strategies.nets import silent_hook
from tests.engine.models import Blocks, Residual, UnknownNorm, conv, g, linear, with_statistics


def issue_example():
    """Linear → BN → Tanh → BN → Tanh → Linear: the first BN folds, the second has no Linear beside it."""
    g = torch.Generator().manual_seed(1)
    layers = [Linear(4, 3, generator=g), BatchNorm1d(3), Tanh(), BatchNorm1d(3), Tanh(), Linear(3, 2, generator=g)]
    return nn.Sequential(*layers).eval()


@pytest.fixture
def ieee_float32_matmuls(precision_settings):
    """float32 matmuls in IEEE float32 for the test, whatever the process set: the report's ρ depends on it."""
    torch.set_float32_matmul_precision("highest")


def test_report_table(ieee_float32_matmuls):
    """The report as printed; ρ = γ(4 + 9) + (1 + γ₆₄(6))(1 + γ(4 + 2)) − 1 ≈ 19u = 1.132e-06 at fan-in 4 in float32."""
    folded, report = fold(issue_example())
    kept = ("BatchNorm1d '3' is kept: its producer is Tanh '2', not a Linear or convolution; it feeds Tanh '4'")
    assert report.kept == (KeptBN("3", kept),)
    assert report.folded[:1] == (FoldedPair("1", "0", "after", 4, report.folded[0].bound_factor, "Linear"),)
    assert str(report) == (
        "BatchNorm folding: 1 folded, 1 kept\n"
        "  BatchNorm  into layer  direction             fan_in  bound |Δy_j| <= ρ·M_j\n"
        "  1          0           Linear -> BN               4  ρ = 1.132e-06\n"
        f"  kept: {kept}")
    assert [type(layer) for layer in folded] == [Linear, Tanh, BatchNorm1d, Tanh, Linear]


def test_batchnorms_before_a_linear_fold_into_it():
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Tanh(), nn.BatchNorm1d(5), nn.BatchNorm1d(5), nn.Linear(5, 2, bias=False)).eval()
    with torch.no_grad():
        for bn in model[1:3]:
            bn.running_mean.copy_(torch.randn(5, generator=g))
            bn.weight.copy_(torch.randn(5, generator=g))
    folded, report = fold(model)
    assert [(p.bn, p.layer, p.direction) for p in report.folded] == [("2", "3", "before"), ("1", "3", "before")]
    assert [type(layer) for layer in folded] == [nn.Tanh, nn.Linear] and folded[1].bias is not None
    rho = [f"ρ = {p.bound_factor:.3e}" for p in report.folded]
    assert str(report).splitlines()[2:] == [f"  2          3           BN -> Linear               5  {rho[0]}",
                                            f"  1          3           BN -> Linear               5  {rho[1]}"]
    x = torch.randn(7, 5, generator=g)
    with torch.no_grad():
        assert ((model(x) - folded(x)).abs() <= error_bound(model, x)).all()


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
    with torch.no_grad():  # a shift t = 5 on every channel and W ≥ 0: the border misses 5·Σ|W| over its padded taps
        bn.running_mean.zero_()
        bn.bias.fill_(5.0)
        padded.weight.abs_()
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
