"""Tables 1-9 of the paper from run summaries (frames of
:func:`~fisherlab.report.load_summaries`): the statistics of one summary value over the
seeds of each (setting, column) cell, as CSV and Markdown.

- :func:`results_table` and :func:`table1` (test accuracy, Table 1), :func:`table2`
  (Table 2), :func:`table4` (max Tr(F)), :func:`table5` (seconds per epoch),
  :func:`table6` / :func:`table7` (final train accuracy);
- :func:`noisy_table`, :func:`table3`, :func:`table8`, :func:`table9` (Section 4.1);
- :func:`to_markdown`, :func:`write_table`.

A diverged run is never dropped silently: it is left out of means but shows in each
cell's status and counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic


#: The columns of Table 1 (and Tables 4-6), in the paper's order: the optimal learning
#: rate, the small-learning-rate baseline, and the baseline with each regularizer.
TABLE1_COLUMNS: tuple[str, ...] = ("eta_star", "baseline", "gpx", "gp", "fp", "gpr", "sam")  # SAM: beyond the paper


#: Column headers as printed in the paper.
DISPLAY_NAMES: dict[str, str] = {
    "eta_star": "η*",
    "baseline": "Baseline",
    "gpx": "GPx",
    "gp": "GP",
    "fp": "FP",
    "gpr": "GPr",
    "mixup": "Mixup",
    "sam": "SAM",
}


#: The columns of Table 3 (and Supplement Tables 8-9): the noisy-label experiments.
NOISY_COLUMNS: tuple[str, ...] = ("baseline", "mixup", "gpx", "fp", "gpr", "sam")


#: The hyperparameters a table cell reports (when its runs have them).
_HYPERS = (("lr", "lr"), ("alpha", "α"), ("beta", "β"), ("rho", "ρ"))


def _hyper_suffixes(df: pd.DataFrame, always: tuple[str, ...]) -> tuple[str, ...]:
    """The hyperparameter columns of a table: ``always``, and the others some run has."""
    return tuple(f"_{h}" for h, _ in _HYPERS if h in always or (h in df.columns and df[h].notna().any()))


_STATUS_OK = "ok"


def _unique_hyper(runs: pd.DataFrame, col: str, where: str) -> float:
    if col not in runs.columns:
        return math.nan
    values = pd.to_numeric(runs[col], errors="coerce").dropna().unique()
    if len(values) == 0:
        return math.nan
    if len(values) > 1:
        raise ValueError(f"{where}: seeds disagree on {col}: {sorted(values.tolist())}")
    return float(values[0])


def _cell(runs: pd.DataFrame, value: str, scale: float, where: str) -> dict[str, Any]:
    if runs.empty:
        return {"": math.nan, "_std": math.nan, "_n": 0, "_runs": 0, "_status": "missing",
                **{f"_{h}": math.nan for h, _ in _HYPERS}}  # fmt: skip
    if "seed" in runs.columns:
        dup = runs[runs["seed"].notna() & runs["seed"].duplicated(keep=False)]
        if not dup.empty:
            dirs = dup["run_dir"].tolist() if "run_dir" in dup else []
            raise ValueError(f"{where}: several runs share a seed {dirs}")
    ok = runs["status"] == _STATUS_OK
    values = pd.to_numeric(runs.loc[ok, value], errors="coerce").to_numpy(float) * scale
    n, total = int(ok.sum()), len(runs)
    status = "ok" if n == total else ("diverged" if n == 0 else "partial")
    return {
        "": float(np.mean(values)) if n else math.nan,
        "_std": float(np.std(values, ddof=0)) if n else math.nan,
        "_n": n,
        "_runs": total,
        "_status": status,
        **{f"_{h}": _unique_hyper(runs, h, where) for h, _ in _HYPERS},
    }


#: The statistics columns of every cell, before its hyperparameters (see :func:`results_table`).
_CELL_SUFFIXES = ("", "_std", "_n", "_runs", "_status")


def _require_columns(df: pd.DataFrame, cols: Sequence[str], who: str) -> None:
    for col in cols:
        if col not in df.columns:
            raise ValueError(f"{who}: no {col!r} column")


def _table_row(
    key: dict[str, Any], here: pd.DataFrame, columns: Sequence[str], value: str, scale: float, where: str
) -> dict[str, Any]:
    """One table row: the ``key`` columns, then per column ``c`` the :func:`_cell`
    statistics of ``value * scale`` over the runs of ``here`` whose role is ``c``."""
    row = dict(key)
    for c in columns:
        cell = _cell(here[here["role"] == c], value, scale, f"{where}/{c}")
        row.update({f"{c}{suffix}": v for suffix, v in cell.items()})
    return row


def _table_frame(
    rows: list[dict[str, Any]], keys: Sequence[str], columns: Sequence[str], suffixes: Sequence[str]
) -> pd.DataFrame:
    """The rows as a frame: the ``keys``, then ``c + suffix`` per column and suffix, counts as int."""
    out = pd.DataFrame(rows, columns=[*keys, *(f"{c}{s}" for c in columns for s in suffixes)])
    for c in columns:
        out[f"{c}_n"] = out[f"{c}_n"].astype(int)
        out[f"{c}_runs"] = out[f"{c}_runs"].astype(int)
    return out


def results_table(
    df: pd.DataFrame,
    value: str,
    scale: float = 1.0,
    *,
    settings: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per setting and, for each column ``c`` of :data:`TABLE1_COLUMNS`, the
    statistics of ``value * scale`` over the final runs whose ``role`` is ``c`` — the
    layout of Table 1 and Supplement Tables 4-6.

    Output columns: ``setting`` and, per ``c``: ``c`` (mean over ok seeds), ``c_std``
    (population std, ddof=0; 0 for one seed), ``c_n`` (ok seeds), ``c_runs`` (all
    seeds, diverged ones included), ``c_status`` ("ok": all seeds ok; "diverged": none
    ok; "partial": some diverged, the mean is over the ok ones; "missing": no run),
    ``c_lr`` and ``c_alpha`` (the runs' hyperparameters, NaN when none). Any status
    other than "ok" counts as diverged.

    ``settings`` fixes the row order (settings without runs give all-missing rows);
    by default rows follow the order in which settings first appear in ``df``.
    ``columns`` fixes the columns; by default those of :data:`TABLE1_COLUMNS` that
    appear as a role anywhere in ``df``. Raises ``ValueError`` when the seeds of a cell
    disagree on lr or α, or two runs of a cell share a seed.
    """
    _require_columns(df, ("setting", "role", "status", value), "results_table")
    final = df[df["role"].isin(TABLE1_COLUMNS)]
    if columns is None:
        columns = [c for c in TABLE1_COLUMNS if (final["role"] == c).any()]
    else:
        unknown = [c for c in columns if c not in TABLE1_COLUMNS]
        if unknown:
            raise ValueError(f"results_table: unknown columns {unknown}; use {TABLE1_COLUMNS}")
    if settings is None:
        settings = list(dict.fromkeys(final["setting"].tolist()))
    rows = [
        _table_row({"setting": setting}, final[final["setting"] == setting], columns, value, scale, setting)
        for setting in settings
    ]
    return _table_frame(rows, ["setting"], columns, _CELL_SUFFIXES + _hyper_suffixes(df, ("lr", "alpha")))


