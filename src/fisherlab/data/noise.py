"""Noisy-label files for the memorisation experiments (Section 4.1, Supplement I.3).

"We replace labels of the examples in the CIFAR-100 dataset (25% or 50% of the training
set) with labels sampled uniformly." For a fraction ``f`` and a seed, exactly
``round(f * N)`` training examples, chosen uniformly without replacement, get a label
drawn uniformly from all ``C`` classes (so about 1/C of them keep their label by chance;
they still count as noisy, as in the paper, whose noisy examples are those whose label
was *replaced*). Everything is drawn from ``numpy.random.default_rng(seed)``: the same
``(labels, fraction, seed)`` always gives the same file.

A file covers every index of the prepared training file (``train.npz``), before the
validation split is carved out of it. The validation examples therefore carry noisy
labels too, at the same rate in expectation: early stopping and the choice of α use only
what a practitioner would have (no clean labels), and since under uniform noise the
expected noisy-label accuracy is ``(1 - f) acc_clean + f / C``, an increasing function of
the clean accuracy, the selected epoch is the same in expectation. It also keeps one file
per (dataset, fraction, seed), whatever a setting's validation size. The test split is
never touched.

On disk: a CSV with one row per training index, ``index,clean_label,label,replaced``
(``replaced`` is 0 or 1), preceded by one comment line holding the fraction, the seed and
the number of classes, e.g. ``# fisherlab noisy labels: fraction=0.25 seed=0 num_classes=100``.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fisherlab.atomic import write_text_atomic
from fisherlab.data.format import DatasetFormatError, ImageDataset, load_dataset

_HEADER = "# fisherlab noisy labels: fraction={fraction!r} seed={seed} num_classes={num_classes}"
_HEADER_RE = re.compile(
    r"^# fisherlab noisy labels: fraction=(?P<fraction>[0-9.e+-]+) seed=(?P<seed>\d+) "
    r"num_classes=(?P<num_classes>\d+)$"
)
_COLUMNS = "index,clean_label,label,replaced"


@dataclass(frozen=True, eq=False)
class NoisyLabels:
    """Per training index: the clean label, the label trained on, and whether it was replaced."""

    clean: np.ndarray  # int64 (N,)
    label: np.ndarray  # int64 (N,): the new label where replaced, else the clean one
    replaced: np.ndarray  # bool (N,)
    fraction: float
    seed: int
    num_classes: int

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def n_noisy(self) -> int:
        return int(self.replaced.sum())


def noisy_count(n: int, fraction: float) -> int:
    """The number of replaced labels: ``round(fraction * n)`` (exact when that is an integer)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label-noise fraction must lie in [0, 1], got {fraction}")
    return int(round(fraction * n))


