"""Helpers shared by several test modules (imported as ``from helpers import ...``;
tests/ is on sys.path through the rootdir conftest). Fixtures live in conftest.py.

Each helper here used to be copied into two or more test modules; keep one copy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from fisherlab import TrainData
from fisherlab.data import DeviceData, make_synthetic

DT = torch.float64

#: The repository root, the pipeline's config schema, and the schema as loaded (read it;
#: deep-copy it before changing anything).
REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
TIMING = {"seconds", "eval_seconds"}


# =========================================================================== random numbers


def seeded(seed: int, fn, *args, **kwargs):
    """Run ``fn`` under a fixed global seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def randn(*shape, seed: int, dtype=DT) -> torch.Tensor:
    """Standard normal tensor from its own generator seeded with ``seed`` (float64 by default)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_batch(B: int, shape: tuple[int, ...], seed: int, classes: int = 4, dtype=DT):
    """``(x, y)``: ``B`` standard normal inputs of ``shape`` and uniform labels in
    ``[0, classes)``, both drawn (in that order) from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (B,), generator=g)


def make_mlp(seed: int = 0, out: int = 4, dtype=DT) -> nn.Module:
    """Linear(5, 7) - Tanh - Linear(7, out), initialised under global seed ``seed``."""
    return seeded(seed, lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, out)).to(dtype))


# =========================================================================== training data


def synthetic_train_data(
    n_train: int, n_val: int, n_test: int | None = None, *, image_size: int = 16, seed: int = 3, augment=False
) -> TrainData:
    """Synthetic 4-class splits (``make_synthetic``), val and test normalised with the
    training split's channel statistics; no test split when ``n_test`` is None."""

    def split(n, name, **kw):
        return DeviceData(make_synthetic(n, num_classes=4, image_size=image_size, seed=seed, split=name), **kw)

    train = split(n_train, "train", augment=augment)
    stats = {"mean": train.mean.flatten().tolist(), "std": train.std.flatten().tolist()}
    test = None if n_test is None else split(n_test, "test", **stats)
    return TrainData(train, split(n_val, "val", **stats), test)


# =========================================================================== datasets


def assert_same_dataset(got, ref) -> None:
    """Two ``ImageDataset`` s hold the same images, labels and class names."""
    np.testing.assert_array_equal(got.x, ref.x)
    np.testing.assert_array_equal(got.y, ref.y)
    assert got.classes == ref.classes


# =========================================================================== interrupted runs


def without_timing(rows):
    """The rows without wall-clock fields, NaN replaced by a marker so that == works."""
    return [
        {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items() if k not in TIMING}
        for r in rows
    ]


class Interrupted(Exception):
    pass


class CrashingData(DeviceData):
    """A training split whose iterator raises after ``crash_after`` batches in total."""

    def __init__(self, src: DeviceData, crash_after: int):
        self.__dict__.update(src.__dict__)
        self.left = crash_after

    def batches(self, *args, **kwargs):
        for batch in super().batches(*args, **kwargs):
            if self.left == 0:
                raise Interrupted
            self.left -= 1
            yield batch
