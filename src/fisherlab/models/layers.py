"""Tiny layers shared by the normalisation-free residual networks.

- ``Scale``: ``y = alpha * x`` with one learnable scalar ``alpha``: the multiplier at the
  end of a residual branch in SkipInit (De & Smith 2020, init 0) and in Fixup (Zhang,
  Dauphin & Ma 2019, init 1).
- ``Bias``: ``y = x + beta`` with one learnable scalar ``beta`` (Fixup's scalar biases,
  init 0).

Both are modules (not bare parameters used inside ``forward``) so that the per-example
gradient engine (:mod:`fisherlab.per_example`) sees each one as a layer with a closed
form: for an example with output gradient ``delta`` (over all positions and channels),
``d loss / d beta = sum(delta)`` and ``d loss / d alpha = sum(delta * x)``.
"""

from __future__ import annotations

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
