"""One training loop for every experiment of the paper (Sections 3-4, Supplement I).

SGD with momentum and weight decay, a multi-step lr schedule, any regularizer of
:mod:`fisherlab.penalties`, evaluation each epoch (loss and accuracy on the validation
split, a fixed training subset, and the whole training and test splits where needed:
:mod:`fisherlab.evaluation`), and Tr(F), Tr(F_B) on a fixed, seeded set of N training
examples every K steps (every K_early steps until the training loss first falls below
epsilon: Tr(F_i), :mod:`fisherlab.measures`) and at the end of each epoch; with
``until="crossing"`` the run ends at that crossing. Seconds per epoch (``seconds``) count training only; the
Tr(F) measurements and the evaluation of the epoch are timed apart (``eval_seconds``).

With a ``checkpoint`` path the loop saves its whole state there at the end of each
epoch (atomically) and, when started again, resumes from it; on the CPU a resumed run
gives exactly the metrics of an uninterrupted one. A non-finite loss ends the run with
status ``diverged``; no exception leaves the loop for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import CheckpointMismatch, load_checkpoint, save_atomic, save_checkpoint
from .curvature import trace_fisher, trace_fisher_batch
from .data import DeviceData
from .evaluation import Evaluator
from .measures import best_epoch, crossed, crossing, max_trace_fisher
from .models import build_model
from .penalties import build_regularizer
from .schedule import multistep_lr
from .train_config import TrainConfig


@dataclass
class TrainData:
    """The splits, each held whole on the training device. ``groups`` optionally names
    subsets of the training split (indices), e.g. the clean and the noisy examples of
    Section 4.1, whose statistics (:mod:`fisherlab.memorization`) join each epoch's row."""

    train: DeviceData
    val: DeviceData | None = None
    test: DeviceData | None = None
    groups: dict[str, Tensor] | None = None


@dataclass
class TrainResult:
    status: str  # "ok", "diverged", or "preempted" (stopped by should_stop; resumable)
    metrics: list[dict[str, float]]  # one row per epoch
    curvature: list[dict[str, float]]  # one row per measurement
    summary: dict[str, Any]
    model: nn.Module


