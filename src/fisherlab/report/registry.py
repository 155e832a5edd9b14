"""The figure registry: every figure of the paper (Figs. 1-21) as one :class:`Figure`
entry, which the pipeline's one ``figure`` rule serves (workflow/rules/report.smk).

An entry says

- ``what(config, plan)``: what the figure draws under this config (sweeps, settings, a
  block of ``interventions``); empty or None: the figure is off;
- ``runs(config, plan)``: the files it reads (each run's ``summary.json`` and, beside it,
  the curves or the Tr(H) of kept weights it draws), declared as the rule's inputs;
- ``params(config, plan)``: plain values the data and the drawing need (labels, titles);
- ``data(files, params)``: the points it draws, a frame with one row per plotted point:
  ``panel`` and ``series`` (the legend entry), ``x``, ``y`` (as drawn: accuracies in %)
  and ``err`` (the error bar, NaN where none), plus the columns the drawing needs; it
  is written as ``results/<fig>.csv``;
- ``draw(frame, png, params)``: the figure from that frame alone (the library's figure
  functions of :mod:`.figures`, :mod:`.early_phase` and :mod:`.interventions`);
- ``caption``: its report caption (``workflow/report/<fig>.rst``).

:func:`make` runs ``data``, writes the CSV and draws the PNG. A new figure is one entry
here and one caption file.

Curves (Figs. 1, 4, 5, 10-12, 15-20) are stored long: one row per run, measured column
and measurement, with the run file (``source``: metrics or curvature), ``column``, its
``epoch`` and ``step`` and the raw ``value``; :func:`curves_of` turns them back into each
run's metrics and curvature frames for the drawing. Rolling means that a figure draws
(Figs. 18, 19's accuracy panel) are applied by the drawing, so ``y`` there is the
unsmoothed measurement.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from ..plan import fisher_penalty, interventions as iv_plan, noisy as noisy_plan, sweeps as sweeps_plan
from ..runs.rundir import RunDir
from . import early_phase as ep, figures, interventions as iv
from .summaries import load_summaries, read_curvature, read_metrics
from .tables import DISPLAY_NAMES

CURVES = (RunDir.METRICS, RunDir.CURVATURE)  # beside a summary.json: what a curve figure reads
#: The settings of the paper's Fig. 4 (WRN and VGG-11 on CIFAR-100); Fig. 10 draws the
#: other settings of Table 1 ("Same as Figure 4, but for DenseNet on CIFAR-100, and
#: SimpleCNN on CIFAR-10"). A config without them draws all its Table 1 settings in Fig. 4.
FIG4_SETTINGS = ("wrn_c100", "vgg11_c100")
POINT_COLUMNS = ("panel", "series", "x", "y", "err")


@dataclass(frozen=True)
class Figure:
    """One figure: see the module's docstring for what each field is."""

    name: str
    caption: str
    what: Callable[[Mapping[str, Any], Any], Any]
    runs: Callable[[Mapping[str, Any], Any], list[str]]
    params: Callable[[Mapping[str, Any], Any], dict[str, Any]]
    data: Callable[[Sequence[str], Mapping[str, Any]], pd.DataFrame]
    draw: Callable[[pd.DataFrame, str | os.PathLike, Mapping[str, Any]], None]


# --------------------------------------------------------------------------- helpers


def summary_files(paths: Sequence[str]) -> list[str]:
    """The ``summary.json`` paths among a figure's input files (one per run, in order)."""
    return [p for p in paths if RunDir.is_summary(p)]


def with_files(paths: Sequence[str], files: Sequence[str] = CURVES) -> list[str]:
    """``paths`` and, beside each ``summary.json`` among them, the run's ``files`` that a
    figure reads: declared, so that a changed or damaged one is noticed."""
    return [*paths, *(p.removesuffix(RunDir.SUMMARY) + f for p in summary_files(paths) for f in files)]


def _scale(column: str) -> float:
    return 100.0 if "acc" in column else 1.0  # accuracies are drawn in %


