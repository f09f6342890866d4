"""The notebook's reference code, kept as its oracle: its data loop, its plain-class layers, its training loop.

Properties and benchmarks compare the library against this module: `prepare_data` against
`core.makemore.data.build_dataset`, `Net` + `train` against `core.makemore.train.train`. It imports nothing from the
library, so a bug there cannot hide here too. The code is the notebook's, made callable: every layer
keeps its output in `.out` (for `retain_grad`), parameters update with `p.data += -lr * p.grad`.
"""

import torch
import torch.nn.functional as F

CHARS = ".abcdefghijklmnopqrstuvwxyz"  # '.' (index 0) marks a name's start and end


def prepare_data(names, context_length: int):
    """(X, Y): every (context, next character) window of every name, as the notebook's Python loop builds them."""
    stoi = {ch: i for i, ch in enumerate(CHARS)}
    xs, ys = [], []
    for name in names:
        context = [0] * context_length
        for ch in name + ".":
            ix = stoi[ch]
            xs.append(context)
            ys.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(xs), torch.tensor(ys)


class Linear:
    def __init__(self, weight, bias=None):
        self.weight, self.bias = weight, bias

    def __call__(self, x):
        self.out = x @ self.weight
        if self.bias is not None:
            self.out += self.bias
        return self.out

    def parameters(self):
        return [self.weight] + ([] if self.bias is None else [self.bias])


class BatchNorm1d:
    """Training normalises with the batch mean and the unbiased batch variance, as the notebook's does."""

    def __init__(self, gamma, beta, running_mean, running_var, eps=1e-5, momentum=0.1):
        self.gamma, self.beta, self.eps, self.momentum = gamma, beta, eps, momentum
        self.running_mean, self.running_var = running_mean, running_var
        self.training = True

    def __call__(self, x):
        if self.training:
            xmean, xvar = x.mean(0, keepdim=True), x.var(0, keepdim=True)
        else:
            xmean, xvar = self.running_mean, self.running_var
        xhat = (x - xmean) / torch.sqrt(xvar + self.eps)
        self.out = self.gamma * xhat + self.beta
        if self.training:
            with torch.no_grad():
                self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * xmean
                self.running_var = (1 - self.momentum) * self.running_var + self.momentum * xvar
        return self.out

    def parameters(self):
        return [self.gamma, self.beta]


class Tanh:
    def __call__(self, x):
        self.out = torch.tanh(x)
        return self.out

    def parameters(self):
        return []


class Net:
    """A CharMLP's tensors (copied) in the notebook's plain-class layers, with the notebook's parameter list.

    The model is read through its public attributes only (C, layers, and each layer's weight/bias,
    gamma/beta/running_mean/running_var/eps/momentum), so the oracle depends on no library code.
    """

    def __init__(self, model):
        def copy(t):
            return t.detach().clone()

        self.C = copy(model.C)
        self.layers = []
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "Linear":
                self.layers.append(Linear(copy(layer.weight), None if layer.bias is None else copy(layer.bias)))
            elif kind == "BatchNorm1d":
                self.layers.append(BatchNorm1d(copy(layer.gamma), copy(layer.beta), copy(layer.running_mean),
                                               copy(layer.running_var), layer.eps, layer.momentum))
            elif kind == "Tanh":
                self.layers.append(Tanh())
            else:
                raise TypeError(f"the notebook has no {kind} layer")
        self.parameters = [self.C] + [p for layer in self.layers for p in layer.parameters()]
        for p in self.parameters:
            p.requires_grad = True


def train(net: Net, X, Y, steps: int, batch_size: int = 64, lr: float = 0.1, *, generator: torch.Generator):
    """The notebook's training loop: retain_grad on every layer output, p.data += -lr * p.grad.

    Batches are drawn with `generator`."""
    for _ in range(steps):
        ix = torch.randint(0, X.shape[0], (batch_size,), generator=generator)
        x = net.C[X[ix]].view(batch_size, -1)
        for layer in net.layers:
            x = layer(x)
        loss = F.cross_entropy(x, Y[ix])
        for layer in net.layers:
            layer.out.retain_grad()
        for p in net.parameters:
            p.grad = None
        loss.backward()
        for p in net.parameters:
            p.data += -lr * p.grad
