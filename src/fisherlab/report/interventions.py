"""Early phase II, when and how Tr(F) is penalised: Figs. 3, 6, 13, 14, 16, 17, 20, 21
and their numbers, from run outputs (summaries, metrics, curvature frames and the Tr(H)
of kept weights, ``hessian_snapshots.csv``).

- Fig. 3 (Section 4): :func:`late_fp_table`, :func:`late_fp_summary`, :func:`fig3`;
- Figs. 6 and 13 (Section 5, A.4): :func:`two_phase_table`, :func:`two_phase_figure`;
- Fig. 14 (A.4, I.4): :func:`hessian_along_table`, :func:`hessian_along_summary`, :func:`fig14`;
- Figs. 16, 17, 20 (Supplements C, E): :func:`alpha_sweep_table`, :func:`alpha_sweep_figure`;
- Fig. 21 (Supplement F): :func:`hessian_fisher_points`, :func:`correlations`, :func:`fig21`,
  with :func:`pearson` and :func:`spearman`.

Accuracies are fractions in the tables and percentages in the figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..runs.rundir import RunDir
from .figures import _plotting, _save_png

_Frames = Mapping[str, pd.DataFrame]  # run_dir -> a frame of that run (metrics, curvature, snapshots)


# --------------------------------------------------------------------------- statistics


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2);
    NaN with fewer than 2 points or a constant variable."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties get their average rank)."""
    rank = lambda v: pd.Series(np.asarray(v, dtype=float)).rank(method="average").to_numpy()  # noqa: E731
    return pearson(rank(x), rank(y))


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


# --------------------------------------------------------------------------- Fig. 3


def late_fp_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of Fig. 3 from their summaries: ``series`` ``fp`` (FP from
    ``start_epoch``; the Table 1 FP run is E = 0), ``eta_star`` or ``baseline``, with
    setting, seed, status, final_test_acc, test_acc_at_best_val, max_trace_fisher."""
    rows = []
    for _, r in runs.iterrows():
        series = "fp" if r["role"] in ("late_fp", "fp") else r["role"]
        start = r.get("start_epoch") if r["role"] == "late_fp" else (0 if series == "fp" else math.nan)
        rows.append({"setting": r["setting"], "series": series, "start_epoch": start, "seed": r["seed"],
                     "status": r["status"], **{k: r[k] for k in
                     ("final_test_acc", "test_acc_at_best_val", "max_trace_fisher")}})  # fmt: skip
    cols = ["setting", "series", "start_epoch", "seed", "status", "final_test_acc", "test_acc_at_best_val",
            "max_trace_fisher"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols).sort_values(["setting", "series", "start_epoch", "seed"], ignore_index=True)


def late_fp_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3's numbers: per (setting, series, start_epoch) the runs, the finished ones,
    and the mean and std over seeds of final test accuracy and max Tr(F) (finished runs)."""
    rows = []
    for (setting, series, start), g in table.groupby(["setting", "series", "start_epoch"], dropna=False, sort=True):
        ok = _ok(g)
        rows.append({"setting": setting, "series": series, "start_epoch": start, "runs": len(g), "ok": len(ok),
                     "final_test_acc": ok["final_test_acc"].mean(), "final_test_acc_std": _std(ok["final_test_acc"]),
                     "test_acc_at_best_val": ok["test_acc_at_best_val"].mean(),
                     "max_trace_fisher": ok["max_trace_fisher"].mean()})  # fmt: skip
    return pd.DataFrame(rows)


def fig3(table: pd.DataFrame, path: str | os.PathLike, *, setting_names: Mapping[str, str] | None = None,
         dpi: int = 120) -> None:  # fmt: skip
    """Fig. 3: per setting (a panel), the final test accuracy (mean over seeds, bars: std)
    of FP switched on at epoch E against E (symmetric-log axis, E = 0 at the origin),
    with η* (blue) and the small-lr Baseline (red) as horizontal lines. ``table``: one
    row per run (:func:`late_fp_table`); :func:`draw_fig3` draws from its summary."""
    draw_fig3(late_fp_summary(table), path, setting_names=setting_names, dpi=dpi)


