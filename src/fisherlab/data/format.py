"""Canonical on-disk image-classification format.

A split is one ``.npz`` file holding three arrays:

- ``x``: uint8, shape (N, H, W, C), HWC, RGB (C = 3) or grey (C = 1);
- ``y``: int64, shape (N,), class index in ``[0, len(classes))``;
- ``classes``: unicode array of the class names, in index order.
"""

from __future__ import annotations

import os

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fisherlab.atomic import atomic_write

_KEYS = ("x", "y", "classes")


class DatasetFormatError(ValueError):
    """A dataset (in memory or on disk) does not follow the canonical format."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image-classification split: ``x`` uint8 (N, H, W, C), ``y`` int64 (N,), ``classes``.

    ``classes`` may be given as any sequence of str and is stored as a tuple.
    Construction validates the arrays and raises :class:`DatasetFormatError`.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", _validate_classes(self.classes))
        _validate_images(self.x)
        _validate_labels(self.y, len(self.x), len(self.classes))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Return a new dataset holding the examples at ``indices`` (copied), same classes."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.x[idx], self.y[idx], self.classes)


def _validate_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise DatasetFormatError(f"classes must be a sequence of str, got {classes!r}")
    if len(classes) == 0:
        raise DatasetFormatError("classes must name at least one class")
    return tuple(classes)


def _validate_images(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise DatasetFormatError(f"x must be a uint8 numpy array, got dtype {getattr(x, 'dtype', type(x))}")
    if x.ndim != 4:
        raise DatasetFormatError(f"x must have shape (N, H, W, C) (ndim 4), got shape {x.shape}")
    if x.shape[3] not in (1, 3):
        raise DatasetFormatError(f"x must have 1 or 3 channels (last axis, HWC), got shape {x.shape}")


def _validate_labels(y: np.ndarray, n: int, num_classes: int) -> None:
    if not isinstance(y, np.ndarray) or y.dtype != np.int64:
        raise DatasetFormatError(f"y must be an int64 numpy array, got dtype {getattr(y, 'dtype', type(y))}")
    if y.ndim != 1:
        raise DatasetFormatError(f"y must have shape (N,) (ndim 1), got shape {y.shape}")
    if len(y) != n:
        raise DatasetFormatError(f"len(x) = {n} but len(y) = {len(y)}; they must match")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetFormatError(
            f"labels out of range: y spans [{y.min()}, {y.max()}] but must lie in [0, {num_classes})"
        )


def save_dataset(path: str | os.PathLike, ds: ImageDataset) -> None:
    """Write ``ds`` to ``path`` as an uncompressed ``.npz``, atomically.

    The data go to a temporary file in the same directory, which then replaces
    ``path`` via ``os.replace``; a crash never leaves a partial file at ``path``.
    """
    with atomic_write(path) as f:
        np.savez(f, x=ds.x, y=ds.y, classes=np.asarray(ds.classes, dtype=np.str_))


def load_dataset(path: str | os.PathLike) -> ImageDataset:
    """Read a split written by :func:`save_dataset` (or any ``.npz`` in the same format).

    Raises :class:`DatasetFormatError`, naming ``path``, if the file is missing,
    is not a readable ``.npz``, lacks a key, or holds arrays of the wrong dtype,
    shape or label range.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such dataset file")
    arrays = _read_npz(path)
    classes = arrays["classes"]
    if classes.dtype.kind != "U" or classes.ndim != 1:
        raise DatasetFormatError(
            f"{path}: 'classes' must be a 1-d unicode array, got dtype {classes.dtype}, shape {classes.shape}"
        )
    try:
        return ImageDataset(arrays["x"], arrays["y"], tuple(str(c) for c in classes))
    except DatasetFormatError as e:
        raise DatasetFormatError(f"{path}: {e}") from e


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DatasetFormatError(f"{path}: not an .npz archive")
        with npz:
            missing = [k for k in _KEYS if k not in npz.files]
            if missing:
                raise DatasetFormatError(f"{path}: missing key(s) {missing}; expected keys {list(_KEYS)}")
            return {k: npz[k] for k in _KEYS}
    except DatasetFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetFormatError(f"{path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from e


def write_splits(out_dir: str | os.PathLike, train: ImageDataset, test: ImageDataset) -> tuple[Path, Path]:
    """Write ``out_dir/train.npz`` and ``out_dir/test.npz`` (each atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.npz", out / "test.npz"
    save_dataset(paths[0], train)
    save_dataset(paths[1], test)
    return paths
