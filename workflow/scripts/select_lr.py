"""Adapter: eta* from the lr-grid runs (best validation accuracy), or from config."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

from fisherlab.report import choose, load_summaries  # noqa: E402
from fisherlab.runio import write_text_atomic  # noqa: E402

sm = snakemake  # noqa: F821
s = sm.params.setting
if s["lr_star"] is not None:
    lr_star, source = float(s["lr_star"]), "config"
else:
    lr_star, source = choose(load_summaries(list(sm.input)), "lr")
factor = s["small_lr_factor"] if s["table"] == 1 else 1.0  # Table 2: the regularizers at eta* itself
choice = {"lr_star": lr_star, "lr_small": lr_star / factor, "small_lr_factor": factor, "source": source}
print(choice)
write_text_atomic(sm.output[0], json.dumps(choice, indent=2) + "\n")
