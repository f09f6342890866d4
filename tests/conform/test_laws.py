"""The laws pass a correct folder written independently of bnfold, and catch each defect planted in it: a law
that passes everything is no law."""

import pytest
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from core.conform.laws import LAWS, Law
from core.conform.strategies import cases
from tests.conform.planted import Planted

EXAMPLES = 4
PLANTED = {  # defect: the law that must catch it
    "mean": "conv", "inplace": "input untouched", "training": "training BN", "twice": "idempotent",
    "padded": "BN before padding", "shared": "shared conv", "pair-twice": "shared conv+BN", "axis": "transposed",
    "mixed": "fp16/bf16",
}


def law(name: str) -> Law:
    return next(law for law in LAWS if law.name == name)


def counterexample(folder, law: Law, examples: int = EXAMPLES):
    """A case on which `folder` breaks `law` (the first found: existence is the question here), or None."""
    chosen = settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    try:
        return find(cases(law.family), lambda case: law.check(folder, case) is not None, settings=chosen)
    except NoSuchExample:
        return None


@pytest.mark.parametrize("name", [law.name for law in LAWS])
def test_a_correct_folder_passes_every_law(name):
    assert counterexample(Planted(), law(name)) is None


@pytest.mark.parametrize("defect", sorted(PLANTED))
def test_each_planted_defect_is_caught_by_its_law(defect):
    case = counterexample(Planted(defect), law(PLANTED[defect]), examples=20)
    assert case is not None, f"{PLANTED[defect]} misses the defect {defect}"
