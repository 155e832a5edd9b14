"""Adapter: Fig. 5 / Fig. 11 (FP's strengths and the baseline) or Fig. 12 (the clean-noisy
gradient cosine, one panel per regularizer) from the grid runs at the search seed."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab import report  # noqa: E402

sm = snakemake  # noqa: F821
runs = report.load_summaries(list(sm.input)).sort_values(["regularizer", "alpha"], na_position="first")
baseline, panels = None, {}
for _, r in runs.iterrows():
    metrics = pd.read_csv(Path(r["run_dir"]) / "metrics.csv")
    if r["regularizer"] == "none":
        baseline = ("Baseline", None, metrics)
        continue
    name = report.DISPLAY_NAMES[r["regularizer"]]
    panels.setdefault(name, []).append((f"{name} α={r['alpha']:g}", r["alpha"], metrics))
title = f"{sm.params.setting}, {runs['label_noise'].iloc[0]:.0%} noisy labels"
if sm.params.figure == "fig12":
    report.fig12({f"{title}: {k}": [baseline, *v] for k, v in panels.items()}, sm.output[0])
else:
    report.fig5([baseline, *panels["FP"]], title, sm.output[0])
