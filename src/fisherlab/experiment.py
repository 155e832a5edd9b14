"""One experiment run from prepared files to a run directory: the glue that the
pipeline's scripts call (and that a user can call from Python).

``load_data`` reads the canonical train/test files, carves a fixed-seed validation split
out of the training set (5,000 examples in the paper, Supplement I.2) and puts every
split on the device, normalised with the training split's channel statistics.
``run`` trains and writes metrics.csv, curvature.csv, summary.json and model.pt.
``run_planned`` does both for one run of the pipeline's plan (:mod:`fisherlab.plan`),
and ``trace_hessian_of_run`` measures Tr(H) of a finished run, its model rebuilt from
the same spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .checkpoint import save_atomic
from .data import DeviceData, ImageDataset, channel_stats, load_dataset, split_validation
from .data.noise import apply_noisy_labels, load_noisy_labels
from .preemption import Preempted
from .plan import RunSpec, read_selection
from .runio import code_version, json_safe, write_run
from .trainer import TrainConfig, TrainData, TrainResult, train


SNAPSHOTS = "snapshots"  # a run's kept weights: <run dir>/snapshots/{epoch<E>,best}.pt


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


def run(
    cfg: TrainConfig,
    data: TrainData,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    log=print,
    should_stop=None,
    **fields: Any,
) -> TrainResult:
    """Train (resuming from ``checkpoint``), then write the run's files under ``out_dir``:
    metrics.csv, curvature.csv, summary.json (the trainer's summary, with ``fields``
    added: the run's labels) and model.pt (the final weights). The files appear only once
    training has ended, except the weights kept along the way (``cfg.keep_epochs``,
    ``cfg.keep_best``) in ``out_dir/snapshots`` (:func:`fisherlab.trainer.train`).

    If ``should_stop`` (see :func:`fisherlab.trainer.train`) stops the run, its state is
    in ``checkpoint``, nothing is written to ``out_dir``, and :class:`Preempted` is raised."""
    snapshots = Path(out_dir) / SNAPSHOTS if cfg.keep_epochs or cfg.keep_best else None
    result = train(cfg, data, checkpoint=checkpoint, log=log, should_stop=should_stop, snapshots=snapshots)
    if result.status == "preempted":
        raise Preempted(f"stopped on request at step {result.summary['steps']}; the state is in "
                        f"{checkpoint}, and running again resumes from it")  # fmt: skip
    save_atomic(result.model.state_dict(), Path(out_dir) / "model.pt")
    write_run(result, out_dir, **fields)
    s = result.summary
    log(f"status {result.status}; Tr(F_i) at loss < {s['epsilon']}: {s['trace_fisher_i']:.4g} "
        f"({s['trace_fisher_i_status']}, step {s['crossing_step']:.1f})")  # fmt: skip
    return result


def planned_data(spec: RunSpec, inputs: Mapping[str, str], device: str = "cpu") -> TrainData:
    """The splits of a planned run, from its input files (``train``, ``test``, ``noise``)."""
    return load_data(inputs["train"], inputs["test"], val_size=spec.data["val_size"],
                     augment=spec.data["augment"], device=device, noise_path=inputs.get("noise"))  # fmt: skip


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
    data = planned_data(spec, inputs, cfg.device)
    return run(cfg, data, out_dir or spec.path, checkpoint=checkpoint or spec.checkpoint, log=log,
               should_stop=should_stop, code_version=code_version(), **fields)  # fmt: skip


def trace_hessian_of_weights(
    spec: RunSpec,
    inputs: Mapping[str, str],
    weights: Mapping[str, str | os.PathLike | None],
    *,
    probes: int = 30,
    examples: int = 1000,
    distribution: str = "rademacher",
    method: str = "hutchinson",
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Tr(H) (Hutchinson, Supplement B) of each weights file of a planned run (label ->
    state_dict path; None: not measured, NaN), on ``examples`` fixed training examples
    with their labels, the model rebuilt from the run's own spec (model and
    ``model_kwargs``). The data are loaded once; every file gets the same examples and
    the same probes, so values along a trajectory differ by the weights only."""
    from .curvature import trace_hessian
    from .models import build_model

    device = resolve_device(device)
    cfg, _ = spec.resolve(lambda name: read_selection(inputs[name]))
    data = planned_data(spec, inputs, device)
    model = build_model(cfg.model, num_classes=data.train.num_classes, **cfg.model_kwargs).to(device)
    n = min(examples, len(data.train))
    idx = np.sort(np.random.default_rng(0).choice(len(data.train), n, replace=False))
    x, y = data.train.batch(idx)
    out = {}
    for label, path in weights.items():
        est, err = float("nan"), float("nan")
        if path is not None:
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            est, err = trace_hessian(model, x, y, num_probes=probes, generator=0, distribution=distribution,
                                     method=method)  # fmt: skip
        out[label] = {"trace_hessian": est, "stderr": err, "probes": probes, "examples": n,
                      "distribution": distribution, "method": method}  # fmt: skip
    return out


def trace_hessian_of_run(
    spec: RunSpec,
    inputs: Mapping[str, str],
    model_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    *,
    probes: int = 30,
    examples: int = 1000,
    distribution: str = "rademacher",
    method: str = "hutchinson",
    device: str = "auto",
) -> dict[str, Any]:
    """Tr(H) of a finished run's weights ``model_path`` (:func:`trace_hessian_of_weights`).
    A diverged run gets NaN: its curvature means nothing."""
    summary = json.loads(Path(summary_path).read_text())
    ok = summary["status"] == "ok"
    out = trace_hessian_of_weights(spec, inputs, {"final": model_path if ok else None}, probes=probes,
                                   examples=examples, distribution=distribution, method=method,
                                   device=device)["final"]  # fmt: skip
    return json_safe({**out, "status": summary["status"]})


def trace_hessian_of_snapshots(
    spec: RunSpec,
    inputs: Mapping[str, str],
    run_dir: str | os.PathLike,
    *,
    probes: int = 30,
    examples: int = 1000,
    distribution: str = "rademacher",
    method: str = "hutchinson",
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Tr(H) along training (Section 5, Supplement I.4, Fig. 14): one row per weights
    file the run kept in ``run_dir/snapshots`` (:func:`run`), ``epoch<E>.pt`` for each E
    of its ``keep_epochs`` and ``best.pt`` (``keep_best``: Tr(H_f) at the best-test-accuracy
    epoch, Fig. 6). Rows: snapshot, epoch, trace_hessian, stderr, probes, examples,
    distribution, status ("ok", or "missing" when the run never reached that epoch,
    e.g. it diverged before)."""
    cfg, _ = spec.resolve(lambda name: read_selection(inputs[name]))
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    kept = {f"epoch{e}": e for e in sorted(set(cfg.keep_epochs))}
    if cfg.keep_best:
        kept["best"] = summary.get("kept_best_epoch")
    files = {k: Path(run_dir) / SNAPSHOTS / f"{k}.pt" for k in kept}
    found = {k: (p if p.exists() else None) for k, p in files.items()}
    values = trace_hessian_of_weights(spec, inputs, found, probes=probes, examples=examples,
                                      distribution=distribution, method=method, device=device)  # fmt: skip
    return [json_safe({"snapshot": k, "epoch": kept[k], **values[k], "status": "ok" if found[k] else "missing"})
            for k in kept]  # fmt: skip