def draw_fig3(summary: pd.DataFrame, path: str | os.PathLike, *, setting_names: Mapping[str, str] | None = None,
              dpi: int = 120) -> None:  # fmt: skip
    """:func:`fig3` from the per-(setting, series, E) numbers of :func:`late_fp_summary`."""
    settings = list(dict.fromkeys(summary["setting"]))
    if not settings:
        raise ValueError("fig3: no runs to draw")
    names = setting_names or {}
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(4.2 * len(settings), 3.6), layout="constrained")
    for ax, setting in zip(fig.subplots(1, len(settings), squeeze=False)[0], settings):
        s = summary[summary["setting"] == setting]
        fp = s[s["series"] == "fp"].sort_values("start_epoch")
        ax.errorbar(fp["start_epoch"], 100 * fp["final_test_acc"], yerr=100 * fp["final_test_acc_std"].fillna(0),
                    fmt="o-", color="black", capsize=3, label="FP from epoch E")  # fmt: skip
        for series, color, label in (("eta_star", "tab:blue", "η*"), ("baseline", "tab:red", "Baseline")):
            line = s[s["series"] == series]
            if len(line) and np.isfinite(line["final_test_acc"].iloc[0]):
                ax.axhline(100 * line["final_test_acc"].iloc[0], color=color, linestyle="--", label=label)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(fp["start_epoch"].tolist(), [f"{e:g}" for e in fp["start_epoch"]])
        ax.set(xlabel="E (epoch FP is switched on)", ylabel="Final test accuracy (%)", title=names.get(setting, setting))
        ax.legend(fontsize="small", loc="best")
    _save_png(fig, Canvas, path, dpi)


# --------------------------------------------------------------------------- Figs. 6, 13


def two_phase_table(runs: pd.DataFrame, labels: Mapping[str, Mapping[str, Any]], curvature: _Frames,
                    snapshots: _Frames) -> pd.DataFrame:  # fmt: skip
    """One row per run of a two-phase figure: ``level`` (``high`` / ``low``: the
    phase-1 model it is, or starts from) and ``phase`` (1, 2) from ``labels`` (run_dir ->
    {level, phase}); for phase 1, ``trace_fisher_end``, Tr(F) at the end of phase 1 (the
    last row of its ``curvature``); for phase 2, ``best_test_acc`` and ``best_epoch``
    (the epoch whose weights were kept) and ``trace_hessian_best``, Tr(H_f) of those
    weights (the ``best`` row of its ``snapshots``)."""
    rows = []
    for _, r in runs.iterrows():
        d = r["run_dir"]
        lab = labels[d]
        row = {"level": lab["level"], "phase": int(lab["phase"]), "seed": r["seed"], "status": r["status"],
               "lr": r["lr"], "batch_size": r.get("batch_size"), "run_dir": d}  # fmt: skip
        if lab["phase"] == 1:
            curv = curvature[d].sort_values("step")
            row["trace_fisher_end"] = float(curv["trace_fisher"].iloc[-1]) if len(curv) else math.nan
        else:
            best = snapshots[d]
            best = best[best["snapshot"] == RunDir.BEST_KEY]
            row["best_test_acc"] = r["kept_best_value"]
            row["best_epoch"] = r["kept_best_epoch"]
            row["trace_hessian_best"] = float(best["trace_hessian"].iloc[0]) if len(best) else math.nan
        rows.append(row)
    cols = ["level", "phase", "seed", "status", "lr", "batch_size", "trace_fisher_end", "best_test_acc", "best_epoch",
            "trace_hessian_best", "run_dir"]  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=cols).sort_values(["phase", "level", "seed"], ignore_index=True)


def two_phase_figure(table: pd.DataFrame, path: str | os.PathLike, *, title: str = "", dpi: int = 120) -> None:
    """Figs. 6 and 13: left, Tr(F) at the end of phase 1 of the high- and the
    low-regularization model; middle, a histogram of Tr(H_f) (at the best test accuracy)
    of the phase-2 runs started from each; right, a histogram of their best test
    accuracy. High in red, low in blue."""
    colors = {"high": "tab:red", "low": "tab:blue"}
    p1, p2 = table[table["phase"] == 1], _ok(table[table["phase"] == 2])
    if p1.empty or table[table["phase"] == 2].empty:
        raise ValueError("two_phase_figure: needs phase-1 and phase-2 runs")
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    ax_f, ax_h, ax_a = fig.subplots(1, 3)
    levels = [lv for lv in ("high", "low") if lv in set(table["level"])]
    ax_f.bar(levels, [p1[p1["level"] == lv]["trace_fisher_end"].mean() for lv in levels],
             color=[colors[lv] for lv in levels])  # fmt: skip
    ax_f.set(ylabel="Tr(F) at the end of phase 1 (Tr(F_i))", title=f"{title}: phase 1".strip(": "))
    for ax, col, scale, xlabel in ((ax_h, "trace_hessian_best", 1.0, "Tr(H_f)"),
                                   (ax_a, "best_test_acc", 100.0, "Best test accuracy (%)")):  # fmt: skip
        values = scale * p2[col].astype(float)
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=10) if len(finite) else 10
        for lv in levels:
            v = scale * p2[p2["level"] == lv][col].astype(float)
            ax.hist(v[np.isfinite(v)], bins=bins, alpha=0.6, color=colors[lv], label=f"from {lv} regularization")
        ax.set(xlabel=xlabel, ylabel="Runs", title="phase 2")
        ax.legend(fontsize="small", loc="best")
    _save_png(fig, Canvas, path, dpi)


