"""Folding by example: the E02 net, the FoldReport table, BNs before Linears, checkpoints, the CLI."""

import re

import pytest
import torch
from torch import nn

from core.app.cli import main
from core.engine.bound.propagation import error_bound
from core.engine.fold import FoldedPair, KeptBN, fold
from core.engine.kinds import is_norm
from core.makemore.checkpoint import load, save
from core.makemore.data import random_rows
from core.makemore.experiments import trained_e02
from core.makemore.layers import BatchNorm1d, Linear, Tanh
from core.makemore.model import e01_mlp
from core.makemore.train import train


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
