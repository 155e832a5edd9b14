"""What each epoch's metrics row records about the model's accuracy, and over which
examples, at a small fraction of the epoch's training cost (Supplement I.2).

A forward pass over the 45,000 training images alone costs about a third of an epoch of
training, so an epoch evaluates:

- the whole validation split: ``val_loss``, ``val_acc`` (model selection, early stopping);
- a fixed subset of the training split, ``train_examples`` examples drawn once by
  ``numpy.random.default_rng(seed)`` and the same every epoch (never augmented):
  ``train_loss_subset``, ``train_acc_subset``; with groups (the clean and noisy
  examples of Section 4.1), ``train_acc_<g>_subset`` over the subset's members of group
  ``g`` and the group gradient statistics of :func:`fisherlab.training.memorization.group_metrics`
  (on their own fixed samples);
- the whole training split, ``train_loss``, ``train_acc`` and ``train_acc_<g>`` (Tables
  6-9: the final training accuracy, on clean and noisy examples): at the last epoch, and
  at every epoch when the subset is the whole split (``train_examples`` 0 or at least
  the split's size) or when ``train_every_epoch``;
- the test split, ``test_loss``, ``test_acc``: at the last epoch and at the epoch of the
  best validation accuracy (below), or at every epoch with ``test_every_epoch`` (the best
  test accuracy along the path of Figs. 2 and 7).

A row holds the values measured at its epoch and nothing else: a split that was not
evaluated has no key in it (no NaN standing for "not measured").

**The test accuracy at the best validation epoch, evaluated once.** When an epoch's
validation accuracy is strictly above every earlier epoch's (so the first epoch of the
maximum, as :func:`fisherlab.training.measures.best_epoch` picks it), the state the model was
evaluated with (its parameters, and its buffers: the BatchNorm statistics recalibrated
for evaluation included) is kept, replacing the one kept before. When the run ends,
:meth:`Evaluator.finish` evaluates the test split once with the kept state and writes
``test_loss`` and ``test_acc`` into that epoch's row: the numbers an evaluation at that
epoch gives (the same tensors through the same operations; tested for equality).

**Speed.** Evaluation runs without autograd, in batches of ``batch_size`` (default: 128
on the CPU, where larger batches leave the caches and cost up to 2x more per image;
1,024 on a GPU), channels-last on the CPU, with the loss summed on the device and one
host synchronisation per split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .batchnorm import recalibrated_batchnorm
from ..curvature import eval_mode
from ..data import DeviceData
from .memorization import group_metrics, group_samples

CPU_EVAL_BATCH = 128  # examples per evaluation batch on the CPU (cache-sized)
GPU_EVAL_BATCH = 1024  # and on a GPU

Kept = dict[str, Any]
"""The state kept for the deferred test evaluation: {"epoch", "val_acc", "state"}."""


def eval_batch_size(batch_size: int | None, device: str | torch.device) -> int:
    """``batch_size``, or the device's default when None (see the module docstring)."""
    if batch_size is not None:
        return batch_size
    return GPU_EVAL_BATCH if torch.device(device).type == "cuda" else CPU_EVAL_BATCH


def _batches(split: DeviceData, batch_size: int, indices: Tensor | None) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches, images channels-last on the CPU (oneDNN's convolutions take them
    without reordering: 10-28% less time for VGG-11 and SimpleCNN, measured)."""
    if indices is None:
        batches = split.eval_batches(batch_size)
    else:
        batches = (split.batch(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size))
    if split.device.type != "cpu":
        return batches
    return ((x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x, y) for x, y in batches)


@torch.no_grad()
def predictions(
    model: nn.Module,
    split: DeviceData,
    batch_size: int = CPU_EVAL_BATCH,
    *,
    indices: Tensor | None = None,
    state: Mapping[str, Tensor] | None = None,
) -> tuple[float, Tensor]:
    """(mean cross-entropy, per-example correctness as a bool tensor) over ``split``, or
    over its examples ``indices`` (in that order), in eval mode, never augmented.

    ``state``: evaluate with these parameters and buffers (a ``state_dict``) in place of
    the model's own, through ``torch.func.functional_call``; the model is not changed."""
    losses, correct = [], []
    with eval_mode(model):
        for x, y in _batches(split, batch_size, indices):
            logits = model(x) if state is None else functional_call(model, dict(state), (x,))
            losses.append(F.cross_entropy(logits, y, reduction="sum"))
            correct.append(logits.argmax(1) == y)
    n = len(split) if indices is None else len(indices)
    return torch.stack(losses).double().sum().item() / n, torch.cat(correct)


def train_subset(size: int, n: int, seed: int, device: str | torch.device = "cpu") -> Tensor | None:
    """The fixed subset of ``size`` of the ``n`` training examples (sorted indices, drawn
    without replacement by ``numpy.random.default_rng(seed)``); None for the whole split
    (``size`` 0 or at least ``n``)."""
    if size == 0 or size >= n:
        return None
    pick = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return torch.as_tensor(pick, dtype=torch.long, device=device)