# --------------------------------------------------------------------------- Fig. 14


def hessian_along_table(runs: pd.DataFrame, labels: Mapping[str, Mapping[str, Any]], metrics: _Frames,
                        snapshots: _Frames) -> pd.DataFrame:  # fmt: skip
    """One row per (run, kept weights): setting, ``set`` (from ``labels``: run_dir ->
    {set}; absent: ""), lr, batch_size, seed, epoch, trace_hessian (``snapshots``:
    the run's hessian_snapshots.csv), and the run's minimum training loss and maximum
    test accuracy along its trajectory (``metrics``). The training loss is
    ``train_loss_subset``, the one measured at every epoch (in eval mode, on the run's
    fixed training subset; the whole split when ``train_eval_examples`` is 0): the
    whole-split ``train_loss`` exists only at the last epoch otherwise."""
    rows = []
    for _, r in runs.iterrows():
        d = r["run_dir"]
        m = metrics[d]
        if len(m) and "train_loss_subset" not in m:
            raise ValueError(f"hessian_along_table: the metrics of {d} have no train_loss_subset column")
        extra = {"min_train_loss_subset": float(m["train_loss_subset"].min()) if len(m) else math.nan,
                 "max_test_acc": float(m["test_acc"].max()) if len(m) else math.nan}  # fmt: skip
        snaps = snapshots[d]
        for _, h in snaps[snaps["snapshot"] != RunDir.BEST_KEY].iterrows():
            rows.append({"setting": r["setting"], "set": labels.get(d, {}).get("set", ""), "lr": r["lr"],
                         "batch_size": r["batch_size"], "seed": r["seed"], "status": r["status"],
                         "epoch": int(h["epoch"]), "trace_hessian": h["trace_hessian"], **extra, "run_dir": d})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["setting", "set", "lr", "batch_size", "seed", "epoch"], ignore_index=True)


def hessian_along_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, set, lr, batch size, epoch): the mean and std of Tr(H) over seeds and
    the seeds' mean minimum training loss (on the fixed subset, ``min_train_loss_subset``)
    and maximum test accuracy (Fig. 14's ℓ, TA)."""
    keys = ["setting", "set", "lr", "batch_size", "epoch"]
    out = table.groupby(keys, sort=True).agg(
        seeds=("seed", "nunique"), trace_hessian=("trace_hessian", "mean"), trace_hessian_std=("trace_hessian", "std"),
        min_train_loss_subset=("min_train_loss_subset", "mean"), max_test_acc=("max_test_acc", "mean"))  # fmt: skip
    return out.reset_index()


def _panel_per_setting(frame: pd.DataFrame, empty: str, width: float, height: float):
    """One panel (``width`` x ``height`` inches) per setting of ``frame``, side by side in
    order of appearance, or ``ValueError(empty)`` when it has none: (figure, canvas class,
    [(axes, setting), ...])."""
    settings = list(dict.fromkeys(frame["setting"]))
    if not settings:
        raise ValueError(empty)
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(width * len(settings), height), layout="constrained")
    return fig, Canvas, list(zip(fig.subplots(1, len(settings), squeeze=False)[0], settings))


