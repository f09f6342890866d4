"""unit_roundoff under each of torch's float32 precision settings (legacy flags and per-backend fp32_precision),
and the fold report and error_bound, which read it for the op of each layer they bound."""

import pytest
import torch
from torch import nn

from core.engine.bound.propagation import error_bound
from core.engine.bound.rounding import unit_roundoff
from core.engine.fold import fold
from tests.engine.models import conv, g, linear, with_statistics


@pytest.fixture
def bfloat16_cpu_convolutions(precision_settings):
    """float32 convolutions on the CPU allowed to run in bfloat16 for the test (torch.backends.mkldnn.conv)."""
    precision_settings.mkldnn.conv.fp32_precision = "bf16"


def test_the_report_bounds_each_layer_in_the_precision_torch_runs_it(bfloat16_cpu_convolutions):
    """With float32 convolutions allowed in bfloat16 (u = 2⁻⁷ counted twice per rounding, as `unit_roundoff` says),
    a conv pair's ρ counts those roundings, ρ ≥ (n + 9)·2⁻⁷, while a Linear pair's stays at float32's, ρ ≤
    2(n + 9)·2⁻²⁴·(1 + 10⁻³)."""
    (conv_pair,) = fold(nn.Sequential(conv(2, 3, padding=0), nn.BatchNorm2d(3)).eval())[1].folded
    linear_layer = linear(18, 3, torch.Generator().manual_seed(21))  # to_empty alone leaves any bits, nan included
    (linear_pair,) = fold(nn.Sequential(linear_layer, nn.BatchNorm1d(3)).eval())[1].folded
    assert conv_pair.fan_in == linear_pair.fan_in == 18
    assert conv_pair.bound_factor >= (18 + 9) * 2.0**-7
    assert linear_pair.bound_factor <= 2 * (18 + 9) * 2.0**-24 * 1.001


IEEE, TF32, BF16 = 2.0**-24, 2.0**-10, 2.0**-7


def unit_roundoffs() -> list[float]:
    """u of a float32 CPU matmul, CPU conv, CUDA matmul and CUDA conv under the settings of the moment."""
    return [unit_roundoff(torch.float32, device, conv) for device in ("cpu", "cuda") for conv in (False, True)]


def test_unit_roundoff_follows_every_precision_setting_of_torch(precision_settings):
    """u of a float32 (CPU matmul, CPU conv, CUDA matmul, CUDA conv) under each of torch's settings, legacy flags
    and per-backend fp32_precision alike (no GPU needed: only the settings are read).

    cuDNN convolutions run in TF32 by default; "high" and "medium" widen every matmul (torch reports "high" once
    cuBLAS's allow_tf32 is set, so the CPU's matmuls are counted in TF32 too); each per-backend setting widens its
    own op. Once a per-backend setting is used torch refuses to read the legacy flags (a RuntimeError): u then
    follows the per-backend settings alone.
    """
    B = precision_settings
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, TF32]
    B.cudnn.allow_tf32 = False
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, IEEE]
    B.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    assert unit_roundoffs() == [TF32, IEEE, TF32, TF32]
    torch.set_float32_matmul_precision("medium")
    assert unit_roundoffs() == [BF16, IEEE, BF16, TF32]
    torch.set_float32_matmul_precision("highest")
    B.cuda.matmul.allow_tf32 = True
    assert unit_roundoffs() == [TF32, IEEE, TF32, TF32]
    B.cuda.matmul.allow_tf32 = False
    B.mkldnn.matmul.fp32_precision = "bf16"
    assert unit_roundoffs() == [BF16, IEEE, IEEE, TF32]
    B.mkldnn.matmul.fp32_precision = "ieee"
    B.mkldnn.conv.fp32_precision = "tf32"
    assert unit_roundoffs() == [IEEE, TF32, IEEE, TF32]
    B.mkldnn.conv.fp32_precision = "ieee"
    B.cuda.matmul.fp32_precision = "tf32"
    assert unit_roundoffs() == [IEEE, IEEE, TF32, TF32]
    B.cuda.matmul.fp32_precision = "ieee"
    B.cudnn.conv.fp32_precision = "ieee"
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, IEEE]
    B.cudnn.conv.fp32_precision = "tf32"  # now only cuDNN's own setting says TF32 (allow_tf32 cannot be read)
    assert unit_roundoffs() == [IEEE, IEEE, IEEE, TF32]


class DenseResidual(nn.Module):
    """Linear → BN → Tanh, then a Linear whose output is added to its input: a graph of matmuls and an add."""

    def __init__(self):
        super().__init__()
        self.lin1, self.bn, self.lin2 = linear(4, 3, g), nn.BatchNorm1d(3), linear(3, 3, g)

    def forward(self, x):
        y = torch.tanh(self.bn(self.lin1(x)))
        return self.lin2(y) + y


def test_the_bound_reads_the_precision_of_each_layer(bfloat16_cpu_convolutions):
    """With float32 CPU convolutions allowed in bfloat16, error_bound of a Linear model (with an add, whose rule
    reads the matmul setting too) is the IEEE one bit for bit, and that of a conv model, and of a conv/BatchNorm pair
    alone, ≥ 2¹⁷·(1 − 10⁻⁶) times the IEEE one.

    Each pair bound and each rule reads the precision setting of the op it models (matmul or conv): u = 2⁻⁷ (twice
    bfloat16's) against 2⁻²⁴. Every term grows at least as fast as u (γ(k) = ku/(1 − ku) faster) but the underflow
    terms and the float64 part of the pair factor, under 10⁻⁸ of the bound here.
    """
    dense = with_statistics(DenseResidual())
    convolutional = with_statistics(nn.Sequential(conv(2, 3), nn.BatchNorm2d(3), nn.ReLU(), conv(3, 2)))
    pair = with_statistics(nn.Sequential(conv(2, 3), nn.BatchNorm2d(3)))  # the pair bound alone, nothing after it
    models = (dense, convolutional, pair)
    X = torch.randn(2, 4, generator=g), torch.randn(2, 2, 5, 5, generator=g), torch.randn(2, 2, 5, 5, generator=g)
    bf16 = [error_bound(model, x) for model, x in zip(models, X)]
    torch.backends.mkldnn.conv.fp32_precision = "ieee"  # the fixture restores the setting
    ieee = [error_bound(model, x) for model, x in zip(models, X)]
    assert torch.equal(bf16[0], ieee[0])
    assert all((b >= 2**17 * (1 - 1e-6) * i).all() for b, i in zip(bf16[1:], ieee[1:]))
