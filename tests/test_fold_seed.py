"""The seed's E02 check: train the Linear→BatchNorm1d→Tanh net, fold it, and get the same dev loss."""

import torch
import torch.nn.functional as F

from core.bound import error_bound, loss_bound
from core.fold import fold
from core.kinds import is_norm
from core.layers import Linear, Tanh
from core.model import e02_mlp
from core.train import train

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

    X, Y = splits["dev"]
    with torch.no_grad():
        logits, folded_logits = model(X), folded(X)
    bound = error_bound(model, X)
    delta = (logits.double() - folded_logits.double()).abs()
    loss, folded_loss = (F.cross_entropy(z.double(), Y).item() for z in (logits, folded_logits))
    allowed = loss_bound(logits, bound, Y)
    print(f"dev loss unfolded {loss!r}, folded {folded_loss!r} (bound {allowed:.3e}); "
          f"max |Δlogit| {delta.max().item():.3e} (bound {bound.max().item():.3e})")
    assert (delta <= bound).all()
    assert abs(loss - folded_loss) <= allowed
