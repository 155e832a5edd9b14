"""Adapter: Fig. 4 (validation accuracy and Tr(F) per column of Table 1), first seed."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab import report  # noqa: E402

sm = snakemake  # noqa: F821
settings: dict = {}
for _, run in report.load_summaries(list(sm.input)).iterrows():  # the first seed's final runs
    d = Path(run["run_dir"])
    settings.setdefault(run["setting"], {})[run["role"]] = pd.read_csv(d / "metrics.csv"), pd.read_csv(d / "curvature.csv")
report.fig4(settings, sm.output[0])
