"""Laws of the layer-kind table (core.engine.kinds): each entry reads and rebuilds its layers faithfully, and every
kind has its rule, a strategy that draws it and its law."""

from fractions import Fraction

import torch
from hypothesis import example, given, note
from hypothesis import strategies as st

from core.engine.bound import rules
from core.engine.bound.rounding import ETA64, U64, rounding_bound
from core.engine.kinds import (
    KINDS,
    ElementwiseKind,
    LinearKind,
    NormKind,
    fan_in,
    hooked,
    is_linear,
    is_norm,
    kind_of,
    norm_width,
    rebuild_as,
)
from core.makemore.layers import BatchNorm1d, Linear
from properties.engine.test_bound_rules import rule_name
from properties.engine.test_bound_spec import ELEMENTWISE_SPECS, MAP_SPECS
from properties.engine.test_bound_tightness import TIGHT_CASES
from properties.strategies.kinds import KIND_STRATEGIES, inputs_for

ROLE_PARTNER = {Linear: torch.nn.Linear, torch.nn.Linear: Linear, BatchNorm1d: torch.nn.BatchNorm1d,
                torch.nn.BatchNorm1d: BatchNorm1d}


def layers_and_inputs(types):
    """(layer, x): a layer of one of `types` from its kind's strategy and a float64 batch of inputs it accepts."""
    def with_input(layer):
        return st.tuples(st.just(layer), inputs_for(layer))
    return st.sampled_from(types).flatmap(lambda t: KIND_STRATEGIES[t]).flatmap(with_input)


def missing_parts(kinds: dict, strategies: dict, specs: dict, tight: dict) -> list[str]:
    """What each registered kind lacks of what every kind needs: a rule of core.engine.bound.rules, a strategy that
    draws it, and its rule's laws: the documented formula (test_bound_spec) and a case where the rule is attained
    (test_bound_tightness)."""
    missing = []
    for layer_type, kind in sorted(kinds.items(), key=lambda item: str(item[0])):
        rule = getattr(kind, "rule", None)
        if getattr(rules, getattr(rule, "__name__", ""), None) is not rule:
            missing.append(f"{layer_type.__name__}: a rule of core.engine.bound.rules")
        if layer_type not in strategies:
            missing.append(f"{layer_type.__name__}: a strategy in KIND_STRATEGIES")
        if rule is not None and rule_name(kind) not in specs:
            missing.append(f"{layer_type.__name__}: the law of its rule (a spec in test_bound_spec)")
        if rule is not None and rule_name(kind) not in tight:
            missing.append(f"{layer_type.__name__}: a case where its rule is attained (test_bound_tightness)")
    return missing


class Mish(torch.nn.Mish):
    """A layer type no one has registered."""


def test_every_kind_has_its_rule_its_strategy_and_its_law():
    """∀ T ∈ dom(KINDS): KINDS[T].rule ∈ core.engine.bound.rules, T ∈ dom(KIND_STRATEGIES), and the rule has its spec
    law and its tightness case: adding a layer kind means its entry, its rule, its strategy and its laws, and a kind
    without any fails here.

    A kind registered bare (here a Mish with a rule of its own and nothing else) is named with all it lacks.
    """
    specs = {**MAP_SPECS, **ELEMENTWISE_SPECS}
    assert missing_parts(KINDS, KIND_STRATEGIES, specs, TIGHT_CASES) == []
    bare = ElementwiseKind(Mish, lambda layer, x, D, u, eta: D, lambda layer: Mish())
    assert missing_parts({**KINDS, Mish: bare}, KIND_STRATEGIES, specs, TIGHT_CASES) == [
        "Mish: a rule of core.engine.bound.rules", "Mish: a strategy in KIND_STRATEGIES",
        "Mish: the law of its rule (a spec in test_bound_spec)",
        "Mish: a case where its rule is attained (test_bound_tightness)"]
    assert set(KIND_STRATEGIES) == set(KINDS)


@given(st.sampled_from(sorted(KINDS, key=str)).flatmap(lambda t: st.tuples(st.just(t), KIND_STRATEGIES[t])))
def test_strategies_draw_their_kind(drawn):
    """type(draw(KIND_STRATEGIES[T])) = T, in eval mode: each strategy draws exactly the kind it is keyed by."""
    layer_type, layer = drawn
    assert type(layer) is layer_type and not layer.training


