"""Exported files (core.deploy): a torch.export program that computes the folded model bit for bit, an ONNX file
checked layer by layer in ONNX Runtime within the bounds of its own rounding, and refusals that name the file."""

import functools
import sys

import pytest
import torch
from torch import nn

import core.deploy
from core.deploy import export, onnx_check
from core.engine.fold import fold
from core.errors import ExportError, MissingDependency
from core.makemore.model import e02_mlp
from core.vision import build, images

pytest.importorskip("torchvision")


@functools.cache
def resnet18():
    """(folded resnet18, two 32² images): random weights and BatchNorm statistics, as the fold tests build them."""
    return fold(build("resnet18", seed=0, image_size=32))[0], images(2, 32, seed=1)


def test_a_torch_export_program_computes_the_folded_model_bit_for_bit(tmp_path):
    folded, X = resnet18()
    assert export(folded, X, tmp_path / "folded.pt2") is None
    program = torch.export.load(str(tmp_path / "folded.pt2"))
    with torch.no_grad():
        assert torch.equal(program.module()(X), folded(X))


@pytest.mark.slow
def test_an_onnx_file_computes_the_folded_model_layer_by_layer(tmp_path):
    """Every conv and the Linear of resnet18, and its outputs, within the bound of their own rounding in ONNX
    Runtime; the check says so, with the largest |Δ| end to end."""
    pytest.importorskip("onnxruntime")
    folded, X = resnet18()
    check = export(folded, X, tmp_path / "folded.onnx")
    assert check == onnx_check(folded, tmp_path / "folded.onnx", X)
    assert check.holds and len(check.layers) == 21 + 1
    assert "computes the folded model: 21 layer(s) and the outputs checked" in str(check)


def test_a_charmlp_exports_and_checks_through_its_adapter(tmp_path):
    """A folded CharMLP (int ids in, an embedding, a layer stack) exports, and its ONNX file checks layer by layer."""
    pytest.importorskip("onnxruntime")
    model = e02_mlp(torch.Generator().manual_seed(0)).eval()
    folded, _ = fold(model)
    X = torch.randint(0, 27, (16, 4), generator=torch.Generator().manual_seed(1))
    check = export(folded, X, tmp_path / "e02.onnx")
    assert check.holds and [c.name for c in check.layers] == ["Linear '0'", "Linear '2'", "Linear '4'", "the outputs"]


@pytest.mark.slow
def test_an_onnx_file_that_differs_from_the_model_fails_naming_the_layer(tmp_path):
    """An ONNX file whose first conv's weight is off by 10⁻³ (as a broken export would be): that conv's check fails,
    and require() names it."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folded, X = resnet18()
    path = tmp_path / "folded.onnx"
    export(folded, X, path)
    proto = onnx.load(str(path))
    weight = next(t for t in proto.graph.initializer if t.name == "conv1.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, 0, 0, 0] += 1e-3
    weight.CopyFrom(onnx.numpy_helper.from_array(values, "conv1.weight"))
    onnx.save(proto, str(path))
    check = onnx_check(folded, path, X)
    assert not check.holds and [c.name for c in check.layers if not c.holds][0] == "Conv2d 'conv1'"
    with pytest.raises(ExportError, match="folded.onnx does not compute the folded model in ONNX Runtime: "
                                          "Conv2d 'conv1'"):
        check.require()


def test_another_suffix_is_refused_and_nothing_is_written(tmp_path):
    folded, X = resnet18()
    with pytest.raises(ExportError, match=r"folded.pt: bnfold writes .pt2 \(a torch.export program\), .onnx \(an ONNX "
                                          r"file\); give a path ending in one of those"):
        export(folded, X, tmp_path / "folded.pt")
    assert list(tmp_path.iterdir()) == []


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_a_model_torch_export_refuses_is_an_export_error_and_the_old_file_stays(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"the old program")
    with pytest.raises(ExportError, match="torch.export cannot capture DataDependent"):
        export(DataDependent(), torch.ones(2), path)
    assert path.read_bytes() == b"the old program"


def test_a_missing_onnx_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    folded, X = resnet18()
    with pytest.raises(MissingDependency, match=r"an ONNX export needs the package onnx, which is not installed: "
                                                r"pip install 'bnfold\[onnx\]'"):
        export(folded, X, tmp_path / "folded.onnx")


@pytest.mark.slow
def test_an_onnx_export_that_fails_its_check_writes_nothing(tmp_path, monkeypatch):
    """An ONNX file that does not compute the model (here the Linear's bias is all ones) is refused before it replaces
    anything, naming the layer: the old file stays."""
    pytest.importorskip("onnxruntime")
    folded, X = resnet18()
    made = core.deploy.onnx_model

    def off(model, example):
        proto = made(model, example)
        bias = next(t for t in proto.graph.initializer if t.name == "fc.bias")
        bias.raw_data = torch.ones(len(bias.raw_data) // 4).numpy().tobytes()
        return proto

    monkeypatch.setattr(core.deploy, "onnx_model", off)
    path = tmp_path / "folded.onnx"
    path.write_bytes(b"the old file")
    with pytest.raises(ExportError, match="folded.onnx does not compute the folded model in ONNX Runtime: Linear 'fc'"):
        export(folded, X, path)
    assert path.read_bytes() == b"the old file" and sorted(p.name for p in tmp_path.iterdir()) == ["folded.onnx"]
