"""Layers and builders shared by the paper's residual and dense networks.

- ``Scale``: ``y = alpha * x`` with one learnable scalar ``alpha``: the multiplier at the
  end of a residual branch in SkipInit (De & Smith 2020, init 0) and in Fixup (Zhang,
  Dauphin & Ma 2019, init 1).
- ``Bias``: ``y = x + beta`` with one learnable scalar ``beta`` (Fixup's scalar biases,
  init 0).

Both are modules (not bare parameters used inside ``forward``) so that the per-example
gradient engine (:mod:`fisherlab.per_example`) sees each one as a layer with a closed
form: for an example with output gradient ``delta`` (over all positions and channels),
``d loss / d beta = sum(delta)`` and ``d loss / d alpha = sum(delta * x)``.

- ``residual_stages``: the body of a ResNet (He et al. 2016), stages of blocks in which
  the first block of every stage but the first has stride 2 (CIFAR ResNet, WRN, Fixup).
- ``he_normal_fan_out_`` / ``he_bn_init_``: He et al. (2015) fan-out initialisation of
  convolutions, BN weight 1 and bias 0 (the released code of WRN and of DenseNet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class Scale(nn.Module):
    """``alpha * x`` with a learnable scalar ``alpha`` (initialised to ``init``)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class Bias(nn.Module):
    """``x + beta`` with a learnable scalar ``beta`` (initialised to ``init``)."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


def residual_stages(
    block: Callable[[int, int, int], nn.Module], cin: int, widths: Sequence[int], depths: Sequence[int]
) -> tuple[list[nn.Sequential], int]:
    """Stage ``i`` holds ``depths[i]`` blocks ``block(cin, cout, stride)`` of width
    ``cout = widths[i]``; the first block of every stage after the first has stride 2
    (halves the resolution), all others stride 1 (He et al. 2016, Section 4.2). Blocks
    are built in order, so a seeded build draws the same initial weights as a hand-written
    loop. Returns the stages (one ``nn.Sequential`` each) and the width the last block
    outputs."""
    stages = []
    for i, (cout, n) in enumerate(zip(widths, depths, strict=True)):
        blocks = []
        for j in range(n):
            blocks.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return stages, cin


def he_normal_fan_out_(conv: nn.Conv2d) -> None:
    """w ~ N(0, 2 / (k_h * k_w * out_channels)), bias 0 (He et al. 2015, fan-out mode)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def he_bn_init_(model: nn.Module) -> None:
    """Every ``Conv2d`` of ``model`` by :func:`he_normal_fan_out_`, every ``BatchNorm2d``
    weight 1 and bias 0, in ``model.modules()`` order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            he_normal_fan_out_(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
