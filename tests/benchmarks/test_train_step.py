"""One training step of the E02 net: makemore's train vs the notebook's loop (plain-class layers, retain_grad)."""

import pytest
import torch

from core import notebook
from core.makemore.model import e02_mlp
from core.makemore.train import train
from core.perf.timing import extra_info

STEPS = 10  # steps per timed call; stats are per call, so divide by STEPS for one step
BATCH_SIZE = 64


@pytest.mark.parametrize("loop", ["ours", "notebook"])
def test_train_step(benchmark, bench_data, loop):
    X, Y, _ = bench_data
    model = e02_mlp(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    if loop == "ours":
        run = lambda: train(model, X, Y, STEPS, BATCH_SIZE, generator=g, progress=False)  # noqa: E731
    else:
        net = notebook.Net(model)
        run = lambda: notebook.train(net, X, Y, STEPS, BATCH_SIZE, generator=g)  # noqa: E731
    benchmark.group = f"training, {STEPS} steps"
    benchmark.extra_info.update(extra_info((BATCH_SIZE, X.shape[1]), torch.float32), loop=loop, steps=STEPS)
    benchmark(run)
