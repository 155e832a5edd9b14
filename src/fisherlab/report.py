"""Tables and figures of "Catastrophic Fisher Explosion" (Jastrzebski et al., ICML 2021)
from the outputs of training runs: pure functions from pandas frames to frames,
Markdown and PNG files. Nothing here trains, schedules or knows about Snakemake.

A run directory holds ``metrics.csv`` (one row per epoch), ``curvature.csv`` (one row
per Tr(F) measurement) and ``summary.json`` (see :mod:`fisherlab.runio`; the pipeline
adds ``setting``, ``role``, ``regularizer``, ``lr``, ``alpha``, ``epsilon``, ...).

- :func:`read_run`, :func:`load_summaries`: summaries into one frame, a row per run.
- :func:`trace_fisher_initial`: Tr(F_i) of Section 3.
- :func:`select_lr`, :func:`select_alpha`: the validation-set selection of Section 4.
- :func:`results_table` and :func:`table1` (test accuracy, Table 1), :func:`table4`
  (max Tr(F), Table 4), :func:`table5` (seconds per epoch, Table 5), :func:`table6`
  (final train accuracy, Table 6); :func:`to_markdown`, :func:`write_table`.
- :func:`fig4`, :func:`fig4_multi`: validation accuracy and Tr(F) against epoch
  (Fig. 4 and Supplement Fig. 10).

A diverged run is never dropped silently: it is left out of means but shows in each
cell's status and counts.
"""

from __future__ import annotations

import json
import math
import os
import sys

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write, write_text_atomic

__all__ = [
    "TABLE1_COLUMNS",
    "DISPLAY_NAMES",
    "read_run",
    "load_summaries",
    "trace_fisher_initial",
    "select_lr",
    "select_alpha",
    "results_table",
    "table1",
    "table2",
    "table4",
    "table5",
    "table6",
    "table7",
    "NOISY_COLUMNS",
    "select_hyper",
    "choose",
    "NoFinishedRun",
    "noisy_table",
    "table3",
    "table8",
    "table9",
    "noisy_acc_at_clean_acc",
    "fig5",
    "fig12",
    "to_markdown",
    "write_table",
    "fig4",
    "fig4_multi",
]

#: The columns of Table 1 (and Tables 4-6), in the paper's order: the optimal learning
#: rate, the small-learning-rate baseline, and the baseline with each regularizer.
TABLE1_COLUMNS: tuple[str, ...] = ("eta_star", "baseline", "gpx", "gp", "fp", "gpr")

#: Column headers as printed in the paper.
DISPLAY_NAMES: dict[str, str] = {
    "eta_star": "η*",
    "baseline": "Baseline",
    "gpx": "GPx",
    "gp": "GP",
    "fp": "FP",
    "gpr": "GPr",
    "mixup": "Mixup",
}

#: The columns of Table 3 (and Supplement Tables 8-9): the noisy-label experiments.
NOISY_COLUMNS: tuple[str, ...] = ("baseline", "mixup", "gpx", "fp", "gpr")

#: The hyperparameters a table cell reports (when its runs have them).
_HYPERS = (("lr", "lr"), ("alpha", "α"), ("beta", "β"))

_STATUS_OK = "ok"


# --------------------------------------------------------------------------- loading


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


# ------------------------------------------------------------------- Tr(F_i), Section 3


def trace_fisher_initial(curvature: pd.DataFrame, epsilon: float) -> float:
    """Tr(F_i) of Section 3: Tr(F) at the first measurement (in step order) whose
    ``train_loss_running`` is below ``epsilon``, i.e. when the training loss first
    crosses the threshold that ends the early phase.

    NaN losses (the measurement at step 0) never count as a crossing. Returns NaN when
    the loss never goes below ``epsilon``.
    """
    for col in ("train_loss_running", "trace_fisher"):
        if col not in curvature.columns:
            raise ValueError(f"curvature frame has no {col!r} column")
    frame = curvature.sort_values("step", kind="stable") if "step" in curvature else curvature
    loss = pd.to_numeric(frame["train_loss_running"], errors="coerce")
    hit = frame[loss.notna() & (loss < epsilon)]
    if hit.empty:
        return math.nan
    return float(hit["trace_fisher"].iloc[0])


# ----------------------------------------------------------- hyperparameter selection


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


class NoFinishedRun(ValueError):
    """No run of a grid finished with status "ok" (all diverged)."""


