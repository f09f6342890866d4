"""CharMLP: embedding table C plus a layer stack, and the E01 and E02 builders."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.adapters import Adapter, register_adapter
from core.engine.kinds import is_batchnorm
from core.errors import FoldError, ModelError
from core.makemore.layers import BatchNorm1d, Linear, Tanh

VOCAB_SIZE = 27
CONTEXT_LENGTH = 4
EMB_SIZE = 10
N_HIDDEN = 100
TANH_GAIN = 5 / 3


class CharMLP(nn.Module):
    """logits = layers(C[X] flattened): X is int64 (B, context_length), logits (B, vocab_size)."""

    def __init__(self, C: torch.Tensor, layers, context_length: int = CONTEXT_LENGTH, init_scheme: str | None = None):
        super().__init__()
        self.C = nn.Parameter(C)
        self.layers = nn.Sequential(*layers)
        self.context_length = context_length
        self.init_scheme = init_scheme

    @property
    def vocab_size(self) -> int:
        return self.C.shape[0]

    @property
    def emb_size(self) -> int:
        return self.C.shape[1]

    def forward(self, X):
        return self.layers(F.embedding(X, self.C).view(X.shape[0], -1))

    def loss(self, X, Y):
        return F.cross_entropy(self(X), Y)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, max_len: int = 50) -> list[str]:
        """n names drawn character by character from the eval-mode model, each at most max_len long."""
        from core.makemore.data import Vocab

        vocab = Vocab()
        was_training = self.training
        self.eval()
        try:
            device = self.C.device
            context = torch.zeros(n, self.context_length, dtype=torch.int64, device=device)
            out = torch.zeros(n, max_len, dtype=torch.int64)
            finished = torch.zeros(n, dtype=torch.bool)
            for t in range(max_len):
                probs = F.softmax(self(context).double(), dim=1).cpu()
                ix = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                ix[finished] = 0
                out[:, t] = ix
                finished |= ix == 0
                if finished.all():
                    break
                context = torch.cat([context[:, 1:], ix.to(device).unsqueeze(1)], dim=1)
        finally:
            self.train(was_training)
        return [vocab.decode(row).split(".", 1)[0] for row in out.tolist()]

    def config(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "emb_size": self.emb_size,
            "context_length": self.context_length,
            "init_scheme": self.init_scheme,
            "layers": [layer_spec(i, layer) for i, layer in enumerate(self.layers)],
        }


def layer_spec(index: int, layer: nn.Module) -> dict[str, Any]:
    """The spec a checkpoint records of a layer of the stack; ModelError for a layer that has none."""
    spec = getattr(layer, "spec", None)
    if not callable(spec):
        raise ModelError(f"{type(layer).__name__} at index {index} has no spec(): a CharMLP's config holds the "
                         f"notebook's layers only (core.makemore.layers)")
    described: dict[str, Any] = spec()
    return described


def _layers_to_fold(model: CharMLP) -> nn.Sequential:
    """The layer stack, which fold folds; FoldError for a layer with BatchNorms inside it, which no fold of the stack
    can put back into a CharMLP."""
    for i, layer in enumerate(model.layers):
        if not is_batchnorm(layer) and any(is_batchnorm(m) for m in layer.modules()):
            raise FoldError(f"{type(layer).__name__} at index {i} of the CharMLP's layers holds BatchNorms inside it: "
                            f"flatten the model into one Sequential before folding")
    return model.layers


def _with_layers(model: CharMLP, folded: nn.Module) -> CharMLP:
    """A CharMLP like `model` (a copy of C, its context length and init scheme) around the folded layer stack."""
    if not isinstance(folded, nn.Sequential):
        raise FoldError("the CharMLP's layers do not fold to a chain of layers: flatten the model into one "
                        "Sequential of layers before folding")
    result = CharMLP(model.C.detach().clone(), list(folded), model.context_length, model.init_scheme)
    result.C.requires_grad_(model.C.requires_grad)
    result.layers.training = model.layers.training
    result.training = model.training
    return result


register_adapter(CharMLP, Adapter(inner=_layers_to_fold, wrap=_with_layers,
                                  inputs=lambda model, X: (F.embedding(X, model.C).view(X.shape[0], -1),)))


def _embedding(generator, vocab_size=VOCAB_SIZE, emb_size=EMB_SIZE):
    return torch.randn(vocab_size, emb_size, generator=generator)


def e01_mlp(generator: torch.Generator, init: str = "zeros", context_length: int = CONTEXT_LENGTH,
            emb_size: int = EMB_SIZE, n_hidden: int = N_HIDDEN) -> CharMLP:
    """The notebook's E01 net: Linear(40,100)+Tanh, three Linear(100,100)+Tanh, Linear(100,27), all with bias."""
    from core.makemore.init import apply_init

    C = _embedding(generator, emb_size=emb_size)
    widths = [context_length * emb_size] + [n_hidden] * 4
    layers = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [Linear(fan_in, fan_out, generator=generator), Tanh()]
    layers.append(Linear(n_hidden, VOCAB_SIZE, generator=generator))
    model = CharMLP(C, layers, context_length)
    return apply_init(model, init, generator=generator)


def e02_mlp(generator: torch.Generator, context_length: int = CONTEXT_LENGTH, emb_size: int = EMB_SIZE,
            n_hidden: int = N_HIDDEN) -> CharMLP:
    """The notebook's E02 net: (Linear no bias, BatchNorm1d, Tanh) twice, then Linear no bias, BatchNorm1d.

    Linear weights carry the tanh gain 5/3; the last BatchNorm's gamma is 0.1 so the first
    softmax is nearly uniform.
    """
    C = _embedding(generator, emb_size=emb_size)
    head = BatchNorm1d(VOCAB_SIZE)
    layers: list[nn.Module] = [
        Linear(context_length * emb_size, n_hidden, bias=False, generator=generator), BatchNorm1d(n_hidden), Tanh(),
        Linear(n_hidden, n_hidden, bias=False, generator=generator), BatchNorm1d(n_hidden), Tanh(),
        Linear(n_hidden, VOCAB_SIZE, bias=False, generator=generator), head,
    ]
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, Linear):
                layer.weight.mul_(TANH_GAIN)
        assert head.gamma is not None
        head.gamma.mul_(0.1)
    return CharMLP(C, layers, context_length, init_scheme="kaiming(5/3)")


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """'name (k of n values)' for every parameter or buffer holding a nan or an inf."""
    found = []
    for name, tensor in model.state_dict().items():
        if tensor.dtype.is_floating_point:
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                found.append(f"{name} ({bad} of {tensor.numel()} values)")
    return found
