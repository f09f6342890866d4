"""Hypothesis profiles, one intra-op thread per test process, a guard on global state, the real names.txt, splits.

Parallel runs (`pytest -n N`, pytest-xdist) start N worker processes; each runs its tests with one torch
intra-op thread (the nets here are tiny: a second thread only adds synchronisation, and N workers with
several threads each would oversubscribe the cores). `OMP_NUM_THREADS`, if set, chooses another count;
subprocesses the tests start (the CLI tests) inherit it. Every test must leave torch's thread count as
it found it, and gets torch's global RNG restored (`global_state_is_left_alone`): a test that changed
either would make its neighbours' results depend on the order, the worker and the schedule.
"""

import os
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from tqdm import tqdm

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
# Mutation testing needs a failure, not a minimal one: without shrinking a failing law stops at its first
# counterexample, within mutmut's timeout (which it sets from the passing run's duration).
settings.register_profile("mutation", parent=settings.get_profile("ci"), report_multiple_bugs=False,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

ROOT = Path(__file__).parent
FETCH_HINT = "names.txt not found: copy it to data/names.txt, set BNFOLD_NAMES, or run `bnfold data` to download it"
TEST_THREADS = os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    torch.set_num_threads(int(TEST_THREADS))
    # tqdm starts a monitor thread with its first bar, even a disabled one, and guards writes with a
    # multiprocessing lock that forked processes share: a process forked from this one (mutmut forks one per
    # mutant) could then block forever on a lock held elsewhere. Test processes keep a lock of their own.
    tqdm.monitor_interval = 0
    tqdm.set_lock(threading.RLock())


@pytest.fixture(autouse=True)
def global_state_is_left_alone():
    """Fail a test that changes torch's intra-op thread count; give torch's global RNG back as the test found it.

    The library never draws from the global RNG (tests/makemore/test_init.py and
    tests/engine/test_folded_model_examples.py check that), but a test may, through torch.nn.Linear's own init:
    restoring the state keeps what every other test draws independent of which tests ran before it in the same
    process.
    """
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(rng)
    if torch.get_num_threads() != threads:
        changed = torch.get_num_threads()
        torch.set_num_threads(threads)
        pytest.fail(f"the test left torch.set_num_threads({changed}) (it was {threads}): restore it in a finally")


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
    from core.makemore.data import load_names

    return load_names(names_path)


@pytest.fixture(scope="session")
def splits(all_names):
    """{'train'|'dev'|'test': (X, Y)} with the standard split (seed 42) and context 4."""
    from core.makemore.data import build_dataset, split_names

    parts = dict(zip(("train", "dev", "test"), split_names(all_names, 42)))
    return {k: build_dataset(v, 4) for k, v in parts.items()}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
