"""Adapter: results/early_phase.csv (+ .md) from the sweep runs' summaries."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.report import early_phase as ep, load_summaries  # noqa: E402
from fisherlab.runs.rundir import RunDir  # noqa: E402

sm = snakemake  # noqa: F821
table = ep.early_phase_table(load_summaries([p for p in sm.input if RunDir.is_summary(p)]))
ep.write_early_phase(table, sm.output.csv, sm.output.md)
print(table.to_string())
