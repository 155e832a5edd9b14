"""TensorBoard event files (:mod:`fisherlab.tracking`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .base import Sink


class TensorBoardSink(Sink):
    """Scalars in TensorBoard event files under ``logdir`` (``torch.utils.tensorboard``;
    needs the ``tensorboard`` package). Flushed after every batch of rows."""

    def __init__(self, logdir: str | os.PathLike, **writer_kwargs: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = os.fspath(logdir)
        self.writer = SummaryWriter(log_dir=self.logdir, **writer_kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
