"""Laws of the layer-kind table (core.kinds): each entry reads and rebuilds its layers faithfully, and every
kind has a strategy that draws it."""

from fractions import Fraction

import torch
from hypothesis import given, note
from hypothesis import strategies as st

from core.bound import ETA64, U64, rounding_bound
from core.kinds import KINDS, LinearKind, NormKind, kind_of, rebuild_as
from core.layers import BatchNorm1d, Linear
from properties.strategies import KIND_STRATEGIES, inputs_for

ROLE_PARTNER = {Linear: torch.nn.Linear, torch.nn.Linear: Linear, BatchNorm1d: torch.nn.BatchNorm1d,
                torch.nn.BatchNorm1d: BatchNorm1d}


def layers_and_inputs(types):
    """(layer, x): a layer of one of `types` from its kind's strategy and a float64 batch of inputs it accepts."""
    def with_input(layer):
        return st.tuples(st.just(layer), inputs_for(layer))
    return st.sampled_from(types).flatmap(lambda t: KIND_STRATEGIES[t]).flatmap(with_input)


def test_every_kind_has_a_strategy():
    """dom(KIND_STRATEGIES) = dom(KINDS): a new layer kind without a strategy would have no laws drawn for it."""
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
def test_linear_matrix_is_the_map(case):
    """|layer(x) − (x·W + b)| ≤ γ(n+1)·(|x|·|W| + |b|), W = kind.matrix(layer) (fan_in, fan_out), in float64.

    layer(x) and the exact x·W + b differ only by the n products and n additions (bias included)
    of each output, each a rounding of at most u = 2⁻⁵³, in whatever order the kernel sums.
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
    """rebuild_as(layer, T')(x) = layer(x) within 2γ(n+1)(|x||W| + |b|) (Linear) or exactly (BatchNorm, same op)."""
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
    assert ((ours - theirs).abs() <= 2 * rounding_bound(W.shape[0] + 1, U64) * (x.abs() @ W.abs() + b)).all()
