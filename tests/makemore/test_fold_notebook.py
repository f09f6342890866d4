"""The notebook's E02 check: train the Linear→BatchNorm1d→Tanh net, fold it, and get the same dev loss."""

import torch

from core.engine.fold import fold
from core.engine.kinds import is_norm
from core.makemore.evaluate import fold_agreement
from core.makemore.layers import Linear, Tanh
from core.makemore.model import e02_mlp
from core.makemore.train import train

STEPS = 5_000


def test_folded_e02_has_the_same_dev_loss(splits):
    g = torch.Generator().manual_seed(42)
    model = e02_mlp(g)
    train(model, *splits["train"], STEPS, generator=g, progress=False)
    model.eval()
    folded, report = fold(model)
    assert not any(is_norm(m) for m in folded.modules())
    assert [type(layer) for layer in folded.layers] == [Linear, Tanh, Linear, Tanh, Linear]
    assert len(report.folded) == 3 and report.kept == ()

    agreement = fold_agreement(model, folded, *splits["dev"])
    print(agreement)
    assert (agreement.bound_ratios <= 1).all()
    assert abs(agreement.loss_unfolded - agreement.loss_folded) <= agreement.loss_bound
