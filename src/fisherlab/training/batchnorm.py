"""BatchNorm statistics for evaluation (Supplement I.2: "To reduce variance, in testing we
update Batch Normalization statistics using 100 batches from the training set").

:func:`recalibrated_batchnorm` replaces every BatchNorm layer's running mean and variance
by their plain averages over ``num_batches`` training batches (momentum ``None``: the
cumulative average), for the duration of a ``with`` block; on leaving it the training
statistics and momenta are put back, so that training and the Tr(F) measurements (which
use the running statistics, in eval mode) are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..data import DeviceData


@contextmanager
def recalibrated_batchnorm(
    model: nn.Module, data: DeviceData, num_batches: int, batch_size: int, seed: int
) -> Iterator[nn.Module]:
    """Within the block, BN running statistics are averages over ``num_batches`` batches of
    ``data`` (shuffled, augmented as in training, by a generator seeded with ``seed``).
    A no-op when ``num_batches`` is 0 or the model has no BatchNorm layer."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if num_batches <= 0 or not bns:
        yield model
        return
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        gen = torch.Generator(device=data.device).manual_seed(seed)
        with torch.no_grad():
            for _, (x, _) in zip(range(num_batches), data.batches(batch_size, gen)):
                model(x)
        model.train(was_training)
        yield model
    finally:
        for m, (momentum, mean, var, count) in zip(bns, saved):
            m.momentum = momentum
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        model.train(was_training)
