"""Adapter: results/hessian.csv, one row per final run with Tr(H) and its standard error."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.atomic import write_text_atomic  # noqa: E402
from fisherlab.report import hessian_table  # noqa: E402

table = hessian_table(list(snakemake.input))  # noqa: F821
print(table)
write_text_atomic(snakemake.output[0], table.to_csv(index=False))  # noqa: F821
