"""Adapter: one training run of the plan (rule train): its spec, its input files, the
library's run_planned."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import torch  # noqa: E402

from fisherlab.experiment import run_planned  # noqa: E402
from fisherlab.plan import RunSpec  # noqa: E402
from fisherlab.preemption import StopFlag  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
# SIGTERM / SIGUSR1 from SLURM before a time-out: save the state, exit 1, resume on retry
run_planned(RunSpec.from_dict(sm.params.spec), dict(sm.input.items()), device=sm.params.device,
            out_dir=Path(sm.output.summary).parent, should_stop=StopFlag())  # fmt: skip