def curve_rows(series: str, metrics: pd.DataFrame, curvature: pd.DataFrame, metric_columns: Sequence[str] = (),
               curvature_columns: Sequence[str] = (), *, x: str = "epoch", prefix: str = "",
               **extra: Any) -> pd.DataFrame:  # fmt: skip
    """The long rows of one run's curves: per column of ``metric_columns`` (from its
    metrics frame, against epoch) and ``curvature_columns`` (from its curvature frame,
    against ``x``: epoch or step), one row per measurement, panel ``prefix + column``;
    a frame without rows (the run stopped before its first measurement) gives one row
    of NaN, so that the series is still drawn (empty) and listed. ``extra``: columns
    repeated on every row (the run's labels)."""
    parts = []
    for source, frame, columns, xcol in (("metrics", metrics, metric_columns, "epoch"),
                                         ("curvature", curvature, curvature_columns, x)):  # fmt: skip
        for col in columns:
            if col not in frame.columns:
                raise ValueError(f"{series}: the {source} have no {col!r} column")
            f = frame.sort_values("step" if "step" in frame else "epoch")
            if f.empty:  # a run that ended before its first row: one empty point keeps its series (and legend)
                f = pd.DataFrame({"step": [math.nan], "epoch": [math.nan], col: [math.nan]})
            value = f[col].to_numpy(float)
            parts.append(pd.DataFrame({"panel": prefix + col, "series": series, "x": f[xcol].to_numpy(float),
                                       "y": value * _scale(col), "err": math.nan, "source": source, "column": col,
                                       "epoch": f["epoch"].to_numpy(float), "step": f["step"].to_numpy(float),
                                       "value": value, **extra}))  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*POINT_COLUMNS, "source"])


def curves_of(frame: pd.DataFrame, key: str = "series") -> dict[Any, tuple[pd.DataFrame, pd.DataFrame]]:
    """The inverse of :func:`curve_rows`: ``key`` value -> (metrics, curvature) frames,
    one row per (step, epoch), in the order the keys first appear."""
    out = {}
    rows = frame[frame["source"].notna()]
    for k in dict.fromkeys(rows[key]):
        pair = []
        for source in ("metrics", "curvature"):
            r = rows[(rows[key] == k) & (rows["source"] == source)]
            if r.empty:
                pair.append(pd.DataFrame(columns=["step", "epoch"]))
                continue
            wide = r.pivot(index=["step", "epoch"], columns="column", values="value").reset_index()
            wide.columns.name = None
            pair.append(wide.sort_values("step", ignore_index=True))
        out[k] = tuple(pair)
    return out


