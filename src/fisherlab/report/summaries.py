"""Run outputs into frames: a run's ``summary.json`` (:func:`read_run`) and many of them
as one frame, a row per run (:func:`load_summaries`). A run directory holds
``metrics.csv`` (one row per epoch), ``curvature.csv`` (one row per Tr(F) measurement)
and ``summary.json`` (:mod:`fisherlab.runs.runio`; the run plan adds ``setting``, ``role``,
``regularizer``, ``lr``, ``alpha``, ...)."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..runs.rundir import RunDir
from .runcheck import RunFileError, check_curves, check_hessian, check_summary


def _summary_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".json" and not p.is_dir() else Path(RunDir(p).summary)


def _null_to_nan(value: Any) -> Any:
    return math.nan if value is None else value


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``summary.json`` of one run (``run_dir`` may also be the file itself).

    Top-level JSON nulls become NaN (that is how :mod:`fisherlab.runs.runio` writes NaN);
    the nested ``config`` is returned as written. Raises ``ValueError`` naming the file
    when it is missing, unreadable, not JSON, or not a JSON object, and naming the key too
    (:class:`~fisherlab.report.runcheck.RunFileError`) when a value is of the wrong type,
    out of range, or missing for its status (:func:`~fisherlab.report.runcheck.check_summary`).
    """
    path = _summary_path(run_dir)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read run summary {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"run summary {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"run summary {path} is not a JSON object (got {type(data).__name__})")
    check_summary(data, path)
    return {k: _null_to_nan(v) for k, v in data.items()}


def read_hessian(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``hessian.json`` (Tr(H) of its final weights), checked
    (:func:`~fisherlab.report.runcheck.check_hessian`); nulls become NaN."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunFileError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise RunFileError(f"{path} is not a JSON object (got {type(data).__name__})")
    return {k: _null_to_nan(v) for k, v in check_hessian(data, path).items()}


def hessian_table(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """``results/hessian.csv``: one row per run with Tr(H) (:func:`read_hessian`), labelled by
    the setting, role and seed of the summary beside it; ``paths`` may hold other files of
    the runs (only the ``hessian.json`` ones are read)."""
    rows = []
    for path in (Path(p) for p in paths if Path(p).name == RunDir.HESSIAN):
        run = read_run(path.parent)
        rows.append({"setting": run["setting"], "role": run["role"], "seed": run["seed"], **read_hessian(path)})
    return pd.DataFrame(rows)


def _read_curves(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        text = path.read_text()
        # a run that ended before its first row (diverged at once) has an empty file
        frame = pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame(columns=list(required))
    except (OSError, UnicodeDecodeError, ValueError) as e:  # missing, unreadable, not CSV
        raise RunFileError(f"cannot read {path}: {e}") from e
    return check_curves(frame, path, required)


def read_metrics(run_dir: str | os.PathLike, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A run's ``metrics.csv`` (one row per epoch), every column numeric and in range
    (:func:`~fisherlab.report.runcheck.check_curves`); ``epoch`` and ``step`` required;
    an empty file (a run that ended before its first epoch) is a frame without rows.
    ``columns``: further columns the caller reads (e.g. ``val_acc``), required too.
    Raises :class:`~fisherlab.report.runcheck.RunFileError` naming the file and the column."""
    return _read_curves(Path(RunDir(run_dir).metrics), ("epoch", "step", *columns))


def read_curvature(run_dir: str | os.PathLike, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A run's ``curvature.csv`` (one row per Tr(F) measurement), checked as
    :func:`read_metrics`; ``step``, ``epoch`` and ``trace_fisher`` required."""
    return _read_curves(Path(RunDir(run_dir).curvature), ("step", "epoch", "trace_fisher", *columns))


def load_summaries(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per ``summary.json`` path (a run directory is accepted too).

    Columns: every top-level scalar key of the summaries (nested values such as
    ``config`` are dropped) and ``run_dir``, the directory holding the summary. A key
    absent from some summaries is NaN in those rows.
    """
    rows = []
    for p in paths:
        summary = read_run(p)
        row = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        row["run_dir"] = str(_summary_path(p).parent)
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["run_dir"])
    return pd.DataFrame(rows)
