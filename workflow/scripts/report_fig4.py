"""Adapter: Fig. 4 (validation accuracy and Tr(F) per regularizer), first seed."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab import report  # noqa: E402

sm = snakemake  # noqa: F821
first_seed = f"seed{sm.config['seeds'][0]}"
settings: dict = {}
for path in map(Path, sm.input):
    if path.parent.name != first_seed:
        continue
    setting, role = path.parts[-5], path.parts[-3]
    frames = pd.read_csv(path.parent / "metrics.csv"), pd.read_csv(path.parent / "curvature.csv")
    settings.setdefault(setting, {})[role] = frames
report.fig4_multi(settings, sm.output[0])
