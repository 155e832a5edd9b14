"""Adapter: results/early_phase.csv (+ .md), or one of Figs. 1, 2, 7, 8, 9, 15, 18, 19
(the rule's params.figure) from the runs' summaries, metrics and curvature."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab.report import early_phase as ep  # noqa: E402
from fisherlab.report import load_summaries  # noqa: E402

sm = snakemake  # noqa: F821
runs = load_summaries(list(sm.input))
figure = sm.params.get("figure")


def curves(label_of):
    """label -> (metrics, curvature) of each run, in the order of the inputs."""
    return {label_of(r): (pd.read_csv(Path(r["run_dir"]) / "metrics.csv"), pd.read_csv(Path(r["run_dir"]) / "curvature.csv"))
            for _, r in runs.iterrows()}  # fmt: skip


def axis_label(r):
    return f"{'lr' if r['axis'] == 'lr' else 'batch'} {r['value']:g}"


if figure is None:
    table = ep.early_phase_table(runs)
    ep.write_early_phase(table, sm.output.csv, sm.output.md)
    print(table.to_string())
elif figure in ("fig2", "fig7", "fig8", "fig9"):
    metric = "best_test_acc" if figure in ("fig2", "fig7") else "best_train_acc"
    ep.fig_tr_fi(ep.early_phase_table(runs), sm.params.what, metric, sm.output[0])
elif figure == "fig1":
    names = {"eta_star": "η*", "baseline": "small lr (Baseline)"}
    ep.fig1(curves(lambda r: f"{names[r['role']]}, lr {r['lr']:.3g}"), sm.params.what, sm.output[0])
elif figure == "fig15":
    ep.fig15(curves(axis_label), sm.params.what, sm.output[0])
else:  # fig18, fig19
    ep.fig_per_iteration(curves(axis_label), sm.params.what, sm.output[0])