def choose(df: pd.DataFrame, key: str, metric: str = "best_val_acc") -> tuple[float, str]:
    """(value, source) for the pipeline's selection steps: the selected ``key`` (see
    :func:`select_hyper`), source "search"; or, when every run of the grid diverged, the
    smallest value of the grid, source "fallback: ...", so that the rest of the DAG goes
    on and its tables show the divergence instead of stopping."""
    try:
        return _select(df, key, metric, f"select {key}"), "search"
    except NoFinishedRun:
        values = pd.to_numeric(df[key], errors="coerce").dropna()
        if values.empty:
            raise
        return float(values.min()), f"fallback: no run of the {key} grid finished ok; its smallest value"


def select_lr(df: pd.DataFrame, metric: str = "best_val_acc") -> float:
    """The learning rate with the highest ``metric`` (validation accuracy) averaged
    over seeds, among runs with status "ok" — how η* and the regularizers' runs are
    chosen on the validation set (Section 4, "We tune the hyperparameters on the
    validation set"). Ties go to the larger learning rate. Diverged runs are excluded.

    ``df`` holds one setting's learning-rate grid (a frame of :func:`load_summaries`);
    ``ValueError`` if no run is ok, or if the runs mix settings or regularizers.
    """
    return _select(df, "lr", metric, "select_lr")


def select_alpha(df: pd.DataFrame, metric: str = "best_val_acc") -> float:
    """The penalty strength α with the highest ``metric`` averaged over seeds, among
    ok runs (Section 4: α is tuned on the validation set over a log-spaced grid).
    Ties go to the larger α; runs without an α are ignored.

    ``df`` holds one setting's and one regularizer's α grid; ``ValueError`` if no run
    is ok, or if the runs mix settings or regularizers.
    """
    return _select(df, "alpha", metric, "select_alpha")


# -------------------------------------------------------------------- Tables 1, 4-6


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
    for col in ("setting", "role", "status", value):
        if col not in df.columns:
            raise ValueError(f"results_table: no {col!r} column")
    final = df[df["role"].isin(TABLE1_COLUMNS)]
    if columns is None:
        columns = [c for c in TABLE1_COLUMNS if (final["role"] == c).any()]
    else:
        unknown = [c for c in columns if c not in TABLE1_COLUMNS]
        if unknown:
            raise ValueError(f"results_table: unknown columns {unknown}; use {TABLE1_COLUMNS}")
    if settings is None:
        settings = list(dict.fromkeys(final["setting"].tolist()))
    rows = []
    for setting in settings:
        row: dict[str, Any] = {"setting": setting}
        here = final[final["setting"] == setting]
        for c in columns:
            cell = _cell(here[here["role"] == c], value, scale, f"{setting}/{c}")
            row.update({f"{c}{suffix}": v for suffix, v in cell.items()})
        rows.append(row)
    out = pd.DataFrame(rows, columns=["setting"] + [
        f"{c}{s}" for c in columns for s in ("", "_std", "_n", "_runs", "_status", "_lr", "_alpha")
    ])  # fmt: skip
    for c in columns:
        out[f"{c}_n"] = out[f"{c}_n"].astype(int)
        out[f"{c}_runs"] = out[f"{c}_runs"].astype(int)
    return out


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


# ------------------------------------------------- Tables 3, 8, 9 (Section 4.1)


