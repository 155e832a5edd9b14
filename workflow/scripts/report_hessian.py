"""Adapter: one row per final run with Tr(H) and its standard error."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab.atomic import write_text_atomic  # noqa: E402
from fisherlab.report import read_run  # noqa: E402

rows = []
for path in map(Path, snakemake.input):  # noqa: F821  (each run's hessian.json, beside its summary)
    run = read_run(path.parent)
    rows.append({"setting": run["setting"], "role": run["role"], "seed": run["seed"], **json.loads(path.read_text())})
table = pd.DataFrame(rows)
print(table)
write_text_atomic(snakemake.output[0], table.to_csv(index=False))  # noqa: F821
