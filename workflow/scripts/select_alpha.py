"""Adapter: alpha* of one regularizer from its alpha-grid runs, or from config."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

from fisherlab.report import choose, load_summaries  # noqa: E402
from fisherlab.runio import write_text_atomic  # noqa: E402

sm = snakemake  # noqa: F821
fixed = sm.params.setting["regularizers"][sm.wildcards.reg]["alpha"]
if fixed is not None:
    choice = {"alpha_star": float(fixed), "source": "config"}
else:
    alpha, source = choose(load_summaries(list(sm.input)), "alpha")
    choice = {"alpha_star": alpha, "source": source}
print(choice)
write_text_atomic(sm.output[0], json.dumps(choice, indent=2) + "\n")