def select_hyper(df: pd.DataFrame, key: str, metric: str = "best_val_acc") -> float:
    """The value of hyperparameter ``key`` (``alpha``, or ``beta`` for mixup) with the
    highest ``metric`` averaged over seeds, among ok runs; ties go to the larger value.
    With noisy labels the validation split is noisy too, and ``best_val_acc`` is its
    accuracy at the best epoch (early stopping, Supplement I.3)."""
    return _select(df, key, metric, f"select {key}")


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
    for col in ("label_noise", "setting", "role", "status"):
        if col not in df.columns:
            raise ValueError(f"noisy_table: no {col!r} column")
    if value not in df.columns:  # e.g. per-group accuracies of runs that all diverged in epoch 1
        df = df.assign(**{value: math.nan})
    runs = df[df["role"].isin(NOISY_COLUMNS)]
    noise = list(dict.fromkeys(runs["label_noise"].tolist())) if noise is None else list(noise)
    settings = list(dict.fromkeys(runs["setting"].tolist())) if settings is None else list(settings)
    suffixes = ("", "_std", "_n", "_runs", "_status") + tuple(f"_{h}" for h, _ in _HYPERS)
    rows = []
    for f in noise:
        for setting in settings:
            here = runs[(runs["label_noise"] == f) & (runs["setting"] == setting)]
            if here.empty and not (runs["setting"] == setting).any():
                continue
            row: dict[str, Any] = {"label_noise": f, "setting": setting}
            for c in NOISY_COLUMNS:
                cell = _cell(here[here["role"] == c], value, scale, f"{f}/{setting}/{c}")
                row.update({f"{c}{suffix}": v for suffix, v in cell.items()})
            rows.append(row)
    cols = ["label_noise", "setting"] + [f"{c}{s}" for c in NOISY_COLUMNS for s in suffixes]
    out = pd.DataFrame(rows, columns=cols)
    for c in NOISY_COLUMNS:
        out[f"{c}_n"] = out[f"{c}_n"].astype(int)
        out[f"{c}_runs"] = out[f"{c}_runs"].astype(int)
    return out


