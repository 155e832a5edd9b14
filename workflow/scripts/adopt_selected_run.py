"""Adapter: the search seed's run of the selected strength is its grid run; copy its
files (summary, metrics, curvature, weights) to the selected run's place."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.runs.selection import adopt  # noqa: E402

for src, dest in adopt(snakemake.input.choice, dict(snakemake.output.items())):  # noqa: F821
    print(f"{src} -> {dest}")
