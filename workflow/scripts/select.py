"""Adapter: one selection of the plan (rule select): the grid value with the best
validation accuracy, or the number config.yaml fixes (fisherlab.runs.selection)."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.report import load_summaries  # noqa: E402
from fisherlab.runs.selection import decide, write_selection  # noqa: E402

sm = snakemake  # noqa: F821
runs = load_summaries(list(sm.input)) if sm.params.fixed is None else None
choice = decide(sm.params.key, sm.params.fixed, runs)
print(choice)
write_selection(sm.output[0], choice)
