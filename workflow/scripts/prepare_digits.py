"""Adapter: scikit-learn's bundled digits in the canonical format."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.data.digits import prepare_digits  # noqa: E402

sm = snakemake  # noqa: F821
p = sm.params
print(prepare_digits(Path(sm.output.train).parent, n_test=p.n_test, seed=p.seed, factor=p.factor))
