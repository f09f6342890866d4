"""torchvision classification models with random weights and realistic BatchNorm statistics, for folding.

torchvision is an optional dependency (the `test` extra): it is imported only when a model is built.
Nothing is downloaded. The builders draw their initial weights from torch's global RNG, so each model is
built inside `torch.random.fork_rng` under a fixed seed: the caller's global RNG state is left as it was.
The BatchNorm statistics then come from a few training-mode forwards on random images drawn from an
explicit generator (the BatchNorms' cumulative average, momentum None), every other module in eval mode
(so Dropout and stochastic depth draw nothing); γ and β are drawn from the same generator first, so
folding them is no identity.
"""

from types import ModuleType
from typing import cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from core.engine.kinds import is_batchnorm
from core.errors import MissingDependency, ModelError

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
          "shufflenet_v2_x1_0", "mnasnet0_5", "densenet121", "vgg11_bn")


def torchvision_models() -> ModuleType:
    """The torchvision package, or MissingDependency saying how to install it."""
    try:
        import torchvision
    except ImportError as e:
        raise MissingDependency("torchvision is not installed: pip install torchvision "
                                "(or pip install -e '.[test]')") from e
    return torchvision


def architectures() -> list[str]:
    """The names torchvision.models.get_model accepts for classification models."""
    torchvision = torchvision_models()
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_architecture(name: str) -> None:
    """ModelError unless torchvision has a classification model called `name` (MissingDependency without
    torchvision)."""
    if name not in architectures():
        raise ModelError(f"torchvision has no classification model {name!r}; try one of {', '.join(MODELS)}")


@torch.no_grad()
def with_statistics(model: nn.Module, generator: torch.Generator, image_size: int = 32, batch: int = 4,
                    forwards: int = 3) -> nn.Module:
    """The model in eval mode after drawing γ, β and estimating every BatchNorm's statistics on random images.

    γ = 1 + N(0, 1/16) and β = N(0, 1/100) per channel; then `forwards` batches of N(0, 1) images of
    `image_size`² pixels pass through the model with only the BatchNorms in training mode and momentum
    None, so each running statistic is the mean over those batches.
    """
    bns = [cast(_BatchNorm, m) for m in model.modules() if is_batchnorm(m)]  # torchvision's are torch's
    for bn in bns:
        if bn.affine:
            bn.weight.copy_(1 + torch.randn(bn.weight.shape, generator=generator, dtype=bn.weight.dtype) / 4)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator, dtype=bn.bias.dtype) / 10)
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    dtype = next(model.parameters()).dtype
    for _ in range(forwards):
        model(torch.randn(batch, 3, image_size, image_size, generator=generator, dtype=dtype))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()


def build(name: str, seed: int = 0, image_size: int = 32, batch: int = 4, forwards: int = 3) -> nn.Module:
    """torchvision's `name` with random weights (global RNG forked and seeded with `seed`) and BatchNorm statistics
    from `forwards` random batches (a generator seeded with `seed`), in eval mode. An unknown name is a ModelError."""
    torchvision = torchvision_models()
    check_architecture(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
    return with_statistics(model, torch.Generator().manual_seed(seed), image_size, batch, forwards)


def images(batch: int, image_size: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch of N(0, 1) images from a generator seeded with `seed`."""
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def fx_folded(model: nn.Module) -> tuple[nn.Module, set[str]]:
    """(torch.fx.experimental.optimization.fuse(model) on a deep copy, the names of the BatchNorms it folded)."""
    import copy

    from torch.fx.experimental.optimization import fuse

    fused = fuse(copy.deepcopy(model))
    left = {name for name, m in fused.named_modules() if is_batchnorm(m)}
    return fused, {name for name, m in model.named_modules() if is_batchnorm(m)} - left
