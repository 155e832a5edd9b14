"""Wide ResNet (Zagoruyko & Komodakis 2016) of depth 44 and width 3 for 32x32 inputs,
with BatchNorm (TinyImageNet, Supplement I.2) or without any normalisation layer and with
SkipInit (De & Smith 2020; CIFAR-100, Supplement I.2).

Architecture (pre-activation, as in the WRN paper and its released code):

    conv3x3(16)
    3 stages of n blocks, widths 16*k, 32*k, 64*k, the first block of stages 2 and 3
    with stride 2; a block is
        o = ReLU(BN(x));  branch = conv3x3(ReLU(BN(conv3x3(o))))
        out = shortcut + branch
    with shortcut = x, or conv1x1(o) (strided) where the width or the resolution changes
    BN-ReLU, global average pooling, linear(num_classes)

How depth counts. WRN's own rule, depth = 6n + 4, does not give an integer n for 44.
We count as He et al. (2016) do for their CIFAR ResNets, depth = 6n + 2: the stem
convolution, two 3x3 convolutions per block (3 stages x n blocks) and the final linear
layer, without the 1x1 shortcut convolutions. WRN-44-3 is then n = 7 blocks per stage
(widths 48, 96, 192): the only reading of "depth 44" that gives whole blocks, and the
same convention as the paper's ResNet-26/32/56 (all 6n + 2).

Variants:

- ``wrn44_3``: with BatchNorm. Convolutions have no bias (BN follows). 5,908,880 +
  193*num_classes parameters (5,928,180 = 5.93M for CIFAR-100; 5,947,480 = 5.95M for
  TinyImageNet's 200 classes).
- ``wrn44_3_skipinit``: no normalisation layer at all. Each BN is removed, each
  convolution gets a bias (the shift that BN's beta provided), and each residual branch
  ends with a learnable scalar multiplier initialised to 0 (SkipInit, De & Smith 2020,
  "Batch normalization biases residual blocks towards the identity function in deep
  networks"), so at initialisation every block outputs its shortcut and every
  identity block is the identity map. 5,904,517 + 193*num_classes parameters
  (5,923,817 for CIFAR-100).

Initialisation (WRN's released code, He et al. 2015 "MSR" init): convolutions
N(0, 2 / (k*k*out_channels)) (fan-out), biases 0, BN weight 1 and bias 0, the linear
layer PyTorch's default weight and a zero bias; SkipInit scalars 0.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register
from .layers import Scale, he_bn_init_, residual_stages


class WideBlock(nn.Module):
    """Pre-activation basic block; ``norm=False`` drops BN and adds SkipInit's scalar."""

    def __init__(self, cin: int, cout: int, stride: int, norm: bool):
        super().__init__()
        bias = not norm
        self.bn1 = nn.BatchNorm2d(cin) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.skipinit = None if norm else Scale(0.0)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, 0, bias=bias) if stride != 1 or cin != cout else None
        )

    def shortcut_path(self, x: Tensor) -> Tensor:
        """The block's shortcut branch alone (what the block outputs when alpha = 0)."""
        return x if self.shortcut is None else self.shortcut(F.relu(self.bn1(x)))

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        out = self.conv2(F.relu(self.bn2(self.conv1(o))))
        if self.skipinit is not None:
            out = self.skipinit(out)
        return short + out


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs; depth = 6n + 2 (see the module docstring)."""

    def __init__(
        self,
        depth: int = 44,
        width: int = 3,
        num_classes: int = 100,
        norm: bool = True,
        in_channels: int = 3,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"WRN depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.depth, self.width, self.blocks_per_stage = depth, width, n
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=not norm)
        stages, cin = residual_stages(partial(WideBlock, norm=norm), 16, widths, [n] * 3)
        self.stage1, self.stage2, self.stage3 = stages
        self.bn = nn.BatchNorm2d(cin) if norm else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

        he_bn_init_(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(x.mean((2, 3)))


@register("wrn44_3")
def wrn44_3(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-44-3 with BatchNorm."""
    return WideResNet(44, 3, num_classes, norm=True, in_channels=in_channels)


@register("wrn44_3_skipinit")
def wrn44_3_skipinit(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-44-3 without normalisation, with SkipInit (residual-branch scalars at 0)."""
    return WideResNet(44, 3, num_classes, norm=False, in_channels=in_channels)