@given(layers_and_inputs([t for t, k in KINDS.items() if not isinstance(k, LinearKind)]))
def test_rebuilding_from_the_kind_is_exact(case):
    """build(read(layer))(x) = layer(x) bit for bit, read = terms (BatchNorm) or nothing (elementwise).

    The rebuilt layer holds the same tensors in the same layout and calls the same op.
    """
    layer, x = case
    kind = kind_of(layer)
    rebuilt = rebuild_as(layer, type(layer)).eval()
    if isinstance(kind, NormKind):
        assert rebuilt.momentum == layer.momentum
    with torch.no_grad():
        assert torch.equal(rebuilt(x), layer(x))


@given(layers_and_inputs([t for t, k in KINDS.items() if isinstance(k, LinearKind)]))
@example((KINDS[Linear].build(torch.tensor([[5e-10], [3e-10]], dtype=torch.float64), None),
          torch.tensor([[7e-300, 2e-300]], dtype=torch.float64)))  # both products underflow
def test_linear_matrix_is_the_map(case):
    """|layer(x) − (x·W + b)| ≤ γ(n+1)·(|x|·|W| + |b|) + n·2⁻¹⁰⁷⁴, W = kind.matrix(layer) (fan_in, fan_out), float64.

    layer(x) and the exact x·W + b differ only by the n products and n additions (bias included)
    of each output, each a rounding of at most u = 2⁻⁵³, in whatever order the kernel sums, plus
    2⁻¹⁰⁷⁵ for each product that underflows.
    """
    layer, x = case
    kind = kind_of(layer)
    W, b = kind.matrix(layer).detach(), kind.bias(layer)
    b = torch.zeros(W.shape[1], dtype=W.dtype) if b is None else b.detach()
    exact = [[sum(Fraction(x[r, i].item()) * Fraction(W[i, j].item()) for i in range(W.shape[0]))
              + Fraction(b[j].item())
              for j in range(W.shape[1])] for r in range(x.shape[0])]
    with torch.no_grad():
        got = layer(x)
    err = torch.tensor([[abs(Fraction(got[r, j].item()) - e) for j, e in enumerate(row)]
                        for r, row in enumerate(exact)],
                       dtype=torch.float64)  # one rounding of an exact difference: sound against a float64 bound
    n = W.shape[0]
    # The bound is evaluated in float64: γ's division, the n + 1 magnitudes summed and the product are
    # n + 3 roundings, so the computed value times 1 + γ(n + 3) is at least the exact bound; a product that
    # underflows loses at most η = 2⁻¹⁰⁷⁴ more, n of them in all (docs/design-conv.md).
    bound = (rounding_bound(n + 1, U64) * (x.abs() @ W.abs() + b.abs()) * (1 + rounding_bound(n + 3, U64))
             + 2 * n * ETA64)
    note(f"max err {err.max().item():.3e}, max bound {bound.max().item():.3e}")
    assert (err <= bound).all()


@given(layers_and_inputs(list(ROLE_PARTNER)))
def test_rebuilding_as_the_other_family_keeps_the_map(case):
    """rebuild_as(layer, T')(x) = layer(x) within 2γ(n+1)(|x||W| + |b|) + 2n·2⁻¹⁰⁷⁴ (Linear), or exactly (BatchNorm).

    A rebuilt BatchNorm calls the same op on the same tensors. A rebuilt Linear holds W transposed, so
    the kernel may sum in another order: each side is within the bound of test_linear_matrix_is_the_map
    of the exact map, hence within twice it of each other.
    """
    layer, x = case
    other = rebuild_as(layer, ROLE_PARTNER[type(layer)]).eval()
    assert type(other) is ROLE_PARTNER[type(layer)]
    with torch.no_grad():
        ours, theirs = layer(x), other(x)
    kind = kind_of(layer)
    if isinstance(kind, NormKind):
        assert torch.equal(ours, theirs)
        return
    W, b = kind.matrix(layer).detach(), kind.bias(layer)
    b = 0 if b is None else b.detach().abs()
    n = W.shape[0]
    # each side: n products, each off by at most 2⁻¹⁰⁷⁵ to underflow
    bound = (rounding_bound(n + 1, U64) * (x.abs() @ W.abs() + b) * (1 + rounding_bound(n + 3, U64)) + n * ETA64)
    assert ((ours - theirs).abs() <= 2 * bound).all()


