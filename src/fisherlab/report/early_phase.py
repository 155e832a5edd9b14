"""Section 3's early phase: Tr(F_i) against the final generalization, across learning
rates and batch sizes (results/early_phase.csv, Figs. 1, 2, 7, 8, 9, 15, 18, 19).

The inputs are the sweep runs' summaries (a frame of
:func:`~fisherlab.report.load_summaries`: ``sweep``, ``axis``, ``value``, ``seed``,
``status``, ``trace_fisher_i``, ``best_test_acc``, ``best_train_acc_subset``,
``crossing_epoch``) and, for the curves, their metrics and curvature frames.

**The training accuracy of Figs. 1, 8 and 9** is the one measured at every epoch: the
accuracy on the run's fixed subset of ``train_eval_examples`` training examples (5,000 by
default; the whole split when 0), ``train_acc_subset`` in metrics.csv, and its maximum
over the epochs the run trained, ``best_train_acc_subset`` (:mod:`fisherlab.training.evaluation`;
with ``until: crossing``, the epochs up to the crossing). The whole-split ``train_acc``
exists only at the last epoch unless ``train_eval_examples`` is 0, so its maximum along
the path (``best_train_acc``) is NaN otherwise and is not used here.

**Error bars** are the paper's: the standard deviation over seeds (A.1, Fig. 7: "the
standard deviation of values across runs"; the sample one, ddof=1). The table carries
the standard error of the mean too (``<column>_sem``), and the figures and the Markdown
draw it with ``error="sem"``.

Correlations are computed over runs (each run's Tr(F_i) against its own best test
accuracy), so that the spread over seeds counts, not just the means of the sweep's few
points; their 95% interval is a percentile bootstrap that resamples the seeds within
each point of the sweep.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from .figures import _plotting, _save_png

__all__ = ["ERRORS", "METRICS", "kendall", "spearman", "bootstrap_ci", "early_phase_points", "early_phase_table",
           "early_phase_markdown", "write_early_phase",
           "fig_tr_fi", "fig1", "fig15", "fig_per_iteration"]  # fmt: skip

AXIS_NAMES = {"lr": "learning rate", "batch_size": "batch size"}
_OK = "ok"


# --------------------------------------------------------------- rank correlations


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the average ranks. NaN for fewer than 2
    pairs or a constant variable."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x) - (len(x) + 1) / 2, _ranks(y) - (len(y) + 1) / 2
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) over all pairs, with ties in x
    (n1) and in y (n2) left out of the denominator's counts. NaN for fewer than 2 pairs
    or a constant variable."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return math.nan
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float((dx * dy).sum() / denom) if denom > 0 else math.nan


def bootstrap_ci(
    groups: Sequence[tuple[np.ndarray, np.ndarray]], stat, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over runs pooled from ``groups``
    (one (x, y) pair of arrays per sweep point), resampling the runs of each point with
    replacement: the seeds are the unit of replication. NaN when no resample is finite."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        xs, ys = [], []
        for gx, gy in groups:
            pick = rng.integers(0, len(gx), len(gx))
            xs.append(gx[pick])
            ys.append(gy[pick])
        values.append(stat(np.concatenate(xs), np.concatenate(ys)))
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------- the table


#: The spread over seeds that error bars and "±" can show: name -> its words for captions.
ERRORS = {"std": "standard deviation over seeds", "sem": "standard error of the mean over seeds"}

#: The early-phase accuracies: summary column -> axis label.
METRICS = {"best_test_acc": "Best test accuracy (%)",
           "best_train_acc_subset": "Best training accuracy (%), fixed training subset"}  # fmt: skip


def _std(v: np.ndarray) -> float:
    """The sample standard deviation (ddof=1); NaN for fewer than 2 values."""
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _sem(v: np.ndarray) -> float:
    """The standard error of the mean, std (ddof=1) / sqrt(n); NaN for fewer than 2 values."""
    return _std(v) / math.sqrt(len(v)) if len(v) > 1 else math.nan


def _check_error(error: str, where: str) -> None:
    if error not in ERRORS:
        raise ValueError(f"{where}: error must be one of {sorted(ERRORS)}, got {error!r}")


def early_phase_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, axis value): the runs, the ok runs, how many reached ε, and
    the mean over seeds (``<column>``), the standard deviation (``<column>_std``, ddof=1)
    and the standard error of the mean (``<column>_sem``) of Tr(F_i), the crossing epoch,
    the best test accuracy (%) along the path and the best training accuracy (%) on the
    fixed training subset (``best_train_acc_subset``, measured at every epoch). Runs
    that diverged or never reached ε are counted, and left out of the Tr(F_i)
    statistics."""
    needed = ("sweep", "axis", "value", "status", "trace_fisher_i", "best_test_acc", "best_train_acc_subset",
              "crossing_epoch")  # fmt: skip
    missing = [c for c in needed if c not in runs.columns]
    if missing:
        raise ValueError(f"early_phase_points: no {missing} column(s)")
    rows = []
    for (sweep, value), g in runs.groupby(["sweep", "value"], sort=False):
        ok = g[g["status"] == _OK]
        reached = ok[pd.to_numeric(ok["trace_fisher_i"], errors="coerce").notna()]
        row: dict[str, Any] = {"sweep": sweep, "setting": g["setting"].iloc[0] if "setting" in g else "",
                               "axis": g["axis"].iloc[0], "value": float(value), "runs": len(g), "ok": len(ok),
                               "reached": len(reached)}  # fmt: skip
        for col, src, scale in (("trace_fisher_i", reached, 1.0), ("crossing_epoch", reached, 1.0),
                                ("best_test_acc", ok, 100.0), ("best_train_acc_subset", ok, 100.0)):  # fmt: skip
            v = pd.to_numeric(src[col], errors="coerce").dropna().to_numpy(float) * scale
            row[col] = float(v.mean()) if len(v) else math.nan
            row[f"{col}_std"] = _std(v)
            row[f"{col}_sem"] = _sem(v)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["sweep", "value"], kind="stable").reset_index(drop=True)


