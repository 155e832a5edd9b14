"""SimpleCNN: the Keras ``cifar10_cnn`` example without dropout and with the dense layer
reduced to 128 units (Supplement I.2). 361,898 parameters for 10 classes.

    conv3x3(32, same) relu  conv3x3(32, valid) relu  maxpool2
    conv3x3(64, same) relu  conv3x3(64, valid) relu  maxpool2
    flatten  dense(128) relu  dense(num_classes)

Initialisation: PyTorch's default.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register


@register("simple_cnn")
class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        side = ((image_size - 2) // 2 - 2) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
