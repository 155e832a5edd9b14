"""The data files of one run, checked against each other before any training.

Each file is checked on its own when it is read (:func:`~fisherlab.data.format.load_dataset`:
``x`` uint8 (N, H, W, C) with 1 or 3 channels, ``y`` int64 in ``[0, len(classes))``;
:func:`~fisherlab.data.noise.load_noisy_labels`: its rows and ``round(fraction * N)``
replaced labels). What no single file can tell is whether the files of a run belong
together; a test file that does not fit the training file would otherwise fail only at the
final evaluation, after all of the training, or not at all (classes listed in another
order). :func:`check_run_data` compares them:

- every split has examples: the training file, the test file, and the training split left
  once ``val_size`` examples are held out for validation (Supplement I.2);
- test and training files agree on the number of classes, the class names *and their
  order* (label ``k`` means ``classes[k]`` in both), the image size and the channels (the
  dtypes are the same by construction: uint8 ``x`` and int64 ``y`` in each file);
- a noisy-label file (Section 4.1, :mod:`fisherlab.data.noise`) agrees with its name
  (``frac<F>_seed<S>.csv``, ``F`` with 4 significant digits as the plan writes it), with the
  run's configured fraction, and with the training file (one row per training example, the
  same number of classes, clean labels equal to the file's labels:
  :func:`~fisherlab.data.noise.apply_noisy_labels`); and the number of labels that differ
  from the clean ones is one that uniform replacement makes plausible
  (:func:`changed_labels_bound`).

Every mismatch found is reported at once, in one :class:`DatasetFormatError` whose lines
name the file(s) and the mismatch, e.g. ``test.npz has 20 classes but train.npz has 10``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from fisherlab.data.format import DatasetFormatError, ImageDataset
from fisherlab.data.noise import NoisyLabels, apply_noisy_labels
from fisherlab.plan.core import fmt as fraction_name  # a fraction as the plan writes it in a path

#: How the pipeline names a noisy-label file (fisherlab.plan.settings.noise_file).
NOISE_NAME = re.compile(r"^frac(?P<fraction>[0-9.e+-]+)_seed(?P<seed>\d+)\.csv$")

#: Probability that a file made by :func:`~fisherlab.data.noise.make_noisy_labels` fails
#: the changed-labels check (a false alarm), at most.
FALSE_ALARM = 1e-9


def changed_labels_bound(n_replaced: int, num_classes: int, false_alarm: float = FALSE_ALARM) -> float:
    """Largest plausible ``|K - n_r (1 - 1/C)|`` for the number ``K`` of labels that differ
    from the clean ones, when ``n_r`` labels are replaced by labels drawn uniformly from
    ``C`` classes (Section 4.1): then ``K ~ Binomial(n_r, p)``, ``p = 1 - 1/C`` (a drawn
    label equals the clean one with probability 1/C). Bernstein's inequality,
    ``P(|K - n_r p| >= t) <= 2 exp(-t^2 / (2 (s^2 + t/3)))`` with ``s^2 = n_r p (1 - p)``,
    solved for the ``t`` where the right-hand side is ``false_alarm``:
    ``t = L/3 + sqrt(L^2/9 + 2 L s^2)``, ``L = ln(2 / false_alarm)``. About 6.5 standard
    deviations for large ``n_r``."""
    p = 1.0 - 1.0 / num_classes
    var = n_replaced * p * (1.0 - p)
    log_term = math.log(2.0 / false_alarm)
    return log_term / 3.0 + math.sqrt(log_term**2 / 9.0 + 2.0 * log_term * var)


def split_problems(
    train: ImageDataset, test: ImageDataset, train_path: str, test_path: str, val_size: int = 0
) -> list[str]:
    """The mismatches between a run's training and test files (and its ``val_size``)."""
    out = []
    for ds, path in ((train, train_path), (test, test_path)):
        if len(ds) == 0:
            out.append(f"{path} is empty (0 examples)")
    if not isinstance(val_size, (int, np.integer)) or isinstance(val_size, bool) or val_size < 0:
        out.append(f"val_size must be a whole number >= 0, got {val_size!r}")
    elif len(train) and val_size >= len(train):
        out.append(f"val_size {val_size} leaves no training examples: {train_path} has {len(train)} "
                   f"(val_size must be below that)")  # fmt: skip
    if test.num_classes != train.num_classes:
        out.append(f"{test_path} has {test.num_classes} classes but {train_path} has {train.num_classes}")
    elif test.classes != train.classes:
        k = next(i for i, (a, b) in enumerate(zip(test.classes, train.classes)) if a != b)
        how = "the same class names in another order" if sorted(test.classes) == sorted(train.classes) else \
            "other class names"  # fmt: skip
        out.append(f"{test_path} lists {how} than {train_path}: class {k} is {test.classes[k]!r} in "
                   f"{test_path} but {train.classes[k]!r} in {train_path} (label k must mean the same class "
                   f"in both)")  # fmt: skip
    (th, tw, tc), (h, w, c) = test.x.shape[1:], train.x.shape[1:]
    if (th, tw) != (h, w):
        out.append(f"{test_path} has {th}x{tw} images but {train_path} has {h}x{w}")
    if tc != c:
        out.append(f"{test_path} has {tc} channel(s) but {train_path} has {c}")
    return out  # dtypes: uint8 x and int64 y in every ImageDataset (load_dataset names a file that differs)


