"""Adapter: one row per final run with Tr(H) and its standard error."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402

from fisherlab.runio import write_text_atomic  # noqa: E402

rows = []
for path in map(Path, snakemake.input):  # noqa: F821
    h = json.loads(path.read_text())
    rows.append({"setting": path.parts[-5], "role": path.parts[-3], "seed": path.parts[-2][4:], **h})
table = pd.DataFrame(rows)
print(table)
write_text_atomic(snakemake.output[0], table.to_csv(index=False))  # noqa: F821
