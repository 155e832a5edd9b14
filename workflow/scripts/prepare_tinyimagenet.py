"""Adapter: TinyImageNet in the canonical format (downloaded, or from config's source)."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.data.tinyimagenet import prepare_tinyimagenet  # noqa: E402

sm = snakemake  # noqa: F821
print(prepare_tinyimagenet(Path(sm.output.train).parent, source=sm.params.source,
                           download_root=sm.params.download_root))  # fmt: skip
