"""Adapter: the noisy-label file of one dataset, noise fraction and seed (Section 4.1)."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.data.noise import prepare_noisy_labels  # noqa: E402

sm = snakemake  # noqa: F821
noisy = prepare_noisy_labels(sm.input.train, sm.output[0], float(sm.wildcards.noise), int(sm.wildcards.seed))
print(f"{noisy.n_noisy} of {len(noisy)} labels replaced (fraction {noisy.fraction}, seed {noisy.seed})")
