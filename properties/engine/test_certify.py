"""Laws of the certificate (core.engine.certify): a right fold is certified, and a wrong fold that moves an output of
its layer past twice the bound of that fold fails it, naming the layer."""

import torch
from hypothesis import assume, event, example, given, note
from hypothesis import strategies as st

from core.engine.bound.propagation import error_bound
from core.engine.certify import certify
from core.engine.fold import fold
from properties.plants import PLANTS, plant, plantable, recorded
from properties.strategies.nets import MODELLED_BLOCKS, NetCase, net_cases

nets = net_cases(blocks=MODELLED_BLOCKS)


@given(nets)
@example(NetCase(2, 1, 3, ("conv_bn", "bn_run", "residual"), "linear_bn"))
def test_a_right_fold_is_certified(case):
    """certify(m, fold(m), X, report).holds, with every fold's slack ≤ 1 and nothing else changed.

    fold computes each folded layer as the pair bound assumes (in float64, cast once) and copies every other module,
    so each local check is within its own bound and every untouched module equals the original's.
    """
    model, X, _ = case.build()
    folded, report = fold(model)
    certificate = certify(model, folded, X, report)
    note(str(certificate))
    assert certificate.holds and certificate.differences == ()
    assert len(certificate.pairs) == len({p.layer for p in report.folded})


@given(nets, st.integers(0, 7), st.sampled_from(PLANTS), st.integers(0, 2), st.integers(1, 2))
@example(NetCase(2, 1, 3, ("conv_bn",)), 0, "mean_dropped", 0, 1)
@example(NetCase(2, 1, 3, ("conv_bn", "bn_conv")), 1, "channels_swapped", 0, 1)
def test_a_wrong_fold_past_twice_its_bound_fails_the_certificate_naming_it(case, pick, kind, first, step):
    """∀ plant P into folded layer L: max_j |pair_L(x) − P(L)(x)|_j / B_j > 2 on the input x the original feeds L
    ⇒ ¬certify(m, P(fold(m)), X).holds, and L's check is the one that fails.

    The local check compares exactly these outputs with B (the bound of L's fold alone), so a plant that moves some
    output past 2B moves it past B. The plants: the mean dropped, the original weight kept, one channel's scale
    off by 10 %, two channels swapped; channels j ≠ k are drawn, and the nets' means are nonzero, so plants matter.
    """
    model, X, _ = case.build()
    folded, report = fold(model)
    names = plantable(report.plan)
    assume(names)
    layer = names[pick % len(names)]
    planted = plant(report.plan, folded, layer, kind, (first, first + step))
    pair, x, flatten = recorded(report.plan, X, layer)
    with torch.no_grad():
        moved = (pair(x).double() - planted.get_submodule(layer)(x.flatten(1) if flatten else x).double()).abs()
    bound = error_bound(pair, x)
    note(f"{kind} into {layer}: largest |Δ|/B {(moved / bound).max().item():.3g}")
    certificate = certify(model, planted, X, report)
    event(f"{kind}: {'moves past 2B' if (moved > 2 * bound).any() else 'within 2B'}")
    if (moved > 2 * bound).any():
        failing = [p.layer for p in certificate.pairs if not p.holds]
        assert not certificate.holds and failing == [layer]
