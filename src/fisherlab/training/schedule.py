"""Multi-step learning-rate schedules (Supplement I)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence


def multistep_lr(base_lr: float, epoch: int, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """lr(epoch) = base_lr * gamma ** (number of milestones <= epoch).

    Epochs count from 0; a milestone m means the decay applies from epoch m on. The
    paper's recipes (Supplement I.2) are milestones (150, 225) with gamma 0.1 for
    SimpleCNN, WRN and DenseNet, and ``every_n_epochs(80, 40, 300)`` for VGG-11.
    """
    if sorted(milestones) != list(milestones):
        raise ValueError(f"milestones must be increasing, got {list(milestones)}")
    return base_lr * gamma ** bisect_right(list(milestones), epoch)


def every_n_epochs(start: int, period: int, epochs: int) -> list[int]:
    """Milestones start, start + period, ... below ``epochs`` (VGG-11: 80, 120, ..., 280)."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    return list(range(start, epochs, period))
