"""Laws of what fold trusts: only layers whose exact type and behaviour it knows, whose tensors serve their call alone,
take part in a fold; a model's own hooks are refused; and the folded model's tensors are ordinary, trainable or
frozen as their sources were."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from core.engine.certify import certify
from core.engine.fold import fold
from core.engine.kinds import is_linear
from core.errors import FoldError
from properties.strategies.models import model_cases
from properties.strategies.trust import HookCase, RereadCase, hook_cases, reread_cases


def linears_of(model):
    return [layer for layer in (model.layers if hasattr(model, "layers") else model) if is_linear(layer)]


@given(model_cases(), st.data())
def test_folded_linears_keep_their_sources_requires_grad(case, data):
    """requires_grad(fold(m)[k]) = requires_grad(W of m's k-th Linear) for every Linear k, folded or not.

    A folded Linear replaces its source; a frozen source must stay frozen (and a trainable one
    trainable), or `model.requires_grad_(False)` followed by fold leaves a half-trainable model.
    """
    model, _ = case.build()
    sources = linears_of(model)
    frozen = data.draw(st.lists(st.booleans(), min_size=len(sources), max_size=len(sources)))
    for layer, freeze in zip(sources, frozen):
        layer.requires_grad_(not freeze)
    folded, _ = fold(model)
    assert [layer.weight.requires_grad for layer in linears_of(folded)] == [not f for f in frozen]
    assert [layer.bias.requires_grad for layer in linears_of(folded) if layer.bias is not None] == [
        not f for f, layer in zip(frozen, linears_of(folded)) if layer.bias is not None]


@given(model_cases())
def test_fold_under_inference_mode_gives_ordinary_tensors(case):
    """∀ p ∈ params(fold(m)) ∪ buffers: ¬p.is_inference(), even when fold runs under torch.inference_mode().

    fold builds every tensor of the result outside inference mode, so the folded model can be
    trained or updated in place like the original.
    """
    model, _ = case.build()
    with torch.inference_mode():
        folded, _ = fold(model)
    assert not any(t.is_inference() for t in (*folded.parameters(), *folded.buffers()))


class ShiftedLinear(nn.Linear):
    """A Linear subclass whose forward differs from its kind's map."""

    def forward(self, x):
        return super().forward(x) + 1


class ScaledBatchNorm(nn.BatchNorm1d):
    def forward(self, x):
        return 2 * super().forward(x)


def eval_bn(width, generator):
    bn = nn.BatchNorm1d(width)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(width, generator=generator))
        bn.running_var.copy_(torch.rand(width, generator=generator) + 0.5)
    return bn.eval()


def shifted_linear(fan_in, fan_out, generator):
    layer = ShiftedLinear(fan_in, fan_out, device="meta")
    layer.weight = nn.Parameter(torch.randn(fan_out, fan_in, generator=generator))
    layer.bias = nn.Parameter(torch.randn(fan_out, generator=generator))
    return layer


def with_hook(layer):
    layer.register_forward_hook(lambda module, inputs, out: out * 3)
    return layer


@pytest.mark.parametrize("build, reason", [
    (lambda g: nn.Sequential(shifted_linear(3, 4, g), eval_bn(4, g)), "ShiftedLinear '0' is a subclass of Linear"),
    (lambda g: nn.Sequential(eval_bn(3, g), shifted_linear(3, 4, g)), "ShiftedLinear '1' is a subclass of Linear"),
    (lambda g: nn.Sequential(nn.Linear(3, 4), with_hook(eval_bn(4, g))), "has a hook registered"),
    (lambda g: nn.Sequential(with_hook(nn.Linear(3, 4)), eval_bn(4, g)), "has a hook registered"),
    (lambda g: nn.Sequential(nn.Linear(3, 4), ScaledBatchNorm(4).eval()), "is a subclass of BatchNorm1d"),
])
def test_layers_fold_cannot_prove_are_kept_and_reported(build, reason):
    """A subclass of a known kind, or a layer with a hook, takes part in no fold: fold(m)(x) = m(x) bit for bit.

    Such a layer's call may differ from its kind's map (the subclass adds 1, the hook scales by 3):
    folding through it would be off by far more than the certified bound, so it is kept and reported.
    """
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # nn.Linear(3, 4) draws its init from the global RNG: keep that state unchanged
        model = build(g).eval()
    folded, report = fold(model)
    assert not report.folded and len(report.kept) == 1 and reason in report.kept[0].reason
    x = torch.randn(5, 3, generator=g)
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


@given(reread_cases())
@example(RereadCase("dtype", 2, *(torch.ones(2, 2), torch.ones(2), torch.ones(4, 2)), torch.ones(1, 2, 2, 2)))
@example(RereadCase("shape", 0, *(torch.ones(3, 3), torch.zeros(3), torch.ones(4, 3)), torch.ones(2, 3)))
@example(RereadCase("tied_function", 0, *(torch.eye(2), torch.ones(2), torch.ones(4, 2)), torch.ones(1, 2)))
def test_a_pair_whose_tensors_forward_reads_elsewhere_is_kept(case):
    """A layer or BatchNorm whose tensors forward reads besides calling it (x.to(conv.weight.dtype),
    y * lin.weight.shape[0], F.linear(y, lin.weight), bn.weight, a module tied to the weight) takes part in no
    fold: fold(m)(x) = m(x), torch.equal, and the report says what reads it.

    Folding gives the folded layer new tensors; the other reader would keep the original weight beside the
    folded bias (a silently wrong model), or lose the tie.
    """
    model, x = case.build()
    folded, report = fold(model)
    assert report.folded == () and len(report.kept) == 1
    assert "read elsewhere in forward" in report.kept[0].reason or "(tied)" in report.kept[0].reason
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


@given(hook_cases())
@example(HookCase("model", "forward", 10.0, torch.eye(2), torch.ones(2), torch.ones(4, 2), torch.ones(1, 2)))
def test_a_hook_at_any_level_is_kept_with_its_layer_or_refused_on_the_model(case):
    """A hook on the model itself ⇒ FoldError (torch.fx traces forward, not the hook); a hook on a block, the layer
    or the BatchNorm ⇒ that pair takes part in no fold; on the activation ⇒ the pair folds. Whatever folds, the
    certificate holds: fold(m) computes m, hooks included.

    A hooked module stays one call in the trace, so its hook runs in the folded model as in m; only the model's own
    hooks would be lost, so fold refuses them rather than drop them.
    """
    model, x = case.build()
    if case.place == "model":
        with pytest.raises(FoldError, match="has a hook registered on the model itself"):
            fold(model)
        return
    folded, report = fold(model)
    assert len(report.folded) == (case.place == "activation")
    assert certify(model, folded, x, report).holds
