"""Run outputs into frames: a run's ``summary.json`` (:func:`read_run`) and many of them
as one frame, a row per run (:func:`load_summaries`). A run directory holds
``metrics.csv`` (one row per epoch), ``curvature.csv`` (one row per Tr(F) measurement)
and ``summary.json`` (:mod:`fisherlab.runio`; the run plan adds ``setting``, ``role``,
``regularizer``, ``lr``, ``alpha``, ...)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def _summary_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".json" and not p.is_dir() else p / "summary.json"


def _null_to_nan(value: Any) -> Any:
    return math.nan if value is None else value


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``summary.json`` of one run (``run_dir`` may also be the file itself).

    Top-level JSON nulls become NaN (that is how :mod:`fisherlab.runio` writes NaN);
    the nested ``config`` is returned as written. Raises ``ValueError`` naming the file
    when it is missing, unreadable, not JSON, or not a JSON object.
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
    return {k: _null_to_nan(v) for k, v in data.items()}


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
