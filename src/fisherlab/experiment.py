"""One experiment run from prepared files to a run directory: the glue that the
pipeline's scripts call (and that a user can call from Python).

``load_data`` reads the canonical train/test files, carves a fixed-seed validation split
out of the training set (5,000 examples in the paper, Supplement I.2) and puts every
split on the device, normalised with the training split's channel statistics.
``run`` trains and writes metrics.csv, curvature.csv, summary.json and model.pt, holding
the run directory's lock (:mod:`fisherlab.runs.runlock`) and resuming only a checkpoint of the
same run identity (:mod:`fisherlab.runs.identity`).
``run_planned`` does both for one run of the pipeline's plan (:mod:`fisherlab.plan`).
Tr(H) of a finished run's weights, its model rebuilt from the same spec, is
:mod:`fisherlab.hessian`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

from .training.checkpoint import drop_checkpoint, move_aside, save_atomic
from .data import DeviceData, ImageDataset, channel_stats, check_run_data, load_dataset, split_validation
from .data.noise import apply_noisy_labels, load_noisy_labels
from .training.lean_torch import skip_dynamo_import
from .training.preemption import Preempted, StopFlag
from .plan import RunSpec, read_selection
from .runs.identity import code_digest, run_identity
from .runs.runio import code_version, write_run
from .runs.rundir import RunDir
from .runs.runlock import die_with_parent, run_lock
from .tracking import split_log
from .training.trainer import TrainConfig, TrainData, TrainResult, train


SNAPSHOTS = RunDir.SNAPSHOTS  # a run's kept weights: <run dir>/snapshots/{epoch<E>,best}.pt
TENSORBOARD = RunDir.TENSORBOARD  # a run's TensorBoard event files (config tensorboard: true)


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
    noise_fraction: float | None = None,
) -> TrainData:
    """Train / validation / test splits on ``device``: the validation split is carved out
    of the training file with a fixed seed (none when ``val_size`` is 0).

    With ``noise_path`` (a file of :mod:`fisherlab.data.noise`, checked against the
    training file) the training file's labels are replaced first, so the validation
    split is as noisy as the training split, and the training split gets the groups
    ``clean`` and ``noisy`` (Section 4.1).

    All files are read and checked against each other (:func:`fisherlab.data.check_run_data`:
    classes, image shape, non-empty splits, the noise file against its name,
    ``noise_fraction`` and the training file) before anything else: a mismatch is a
    ``DatasetFormatError`` naming the files, before any training."""
    full, test = load_dataset(train_path), load_dataset(test_path)
    noisy = load_noisy_labels(noise_path) if noise_path is not None else None
    check_run_data(full, test, train_path=train_path, test_path=test_path, val_size=val_size, noise=noisy,
                   noise_path=noise_path or "", noise_fraction=noise_fraction)  # fmt: skip
    replaced = None
    if noisy is not None:
        full = apply_noisy_labels(full, noisy, where=f"{noise_path} vs {train_path}")
        replaced = noisy.replaced
    train_idx, val_idx = split_validation(len(full), val_size, split_seed)
    val = full.subset(val_idx) if val_size else None
    data = to_device(full.subset(train_idx), val, test, augment=augment, device=device)
    if replaced is not None:
        mask = torch.as_tensor(replaced[train_idx], device=device)
        data.groups = {"clean": torch.nonzero(~mask).flatten(), "noisy": torch.nonzero(mask).flatten()}
    return data


def run(
    cfg: TrainConfig,
    data: TrainData,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    log=print,
    should_stop=None,
    tensorboard: bool = False,
    identity: dict[str, Any] | None = None,
    **fields: Any,
) -> TrainResult:
    """Train (resuming from ``checkpoint``), then write the run's files under ``out_dir``:
    metrics.csv, curvature.csv, summary.json (the trainer's summary, with ``fields``
    added: the run's labels) and model.pt (the final weights). The files appear only once
    training has ended, except the weights kept along the way (``cfg.keep_epochs``,
    ``cfg.keep_best``) in ``out_dir/snapshots`` (:func:`fisherlab.training.trainer.train`).

    If ``should_stop`` (see :func:`fisherlab.training.trainer.train`) stops the run, its state is
    in ``checkpoint``, nothing is written to ``out_dir``, and :class:`Preempted` is raised.

    ``log``: as :func:`fisherlab.training.trainer.train`'s (text lines, sinks, or a list). With
    ``tensorboard``, the rows also go to TensorBoard event files in
    ``out_dir/tensorboard`` as training goes (:class:`fisherlab.tracking.TensorBoardSink`).

    ``identity`` (:func:`fisherlab.runs.identity.run_identity`) goes into the checkpoint and
    summary.json: a checkpoint, or kept snapshots, of another identity are moved aside
    (``*.stale-<time>``, recorded in ``checkpoint_events``) and the run starts fresh.
    The run holds ``out_dir/train.lock`` while it trains (:func:`fisherlab.runs.runlock.run_lock`:
    :class:`fisherlab.runs.runlock.RunLocked` while another live trainer holds it)."""
    text, sinks = split_log(log)
    with run_lock(Path(RunDir(out_dir).lock), log=text):
        return _run_locked(cfg, data, out_dir, checkpoint, text, sinks, should_stop, tensorboard, identity, fields)


def _run_locked(cfg, data, out_dir, checkpoint, log, sinks, should_stop, tensorboard, identity, fields) -> TrainResult:
    run_dir = RunDir(out_dir)
    snapshots = Path(run_dir.snapshots) if cfg.keep_epochs or cfg.keep_best else None
    events = _claim_snapshots(run_dir, identity, log) if snapshots is not None and identity is not None else []
    if tensorboard:
        from .tracking.tensorboard_sink import TensorBoardSink

        sinks = [*sinks, TensorBoardSink(Path(run_dir.tensorboard))]
    try:
        result = train(cfg, data, checkpoint=checkpoint, log=[log, *sinks], should_stop=should_stop,
                       snapshots=snapshots, identity=identity)  # fmt: skip
    finally:
        if tensorboard:
            sinks[-1].close()
    result.summary["checkpoint_events"] = [*result.summary.get("checkpoint_events", []), *events]
    if identity is not None:
        result.summary["identity"] = identity
    if result.status == "preempted":
        raise Preempted(f"stopped on request at step {result.summary['steps']}; the state is in "
                        f"{checkpoint}, and running again resumes from it")  # fmt: skip
    save_atomic(result.model.state_dict(), Path(run_dir.model))
    write_run(result, out_dir, **fields)
    s = result.summary
    log(f"status {result.status}; Tr(F_i) at loss < {s['epsilon']}: {s['trace_fisher_i']:.4g} "
        f"({s['trace_fisher_i_status']}, step {s['crossing_step']:.1f})")  # fmt: skip
    return result


def _claim_snapshots(run_dir: RunDir, identity: dict[str, Any], log) -> list[dict[str, Any]]:
    """Make ``run_dir``'s snapshots folder (a run's kept weights) this identity's: a
    folder of another identity (or of none recorded) that holds weights is moved aside as
    ``snapshots.stale-<time>``; the identity's digest goes beside it, to
    ``snapshots.identity.json``."""
    folder, mark, events = Path(run_dir.snapshots), Path(run_dir.snapshots_identity), []
    if folder.is_dir():
        try:
            old = json.loads(mark.read_text()).get("digest")
        except (OSError, ValueError, AttributeError):
            old = None
        if old != identity["digest"] and any(folder.iterdir()):
            reason = "stale: weights kept by a run of another identity" if old else \
                "stale: weights kept by a run that recorded no identity"
            moved = move_aside(folder, reason, "stale")
            log(f"snapshots {folder} cannot be used: {reason}; moved to {moved}")
            events.append({"path": str(folder), "reason": reason, "moved_to": str(moved), "resumed_from": None})
    from .atomic import write_text_atomic

    write_text_atomic(mark, json.dumps({"digest": identity["digest"]}) + "\n")
    return events


def planned_identity(spec: RunSpec, cfg: TrainConfig, inputs: Mapping[str, str]) -> dict[str, Any]:
    """The identity of a planned run (:func:`fisherlab.runs.identity.run_identity`): its
    TrainConfig, its data options and the digest of every input file of its job."""
    return run_identity(cfg.to_dict(), spec.data, inputs)


def planned_data(spec: RunSpec, inputs: Mapping[str, str], device: str = "cpu") -> TrainData:
    """The splits of a planned run, from its input files (``train``, ``test``, ``noise``);
    a noise file is checked against the run's configured fraction (``label_noise``)."""
    return load_data(inputs["train"], inputs["test"], val_size=spec.data["val_size"],
                     augment=spec.data["augment"], device=device, noise_path=inputs.get("noise"),
                     noise_fraction=spec.fields.get("label_noise"))  # fmt: skip