def table1(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Table 1: test accuracy (%) at the epoch of best validation accuracy."""
    return results_table(df, "test_acc_at_best_val", 100.0, **kwargs)


def table2(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Table 2: test accuracy (%) at the best validation epoch of η* and of FP at η*
    itself, with data augmentation (settings with ``table: 2``)."""
    return results_table(df, "test_acc_at_best_val", 100.0, **kwargs)


def table7(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 7: the final-epoch training accuracy (%) of the Table 2 runs."""
    return results_table(df, "final_train_acc", 100.0, **kwargs)


def table4(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 4: the maximum Tr(F) along the optimization trajectory."""
    return results_table(df, "max_trace_fisher", **kwargs)


def table5(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 5: time per epoch in seconds (the trainer's own timing)."""
    return results_table(df, "seconds_per_epoch", **kwargs)


def table6(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 6: the final-epoch training accuracy (%)."""
    return results_table(df, "final_train_acc", 100.0, **kwargs)


def noisy_table(
    df: pd.DataFrame,
    value: str,
    scale: float = 1.0,
    *,
    noise: Sequence[float] | None = None,
    settings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The layout of Table 3: one row per (label noise, setting), and per column ``c`` of
    :data:`NOISY_COLUMNS` the statistics of ``value * scale`` over the runs whose
    ``role`` is ``c`` (the same cell columns as :func:`results_table`, plus ``c_beta``).
    ``df`` needs ``label_noise``, ``setting``, ``role`` and ``status`` columns; ``noise``
    and ``settings`` fix the row order (default: order of appearance)."""
    _require_columns(df, ("label_noise", "setting", "role", "status"), "noisy_table")
    if value not in df.columns:  # e.g. per-group accuracies of runs that all diverged in epoch 1
        df = df.assign(**{value: math.nan})
    runs = df[df["role"].isin(NOISY_COLUMNS)]
    noise = list(dict.fromkeys(runs["label_noise"].tolist())) if noise is None else list(noise)
    settings = list(dict.fromkeys(runs["setting"].tolist())) if settings is None else list(settings)
    suffixes = _CELL_SUFFIXES + _hyper_suffixes(df, ("lr", "alpha", "beta"))
    columns = [c for c in NOISY_COLUMNS if c != "sam" or (runs["role"] == "sam").any()]  # SAM: when it ran
    rows = []
    for f in noise:
        for setting in settings:
            here = runs[(runs["label_noise"] == f) & (runs["setting"] == setting)]
            if here.empty and not (runs["setting"] == setting).any():
                continue
            rows.append(_table_row({"label_noise": f, "setting": setting}, here, columns, value, scale, f"{f}/{setting}"))
    return _table_frame(rows, ["label_noise", "setting"], columns, suffixes)


def table3(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Table 3: test accuracy (%) at the best validation epoch, with noisy labels."""
    return noisy_table(df, "test_acc_at_best_val", 100.0, **kwargs)


def table8(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 8: final-epoch training accuracy (%) on the clean examples."""
    return noisy_table(df, "final_train_acc_clean", 100.0, **kwargs)


def table9(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 9: final-epoch training accuracy (%) on the noisy examples."""
    return noisy_table(df, "final_train_acc_noisy", 100.0, **kwargs)


def _fmt_hyper(x: float) -> str:
    return f"{x:.3g}"


def _table_columns(table: pd.DataFrame) -> list[str]:
    order = NOISY_COLUMNS if "label_noise" in table.columns else TABLE1_COLUMNS
    return [c for c in order if f"{c}_status" in table.columns]


def _format_cell(row: pd.Series, c: str, digits: int, hyper_sep: str) -> str:
    status = row[f"{c}_status"]
    if status == "missing" or pd.isna(status):
        return "not run"  # no run of this column for this row (e.g. an overlay left it out)
    n, runs = int(row[f"{c}_n"]), int(row[f"{c}_runs"])
    mean, std = row[c], row[f"{c}_std"]
    value = f"{mean:.{digits}f}" if n <= 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
    if status == "ok":
        text = value
    elif status == "diverged":
        text = "diverged"
    else:
        text = f"partial: {value} ({runs - n}/{runs} diverged)"
    hyper = [f"{symbol} {_fmt_hyper(row[f'{c}_{h}'])}" for h, symbol in _HYPERS
             if pd.notna(row.get(f"{c}_{h}", math.nan))]  # fmt: skip
    if hyper:
        text += f"{hyper_sep}({', '.join(hyper)})"
    return text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_row(cells: Sequence[Any]) -> str:
    """One row of a Markdown table: each cell as text, ``|`` escaped, line breaks as spaces."""
    return "| " + " | ".join(_md_escape(c) for c in cells) + " |"


def to_markdown(
    table: pd.DataFrame,
    digits: int = 2,
    *,
    setting_names: Mapping[str, str] | None = None,
    hyper_sep: str = " ",
) -> str:
    """A GitHub Markdown rendering of a :func:`results_table` frame, laid out as
    Table 1: a "Setting" column and one column per display name (η*, Baseline, ...).

    Cells: "mean ± std" (std omitted for a single seed), "diverged", "partial: mean ±
    std (k/n diverged)" or "not run" when no run exists, followed by the hyperparameters in
    parentheses, e.g. "87.16 ± 0.20 (lr 0.01, α 0.03)". ``setting_names`` maps setting
    ids to printed names; ``hyper_sep`` separates value and hyperparameters (use
    "<br>" to put them on a line of their own).
    """
    names = setting_names or {}
    cols = _table_columns(table)
    noisy = "label_noise" in table.columns
    keys = ["Label noise", "Setting"] if noisy else ["Setting"]
    header = keys + [DISPLAY_NAMES[c] for c in cols]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join([":---"] * len(keys) + ["---:"] * len(cols)) + " |",
    ]
    for _, row in table.iterrows():
        cells = [f"{row['label_noise']:.0%}"] if noisy else []
        cells += [names.get(row["setting"], row["setting"])]
        cells += [_format_cell(row, c, digits, hyper_sep) for c in cols]
        lines.append(md_row(cells))
    return "\n".join(lines) + "\n"


def write_table(
    table: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    **markdown_kwargs: Any,
) -> None:
    """Write ``table`` as CSV (``table.to_csv(index=False)``) and as Markdown
    (:func:`to_markdown`, keyword arguments passed on), each file atomically."""
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, to_markdown(table, **markdown_kwargs))
