"""The models a user names for folding: a torchvision or timm architecture by name, or whatever an importable
zero-argument factory returns; their weights loaded from a state_dict file as checkpoints are (weights_only=True),
every key accounted for; and the input shape each takes by default.

Nothing is downloaded: architectures are built with random weights (drawn under a forked global RNG, which is left
as it was), and trained weights come from a file the user gives.
"""

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import MissingDependency, ModelError
from core.vision import architectures, torchvision_models

TIMM = "timm:"  # --model timm:NAME builds timm's NAME
TIMM_EXTRA = "pip install 'bnfold[timm]'"
SHOWN_KEYS = 5  # keys named in a message about missing or unexpected ones


def from_factory(spec: str) -> nn.Module:
    """The model `spec` names: "timm:NAME" (timm's create_model, random weights), or "package.module:factory", a
    zero-argument callable returning an nn.Module, in eval mode. ModelError naming what is wrong and the form."""
    if spec.startswith(TIMM):
        return timm_model(spec[len(TIMM):])
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ModelError(f"{spec!r} names no factory: write package.module:factory (a function of no arguments "
                         f"that returns the model), or timm:NAME")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name!r} ({e}): install it, or run from the folder that holds it") \
            from e
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no function {attribute!r}: name a function of no arguments that returns "
                         f"the model")
    with torch.random.fork_rng(devices=[]):
        model = factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def timm_model(name: str) -> nn.Module:
    """timm's `name` with random weights, in eval mode; MissingDependency without timm, ModelError for a name timm
    does not have."""
    try:
        timm = importlib.import_module("timm")
    except ImportError as e:
        raise MissingDependency(f"timm:{name} needs the package timm, which is not installed: {TIMM_EXTRA}") from e
    if name not in timm.list_models():
        raise ModelError(f"timm has no model {name!r}; timm.list_models() lists the names it has")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: nn.Module = timm.create_model(name, pretrained=False)
    return model.eval()


def torchvision_model(name: str) -> nn.Module:
    """torchvision's `name` with random weights (to be replaced by a state_dict), in eval mode."""
    torchvision = torchvision_models()
    if name not in architectures():
        raise ModelError(f"torchvision has no classification model {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: nn.Module = torchvision.models.get_model(name, weights=None)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """`model` with the state_dict at `path` loaded (torch.load with weights_only=True: a file that carries code is
    refused without running it). ModelError naming the file and, for a state_dict of another model, its missing
    and unexpected keys or the tensors whose shapes differ."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ModelError(f"{path}: no such file") from e
    except Exception as e:  # torch.load raises UnpicklingError, RuntimeError, EOFError, ... on what it cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a state_dict torch can load safely ({first})") from e
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ModelError(f"{path}: not a state_dict (a mapping of names to tensors, as model.state_dict() gives); "
                         f"save one with torch.save(model.state_dict(), path)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{what} {shown(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ModelError(f"{path}: not a state_dict of this {type(model).__name__}: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} (the model's is {tuple(v.shape)})" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ModelError(f"{path}: tensors of other shapes than this {type(model).__name__}'s: {shown(wrong)}")
    model.load_state_dict(state)
    return model.eval()


def shown(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def default_input_shape(model: nn.Module, torchvision_name: str | None = None) -> tuple[int, ...] | None:
    """The input a model takes by default, batch 1: a torchvision architecture's crop size (from its weights'
    documented transforms), a timm model's configured input size; None for any other model."""
    if torchvision_name is not None:
        weights = torchvision_models().models.get_model_weights(torchvision_name).DEFAULT
        size = weights.transforms().crop_size[0]
        return (1, 3, size, size)
    configured: Any = getattr(model, "pretrained_cfg", None) or {}
    size = configured.get("input_size") if isinstance(configured, Mapping) else None
    return (1, *size) if size else None


def check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """ModelError unless the model runs on `example`: what a wrong input shape or dtype gives, in one line."""
    try:
        with torch.no_grad():
            model(example)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{type(model).__name__} does not run on an input of shape {tuple(example.shape)} "
                         f"({first}): give the shape it takes") from e
