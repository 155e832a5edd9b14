"""Adapter: one figure of the paper (the rule's {fig}) and the points it draws,
results/<fig>.png and .csv, by its entry in fisherlab.report.registry."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.report import registry  # noqa: E402

sm = snakemake  # noqa: F821
points = registry.make(sm.wildcards.fig, list(sm.input), sm.params.figure, sm.output.png, sm.output.csv)
print(points.to_string(max_rows=200))
