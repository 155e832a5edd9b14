"""The selection files of the pipeline, one owner for their format: η* from an lr grid,
α* (β* for mixup, ρ* for SAM) from a strength grid, chosen on the validation split
(Section 4: "We tune the hyperparameters on the validation set"; Supplement I.2-I.3) by
the best validation accuracy at the best epoch (early stopping), or fixed by the config.

A selection is ``results/selection/<id>.json`` = {key, value, source, run_dir, grid}:

- :func:`decide` makes it (from the grid's run summaries, or the config's number),
  :func:`write_selection` writes it (atomically), :func:`read_selection` reads and checks it;
- :func:`select` / :func:`choose` pick the value on a frame of summaries;
- :func:`adopt` copies the chosen grid run's files to the selected run's place (the search
  seed's run at the selected strength is that grid run: it is not trained twice).

Pure Python; pandas only inside the functions that take a frame.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_write, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

SELECTIONS = "results/selection"  # a selection: results/selection/<selection id>.json
SELECTION_KEYS = ("key", "value", "source")  # what every selection file holds
_STATUS_OK = "ok"


class SelectionError(ValueError):
    """A selection file that cannot be read or lacks what it must hold."""


def decide(key: str, fixed: float | None, runs: pd.DataFrame | None = None) -> dict[str, Any]:
    """The selection of ``key``: the config's ``fixed`` number (source "config"), else
    :func:`choose` on the grid's run summaries ``runs`` (a frame of
    :func:`fisherlab.report.load_summaries`, with ``run_dir``)."""
    if fixed is not None:
        return {"key": key, "value": float(fixed), "source": "config", "run_dir": None, "grid": []}
    value, source = choose(runs, key)
    chosen = runs[runs[key] == value]["run_dir"].iloc[0]
    return {"key": key, "value": value, "source": source, "run_dir": chosen, "grid": runs[key].tolist()}


def write_selection(path: str | os.PathLike, choice: Mapping[str, Any]) -> None:
    """Write a selection (as :func:`decide` makes it) to ``path``, atomically."""
    write_text_atomic(path, json.dumps(dict(choice), indent=2) + "\n")


def read_selection(path: str | os.PathLike) -> dict[str, Any]:
    """A selection file, checked: a JSON object with ``key``, ``value`` (a finite
    number) and ``source``. Raises :class:`SelectionError` naming the file otherwise (for
    example a file edited by hand that lost a key)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise SelectionError(f"cannot read selection file {p}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise SelectionError(f"selection file {p} is not valid JSON ({e}); delete it to redo the selection") from e
    if not isinstance(data, dict):
        raise SelectionError(f"selection file {p} is not a JSON object; delete it to redo the selection")
    missing = [k for k in SELECTION_KEYS if k not in data]
    if missing:
        raise SelectionError(f"selection file {p} lacks {missing} (it needs {list(SELECTION_KEYS)}); "
                             "delete it to redo the selection")  # fmt: skip
    value = data["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SelectionError(f"selection file {p}: 'value' must be a finite number, got {value!r}")
    return data


def adopt(selection: str | os.PathLike, outputs: Mapping[str, str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Copy the chosen grid run's files (the selection's ``run_dir``) to ``outputs``
    (name -> destination; each file keeps its name), each atomically: a half-copied
    file never carries the output's name. Returns the (source, destination) pairs."""
    source = Path(read_selection(selection)["run_dir"])
    copied = []
    for dest in outputs.values():
        src, dest = source / Path(dest).name, Path(dest)
        with src.open("rb") as fin, atomic_write(dest) as fout:
            shutil.copyfileobj(fin, fout)
        copied.append((src, dest))
    return copied


def _single_value(df: pd.DataFrame, col: str, what: str) -> None:
    if col in df.columns:
        values = df[col].dropna().unique()
        if len(values) > 1:
            raise ValueError(
                f"{what}: the runs mix several {col} values {sorted(map(str, values))}; "
                f"select on one {col} at a time"
            )


def _select(df: pd.DataFrame, key: str, metric: str, what: str) -> float:
    for col in ("status", key, metric):
        if col not in df.columns:
            raise ValueError(f"{what}: no {col!r} column")
    ok = df[(df["status"] == _STATUS_OK) & df[key].notna()]
    _single_value(ok, "setting", what)
    _single_value(ok, "regularizer", what)
    means = ok.groupby(key)[metric].mean().dropna()
    if means.empty:
        raise NoFinishedRun(
            f"{what}: no run finished with status 'ok' and a finite {metric} "
            f"({len(df)} run(s) given)"
        )
    best = means.max()
    tied = [k for k, m in means.items() if math.isclose(m, best, rel_tol=1e-12, abs_tol=1e-12)]
    return float(max(tied))


def select(df: pd.DataFrame, key: str, metric: str = "best_val_acc") -> float:
    """The value of hyperparameter ``key`` (``lr``, ``alpha``, or ``beta`` for mixup)
    with the highest ``metric`` averaged over seeds, among runs with status "ok"; ties
    go to the larger value, runs without a ``key`` are ignored. With noisy labels the
    validation split is noisy too, and ``best_val_acc`` is its accuracy at the best
    epoch (early stopping, Supplement I.3).

    ``df`` holds one grid (a frame of :func:`~fisherlab.report.load_summaries`);
    :class:`NoFinishedRun` if no run is ok, ``ValueError`` if the runs mix settings or
    regularizers."""
    return _select(df, key, metric, f"select {key}")


class NoFinishedRun(ValueError):
    """No run of a grid finished with status "ok" (all diverged)."""


def choose(df: pd.DataFrame, key: str, metric: str = "best_val_acc") -> tuple[float, str]:
    """(value, source) for the pipeline's selection steps: the selected ``key`` (see
    :func:`select`), source "search"; or, when every run of the grid diverged, the
    smallest value of the grid, source "fallback: ...", so that the rest of the DAG goes
    on and its tables show the divergence instead of stopping."""
    try:
        return _select(df, key, metric, f"select {key}"), "search"
    except NoFinishedRun:
        import pandas as pd

        values = pd.to_numeric(df[key], errors="coerce").dropna()
        if values.empty:
            raise
        return float(values.min()), f"fallback: no run of the {key} grid finished ok; its smallest value"
