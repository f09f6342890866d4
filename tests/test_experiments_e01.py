"""E01 end to end: the label entropy floor, the result record, and the notebook check on names.txt."""

import math

import pytest
import torch

from core.data import build_dataset
from core.diagnostics import output_bias
from core.experiments import E01Result, label_entropy, run_e01
from core.model import e01_mlp

E01_OUTPUT_BIAS = output_bias(e01_mlp(torch.Generator()))
NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "harper", "evelyn"]


@pytest.fixture(scope="module")
def tiny_splits():
    return {"train": build_dataset(NAMES[:7], 4), "dev": build_dataset(NAMES[7:], 4)}


@pytest.mark.parametrize("labels, expected", [
    (list(range(27)), math.log(27)),
    ([3] * 10, 0.0),
    ([0, 0, 1, 1], math.log(2)),
    ([0, 0, 0, 26], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
])
def test_label_entropy(labels, expected):
    assert label_entropy(torch.tensor(labels)) == pytest.approx(expected, rel=1e-15, abs=1e-15)


def test_short_e01_run(tiny_splits):
    result = run_e01(tiny_splits, steps=200, batch_size=16, seed=3, progress=False)
    assert isinstance(result, E01Result)
    assert result.steps == len(result.losses) == 200
    assert result.alive == [E01_OUTPUT_BIAS]
    assert result.dev_entropy == label_entropy(tiny_splits["dev"][1])
    assert result.gap == abs(result.dev_loss - result.dev_entropy)
    assert result.losses[0] == pytest.approx(math.log(27), rel=1e-6)  # zero logits: uniform softmax, in float32
    assert result.wall_time > 0


def test_e01_is_fixed_by_its_seed(tiny_splits):
    a, b = (run_e01(tiny_splits, steps=50, seed=9, progress=False) for _ in range(2))
    assert a.losses == b.losses and a.dev_loss == b.dev_loss and a.train_loss == b.train_loss


def test_a_kaiming_net_is_alive_everywhere(tiny_splits):
    result = run_e01(tiny_splits, steps=5, seed=0, progress=False, init="kaiming(5/3)")
    assert len(result.alive) == 11


# The notebook check (100k steps on names.txt) is part of tests/test_reproduce_full.py, which runs E01 once for both.
