"""The handwritten digits bundled with scikit-learn -> the canonical ``.npz`` format.

A small real image set that needs no download: the test set of the UCI "Optical
Recognition of Handwritten Digits" data (Alpaydin & Kaynak, 1998) as scikit-learn ships
it, ``sklearn/datasets/data/digits.csv.gz``: 1,797 grey 8 x 8 images of the digits 0-9
(about 180 per class). Each CSV row holds the 64 pixel values row-major, each an integer
0..16 (the number of set pixels in a 4 x 4 block of the original 32 x 32 bitmap), then
the label. The file is located through the installed package without importing it
(importing scikit-learn loads SciPy), and read with numpy alone.

Conversion (:func:`read_digits`, :func:`upsample`):

- pixel values ``v`` -> ``round(v * 255 / 16)`` as uint8, one channel (C = 1);
- each pixel repeated ``factor`` x ``factor`` times (nearest neighbour). SimpleCNN's two
  valid 3 x 3 convolutions and two 2 x 2 poolings leave no feature map of an 8 x 8 image
  (``((8 - 2) // 2 - 2) // 2 = 0``); at 16 x 16 they leave 2 x 2.

Split (:func:`make_digits`): a permutation drawn by ``numpy.random.default_rng(seed)``;
its first ``n_test`` indices are the test split and the rest the training split, from
which the pipeline carves its validation split (Supplement I.2).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from fisherlab.data.format import DatasetFormatError, ImageDataset, write_splits

NUM_IMAGES = 1797  # rows of scikit-learn's digits.csv.gz
_SIDE = 8
_LEVELS = 16  # pixel values are 0..16
CLASSES = tuple(str(k) for k in range(10))


def digits_csv_path() -> Path:
    """Path of scikit-learn's ``datasets/data/digits.csv.gz``, found without importing it.

    Raises ``ModuleNotFoundError`` when scikit-learn is not installed and
    ``FileNotFoundError`` when the installed copy lacks the file."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the digits data set is read from scikit-learn's bundled copy; install scikit-learn "
            "(pinned in requirements.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn is installed but has no {path}")
    return path


def read_digits(path: str | os.PathLike | None = None) -> ImageDataset:
    """All 1,797 digits as 8 x 8 x 1 uint8 images (``round(v * 255 / 16)``) and int64 labels.

    ``path`` defaults to :func:`digits_csv_path`. Raises :class:`DatasetFormatError` when
    the file is not 65 integer columns, pixels in 0..16 and labels in 0..9."""
    path = Path(path) if path is not None else digits_csv_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", ndmin=2)
    if table.shape[1] != _SIDE * _SIDE + 1:
        raise DatasetFormatError(f"{path}: expected {_SIDE * _SIDE + 1} columns, got {table.shape[1]}")
    if not np.array_equal(table, np.rint(table)):
        raise DatasetFormatError(f"{path}: non-integer values")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > _LEVELS or labels.min() < 0 or labels.max() > 9:
        raise DatasetFormatError(f"{path}: pixel values must lie in 0..{_LEVELS} and labels in 0..9")
    x = np.rint(pixels * (255.0 / _LEVELS)).astype(np.uint8).reshape(-1, _SIDE, _SIDE, 1)
    return ImageDataset(x, labels.astype(np.int64), CLASSES)


def upsample(ds: ImageDataset, factor: int) -> ImageDataset:
    """Each pixel repeated ``factor`` x ``factor`` times (nearest neighbour): (N, fH, fW, C)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    x = ds.x.repeat(factor, axis=1).repeat(factor, axis=2)
    return ImageDataset(x, ds.y.copy(), ds.classes)


def make_digits(
    n_test: int = 497, seed: int = 0, factor: int = 2, path: str | os.PathLike | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """(train, test): the digits upsampled by ``factor``, split by a seeded permutation
    (``default_rng(seed).permutation(1797)``: its first ``n_test`` indices are the test
    split, the rest, in that order, the training split)."""
    full = read_digits(path)
    if not 0 < n_test < len(full):
        raise ValueError(f"need 0 < n_test < {len(full)}, got {n_test}")
    full = upsample(full, factor)
    perm = np.random.default_rng(seed).permutation(len(full))
    return full.subset(perm[n_test:]), full.subset(perm[:n_test])


def prepare_digits(
    out_dir: str | os.PathLike, n_test: int = 497, seed: int = 0, factor: int = 2
) -> tuple[Path, Path]:
    """Write :func:`make_digits` as ``out_dir/train.npz`` and ``out_dir/test.npz``; return their paths."""
    return write_splits(out_dir, *make_digits(n_test=n_test, seed=seed, factor=factor))
