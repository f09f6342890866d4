"""The layer-kind table by example: terms that are no tensor (an int ε) are carried as they are."""

import torch
from torch import nn

from core.engine.kinds import rebuild_as
from core.makemore.layers import BatchNorm1d
from tests.engine.models import with_statistics


def test_a_batchnorm_with_an_int_eps_is_rebuilt_as_another_type():
    """torch keeps ε as given, an int too; rebuilding copies the tensors and takes ε as it is: the same map, bit for
    bit."""
    bn = with_statistics(nn.BatchNorm1d(4, eps=1))
    rebuilt = rebuild_as(bn, BatchNorm1d).eval()
    x = torch.linspace(-3, 3, 8).reshape(2, 4)
    assert rebuilt.eps == 1
    with torch.no_grad():
        assert torch.equal(rebuilt(x), bn(x))
