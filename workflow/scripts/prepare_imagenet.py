"""Adapter: ImageNet in the canonical format, from the local folder config names."""

import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir, "../../src").resolve()))  # noqa: F821  (this checkout's src/)
from fisherlab.forkserver import hand_over  # noqa: E402

hand_over(snakemake.config)  # noqa: F821  (config forkserver: run in a child of the fork server)

from fisherlab.data.imagenet import prepare_imagenet  # noqa: E402

sm = snakemake  # noqa: F821
if not sm.params.source:
    raise SystemExit("ImageNet has no download: set data.imagenet.source to your ILSVRC2012 folder in config.yaml")
print(prepare_imagenet(sm.params.source, Path(sm.output.train).parent, size=sm.params.size,
                       workers=sm.threads))  # fmt: skip
