"""Figures of the paper from run outputs (metrics and curvature frames): Fig. 4 and
Supplement Fig. 10 (validation accuracy and Tr(F) against epoch), Figs. 5, 11 and 12
(the noisy-label runs). Each writes one PNG atomically with matplotlib's Agg backend."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_write
from .tables import DISPLAY_NAMES, TABLE1_COLUMNS


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
    settings: Mapping[str, Mapping[str, _RunPair]],
    path: str | os.PathLike,
    *,
    setting_names: Mapping[str, str] | None = None,
    smooth: int = 1,
    dpi: int = 120,
) -> None:
    """Fig. 4 and Supplement Fig. 10 in one PNG: per setting (a row, in the mapping's
    order), validation accuracy (left) and Tr(F) (right) against epoch, one line per
    column (e.g. η*, Baseline, FP, GPx).

    ``settings`` maps a setting id to ``runs``: a mapping from a column name of
    :data:`TABLE1_COLUMNS` (other names are drawn as given) to one run's ``(metrics,
    curvature)`` frames; Tr(F) is drawn against the curvature frame's fractional epoch.
    ``setting_names`` gives printed row titles. ``smooth`` > 1 applies a centred rolling
    mean over that many Tr(F) measurements (the paper's curves "were smoothed for
    clarity"). The PNG is written atomically with the Agg backend."""
    if not settings:
        raise ValueError("fig4: no settings to draw")
    names = setting_names or {}
    sns, Figure, Canvas = _plotting()
    fig = Figure(figsize=(11, 3.6 * len(settings)), layout="constrained")
    axes = fig.subplots(len(settings), 2, squeeze=False)
    for (setting, runs), (ax_acc, ax_tr) in zip(settings.items(), axes):
        _draw_pair(sns, ax_acc, ax_tr, runs, names.get(setting, setting), smooth)
    _save_png(fig, Canvas, path, dpi)


#: One noisy-label run for Figs. 5, 11, 12: (label, regularization strength or None for
#: the baseline, its metrics frame with the per-group columns of fisherlab.training.memorization).
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


def _check_columns(runs: Sequence[NoisyRun], cols: Sequence[str], what: str) -> list[NoisyRun]:
    """``runs``, each with the columns ``cols``; a run without rows (it diverged before
    its first epoch: an empty metrics.csv) keeps its legend entry, labelled so, with
    nothing to draw; a run with rows but without a column is an error."""
    if not runs:
        raise ValueError(f"{what}: no runs to draw")
    out = []
    for label, strength, m in runs:
        if m.empty:
            out.append((f"{label} (no epoch: diverged)", strength, pd.DataFrame(columns=list(cols), dtype=float)))
            continue
        missing = [c for c in cols if c not in m.columns]
        if missing:
            raise ValueError(f"{what}: run {label!r} has no {missing} (was it trained on a noisy-label file?)")
        out.append((label, strength, m))
    return out


def fig5(runs: Sequence[NoisyRun], title: str, path: str | os.PathLike, *, dpi: int = 120) -> pd.DataFrame:
    """Fig. 5 (and Fig. 11 for another setting): how a regularizer slows the learning of
    noisy examples more than of clean ones. Four panels against epoch, one line per run:
    ||g_noisy||^2 / ||g_clean||^2 (the mean-gradient norms of the two groups), training
    accuracy on the clean (solid) and noisy (dashed) examples, validation accuracy, and
    noisy against clean training accuracy (one point per epoch, joined in epoch order:
    a curve per run, so that runs compare at a matched clean accuracy). Baseline in
    black, regularized runs blue to red with increasing strength.

    The training accuracies are the ones measured at every epoch,
    ``train_acc_clean_subset`` and ``train_acc_noisy_subset``: over the clean and the
    noisy members of the run's fixed training subset (:mod:`fisherlab.training.evaluation`; the
    whole split when ``train_eval_examples`` is 0). The whole-split ``train_acc_clean``
    and ``train_acc_noisy`` exist only at the last epoch otherwise.

    Returns the points drawn, one row each: ``panel`` (``grad_ratio``,
    ``train_acc_clean_subset``, ``train_acc_noisy_subset``, ``val_acc``,
    ``noisy_vs_clean``), ``series`` (the run's label), ``strength``, ``epoch``, ``x``
    (the epoch, or the clean accuracy in the last panel) and ``y`` (accuracies in %)."""
    cols = ["epoch", "train_acc_clean_subset", "train_acc_noisy_subset", "grad_sq_norm_clean", "grad_sq_norm_noisy",
            "val_acc"]  # fmt: skip
    runs = _check_columns(runs, cols, "fig5")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(16, 3.8), layout="constrained")
    ax_g, ax_acc, ax_val, ax_sc = fig.subplots(1, 4)
    parts = []
    for (label, strength, m), color in zip(runs, _strength_colors(runs)):
        m = m.sort_values("epoch")
        ratio = m["grad_sq_norm_noisy"] / m["grad_sq_norm_clean"]
        ax_g.plot(m["epoch"], ratio, color=color, label=label)
        clean, noisy = 100 * m["train_acc_clean_subset"], 100 * m["train_acc_noisy_subset"]
        ax_acc.plot(m["epoch"], clean, color=color, label=label)
        ax_acc.plot(m["epoch"], noisy, color=color, linestyle="--")
        ax_val.plot(m["epoch"], 100 * m["val_acc"], color=color, label=label)
        ax_sc.plot(clean, noisy, "o-", color=color, markersize=3)
        for panel, x, y in (("grad_ratio", m["epoch"], ratio), ("train_acc_clean_subset", m["epoch"], clean),
                            ("train_acc_noisy_subset", m["epoch"], noisy), ("val_acc", m["epoch"], 100 * m["val_acc"]),
                            ("noisy_vs_clean", clean, noisy)):  # fmt: skip
            parts.append(pd.DataFrame({"panel": panel, "series": label, "strength": strength,
                                       "epoch": m["epoch"].to_numpy(), "x": x.to_numpy(float),
                                       "y": y.to_numpy(float)}))  # fmt: skip
    ax_g.set(xlabel="Epoch", ylabel="‖g_noisy‖² / ‖g_clean‖²", yscale="log", title=f"{title}: gradient norms")
    ax_acc.set(xlabel="Epoch", ylabel="Training accuracy (%), fixed subset", title="clean (solid) / noisy (dashed)")
    ax_val.set(xlabel="Epoch", ylabel="Validation accuracy (%)", title="validation accuracy")
    ax_sc.set(xlabel="Training accuracy, clean (%), subset", ylabel="Training accuracy, noisy (%), subset",
              title="noisy vs clean, per epoch")  # fmt: skip
    ax_g.legend(fontsize="x-small", loc="best")
    _save_png(fig, Canvas, path, dpi)
    return pd.concat(parts, ignore_index=True)


def fig12(panels: Mapping[str, Sequence[NoisyRun]], path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Supplement Fig. 12: the cosine between the mean gradients on the clean and on the
    noisy training examples, cos(g_c, g_n), against epoch; one panel per regularizer
    (e.g. FP, GPr), lines blue to red with increasing strength, the baseline in black."""
    if not panels:
        raise ValueError("fig12: no panels to draw")
    panels = {title: _check_columns(runs, ["epoch", "grad_cosine_clean_noisy"], "fig12")
              for title, runs in panels.items()}  # fmt: skip
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
