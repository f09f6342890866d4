"""bnfold conform: the matrix written as markdown and JSON, atomically; a missing package is "not installed"."""

import json

import pytest
import torch

from core.app.cli import main
from core.conform.adapters import folders
from core.conform.matrix import NOT_INSTALLED, run_matrix
from core.errors import MissingDependency


def test_conform_writes_the_matrix(tmp_path, capsys):
    assert main(["conform", "--folder", "bnfold", "--examples", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| bnfold | bnfold " in out
    data = json.loads((tmp_path / "conformance.json").read_text(encoding="utf-8"))
    (row,) = data["folders"]
    assert row["folder"] == "bnfold" and row["version"] and set(row["cells"]) == {law["name"] for law in data["laws"]}
    assert all(cell["status"] == "pass" for cell in row["cells"].values())
    assert "| bnfold |" in (tmp_path / "conformance.md").read_text(encoding="utf-8")


def test_an_unknown_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["conform", "--folder", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--folder nope: no such folder" in err and "bnfold" in err and len(err.strip().splitlines()) == 1


def test_a_folder_whose_package_is_missing_is_not_installed(monkeypatch):
    (folder,) = folders(["onnxoptimizer"])
    monkeypatch.setattr(type(folder), "modules", ("onnx", "no_such_package_for_bnfold"))
    assert "no_such_package_for_bnfold" in folder.missing() and "bnfold[peers]" in folder.missing()
    (row,) = run_matrix([folder], 1).rows
    assert row.version == "—" and {cell.status for cell in row.cells.values()} == {NOT_INSTALLED}


def test_folding_without_the_package_is_a_missing_dependency_naming_the_extra(monkeypatch):
    (folder,) = folders(["onnxruntime"])
    monkeypatch.setattr(type(folder), "modules", ("no_such_package_for_bnfold",))
    with pytest.raises(MissingDependency, match=r"no_such_package_for_bnfold.*bnfold\[peers\]"):
        folder.fold(torch.nn.Sequential(), torch.zeros(1))
