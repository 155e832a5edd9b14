"""Every script in examples/ runs as a user would run it (its own process, from a scratch
folder) and prints what it promises; each stays under 60 lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = EXAMPLES.parent / "src"

EXPECTED = {  # a line each must print
    "own_loop.py": "epoch 2: loss",
    "per_layer.py": "= Tr(F)",
    "lightning_fp.py": "Tr(F_B)",
    "huggingface_trace.py": "step  12  Tr(F)",
}


def test_every_example_is_listed_and_short():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)
    for p in EXAMPLES.glob("*.py"):
        assert len(p.read_text().splitlines()) < 60, p.name


@pytest.mark.slow  # each starts an interpreter and imports torch (and Lightning or transformers)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_runs(name, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert EXPECTED[name] in out.stdout, out.stdout[-2000:]
