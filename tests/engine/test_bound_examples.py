"""error_bound downstream of a fold, by example: 0 where an output is no tensor or does not read the fold, +∞
rather than nan, forward run with its default arguments, inputs left as they were by in-place ops; and what it
refuses, naming it: random draws, a BatchNorm or Dropout in training, layers and functions without an error
model, layers of two inputs, hooks, an add with alpha."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from core.engine.bound.propagation import error_bound
from core.engine.fold import fold
from core.errors import BoundError, FoldError
from tests.engine.models import Residual, conv, g, with_statistics


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


class ChunkedJoin(nn.Module):
    """conv → BN, its channels split in two and joined again: torch.cat of one node whose value is a tuple."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv(2, 2), nn.BatchNorm2d(2)

    def forward(self, x):
        return torch.cat(self.bn(self.conv(x)).chunk(2, dim=1), dim=1)


def test_a_join_of_a_split_carries_the_bound_of_each_part():
    """cat(y.chunk(2)) is y moved back into place: its bound is the fold's own, element for element."""
    model = with_statistics(ChunkedJoin())
    X = torch.randn(2, 2, 3, 3, generator=g)
    bound = error_bound(model, X)
    alone = error_bound(nn.Sequential(model.conv, model.bn).eval(), X)
    assert torch.equal(bound, alone)


class TupleInput(nn.Module):
    """conv → BN, then a layer called on a tuple holding the BN's output."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pass_on = conv(2, 2), nn.BatchNorm2d(2), nn.Identity()

    def forward(self, x):
        return self.pass_on((self.bn(self.conv(x)), x))[0]


def test_a_layer_called_on_a_tuple_downstream_of_a_fold_is_refused_naming_it():
    """The rules bound layers of one tensor input: a layer given a tuple that holds a folded value is refused."""
    with pytest.raises(BoundError) as info:
        error_bound(with_statistics(TupleInput()), torch.randn(1, 2, 3, 3, generator=g))
    assert str(info.value) == ("error_bound has no error model for Identity 'pass_on' called on a tuple: the rules "
                               "bound layers of one tensor input")
