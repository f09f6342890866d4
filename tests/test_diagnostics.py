"""Diagnostics: hook-based stats match a plain forward pass, leave the model untouched, and record training."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.diagnostics import SATURATION, LayerProbe, Recorder, alive, diagnose, output_bias, std_ratio
from core.layers import BatchNorm1d, Tanh
from core.kinds import hooked
from core.model import e01_mlp, e02_mlp
from core.train import train


def batch(rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 27, (rows, 4), generator=g), torch.randint(0, 27, (rows,), generator=g)


def e01(init="kaiming(5/3)", seed=0):
    return e01_mlp(torch.Generator().manual_seed(seed), init=init)


def outputs_by_hand(model, X):
    """Every layer's output from calling the layers one by one."""
    x, outs = F.embedding(X, model.C).view(X.shape[0], -1), []
    for layer in model.layers:
        x = layer(x)
        outs.append(x)
    return outs


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_probe_stats_match_a_plain_forward():
    model, (X, Y) = e01(), batch()
    with LayerProbe(model, keep_outputs=True) as probe:
        model.loss(X, Y).backward()
    for i, out in enumerate(outputs_by_hand(model, X)):
        stats = probe.layers[i]
        assert torch.equal(probe.outputs[i], out.detach())
        assert stats.kind == type(model.layers[i]).__name__
        assert stats.mean == pytest.approx(out.double().mean().item(), rel=1e-12, abs=1e-15)
        assert stats.std == pytest.approx(out.double().std(correction=0).item(), rel=1e-12)
        assert stats.saturation == (out.abs() > SATURATION).double().mean().item()
        assert probe.output_grads[i].shape == out.shape and stats.grad_std > 0


def test_probe_hooks_are_removed_and_nothing_is_stored_on_layers():
    model, (X, Y) = e01(), batch()
    with LayerProbe(model):
        model.loss(X, Y)
    assert not any(hooked(layer) for layer in model.layers)
    assert not any(hasattr(layer, "out") for layer in model.layers)


def test_diagnose_gradient_ratios():
    model, (X, Y) = e01(), batch()
    report = diagnose(model, X, Y, lr=0.1)
    params = dict(model.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(model.loss(X, Y), list(params.values()))))
    assert report.loss == model.loss(X, Y).item()
    for s in report.params:
        g, p = grads[s.name], params[s.name]
        assert s.shape == tuple(p.shape)
        assert s.grad_data == std_ratio(g, p)
        assert s.update_data == pytest.approx(0.1 * s.grad_data, rel=1e-6)  # lr·g in float32 vs 0.1·ratio in float64


def test_diagnose_on_zero_init_reports_dead_layers():
    model = e01("zeros")
    report = diagnose(model, *batch())
    assert [s.std for s in report.layers[:8]] == [0.0] * 8
    by_name = {s.name: s for s in report.params}
    assert by_name[output_bias(model)].grad_std > 0
    assert all(s.grad_std == 0 for name, s in by_name.items() if name != output_bias(model))
    assert math.isnan(by_name["layers.0.weight"].grad_data)  # 0 / 0: a constant parameter with no gradient


@pytest.mark.parametrize("training", [True, False])
def test_diagnostics_leave_the_model_unchanged(training):
    model = e02_mlp(torch.Generator().manual_seed(0)).train(training)
    X, Y = batch()
    before = state(model)
    diagnose(model, X, Y)
    alive(model, X, Y)
    assert_same_state(model, before)
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    assert not any(hooked(layer) for layer in model.layers)


def test_alive():
    X, Y = batch()
    assert alive(e01("zeros"), X, Y) == [output_bias(e01())]
    kaiming = e01()
    assert alive(kaiming, X, Y) == [name for name, _ in kaiming.named_parameters()]
    last = len(kaiming.layers) - 1
    assert set(alive(e01("zero_last"), X, Y)) == {f"layers.{last}.weight", f"layers.{last}.bias"}


def test_recorder_on_zero_init():
    model, (X, Y) = e01("zeros"), batch(rows=500)
    with Recorder(model, every=10) as rec:
        train(model, X, Y, 30, generator=torch.Generator().manual_seed(1), progress=False, on_step=rec.on_step)
    out = output_bias(model)
    assert rec.alive == rec.changed == [out]
    assert rec.first_grad[out] == rec.first_change[out] == 0
    assert rec.first_grad["C"] is None
    ratios = rec.update_data[out]
    assert [step for step, _ in ratios] == [9, 19, 29]
    assert all(r > 0 for _, r in ratios)
    assert all(not p._backward_hooks for p in model.parameters())


def test_recorder_sees_zero_last_wake_up_after_one_step():
    model, (X, Y) = e01("zero_last"), batch(rows=500)
    with Recorder(model) as rec:
        train(model, X, Y, 3, generator=torch.Generator().manual_seed(1), progress=False, on_step=rec.on_step)
    expected = {name: (0 if name.startswith("layers.8.") else 1) for name in rec.names}
    assert rec.first_grad == expected == rec.first_change


def test_recorder_without_updates_sees_no_change():
    model, (X, Y) = e01(), batch()
    with Recorder(model) as rec:
        train(model, X, Y, 2, lr=0.0, generator=torch.Generator().manual_seed(1), progress=False, on_step=rec.on_step)
    assert rec.changed == [] and rec.alive == rec.names


def test_batchnorm_probe_outputs_beta_under_zero_weights():
    model = e02_mlp(torch.Generator().manual_seed(0))
    for layer in model.layers:
        if not isinstance(layer, (BatchNorm1d, Tanh)):
            torch.nn.init.zeros_(layer.weight)
    X, Y = batch()
    with LayerProbe(model, keep_outputs=True) as probe:
        model.loss(X, Y)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, BatchNorm1d):
            assert torch.equal(probe.outputs[i], layer.beta.detach().expand(len(X), -1))
