"""Fast inference for stacks of Linear and activation layers (the folded net), and CUDA-graph replay.

With autograd off (`torch.no_grad()` or `torch.inference_mode()`), a `torch.nn.Sequential` of hook-free
core `Linear`, `Tanh`, `ReLU` and `Sigmoid` layers runs as the minimal chain: one addmm per Linear (mm
without a bias) and its activation applied in place to that addmm's fresh output, with no module calls.
These are the layers' own ops in their order, so the result is bit-identical to calling the layers.
Anything else (a BatchNorm, another layer type or a subclass, a forward hook on a layer, on the stack or
registered globally) makes `plan` return None and the caller runs the modules as usual. The stack is
read again at every call, so replaced layers or parameters and new hooks are always honoured.
"""

import torch
from torch import nn
from torch.nn.modules import module as _module

from core.layers import Linear, ReLU, Sigmoid, Tanh

IN_PLACE = {Tanh: torch.Tensor.tanh_, ReLU: torch.Tensor.relu_, Sigmoid: torch.Tensor.sigmoid_}


def _attr(attrs: dict, params: dict, name: str):
    # What `module.name` resolves to: an instance attribute (a bias of None lives there), else the
    # registered parameter. Read from the dicts because Module.__getattr__ costs about as much as a
    # whole matmul at batch size 1.
    return attrs[name] if name in attrs else params.get(name)


def plan(layers):
    """[[W, b, in-place activation or None] per Linear] for `layers`, read now; None if it is no plain stack.

    A plain stack is an nn.Sequential of core Linear layers, each followed by at most one activation,
    with no forward hook anywhere that calling the modules would run.
    """
    if type(layers) is not nn.Sequential or _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return None
    attrs = layers.__dict__
    if attrs["_forward_hooks"] or attrs["_forward_pre_hooks"]:
        return None
    steps = []
    for layer in attrs["_modules"].values():
        attrs = layer.__dict__
        if attrs["_forward_hooks"] or attrs["_forward_pre_hooks"]:
            return None
        kind = type(layer)
        if kind is Linear:
            params = attrs["_parameters"]
            steps.append([_attr(attrs, params, "weight"), _attr(attrs, params, "bias"), None])
        elif kind in IN_PLACE and steps and steps[-1][2] is None:
            steps[-1][2] = IN_PLACE[kind]
        else:
            return None
    return steps


def run(steps, x):
    """x (2-D) through planned steps. Writes only into tensors it made itself, never into x."""
    for W, b, activation_ in steps:
        x = torch.mm(x, W) if b is None else torch.addmm(b, x, W)
        if activation_ is not None:
            activation_(x)
    return x


def forward(layers, x):
    """layers(x) as the minimal chain when autograd is off and the stack is plain; else None."""
    if torch.is_grad_enabled() or x.dim() != 2:
        return None
    steps = plan(layers)
    return None if steps is None else run(steps, x)


def charmlp_forward(model, X):
    """model(X) for a CharMLP with autograd off, embedding included, as the minimal chain; None unless plain."""
    steps = plan(model._modules["layers"])
    if steps is None:
        return None
    attrs = model.__dict__
    C = _attr(attrs, attrs["_parameters"], "C")
    return run(steps, torch.embedding(C, X).view(X.shape[0], -1))


class FrozenChain:
    """A plain net's eval forward frozen into the minimal chain: a CharMLP (embedding included) or an nn.Sequential.

    Calling a model pays for Module.__call__ and for reading its layers again (`plan`), about a
    fifth of the whole forward at batch size 1 on a CPU; this pays for neither. It holds the
    parameters detached, so in-place updates (an optimiser step, load_state_dict) are seen, while
    replaced parameters or layers, hooks and .to() are not: freeze again after those. Outputs never
    require grad. A Sequential takes 2-D inputs.
    """

    __slots__ = ("C", "steps")

    def __init__(self, model):
        layers, C = (model, None) if isinstance(model, nn.Sequential) else (model.layers, model.C)
        steps = plan(layers)
        if steps is None:
            raise ValueError("only a hook-free Sequential of core Linear layers, each followed by at most one "
                             "activation, freezes into a chain: fold the BatchNorms first (core.fold.fold)")
        self.C = None if C is None else C.detach()
        self.steps = [(W.detach(), None if b is None else b.detach(), act) for W, b, act in steps]

    def __call__(self, X):
        x = X if self.C is None else torch.embedding(self.C, X).view(X.shape[0], -1)
        return run(self.steps, x)


def capture(model, example: torch.Tensor, warmup: int = 3):
    """A function X -> model(X) replayed from a CUDA graph, for inputs of example's shape on its device.

    The graph records the model's eval forward with autograd off (the minimal chain for a folded
    net). It reads the parameters' memory at every replay, so in-place updates are seen; replaced
    tensors or layers are not: capture again after those. The function returns the graph's own
    output tensor, which the next call overwrites: clone it to keep it.
    """
    if example.device.type != "cuda":
        raise ValueError(f"capture needs an input on a CUDA device, got one on {example.device}")
    if model.training:
        raise ValueError("capture records the eval forward: call model.eval() first")
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

    def replay(X):
        if X.shape != static_in.shape:
            raise ValueError(f"this graph was captured for inputs of shape {tuple(static_in.shape)}, got {tuple(X.shape)}")
        static_in.copy_(X)
        graph.replay()
        return static_out

    return replay