def run_job(spec: Mapping[str, Any], inputs: Mapping[str, str], out_dir: str | os.PathLike, *,
            device: str = "auto", threads: int = 1, keep_checkpoint: bool = True) -> TrainResult:
    """The train rule's job (workflow/scripts/train.py): :func:`run_planned` of the run
    ``spec`` (:meth:`RunSpec.to_dict`) with ``threads`` CPU threads, stopped cleanly by
    SLURM's SIGTERM / SIGUSR1 before a time-out (the state saved, a non-zero exit, the
    retry resumes: :class:`~fisherlab.training.preemption.StopFlag`), and by SIGTERM when
    its Snakemake dies (:func:`~fisherlab.runs.runlock.die_with_parent`: no trainer left
    behind). The job never compiles, so it skips importing ``torch._dynamo`` (1.5 s of CPU
    per run: :func:`~fisherlab.training.lean_torch.skip_dynamo_import`). ``keep_checkpoint``
    false (config ``keep_checkpoints``): once the run's files are written, its checkpoint
    is deleted (a stopped run keeps it, to resume)."""
    torch.set_num_threads(threads)
    skip_dynamo_import()
    stop = StopFlag()
    die_with_parent()
    planned = RunSpec.from_dict(spec)
    result = run_planned(planned, inputs, device=device, out_dir=out_dir, should_stop=stop)
    if not keep_checkpoint:
        drop_checkpoint(planned.checkpoint)
    return result


def run_planned(
    spec: RunSpec,
    inputs: Mapping[str, str],
    *,
    device: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    log=print,
    should_stop=None,
) -> TrainResult:
    """One run of the pipeline's plan: its TrainConfig and labels resolved from the
    selection files among ``inputs`` (input name -> path, as the job sees them), its
    data loaded, trained with :func:`run` into ``out_dir`` (default: the spec's path)."""
    cfg, fields = spec.resolve(lambda name: read_selection(inputs[name]))
    cfg.device = resolve_device(device)
    identity = planned_identity(spec, cfg, inputs)
    data = planned_data(spec, inputs, cfg.device)
    return run(cfg, data, out_dir or spec.path, checkpoint=checkpoint or spec.checkpoint, log=log,
               should_stop=should_stop, tensorboard=spec.tensorboard, identity=identity,
               code_version=code_version(), code_digest=code_digest(), code_dir=str(Path(__file__).parent),
               **fields)  # fmt: skip
