"""Adapter: Tr(H) of a run's final weights (rule trace_hessian)."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import torch  # noqa: E402

from fisherlab.atomic import write_text_atomic  # noqa: E402
from fisherlab.experiment import trace_hessian_of_run  # noqa: E402
from fisherlab.plan import RunSpec  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
h = sm.params.hessian
out = trace_hessian_of_run(RunSpec.from_dict(sm.params.spec), dict(sm.input.items()), sm.input.model,
                           sm.input.summary, probes=h["queries"], examples=h["examples"],
                           distribution=h["probes"], method=h["method"], device=sm.params.device)  # fmt: skip
print(out)
write_text_atomic(sm.output[0], json.dumps(out, indent=2) + "\n")