def noise_problems(
    noisy: NoisyLabels,
    train: ImageDataset,
    noise_path: str,
    train_path: str,
    fraction: float | None = None,
) -> list[str]:
    """The mismatches of a noisy-label file with its name, with the run's configured
    ``fraction`` (None: not checked) and with the training file it relabels."""
    out = []
    name = NOISE_NAME.match(Path(noise_path).name)
    if name:
        try:
            named = float(name["fraction"])
        except ValueError:
            named = None
        if named is None or fraction_name(named) != fraction_name(noisy.fraction):
            out.append(f"{noise_path} holds noise of fraction {noisy.fraction} but its name says "
                       f"{name['fraction']}")  # fmt: skip
        if int(name["seed"]) != noisy.seed:
            out.append(f"{noise_path} was made with seed {noisy.seed} but its name says seed {name['seed']}")
    if fraction is not None and fraction_name(fraction) != fraction_name(noisy.fraction):
        out.append(f"{noise_path} holds noise of fraction {noisy.fraction} but the run is configured "
                   f"for {fraction_name(fraction)}")  # fmt: skip
    try:  # one row per training example, the same classes, its clean labels the file's
        apply_noisy_labels(train, noisy, where=f"{noise_path} vs {train_path}")
    except DatasetFormatError as e:
        out.append(str(e))
        return out
    changed = int(np.count_nonzero(noisy.label != train.y))
    n_r, c = noisy.n_noisy, noisy.num_classes
    expected, bound = n_r * (1.0 - 1.0 / c), changed_labels_bound(n_r, c)
    if abs(changed - expected) > bound:
        out.append(f"{noise_path} changes {changed} of the {n_r} labels it marks replaced (fraction "
                   f"{noisy.fraction} of {len(train)}), but labels drawn uniformly from {c} classes change "
                   f"{expected:.1f} of them in expectation (beyond the {bound:.1f} allowed): not a file of "
                   f"uniform label noise")  # fmt: skip
    return out


def check_run_data(
    train: ImageDataset,
    test: ImageDataset,
    *,
    train_path: str | os.PathLike = "train",
    test_path: str | os.PathLike = "test",
    val_size: int = 0,
    noise: NoisyLabels | None = None,
    noise_path: str | os.PathLike = "noisy labels",
    noise_fraction: float | None = None,
) -> None:
    """Check that the data files of one run belong together (see the module docstring);
    raise :class:`DatasetFormatError` listing every mismatch, each naming its file(s).

    ``train`` and ``test`` are the loaded files (at ``train_path`` and ``test_path``, used
    in the messages), ``val_size`` the number of training examples held out for
    validation, ``noise`` a loaded noisy-label file (at ``noise_path``) and
    ``noise_fraction`` the fraction the run is configured for (None: not checked)."""
    train_path, test_path, noise_path = str(train_path), str(test_path), str(noise_path)
    problems = split_problems(train, test, train_path, test_path, val_size)
    if noise is not None:
        problems += noise_problems(noise, train, noise_path, train_path, noise_fraction)
    if len(problems) == 1:
        raise DatasetFormatError(problems[0])
    if problems:
        raise DatasetFormatError(f"{len(problems)} problems with the data of this run:\n"
                                 + "\n".join(f"- {p}" for p in problems))  # fmt: skip
