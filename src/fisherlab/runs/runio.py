"""A run's outputs on disk, readable by a person: metrics.csv (one row per epoch),
curvature.csv (one row per measurement: step, Tr(F), Tr(F_B)) and summary.json.
Each file is written atomically, so a crash never leaves a partial file; the names and
formats are :class:`fisherlab.runs.rundir.RunDir`'s."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rundir import RunDir, json_safe, rows_to_csv  # noqa: F401  (rows_to_csv, json_safe: their old import path)

if TYPE_CHECKING:  # the runs layer sits below the training loop: no import of it at run time
    from ..training.trainer import TrainResult


def write_run(result: TrainResult, out_dir: str | os.PathLike, **extra: Any) -> Path:
    """Write metrics.csv, curvature.csv and summary.json (with ``extra`` keys added to
    the summary, for example the code version) under ``out_dir``."""
    run = RunDir(out_dir)
    run.write_metrics(result.metrics)
    run.write_curvature(result.curvature)
    run.write_summary({**result.summary, **extra})
    return Path(out_dir)


def code_version() -> str:
    """fisherlab's version, plus ``git describe --always --dirty`` of its source tree
    when it is installed from a git checkout (as with ``pip install -e .``)."""
    import subprocess

    from .._version import __version__

    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{described}"
