"""Laws of folding whole models (CharMLP and torch.nn.Sequential): the propagated bound, the report's
kept BatchNorms, purity and idempotence."""

import torch
from hypothesis import example, given

from core.engine.fold import fold
from core.engine.kinds import is_linear, is_norm
from properties.checks import assert_fold_within_bound
from properties.strategies.models import ModelCase, model_cases

F64 = torch.float64


def layer_list(model):
    return list(model.layers if hasattr(model, "layers") else model)


@given(model_cases())
@example(ModelCase("torch", (3, 2), (("tanh", "bn"), ("bn", "tanh", "bn")), 1))
@example(ModelCase("core", (1, 1, 1), (("bn",), ("bn", "bn"), ("relu", "bn", "relu")), 5, F64))
@example(ModelCase("charmlp", (4, 32, 32, 32, 32, 32, 27), (("tanh",),) + (("bn", "tanh"),) * 5 + (("bn",),), 64))
def test_model_within_propagated_bound(case):
    """|model(X) − fold(model)(X)| ≤ error_bound(model, X), elementwise, in eval mode.

    fold applies single folds M₀ → M₁ → … → M_K, and |M₀ − M_K| ≤ Σ_k |M_{k−1} − M_k|; each term
    is a pair bound (identical inputs at the pair) carried through the shared layers after it,
    each of which is Lipschitz (|W|, |s|, 1 for tanh and ReLU) plus its own rounding on both sides.
    """
    model, X = case.build()
    assert_fold_within_bound(model, X)


def stays(layers, i):
    """BN i stays iff its run of adjacent BNs touches no Linear on either side (fold's rule, restated)."""
    lo, hi = i, i
    while lo > 0 and is_norm(layers[lo - 1]):
        lo -= 1
    while hi + 1 < len(layers) and is_norm(layers[hi + 1]):
        hi += 1
    return not (lo > 0 and is_linear(layers[lo - 1])) and not (hi + 1 < len(layers) and is_linear(layers[hi + 1]))


@given(model_cases())
@example(ModelCase("torch", (2, 2), (("relu", "bn", "tanh"), ("tanh", "bn")), 2))
def test_kept_bns_are_those_reported(case):
    """BNs(fold(m)) = [m[i] for i in report.kept] (same order, equal tensors), kept = {i : BN i's run has no Linear
    neighbour}.

    A BN folds into a Linear next to its run of BNs; any other is copied unchanged, and the
    report names each with a reason. Folded BNs leave no trace but a FoldedPair.
    """
    model, _ = case.build()
    folded, report = fold(model)
    layers = layer_list(model)
    bn_indices = [i for i, layer in enumerate(layers) if is_norm(layer)]
    kept = [int(k.bn) for k in report.kept]
    assert kept == [i for i in bn_indices if stays(layers, i)]
    assert sorted(kept + [int(p.bn) for p in report.folded]) == bn_indices
    left = [layer for layer in layer_list(folded) if is_norm(layer)]
    assert len(left) == len(kept)
    for index, kept_bn in zip(kept, left):
        original = layers[index].state_dict()
        assert all(torch.equal(v, original[k]) for k, v in kept_bn.state_dict().items())
    assert all(k.reason.startswith(f"{type(layers[int(k.bn)]).__name__} '{k.bn}'")
               and "not a Linear or convolution" in k.reason for k in report.kept)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


@given(model_cases())
def test_fold_is_pure(case):
    """state(m) and the training flags of m are the same before and after fold(m), and fold(m) shares no storage with m.

    fold reads the input's tensors, computes new ones in float64 and deep-copies every layer it
    keeps; it never calls eval()/train() on the input.
    """
    model, _ = case.build()
    before, flags = snapshot(model)
    folded, _ = fold(model)
    after, flags_after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert flags == flags_after
    ours = {t.data_ptr() for t in model.state_dict().values()}
    assert ours.isdisjoint(t.data_ptr() for t in folded.state_dict().values())


@given(model_cases())
def test_fold_is_idempotent(case):
    """fold(fold(m)) = fold(m): same layer types, equal tensors (torch.equal), same flags, and nothing left to fold.

    After folding, every BN left sits in a run with no Linear neighbour, and copying layers does not
    change them: a second fold has no pair to fold and copies everything.
    """
    model, X = case.build()
    once, _ = fold(model)
    twice, report = fold(once)
    assert report.folded == ()
    assert [type(m) for m in once.modules()] == [type(m) for m in twice.modules()]
    a, b = snapshot(once), snapshot(twice)
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1] == b[1]
    with torch.no_grad():
        assert torch.equal(once(X), twice(X))
