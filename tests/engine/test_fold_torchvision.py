"""Folding torchvision's classification models (random weights, BatchNorm statistics from a few training forwards,
32x32 images): every BatchNorm reported, within the certified bound in float32 and float64, pure, idempotent,
and folding every pair torch.fx's fuse folds. Plus `bnfold fold --torchvision`.

Models are built once per session. The CPU's threads are set to one while these run: on a small shared machine,
two OpenMP threads that wait on each other make a small forward many times slower.
"""

import copy
import functools
import re

import pytest
import torch

from core.app.cli import main
from core.engine.bound.propagation import error_bound
from core.engine.fold import fold
from core.engine.kinds import is_batchnorm
from core.perf.layout import channels_last
from core.vision import MODELS, build, fx_folded, images

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
def bounded(name: str, dtype: torch.dtype = torch.float32):
    """(model, folded, X, error_bound(model, X)) in dtype, X two random images."""
    m = model(name) if dtype == torch.float32 else copy.deepcopy(model(name)).to(dtype)
    f = folded(name)[0] if dtype == torch.float32 else fold(m)[0]
    X = images(2, IMAGE, seed=1, dtype=dtype)
    return m, f, X, error_bound(m, X)


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
def test_folded_is_within_the_bound(name, dtype):
    """|m(X) − fold(m)(X)| ≤ error_bound(m, X) elementwise on two random images, float32 and float64."""
    m, f, X, bound = bounded(name, dtype)
    with torch.no_grad():
        err = (m(X).double() - f(X).double()).abs()
    assert torch.isfinite(bound).all() and (err <= bound).all()


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
    """{BNs fuse(m) folds} ⊆ {BNs fold(m) folds}, and |fuse(m)(X) − fold(m)(X)| ≤ error_bound(m, X).

    torch.fx's fuse folds a Conv/BN or Linear/BN pair when the conv's only user is the BN; fold folds those
    along the same edges (and BNs before convs). Each of torch's fused pairs is one more float evaluation of the
    same affine map, within the n + 9 roundings per term the pair bound allows the unfolded pair.
    """
    m, f, X, bound = bounded(name)
    fused, theirs = fx_folded(m)
    assert theirs <= {p.bn for p in folded(name)[1].folded}
    with torch.no_grad():
        err = (fused(X).double() - f(X).double()).abs()
    assert (err <= bound).all()


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
def test_a_channels_last_fold_is_within_the_bound(name):
    """|m(X) − channels_last(fold(m))(X)| ≤ error_bound(m, X): the layout sums each conv in another order only."""
    m, _, X, bound = bounded(name)
    with torch.no_grad():
        err = (m(X).double() - channels_last(copy.deepcopy(folded(name)[0]))(X).double()).abs()
    assert (err <= bound).all()


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
    delta, bound = re.search(r"max \|Δ\| on 2 images of 32²: (\S+) \(certified bound (\S+)\)", out).groups()
    assert float(delta) <= float(bound)
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
