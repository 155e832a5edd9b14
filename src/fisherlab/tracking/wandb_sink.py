"""A Weights & Biases run (:mod:`fisherlab.tracking`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .base import Sink


class WandbSink(Sink):
    """A Weights & Biases run (``wandb.init(project=..., mode=..., dir=..., **kwargs)``);
    ``mode="offline"`` (the default) writes the run under ``dir`` with no network, to
    ``wandb sync`` later. ``close`` finishes the run."""

    def __init__(self, project: str | None = None, *, mode: str = "offline", dir: str | os.PathLike | None = None,
                 name: str | None = None, config: Mapping[str, Any] | None = None, **init_kwargs: Any) -> None:  # fmt: skip
        import wandb

        if dir is not None:
            os.makedirs(dir, exist_ok=True)
        self.run = wandb.init(project=project, mode=mode, dir=None if dir is None else os.fspath(dir), name=name,
                              config=dict(config) if config else None, **init_kwargs)  # fmt: skip

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()
