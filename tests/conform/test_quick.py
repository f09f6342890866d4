"""The conformance quick pass CI runs: every law, derandomized, on a few cases each, against bnfold,
torch.nn.utils.fusion and FX's fuse (the full matrix, ONNX folders included, is `bnfold conform`)."""

import pytest
import torch

from core.conform.adapters import folders
from core.conform.cases import FAMILIES
from core.conform.laws import LAWS
from core.conform.matrix import ERROR, FAIL, NOT_INSTALLED, PASS, UNSUPPORTED, issue_text, markdown, run_matrix

EXAMPLES = 3  # cases per law and folder: the quick pass
SHRINK_SECONDS = 5.0  # the time a failure may spend shrinking to its minimal counterexample


@pytest.fixture(scope="module")
def quick():
    return run_matrix(folders(["bnfold", "torch-fusion", "fx-fuse"]), EXAMPLES, shrink_seconds=SHRINK_SECONDS)


def test_bnfold_passes_every_law_in_its_scope(quick):
    (row,) = [row for row in quick.rows if row.folder.key == "bnfold"]
    assert row.folder.claims == frozenset(FAMILIES)
    assert {law: cell.status for law, cell in row.cells.items() if cell.status != PASS} == {}


def test_every_cell_is_decided_and_unclaimed_laws_are_not_supported(quick):
    for row in quick.rows:
        for law in LAWS:
            cell = row.cells[law.name]
            assert cell.status in (PASS, FAIL, UNSUPPORTED), (row.folder.name, law.name, cell)
            assert (cell.status == UNSUPPORTED) == (law.family not in row.folder.claims)
            assert cell.status not in (ERROR, NOT_INSTALLED)


def test_every_counterexample_rebuilds_its_case_bit_for_bit(quick):
    """The printed Python of each failure builds the model and input the law failed on: the same tensors, flags and
    outputs, torch.equal."""
    failures = [row.cells[law.name].counterexample for row in quick.rows for law in LAWS
                if row.cells[law.name].status == FAIL]
    for example in failures:
        namespace: dict = {}
        with torch.random.fork_rng(devices=[]):  # the printed constructors draw from the global RNG
            exec(compile(example.case.code(), "counterexample", "exec"), namespace)
        model, x = namespace["model"], namespace["x"]
        built = example.case.build()
        assert torch.equal(x, example.case.example())
        assert [m.training for m in model.modules()] == [m.training for m in built.modules()]
        state, expected = model.state_dict(), built.state_dict()
        assert sorted(state) == sorted(expected)
        assert all(torch.equal(state[k], expected[k]) for k in state)
        with torch.no_grad():
            got, want = model(x), built(example.case.example())
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert torch.equal(a, b)


def test_the_matrix_links_every_failure_to_its_counterexample(quick):
    text = markdown(quick)
    for row in quick.rows:
        for law in LAWS:
            if row.cells[law.name].status == FAIL:
                example = row.cells[law.name].counterexample
                assert example.case.code() in text and example.violation.detail in text
                assert issue_text(example) in text
