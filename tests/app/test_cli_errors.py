"""How the command line tells a failure: every BnfoldError as its own message in one line (exit 2), with the option
to change where the library's message names none; any other exception as a bug, in one line too."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import core.errors
import core.vision
from core.app.cli import main
from core.app.errors import UsageError
from tests.app.cli_runner import assert_one_line_error, run_main

TORCHVISION = ["fold", "--torchvision", "{name}", "--image-size", "8", "--bound-size", "8", "--rounds", "1"]
CORE = Path(core.vision.__file__).parent


def fold_torchvision(name: str):
    return run_main(*[a.format(name=name) for a in TORCHVISION])


def elu_net(name, seed=0, image_size=32, batch=4, forwards=3):
    """A conv net with an ELU, a layer error_bound has no rule for; built like vision.build's models."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    return core.vision.with_statistics(net, torch.Generator().manual_seed(seed), image_size, batch, forwards)


def test_a_layer_without_a_rule_leaves_the_whole_model_unbounded_and_each_fold_certified(monkeypatch):
    """An ELU after the fold has no error model: the certificate checks the fold where it stands and says why there is
    no whole-model bound; the command succeeds."""
    monkeypatch.setattr(core.vision, "build", elu_net)
    result = fold_torchvision("resnet18")
    assert result.code == 0, result.err
    assert "certificate: holds" in result.out
    assert "whole-model bound: none (error_bound has no error model for ELU '2'" in result.out


def test_an_unknown_torchvision_model_names_the_option():
    assert_one_line_error(fold_torchvision("no_such_net"), "--torchvision no_such_net: torchvision has no "
                                                           "classification model 'no_such_net'; try one of")


def test_the_library_says_it_without_naming_an_option():
    with pytest.raises(core.errors.ModelError) as err:
        core.vision.check_architecture("no_such_net")
    assert str(err.value).startswith("torchvision has no classification model 'no_such_net'")
    assert "--" not in str(err.value)


def test_a_missing_torchvision_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` raises ImportError
    assert_one_line_error(fold_torchvision("resnet18"), "torchvision is not installed: pip install torchvision")


def test_any_other_exception_is_a_bug_in_one_line(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(core.vision, "build", broken)
    assert_one_line_error(fold_torchvision("resnet18"),
                          "unexpected RuntimeError: boom (a bug; BNFOLD_DEBUG=1 shows the traceback)")


def test_with_bnfold_debug_a_bug_raises_with_its_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(core.vision, "build", broken)
    monkeypatch.setenv("BNFOLD_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main([a.format(name="resnet18") for a in TORCHVISION])


def test_the_library_raises_no_usage_error():
    """UsageError is the command line's: no module outside core/app names it (the library's errors name no option)."""
    assert not hasattr(core.errors, "UsageError")
    outside = [path for path in CORE.rglob("*.py") if CORE / "app" not in path.parents]
    assert outside and not [path for path in outside if "UsageError" in path.read_text()]
    assert issubclass(UsageError, core.errors.BnfoldError)
