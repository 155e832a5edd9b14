"""An MLflow run (:mod:`fisherlab.tracking`)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from .base import Sink


class MLflowSink(Sink):
    """An MLflow run in ``experiment`` at ``tracking_uri`` (e.g. ``"file:./mlruns"``, a
    local store), through ``mlflow.tracking.MlflowClient`` (no global active run).
    ``params`` are logged once; ``close`` ends the run as FINISHED. MLflow 3 refuses
    its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is true: a ``file:`` URI (what this
    sink is asked for) sets it, unless the environment already says otherwise."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "fisherlab", *,
                 run_name: str | None = None, params: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if tracking_uri is not None and (tracking_uri.startswith("file:") or "://" not in tracking_uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        if params:
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
