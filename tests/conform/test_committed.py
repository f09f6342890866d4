"""docs/conformance.json is what `bnfold conform` computes: rerun on the versions it records, every failure of the
folders CI installs (torch's and bnfold) comes back with the same minimal counterexample, and every pass still
passes on its first cases."""

import json
from pathlib import Path

import pytest

from core.conform.adapters import folders
from core.conform.laws import LAWS
from core.conform.matrix import FAIL, reproduction, run_cell

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "conformance.json"
TORCH_FOLDERS = ("bnfold", "torch-fusion", "fx-fuse", "ao-fuse", "inductor")
PASS_EXAMPLES = 2  # a pass is rechecked on its first cases: the full count is the command's


def committed_cells():
    data = json.loads(COMMITTED.read_text(encoding="utf-8"))
    rows = {row["folder"]: row for row in data["folders"]}
    for folder in folders(TORCH_FOLDERS):
        row = rows[folder.name]
        for law in LAWS:
            yield pytest.param(folder, law, row["version"], row["cells"][law.name], data["examples"],
                               id=f"{folder.key}-{law.name}")


@pytest.mark.parametrize("folder, law, version, cell, examples", list(committed_cells()))
def test_the_committed_matrix_is_what_the_command_computes(folder, law, version, cell, examples):
    if folder.version() != version:
        pytest.skip(f"{folder.name} is {folder.version()} here; the matrix records {version}")
    if cell["status"] == FAIL:
        got = run_cell(folder, law, examples)
        assert got.status == FAIL and got.counterexample is not None
        assert reproduction(folder, law, got.counterexample) == cell["counterexample"]["code"]
    else:
        assert run_cell(folder, law, PASS_EXAMPLES).status == cell["status"]