def fig14(table: pd.DataFrame, path: str | os.PathLike, *, vary: Mapping[str, str], dpi: int = 120) -> None:
    """Fig. 14: per setting (a panel), Tr(H) of each run's kept weights against epoch (a
    point per seed, a line through the seeds' mean per configuration), set A in reds
    and set B in blues; each legend entry gives the configuration's ``vary`` value (lr
    or batch size) with ℓ, the minimum training loss over the epochs (``train_loss_subset``,
    on the fixed training subset), and TA, the maximum test accuracy (means over seeds)."""
    from matplotlib import colormaps

    fig, Canvas, panels = _panel_per_setting(table, "fig14: no runs to draw", 6.5, 4.2)
    summary = hessian_along_summary(table)
    cmaps = {0: colormaps["Reds"], 1: colormaps["Blues"]}
    for ax, setting in panels:
        t, s = table[table["setting"] == setting], summary[summary["setting"] == setting]
        key = vary.get(setting, "lr")
        for i, set_name in enumerate(sorted(set(t["set"]))):
            configs = sorted(set(s[s["set"] == set_name][key]))
            for j, value in enumerate(configs):
                color = cmaps[i % 2](0.45 + 0.5 * (j + 1) / (len(configs) + 1))
                pts = t[(t["set"] == set_name) & (t[key] == value)]
                line = s[(s["set"] == set_name) & (s[key] == value)].sort_values("epoch")
                ax.scatter(pts["epoch"], pts["trace_hessian"], color=color, s=10)
                label = (f"{set_name}: {'η' if key == 'lr' else 'S'}={value:g}, "
                         f"ℓ={line['min_train_loss_subset'].iloc[0]:.2g}, "
                         f"TA={100 * line['max_test_acc'].iloc[0]:.1f}%")  # fmt: skip
                ax.plot(line["epoch"], line["trace_hessian"], color=color, label=label)
        ax.set(xlabel="Epoch", ylabel="Tr(H)", yscale="log", title=setting)
        ax.legend(fontsize="x-small", loc="best")
    _save_png(fig, Canvas, path, dpi)


# --------------------------------------------------------------------------- Fig. 21


def hessian_fisher_points(runs: pd.DataFrame, curvature: _Frames, snapshots: _Frames) -> pd.DataFrame:
    """Fig. 21's points: per run and kept epoch E, Tr(H) of the weights at the end of
    epoch E and Tr(F_B) (Supplement C, Eq. 5) that the trainer measured at that same
    step (its curvature row at epoch E; E = 0: at initialisation). Kept weights without
    a finite Tr(H) or a measurement at that step are left out."""
    rows = []
    for _, r in runs.iterrows():
        d = r["run_dir"]
        curv = curvature[d]
        at = dict(zip(np.round(curv["epoch"].astype(float), 9), curv["trace_fisher_batch"]))
        for _, h in snapshots[d].iterrows():
            if h["snapshot"] == RunDir.BEST_KEY or not np.isfinite(h["trace_hessian"]) or round(float(h["epoch"]), 9) not in at:
                continue
            rows.append({"setting": r["setting"], "lr": r["lr"], "seed": r["seed"], "epoch": int(h["epoch"]),
                         "trace_hessian": float(h["trace_hessian"]),
                         "trace_fisher_batch": float(at[round(float(h["epoch"]), 9)])})  # fmt: skip
    return pd.DataFrame(rows, columns=["setting", "lr", "seed", "epoch", "trace_hessian", "trace_fisher_batch"])


def correlations(points: pd.DataFrame, x: str = "trace_hessian", y: str = "trace_fisher_batch") -> pd.DataFrame:
    """Pearson's r and Spearman's rho of ``x`` and ``y`` per setting over all its points
    (lr = "all") and per (setting, lr), with the number of points."""
    rows = []
    for setting, g in points.groupby("setting", sort=False):
        parts = [("all", g)] + [(lr, h) for lr, h in g.groupby("lr", sort=True)]
        for lr, h in parts:
            rows.append({"setting": setting, "lr": lr, "points": len(h), "pearson": pearson(h[x], h[y]),
                         "spearman": spearman(h[x], h[y])})  # fmt: skip
    return pd.DataFrame(rows, columns=["setting", "lr", "points", "pearson", "spearman"])


