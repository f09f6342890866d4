"""Hypothesis profiles, the real names.txt fixture, and small shared models."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

ROOT = Path(__file__).parent
FETCH_HINT = "names.txt not found: copy it to data/names.txt, set BNFOLD_NAMES, or run `bnfold data` to download it"


@pytest.fixture(scope="session")
def names_path() -> Path:
    """The real names.txt. In CI its absence fails the run; locally the test is skipped with the hint."""
    path = Path(os.environ.get("BNFOLD_NAMES") or ROOT / "data" / "names.txt")
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FETCH_HINT} (CI must provide it)")
        pytest.skip(FETCH_HINT)
    return path


@pytest.fixture(scope="session")
def all_names(names_path):
    from core.data import load_names

    return load_names(names_path)


@pytest.fixture(scope="session")
def splits(all_names):
    """{'train'|'dev'|'test': (X, Y)} with the standard split (seed 42) and context 4."""
    from core.data import build_dataset, split_names

    parts = dict(zip(("train", "dev", "test"), split_names(all_names, 42)))
    return {k: build_dataset(v, 4) for k, v in parts.items()}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