def table3(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Table 3: test accuracy (%) at the best validation epoch, with noisy labels."""
    return noisy_table(df, "test_acc_at_best_val", 100.0, **kwargs)


def table8(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 8: final-epoch training accuracy (%) on the clean examples."""
    return noisy_table(df, "final_train_acc_clean", 100.0, **kwargs)


def table9(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """Supplement Table 9: final-epoch training accuracy (%) on the noisy examples."""
    return noisy_table(df, "final_train_acc_noisy", 100.0, **kwargs)


def noisy_acc_at_clean_acc(metrics: pd.DataFrame, clean_acc: float) -> float:
    """The training accuracy on the noisy examples when the accuracy on the clean ones
    first reaches ``clean_acc``, interpolated linearly between epochs (Fig. 5: "training
    accuracy on noisy examples being lower for the same accuracy on clean examples").
    NaN if the run never reaches ``clean_acc``."""
    m = metrics.sort_values("epoch")
    clean = m["train_acc_clean"].to_numpy(float)
    noisy = m["train_acc_noisy"].to_numpy(float)
    for i in range(len(clean)):
        if clean[i] >= clean_acc:
            if i == 0 or clean[i] == clean[i - 1]:
                return float(noisy[i])
            t = (clean_acc - clean[i - 1]) / (clean[i] - clean[i - 1])
            return float(noisy[i - 1] + t * (noisy[i] - noisy[i - 1]))
    return math.nan


# ------------------------------------------------------------------------- Markdown


def _fmt_hyper(x: float) -> str:
    return f"{x:.3g}"


def _table_columns(table: pd.DataFrame) -> list[str]:
    order = NOISY_COLUMNS if "label_noise" in table.columns else TABLE1_COLUMNS
    return [c for c in order if f"{c}_status" in table.columns]


def _format_cell(row: pd.Series, c: str, digits: int, hyper_sep: str) -> str:
    status = row[f"{c}_status"]
    if status == "missing" or pd.isna(status):
        return "–"
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
    std (k/n diverged)" or "–" when no run exists, followed by the hyperparameters in
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
        lines.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- atomic files


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


# -------------------------------------------------------------------------- Fig. 4

_RunPair = tuple[pd.DataFrame, pd.DataFrame]


def _plotting():
    """seaborn and the Agg canvas, imported on first use (tables need neither)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import seaborn as sns

    return sns, Figure, FigureCanvasAgg


def _ordered(runs: Mapping[str, _RunPair]) -> list[str]:
    known = [c for c in TABLE1_COLUMNS if c in runs]
    return known + [c for c in runs if c not in TABLE1_COLUMNS]


def _palette(sns, names: Sequence[str]) -> dict[str, Any]:
    """Fixed colours for the paper's columns (the same in every panel), others after."""
    colors = sns.color_palette("tab10", 10)
    fixed = {DISPLAY_NAMES[c]: colors[i] for i, c in enumerate(TABLE1_COLUMNS)}
    extra = iter(colors[len(TABLE1_COLUMNS):] * len(names))
    return {n: fixed[n] if n in fixed else next(extra) for n in names}


def _draw_pair(sns, ax_acc, ax_tr, runs: Mapping[str, _RunPair], title: str, smooth: int) -> None:
    if not runs:
        raise ValueError(f"fig4: no runs to draw for {title!r}")
    acc_parts, tr_parts = [], []
    for c in _ordered(runs):
        metrics, curvature = runs[c]
        name = DISPLAY_NAMES.get(c, c)
        acc = metrics[["epoch", "val_acc"]].astype(float).sort_values("epoch")
        acc_parts.append(acc.assign(val_acc=acc["val_acc"] * 100.0, run=name))
        tr = curvature[["epoch", "trace_fisher"]].astype(float).replace([np.inf, -np.inf], np.nan)
        tr = tr.sort_values("epoch")
        if smooth > 1:
            tr = tr.assign(trace_fisher=tr["trace_fisher"].rolling(smooth, center=True,
                                                                    min_periods=1).mean())
        tr_parts.append(tr.assign(run=name))
    order = [DISPLAY_NAMES.get(c, c) for c in _ordered(runs)]
    palette = _palette(sns, order)
    kw = dict(x="epoch", hue="run", hue_order=order, palette=palette, estimator=None,
              errorbar=None, sort=True)  # fmt: skip
    sns.lineplot(data=pd.concat(acc_parts, ignore_index=True), y="val_acc", ax=ax_acc, **kw)
    sns.lineplot(data=pd.concat(tr_parts, ignore_index=True), y="trace_fisher", ax=ax_tr, **kw)
    ax_acc.set(xlabel="Epoch", ylabel="Validation accuracy (%)",
               title=f"{title}: validation accuracy")  # fmt: skip
    ax_tr.set(xlabel="Epoch", ylabel="Tr(F)", title=f"{title}: Tr(F)")
    if ax_acc.get_legend() is not None:
        ax_acc.get_legend().remove()
    if ax_tr.get_legend() is not None:
        ax_tr.legend(title=None, fontsize="small", loc="best")


def _save_png(fig, canvas_cls, path: str | os.PathLike, dpi: int) -> None:
    canvas_cls(fig)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=dpi)


def fig4(
    runs: Mapping[str, _RunPair],
    title: str,
    path: str | os.PathLike,
    *,
    smooth: int = 1,
    dpi: int = 120,
) -> None:
    """Fig. 4: validation accuracy (left) and Tr(F) (right) against epoch, one line per
    column (e.g. η*, Baseline, FP, GPx), for one setting.

    ``runs`` maps a column name of :data:`TABLE1_COLUMNS` (other names are drawn as
    given) to one run's ``(metrics, curvature)`` frames; Tr(F) is drawn against the
    curvature frame's fractional epoch. ``smooth`` > 1 applies a centred rolling mean
    over that many Tr(F) measurements (the paper's curves "were smoothed for clarity").
    The PNG is written atomically with the Agg backend.
    """
    sns, Figure, Canvas = _plotting()
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_acc, ax_tr = fig.subplots(1, 2)
    _draw_pair(sns, ax_acc, ax_tr, runs, title, smooth)
    _save_png(fig, Canvas, path, dpi)


def fig4_multi(
    settings: Mapping[str, Mapping[str, _RunPair]],
    path: str | os.PathLike,
    *,
    setting_names: Mapping[str, str] | None = None,
    smooth: int = 1,
    dpi: int = 120,
) -> None:
    """Fig. 4 and Supplement Fig. 10 in one PNG: a row of the two :func:`fig4` panels
    (validation accuracy, Tr(F)) per setting, in the mapping's order. ``settings``
    maps a setting id to the ``runs`` argument of :func:`fig4`; ``setting_names`` gives
    printed row titles."""
    if not settings:
        raise ValueError("fig4_multi: no settings to draw")
    names = setting_names or {}
    sns, Figure, Canvas = _plotting()
    fig = Figure(figsize=(11, 3.6 * len(settings)), layout="constrained")
    axes = fig.subplots(len(settings), 2, squeeze=False)
    for (setting, runs), (ax_acc, ax_tr) in zip(settings.items(), axes):
        _draw_pair(sns, ax_acc, ax_tr, runs, names.get(setting, setting), smooth)
    _save_png(fig, Canvas, path, dpi)


# ------------------------------------------------------------- Figs. 5, 11 and 12

#: One noisy-label run for Figs. 5, 11, 12: (label, regularization strength or None for
#: the baseline, its metrics frame with the per-group columns of fisherlab.memorization).
NoisyRun = tuple[str, "float | None", pd.DataFrame]


def _strength_colors(runs: Sequence[NoisyRun]) -> list[Any]:
    """Black for the baseline; blue to red with increasing strength (log scale), as in Fig. 5."""
    from matplotlib import colormaps

    values = sorted({v for _, v, _ in runs if v is not None and v > 0})
    cmap = colormaps["coolwarm"]

    def color(v):
        if v is None or not values:
            return "black"
        if len(values) == 1:
            return cmap(1.0)
        return cmap((math.log(v) - math.log(values[0])) / (math.log(values[-1]) - math.log(values[0])))

    return [color(v) for _, v, _ in runs]


def _check_columns(runs: Sequence[NoisyRun], cols: Sequence[str], what: str) -> None:
    if not runs:
        raise ValueError(f"{what}: no runs to draw")
    for label, _, m in runs:
        missing = [c for c in cols if c not in m.columns]
        if missing:
            raise ValueError(f"{what}: run {label!r} has no {missing} (was it trained on a noisy-label file?)")


def fig5(runs: Sequence[NoisyRun], title: str, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Fig. 5 (and Fig. 11 for another setting): how a regularizer slows the learning of
    noisy examples more than of clean ones. Four panels against epoch, one line per run:
    ||g_noisy||^2 / ||g_clean||^2 (the mean-gradient norms of the two groups), training
    accuracy on the clean (solid) and noisy (dashed) examples, validation accuracy, and a
    scatter of clean vs noisy training accuracy. Baseline in black, regularized runs blue
    to red with increasing strength."""
    cols = ["epoch", "train_acc_clean", "train_acc_noisy", "grad_sq_norm_clean", "grad_sq_norm_noisy", "val_acc"]
    _check_columns(runs, cols, "fig5")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(16, 3.8), layout="constrained")
    ax_g, ax_acc, ax_val, ax_sc = fig.subplots(1, 4)
    for (label, _, m), color in zip(runs, _strength_colors(runs)):
        m = m.sort_values("epoch")
        ratio = m["grad_sq_norm_noisy"] / m["grad_sq_norm_clean"]
        ax_g.plot(m["epoch"], ratio, color=color, label=label)
        ax_acc.plot(m["epoch"], 100 * m["train_acc_clean"], color=color, label=label)
        ax_acc.plot(m["epoch"], 100 * m["train_acc_noisy"], color=color, linestyle="--")
        ax_val.plot(m["epoch"], 100 * m["val_acc"], color=color, label=label)
        ax_sc.plot(100 * m["train_acc_clean"], 100 * m["train_acc_noisy"], "o-", color=color, markersize=3)
    ax_g.set(xlabel="Epoch", ylabel="‖g_noisy‖² / ‖g_clean‖²", yscale="log", title=f"{title}: gradient norms")
    ax_acc.set(xlabel="Epoch", ylabel="Training accuracy (%)", title="clean (solid) / noisy (dashed)")
    ax_val.set(xlabel="Epoch", ylabel="Validation accuracy (%)", title="validation accuracy")
    ax_sc.set(xlabel="Training accuracy, clean (%)", ylabel="Training accuracy, noisy (%)", title="noisy vs clean")
    ax_g.legend(fontsize="x-small", loc="best")
    _save_png(fig, Canvas, path, dpi)


def fig12(panels: Mapping[str, Sequence[NoisyRun]], path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Supplement Fig. 12: the cosine between the mean gradients on the clean and on the
    noisy training examples, cos(g_c, g_n), against epoch; one panel per regularizer
    (e.g. FP, GPr), lines blue to red with increasing strength, the baseline in black."""
    if not panels:
        raise ValueError("fig12: no panels to draw")
    for runs in panels.values():
        _check_columns(runs, ["epoch", "grad_cosine_clean_noisy"], "fig12")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(5.5 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, runs) in zip(axes, panels.items()):
        for (label, _, m), color in zip(runs, _strength_colors(runs)):
            m = m.sort_values("epoch")
            ax.plot(m["epoch"], m["grad_cosine_clean_noisy"], color=color, label=label)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(xlabel="Epoch", ylabel="cos(g_clean, g_noisy)", title=title)
        ax.legend(fontsize="x-small", loc="best")
    _save_png(fig, Canvas, path, dpi)
