"""Adapter: one figure of the interventions block and its numbers (results/<fig>.png and
.csv), by the figure's family: Fig. 3 (late FP), Figs. 6/13 (two-phase), Figs. 14/21
(Tr(H) along training), Figs. 16/17/20 (α sweeps)."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab.atomic import write_text_atomic  # noqa: E402
from fisherlab.plan.interventions import SNAPSHOT_HESSIAN  # noqa: E402
from fisherlab.report import interventions as iv, load_summaries  # noqa: E402

sm = snakemake  # noqa: F821
fig, block, labels = sm.params.figure, sm.params.block, sm.params.labels
runs = load_summaries([p for p in sm.input if p.endswith("summary.json")])


def read(name, dirs=None):
    return {d: pd.read_csv(Path(d) / name) for d in (runs["run_dir"] if dirs is None else dirs)}


if sm.params.kind == "late_fp":  # Fig. 3: one row per (setting, series, E)
    table = iv.late_fp_table(runs)
    out = iv.late_fp_summary(table)
    iv.fig3(table, sm.output.png)
elif sm.params.kind == "two_phase":  # Figs. 6, 13: one row per run
    phase = {d: labels[d]["phase"] for d in runs["run_dir"]}
    out = iv.two_phase_table(runs, labels, read("curvature.csv", [d for d in phase if phase[d] == 1]),
                             read(SNAPSHOT_HESSIAN, [d for d in phase if phase[d] == 2]))  # fmt: skip
    iv.two_phase_figure(out, sm.output.png, title=f"{fig}: {block['setting']}")
elif fig == "fig14":  # one row per configuration and epoch
    table = iv.hessian_along_table(runs, labels, read("metrics.csv"), read(SNAPSHOT_HESSIAN))
    out = iv.hessian_along_summary(table)
    iv.fig14(table, sm.output.png, vary={k: v["vary"] for k, v in block["panels"].items()})
elif sm.params.kind == "hessian_along":  # Fig. 21: the correlations
    points = iv.hessian_fisher_points(runs, read("curvature.csv"), read(SNAPSHOT_HESSIAN))
    out = iv.correlations(points)
    iv.fig21(points, sm.output.png)
else:  # Figs. 16, 17, 20: one row per run, the best alpha marked
    out = iv.alpha_sweep_table(runs)
    curves = {d: (pd.read_csv(Path(d) / "metrics.csv"), pd.read_csv(Path(d) / "curvature.csv")) for d in out["run_dir"]}
    iv.alpha_sweep_figure(out, curves, sm.output.png, title=f"{fig}: {block['setting']}")
print(out.to_string())
write_text_atomic(sm.output.csv, out.to_csv(index=False))
