"""torchvision classification models with random weights and realistic BatchNorm statistics, for folding.

torchvision is an optional dependency (the `test` extra): it is imported only when a model is built.
Nothing is downloaded. The builders draw their initial weights from torch's global RNG, so each model is
built inside `torch.random.fork_rng` under a fixed seed: the caller's global RNG state is left as it was.
The BatchNorm statistics then come from a few training-mode forwards on random images drawn from an
explicit generator (the BatchNorms' cumulative average, momentum None), every other module in eval mode
(so Dropout and stochastic depth draw nothing); γ and β are drawn from the same generator first, so
folding them is no identity.
"""

import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from core.engine.kinds import is_batchnorm
from core.errors import MissingDependency, ModelError
from core.limits import MAX_SEED

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


def sub_seed(seed: int, stream: int) -> int:
    """The seed of a run's stream number `stream` (1, 2, ...): (seed + stream) mod 2^64. Every seed 0..2^64 - 1
    has its streams, each a seed torch takes, distinct from the run's own seed and from each other (for fewer than
    2^64 streams); below 2^64 - stream it is plain seed + stream."""
    return (seed + stream) % (MAX_SEED + 1)


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


STANDARD_IMAGE_SIZE = 224  # the size torchvision's classification models are made for


class ImageSizeError(ModelError):
    """A model cannot run on images of the size asked; `runs_on` is a size it runs on, or None if none is known."""

    def __init__(self, message: str, runs_on: int | None) -> None:
        super().__init__(message)
        self.runs_on = runs_on


@contextmanager
def _quiet() -> Iterator[None]:
    """Without the builders' FutureWarnings about their default init: build() shows them, once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def shape_model(name: str) -> nn.Module:
    """torchvision's `name` on the meta device, in eval mode: its shapes, without memory or arithmetic, to check an
    image size in a moment before the real work. A builder that computes with tensors while it builds is built on
    the CPU (global RNG forked) and moved to the meta device."""
    torchvision = torchvision_models()
    check_architecture(name)
    with _quiet():
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, weights=None)
        except (NotImplementedError, RuntimeError):
            with torch.random.fork_rng(devices=[]):
                model = torchvision.models.get_model(name, weights=None).to("meta")
    return model.eval()


class _LiveTensors(TorchDispatchMode):
    """While active, the bytes of the tensors ops create that are still referenced, and their peak: an eager forward
    frees a tensor when its last reference goes, and the meta device keeps those references as the CPU would (views
    share their base's storage and count once; an op's scratch space is not seen, so the peak is a lower bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage -> [tensors referencing it, its bytes]
        self.now = self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [0, storage.nbytes()]
            self.now += entry[1]
            self.peak = max(self.peak, self.now)
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        given = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in given:  # an in-place op returns its input
                self.track(t)
        return out


def _forward_peak(model: nn.Module, image_size: int) -> int:
    """The most bytes of tensors alive at once in an eval forward of one float32 image of `image_size`² on the meta
    device, the image included. Raises what the model's forward raises."""
    with torch.no_grad(), _quiet():
        image = torch.empty(1, 3, image_size, image_size, device="meta")
        live = _LiveTensors()
        with live:
            model(image)
    return live.peak + image.untyped_storage().nbytes()


def parameter_bytes(model: nn.Module) -> int:
    """The bytes of a model's parameters and buffers (on the meta device as on any other)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


SIZE_ERRORS = (RuntimeError, AssertionError, ValueError, IndexError)  # how torchvision's models refuse a size


def forward_bytes(model: nn.Module, name: str, image_size: int) -> int | None:
    """The most bytes of tensors alive at once in an eval forward of `model` (from shape_model(name)) on one float32
    image of `image_size`²: a lower bound of what the forward needs (in proportion to the batch and the element
    size). ImageSizeError when the model cannot run on that size but runs on STANDARD_IMAGE_SIZE (naming the
    smallest size up to it that runs, found by bisection); None when the meta device cannot tell (it fails at the
    standard size too)."""
    try:
        return _forward_peak(model, image_size)
    except SIZE_ERRORS as e:
        detail, failure = _first_line(e), e
    except NotImplementedError:
        return None
    if not _runs_on(model, STANDARD_IMAGE_SIZE):
        return None
    low, high = image_size, STANDARD_IMAGE_SIZE  # low fails, high runs
    if low < high:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if _runs_on(model, middle) else (middle, high)
        where = f"the smallest size it runs on is {high}²"
    else:
        where = f"it runs on {high}²"
    raise ImageSizeError(f"torchvision's {name} cannot run on {image_size}² images ({detail}); {where}",
                         high) from failure


def _first_line(error: BaseException, limit: int = 100) -> str:
    """The first line of an error's message, cut after a word at about `limit` characters."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _runs_on(model: nn.Module, image_size: int) -> bool:
    try:
        _forward_peak(model, image_size)
    except (*SIZE_ERRORS, NotImplementedError):
        return False
    return True
