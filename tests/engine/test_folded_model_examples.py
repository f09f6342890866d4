"""What fold(model) is, by example: a CharMLP's plain Linear/Tanh stack, a GraphModule named after the model, a
named Sequential, a Sequential of one for a lone layer; its own copies of the model's tensors, every module in
the model's mode, trainable layers (under inference mode too), the global RNG untouched, the device kept; and a
folded checkpoint that loads, evaluates and samples as the model does."""

import re
from collections import OrderedDict

import pytest
import torch
from torch import fx, nn

from core.app.cli import main
from core.engine.bound.propagation import error_bound
from core.engine.fold import fold
from core.engine.kinds import is_norm
from core.makemore.checkpoint import load, save
from core.makemore.data import random_rows
from core.makemore.experiments import trained_e02
from core.makemore.layers import Linear, Tanh
from core.makemore.model import e01_mlp
from core.makemore.train import train
from properties.strategies.nets import NetCase
from tests.engine.models import Blocks, UnknownNorm, conv, linear, with_statistics


def e02(steps=20, seed=0):
    """An E02 net trained a few steps on random contexts, so its running statistics are not the initial 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    X, Y = random_rows(256, g)
    return trained_e02(X, Y, steps, g), X


def test_e02_folds_to_a_plain_linear_tanh_stack():
    model, X = e02()
    folded, report = fold(model)
    assert [type(layer) for layer in folded.layers] == [Linear, Tanh, Linear, Tanh, Linear]
    assert all(layer.bias is not None for layer in folded.layers if isinstance(layer, Linear))
    assert torch.equal(folded.C, model.C) and folded.C.data_ptr() != model.C.data_ptr()
    assert (folded.context_length, folded.init_scheme) == (model.context_length, model.init_scheme)
    assert not folded.training
    assert [(p.bn, p.layer, p.direction, p.fan_in) for p in report.folded] == [
        ("1", "0", "after", 40), ("4", "3", "after", 100), ("7", "6", "after", 100)]
    assert report.kept == ()
    with torch.no_grad():
        assert ((model(X) - folded(X)).abs() <= error_bound(model, X, report.plan)).all()


@pytest.mark.parametrize("training", [True, False])
def test_fold_keeps_every_module_in_its_mode(training):
    """fold(model) gives every module in the model's mode, the CharMLP and its layer stack alike (an E01 net: no
    BatchNorm, so it folds in training mode too)."""
    model = e01_mlp(torch.Generator().manual_seed(1), init="kaiming", n_hidden=6).train(training)
    folded, _ = fold(model)
    assert all(m.training == training for m in folded.modules())


def test_folded_layers_train_without_touching_the_original():
    model, X = e02()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, _ = fold(model)
    params = list(folded.parameters())
    assert params and all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    train(folded, X, X[:, -1], 3, batch_size=16, generator=torch.Generator().manual_seed(0), progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_global_rng_is_untouched():
    model, X = e02(steps=2)
    torch_pair = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()  # nn.Linear's own init draws from it
    state = torch.random.get_rng_state()
    fold(model)
    error_bound(model, X)
    fold(torch_pair)
    assert torch.equal(state, torch.random.get_rng_state())


def test_global_rng_is_untouched_by_fold_and_bound():
    model, X, _ = NetCase(2, 2, 3, ("conv_bn", "bn_conv", "concat"), "linear_bn", 2).build()
    state = torch.random.get_rng_state()
    fold(model)
    error_bound(model, X)
    assert torch.equal(state, torch.random.get_rng_state())


def test_fold_under_inference_mode_gives_trainable_layers_that_keep_requires_grad():
    model = with_statistics(Blocks())
    model.stem.requires_grad_(False)
    with torch.inference_mode():
        folded, _ = fold(model)
    stem, reflect = folded.get_submodule("stem"), folded.get_submodule("reflect")
    assert not stem.weight.requires_grad and reflect.weight.requires_grad
    assert not stem.weight.is_inference() and isinstance(reflect.bias, nn.Parameter)


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


def test_folded_checkpoint_round_trip(tmp_path):
    model, X = e02()
    folded, _ = fold(model)
    save(folded, tmp_path / "folded.pt")
    loaded = load(tmp_path / "folded.pt")
    assert [spec.get("bias") for spec in loaded.config()["layers"]] == [True, None, True, None, True]
    with torch.no_grad():
        assert torch.equal(loaded(X), folded(X))


def test_cli_fold_then_eval_and_sample(names_path, tmp_path, capsys):
    model, _ = e02(steps=50)
    save(model, tmp_path / "e02.pt")
    args = ["--names", str(names_path)]
    assert main(["fold", str(tmp_path / "e02.pt"), "-o", str(tmp_path / "folded.pt"), *args]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm folding: 3 folded, 0 kept" in out and "Linear -> BN" in out
    dev_loss = r"dev loss: unfolded (\S+), folded (\S+) \(certified \|Δ\| <= (\S+)\)"
    unfolded, folded, loss_bound = re.search(dev_loss, out).groups()
    assert abs(float(unfolded) - float(folded)) <= float(loss_bound)
    delta, bound = out.split("max |Δlogit| on dev: ")[1].split(" (certified bound ")
    assert float(delta) <= float(bound.split(")")[0])
    assert not any(is_norm(m) for m in load(tmp_path / "folded.pt").modules())
    for checkpoint in ("e02.pt", "folded.pt"):
        assert main(["eval", str(tmp_path / checkpoint), *args]) == 0
    unfolded_eval, folded_eval = capsys.readouterr().out.splitlines()
    assert unfolded_eval == folded_eval
    assert main(["sample", str(tmp_path / "folded.pt"), "-n", "4"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 4 and all(name.isalpha() and name.islower() for name in names)


@pytest.mark.gpu
def test_fold_keeps_the_device():
    model, X = e02()
    model, X = model.cuda(), X.cuda()
    folded, _ = fold(model)
    assert all(p.device.type == "cuda" for p in folded.parameters())
    with torch.no_grad():
        err = (model(X) - folded(X)).abs().double().cpu()
    assert (err <= error_bound(model, X)).all()
