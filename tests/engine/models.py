"""Small models the fold examples share, their values drawn from one generator `g` (torch's global RNG is left as
it was): `with_statistics` gives every BatchNorm running statistics and affine terms, `conv` and `linear` build
layers; Blocks folds some BatchNorms and keeps the others, Residual adds a conv/BatchNorm branch to its input,
UnknownNorm is a BatchNorm type fold has no kind for."""

import torch
from torch import nn

g = torch.Generator().manual_seed(0)


def with_statistics(model: nn.Module) -> nn.Module:
    """The model in eval mode, every BatchNorm's statistics and affine terms drawn from the module's generator."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def conv(c_in, c_out, k=3, padding=1, **kw):
    with torch.random.fork_rng(devices=[]):  # nn.Conv2d draws its init from the global RNG
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        return nn.Conv2d(c_in, c_out, k, padding=padding, **kw)


def linear(fan_in: int, fan_out: int, gen: torch.Generator) -> nn.Linear:
    """An nn.Linear whose weight and bias are drawn from gen (nn.Linear's own init draws from the global RNG)."""
    layer = nn.Linear(fan_in, fan_out, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5)
        layer.bias.copy_(torch.randn(fan_out, generator=gen))
    return layer


class Blocks(nn.Module):
    """stem conv → bn (folds); a residual whose conv output is also added (bn kept: other users); a bn after the add
    (kept: producer is add); a bn before a zero-padded conv (kept) and one before a reflect-padded conv (folds)."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = conv(3, 4), nn.BatchNorm2d(4)
        self.res, self.res_bn, self.add_bn = conv(4, 4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.pre_bn, self.padded = nn.BatchNorm2d(4), conv(4, 4)
        self.pre_bn2, self.reflect = nn.BatchNorm2d(4), conv(4, 2, padding_mode="reflect")

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        r = self.res(x)
        x = self.add_bn(x + self.res_bn(r) + r)
        x = torch.relu(self.padded(self.pre_bn(x)))
        return self.reflect(self.pre_bn2(x))


class Residual(nn.Module):
    """x + bn(conv(x)), its branch passed through `depth` (torchvision's StochasticDepth in EfficientNet) if given."""

    def __init__(self, depth: nn.Module | None = None):
        super().__init__()
        self.depth, self.conv, self.bn = depth, conv(2, 2), nn.BatchNorm2d(2)

    def forward(self, x):
        branch = self.bn(self.conv(x))
        return x + (branch if self.depth is None else self.depth(branch))


class UnknownNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm type written outside torch.nn (as libraries write their own), of no kind fold knows."""

    def _check_input_dim(self, input):
        pass
