"""Adapter: results/paper_comparison.{md,csv} and paper_directions.csv, the paper's Tables 1-9 beside this config's."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.report import paper  # noqa: E402

sm = snakemake  # noqa: F821
tables = paper.read_tables(dict(sm.input.items()))
comparison = paper.write_paper_comparison(tables, sm.output.md, sm.output.csv, sm.output.directions, sm.params.note)
print(comparison["status"].value_counts().to_string())
