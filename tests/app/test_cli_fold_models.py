"""`bnfold fold --model SPEC` and `fold --torchvision NAME --weights FILE`: a model of your own folded, certified on
inputs drawn at its shape, and written as torch.export and ONNX; every refusal one line, with nothing written. The
weights files are made here from randomly initialised models: nothing is downloaded."""

import json
import sys

import pytest
import torch
from torch import nn

import core.engine.fold as engine_fold
from tests.app.cli_runner import assert_one_line_error, run_main

pytest.importorskip("torchvision")


def tiny_net() -> nn.Module:
    """A factory of no arguments: conv → BatchNorm → ReLU → pool → Linear, the BatchNorm's terms drawn (so that its
    fold is no identity)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in (net[1].running_mean, net[1].weight, net[1].bias):
            tensor.copy_(torch.randn(4, generator=g))
        net[1].running_var.copy_(torch.rand(4, generator=g) + 0.5)
    return net


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def data_dependent() -> nn.Module:
    return DataDependent()


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> str:
    """A state_dict of torchvision's resnet18, randomly initialised (global RNG forked and seeded)."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = torchvision.models.resnet18()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_a_torchvision_state_dict_folds_certifies_and_writes_both_files(resnet_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    program, onnx = tmp_path / "r18.pt2", tmp_path / "r18.onnx"
    result = run_main("fold", "--torchvision", "resnet18", "--weights", resnet_weights, "--input-shape", "1,3,32,32",
                      "-o", program, "--onnx", onnx)
    assert result.code == 0, result.err
    assert f"torchvision resnet18 with the weights of {resnet_weights}; inputs of shape 1,3,32,32" in result.out
    assert "BatchNorm folding: 20 folded, 0 kept" in result.out and "certificate: holds" in result.out
    assert f"wrote {program}" in result.out
    assert f"wrote {onnx}: {onnx} in ONNX Runtime computes the folded model: 21 layer(s)" in result.out
    exported = torch.export.load(str(program)).module()
    assert exported(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)


def test_a_factory_model_folds_and_reports_as_json(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "tiny.onnx"
    result = run_main("fold", "--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "2,3,8,8",
                      "--onnx", onnx, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["certificate"]["holds"] and [p["bn"] for p in data["report"]["folded"]] == ["1"]
    assert data["input_shape"] == [2, 3, 8, 8] and data["written"][str(onnx)]["holds"] and onnx.exists()


@pytest.mark.slow
def test_a_timm_model_folds_through_timm_at_its_default_size_or_the_one_given(tmp_path):
    pytest.importorskip("timm")
    result = run_main("fold", "--model", "timm:resnet18d", "--input-shape", "1,3,32,32", "-o", tmp_path / "t.pt2")
    assert result.code == 0, result.err
    assert "timm:resnet18d; inputs of shape 1,3,32,32" in result.out and "certificate: holds" in result.out


def test_a_state_dict_of_another_model_names_its_keys_and_writes_nothing(tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_net().state_dict(), weights)
    result = run_main("fold", "--torchvision", "resnet18", "--weights", weights, "-o", tmp_path / "r.pt2")
    assert_one_line_error(result, f"--weights {weights}: not a state_dict of this ResNet: missing conv1.weight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


@pytest.mark.parametrize("argv, fragments", [
    (["--model", "tests.app.test_cli_fold_models:tiny_net"], ["--model tests.app.test_cli_fold_models:tiny_net: give "
                                                               "--input-shape"]),
    (["--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,5,8,8"],
     ["--input-shape: Sequential does not run on an input of shape (1, 5, 8, 8)"]),
    (["--model", "tests.app.test_cli_fold_models:data_dependent", "--input-shape", "1,3"],
     ["DataDependent cannot be traced by torch.fx"]),
    (["--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,3,8,8", "-o", "{tmp}/x.pt"],
     ["-o {tmp}/x.pt: -o writes a .pt2 file; give a path ending in .pt2"]),
    (["--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,3,8,8", "--onnx", "{tmp}/x.pt2"],
     ["--onnx {tmp}/x.pt2: --onnx writes a .onnx file"]),
    (["--weights", "{tmp}/w.pt"], ["--weights loads into the architecture --torchvision NAME or --model SPEC names"]),
    (["--model", "no_such_module_anywhere:make"], ["--model no_such_module_anywhere:make: cannot import"]),
    (["--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,3,8,8", "--image-size", "8"],
     ["--image-size applies to fold --torchvision NAME without --weights"]),
    (["--torchvision", "resnet18", "--input-shape", "1,3,32,32"], ["--input-shape applies to fold --model or "
                                                                    "--weights"]),
    (["--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,x"], ["--input-shape: must be 1 to 8 "
                                                                                      "positive integers"]),
])
def test_each_refusal_is_one_line_and_nothing_is_written(argv, fragments, tmp_path):
    result = run_main("fold", *[a.format(tmp=tmp_path) for a in argv])
    assert_one_line_error(result, *[f.format(tmp=tmp_path) for f in fragments])
    assert list(tmp_path.iterdir()) == []


def test_a_fold_that_fails_its_certificate_writes_nothing(tmp_path, monkeypatch):
    """fold gone wrong (the layer keeps its original weight): the certificate fails, exit 2, no file."""
    right = engine_fold.fold

    def weight_kept(model):
        folded, report = right(model)
        with torch.no_grad():
            folded.get_submodule("0").weight.copy_(model.get_submodule("0").weight)
        return folded, report

    monkeypatch.setattr(engine_fold, "fold", weight_kept)
    result = run_main("fold", "--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,3,8,8",
                      "-o", tmp_path / "x.pt2")
    assert_one_line_error(result, "the folded model's certificate does not hold: 1 into 0")
    assert "certificate: FAILS" in result.out and list(tmp_path.iterdir()) == []


def test_a_missing_onnx_extra_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    result = run_main("fold", "--model", "tests.app.test_cli_fold_models:tiny_net", "--input-shape", "1,3,8,8",
                      "--onnx", tmp_path / "x.onnx")
    assert_one_line_error(result, "an ONNX export needs the package onnx, which is not installed: "
                                  "pip install 'bnfold[onnx]'")
    assert list(tmp_path.iterdir()) == []
