"""Folding torchvision's classification models (random weights, BatchNorm statistics from a few training forwards,
32x32 images): every BatchNorm reported, certified in float32 and float64, pure, idempotent, folding every pair
torch.fx's fuse folds, and every planted wrong fold caught. Plus `bnfold fold --torchvision`.

The oracle is `certify`: each fold checked on the activations the model computes, everything else compared exactly.
The whole-model bound alone is 10²⁰ and more above the observed difference on these nets, which no bug would
exceed.

Models are built once per session. The CPU's threads are set to one while these run: on a small shared machine,
two OpenMP threads that wait on each other make a small forward many times slower.
"""

import copy
import functools
import json
import re

import pytest
import torch

from core.app.cli import main
from core.engine.certify import certify
from core.engine.fold import fold
from core.engine.kinds import is_batchnorm
from core.perf.layout import channels_last
from core.vision import MODELS, build, fx_folded, images
from properties.plants import PLANTS, plant, plantable

pytest.importorskip("torchvision")

QUICK = {"resnet18", "mobilenet_v3_small"}  # the others take 5 to 30 s each on 2 cores
SLOW = set(MODELS) - QUICK
PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in MODELS]
IMAGE = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def model(name: str) -> torch.nn.Module:
    return build(name, seed=0, image_size=IMAGE)


@functools.cache
def folded(name: str):
    return fold(model(name))


@functools.cache
def folded_in(name: str, dtype: torch.dtype = torch.float32):
    """(model, folded, report, X) in dtype, X two random images."""
    m = model(name) if dtype == torch.float32 else copy.deepcopy(model(name)).to(dtype)
    f, report = folded(name) if dtype == torch.float32 else fold(m)
    return m, f, report, images(2, IMAGE, seed=1, dtype=dtype)


def batchnorm_names(m) -> set:
    return {name for name, module in m.named_modules() if is_batchnorm(module)}


@pytest.mark.parametrize("name", PARAMS)
def test_every_batchnorm_is_folded_or_kept(name):
    """{BNs of m} = {folded} ⊎ {kept}, and the BNs left in fold(m) are the kept ones."""
    m = model(name)
    f, report = folded(name)
    ours = [p.bn for p in report.folded]
    kept = [k.bn for k in report.kept]
    assert len(ours) == len(set(ours)) and not set(ours) & set(kept)
    assert set(ours) | set(kept) == batchnorm_names(m) == set(kept) | set(ours)
    assert batchnorm_names(f) == set(kept)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", PARAMS)
def test_the_fold_is_certified(name, dtype):
    """certify(m, fold(m), X, report) holds on two random images, float32 and float64: every fold within its own
    bound on the activations m computes, nothing else changed, and |m(X) − fold(m)(X)| within the whole-model bound."""
    m, f, report, X = folded_in(name, dtype)
    certificate = certify(m, f, X, report)
    assert certificate.holds, str(certificate)
    assert len(certificate.pairs) == len({p.layer for p in report.folded}) and certificate.end_to_end


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}, [x.training for x in m.modules()]


@pytest.mark.parametrize("name", PARAMS)
def test_fold_is_pure_and_idempotent(name):
    """fold leaves m's state and flags as they were; fold(fold(m)) folds nothing and computes fold(m) bit for bit."""
    m = model(name)
    before = snapshot(m)
    once, _ = fold(m)
    after = snapshot(m)
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and once.training == m.training
    twice, report = fold(once)
    assert report.folded == ()
    X = images(1, IMAGE, seed=2)
    with torch.no_grad():
        assert torch.equal(once(X), twice(X))


@pytest.mark.parametrize("name", PARAMS)
def test_folds_every_pair_torch_fx_fuses(name):
    """{BNs fuse(m) folds} ⊆ {BNs fold(m) folds}, and certify, reading the folds off fuse(m) without a report,
    finds exactly those and certifies them.

    torch.fx's fuse folds a Conv/BN or Linear/BN pair when the conv's only user is the BN; fold folds those along
    the same edges (and BNs before convs). Each of torch's fused pairs is the same affine map computed in float32,
    on these nets within the bound of the fold.
    """
    m, _, _, X = folded_in(name)
    fused, theirs = fx_folded(m)
    assert theirs <= {p.bn for p in folded(name)[1].folded}
    certificate = certify(m, fused, X)
    assert certificate.holds, str(certificate)
    assert {bn for p in certificate.pairs for bn in p.bns} == theirs


