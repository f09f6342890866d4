"""A CharMLP as torch.nn modules (Embedding, Flatten, then each layer's torch.nn kind) with the same tensors."""

from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval

from core.engine.kinds import rebuild_as
from core.errors import ModelError
from core.makemore.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from core.makemore.model import CharMLP

TORCH_NN: dict[type[nn.Module], type[nn.Module]] = {
    Linear: nn.Linear, BatchNorm1d: nn.BatchNorm1d, Tanh: nn.Tanh, ReLU: nn.ReLU, Sigmoid: nn.Sigmoid}


def to_torch_nn(model: CharMLP, fuse: bool = False) -> nn.Sequential:
    """The CharMLP as an eval-mode torch.nn.Sequential holding copies of its tensors; with fuse, each
    Linear -> BatchNorm1d pair fused by torch's own fuse_linear_bn_eval (torch's fuser, for comparison)."""
    modules: list[nn.Module] = [nn.Embedding.from_pretrained(model.C.detach().clone()), nn.Flatten()]
    for name, layer in model.layers.named_children():
        if type(layer) not in TORCH_NN:
            raise ModelError(f"layers.{name} ({type(layer).__name__}) has no torch.nn counterpart: to_torch_nn takes "
                             f"core {', '.join(t.__name__ for t in TORCH_NN)} layers; call the CharMLP itself")
        modules.append(rebuild_as(layer, TORCH_NN[type(layer)]).eval())
    if fuse:
        fused: list[nn.Module] = []
        for m in modules:
            if isinstance(m, nn.BatchNorm1d) and fused and isinstance(fused[-1], nn.Linear):
                fused[-1] = fuse_linear_bn_eval(fused[-1], m)
            else:
                fused.append(m)
        modules = fused
    return nn.Sequential(*modules).eval()
