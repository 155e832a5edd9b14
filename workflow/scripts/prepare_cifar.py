"""Adapter: CIFAR-10/100 in the canonical format, from a local archive or torchvision."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)


from fisherlab.data.cifar import prepare_cifar  # noqa: E402

sm = snakemake  # noqa: F821
print(prepare_cifar(sm.wildcards.dataset, Path(sm.output.train).parent, source=sm.params.source,
                    download_root=sm.params.download_root))  # fmt: skip
