"""A run's directory on disk, one owner for its layout: :class:`RunDir` names every file
of a run and reads and writes the ones that are data.

A run directory (``results/runs/<run id>`` in the pipeline, :data:`RUNS`; any folder
for :func:`fisherlab.experiment.run`) holds

- ``summary.json`` (the trainer's summary plus the run's labels), ``metrics.csv`` (one
  row per epoch), ``curvature.csv`` (one row per Tr(F) measurement) and ``model.pt``
  (the final weights): the declared outputs of the ``train`` rule (:meth:`RunDir.outputs`);
- ``snapshots/``: the weights kept along training (Section 5, Supplement I.4):
  ``epoch<E>.pt`` for E of ``keep_epochs`` and ``best.pt`` (``keep_best``), with
  ``snapshots.identity.json`` beside the folder;
- the Tr(H) results (Supplement B): ``hessian.json`` and ``hessian_snapshots.csv``
  (their names are :mod:`fisherlab.hessian.spec`'s);
- ``train.lock`` while a trainer holds it (its name is :mod:`fisherlab.runs.runlock`'s), ``tensorboard/``,
  and the jobs' logs and benchmark files.

The resumable state, ``checkpoint.pt``, is kept outside the declared outputs in the
pipeline (``results/checkpoints/<run id>``, :data:`CHECKPOINTS`; :meth:`RunDir.of`),
and inside the run directory otherwise.

Every path is a ``str`` joined with ``/``, so a path with a Snakemake wildcard
(``RunDir.of("{run}").summary``) is the same string the rules always wrote. Pure Python
(no torch, no pandas at import): the run plan imports it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..atomic import write_text_atomic
from ..hessian.spec import HESSIAN_JSON, SNAPSHOT_HESSIAN
from .runlock import LOCK_NAME

RUNS = "results/runs"  # the pipeline's run directories: results/runs/<run id>/
CHECKPOINTS = "results/checkpoints"  # a pipeline run's resumable state, outside its declared outputs


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV; the columns are every key of any row (in order of appearance),
    empty where a row lacks the key (e.g. a split not evaluated at that epoch)."""
    buf = io.StringIO()
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as None: JSON null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _json_text(record: Any) -> str:
    return json.dumps(json_safe(record), indent=2) + "\n"


