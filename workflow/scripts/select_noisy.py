"""Adapter: the selected strength (alpha, or beta for mixup) of one regularizer, noisy
setting and noise fraction, from its grid runs (a one-value grid selects that value)."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

from fisherlab.report import choose, load_summaries  # noqa: E402
from fisherlab.runio import write_text_atomic  # noqa: E402

sm = snakemake  # noqa: F821
runs = load_summaries(list(sm.input))
value, source = choose(runs, sm.params.key)
chosen = runs[runs[sm.params.key] == value]["run_dir"].iloc[0]
choice = {"key": sm.params.key, "value": value, "source": source, "run_dir": chosen,
          "grid": runs[sm.params.key].tolist()}  # fmt: skip
print(choice)
write_text_atomic(sm.output[0], json.dumps(choice, indent=2) + "\n")
