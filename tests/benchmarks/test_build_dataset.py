"""build_dataset (vectorised) vs the notebook's prepare_data loop, on names.txt when it is there."""

import pytest

from core import notebook
from core.makemore.data import build_dataset, synthetic_names
from core.perf.timing import extra_info


@pytest.fixture(scope="module")
def names(request):
    """names.txt when it is there, else as many synthetic names."""
    try:
        return request.getfixturevalue("all_names")
    except pytest.skip.Exception:
        return synthetic_names(32033)


@pytest.mark.parametrize("builder", ["vectorised", "loop"])
def test_build_dataset(benchmark, names, builder):
    fn = build_dataset if builder == "vectorised" else notebook.prepare_data
    benchmark.group = "build_dataset"
    X, Y = benchmark(fn, names, 4)
    benchmark.extra_info.update(extra_info(X.shape, X.dtype), builder=builder, names=len(names))
    assert len(X) == len(Y) == sum(len(name) + 1 for name in names)
