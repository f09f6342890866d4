"""Init schemes: what each one sets, the recorded name, checkpoints, refusals, and symmetry breaking."""

import pytest
import torch

from core.engine.bound.rounding import rounding_bound, unit_roundoff
from core.makemore.checkpoint import load, save
from core.makemore.init import apply_init, parse_scheme
from core.makemore.layers import Linear, Tanh
from core.makemore.model import CharMLP, e01_mlp
from core.makemore.train import train

SCHEMES = ["kaiming", "kaiming(5/3)", "zeros", "constant(0.5)", "zero_last", "zero_last(5/3)",
           "zero_weights_random_bias"]


def linears(model):
    return [layer for layer in model.layers if isinstance(layer, Linear)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_builds_the_e01_net_and_is_recorded(scheme):
    model = e01_mlp(torch.Generator().manual_seed(0), init=scheme)
    assert model.init_scheme == scheme
    assert model.config()["init_scheme"] == scheme


def notebook_kaiming(fan_in, fan_out, gain, generator):
    """The notebook's init, in its own order: randn((fan_in, fan_out)) / fan_in**0.5, then *= gain."""
    w = torch.randn((fan_in, fan_out), generator=generator) / fan_in**0.5
    w *= gain
    return w


# The scheme computes z·fl(gain/√n) (√n and the quotient in float64, the product in float32): within 2u₃₂ plus
# 2u₆₄ of gain·z/√n. The notebook rounds √n to float32, divides, rounds the gain and multiplies: within
# 4u₃₂ + u₆₄. So they differ by at most γ₃₂(8) relative to either (γ(a) + γ(b) ≤ γ(a + b), and 3u₆₄ < u₃₂).
KAIMING_AGREEMENT = rounding_bound(8, unit_roundoff(torch.float32))


@pytest.mark.parametrize("scheme, gain", [("kaiming", 1.0), ("kaiming(5/3)", 5 / 3), ("zero_last(2)", 2.0)])
def test_kaiming_is_the_notebooks_init(scheme, gain):
    """kaiming(gain): each Linear in turn gets the notebook's gain·randn(fan_in, fan_out)/√fan_in and b = 0;
    zero_last the same for all but the output Linear, which is 0."""
    model = e01_mlp(torch.Generator().manual_seed(0), init="zeros")
    apply_init(model, scheme, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    layers = linears(model)
    for i, layer in enumerate(layers):
        expected = notebook_kaiming(*layer.weight.shape, gain, g)
        if scheme.startswith("zero_last") and i == len(layers) - 1:
            expected = torch.zeros_like(expected)
        assert ((layer.weight - expected).abs() <= KAIMING_AGREEMENT * expected.abs()).all(), i
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), i


def test_zeros_constant_and_zero_last_values():
    g = torch.Generator().manual_seed(0)
    for layer in linears(e01_mlp(g, init="zeros")):
        assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0
    for layer in linears(e01_mlp(g, init="constant(-0.25)")):
        assert torch.all(layer.weight == -0.25) and torch.all(layer.bias == -0.25)


def test_zero_weights_random_bias_values():
    """W = 0; each bias in turn is the generator's next standard-normal draw of its size."""
    model = e01_mlp(torch.Generator().manual_seed(0), init="zeros")
    apply_init(model, "zero_weights_random_bias", generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    for layer in linears(model):
        assert torch.count_nonzero(layer.weight) == 0
        assert torch.equal(layer.bias, torch.randn(layer.fan_out, generator=g))


def test_schemes_never_touch_the_global_rng():
    state = torch.random.get_rng_state()
    for scheme in SCHEMES:
        e01_mlp(torch.Generator().manual_seed(1), init=scheme)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_same_generator_same_weights():
    a, b = (e01_mlp(torch.Generator().manual_seed(4), init="zero_weights_random_bias") for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_scheme_name_survives_a_checkpoint(tmp_path):
    model = e01_mlp(torch.Generator().manual_seed(0), init="constant( 0.5 )")
    assert model.init_scheme == "constant(0.5)"
    save(model, tmp_path / "m.pt")
    assert load(tmp_path / "m.pt").init_scheme == "constant(0.5)"


@pytest.mark.parametrize("text, parsed", [
    ("zeros", ("zeros", None)), ("kaiming(5/3)", ("kaiming", 5 / 3)), ("constant(-1e-3)", ("constant", -1e-3)),
    (" zero_last ( 2 ) ", ("zero_last", 2.0)),
])
def test_parse_scheme(text, parsed):
    assert parse_scheme(text) == parsed


@pytest.mark.parametrize("text, message", [
    ("xavier", "unknown init scheme 'xavier'; choose one of kaiming, zeros"),
    ("constant", "needs a value, e.g. constant(0.5)"),
    ("zeros(1)", "takes no argument; write zeros"),
    ("kaiming(big)", "is not a number like 0.5 or 5/3"),
    ("constant(1/0)", "is not a number like 0.5 or 5/3"),
    ("constant(inf)", "is not a number like 0.5 or 5/3"),
    ("kaiming(5/3", "unknown init scheme 'kaiming(5/3'"),
    ("Zeros", "unknown init scheme 'Zeros'"),
])
def test_bad_scheme_names_say_what_to_write(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        e01_mlp(torch.Generator().manual_seed(0), init=text)


def hidden_unit_spread(model) -> float:
    layer, nxt = linears(model)[:2]
    units = torch.cat([layer.weight.T, layer.bias[:, None], nxt.weight], dim=1).detach()
    return ((units - units[:1]).abs().max() / units.abs().max()).item()


def test_constant_init_symmetry_is_unstable_at_a_large_learning_rate():
    """The limit of the constant(c) law: identical units are a fixed point, not an attracting one.

    A 1e-12 nudge to one unit of a 14-wide tanh layer grows past 1e-6 in 1000 steps at lr 0.5, so
    any rounding difference between units would too; the property keeps lr·T ≤ 1.
    """
    g = torch.Generator().manual_seed(2)
    f64 = torch.float64
    layers = [Linear(6, 14, generator=g, dtype=f64), Tanh(), Linear(14, 27, generator=g, dtype=f64)]
    model = apply_init(CharMLP(torch.randn(27, 3, generator=g, dtype=f64), layers, 2), "constant(0.274)", generator=g)
    with torch.no_grad():
        model.layers[0].bias[0] += 1e-12 * 0.274
    X = torch.randint(0, 27, (27, 2), generator=g)
    Y = torch.arange(27)
    assert 0 < hidden_unit_spread(model) <= 2e-12
    train(model, X, Y, 1000, batch_size=32, lr=0.5, generator=g, progress=False)
    assert hidden_unit_spread(model) > 1e-6


@pytest.mark.parametrize("scheme", [None, 0.5, b"zeros"])
def test_a_scheme_that_is_not_a_string_is_refused_by_name(scheme):
    with pytest.raises(ValueError, match=f"unknown init scheme {scheme!r}; choose one of kaiming, zeros"):
        parse_scheme(scheme)
