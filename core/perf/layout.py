"""Channels-last layout for CPU inference of a folded conv net.

torch runs CPU convolutions through oneDNN, whose direct convolutions work in channels-last order (NHWC);
a conv whose weight is channels-last writes a channels-last output, so each conv after it reads that
layout too and no tensor is reordered between layers. On this project's 2-core x86 machine (one thread,
224² images, B = 1 and 8) that takes folded resnet18 to 0.73–0.79 and mobilenet_v2 to 0.68–0.81 of the time of
the same folded net in the default layout, and the other torchvision models tried to 0.66–0.91.

The values are those of the same layers: a convolution still sums its C_in/groups·volume products, in
another order, which the certified bound allows (it holds for every order of the sums, docs/design.md).
A model whose output is a feature map returns it channels-last: the same values, other strides.
"""

import itertools

import torch
from torch import nn

FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank: (N, C, H, W), (N, C, D, H, W)


def channels_last(module: nn.Module) -> nn.Module:
    """module, with each 4-D and 5-D parameter and buffer made channels-last in place (the others as they are).

    nn.Module.to(memory_format=torch.channels_last) refuses 5-D weights, which need channels_last_3d.
    """
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            layout = FORMATS.get(t.dim())
            if layout is not None:
                t.data = t.data.contiguous(memory_format=layout)
    return module