@dataclass(frozen=True)
class RunDir:
    """The files of the run in folder ``path`` (a ``str``; a path-like is converted).
    ``state``: the folder of its resumable checkpoint (None: ``path`` itself).

    >>> run = RunDir.of("simplecnn_c10/final/fp/seed0")
    >>> run.summary
    'results/runs/simplecnn_c10/final/fp/seed0/summary.json'
    >>> run.checkpoint
    'results/checkpoints/simplecnn_c10/final/fp/seed0/checkpoint.pt'
    >>> RunDir("out/lr0.1").snapshot(RunDir.snapshot_key(3))
    'out/lr0.1/snapshots/epoch3.pt'
    """

    path: str
    state: str | None = None

    # the names of a run's files, relative to its folder
    SUMMARY: ClassVar[str] = "summary.json"
    METRICS: ClassVar[str] = "metrics.csv"
    CURVATURE: ClassVar[str] = "curvature.csv"
    MODEL: ClassVar[str] = "model.pt"
    CHECKPOINT: ClassVar[str] = "checkpoint.pt"
    SNAPSHOTS: ClassVar[str] = "snapshots"  # folder of the weights kept along training
    SNAPSHOTS_IDENTITY: ClassVar[str] = "snapshots.identity.json"  # beside it: whose weights they are
    BEST_KEY: ClassVar[str] = "best"  # snapshots/best.pt: the weights of the best epoch (keep_best)
    BEST: ClassVar[str] = "best.pt"
    HESSIAN: ClassVar[str] = HESSIAN_JSON  # Tr(H) of the final weights
    HESSIAN_SNAPSHOTS: ClassVar[str] = SNAPSHOT_HESSIAN  # Tr(H) of each kept weights file
    LOCK: ClassVar[str] = LOCK_NAME  # runlock's (a file that module loads stand-alone, without this package)
    TENSORBOARD: ClassVar[str] = "tensorboard"
    # the pipeline jobs' logs and benchmark files (rules train, adopt, trace_hessian, trace_hessian_snapshots)
    TRAIN_LOG: ClassVar[str] = "train.log"
    TRAIN_BENCHMARK: ClassVar[str] = "benchmark.tsv"
    ADOPT_LOG: ClassVar[str] = "adopt.log"
    HESSIAN_LOG: ClassVar[str] = "hessian.log"
    HESSIAN_BENCHMARK: ClassVar[str] = "hessian-benchmark.tsv"
    HESSIAN_SNAPSHOTS_LOG: ClassVar[str] = "hessian_snapshots.log"
    HESSIAN_SNAPSHOTS_BENCHMARK: ClassVar[str] = "hessian_snapshots-benchmark.tsv"
    #: the declared outputs of a training run (rules train and adopt), by output name, in order
    OUTPUTS: ClassVar[dict[str, str]] = {"summary": SUMMARY, "metrics": METRICS, "curvature": CURVATURE,
                                         "model": MODEL}  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("path", "state"):
            value = getattr(self, name)
            if value is None and name == "state":
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"RunDir {name} must be a str or os.PathLike, got {type(value).__name__}")
            object.__setattr__(self, name, os.fspath(value))

    @classmethod
    def of(cls, run_id: str) -> RunDir:
        """The pipeline's run ``run_id``: ``results/runs/<run_id>``, its checkpoint in
        ``results/checkpoints/<run_id>``."""
        return cls(f"{RUNS}/{run_id}", f"{CHECKPOINTS}/{run_id}")

    def file(self, name: str) -> str:
        """The path of the run's file ``name`` (one of the class's names)."""
        return f"{self.path}/{name}"

    # --- names ---------------------------------------------------------------------------

    @property
    def summary(self) -> str:
        return self.file(self.SUMMARY)

    @property
    def metrics(self) -> str:
        return self.file(self.METRICS)

    @property
    def curvature(self) -> str:
        return self.file(self.CURVATURE)

    @property
    def model(self) -> str:
        return self.file(self.MODEL)

    @property
    def checkpoint(self) -> str:
        return f"{self.state if self.state is not None else self.path}/{self.CHECKPOINT}"

    @property
    def snapshots(self) -> str:
        return self.file(self.SNAPSHOTS)

    @property
    def snapshots_identity(self) -> str:
        return self.file(self.SNAPSHOTS_IDENTITY)

    @staticmethod
    def snapshot_key(epoch: int) -> str:
        """The name of the weights kept at the end of epoch ``epoch`` (0: the initial
        weights), without the suffix: ``epoch<E>``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"an epoch is an int >= 0, got {epoch!r}")
        return f"epoch{epoch}"

    @classmethod
    def snapshot_name(cls, epoch: int) -> str:
        """``epoch<E>.pt``: the file name of the weights kept at the end of epoch E."""
        return cls.snapshot_key(epoch) + ".pt"

    def snapshot(self, key: str) -> str:
        """The kept weights ``snapshots/<key>.pt`` (``key``: :meth:`snapshot_key` or
        :data:`BEST_KEY`)."""
        return f"{self.snapshots}/{key}.pt"

    @property
    def hessian(self) -> str:
        return self.file(self.HESSIAN)

    @property
    def hessian_snapshots(self) -> str:
        return self.file(self.HESSIAN_SNAPSHOTS)

    @property
    def lock(self) -> str:
        return self.file(self.LOCK)

    @property
    def tensorboard(self) -> str:
        return self.file(self.TENSORBOARD)

    def outputs(self) -> dict[str, str]:
        """The declared outputs of a training run: summary, metrics, curvature, model."""
        return {name: self.file(file) for name, file in self.OUTPUTS.items()}

    @classmethod
    def is_summary(cls, path: str | os.PathLike) -> bool:
        """Whether ``path`` names a run's ``summary.json``."""
        return os.path.basename(os.fspath(path)) == cls.SUMMARY

    # --- reading and writing (each write atomic: a crash never leaves a partial file) --------

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.metrics, rows_to_csv(rows))

    def write_curvature(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.curvature, rows_to_csv(rows))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary`` as indented JSON, NaN and infinities as null."""
        write_text_atomic(self.summary, _json_text(summary))

    def read_summary(self) -> dict[str, Any]:
        """The parsed ``summary.json``, unchecked (nulls stay None; the checked reader
        for tables and figures is :func:`fisherlab.report.read_run`)."""
        with open(self.summary) as f:
            return json.load(f)

    def write_hessian(self, record: dict[str, Any]) -> None:
        """Tr(H) of the final weights (:func:`fisherlab.hessian.trace_hessian_of_run`)."""
        write_text_atomic(self.hessian, _json_text(record))

    def write_hessian_snapshots(self, rows: list[dict[str, Any]]) -> None:
        """Tr(H) of each kept weights file (:func:`fisherlab.hessian.trace_hessian_of_snapshots`),
        one row each, as pandas writes the frame of the rows."""
        import pandas as pd

        write_text_atomic(self.hessian_snapshots, pd.DataFrame(rows).to_csv(index=False))

    def read_hessian_snapshots(self):
        """The rows of ``hessian_snapshots.csv`` as a pandas frame."""
        import pandas as pd

        return pd.read_csv(self.hessian_snapshots)
