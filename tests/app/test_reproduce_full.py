"""The full default `bnfold reproduce` (the notebook's recipe, 100k steps per experiment) on names.txt.

This one run is also the notebook check of both exercises: E01 floors at the dev-label entropy with
only the output bias alive, and E02's folded net matches the unfolded one within the bound.
"""

import json

import pytest
import torch

from core.app.cli import main
from core.makemore.diagnostics import output_bias
from core.makemore.model import e01_mlp

# The notebook's E02 dev loss after the same recipe (an unseeded run). This is a statistical
# expectation, not a float identity: another seed and torch build take another SGD path. Seed 42
# here gives 2.0624 (0.012 away); the band of 0.03 is about 1% of the loss.
NOTEBOOK_E02_DEV = 2.0743706226348877
SEED_SPREAD = 0.03

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(names_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce-full")
    assert main(["reproduce", "--out", str(out), "--names", str(names_path)]) == 0
    return json.loads((out / "report.json").read_text())


def test_e01_floors_at_the_dev_label_entropy(report):
    e01 = report["e01"]
    assert e01["steps"] == 100_000
    assert abs(e01["dev_loss"] - e01["dev_entropy"]) <= 0.01
    assert e01["alive"] == [output_bias(e01_mlp(torch.Generator()))]


def test_e02_folded_equals_unfolded_within_the_bound(report):
    e02 = report["e02"]
    assert e02["bn_left"] == 0
    assert e02["max_abs_logit_diff"] <= e02["max_bound"]
    assert abs(e02["dev_loss_folded"] - e02["dev_loss_unfolded"]) <= e02["loss_bound"]


def test_e02_reproduces_the_notebook(report):
    assert abs(report["e02"]["dev_loss_unfolded"] - NOTEBOOK_E02_DEV) <= SEED_SPREAD