def _entry_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the point columns first."""
    rest = [c for c in rows.columns if c not in POINT_COLUMNS]
    return rows.reindex(columns=[*POINT_COLUMNS, *rest])


# --------------------------------------------------------------------------- Figs. 1, 4, 10


def _fig1_what(config, plan):
    name = config["sweeps"]["figures"]["fig1"]
    return name if name is not None and name in fisher_penalty.settings_of(config, 1) else None


FIG1_NAMES = {"eta_star": "η*", "baseline": "small lr (Baseline)"}


def _fig1_data(files, params):
    parts = []
    for _, r in load_summaries(summary_files(files)).iterrows():
        label = f"{FIG1_NAMES[r['role']]}, lr {r['lr']:.3g}"
        parts.append(curve_rows(label, read_metrics(r["run_dir"], ["val_acc", "train_acc_subset"]),
                                read_curvature(r["run_dir"]), ["train_acc_subset", "val_acc"], ["trace_fisher"]))  # fmt: skip
    return _entry_frame(pd.concat(parts, ignore_index=True))


def _fig4_what(fig):
    def what(config, plan):
        table1 = fisher_penalty.settings_of(config, 1)
        paper = [s for s in table1 if s in FIG4_SETTINGS]
        if fig == "fig4":
            return paper or table1
        return [s for s in table1 if s not in FIG4_SETTINGS] if paper else []

    return what


def _fig4_runs(fig):
    def runs(config, plan):
        names = _fig4_what(fig)(config, plan)
        return with_files([r.summary() for r in plan.select("fisher_penalty", table=1, seed=config["seeds"][0])
                           if r.fields["setting"] in names])  # fmt: skip

    return runs


def _fig4_data(files, params):
    parts = []
    for _, r in load_summaries(summary_files(files)).iterrows():
        d = r["run_dir"]
        parts.append(curve_rows(r["role"], read_metrics(d, ["val_acc"]), read_curvature(d), ["val_acc"],
                                ["trace_fisher"], prefix=f"{r['setting']}: ", setting=r["setting"],
                                role=r["role"], run_dir=d))  # fmt: skip
    return _entry_frame(pd.concat(parts, ignore_index=True))


def _fig4_draw(frame, png, params):
    settings: dict[str, dict[str, Any]] = {}
    first = frame.drop_duplicates("run_dir").set_index("run_dir")
    for d, pair in curves_of(frame, "run_dir").items():
        settings.setdefault(first.at[d, "setting"], {})[first.at[d, "role"]] = pair
    figures.fig4(settings, png)


# --------------------------------------------------------------------------- Figs. 2, 7, 8, 9, 15, 18, 19


def _sweeps_what(fig):
    return lambda config, plan: sweeps_plan.figures(config).get(fig)


def _sweep_runs(fig, files=CURVES):
    def runs(config, plan):
        what = sweeps_plan.figures(config)[fig]
        return with_files([r.summary() for r in plan.select("sweeps", sweep=what)], files)

    return runs


def _tr_fi_data(files, params):
    table = ep.early_phase_table(load_summaries(summary_files(files)))
    metric, error = params["metric"], params["error"]
    table = table[table["sweep"].isin(params["what"])]
    label = ["lr" if a == "lr" else "batch" for a in table["axis"]]
    return _entry_frame(table.assign(
        panel=table["sweep"], series=[f"{a} {v:g}" for a, v in zip(label, table["value"])],
        x=table["trace_fisher_i"], y=table[metric], err=table[f"{metric}_{error}"],
        xerr=table[f"trace_fisher_i_{error}"], yerr=table[f"{metric}_{error}"], error=error))  # fmt: skip


def _axis_label(r) -> str:
    return f"{'lr' if r['axis'] == 'lr' else 'batch'} {r['value']:g}"


def _sweep_curve_data(columns, x):
    def data(files, params):
        # every run's files are read (checked: a damaged one stops the figure, naming it), metrics too though
        # not drawn; one run per sweep point is drawn, the last seed read
        last = {_axis_label(r): (read_metrics(r["run_dir"]), read_curvature(r["run_dir"], columns))
                for _, r in load_summaries(summary_files(files)).iterrows()}  # fmt: skip
        parts = [curve_rows(label, m, c, (), ["trace_fisher", *columns], x=x) for label, (m, c) in last.items()]
        return _entry_frame(pd.concat(parts, ignore_index=True))

    return data


# --------------------------------------------------------------------------- Figs. 5, 11, 12

NOISY_COLUMNS = {"fig12": ("grad_cosine_clean_noisy",),
                 "fig5": ("train_acc_clean_subset", "train_acc_noisy_subset", "grad_sq_norm_clean",
                          "grad_sq_norm_noisy", "val_acc")}  # fmt: skip


def _noisy_data(fig):
    columns = NOISY_COLUMNS["fig12" if fig == "fig12" else "fig5"]

    def data(files, params):
        runs = load_summaries(summary_files(files)).sort_values(["regularizer", "alpha"], na_position="first")
        parts = []
        for _, r in runs.iterrows():
            base = r["regularizer"] == "none"
            name = "Baseline" if base else DISPLAY_NAMES[r["regularizer"]]
            label = name if base else f"{name} α={r['alpha']:g}"
            parts.append(curve_rows(label, read_metrics(r["run_dir"], columns), pd.DataFrame(), columns,
                                    regularizer=name, strength=None if base else float(r["alpha"]),
                                    title=f"{params['what']}, {r['label_noise']:.0%} noisy labels",
                                    run_dir=r["run_dir"]))  # fmt: skip
        return _entry_frame(pd.concat(parts, ignore_index=True))

    return data


def _noisy_runs(frame):
    """The baseline's and each regularizer's :data:`~.figures.NoisyRun` of the frame."""
    baseline, panels = None, {}
    first = frame.drop_duplicates("run_dir").set_index("run_dir")
    for d, (metrics, _) in curves_of(frame, "run_dir").items():
        reg, strength = first.at[d, "regularizer"], first.at[d, "strength"]
        run = (first.at[d, "series"], None if reg == "Baseline" else float(strength), metrics)
        if reg == "Baseline":
            baseline = run
        else:
            panels.setdefault(reg, []).append(run)
    return baseline, panels


def _noisy_draw(fig):
    def draw(frame, png, params):
        baseline, panels = _noisy_runs(frame)
        title = frame["title"].iloc[0]
        if fig == "fig12":
            figures.fig12({f"{title}: {k}": [baseline, *v] for k, v in panels.items()}, png)
        else:
            figures.fig5([baseline, *panels["FP"]], title, png)

    return draw


# --------------------------------------------------------------------------- interventions


def _iv_what(fig):
    return lambda config, plan: fig if fig in iv_plan.figures(config, plan) else None


def _iv_runs(fig, files=CURVES):
    def runs(config, plan):
        return with_files(iv_plan.figure_inputs(config, fig, plan), files)

    return runs


def _iv_params(fig):
    return lambda config, plan: {"block": config["interventions"][fig], "labels": iv_plan.figure_labels(config, fig)}


def _snapshots(dirs) -> dict[str, pd.DataFrame]:
    return {d: RunDir(d).read_hessian_snapshots() for d in dirs}


def _fig3_data(files, params):
    s = iv.late_fp_summary(iv.late_fp_table(load_summaries(summary_files(files))))
    return _entry_frame(s.assign(panel=s["setting"], x=s["start_epoch"], y=100 * s["final_test_acc"],
                                 err=100 * s["final_test_acc_std"]))  # fmt: skip


TWO_PHASE_PANELS = {"trace_fisher_end": "phase 1: Tr(F) at its end", "trace_hessian_best": "phase 2: Tr(H_f)",
                    "best_test_acc": "phase 2: best test accuracy"}  # fmt: skip


def _two_phase_data(files, params):
    runs, labels = load_summaries(summary_files(files)), params["labels"]
    phase = {d: labels[d]["phase"] for d in runs["run_dir"]}
    curvature = {d: read_curvature(d) for d in phase if phase[d] == 1}
    table = iv.two_phase_table(runs, labels, curvature, _snapshots([d for d in phase if phase[d] == 2]))
    parts = []
    for col, panel in TWO_PHASE_PANELS.items():
        t = table[table["phase"] == (1 if col == "trace_fisher_end" else 2)]
        parts.append(t.assign(panel=panel, series=t["level"], x=t["seed"].astype(float),
                              y=t[col].astype(float) * _scale(col)))  # fmt: skip
    return _entry_frame(pd.concat(parts, ignore_index=True).assign(err=math.nan))


def _two_phase_draw(frame, png, params):
    table = frame.drop_duplicates("run_dir").drop(columns=list(POINT_COLUMNS)).reset_index(drop=True)
    iv.two_phase_figure(table, png, title=f"{params['name']}: {params['block']['setting']}")


def _fig14_data(files, params):
    runs = load_summaries(summary_files(files))
    dirs = list(runs["run_dir"])
    t = iv.hessian_along_table(runs, params["labels"], {d: read_metrics(d) for d in dirs}, _snapshots(dirs))
    vary = {k: v["vary"] for k, v in params["block"]["panels"].items()}
    key = [vary.get(s, "lr") for s in t["setting"]]
    series = [f"{st}: {'η' if k == 'lr' else 'S'}={r[k]:g}" for st, k, (_, r) in zip(t["set"], key, t.iterrows())]
    return _entry_frame(t.assign(panel=t["setting"], series=series, x=t["epoch"].astype(float),
                                 y=t["trace_hessian"], err=math.nan))  # fmt: skip


def _fig14_draw(frame, png, params):
    iv.fig14(frame, png, vary={k: v["vary"] for k, v in params["block"]["panels"].items()})


def _fig21_data(files, params):
    runs = load_summaries(summary_files(files))
    dirs = list(runs["run_dir"])
    p = iv.hessian_fisher_points(runs, {d: read_curvature(d) for d in dirs}, _snapshots(dirs))
    corr = iv.correlations(p)
    corr = corr[corr["lr"] == "all"].drop(columns=["lr", "points"]).astype({"pearson": float, "spearman": float})
    p = p.merge(corr, on="setting", how="left")
    return _entry_frame(p.assign(panel=p["setting"], series=[f"η = {lr:g}" for lr in p["lr"]], x=p["trace_hessian"],
                                 y=p["trace_fisher_batch"], err=math.nan))  # fmt: skip


ALPHA_COLUMNS = ("variant", "role", "alpha", "lr", "batch_size", "status", "best_val_acc", "test_acc_at_best_val",
                 "final_test_acc", "max_trace_fisher", "run_dir", "best")  # fmt: skip


def _alpha_data(files, params):
    table = iv.alpha_sweep_table(load_summaries(summary_files(files)))
    parts = []
    for _, r in table.iterrows():
        d = r["run_dir"]
        ref = r["role"] == "reference"
        label = f"no penalty, lr={r['lr']:.3g}" if ref else f"α={r['alpha']:.3g}" + (" (best)" if r["best"] else "")
        parts.append(curve_rows(label, read_metrics(d, ["val_acc"]), read_curvature(d), ["val_acc"], ["trace_fisher"],
                                prefix="references: " if ref else f"{r['variant']}: ",
                                **{c: r[c] for c in ALPHA_COLUMNS}))  # fmt: skip
    return _entry_frame(pd.concat(parts, ignore_index=True))


def _alpha_draw(frame, png, params):
    table = frame.drop_duplicates("run_dir")[list(ALPHA_COLUMNS)].reset_index(drop=True)
    table["best"] = table["best"].astype(bool)
    iv.alpha_sweep_figure(table, curves_of(frame, "run_dir"), png, title=f"{params['name']}: {params['block']['setting']}")


# --------------------------------------------------------------------------- the registry


def _no_params(config, plan):
    return {}


def _entries() -> dict[str, Figure]:
    e: dict[str, Figure] = {}

    def add(name, caption, what, runs, data, draw, params=_no_params):
        def full_params(config, plan):
            return {"name": name, "what": what(config, plan), **params(config, plan)}

        e[name] = Figure(name, caption, what, runs, full_params, data, draw)

    add("fig1", "Tr(F), training and validation accuracy of η* and the small lr", _fig1_what,
        lambda c, p: with_files([r.summary() for r in p.select("fisher_penalty", setting=_fig1_what(c, p),
                                 role=["eta_star", "baseline"], seed=c["seeds"][0])]),
        _fig1_data, lambda f, png, pr: ep.fig1(curves_of(f), pr["what"], png))  # fmt: skip
    for fig, metric in (("fig2", "best_test_acc"), ("fig7", "best_test_acc"), ("fig8", "best_train_acc_subset"),
                        ("fig9", "best_train_acc_subset")):  # fmt: skip
        add(fig, f"Tr(F_i) against {ep.METRICS[metric]}", _sweeps_what(fig), _sweep_runs(fig), _tr_fi_data,
            lambda f, png, pr: ep.fig_tr_fi(f, pr["what"], pr["metric"], png, error=pr["error"]),
            params=lambda c, p, metric=metric: {"metric": metric, "error": "std"})  # fmt: skip
    add("fig3", "FP switched on at epoch E", _iv_what("fig3"), _iv_runs("fig3"), _fig3_data,
        lambda f, png, pr: iv.draw_fig3(f, png), _iv_params("fig3"))  # fmt: skip
    for fig in ("fig4", "fig10"):
        add(fig, "validation accuracy and Tr(F) per column of Table 1", _fig4_what(fig), _fig4_runs(fig),
            _fig4_data, _fig4_draw)  # fmt: skip
    for fig in ("fig5", "fig11", "fig12"):
        add(fig, "noisy labels: FP's strengths and the baseline",
            lambda c, p, fig=fig: noisy_plan.figures(c).get(fig),
            lambda c, p, fig=fig: with_files(noisy_plan.figure_runs(p, c, fig), (RunDir.METRICS,)),
            _noisy_data(fig), _noisy_draw(fig))  # fmt: skip
    for fig in ("fig6", "fig13"):
        add(fig, "two phases: Tr(F_i) and the final Tr(H_f), accuracy", _iv_what(fig), _iv_runs(fig),
            _two_phase_data, _two_phase_draw, _iv_params(fig))  # fmt: skip
    add("fig14", "Tr(H) along training", _iv_what("fig14"), _iv_runs("fig14"), _fig14_data,
        _fig14_draw, _iv_params("fig14"))  # fmt: skip
    add("fig15", "Tr(F) and Tr(F_B) against epoch", _sweeps_what("fig15"), _sweep_runs("fig15"),
        _sweep_curve_data(["trace_fisher_batch"], "epoch"), lambda f, png, pr: ep.fig15(curves_of(f), pr["what"], png))
    for fig in ("fig16", "fig17", "fig20"):
        add(fig, "an α sweep: validation accuracy and Tr(F)", _iv_what(fig), _iv_runs(fig), _alpha_data, _alpha_draw,
            _iv_params(fig))  # fmt: skip
    for fig in ("fig18", "fig19"):
        add(fig, "Tr(F) and the training accuracy at every iteration", _sweeps_what(fig), _sweep_runs(fig),
            _sweep_curve_data(["train_acc_running"], "step"),
            lambda f, png, pr: ep.fig_per_iteration(curves_of(f), pr["what"], png))  # fmt: skip
    add("fig21", "Tr(F_B) against Tr(H)", _iv_what("fig21"), _iv_runs("fig21"), _fig21_data,
        lambda f, png, pr: iv.fig21(f, png), _iv_params("fig21"))  # fmt: skip
    return {name: e[name] for name in sorted(e, key=lambda n: int(n.removeprefix("fig")))}


#: Every figure of the paper, fig1 ... fig21, by name.
FIGURES: dict[str, Figure] = _entries()


def figure(name: str) -> Figure:
    try:
        return FIGURES[name]
    except KeyError:
        raise ValueError(f"no figure {name!r}; the figures are {', '.join(FIGURES)}") from None


def enabled(config: Mapping[str, Any], plan) -> list[str]:
    """The figures this config draws: those whose ``what`` is not empty."""
    return [name for name, f in FIGURES.items() if f.what(config, plan)]


def inputs(name: str, config: Mapping[str, Any], plan) -> list[str]:
    """The files figure ``name`` reads under this config (its rule's inputs)."""
    return figure(name).runs(config, plan)


def params(name: str, config: Mapping[str, Any], plan) -> dict[str, Any]:
    """The plain values figure ``name``'s data and drawing need under this config."""
    return figure(name).params(config, plan)


def make(name: str, files: Sequence[str], params: Mapping[str, Any], png: str | os.PathLike,
         csv: str | os.PathLike) -> pd.DataFrame:  # fmt: skip
    """Figure ``name`` from its input ``files``: its points (written to ``csv``, atomically)
    and its drawing (``png``). Returns the points."""
    entry = figure(name)
    frame = entry.data(list(files), params)
    missing = [c for c in POINT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: its data has no {missing} column(s)")
    write_text_atomic(csv, frame.to_csv(index=False))
    entry.draw(frame, png, params)
    return frame


def finite_points(frame: pd.DataFrame) -> pd.Series:
    """Per (panel, series), how many of its rows have a finite ``y``."""
    y = pd.to_numeric(frame["y"], errors="coerce")
    return frame.assign(_ok=np.isfinite(y)).groupby(["panel", "series"], sort=False)["_ok"].sum()


__all__ = ["FIGURES", "FIG4_SETTINGS", "Figure", "curve_rows", "curves_of", "enabled", "figure", "finite_points",
           "inputs", "make", "params", "with_files"]  # fmt: skip
