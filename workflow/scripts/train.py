"""Adapter: one training run of the plan (rule train): the library's run_job."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.experiment import run_job  # noqa: E402

sm = snakemake  # noqa: F821
run_job(sm.params.spec, dict(sm.input.items()), Path(sm.output.summary).parent, device=sm.params.device,
        threads=sm.threads, keep_checkpoint=sm.config["keep_checkpoints"])  # fmt: skip