@given(layers_and_inputs(list(ROLE_PARTNER)), st.sampled_from(["same", "partner"]))
def test_rebuilt_layers_hold_copies(case, family):
    """rebuild_as(layer, T) shares no storage with layer: changing the source later leaves the rebuilt map as it was.

    rebuild_as reads the kind's tensors and builds the new layer from clones of them.
    """
    layer, x = case
    other = rebuild_as(layer, type(layer) if family == "same" else ROLE_PARTNER[type(layer)]).eval()
    with torch.no_grad():
        before = other(x)
        for t in list(layer.parameters()) + list(layer.buffers()):
            if t.is_floating_point():  # not torch's num_batches_tracked counter
                t.add_(1.0)
        assert torch.equal(other(x), before)


@given(st.sampled_from(sorted(KINDS, key=str)).flatmap(lambda t: KIND_STRATEGIES[t]))
def test_widths_are_read_from_the_kind(layer):
    """fan_in(L) = rows of kind.matrix(L) (the x·W layout, whatever the family); norm_width(B) = len(μ)."""
    kind = kind_of(layer)
    if isinstance(kind, LinearKind):
        assert fan_in(layer) == (layer.weight.shape[0] if type(layer) is Linear else layer.in_features)
        assert is_linear(layer) and not is_norm(layer)
    elif isinstance(kind, NormKind):
        assert norm_width(layer) == (layer.dim if type(layer) is BatchNorm1d else layer.num_features)
        assert is_norm(layer) and not is_linear(layer)
    else:
        assert not is_linear(layer) and not is_norm(layer)


def test_roles_do_not_mix():
    """rebuild_as refuses a target of another role, naming both types."""
    linear = KINDS[Linear].build(torch.ones(2, 3, dtype=torch.float64), None)
    try:
        rebuild_as(linear, BatchNorm1d)
    except TypeError as e:
        assert str(e) == "a Linear cannot become a BatchNorm1d: they play different roles"
    else:
        raise AssertionError("a Linear became a BatchNorm1d")


def test_subclasses_and_hooked_layers_are_not_assumed():
    """kind_of looks up the exact type: a subclass may override forward. hooked(L) ⟺ a hook is registered on L,
    or L lacks one of the hook dictionaries hooked reads (it fails safe)."""
    class Scaled(Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert kind_of(Scaled.from_tensors(torch.ones(2, 2), None)) is None
    assert kind_of(torch.nn.Module()) is None
    layer = torch.nn.Tanh()
    assert not hooked(layer)
    for register in (layer.register_forward_hook, layer.register_forward_pre_hook,
                     layer.register_full_backward_hook, layer.register_full_backward_pre_hook):
        handle = register(lambda *args: None)
        assert hooked(layer)
        handle.remove()
        assert not hooked(layer)
    object.__delattr__(layer, "_forward_hooks")  # as if a torch release renamed it: fold must not trust the layer
    assert hooked(layer)


def batchnorm(layer_type, dim, momentum, affine, dtype, device):
    """A core or torch.nn BatchNorm1d built by its own constructor (not through the table under test)."""
    if layer_type is BatchNorm1d:
        return BatchNorm1d(dim, momentum=momentum, affine=affine, dtype=dtype, device=device)
    return torch.nn.BatchNorm1d(dim, momentum=momentum, affine=affine, dtype=dtype, device=device)


@given(st.sampled_from([BatchNorm1d, torch.nn.BatchNorm1d]), st.sampled_from([BatchNorm1d, torch.nn.BatchNorm1d]),
       st.integers(1, 4), st.none() | st.floats(0, 1), st.booleans(), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from(["cpu", "meta"]))
def test_rebuilt_batchnorms_keep_momentum_affinity_dtype_and_device(source, target, dim, momentum, affine, dtype,
                                                                    device):
    """rebuild_as(B, T) is in eval mode and has B's momentum, affine flag (as many parameters), dtype and device.

    The table carries the momentum alongside the terms, and builds on the terms' dtype and device: a
    meta-device BatchNorm rebuilds on meta, where any tensor built elsewhere could not be filled.
    torch's momentum None (a cumulative average) has no core counterpart: a core rebuild takes the
    notebook's 0.1.
    """
    if momentum is None and source is BatchNorm1d:
        source = torch.nn.BatchNorm1d  # only torch's BatchNorm1d takes momentum None
    bn = batchnorm(source, dim, momentum, affine, dtype, device)
    rebuilt = rebuild_as(bn, target)
    assert type(rebuilt) is target and not rebuilt.training
    assert rebuilt.momentum == (0.1 if momentum is None and target is BatchNorm1d else momentum)
    assert len(list(rebuilt.parameters())) == len(list(bn.parameters())) == (2 if affine else 0)
    assert all(t.dtype == dtype and t.device.type == device for t in list(rebuilt.parameters()) + [
        rebuilt.running_mean, rebuilt.running_var])
