"""Adapter: Tr(H) of each weights file a run kept (rule trace_hessian_snapshots)."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fisherlab.atomic import write_text_atomic  # noqa: E402
from fisherlab.experiment import trace_hessian_of_snapshots  # noqa: E402
from fisherlab.plan import RunSpec  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
h = sm.params.hessian
rows = trace_hessian_of_snapshots(RunSpec.from_dict(sm.params.spec), dict(sm.input.items()),
                                  Path(sm.input.summary).parent, probes=h["queries"], examples=h["examples"],
                                  distribution=h["probes"], method=h["method"], device=sm.params.device)  # fmt: skip
table = pd.DataFrame(rows)
print(table)
write_text_atomic(sm.output[0], table.to_csv(index=False))