def early_phase_table(runs: pd.DataFrame, *, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`early_phase_points`, plus per sweep (repeated on its rows) the Spearman and
    Kendall correlations of Tr(F_i) with the best test accuracy over its runs, with 95%
    bootstrap intervals over seeds (``spearman_lo``, ``spearman_hi``, ...)."""
    points = early_phase_points(runs)
    stats = {}
    for sweep, g in runs.groupby("sweep", sort=False):
        g = g[(g["status"] == _OK)]
        g = g[pd.to_numeric(g["trace_fisher_i"], errors="coerce").notna() & g["best_test_acc"].notna()]
        groups = [(p["trace_fisher_i"].to_numpy(float), p["best_test_acc"].to_numpy(float))
                  for _, p in g.groupby("value")]  # fmt: skip
        x, y = g["trace_fisher_i"].to_numpy(float), g["best_test_acc"].to_numpy(float)
        entry = {"n_pairs": len(g)}
        for name, fn in (("spearman", spearman), ("kendall", kendall)):
            entry[name] = fn(x, y)
            entry[f"{name}_lo"], entry[f"{name}_hi"] = bootstrap_ci(groups, fn, bootstrap, seed) if len(g) else (math.nan,) * 2
        stats[sweep] = entry
    extra = pd.DataFrame([stats[s] for s in points["sweep"]], index=points.index)
    return pd.concat([points, extra], axis=1)


def _pm(mean: float, spread: float, digits: int, missing: str = "–") -> str:
    """"mean ± spread"; ``missing`` (the reason, e.g. "diverged") when there is no mean."""
    if not math.isfinite(mean):
        return missing
    return f"{mean:.{digits}f}" if not math.isfinite(spread) else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def early_phase_markdown(table: pd.DataFrame, *, error: str = "std") -> str:
    """Two Markdown tables: the sweep points (mean ± the ``error`` statistic over seeds,
    ``"std"``, the paper's, or ``"sem"``, said in a line above), then each sweep's rank
    correlations of Tr(F_i) with the best test accuracy."""
    _check_error(error, "early_phase_markdown")
    lines = [f"Mean ± {ERRORS[error]} ({'ddof=1' if error == 'std' else 'std / sqrt(n)'}). Best training accuracy: "
             "the maximum over the epochs of the accuracy on the fixed training subset "
             "(train_eval_examples; the whole split when 0), measured at every epoch.", "",
             "| Sweep | Axis | Value | Runs (ok / reached ε) | Tr(F_i) | Crossing epoch | Best test acc. (%) "
             "| Best train acc., subset (%) |",
             "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    e = f"_{error}"
    for _, r in table.iterrows():
        # an empty cell says why: every run of the point diverged, or none reached epsilon
        acc_why = "diverged" if r["ok"] == 0 else "–"
        fi_why = acc_why if r["ok"] == 0 else "not reached" if r["reached"] == 0 else "–"
        lines.append(f"| {r['sweep']} | {AXIS_NAMES.get(r['axis'], r['axis'])} | {r['value']:g} | "
                     f"{r['runs']} ({r['ok']} / {r['reached']}) | "
                     f"{_pm(r['trace_fisher_i'], r['trace_fisher_i' + e], 1, fi_why)} | "
                     f"{_pm(r['crossing_epoch'], r['crossing_epoch' + e], 2, fi_why)} | "
                     f"{_pm(r['best_test_acc'], r['best_test_acc' + e], 2, acc_why)} | "
                     f"{_pm(r['best_train_acc_subset'], r['best_train_acc_subset' + e], 2, acc_why)} |")  # fmt: skip
    lines += ["", "| Sweep | Runs | Spearman ρ (95% CI) | Kendall τ (95% CI) |", "| :--- | ---: | ---: | ---: |"]
    for _, r in table.drop_duplicates("sweep").iterrows():
        cell = lambda n: (f"{r[n]:.2f} ({r[n + '_lo']:.2f}, {r[n + '_hi']:.2f})"  # noqa: E731
                          if math.isfinite(r[n]) else "too few points")  # fmt: skip
        lines.append(f"| {r['sweep']} | {r['n_pairs']} | {cell('spearman')} | {cell('kendall')} |")
    return "\n".join(lines) + "\n"


def write_early_phase(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                      *, error: str = "std") -> None:  # fmt: skip
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, early_phase_markdown(table, error=error))


# ------------------------------------------------------------------------- figures


def fig_tr_fi(table: pd.DataFrame, sweeps: Sequence[str], metric: str, path: str | os.PathLike,
              *, titles: Mapping[str, str] | None = None, error: str = "std", dpi: int = 120) -> pd.DataFrame:  # fmt: skip
    """Figs. 2 and 7 (``metric="best_test_acc"``), 8 and 9 (``"best_train_acc_subset"``,
    the training accuracy measured at every epoch on the fixed subset): per sweep (a
    panel), Tr(F_i) against the best accuracy along the path, one point per axis value
    (the means over seeds) with error bars of the ``error`` statistic over seeds
    (``"std"``, the paper's, or ``"sem"``), labelled by its value; the panel's title
    gives Spearman's ρ over the runs.

    Returns the points drawn, one row each: ``panel`` (the sweep), ``series`` (its
    label), ``x`` (Tr(F_i)), ``y`` (the accuracy, %), ``xerr``, ``yerr`` and ``error``
    (the statistic of the bars)."""
    if not sweeps:
        raise ValueError("fig_tr_fi: no sweeps to draw")
    if metric not in METRICS:
        raise ValueError(f"fig_tr_fi: metric must be one of {sorted(METRICS)}, got {metric!r}")
    _check_error(error, "fig_tr_fi")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(4.6 * len(sweeps), 3.8), layout="constrained")
    axes = fig.subplots(1, len(sweeps), squeeze=False)[0]
    label, points = METRICS[metric], []
    for ax, sweep in zip(axes, sweeps):
        t = table[table["sweep"] == sweep]
        if t.empty:
            raise ValueError(f"fig_tr_fi: no runs of sweep {sweep!r}")
        colors = _value_colors(t["value"].tolist())
        for (_, r), color in zip(t.iterrows(), colors):
            point = {"panel": sweep, "series": f"{'lr' if r['axis'] == 'lr' else 'batch'} {r['value']:g}",
                     "x": r["trace_fisher_i"], "y": r[metric], "xerr": r[f"trace_fisher_i_{error}"],
                     "yerr": r[f"{metric}_{error}"], "error": error}  # fmt: skip
            points.append(point)
            ax.errorbar(point["x"], point["y"], xerr=_nan0(point["xerr"]), yerr=_nan0(point["yerr"]), fmt="o",
                        color=color, capsize=3, label=point["series"])  # fmt: skip
        if not (t["trace_fisher_i"].notna() & t[metric].notna()).any():  # say so, not an empty panel
            ax.text(0.5, 0.5, "no run with both Tr(F_i) and this accuracy", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
        rho = t["spearman"].iloc[0] if "spearman" in t and metric == "best_test_acc" else math.nan
        title = (titles or {}).get(sweep, sweep) + (f"\nSpearman ρ = {rho:.2f}" if math.isfinite(rho) else "")
        ax.set(xlabel="Tr(F_i)", ylabel=label, title=title)
        ax.legend(fontsize="small", title=f"bars: {error}", title_fontsize="small")
    _save_png(fig, Canvas, path, dpi)
    return pd.DataFrame(points, columns=["panel", "series", "x", "y", "xerr", "yerr", "error"])


def _nan0(x: float) -> float:
    return 0.0 if not math.isfinite(x) else x


def _value_colors(values: Sequence[float]) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if len(values) == 1:
        return [cmap(0.5)]
    lo, hi = math.log(min(values)), math.log(max(values))
    return [cmap(0.9 * (math.log(v) - lo) / (hi - lo)) for v in values]


_Curves = Mapping[str, tuple[pd.DataFrame, pd.DataFrame]]  # label -> (metrics, curvature)


def _two_panels_by_value(runs: _Curves, what: str):
    """Two panels side by side for ``runs`` (a ``ValueError`` naming ``what`` when there are
    none) and a colour per run from the number that ends its label (its lr or batch size):
    (figure, canvas class, (left axes, right axes), colours)."""
    if not runs:
        raise ValueError(f"{what}: no runs to draw")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    colors = _value_colors([float(k.split()[-1]) for k in runs])
    return fig, Canvas, fig.subplots(1, 2), colors


def fig1(runs: _Curves, title: str, path: str | os.PathLike, *, dpi: int = 120) -> pd.DataFrame:
    """Fig. 1: for each run (η* and the small lr), training and validation accuracy (%)
    and Tr(F) against epoch. The training accuracy is the one measured at every epoch,
    ``train_acc_subset`` (on the fixed training subset; the whole split when
    ``train_eval_examples`` is 0). Returns the points drawn, one row each: ``panel``
    (``train_acc_subset``, ``val_acc``, ``trace_fisher``), ``series`` (the run's
    label), ``x`` (epoch) and ``y`` (accuracies in %)."""
    if not runs:
        raise ValueError("fig1: no runs to draw")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    ax_tr, ax_val, ax_f = fig.subplots(1, 3)
    parts = []
    for label, (metrics, curvature) in runs.items():
        if "train_acc_subset" not in metrics:
            raise ValueError(f"fig1: run {label!r} has no train_acc_subset column (the per-epoch training accuracy)")
        m, c = metrics.sort_values("epoch"), curvature.sort_values("step")
        for ax, panel, x, y in ((ax_tr, "train_acc_subset", m["epoch"], 100 * m["train_acc_subset"]),
                                (ax_val, "val_acc", m["epoch"], 100 * m["val_acc"]),
                                (ax_f, "trace_fisher", c["epoch"], c["trace_fisher"])):  # fmt: skip
            ax.plot(x, y, marker="." if panel == "train_acc_subset" else None, label=label)
            parts.append(pd.DataFrame({"panel": panel, "series": label, "x": x.to_numpy(float),
                                       "y": y.to_numpy(float)}))  # fmt: skip
    ax_tr.set(xlabel="Epoch", ylabel="Training accuracy (%), fixed subset", title=f"{title}: training accuracy")
    ax_val.set(xlabel="Epoch", ylabel="Validation accuracy (%)", title="validation accuracy")
    ax_f.set(xlabel="Epoch", ylabel="Tr(F)", title="Tr(F)")
    ax_f.legend(fontsize="small")
    _save_png(fig, Canvas, path, dpi)
    return pd.concat(parts, ignore_index=True)


def fig15(runs: _Curves, title: str, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Fig. 15: Tr(F) (left) and Tr(F_B) (right, the mini-batch Fisher of Supplement C)
    against epoch, one line per learning rate, on a log scale."""
    fig, Canvas, (ax_f, ax_b), colors = _two_panels_by_value(runs, "fig15")
    for (label, (_, curvature)), color in zip(runs.items(), colors):
        c = curvature.sort_values("step")
        ax_f.plot(c["epoch"], c["trace_fisher"], color=color, label=label)
        ax_b.plot(c["epoch"], c["trace_fisher_batch"], color=color, label=label)
    ax_f.set(xlabel="Epoch", ylabel="Tr(F)", yscale="log", title=f"{title}: Tr(F)")
    ax_b.set(xlabel="Epoch", ylabel="Tr(F_B)", yscale="log", title="Tr(F_B)")
    ax_f.legend(fontsize="small")
    _save_png(fig, Canvas, path, dpi)


def fig_per_iteration(runs: _Curves, title: str, path: str | os.PathLike, *, smooth: int = 20,
                      dpi: int = 120) -> None:  # fmt: skip
    """Figs. 18 and 19 (Supplements D, E): Tr(F) at every iteration, on examples drawn
    afresh each time (left), and the mini-batch training accuracy (right, a centred
    rolling mean over ``smooth`` iterations), one line per lr or batch size."""
    fig, Canvas, (ax_f, ax_a), colors = _two_panels_by_value(runs, "fig_per_iteration")
    for (label, (_, curvature)), color in zip(runs.items(), colors):
        c = curvature.sort_values("step")
        ax_f.plot(c["step"], c["trace_fisher"], color=color, label=label, linewidth=0.8)
        acc = 100 * c["train_acc_running"].rolling(smooth, center=True, min_periods=1).mean()
        ax_a.plot(c["step"], acc, color=color, label=label)
    ax_f.set(xlabel="Iteration", ylabel="Tr(F)", title=f"{title}: Tr(F) at every iteration")
    ax_a.set(xlabel="Iteration", ylabel="Mini-batch training accuracy (%)", title="training accuracy (smoothed)")
    ax_f.legend(fontsize="small")
    _save_png(fig, Canvas, path, dpi)
