"""Shared data and models for the benchmarks: the E02 net with realistic BatchNorm statistics, unfolded and folded."""

import pytest
import torch

from core.engine.fold import fold
from core.makemore.data import random_rows
from core.makemore.experiments import trained_e02
from core.perf import bench

STATS_STEPS = 50  # SGD steps that give the BatchNorms realistic statistics
RANDOM_TRAIN_ROWS = 20_000


@pytest.fixture(scope="session")
def bench_data(request):
    """(X_train, Y_train, X_dev): the standard splits of names.txt, else random rows (the dev set's size for X_dev)."""
    try:
        splits = request.getfixturevalue("splits")
    except pytest.skip.Exception:
        g = torch.Generator().manual_seed(0)
        X, Y = random_rows(RANDOM_TRAIN_ROWS, g)
        return X, Y, random_rows(bench.DEV_ROWS, g)[0]
    (X, Y), (X_dev, _) = splits["train"], splits["dev"]
    return X, Y, X_dev


@pytest.fixture(scope="session")
def e02(bench_data):
    """(unfolded, folded) E02 nets in eval mode."""
    X, Y, _ = bench_data
    model = trained_e02(X, Y, STATS_STEPS, torch.Generator().manual_seed(0))
    return model, fold(model)[0].eval()


@pytest.fixture(scope="session")
def variants(e02):
    return bench.inference_variants(*e02)


@pytest.fixture
def batch_of(bench_data):
    """batch_of(B): the first B dev rows ('dev': all of them)."""
    X_dev = bench_data[2]
    return lambda batch: X_dev if batch == "dev" else X_dev[:batch]
