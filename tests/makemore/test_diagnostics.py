"""Diagnostics: hook-based stats match a plain forward pass, leave the model untouched, and record training."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from core.engine.bound.rounding import U32
from core.engine.kinds import hooked
from core.makemore.diagnostics import LayerProbe, Recorder, alive, diagnose, output_bias
from core.makemore.layers import BatchNorm1d, Linear, Tanh
from core.makemore.model import CharMLP, e01_mlp, e02_mlp
from core.makemore.train import train
from properties.exact import population_std, ratio_bound

SATURATION = 0.97  # the lecture's threshold: |tanh| above it passes less than 1 − 0.97² ≈ 6% of the gradient


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


def assert_stats(mean, std, values, what):
    """mean and std are torch's float64 mean and population std of `values`, within the bounds of exact.py."""
    m, dm, sigma, dsigma = population_std(values)
    assert abs(mean - m) <= dm, (what, mean, m)
    assert abs(std - sigma) <= dsigma, (what, std, sigma)


def test_probe_stats_match_a_plain_forward():
    """Each layer's recorded mean, population std and saturation are those of its output, and likewise for dL/dout.

    The expectations are exact (Fractions), with the float64 bounds of properties/exact.py; the
    saturation is a count over n, which one division rounds exactly as float(Fraction(count, n)).
    """
    model, (X, Y) = e01(), batch(rows=8)
    with LayerProbe(model, keep_outputs=True) as probe:
        model.loss(X, Y).backward()
    assert sorted(probe.layers) == list(range(len(model.layers)))
    for i, out in enumerate(outputs_by_hand(model, X)):
        stats = probe.layers[i]
        assert torch.equal(probe.outputs[i], out.detach())
        assert stats.index == i and stats.kind == type(model.layers[i]).__name__
        assert_stats(stats.mean, stats.std, out, f"layer {i}")
        values = out.detach().flatten().tolist()
        assert stats.saturation == float(Fraction(sum(abs(v) > SATURATION for v in values), len(values)))
        assert probe.output_grads[i].shape == out.shape
        assert_stats(stats.grad_mean, stats.grad_std, probe.output_grads[i], f"grad of layer {i}")
    assert 0 < probe.layers[0].saturation < 1  # the kaiming(5/3) net saturates some of its first layer


def test_saturation_counts_outputs_strictly_above_the_threshold():
    """An output of exactly 0.97 (in float32) is not saturated; the next float above it is."""
    at = torch.tensor(SATURATION, dtype=torch.float32)
    above = torch.nextafter(at, torch.tensor(1.0))
    C = torch.stack([at, above, -above, torch.tensor(0.0)])[:, None].repeat(7, 1)[:27]  # rows cycle through the 4
    identity = Linear.from_tensors(torch.ones(1, 1), torch.zeros(1))
    model = CharMLP(C, [identity], context_length=1)
    with torch.no_grad(), LayerProbe(model) as probe:
        model(torch.tensor([[0], [1], [2], [3]]))
    assert probe.layers[0].saturation == 0.5


def test_probe_without_keep_outputs_keeps_no_tensors():
    model, (X, Y) = e01(), batch(rows=8)
    with LayerProbe(model) as probe:
        model.loss(X, Y).backward()
    assert probe.outputs == {} and probe.output_grads == {}
    assert all(s.grad_std is not None for s in probe.layers.values())


def test_probe_without_backward_leaves_the_gradient_stats_empty():
    model, (X, _) = e01(), batch(rows=8)
    with torch.no_grad(), LayerProbe(model, keep_outputs=True) as probe:
        model(X)
    assert all(s.grad_mean is None and s.grad_std is None for s in probe.layers.values())
    assert probe.output_grads == {}


def test_probe_hooks_are_removed_and_nothing_is_stored_on_layers():
    model, (X, Y) = e01(), batch()
    with LayerProbe(model):
        model.loss(X, Y)
    assert not any(hooked(layer) for layer in model.layers)
    assert not any(hasattr(layer, "out") for layer in model.layers)


def test_diagnose_gradient_ratios():
    """grad_data = σ(∇p)/σ(p) and update_data = σ(lr·∇p)/σ(p), σ the population std, within float64 bounds.

    σ(lr·g) is the std of the float32 products lr·g: within 2u₃₂·lr·rms(g) of lr·σ(g) (each product
    and the float32 lr round once), so update_data is lr·grad_data within that over σ(p).
    """
    model, (X, Y) = e01(), batch(rows=16)
    report = diagnose(model, X, Y, lr=0.5)
    params = dict(model.named_parameters())
    loss = model.loss(X, Y)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    assert report.loss == loss.item()
    assert [s.name for s in report.params] == list(params)
    u32 = U32
    for s in report.params:
        g, p = grads[s.name], params[s.name]
        assert s.shape == tuple(p.shape)
        assert_stats(s.grad_mean, s.grad_std, g, s.name)
        _, _, sg, dsg = population_std(g)
        _, _, sp, dsp = population_std(p)
        if sp == 0:  # a constant parameter (the biases at 0): the ratios are inf, or nan without a gradient
            assert math.isinf(s.grad_data) if sg else math.isnan(s.grad_data), s.name
            continue
        assert abs(s.grad_data - sg / sp) <= ratio_bound(sg, dsg, sp, dsp), s.name
        rms = g.double().pow(2).mean().sqrt().item()
        slack = 2 * u32 * 0.5 * rms * (1 + u32) / (sp - dsp) + ratio_bound(0.5 * sg, 0.5 * dsg, sp, dsp)
        assert abs(s.update_data - 0.5 * sg / sp) <= slack, s.name


