"""One experiment run from prepared files to a run directory: the glue that the
pipeline's scripts call (and that a user can call from Python).

``load_data`` reads the canonical train/test files, carves a fixed-seed validation split
out of the training set (5,000 examples in the paper, Supplement I.2) and puts every
split on the device, normalised with the training split's channel statistics.
``run`` trains, records Tr(F_i) (Section 3: Tr(F) when the training loss first falls
below epsilon), and writes metrics.csv, curvature.csv, summary.json and model.pt.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from .checkpoint import save_atomic
from .data import DeviceData, ImageDataset, channel_stats, load_dataset, split_validation
from .data.noise import apply_noisy_labels, load_noisy_labels
from .preemption import Preempted
from .report import trace_fisher_initial
from .runio import write_run
from .trainer import TrainConfig, TrainData, TrainResult, train


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when available, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def to_device(
    train: ImageDataset,
    val: ImageDataset | None,
    test: ImageDataset | None,
    *,
    augment: bool = False,
    device: str = "cpu",
) -> TrainData:
    """The splits on ``device``, all normalised with the training split's channel
    statistics; augmentation on the training split only."""
    mean, std = channel_stats(train)

    def put(ds, aug=False):
        return DeviceData(ds, device=device, mean=mean, std=std, augment=aug) if ds is not None else None

    return TrainData(put(train, augment), put(val), put(test))


def load_data(
    train_path: str | os.PathLike,
    test_path: str | os.PathLike,
    *,
    val_size: int,
    split_seed: int = 0,
    augment: bool = False,
    device: str = "cpu",
    noise_path: str | os.PathLike | None = None,
) -> TrainData:
    """Train / validation / test splits on ``device``: the validation split is carved out
    of the training file with a fixed seed (none when ``val_size`` is 0).

    With ``noise_path`` (a file of :mod:`fisherlab.data.noise`, checked against the
    training file) the training file's labels are replaced first, so the validation
    split is as noisy as the training split, and the training split gets the groups
    ``clean`` and ``noisy`` (Section 4.1)."""
    full = load_dataset(train_path)
    replaced = None
    if noise_path is not None:
        noisy = load_noisy_labels(noise_path)
        full = apply_noisy_labels(full, noisy, where=f"{noise_path} vs {train_path}")
        replaced = noisy.replaced
    train_idx, val_idx = split_validation(len(full), val_size, split_seed)
    val = full.subset(val_idx) if val_size else None
    data = to_device(full.subset(train_idx), val, load_dataset(test_path), augment=augment, device=device)
    if replaced is not None:
        mask = torch.as_tensor(replaced[train_idx], device=device)
        data.groups = {"clean": torch.nonzero(~mask).flatten(), "noisy": torch.nonzero(mask).flatten()}
    return data


def setting_config(
    setting: Mapping[str, Any],
    *,
    lr: float,
    regularizer: str = "none",
    regularizer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> TrainConfig:
    """The :class:`TrainConfig` of one run of a pipeline setting (an entry of config.yaml's
    ``settings``, or a resolved noisy setting): its recipe, plus the run's lr, regularizer
    and seed."""
    recipe = {k: setting[k] for k in ("model", "model_kwargs", "epochs", "batch_size", "momentum", "weight_decay",
                                      "milestones", "gamma", "fisher_examples", "fisher_every",
                                      "group_examples", "bn_update_batches") if k in setting}  # fmt: skip
    return TrainConfig(**recipe, lr=lr, regularizer=regularizer,
                       regularizer_kwargs=dict(regularizer_kwargs or {}), seed=seed, device=device)  # fmt: skip


def run(
    cfg: TrainConfig,
    data: TrainData,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    epsilon: float = math.nan,
    log=print,
    should_stop=None,
    **extra: Any,
) -> TrainResult:
    """Train (resuming from ``checkpoint``), then write the run's files under ``out_dir``:
    metrics.csv, curvature.csv, summary.json (with ``extra``, epsilon and Tr(F_i)) and
    model.pt (the final weights). The files appear only once training has ended.

    If ``should_stop`` (see :func:`fisherlab.trainer.train`) stops the run, its state is
    in ``checkpoint``, nothing is written to ``out_dir``, and :class:`Preempted` is raised."""
    result = train(cfg, data, checkpoint=checkpoint, log=log, should_stop=should_stop)
    if result.status == "preempted":
        raise Preempted(f"stopped on request at step {result.summary['steps']}; the state is in "
                        f"{checkpoint}, and running again resumes from it")  # fmt: skip
    fisher_i = trace_fisher_initial(pd.DataFrame(result.curvature), epsilon)
    save_atomic(result.model.state_dict(), Path(out_dir) / "model.pt")
    write_run(result, out_dir, epsilon=epsilon, trace_fisher_i=fisher_i, **extra)
    log(f"status {result.status}; Tr(F_i) at loss < {epsilon:g}: {fisher_i:.4g}")
    return result
