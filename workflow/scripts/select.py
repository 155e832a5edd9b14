"""Adapter: one selection of the plan (rule select): the grid value with the best
validation accuracy, or the number config.yaml fixes."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

from fisherlab.atomic import write_text_atomic  # noqa: E402
from fisherlab.report import choose, load_summaries  # noqa: E402

sm = snakemake  # noqa: F821
key, fixed = sm.params.key, sm.params.fixed
if fixed is not None:
    choice = {"key": key, "value": float(fixed), "source": "config", "run_dir": None, "grid": []}
else:
    runs = load_summaries(list(sm.input))
    value, source = choose(runs, key)
    chosen = runs[runs[key] == value]["run_dir"].iloc[0]
    choice = {"key": key, "value": value, "source": source, "run_dir": chosen, "grid": runs[key].tolist()}
print(choice)
write_text_atomic(sm.output[0], json.dumps(choice, indent=2) + "\n")
