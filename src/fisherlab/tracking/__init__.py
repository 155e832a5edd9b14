"""Experiment-tracker sinks for :func:`fisherlab.train`'s ``log``: TensorBoard, Weights &
Biases, MLflow.

``train(cfg, data, log=...)`` takes a callable (one text line per epoch, as before), a
sink, or a list of both. A sink receives the run's rows as numbers: each epoch's metrics
row (:func:`fisherlab.training.trainer.train`'s ``metrics``: losses, accuracies, Tr(F) at the
epoch's end, seconds) under ``epoch/<key>``, and every Tr(F) measurement (``curvature``:
Tr(F) of Eq. 2, Tr(F_B) of Supplement C, the running training loss and accuracy) under
``curvature/<key>``, all at ``step`` = optimizer steps, so both share one x axis. The
curvature rows of an epoch are sent before its metrics row (steps never go back). NaN
(not measured) values are left out. Each sink is a context manager; ``train`` flushes
but never closes it, so one sink may follow several calls (a resumed run).

Every tracker library is imported in the sink's constructor, never by ``import
fisherlab``::

    from fisherlab.tracking import TensorBoardSink
    with TensorBoardSink("runs/fp") as tb:
        train(cfg, data, log=[print, tb])
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import POSITION_KEYS, LogTarget, RowEmitter, Sink, split_log

#: each tracker's sink and its module, imported on first use (with its library)
_SINKS = {"TensorBoardSink": "tensorboard_sink", "WandbSink": "wandb_sink", "MLflowSink": "mlflow_sink"}

__all__ = ["POSITION_KEYS", "LogTarget", "RowEmitter", "Sink", "split_log", *_SINKS]


def __getattr__(name: str) -> Any:
    module = _SINKS.get(name)
    if module is None:
        raise AttributeError(f"module 'fisherlab.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
