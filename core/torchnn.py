"""A CharMLP as torch.nn modules (Embedding, Flatten, Linear, BatchNorm1d, Tanh) with the same tensors."""

import torch
from torch import nn
from torch.nn.utils import skip_init
from torch.nn.utils.fusion import fuse_linear_bn_eval

from core.layers import BatchNorm1d, Linear, Tanh


def to_torch_nn(model, fuse: bool = False) -> nn.Sequential:
    """The CharMLP as torch.nn modules (Embedding, Flatten, Linear, BatchNorm1d, Tanh) in eval with the same
    tensors; with fuse, each Linear -> BatchNorm1d pair fused by torch's fuse_linear_bn_eval."""
    C = model.C.detach()
    kw = {"device": C.device, "dtype": C.dtype}
    modules = [nn.Embedding.from_pretrained(C.clone()), nn.Flatten()]
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, Linear):
                new = skip_init(nn.Linear, layer.fan_in, layer.fan_out, bias=layer.bias is not None, **kw)
                new.weight.copy_(layer.weight.T)
                if layer.bias is not None:
                    new.bias.copy_(layer.bias)
            elif isinstance(layer, BatchNorm1d):
                new = nn.BatchNorm1d(layer.dim, eps=layer.eps, momentum=layer.momentum, affine=layer.affine, **kw)
                new.running_mean.copy_(layer.running_mean)
                new.running_var.copy_(layer.running_var)
                if layer.affine:
                    new.weight.copy_(layer.gamma)
                    new.bias.copy_(layer.beta)
            elif isinstance(layer, Tanh):
                new = nn.Tanh()
            else:
                raise TypeError(f"no torch.nn counterpart for {type(layer).__name__}")
            modules.append(new.eval())
    if fuse:
        fused = []
        for m in modules:
            if isinstance(m, nn.BatchNorm1d) and fused and isinstance(fused[-1], nn.Linear):
                fused[-1] = fuse_linear_bn_eval(fused[-1], m)
            else:
                fused.append(m)
        modules = fused
    return nn.Sequential(*modules).eval()