@dataclass
class _State:
    """Everything a checkpoint holds, besides the config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    regularizer: Any
    data_rng: torch.Generator
    steps_per_epoch: int
    epoch: int = 0  # completed epochs
    step: int = 0
    status: str = "running"
    message: str = ""
    metrics: list[dict] = field(default_factory=list)
    curvature: list[dict] = field(default_factory=list)
    partial: dict | None = None  # an epoch stopped midway: order, position, losses, seconds
    stops: list = field(default_factory=list)  # steps at which a stop request saved the state
    crossed: bool = False  # the running training loss has been below epsilon (derived from curvature)
    checkpoint_events: list = field(default_factory=list)  # unusable checkpoints moved aside (fisherlab.checkpoint)
    best: dict | None = None  # keep_best: {"epoch", "value", "model"} of the best epoch so far
    val_best: dict | None = None  # the best validation epoch's state for its test evaluation (fisherlab.evaluation)


def train(
    cfg: TrainConfig,
    data: TrainData,
    checkpoint: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    should_stop: Callable[[], bool] | None = None,
    snapshots: str | Path | None = None,
) -> TrainResult:
    """Train one run (see the module docstring); resume from ``checkpoint`` if it exists.

    ``snapshots``: the folder of the weights kept along the way (Section 5, Supplement
    I.4): ``epoch<E>.pt`` at the end of each epoch E of ``cfg.keep_epochs`` (0: the
    initial weights), and ``best.pt``, the weights of the epoch with the best
    ``cfg.keep_best`` accuracy (the first on ties), written when the run ends.

    ``should_stop`` is polled after every step (e.g. a :class:`fisherlab.preemption.StopFlag`
    set by SLURM's signal before a time-out): when it returns True, the state, the
    position within the epoch included, is saved to ``checkpoint`` and the run returns
    with status ``preempted``; calling ``train`` again continues exactly there."""
    st = _restore(cfg, data, checkpoint, log)
    probe = _measurement_set(cfg, data.train)  # step -> the examples Tr(F) is measured on
    evaluator = _evaluator(cfg, data)
    if not st.curvature:
        st.curvature.append(_measure(cfg, st, probe, [], []))
        _keep_epoch(cfg, st, snapshots)
    while st.status == "running" and st.epoch < cfg.epochs:
        _set_lr(st.optimizer, multistep_lr(cfg.lr, st.epoch, cfg.milestones, cfg.gamma))
        seconds, losses, measure_s = _train_epoch(cfg, st, data, probe, should_stop)
        if st.partial is not None:  # stopped within the epoch
            st.stops.append(st.step)
            if checkpoint is not None:
                save_checkpoint(_state_dict(cfg, st), checkpoint)
            log(f"stop requested: state saved at step {st.step} (epoch {st.epoch + 1}) to {checkpoint}")
            return TrainResult("preempted", st.metrics, st.curvature, summarize(cfg, st), st.model)
        if st.status == "running":
            st.metrics.append(_epoch_row(cfg, st, evaluator, seconds, measure_s, losses))
            log(_format_row(st.metrics[-1]))
            _track_best(cfg, st)
        st.epoch += 1
        if st.status == "running" and (st.epoch == cfg.epochs or (cfg.until == "crossing" and st.crossed)):
            st.status = "ok"
        if st.status != "running":  # the run ends: the test split at the best validation epoch
            evaluator.finish(st.model, st.metrics, st.val_best)
            st.val_best = None
        _keep_epoch(cfg, st, snapshots)
        if checkpoint is not None:
            save_checkpoint(_state_dict(cfg, st), checkpoint)
        if st.status == "running" and should_stop is not None and should_stop():
            st.stops.append(st.step)
            if checkpoint is not None:
                save_checkpoint(_state_dict(cfg, st), checkpoint)
            log(f"stop requested: state saved after epoch {st.epoch} to {checkpoint}")
            return TrainResult("preempted", st.metrics, st.curvature, summarize(cfg, st), st.model)
    if snapshots is not None and st.best is not None:
        save_atomic(st.best["model"], Path(snapshots) / "best.pt")
    return TrainResult(st.status, st.metrics, st.curvature, summarize(cfg, st), st.model)


def _keep_epoch(cfg: TrainConfig, st: _State, snapshots: str | Path | None) -> None:
    """Save the weights as ``snapshots/epoch<E>.pt`` when E = ``st.epoch`` (completed
    epochs) is one of ``cfg.keep_epochs``; a diverged model's weights are not kept."""
    if snapshots is not None and st.epoch in cfg.keep_epochs and st.status != "diverged":
        save_atomic(st.model.state_dict(), Path(snapshots) / f"epoch{st.epoch}.pt")


def _track_best(cfg: TrainConfig, st: _State) -> None:
    """keep_best: remember (a copy of) the weights when the newest epoch row's accuracy
    is strictly above the best so far (the first best epoch on ties, as
    :func:`fisherlab.measures.best_epoch`); non-finite values (not evaluated) never win."""
    if cfg.keep_best is None:
        return
    row = st.metrics[-1]
    value = row.get(cfg.keep_best, math.nan)
    if math.isfinite(value) and (st.best is None or value > st.best["value"]):
        weights = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
        st.best = {"epoch": row["epoch"], "value": value, "model": weights}


def _train_epoch(cfg: TrainConfig, st: _State, data: TrainData, probe: Callable[[int], Tensor], should_stop=None):
    """One pass over the training set (or the rest of it, after a stop); returns
    (training seconds, per-step losses, Tr(F) measurement seconds). When
    ``should_stop()`` turns True it leaves the epoch's position in ``st.partial`` and
    returns early."""
    model, device = st.model.train(), torch.device(cfg.device)
    part = st.partial or {"order": data.train.epoch_order(st.data_rng), "position": 0,
                          "losses": [], "window": [], "acc_window": [], "seconds": 0.0}  # fmt: skip
    st.partial = None
    as_tensors = lambda xs: [torch.tensor(v, device=device) for v in xs]  # noqa: E731
    losses, window, measure_s = as_tensors(part["losses"]), as_tensors(part["window"]), 0.0
    acc_window = as_tensors(part.get("acc_window", []))  # mini-batch accuracies since the last measurement
    _sync(device)
    start = time.perf_counter()
    batches = data.train.batches(cfg.batch_size, st.data_rng, order=part["order"], start=part["position"])
    for position, (x, y) in enumerate(batches, start=part["position"] + 1):
        st.optimizer.zero_grad(set_to_none=True)
        try:
            out = st.regularizer.backward(model, x, y, step=st.step, epoch=st.epoch)
        except FloatingPointError as e:  # e.g. FP cannot sample labels from non-finite logits
            _diverge(st, f"{e} at step {st.step}")
            break
        st.optimizer.step()
        st.step += 1
        losses.append(out.loss)
        window.append(out.loss)
        acc_window.append((out.logits.argmax(1) == y).float().mean())
        if st.step % cfg.divergence_check_every == 0 and _diverged(st, losses):
            break
        every = cfg.fisher_every_early if cfg.fisher_every_early and not st.crossed else cfg.fisher_every
        if every and st.step % every == 0:
            if _diverged(st, losses):
                break
            measure_s += _timed(device, lambda: _measure_into(cfg, st, probe, window, acc_window))
            if st.status == "diverged":
                break
            window, acc_window = [], []
            st.crossed = st.crossed or crossed(st.curvature[-1:], cfg.epsilon)
            if st.crossed and cfg.until == "crossing":
                break
        if should_stop is not None and should_stop() and position * cfg.batch_size < len(data.train):
            st.partial = {"order": part["order"], "position": position, "losses": [v.item() for v in losses],
                          "window": [v.item() for v in window], "acc_window": [v.item() for v in acc_window],
                          "seconds": part["seconds"]}  # fmt: skip
            break
    _sync(device)
    seconds = time.perf_counter() - start - measure_s + part["seconds"]
    measure_s += part.get("measure_seconds", 0.0)
    if st.partial is not None:
        st.partial.update(seconds=seconds, measure_seconds=measure_s)
        return seconds, losses, measure_s
    if cfg.fisher_epoch_end and not _diverged(st, losses) and st.curvature[-1]["step"] != st.step:
        measure_s += _timed(device, lambda: _measure_into(cfg, st, probe, window, acc_window))
    return seconds, losses, measure_s


def _diverged(st: _State, losses: list[Tensor]) -> bool:
    """Check (with one device sync) that the losses and the parameters are finite."""
    if st.status != "running":
        return st.status == "diverged"
    finite = torch.stack([torch.stack(losses).sum()] + [p.sum() for p in st.model.parameters()])
    if not torch.isfinite(finite).all():
        st.status = "diverged"
        st.message = f"non-finite training loss or parameters by step {st.step} (epoch {st.epoch + 1})"
    return st.status == "diverged"


def _diverge(st: _State, message: str) -> None:
    st.status, st.message = "diverged", message


def _measure_into(cfg: TrainConfig, st: _State, probe, window: list[Tensor], acc_window: list[Tensor]) -> None:
    """Append a measurement to ``st.curvature``; a model whose outputs are no longer
    finite (its parameters may still be) has diverged."""
    try:
        st.curvature.append(_measure(cfg, st, probe, window, acc_window))
    except FloatingPointError as e:
        _diverge(st, f"{e}, when measuring Tr(F) at step {st.step} (epoch {st.epoch + 1})")


def _measure(cfg: TrainConfig, st: _State, probe, window: list[Tensor], acc_window: list[Tensor]) -> dict:
    """Tr(F) (Eq. 2) and Tr(F_B) (Supplement C) on the measurement examples; labels are
    drawn from a generator seeded by (seed, step), never from the training RNG. With the
    mean training loss and mini-batch accuracy since the previous measurement."""
    seed = cfg.seed * 1_000_003 + st.step
    x = probe(st.step)
    return {
        "step": st.step,
        "epoch": st.step / st.steps_per_epoch,
        "trace_fisher": trace_fisher(st.model, x, generator=seed, chunk_size=cfg.fisher_chunk),
        "trace_fisher_batch": trace_fisher_batch(
            st.model, x, batch_size=cfg.fisher_batch_size or cfg.batch_size, generator=seed
        ),
        "train_loss_running": torch.stack(window).mean().item() if window else float("nan"),
        "train_acc_running": torch.stack(acc_window).mean().item() if acc_window else float("nan"),
    }


# --------------------------------------------------------------------------- helpers


def _fresh(cfg: TrainConfig, data: TrainData, init: bool = True) -> _State:
    """A new run's state. With ``cfg.init_weights`` (and ``init``) the model starts from
    that state_dict instead of its seeded initialisation (Section 5's phase 2); the data
    order, the regularizer's and the measurements' randomness still follow ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.train.num_classes, **cfg.model_kwargs)
    if init and cfg.init_weights is not None:
        model.load_state_dict(torch.load(cfg.init_weights, map_location="cpu", weights_only=True))
    model = model.to(cfg.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    reg = build_regularizer(cfg.regularizer, seed=cfg.seed + 1, **cfg.regularizer_kwargs)
    rng = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 2)
    return _State(model, optimizer, reg, rng, math.ceil(len(data.train) / cfg.batch_size))


def _state_dict(cfg: TrainConfig, st: _State) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "model": st.model.state_dict(),
        "optimizer": st.optimizer.state_dict(),
        "regularizer": st.regularizer.state_dict(),
        "data_rng": st.data_rng.get_state(),
        "progress": {k: getattr(st, k) for k in ("epoch", "step", "status", "message")},
        "metrics": st.metrics,
        "curvature": st.curvature,
        "partial": st.partial,
        "stops": st.stops,
        "checkpoint_events": st.checkpoint_events,
        "best": st.best,
        "val_best": st.val_best,
    }


def _restore(cfg: TrainConfig, data: TrainData, path: str | Path | None, log: Callable[[str], None]) -> _State:
    """The state saved at ``path`` (or its previous generation), else a fresh one. An
    unusable checkpoint (unreadable, or of another configuration) is moved aside, logged
    and recorded in ``checkpoint_events`` (:func:`fisherlab.checkpoint.load_checkpoint`)."""
    if path is None:
        return _fresh(cfg, data)
    loaded = load_checkpoint(path, lambda ckpt: _restore_state(cfg, data, ckpt), map_location=cfg.device, log=log)
    st = loaded.value if loaded.value is not None else _fresh(cfg, data)
    st.checkpoint_events = [*st.checkpoint_events, *loaded.events]
    return st


def _restore_state(cfg: TrainConfig, data: TrainData, ckpt: dict) -> _State:
    """A :class:`_State` from a loaded checkpoint; :class:`CheckpointMismatch` if it lacks
    a key or belongs to another configuration."""
    missing = [k for k in ("config", "model", "optimizer", "regularizer", "data_rng", "progress", "metrics",
                           "curvature") if k not in ckpt]  # fmt: skip
    if missing:
        raise CheckpointMismatch(f"missing keys {missing} (written by another code version?)")
    defaults, now = TrainConfig().to_dict(), cfg.to_dict()
    # a key the checkpoint lacks was added to TrainConfig later: fine at its default
    changed = sorted(k for k in now if ckpt["config"].get(k, defaults[k]) != now[k])
    changed += sorted(k for k in ckpt["config"] if k not in now)
    if changed:
        raise CheckpointMismatch(f"belongs to another configuration (differs in {changed})")
    st = _fresh(cfg, data, init=False)  # the checkpoint's weights replace any initial ones
    st.model.load_state_dict(ckpt["model"])
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.regularizer.load_state_dict(ckpt["regularizer"])
    st.data_rng.set_state(ckpt["data_rng"].cpu())
    for k, v in ckpt["progress"].items():
        setattr(st, k, v)
    st.metrics, st.curvature = ckpt["metrics"], ckpt["curvature"]
    st.crossed = crossed(st.curvature, cfg.epsilon)
    st.partial, st.stops = ckpt.get("partial"), ckpt.get("stops", [])
    st.checkpoint_events = ckpt.get("checkpoint_events", [])
    st.best = ckpt.get("best")
    st.val_best = ckpt.get("val_best")
    if st.partial is not None:
        st.partial["order"] = st.partial["order"].to(cfg.device)
    return st


def _measurement_set(cfg: TrainConfig, train: DeviceData) -> Callable[[int], Tensor]:
    """step -> the N training examples Tr(F) is measured on, normalised, never augmented:
    fixed by the seed, or with ``fisher_resample`` drawn afresh at each measurement
    (seeded by the step; Supplement D measures Tr(F) at every iteration on 128 random
    examples)."""
    n = min(cfg.fisher_examples, len(train))

    def draw(seed: int) -> Tensor:
        return train.batch(np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False)))[0]

    if cfg.fisher_resample:
        return lambda step: draw([cfg.seed + 3, step])
    fixed = draw(cfg.seed + 3)
    return lambda step: fixed


def _evaluator(cfg: TrainConfig, data: TrainData) -> Evaluator:
    """The run's per-epoch evaluation (:mod:`fisherlab.evaluation`); a split whose
    accuracy ``keep_best`` follows is evaluated whole at every epoch."""
    return Evaluator(
        data, train_examples=cfg.train_eval_examples, group_examples=cfg.group_examples,
        batch_size=cfg.eval_batch_size, bn_update_batches=cfg.bn_update_batches, bn_batch_size=cfg.batch_size,
        seed=cfg.seed, test_every_epoch=cfg.test_every_epoch or cfg.keep_best == "test_acc",
        train_every_epoch=cfg.keep_best == "train_acc",
    )  # fmt: skip


def _epoch_row(cfg, st: _State, evaluator: Evaluator, seconds: float, measure_s: float, losses: list[Tensor]) -> dict:
    """The epoch's metrics row: its evaluation, the mean training loss, the Tr(F) at its end,
    and the seconds of training (``seconds``) and of everything else (``eval_seconds``:
    the epoch's Tr(F) measurements and its evaluation)."""
    t0 = time.perf_counter()
    last = st.epoch + 1 == cfg.epochs or (cfg.until == "crossing" and st.crossed)
    measured, st.val_best = evaluator.evaluate(st.model, st.epoch + 1, last=last, kept=st.val_best)
    row = {"epoch": st.epoch + 1, "step": st.step, "lr": st.optimizer.param_groups[0]["lr"], **measured}
    row["train_loss_running"] = torch.stack(losses).mean().item()
    at_end = st.curvature[-1]["step"] == st.step  # else measured mid-epoch only (fisher_epoch_end off)
    row["trace_fisher"] = st.curvature[-1]["trace_fisher"] if at_end else math.nan
    row["seconds"] = seconds
    row["eval_seconds"] = time.perf_counter() - t0 + measure_s
    return row


def summarize(cfg: TrainConfig, st: _State) -> dict[str, Any]:
    """The run's summary: status, final and best accuracies, max Tr(F), seconds/epoch."""
    last = st.metrics[-1] if st.metrics else {}
    best = best_epoch(st.metrics)
    fisher_i = crossing(st.curvature, cfg.epsilon)
    return {
        "status": st.status,
        "message": st.message,
        "epochs_completed": len(st.metrics),
        "steps": st.step,
        **{f"final_{k}": last.get(k, math.nan) for k in
           ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss")},
        **{f"final_{k}": v for k, v in last.items() if k.startswith("train_acc_") and not k.endswith("_subset")},
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val_acc", math.nan),
        "test_acc_at_best_val": best.get("test_acc", math.nan),
        "best_test_acc": _max_along_path(st.metrics, "test_acc"),  # Figs. 2, 7 (test_every_epoch)
        "best_train_acc": _max_along_path(st.metrics, "train_acc"),  # Figs. 8, 9 (train_eval_examples: 0)
        "best_train_acc_subset": _max_along_path(st.metrics, "train_acc_subset"),  # its estimate on the subset
        "max_trace_fisher": max_trace_fisher(st.curvature),
        "kept_best_epoch": st.best["epoch"] if st.best else None,  # keep_best: the epoch of snapshots/best.pt
        "kept_best_value": st.best["value"] if st.best else math.nan,  # and its keep_best accuracy
        "epsilon": cfg.epsilon,
        "trace_fisher_i": fisher_i.trace_fisher_i,  # Tr(F_i), Section 3 (fisherlab.measures)
        "trace_fisher_i_status": fisher_i.status,
        "crossing_step": fisher_i.step,
        "crossing_epoch": fisher_i.epoch,
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in st.metrics])) if st.metrics else math.nan,
        "stopped_at_steps": list(st.stops),  # preemptions / time-outs survived (resumed from there)
        "checkpoint_events": list(st.checkpoint_events),  # unusable checkpoints moved aside, and what was resumed
        "seed": cfg.seed,
        "config": cfg.to_dict(),
    }  # fmt: skip


def _max_along_path(metrics: list[dict], key: str) -> float:
    """The maximum of ``key`` over the epochs, NaN unless it was measured at every epoch
    (:mod:`fisherlab.evaluation` evaluates some splits only at some epochs)."""
    values = [r.get(key, math.nan) for r in metrics]
    return max(values) if values and all(math.isfinite(v) for v in values) else math.nan


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _format_row(row: dict) -> str:
    whole = "" if "train_acc" not in row else f"  whole train {row['train_acc']:.3f}"
    test = "" if "test_acc" not in row else f"  test {row['test_acc']:.3f}"
    return (
        f"epoch {row['epoch']:3d}  lr {row['lr']:.4g}  train {row['train_loss_subset']:.4f}/"
        f"{row['train_acc_subset']:.3f}{whole}  val {row.get('val_acc', math.nan):.3f}{test}  "
        f"Tr(F) {row['trace_fisher']:.4g}  {row['seconds']:.1f}s + {row['eval_seconds']:.1f}s"
    )
