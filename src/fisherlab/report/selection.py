"""Hyperparameter selection on the validation split (Section 4: "We tune the
hyperparameters on the validation set"; Supplement I.2-I.3): η* from an lr grid, α*
(β* for mixup) from a strength grid, by the best validation accuracy at the best epoch
(early stopping)."""

from __future__ import annotations

import math

import pandas as pd

_STATUS_OK = "ok"


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
        values = pd.to_numeric(df[key], errors="coerce").dropna()
        if values.empty:
            raise
        return float(values.min()), f"fallback: no run of the {key} grid finished ok; its smallest value"
