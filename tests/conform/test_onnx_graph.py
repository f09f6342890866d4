"""The ONNX folders' evaluator: an unoptimized export computed op for op with torch's kernels gives the model's own
outputs bit for bit, so a difference the laws see in an optimized graph is the optimizer's."""

import pytest
import torch
from torch import nn

from core.conform.certified import identical

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from core.conform.onnx_graph import OnnxFolded, UnreadableGraph, compute, export  # noqa: E402


def chain(*layers):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(*layers)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("model, shape", [
    (lambda: chain(nn.Conv2d(2, 3, 3, padding=1, groups=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1),
                   nn.BatchNorm2d(2, affine=False)), (2, 2, 5, 5)),
    (lambda: chain(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, bias=False)), (2, 3)),
    (lambda: chain(nn.ConvTranspose1d(2, 4, 3, stride=2, groups=2), nn.BatchNorm1d(4)), (2, 2, 4)),
])
def test_an_unoptimized_export_computes_the_model_bit_for_bit(model, shape):
    model = model()
    x = torch.linspace(-2, 2, int(torch.tensor(shape).prod())).reshape(shape)
    with torch.no_grad():
        assert identical(OnnxFolded(export(model, x)).evaluate(x), model(x))


def test_an_op_it_does_not_compute_is_named():
    with pytest.raises(UnreadableGraph, match="op Einsum"):
        compute("Einsum", [], {})
