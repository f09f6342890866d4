"""The notebook's layers as torch.nn.Modules: Linear (weight is fan_in x fan_out), BatchNorm1d, Tanh, ReLU, Sigmoid.

Numerics equal the notebook's up to float rounding (docs/design.md). Every layer describes itself with
`spec()`, a dict of plain values from which `layer_from_spec` rebuilds it (for checkpoints). Each type is
registered in the engine's layer-kind table here, with its rule, so that fold and error_bound read it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.bound.rules import affine_rule, batchnorm_rule, relu_rule, sigmoid_rule, tanh_rule
from core.engine.kinds import ElementwiseKind, LinearKind, NormKind, NormTerms, fill_norm, register


class Linear(nn.Module):
    """y = x @ W (+ b); W has shape (fan_in, fan_out) and starts as randn / sqrt(fan_in), b at 0."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True, *, generator: torch.Generator,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        weight = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) / fan_in**0.5
        self.weight = nn.Parameter(weight.to(device))
        self.bias = nn.Parameter(torch.zeros(fan_out, dtype=weight.dtype, device=device)) if bias else None

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "Linear":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.weight = nn.Parameter(weight)
        layer.bias = None if bias is None else nn.Parameter(bias)
        return layer

    @property
    def fan_in(self) -> int:
        return self.weight.shape[0]

    @property
    def fan_out(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)

    def spec(self) -> dict:
        return {"type": "linear", "fan_in": self.fan_in, "fan_out": self.fan_out, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return f"fan_in={self.fan_in}, fan_out={self.fan_out}, bias={self.bias is not None}"


class BatchNorm1d(nn.Module):
    """The notebook's BatchNorm: training normalises with the batch mean and the *unbiased* batch variance.

    Training output: gamma * (x - mean) / sqrt(var_unbiased + eps) + beta, and the running stats
    move as (1 - momentum) * running + momentum * batch stat (unbiased variance). Eval uses the
    running stats. Training runs as one fused `F.batch_norm` call (which normalises with the
    biased variance v_b) through the identity, with n the batch size and c = (n - 1) / n:
        (x - mean) / sqrt(v_u + eps) = sqrt(c) * (x - mean) / sqrt(v_b + c * eps),
    so gamma is scaled by sqrt(c) and eps by c; torch's running-stat update already uses v_u.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.gamma = nn.Parameter(torch.ones(dim, dtype=dtype, device=device)) if affine else None
        self.beta = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device)) if affine else None
        self.register_buffer("running_mean", torch.zeros(dim, dtype=dtype, device=device))
        self.register_buffer("running_var", torch.ones(dim, dtype=dtype, device=device))

    @property
    def dim(self) -> int:
        return int(self.running_mean.shape[0])

    @property
    def affine(self) -> bool:
        return self.gamma is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.gamma, self.beta, False, 0.0, self.eps)
        n = x.shape[0]
        if n < 2:
            raise ValueError("BatchNorm1d in training needs a batch of at least 2 rows (the unbiased variance of 1 row "
                             "is undefined); call .eval() to use running stats")
        c = (n - 1) / n
        gamma = torch.ones_like(self.running_mean) if self.gamma is None else self.gamma
        return F.batch_norm(x, self.running_mean, self.running_var, gamma * math.sqrt(c), self.beta, True,
                            self.momentum, self.eps * c)

    def spec(self) -> dict:
        return {"type": "batchnorm", "dim": self.dim, "eps": self.eps, "momentum": self.momentum, "affine": self.affine}

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class Tanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def spec(self) -> dict:
        return {"type": "tanh"}


class ReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def spec(self) -> dict:
        return {"type": "relu"}


class Sigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def spec(self) -> dict:
        return {"type": "sigmoid"}


ACTIVATIONS = {"tanh": Tanh, "relu": ReLU, "sigmoid": Sigmoid}


def layer_from_spec(spec: dict, dtype: torch.dtype | None = None) -> nn.Module:
    """An uninitialised-but-zeroed layer of the described shape, ready for load_state_dict."""
    kind = spec["type"]
    if kind == "linear":
        weight = torch.zeros(spec["fan_in"], spec["fan_out"], dtype=dtype)
        bias = torch.zeros(spec["fan_out"], dtype=dtype) if spec["bias"] else None
        return Linear.from_tensors(weight, bias)
    if kind == "batchnorm":
        return BatchNorm1d(spec["dim"], eps=spec["eps"], momentum=spec["momentum"], affine=spec["affine"], dtype=dtype)
    if kind in ACTIVATIONS:
        return ACTIVATIONS[kind]()
    raise ValueError(f"unknown layer type {kind!r}")


def _norm_from_terms(terms: NormTerms, momentum: float | None) -> BatchNorm1d:
    bn = BatchNorm1d(len(terms.mean), eps=terms.eps, momentum=0.1 if momentum is None else momentum,
                     affine=terms.gamma is not None, dtype=terms.mean.dtype, device=terms.mean.device)
    fill_norm(bn, terms, "gamma", "beta")
    return bn


register(
    LinearKind(Linear, matrix=lambda layer: layer.weight, build=Linear.from_tensors,
               linear_map=lambda layer, z, W: z @ W, rule=affine_rule),
    NormKind(BatchNorm1d, build=_norm_from_terms, rule=batchnorm_rule,
             terms=lambda bn: NormTerms(bn.running_mean, bn.running_var, bn.gamma, bn.beta, bn.eps)),
    ElementwiseKind(Tanh, tanh_rule, lambda layer: Tanh()),
    ElementwiseKind(ReLU, relu_rule, lambda layer: ReLU()),
    ElementwiseKind(Sigmoid, sigmoid_rule, lambda layer: Sigmoid()),
)
