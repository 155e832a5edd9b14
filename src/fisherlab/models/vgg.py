"""VGG-11 (Simonyan & Zisserman 2015, configuration "A") adapted to 32x32 inputs, with
neither BatchNorm nor dropout (Supplement I.2): eight 3x3 convolutions with ReLU and
five 2x2 max-pools bring 32x32 to 1x1x512, then one linear layer to the classes.
9,220,480 + 513*num_classes parameters (9.27M for CIFAR-100).

Initialisation: PyTorch's default.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register("vgg11")
class VGG11NoBN(nn.Module):
    def __init__(self, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for v in VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.ReLU()]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
