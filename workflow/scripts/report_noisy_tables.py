"""Adapter: Tables 3, 8 and 9 (CSV and Markdown) from the noisy-label runs' summaries."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab import report  # noqa: E402

sm = snakemake  # noqa: F821
runs = report.load_summaries(list(sm.input))
for name in ("table3", "table8", "table9"):
    table = getattr(report, name)(runs, noise=sm.params.fractions, settings=sm.params.settings)
    report.write_table(table, sm.output[f"{name}_csv"], sm.output[f"{name}_md"])
    print(name, table, sep="\n")
