"""A model's eval forward frozen into explicit ops (FrozenChain), the eager limit (minimal_chain), CUDA-graph replay.

Each core layer in eval has one op that computes exactly what its forward computes:

    Linear        torch.addmm(b, x, W), or torch.mm(x, W) without a bias
    BatchNorm1d   F.batch_norm(x, running_mean, running_var, gamma, beta, False, 0.0, eps)
    Tanh, ...     tanh_ / relu_ / sigmoid_ in place, on a tensor the chain made itself

so a chain of them is bit-identical to calling the modules, without Module.__call__ and
attribute look-ups at every call. The ops are built once, through public attributes only.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UnsupportedInput, UnsupportedModel
from core.makemore.layers import BatchNorm1d, Linear, ReLU, Sigmoid, Tanh
from core.makemore.model import CharMLP

Forward = Callable[[torch.Tensor], torch.Tensor]  # a net's eval forward: inputs -> outputs
EvalOp = tuple[Callable[..., torch.Tensor], tuple[Any, ...]]  # (op, args): op(x, *args) is a layer's eval forward

# activation type -> (out of place, for the caller's tensor; in place, for one the chain made)
ACTIVATION_OPS: dict[type[nn.Module], tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    Tanh: (torch.tanh, torch.Tensor.tanh_),
    ReLU: (torch.relu, torch.Tensor.relu_),
    Sigmoid: (torch.sigmoid, torch.Tensor.sigmoid_),
}
FREEZABLE = "core Linear, BatchNorm1d, Tanh, ReLU and Sigmoid layers"


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def linear_terms(layer: Linear | nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(W as (fan_in, fan_out), b) of a core or torch.nn Linear, detached; b is zeros for a Linear without a bias."""
    W = layer.weight.detach()
    W = W.T if isinstance(layer, nn.Linear) else W
    b = torch.zeros(W.shape[1], dtype=W.dtype, device=W.device) if layer.bias is None else layer.bias.detach()
    return W, b


def eval_op(name: str, layer: nn.Module, input_is_ours: bool) -> EvalOp:
    """(op, args) with op(x, *args) == layer(x) in eval, bit for bit; UnsupportedModel naming the layer if none exists.

    input_is_ours: x is a tensor the chain made itself, so an activation may overwrite it.
    """
    if type(layer) is Linear:  # exact types: a subclass may compute something else in its forward
        W = layer.weight.detach()
        return (torch.mm, (W,)) if layer.bias is None else (partial(torch.addmm, layer.bias.detach()), (W,))
    if type(layer) is BatchNorm1d:
        if layer.training:  # its forward would normalise with the batch's statistics and update the running ones
            raise UnsupportedModel(f"{name} (BatchNorm1d) is in training mode; FrozenChain freezes the eval forward: "
                                   f"call model.eval() first")
        running = (layer.get_buffer("running_mean").detach(), layer.get_buffer("running_var").detach())
        return F.batch_norm, (*running, _detached(layer.gamma), _detached(layer.beta), False, 0.0, layer.eps)
    if type(layer) in ACTIVATION_OPS:
        out_of_place, in_place = ACTIVATION_OPS[type(layer)]
        return (in_place if input_is_ours else out_of_place), ()
    raise UnsupportedModel(f"{name} ({type(layer).__name__}) has no frozen eval op: FrozenChain takes {FREEZABLE}; "
                           f"call the model itself for other layers")


class FrozenChain:
    """A model's eval forward frozen into explicit eval ops: a CharMLP (embedding included) or an nn.Sequential.

    Takes folded nets (Linear and activations) and unfolded ones (with eval BatchNorms) alike;
    any other layer, or a BatchNorm in training mode, is refused with UnsupportedModel naming it (the
    other layers compute the same in either mode). Calling a
    model pays for Module.__call__ and attribute look-ups at every layer, a large part of the
    forward at batch size 1 on a CPU; this pays for neither. It holds the parameters and running
    statistics detached, so in-place updates (an optimiser step, load_state_dict) are seen, while
    replaced parameters or layers, hooks and .to() are not: freeze again after those. Forward
    hooks never run. Outputs never require grad through the parameters (only a Sequential's input
    that requires grad can make one). A Sequential takes 2-D inputs.
    """

    __slots__ = ("C", "ops")

    def __init__(self, model: nn.Module) -> None:
        C: torch.Tensor | None
        if type(model) is CharMLP:
            C, layers, prefix = model.C.detach(), model.layers, "layers."
        elif type(model) is nn.Sequential:
            C, layers, prefix = None, model, ""
        else:
            raise UnsupportedModel(f"FrozenChain takes a CharMLP or an nn.Sequential of {FREEZABLE}, "
                                   f"got a {type(model).__name__}: call the model itself instead")
        ops = []
        input_is_ours = C is not None  # the embedding's output is the chain's own; a Sequential's input is not
        for name, layer in layers.named_children():
            ops.append(eval_op(prefix + name, layer, input_is_ours))
            input_is_ours = True
        self.C = C
        self.ops = ops

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        x = X if self.C is None else torch.embedding(self.C, X).view(X.shape[0], -1)
        for op, args in self.ops:
            x = op(x, *args)
        return x


def minimal_chain(folded: CharMLP) -> Forward:
    """The eager limit of a folded Linear/Tanh CharMLP: one addmm per layer plus in-place tanh, no modules."""
    C = folded.C.detach()
    linears = [linear_terms(layer) for layer in folded.layers if isinstance(layer, Linear)]
    last = len(linears) - 1

    def chain(X: torch.Tensor) -> torch.Tensor:
        x = torch.embedding(C, X).view(X.shape[0], -1)
        for i, (W, b) in enumerate(linears):
            x = torch.addmm(b, x, W)
            if i < last:
                x.tanh_()
        return x

    return chain


def capture(model: Forward, example: torch.Tensor, warmup: int = 3) -> Forward:
    """A function X -> model(X) replayed from a CUDA graph, for inputs of example's shape on its device.

    `model` is any callable: a module (which must be in eval) or a FrozenChain. The graph records
    its forward with autograd off. It reads the parameters' memory at every replay, so in-place
    updates are seen; replaced tensors or layers are not: capture again after those. The function
    returns the graph's own output tensor, which the next call overwrites: clone it to keep it.
    """
    if example.device.type != "cuda":
        raise UnsupportedInput(f"capture needs an input on a CUDA device, got one on {example.device}: "
                               f"move the model and the input to cuda, or call the model itself")
    if getattr(model, "training", False):
        raise UnsupportedModel(f"capture records the eval forward, but this {type(model).__name__} is in training "
                               f"mode: call model.eval() first")
    # Normal (not inference) tensors, so that replays work both inside and outside torch.inference_mode.
    with torch.cuda.device(example.device), torch.inference_mode(False), torch.no_grad():
        static_in = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as CUDA graph capture requires
            for _ in range(warmup):
                model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_in)

    def replay(X: torch.Tensor) -> torch.Tensor:
        if X.shape != static_in.shape:
            raise UnsupportedInput(f"this graph was captured for inputs of shape {tuple(static_in.shape)}, "
                                   f"got {tuple(X.shape)}: capture again with an input of this shape")
        static_in.copy_(X)
        graph.replay()
        return static_out

    return replay
