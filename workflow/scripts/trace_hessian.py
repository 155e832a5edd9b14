"""Adapter: Tr(H) of a run's final weights (rule trace_hessian) or of each weights file
it kept (rule trace_hessian_snapshots: params.snapshots)."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.hessian import hessian_job  # noqa: E402

sm = snakemake  # noqa: F821
out = hessian_job(sm.params.spec, dict(sm.input.items()), sm.params.hessian, sm.output[0],
                  snapshots=sm.params.snapshots, device=sm.params.device, threads=sm.threads)  # fmt: skip
print(*(out if isinstance(out, list) else [out]), sep="\n")
