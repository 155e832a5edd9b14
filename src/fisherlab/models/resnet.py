"""CIFAR ResNets (He et al. 2016, "Deep residual learning", Section 4.2) without
BatchNorm, initialised as in Arpit, Campos & Bengio 2019 ("How to initialize your
network? Robust initialization for WeightNorm & ResNets", NeurIPS 2019): ResNet-26, -32,
-52 and -56 (Sections 3 and 5 and Supplement I.1/I.4 of the paper).

Architecture (He et al.'s CIFAR layout, with the residual block of Arpit et al.):

    conv3x3(16)
    3 stages of n blocks, widths 16, 32, 64, the first block of stages 2 and 3 with
    stride 2; a block is  out = shortcut(x) + conv3x3(ReLU(conv3x3(x)))
    with shortcut = x, or a strided conv1x1 where the width changes
    global average pooling, linear(num_classes)

Every convolution has a bias (there is no BN to provide the shift). The block is
He et al.'s basic block with its BNs removed and the ReLU kept only inside the
residual branch, ``h_b = h_{b-1} + W_2 ReLU(W_1 h_{b-1})``: the residual network that
Arpit et al. analyse and for which their initialisation is derived, as in their
released code (github.com/victorcampos7/weightnorm-init, ``models/nets.py`` ResNet and
``residual_blocks.py``: no ReLU after the stem, none after the addition, 1x1 projection
shortcuts).

Depth counts as in He et al.: 6n + 2 weighted layers (stem, 2 per block, linear), the
two 1x1 projections not counted. ResNet-26, -32, -56 are n = 4, 5, 9. "ResNet-52"
(the paper's Tables 4 and 9) is not 6n + 2; its Fig. 11 caption calls the same model
ResNet-50, which is n = 8. We build n = 8: 6*8 + 2 = 50 layers by He et al.'s count, and
52 when the two projection convolutions are counted too, so both names in the paper
describe it. Parameter counts (10 classes): ResNet-26 368,682, ResNet-32 465,674,
ResNet-52 756,650, ResNet-56 853,642 (He et al.'s BN versions with zero-padding
shortcuts: 0.46M for ResNet-32, 0.85M for ResNet-56, Table 6; see tests/test_models.py
for the arithmetic between the two).

Initialisation (Arpit et al. 2019). Their rule is stated for weight-normalised layers
w = g * v / ||v||: directions v orthogonal (``proposed_orthogonal`` in their code),
biases 0, and the gain of each layer chosen so that the signal neither explodes nor
vanishes through the residual stack:

    g = sqrt(gamma * fan_in / fan_out),   gamma = 2   stem and first conv of a block
                                          gamma = 1/N  last conv of a block
                                          gamma = 1   1x1 projection shortcut

with fan_in = c_in * k * k, fan_out = c_out * k * k and N the number of blocks per
stage (their "stage-wise normalization"): with the 1/N gain every residual branch
adds 1/N of the variance of its input, so a stage of N blocks grows the signal by at
most (1 + 1/N)^N < e instead of 2^N. At initialisation a weight-normalised layer is
exactly a plain weight whose rows (one per output channel, of length fan_in) are
orthogonal directions of norm g, so without WeightNorm we initialise each weight that
way: orthogonal rows (orthonormal columns when c_out > fan_in) rescaled to norm g,
i.e. entries of variance gamma / fan_out. The final linear layer keeps PyTorch's
default initialisation, as in their code.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from .layers import residual_stages
from .registry import register

DEPTHS = {26: 4, 32: 5, 52: 8, 56: 9}
"""Registered depth -> blocks per stage (52: see the module docstring)."""


@torch.no_grad()
def arpit_init_(conv: nn.Conv2d, gamma: float) -> None:
    """Rows of ``conv.weight`` (one per output channel): orthogonal directions of norm
    g = sqrt(gamma * fan_in / fan_out); bias 0 (Arpit et al. 2019, weight-space form)."""
    w = conv.weight
    fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
    v = torch.empty(w.shape[0], fan_in, dtype=w.dtype, device=w.device)
    nn.init.orthogonal_(v)
    v /= v.norm(dim=1, keepdim=True)
    w.copy_((math.sqrt(gamma * fan_in / fan_out) * v).reshape(w.shape))
    if conv.bias is not None:
        conv.bias.zero_()


class ResidualBlock(nn.Module):
    """out = shortcut(x) + conv2(ReLU(conv1(x)))."""

    def __init__(self, cin: int, cout: int, stride: int, blocks_per_stage: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        arpit_init_(self.conv1, 2.0)
        arpit_init_(self.conv2, 1.0 / blocks_per_stage)
        if self.shortcut is not None:
            arpit_init_(self.shortcut, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        short = x if self.shortcut is None else self.shortcut(x)
        return short + self.conv2(torch.relu(self.conv1(x)))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs without normalisation, Arpit et al. init."""

    def __init__(self, depth: int = 26, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        if depth in DEPTHS:
            n = DEPTHS[depth]
        elif depth >= 8 and (depth - 2) % 6 == 0:
            n = (depth - 2) // 6
        else:
            raise ValueError(f"ResNet depth must be 6n + 2 (or 52), got {depth}")
        self.depth, self.blocks_per_stage = depth, n
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1)
        arpit_init_(self.conv1, 2.0)
        widths = (width, 2 * width, 4 * width)
        stages, cin = residual_stages(partial(ResidualBlock, blocks_per_stage=n), width, widths, [n] * 3)
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _make(depth: int):
    def ctor(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels=in_channels)

    ctor.__name__ = ctor.__qualname__ = f"resnet{depth}"
    ctor.__doc__ = f"ResNet-{depth} ({DEPTHS[depth]} blocks per stage), no BN, Arpit et al. init."
    return register(f"resnet{depth}")(ctor)


resnet26, resnet32, resnet52, resnet56 = (_make(d) for d in (26, 32, 52, 56))
