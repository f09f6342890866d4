"""The folder interface: what a BatchNorm folder takes and gives, which cases it claims, and the arithmetic of its
fold (the allowance of the certified bound, docs/design-conv.md §11).

A folder takes an eval-mode model and an example input and returns a `Folded`: something that runs like a model,
with its tensors readable. Each adapter (`core.conform.adapters`) is one small module that calls one
implementation as its documentation says, declares the package whose version the matrix records, the case
families it claims (a family it does not claim is reported "not supported", never "wrong"), and how it computes
W' and b': the unit roundoff of that arithmetic and the roundings on any term.
"""

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from core.deploy import optional
from core.engine.bound.rounding import ieee_unit_roundoff
from core.errors import MissingDependency

PEERS_EXTRA = "pip install 'bnfold[peers]'"
# Roundings on any term of W' and b' in torch's fuse_conv_bn_weights: s = γ·rsqrt(v + ε) (v + ε, the square root and
# the reciprocal of rsqrt, the product with γ: 4), W·s one more; b' = (b − μ)·rsqrt·γ + β: b − μ, the three of
# rsqrt, two products and the sum, 7. The largest count of the formulas the adapters run (docs/design-conv.md §11).
PEER_FOLD_ROUNDINGS = 7


def peer(module: str, purpose: str) -> Any:
    """The optional package `module`, or MissingDependency naming it and the peers extra."""
    return optional(module, purpose, PEERS_EXTRA)


class Folded(ABC):
    """What a folder gives: an artefact that runs like a model, and its tensors."""

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> Any:
        """The artefact run as it is deployed (ONNX Runtime for an ONNX model)."""

    @abstractmethod
    def evaluate(self, x: torch.Tensor) -> Any:
        """The artefact computed with torch's kernels: op for op the original's wherever no fold changed it, so that
        what differs from the original is the folder's doing."""

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every named tensor of the artefact: a module's state_dict, an ONNX model's initializers."""


class TorchFolded(Folded):
    """A torch module."""

    def __init__(self, module: nn.Module):
        self.module = module

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Any:
        return self.module(x)

    def evaluate(self, x: torch.Tensor) -> Any:
        return self(x)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state_dict; of a GraphModule, the tensors of the modules and attributes its graph uses (a pass that
        erases a node may leave its module behind, unused)."""
        state = {name: t.detach() for name, t in self.module.state_dict().items()}
        if not isinstance(self.module, torch.fx.GraphModule):
            return state
        used = {str(n.target) for n in self.module.graph.nodes if n.op in ("call_module", "get_attr")}
        return {name: t for name, t in state.items()
                if any(name == target or name.startswith(target + ".") for target in used)}


class Folder(ABC):
    """One BatchNorm folder, as its documentation says to call it."""

    key: ClassVar[str]  # its name on the command line (bnfold conform --folder KEY)
    name: ClassVar[str]  # the matrix's row
    distribution: ClassVar[str]  # the package whose version is recorded
    modules: ClassVar[tuple[str, ...]] = ()  # the optional packages it needs (the peers extra brings them)
    claims: ClassVar[frozenset[str]]  # the case families it claims (core.conform.strategies)
    fold_roundings: ClassVar[int] = PEER_FOLD_ROUNDINGS  # roundings on any term of W' and b'
    usage: ClassVar[str]  # Python that folds `model` (input `x`) into `folded`, for a counterexample
    show: ClassVar[str] = "with torch.no_grad():\n    print(model(x), folded(x), sep='\\n')"  # runs both

    def fold_unit(self, dtype: torch.dtype) -> float:
        """The unit roundoff of the arithmetic that computes W' and b' for a model in `dtype`: by default the
        model's own dtype, in which torch's fusion functions compute."""
        return ieee_unit_roundoff(dtype)

    def usage_for(self, model: nn.Module) -> str:
        """The Python that folds this model (`usage`, filled in for the model where the call names its layers)."""
        return self.usage

    def upstream(self) -> "Folder | None":
        """The folder whose artefact this one starts from (an ONNX optimizer's: torch.onnx's export), or None."""
        return None

    def missing(self) -> str | None:
        """What is not installed for this folder, with the extra that brings it; None when it can run."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"{self.name} needs {', '.join(absent)}, which is not installed: {PEERS_EXTRA}"
        return None

    def require(self) -> None:
        """MissingDependency naming the packages and the extra, unless the folder can run."""
        reason = self.missing()
        if reason is not None:
            raise MissingDependency(reason)

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            module = importlib.import_module(self.distribution)
            return str(getattr(module, "__version__", "unknown"))

    @abstractmethod
    def fold(self, model: nn.Module, example: torch.Tensor) -> Folded:
        """The folded artefact of `model` (eval mode; `example` is an input it takes). Never called with a model the
        caller still needs: the laws pass a fresh build."""

    def refold(self, folded: Folded, example: torch.Tensor) -> Folded:
        """The folder applied to its own artefact."""
        assert isinstance(folded, TorchFolded)
        return self.fold(folded.module, example)


def run_folder(folder: Folder, model: nn.Module, example: torch.Tensor, again: Folded | None = None) -> Folded:
    """folder.fold(model, example) (or its refold of `again`), quietly: the global RNG forked, warnings and anything
    the implementation prints swallowed."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return folder.fold(model, example) if again is None else folder.refold(again, example)
