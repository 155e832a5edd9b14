"""A run's outputs on disk, readable by a person: metrics.csv (one row per epoch),
curvature.csv (one row per measurement: step, Tr(F), Tr(F_B)) and summary.json.
Each file is written atomically, so a crash never leaves a partial file."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic
from .trainer import TrainResult


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
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_run(result: TrainResult, out_dir: str | os.PathLike, **extra: Any) -> Path:
    """Write metrics.csv, curvature.csv and summary.json (with ``extra`` keys added to
    the summary, for example the code version) under ``out_dir``."""
    out = Path(out_dir)
    write_text_atomic(out / "metrics.csv", rows_to_csv(result.metrics))
    write_text_atomic(out / "curvature.csv", rows_to_csv(result.curvature))
    summary = json_safe({**result.summary, **extra})
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return out


def code_version() -> str:
    """fisherlab's version, plus ``git describe --always --dirty`` of its source tree
    when it is installed from a git checkout (as with ``pip install -e .``)."""
    import subprocess

    from ._version import __version__

    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{described}"
