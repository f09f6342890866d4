"""Model types the engine folds through one of their submodules, registered by the package that defines them.

A CharMLP, say, is an embedding lookup and a stack of layers: fold folds the stack, and the adapter puts the folded
stack back into a model of the same type. The engine never imports such a type; its package registers an
`Adapter` for it (`register_adapter`).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Adapter:
    """How fold and error_bound read a model of one type.

    `inner(model)`: the module that is folded; `inputs(model, X)`: that module's inputs when the model is called on
    X, as a tuple; `wrap(model, folded_inner)`: a model like `model` whose inner module is `folded_inner`.
    """

    inner: Callable[[Any], nn.Module]
    inputs: Callable[[Any, Any], tuple[Any, ...]]
    wrap: Callable[[Any, nn.Module], nn.Module]


ADAPTERS: dict[type, Adapter] = {}


def register_adapter(model_type: type, adapter: Adapter) -> None:
    ADAPTERS[model_type] = adapter


def adapter_for(model: nn.Module) -> Adapter | None:
    """The adapter of model's exact type, or None (the model is folded whole)."""
    return ADAPTERS.get(type(model))
