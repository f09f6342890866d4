"""Laws of folding whole conv nets read as graphs: random nets of 1..5 blocks (conv/BN pairs both ways, runs,
residual adds, concatenations, shared and multi-user tensors, depthwise and transposed convs, squeeze-excitation,
pooling, hooked and subclassed BNs) in 1, 2 or 3 spatial dims, with a Flatten or Linear head."""

import torch
from hypothesis import example, given, note

from core.engine.fold import fold
from core.engine.kinds import is_batchnorm
from core.engine.plan import plan_folds
from properties.checks import assert_fold_within_bound
from properties.strategies.nets import MODELLED_BLOCKS, NetCase, net_cases
from properties.strategies.values import F64


def batchnorms(model) -> dict:
    return {name: m for name, m in model.named_modules() if is_batchnorm(m)}


@given(net_cases())
@example(NetCase(2, 2, 3, ("bn_conv", "shared", "two_users", "bn_after_add"), "flatten_linear", 2))
@example(NetCase(3, 1, 2, ("transposed", "bn_run", "concat", "squeeze_excite"), "linear_bn", 1, F64))
@example(NetCase(1, 3, 4, ("depthwise", "bn_conv_zero_padded", "hooked", "pool", "residual"), "none", 2))
@example(NetCase(2, 1, 2, ("subclass", "pool", "pool", "bn_conv"), "flatten_linear", 1))
def test_every_bn_is_folded_or_kept_by_the_rule(case):
    """{BNs of m} = {p.bn} ⊎ {k.bn}; a BN folds iff its edge allows it, else its reason says why; the BNs
    left in fold(m) are exactly the kept ones, unchanged.

    Each block decides its BNs alone (every block ends with an op that is no affine layer): a BN after a conv
    that only it uses folds after; a BN whose only user is a conv with no zero-padded border (or a Flatten into
    a Linear) folds before; a BN after an add, after a conv with other users, with two users, hooked or
    subclassed is kept, and the reason names that.
    """
    model, _, expected = case.build()
    folded, report = fold(model)
    names = set(batchnorms(model))
    folded_names = [p.bn for p in report.folded]
    kept = {k.bn: k.reason for k in report.kept}
    assert names == set(expected) == set(folded_names) | set(kept) and not set(folded_names) & set(kept)
    for name, expect in expected.items():
        assert (name in folded_names) == (expect == "folded"), (name, expect, kept.get(name))
        if expect != "folded":
            assert expect in kept[name], (name, kept[name])
    left = batchnorms(folded)
    assert set(left) == set(kept)
    for name, bn in left.items():
        original = model.get_submodule(name).state_dict()
        assert all(torch.equal(v, original[k]) for k, v in bn.state_dict().items())


@given(net_cases(blocks=MODELLED_BLOCKS))
@example(NetCase(2, 2, 3, ("conv_bn", "residual", "concat", "squeeze_excite"), "flatten_linear", 2))
@example(NetCase(1, 1, 2, ("bn_run", "transposed", "depthwise"), "linear_bn", 1, F64))
def test_random_net_within_bound(case):
    """|m(X) − fold(m)(X)| ≤ error_bound(m, X) elementwise, float32 and float64.

    The folds apply one at a time along graph edges; each pair bound is carried through every node downstream
    of its pair by that node's rule (adds, concatenations, products, pooling, activations), and the per-fold
    bounds add up (docs/design-conv.md).
    """
    model, X, _ = case.build()
    assert_fold_within_bound(model, X)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


@given(net_cases())
def test_fold_of_a_graph_is_pure(case):
    """state(m) and m's training flags are the same before and after fold(m); fold(m) shares no storage with m and
    each of its modules has the training flag of m's module of that name, containers (m.layers) included.

    fold traces m (which reads it), folds into new layers and deep-copies every module and attribute it keeps;
    the containers torch.fx builds to hold them are new modules, given m's flags.
    """
    model, _, _ = case.build()
    before, flags = snapshot(model)
    folded, _ = fold(model)
    after, flags_after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert flags == flags_after and folded.training == model.training
    modes = [(name, m.training) for name, m in folded.named_modules()]
    assert modes == [(name, model.get_submodule(name).training) for name, _ in modes]
    ours = {t.data_ptr() for t in model.state_dict().values()}
    assert ours.isdisjoint(t.data_ptr() for t in folded.state_dict().values())


@given(net_cases())
def test_fold_of_a_graph_is_idempotent(case):
    """fold(fold(m)) = fold(m): nothing left to fold, same module types and tensors (torch.equal), same outputs.

    A BN left by fold has no edge to fold along, and tracing the folded GraphModule gives back its graph.
    """
    model, X, _ = case.build()
    once, _ = fold(model)
    twice, report = fold(once)
    assert report.folded == ()
    assert [type(m).__name__ for m in once.modules()] == [type(m).__name__ for m in twice.modules()]
    a, b = snapshot(once), snapshot(twice)
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1] == b[1]
    with torch.no_grad():
        assert torch.equal(once(X), twice(X))


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@given(net_cases())
@example(NetCase(2, 2, 3, ("conv_bn", "bn_run", "residual", "concat"), "flatten_linear", 2))
@torch.no_grad()
def test_a_stage_evaluated_from_the_last_one_has_the_values_of_a_fresh_evaluation(case):
    """For each stage k of the plan (folds 1..k applied), evaluating from stage k − 1's values only the nodes of fold
    k and those downstream gives every node the value a fresh evaluation of stage k gives, torch.equal; the first
    stage outputs m(X) and the last fold(m)(X), torch.equal.

    error_bound evaluates its stages that way: a node upstream of fold k reads the same inputs and modules in both
    stages, so its value carries over; every other node is computed again. A stage runs m's graph with the folded
    layers and the folded BatchNorms passing their input on, as fold(m) does.
    """
    model, X, _ = case.build()
    plan = plan_folds(model)
    graph, steps = plan.graph, plan.steps
    modules, bypassed = dict(graph.modules), set()
    env = graph.values(modules, bypassed, (X,))
    assert same(env[graph.nodes[-1]], model(X))
    for k, (step, layer) in enumerate(zip(steps, plan.layers)):
        modules[step.layer.target] = layer
        bypassed.add(step.bn)
        env = graph.values(modules, bypassed, (X,), env, changed=(step.layer, step.bn))
        fresh = graph.values(modules, bypassed, (X,))
        stale = [node.name for node in fresh if not same(env[node], fresh[node])]
        note(f"stage {k + 1} of {len(steps)}: nodes whose values differ {stale}")
        assert env.keys() == fresh.keys() and stale == []
    assert same(env[graph.nodes[-1]], fold(model)[0](X))
