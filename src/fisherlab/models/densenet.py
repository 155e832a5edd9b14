"""DenseNet (L=40, k=12) of Huang et al. 2017 ("Densely connected convolutional
networks"), the basic version for CIFAR: no bottleneck layers, no compression
(Section I.2 of the paper; Huang et al. Table 2 lists it with 1.0M parameters).

    conv3x3(16)
    3 dense blocks of (L - 4) / 3 = 12 layers; a layer is BN-ReLU-conv3x3(k) and its
    k output channels are concatenated to its input (16 -> 160, 160 -> 304, 304 -> 448)
    between blocks a transition BN-ReLU-conv1x1(same width)-avgpool2 (32 -> 16 -> 8)
    BN-ReLU, global average pooling, linear(num_classes)

Convolutions have no bias (BN follows each). 1,015,232 + 449*num_classes parameters
(1,019,722 = 1.02M for 10 classes; 1,060,132 = 1.06M for CIFAR-100).

``drop_rate`` > 0 adds the dropout that Huang et al. put after each convolution but the
first when training without data augmentation; the default 0 leaves it out (the paper
does not say it used dropout; measurements run in eval mode, where dropout is the
identity either way).

Initialisation (Huang et al.'s released code, from fb.resnet.torch): convolutions
N(0, 2 / (k*k*out_channels)) (He et al. 2015, fan-out), BN weight 1 and bias 0, the
linear layer PyTorch's default weight and a zero bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import he_bn_init_
from .registry import register


class DenseLayer(nn.Module):
    """x -> cat(x, conv3x3(ReLU(BN(x))))."""

    def __init__(self, cin: int, growth: int, drop_rate: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, self.drop_rate, self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2, same number of channels (no compression)."""

    def __init__(self, c: int, drop_rate: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, self.drop_rate, self.training)
        return F.avg_pool2d(out, 2)


class DenseNet(nn.Module):
    """Basic DenseNet (no bottleneck, no compression) of depth L = 3n + 4 for 32x32 inputs."""

    def __init__(
        self,
        depth: int = 40,
        growth_rate: int = 12,
        num_classes: int = 100,
        in_channels: int = 3,
        stem_channels: int = 16,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if depth < 7 or (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 3
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        c = stem_channels
        for b in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, growth_rate, drop_rate))
                c += growth_rate
            if b < 2:
                layers.append(Transition(c, drop_rate))
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

        he_bn_init_(self)  # the convolutions have no bias
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


@register("densenet40_12")
def densenet40_12(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> DenseNet:
    """DenseNet-40 (k=12), basic: no bottleneck, no compression."""
    return DenseNet(40, 12, num_classes, in_channels=in_channels, drop_rate=drop_rate)