@pytest.mark.parametrize("name", ["resnet18", pytest.param("mobilenet_v2", marks=pytest.mark.slow)])
def test_fold_and_torch_fx_fuse_give_the_same_program(name):
    """fold(m) and fuse(m) have the same code, module types and tensors' shapes, strides and dtypes.

    Where every BN follows its conv, both fold each pair into that conv: the bench's folded / torch.fx fused is
    then the same program timed twice, and any difference from 1 is the machine's noise.
    """
    m = model(name)
    ours, theirs = folded(name)[0], fx_folded(m)[0]
    assert ours.code == theirs.code
    assert {k: type(v) for k, v in ours.named_modules() if k} == {k: type(v) for k, v in theirs.named_modules() if k}
    layout = {k: (v.shape, v.stride(), v.dtype) for k, v in ours.state_dict().items()}
    assert layout == {k: (v.shape, v.stride(), v.dtype) for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_a_channels_last_fold_is_certified(name):
    """certify(m, channels_last(fold(m)), X, report) holds: the layout sums each conv in another order only."""
    m, f, report, X = folded_in(name)
    certificate = certify(m, channels_last(copy.deepcopy(f)), X, report)
    assert certificate.holds, str(certificate)


@pytest.mark.parametrize("kind", PLANTS)
@pytest.mark.parametrize("name", PARAMS)
def test_a_wrong_fold_deep_in_the_net_fails_the_certificate_naming_it(name, kind):
    """Each plant (the mean dropped, the original weight kept, one channel's scale off by 10 %, two channels
    swapped) into a folded layer near the end of the net makes certify fail there, and there only."""
    m, f, report, X = folded_in(name)
    layer = plantable(report.plan)[-2]
    certificate = certify(m, plant(report.plan, f, layer, kind, (0, 1)), X, report)
    assert not certificate.holds and [p.layer for p in certificate.pairs if not p.holds] == [layer], str(certificate)


@pytest.mark.slow
def test_kept_batchnorms_of_densenet_say_why():
    """densenet121's norm1 BNs follow a concatenation and feed a ReLU: kept, and the reason says so."""
    _, report = folded("densenet121")
    reasons = {k.bn: k.reason for k in report.kept}
    assert "producer is cat" in reasons["features.denseblock1.denselayer1.norm1"]
    assert "ReLU" in reasons["features.denseblock1.denselayer1.norm1"]
    assert "features.norm5" in reasons


def test_cli_fold_torchvision(capsys):
    code = main(["fold", "--torchvision", "resnet18", "--image-size", "32", "--bound-size", "32", "--rounds", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "BatchNorm folding: 20 folded, 0 kept" in out and "torch.fx fuse: 20 folded" in out
    assert re.search(r"on 2 images of 32², in \S+ s: certificate: holds\n"
                     r"  20 folded layer\(s\) checked on the real activations: worst slack \S+ \(\S+ into \S+\), "
                     r"median \S+\n"
                     r"  everything no fold replaced: equal to the original\n"
                     r"  accuracy: .* = \S+\n"
                     r"  whole-model bound \(sound, loose through depth\): max \|Δ\| \S+ within \S+\n", out)
    assert re.search(r"B=1: .*speed-up .*x \(.*x channels-last\)\n +folded, channels-last / torch.fx fused", out)
    assert re.search(r"B=8: .*speed-up .*\n.*folded / torch.fx fused \d", out)


@pytest.mark.parametrize("argv, message", [
    (["fold", "--torchvision", "resnet18", "model.pt"], "give no checkpoint"),
    (["fold", "--torchvision", "no_such_net"], "no classification model"),
    (["fold", "model.pt"], "needs a checkpoint and -o"),
])
def test_cli_fold_refuses_bad_combinations(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_fold_torchvision_json_is_the_report_and_certificate_as_data(capsys):
    code = main(["fold", "--torchvision", "resnet18", "--image-size", "16", "--bound-size", "32", "--rounds", "1",
                 "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    m, f, report, X = folded_in("resnet18")
    assert data["report"] == report.as_dict() and data["certificate"] == certify(m, f, X, report).as_dict()
    assert data["certificate"]["holds"] and len(data["certificate"]["pairs"]) == 20


def weight_kept_in_conv1(model):
    """fold(model), but the first conv keeps its original weight beside its folded bias."""
    folded_model, report = fold(model)
    return plant(report.plan, folded_model, "conv1", "weight_kept", (0, 1)), report


def test_cli_fold_torchvision_exits_2_when_the_certificate_fails(monkeypatch, capsys):
    """A fold gone wrong (here the folded layer keeps its original weight) is caught: the certificate printed, then
    one error line naming the failing fold, exit 2."""
    monkeypatch.setattr("core.engine.fold.fold", weight_kept_in_conv1)
    assert main(["fold", "--torchvision", "resnet18", "--image-size", "8", "--bound-size", "32", "--rounds", "1"]) == 2
    captured = capsys.readouterr()
    assert "certificate: FAILS" in captured.out
    assert captured.err.count("\n") == 1
    assert "the folded model's certificate does not hold: bn1 into conv1" in captured.err