def _accuracy(correct: Tensor) -> float:
    return correct.sum().item() / len(correct) if len(correct) else math.nan


class Evaluator:
    """The per-epoch evaluation of one run (module docstring). It holds the run's fixed
    examples (the training subset, each group's gradient sample), nothing that changes
    along the run: the kept state of the deferred test evaluation travels with the
    caller's state (and checkpoint).

    ``data``: the run's splits (``train``, ``val``, ``test``: :class:`DeviceData` or None;
    ``groups``: name -> training indices, or None), e.g. a :class:`fisherlab.training.trainer.TrainData`.
    BatchNorm statistics for evaluation come from ``bn_update_batches`` training batches
    of ``bn_batch_size`` (:func:`fisherlab.training.batchnorm.recalibrated_batchnorm`, seeded by
    (seed, epoch); 0: the running statistics)."""

    def __init__(
        self,
        data: Any,
        *,
        train_examples: int,
        group_examples: int,
        batch_size: int | None,
        bn_update_batches: int,
        bn_batch_size: int,
        seed: int,
        test_every_epoch: bool = False,
        train_every_epoch: bool = False,
    ) -> None:
        self.data = data
        train = data.train
        self.batch_size = eval_batch_size(batch_size, train.device)
        self.bn_update_batches, self.bn_batch_size, self.seed = bn_update_batches, bn_batch_size, seed
        self.test_every_epoch = test_every_epoch
        self.subset = train_subset(train_examples, len(train), seed + 5, train.device)
        self.train_every_epoch = train_every_epoch or self.subset is None
        groups = data.groups or {}
        if self.subset is None:
            self.subset_groups = dict(groups)
        else:  # a group's members among the subset, as positions within it
            self.subset_groups = {g: torch.nonzero(torch.isin(self.subset, idx)).flatten() for g, idx in groups.items()}
        picks = group_samples(groups, group_examples, seed + 4)
        self.samples = {name: train.batch(idx) for name, idx in picks.items()}

    def evaluate(self, model: nn.Module, epoch: int, *, last: bool, kept: Kept | None) -> tuple[dict, Kept | None]:
        """The values measured at the end of epoch ``epoch`` (1-based) and the state to
        keep for the deferred test evaluation (``kept``, or this epoch's when its
        validation accuracy beats it). ``last``: the run ends with this epoch."""
        data, row = self.data, {}
        seed = self.seed * 1_000_003 + epoch - 1  # BN recalibration batches: not the training RNG
        with recalibrated_batchnorm(model, data.train, self.bn_update_batches, self.bn_batch_size, seed):
            whole = None
            if self.train_every_epoch or last:
                loss, whole = predictions(model, data.train, self.batch_size)
                row.update(train_loss=loss, train_acc=_accuracy(whole))
            if self.subset is None:
                row.update(train_loss_subset=row["train_loss"], train_acc_subset=row["train_acc"])
                sub = whole
            else:
                loss, sub = predictions(model, data.train, self.batch_size, indices=self.subset)
                row.update(train_loss_subset=loss, train_acc_subset=_accuracy(sub))
            if data.val is not None:
                loss, correct = predictions(model, data.val, self.batch_size)
                row.update(val_loss=loss, val_acc=_accuracy(correct))
            if data.test is not None and (self.test_every_epoch or last):
                loss, correct = predictions(model, data.test, self.batch_size)
                row.update(test_loss=loss, test_acc=_accuracy(correct))
            if data.groups:
                stats = group_metrics(model, sub, self.subset_groups, self.samples)
                for name in data.groups:
                    stats[f"train_acc_{name}_subset"] = stats.pop(f"train_acc_{name}")
                    if whole is not None:
                        stats[f"train_acc_{name}"] = _accuracy(whole[data.groups[name]])
                row.update(stats)
            val = row.get("val_acc", math.nan)
            if math.isfinite(val) and (kept is None or val > kept["val_acc"]):
                # a new best validation epoch: keep what its test evaluation needs (nothing
                # when the test split was evaluated at this epoch)
                state = None if "test_acc" in row else {k: v.detach().clone() for k, v in model.state_dict().items()}
                kept = {"epoch": epoch, "val_acc": val, "state": state}
        return row, kept

    def finish(self, model: nn.Module, metrics: list[dict], kept: Kept | None) -> None:
        """At the end of a run: evaluate the test split with the kept state and write
        ``test_loss``/``test_acc`` into the row of its epoch, unless that row has them."""
        if kept is None or kept["state"] is None or self.data.test is None:
            return
        row = next(r for r in metrics if r["epoch"] == kept["epoch"])
        if "test_acc" not in row:
            loss, correct = predictions(model, self.data.test, self.batch_size, state=kept["state"])
            row.update(test_loss=loss, test_acc=_accuracy(correct))
