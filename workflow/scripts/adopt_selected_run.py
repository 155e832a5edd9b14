"""Adapter: the search seed's run of the selected strength is its grid run; copy its
files (summary, metrics, curvature, weights) to the selected run's place."""

import shutil
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

from fisherlab.plan import read_selection  # noqa: E402

sm = snakemake  # noqa: F821
source = Path(read_selection(sm.input.choice)["run_dir"])
for name, dest in sm.output.items():
    src = source / Path(dest).name
    tmp = Path(dest).with_name(Path(dest).name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)  # atomic: a half-copied file never carries the output's name
    print(f"{src} -> {dest}")
