"""ResNet-18 (He et al. 2016, ImageNet: BasicBlocks [2, 2, 2, 2], widths 64-512) without
BatchNorm, with Fixup initialisation (Zhang, Dauphin & Ma 2019, "Fixup initialization:
residual learning without normalization"): the ImageNet model of Section 3 and
Supplement I.1 of the paper.

    conv7x7(64, stride 2) +b ReLU maxpool3x3(stride 2)        (ImageNet stem)
    or conv3x3(64, stride 1) +b ReLU                            (``small_input=True``)
    4 stages of 2 blocks, widths 64, 128, 256, 512, stride 2 at the start of stages
    2-4; a block is
        xb = x + b1a
        branch = scale * conv3x3(ReLU(conv3x3(xb) + b1b) + b2a) + b2b
        out = ReLU(branch + shortcut),  shortcut = x, or conv1x1(xb) (strided)
    global average pooling, +b, linear(num_classes)

where each ``b`` is one learnable scalar bias and ``scale`` one learnable scalar
multiplier (``layers.Bias``, ``layers.Scale``). Convolutions have no bias; the linear
layer has one. This is the layout of Fixup's released code
(github.com/hongyi-zhang/Fixup, ``imagenet/models/fixup_resnet_imagenet.py``).

Parameters: torchvision's resnet18 has 11,689,512 at 1000 classes; dropping its 9,600
BN affine parameters and adding 42 scalars (5 per block, 2 outside the blocks) gives
11,679,954. ``small_input`` replaces the 7x7 stem (9,408 weights) by a 3x3 one (1,728):
11,672,274.

Fixup's rule (Zhang et al. 2019, Section 3), with L residual branches of m layers each
(here L = 8, m = 2):

1. the classification layer and the last layer of each residual branch are initialised
   to 0;
2. every other layer with a standard method, here He et al. 2015
   (N(0, 2 / (k*k*out_channels)), fan-out, as in Fixup's code), and the weight layers
   inside residual branches are then scaled by L^(-1/(2m-2)) = 8^(-1/2);
3. a scalar multiplier (init 1) in every branch and a scalar bias (init 0) before each
   convolution, linear layer and element-wise activation.

The stem convolution gets He init too (rule 2; Fixup's code leaves it at PyTorch's
default). ``small_input=True`` is for 32x32 images (e.g. downsampled ImageNet).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register
from .layers import Bias, Scale, residual_stages


def _he_(conv: nn.Conv2d, scale: float = 1.0) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    conv.weight.data.mul_(scale)


class FixupBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, num_branches: int):
        super().__init__()
        self.bias1a = Bias()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bias1b = Bias()
        self.bias2a = Bias()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.scale = Scale(1.0)
        self.bias2b = Bias()
        self.downsample = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )
        m = 2  # layers per residual branch
        _he_(self.conv1, num_branches ** (-1.0 / (2 * m - 2)))
        nn.init.zeros_(self.conv2.weight)
        if self.downsample is not None:
            _he_(self.downsample)

    def forward(self, x: Tensor) -> Tensor:
        xb = self.bias1a(x)
        out = F.relu(self.bias1b(self.conv1(xb)))
        out = self.bias2b(self.scale(self.conv2(self.bias2a(out))))
        short = x if self.downsample is None else self.downsample(xb)
        return F.relu(out + short)


class FixupResNet(nn.Module):
    """ResNet with BasicBlocks, no normalisation, Fixup initialisation."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 1000,
        small_input: bool = False,
        width: int = 64,
        in_channels: int = 3,
    ):
        super().__init__()
        self.num_branches = L = sum(layers)
        self.small_input = small_input
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        _he_(self.conv1)
        self.bias1 = Bias()
        widths = [width * 2**i for i in range(len(layers))]
        stages, cin = residual_stages(partial(FixupBasicBlock, num_branches=L), width, widths, layers)
        self.stages = nn.Sequential(*stages)
        self.bias2 = Bias()
        self.fc = nn.Linear(cin, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bias1(self.conv1(x)))
        if not self.small_input:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.stages(x).mean((2, 3))
        return self.fc(self.bias2(x))


@register("resnet18_fixup")
def resnet18_fixup(num_classes: int = 1000, small_input: bool = False, in_channels: int = 3) -> FixupResNet:
    """ResNet-18 without BN, Fixup init; ``small_input`` for 32x32 images."""
    return FixupResNet((2, 2, 2, 2), num_classes, small_input=small_input, in_channels=in_channels)