def test_diagnose_uses_the_notebooks_learning_rate_by_default():
    model, (X, Y) = e01(), batch(rows=16)
    assert diagnose(model, X, Y) == diagnose(model, X, Y, lr=0.1)


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
    assert alive(e01("zeros"), X, Y) == ["layers.8.bias"]
    kaiming = e01()
    assert alive(kaiming, X, Y) == [name for name, _ in kaiming.named_parameters()]
    assert alive(e01("zero_last"), X, Y) == ["layers.8.weight", "layers.8.bias"]


def test_a_parameter_the_loss_never_reaches_is_dead_with_a_zero_gradient():
    """allow_unused: a parameter outside the graph (here one registered on a layer) has no gradient at all."""
    model, (X, Y) = e01(), batch(rows=8)
    model.layers[0].register_parameter("unused", torch.nn.Parameter(torch.tensor([1.0, 2.0])))
    assert "layers.0.unused" not in alive(model, X, Y)
    stats = {s.name: s for s in diagnose(model, X, Y).params}["layers.0.unused"]
    assert (stats.grad_mean, stats.grad_std, stats.grad_data, stats.update_data) == (0.0, 0.0, 0.0, 0.0)


def test_output_bias_names_the_last_linears_bias():
    assert output_bias(e01()) == "layers.8.bias"
    layers = [Linear(3, 5, generator=torch.Generator().manual_seed(0)), Tanh(),
              Linear(5, 27, bias=False, generator=torch.Generator().manual_seed(1))]
    with pytest.raises(ValueError, match="^the model's output layer has no bias$"):
        output_bias(CharMLP(torch.zeros(27, 3), layers, context_length=1))


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


def manual_sgd(model, X, Y, steps, rec, lr=0.1):
    """A loop of its own (backward, then p -= lr·grad where a gradient exists): the Recorder hooks any autograd loop."""
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        model.loss(X, Y).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
        rec.on_step(step, model)


def test_recorder_with_a_parameter_the_loss_never_reaches():
    model, (X, Y) = e01("zeros"), batch(rows=32)
    model.layers[0].register_parameter("unused", torch.nn.Parameter(torch.tensor([1.0])))
    with Recorder(model) as rec:
        manual_sgd(model, X, Y, 3, rec)
    assert rec.first_grad["layers.0.unused"] is None and rec.first_change["layers.0.unused"] is None
    assert rec.alive == rec.changed == ["layers.8.bias"]


def test_recorder_on_one_parameter_and_on_none():
    """A model whose only parameter is C, and one with nothing left to train (every parameter frozen)."""
    X, Y = batch(rows=16)
    only_c = CharMLP(torch.randn(27, 27, generator=torch.Generator().manual_seed(0)), [Tanh()], context_length=4)
    only_c.layers.append(Linear.from_tensors(torch.ones(108, 27), None).requires_grad_(False))
    with Recorder(only_c) as rec:
        manual_sgd(only_c, X, Y, 2, rec)
    assert rec.names == ["C"] and rec.alive == rec.changed == ["C"] and rec.first_grad == {"C": 0}
    frozen = e01().requires_grad_(False)
    with Recorder(frozen) as rec:  # (on_step itself still needs one trainable parameter: torch.stack of nothing)
        pass
    assert rec.names == rec.alive == rec.changed == [] and rec.update_data == {}


def test_training_ignores_torch_default_device():
    """train(device='cpu') under torch.set_default_device('meta') records the losses it records without one: the
    batch indices are drawn on the generator's device and the loss record is made on the device train is given,
    so a process whose default device is 'cuda' still trains on the CPU."""
    X, Y = batch(rows=200)
    runs = []
    for default in (None, "meta"):
        model = e01("zeros")
        torch.set_default_device(default)
        try:
            history = train(model, X, Y, 3, generator=torch.Generator().manual_seed(1), device="cpu", progress=False)
        finally:
            torch.set_default_device(None)
        runs.append(history.losses)
    assert runs[0] == runs[1]


@pytest.mark.gpu
def test_training_on_cuda_moves_everything_and_records_what_the_cpu_does():
    """train(device='cuda') moves a CPU model and CPU data there; a Recorder entered on the CUDA model records the
    same steps as on the CPU (E01: only the output bias, from step 0)."""
    X, Y = batch(rows=200)
    model = e01("zeros")
    history = train(model, X, Y, 3, generator=torch.Generator().manual_seed(1), device="cuda", progress=False)
    assert model.C.device.type == "cuda" and len(history.losses) == 3
    records = []
    for device in ("cpu", "cuda"):
        model = e01("zeros").to(device)
        with Recorder(model, every=2) as rec:
            train(model, X, Y, 6, generator=torch.Generator().manual_seed(1), device=device, progress=False,
                  on_step=rec.on_step)
        records.append((rec.first_grad, rec.first_change, rec.alive, [s for s, _ in rec.update_data["layers.8.bias"]]))
    assert records[0] == records[1]