def fig21(points: pd.DataFrame, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Fig. 21: per setting (a panel), Tr(F_B) against Tr(H) at the kept epochs of every
    run, coloured by lr, with Pearson's r and Spearman's rho over the panel's points in
    its title."""
    fig, Canvas, panels = _panel_per_setting(points, "fig21: no points to draw", 4.6, 3.8)
    corr = correlations(points)
    for ax, setting in panels:
        p = points[points["setting"] == setting]
        for lr, g in p.groupby("lr", sort=True):
            ax.scatter(g["trace_hessian"], g["trace_fisher_batch"], s=12, label=f"η = {lr:g}")
        c = corr[(corr["setting"] == setting) & (corr["lr"] == "all")].iloc[0]
        ax.set(xlabel="Tr(H)", ylabel="Tr(F_B)",
               title=f"{setting}\nPearson r = {c['pearson']:.2f}, Spearman ρ = {c['spearman']:.2f}")  # fmt: skip
        ax.legend(fontsize="small", loc="best")
    _save_png(fig, Canvas, path, dpi)


# --------------------------------------------------------------------------- Figs. 16, 17, 20


def alpha_sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of an α sweep (Figs. 16, 17, 20): variant (``fp_f10``,
    ``fp_exact``, ``fp_f1_m128``, ``none`` for the references), role, alpha, lr,
    batch_size, status, best_val_acc, test_acc_at_best_val, final_test_acc,
    max_trace_fisher, and ``best``: the α with the highest validation accuracy of its
    variant among the finished runs (Section 4's choice of α)."""
    cols = ["variant", "role", "alpha", "lr", "batch_size", "status", "best_val_acc", "test_acc_at_best_val",
            "final_test_acc", "max_trace_fisher", "run_dir"]  # fmt: skip
    t = runs.reindex(columns=cols).sort_values(["variant", "alpha"], na_position="first", ignore_index=True)
    t["best"] = False
    for _, g in _ok(t[t["role"] == "alpha_sweep"]).groupby("variant"):
        if g["best_val_acc"].notna().any():
            t.loc[g["best_val_acc"].idxmax(), "best"] = True
    return t


def alpha_sweep_figure(table: pd.DataFrame, curves: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]],
                       path: str | os.PathLike, *, title: str = "", dpi: int = 120) -> None:  # fmt: skip
    """Figs. 16, 17, 20: per variant (a row), validation accuracy (left) and Tr(F)
    (right) against epoch for every α, blue to red with increasing α, the best α
    (highest validation accuracy) drawn thick; plain reference runs in black and grey,
    dashed. ``curves``: run_dir -> (metrics, curvature)."""
    from .figures import _strength_colors

    variants = [v for v in dict.fromkeys(table["variant"]) if v != "none"]
    if not variants:
        raise ValueError("alpha_sweep_figure: no α runs to draw")
    refs = table[table["role"] == "reference"]
    _, Figure, Canvas = _plotting()
    fig = Figure(figsize=(11, 3.6 * len(variants)), layout="constrained")
    for (ax_acc, ax_tr), variant in zip(fig.subplots(len(variants), 2, squeeze=False), variants):
        t = table[(table["variant"] == variant) & (table["role"] == "alpha_sweep")]
        colors = _strength_colors([(None, a, None) for a in t["alpha"]])
        for (_, r), color in zip(t.iterrows(), colors):
            m, c = curves[r["run_dir"]]
            width, label = (2.4, f"α={r['alpha']:.3g} (best)") if r["best"] else (0.9, f"α={r['alpha']:.3g}")
            for ax, x, y in ((ax_acc, m["epoch"], 100 * m["val_acc"]), (ax_tr, c["epoch"], c["trace_fisher"])):
                if r["best"]:  # outlined, so that a pale colour stays visible
                    ax.plot(x, y, color="black", linewidth=width + 1.6, zorder=3)
                ax.plot(x, y, color=color, linewidth=width, label=label if ax is ax_acc else None,
                        zorder=4 if r["best"] else 2)  # fmt: skip
        for (_, r), color in zip(refs.iterrows(), ("black", "grey", "dimgrey")):
            m, c = curves[r["run_dir"]]
            label = f"no penalty, lr={r['lr']:.3g}"
            ax_acc.plot(m["epoch"], 100 * m["val_acc"], color=color, linestyle="--", label=label)
            ax_tr.plot(c["epoch"], c["trace_fisher"], color=color, linestyle="--")
        name = f"{title}: {variant}" if title else variant
        ax_acc.set(xlabel="Epoch", ylabel="Validation accuracy (%)", title=name)
        ax_tr.set(xlabel="Epoch", ylabel="Tr(F)", yscale="log", title=f"{name}: Tr(F)")
        ax_acc.legend(fontsize="x-small", loc="best", ncol=2)
    _save_png(fig, Canvas, path, dpi)