def make_noisy_labels(clean: np.ndarray, num_classes: int, fraction: float, seed: int) -> NoisyLabels:
    """Replace the labels of exactly ``round(fraction * N)`` examples, chosen uniformly
    without replacement, by labels drawn uniformly from ``range(num_classes)``
    (Section 4.1). Deterministic in ``seed``."""
    clean = np.asarray(clean)
    if clean.ndim != 1 or clean.dtype.kind not in "iu":
        raise ValueError(f"clean labels must be a 1-d integer array, got {clean.dtype} {clean.shape}")
    if len(clean) and (clean.min() < 0 or clean.max() >= num_classes):
        raise ValueError(f"clean labels must lie in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(clean), noisy_count(len(clean), fraction), replace=False)
    label = clean.astype(np.int64).copy()
    label[chosen] = rng.integers(0, num_classes, size=len(chosen))
    replaced = np.zeros(len(clean), dtype=bool)
    replaced[chosen] = True
    return NoisyLabels(clean.astype(np.int64), label, replaced, float(fraction), int(seed), int(num_classes))


def save_noisy_labels(path: str | os.PathLike, noisy: NoisyLabels) -> None:
    """Write ``noisy`` as the CSV described in the module docstring, atomically."""
    buf = io.StringIO()
    buf.write(_HEADER.format(fraction=noisy.fraction, seed=noisy.seed, num_classes=noisy.num_classes) + "\n")
    buf.write(_COLUMNS + "\n")
    table = np.stack([np.arange(len(noisy)), noisy.clean, noisy.label, noisy.replaced.astype(np.int64)], 1)
    np.savetxt(buf, table, fmt="%d", delimiter=",")
    write_text_atomic(path, buf.getvalue())


def load_noisy_labels(path: str | os.PathLike) -> NoisyLabels:
    """Read a file written by :func:`save_noisy_labels`; ``DatasetFormatError`` naming the
    file if it is missing, malformed, or inconsistent (labels out of range, a row marked
    not replaced whose label differs from the clean one, a count that is not the
    fraction's)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetFormatError(f"{path}: cannot read noisy-label file ({e})") from e
    if len(lines) < 2 or not (m := _HEADER_RE.match(lines[0])) or lines[1] != _COLUMNS:
        raise DatasetFormatError(
            f"{path}: not a fisherlab noisy-label file (expected the header line "
            f"'# fisherlab noisy labels: ...' then '{_COLUMNS}')"
        )
    try:
        table = np.loadtxt(lines[2:], delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DatasetFormatError(f"{path}: malformed rows ({e})") from e
    if table.shape[1] != 4 or not np.array_equal(table[:, 0], np.arange(len(table))):
        raise DatasetFormatError(f"{path}: rows must be 'index,clean_label,label,replaced' for indices 0..N-1")
    fraction, seed, c = float(m["fraction"]), int(m["seed"]), int(m["num_classes"])
    clean, label, replaced = table[:, 1], table[:, 2], table[:, 3]
    if not np.isin(replaced, (0, 1)).all():
        raise DatasetFormatError(f"{path}: 'replaced' must be 0 or 1")
    if table[:, 1:3].min(initial=0) < 0 or table[:, 1:3].max(initial=0) >= c:
        raise DatasetFormatError(f"{path}: labels out of range [0, {c})")
    if np.any((replaced == 0) & (clean != label)):
        raise DatasetFormatError(f"{path}: a row not marked replaced has a label that differs from the clean one")
    if replaced.sum() != noisy_count(len(table), fraction):
        raise DatasetFormatError(
            f"{path}: {replaced.sum()} labels are replaced, but fraction {fraction} of {len(table)} "
            f"is {noisy_count(len(table), fraction)}"
        )
    return NoisyLabels(clean, label, replaced.astype(bool), fraction, seed, c)


def apply_noisy_labels(ds: ImageDataset, noisy: NoisyLabels, where: str = "noisy labels") -> ImageDataset:
    """``ds`` with the labels of ``noisy``, after checking that the file belongs to it:
    the same number of examples and classes, and clean labels equal to ``ds.y``.
    ``DatasetFormatError`` (prefixed by ``where``, e.g. the two paths) otherwise."""
    fix = "delete the noisy-label file to have the pipeline make it again from this training set"
    if len(noisy) != len(ds) or noisy.num_classes != ds.num_classes:
        raise DatasetFormatError(
            f"{where}: the noisy-label file belongs to another dataset: it has {len(noisy)} examples and "
            f"{noisy.num_classes} classes, the training set {len(ds)} and {ds.num_classes}; {fix}"
        )
    differ = np.flatnonzero(noisy.clean != ds.y)
    if len(differ):
        raise DatasetFormatError(
            f"{where}: the noisy-label file belongs to another dataset: its clean labels differ from the "
            f"training set's labels at {len(differ)} of {len(ds)} indices (first: {differ[0]}); {fix}"
        )
    return ImageDataset(ds.x, noisy.label.copy(), ds.classes)


def prepare_noisy_labels(
    train_path: str | os.PathLike, out_path: str | os.PathLike, fraction: float, seed: int
) -> NoisyLabels:
    """Write the noisy-label file of a prepared training split (``train.npz``)."""
    ds = load_dataset(train_path)
    noisy = make_noisy_labels(ds.y, ds.num_classes, fraction, seed)
    save_noisy_labels(out_path, noisy)
    return noisy
