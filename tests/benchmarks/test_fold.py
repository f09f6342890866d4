"""fold() time against the hidden width of the E02 net."""

import pytest
import torch

from core.engine.fold import fold
from core.makemore.layers import BatchNorm1d
from core.makemore.model import e02_mlp
from core.perf.timing import extra_info


def with_statistics(model, generator):
    """The model in eval mode with BatchNorm statistics and affine parameters drawn from `generator`."""
    with torch.no_grad():
        for bn in (layer for layer in model.layers if isinstance(layer, BatchNorm1d)):
            bn.running_mean.copy_(torch.randn(bn.dim, generator=generator))
            bn.running_var.copy_(torch.rand(bn.dim, generator=generator) * 2 + 0.1)
            bn.gamma.copy_(1 + 0.1 * torch.randn(bn.dim, generator=generator))
            bn.beta.copy_(0.1 * torch.randn(bn.dim, generator=generator))
    return model.eval()


@pytest.mark.parametrize("width", [64, 256, 1024, 4096])
def test_fold_time(benchmark, width):
    g = torch.Generator().manual_seed(width)
    model = with_statistics(e02_mlp(g, n_hidden=width), g)
    benchmark.group = "fold() against width"
    benchmark.extra_info.update(extra_info((width, width), torch.float32), width=width)
    folded, report = benchmark(fold, model)
    assert len(report.folded) == 3 and not report.kept
