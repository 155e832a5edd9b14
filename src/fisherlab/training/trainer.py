"""One training loop for every experiment of the paper (Sections 3-4, Supplement I).

SGD with momentum and weight decay, a multi-step lr schedule, any regularizer of
:mod:`fisherlab.penalties`, evaluation each epoch (loss and accuracy on the validation
split, a fixed training subset, and the whole training and test splits where needed:
:mod:`fisherlab.training.evaluation`), and Tr(F), Tr(F_B) on a fixed, seeded set of N training
examples every K steps (every K_early steps until the training loss first falls below
epsilon: Tr(F_i), :mod:`fisherlab.training.measures`) and at the end of each epoch; with
``until="crossing"`` the run ends at that crossing. Seconds per epoch (``seconds``) count training only; the
Tr(F) measurements and the evaluation of the epoch are timed apart (``eval_seconds``).

With a ``checkpoint`` path the loop saves its whole state there at the end of each
epoch (atomically) and, when started again, resumes from it; on the CPU a resumed run
gives exactly the metrics of an uninterrupted one. A non-finite loss ends the run with
status ``diverged``; no exception leaves the loop for it.

The loop reads top down in :class:`_Run`: :meth:`~_Run.train` is the epoch loop,
:meth:`~_Run.train_epoch` the step loop, :meth:`~_Run.step` one optimizer step with its
checks and measurement; :meth:`~_Run.end_epoch` records a finished epoch,
:meth:`~_Run.preempt` is the one exit on a stop request and :meth:`~_Run.save` the one
checkpoint write. The state a checkpoint holds (:class:`_State`) is grouped into where
the run stands, what it has recorded and what it keeps for its end; the seeds of its
random streams are named in :class:`RngStreams`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import CheckpointMismatch, StaleCheckpoint, load_checkpoint, save_atomic, save_checkpoint
from ..curvature import trace_fisher, trace_fisher_batch
from ..data import DeviceData
from .evaluation import Evaluator
from .measures import best_epoch, crossed, crossing, max_trace_fisher
from ..models import build_model
from ..penalties import build_regularizer
from ..runs.rundir import RunDir
from .schedule import multistep_lr
from .progress import StepProgress
from ..tracking import LogTarget, RowEmitter, split_log
from .train_config import TrainConfig


@dataclass
class TrainData:
    """The splits, each held whole on the training device. ``groups`` optionally names
    subsets of the training split (indices), e.g. the clean and the noisy examples of
    Section 4.1, whose statistics (:mod:`fisherlab.training.memorization`) join each epoch's row."""

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


def train(
    cfg: TrainConfig,
    data: TrainData,
    checkpoint: str | Path | None = None,
    log: LogTarget | list[LogTarget] | None = None,
    should_stop: Callable[[], bool] | None = None,
    snapshots: str | Path | None = None,
    progress: bool | None = None,
    identity: dict | None = None,
) -> TrainResult:
    """Train one run (see the module docstring); resume from ``checkpoint`` if it exists.

    ``identity`` (:func:`fisherlab.runs.identity.run_identity`: the data, options and input
    files besides ``cfg``) is saved with each checkpoint; a checkpoint of another identity
    is not resumed but moved aside as ``*.stale-<time>`` (:class:`StaleCheckpoint`).

    ``snapshots``: the folder of the weights kept along the way (Section 5, Supplement
    I.4): ``epoch<E>.pt`` at the end of each epoch E of ``cfg.keep_epochs`` (0: the
    initial weights), and ``best.pt``, the weights of the epoch with the best
    ``cfg.keep_best`` accuracy (the first on ties), written when the run ends.

    ``should_stop`` is polled after every step (e.g. a :class:`fisherlab.training.preemption.StopFlag`
    set by SLURM's signal before a time-out): when it returns True, the state, the
    position within the epoch included, is saved to ``checkpoint`` and the run returns
    with status ``preempted``; calling ``train`` again continues exactly there.

    ``log``: a function receiving one text line per epoch (and notices), a
    :class:`fisherlab.tracking.Sink` receiving every metrics and curvature row as numbers
    (TensorBoard, W&B, MLflow), or a list of them.

    ``progress``: a per-step bar with the ETA on stderr (:mod:`fisherlab.training.progress`); None
    (default) shows it when stderr is a terminal."""
    log, sinks = split_log(log)
    st = _restore(cfg, data, checkpoint, log, identity)
    emit = RowEmitter(sinks, st.history.metrics, st.history.curvature)  # the rows appended from here on go to the sinks
    bar = StepProgress(cfg.epochs * _steps_per_epoch(cfg, data), st.progress.step, enabled=progress)
    try:
        return _Run(cfg, data, st, checkpoint, snapshots, should_stop, bar.wrap(log), emit, bar).train()
    finally:
        bar.close()


@dataclass(frozen=True)
class RngStreams:
    """The run's random streams. Each is seeded from ``cfg.seed`` alone, so that none
    perturbs another: measuring Tr(F) or evaluating never changes the training
    trajectory (``test_measurement_does_not_perturb_training``), and a resumed run
    replays each stream exactly (the data order's generator is saved in checkpoints).

    ======================  ===========================  ====================================
    stream                  its seed                     what it drives
    ======================  ===========================  ====================================
    ``MODEL_INIT``          seed                         torch's global RNG as the model is
                                                         built: its initial weights
    ``REGULARIZER``         seed + 1                     the regularizer's generator (FP's
                                                         sampled labels, mixup's mixing...)
    ``DATA_ORDER``          seed + 2                     each epoch's order and augmentation
    ``MEASUREMENT_SET``     seed + 3, or [seed + 3,      the N training examples Tr(F) is
                            step] with fisher_resample   measured on
    (evaluation)            seed + 4, seed + 5           :mod:`fisherlab.training.evaluation`: the
                                                         groups' examples, the training subset
    measurement labels      seed * STEP_STRIDE + step    the labels Tr(F) and Tr(F_B) sample
                                                         at a step (Eq. 2, Supplement C)
    ======================  ===========================  ====================================

    (:mod:`fisherlab.training.evaluation` also seeds its BatchNorm recalibration batches by
    ``seed * STEP_STRIDE + epoch - 1``.)"""

    seed: int

    MODEL_INIT: ClassVar[int] = 0
    REGULARIZER: ClassVar[int] = 1
    DATA_ORDER: ClassVar[int] = 2
    MEASUREMENT_SET: ClassVar[int] = 3
    STEP_STRIDE: ClassVar[int] = 1_000_003  # per-step seeds: seed * STEP_STRIDE + step

    @property
    def model_init(self) -> int:
        return self.seed + self.MODEL_INIT

    @property
    def regularizer(self) -> int:
        return self.seed + self.REGULARIZER

    def data_order(self, device: str | torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed + self.DATA_ORDER)

    def measurement_set(self, step: int | None = None) -> int | list[int]:
        """The fixed set's seed, or with ``step`` the seed of the set drawn at that step."""
        return self.seed + self.MEASUREMENT_SET if step is None else [self.seed + self.MEASUREMENT_SET, step]

    def measurement_labels(self, step: int) -> int:
        return self.seed * self.STEP_STRIDE + step


# --------------------------------------------------------------------------- the state


@dataclass
class _Progress:
    """Where a run stands: saved as the checkpoint's ``progress`` (all but ``crossed``)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps
    status: str = "running"  # then "ok" or "diverged"
    message: str = ""  # why it diverged
    crossed: bool = False  # the running training loss has been below epsilon (derived from the curvature rows)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def diverge(self, message: str) -> None:
        self.status, self.message = "diverged", message

    def saved(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "status": self.status, "message": self.message}


@dataclass
class _History:
    """What a run has recorded so far: :class:`TrainResult`'s rows and the summary's lists."""

    metrics: list[dict] = field(default_factory=list)  # one row per epoch
    curvature: list[dict] = field(default_factory=list)  # one row per Tr(F) measurement
    stops: list = field(default_factory=list)  # steps at which a stop request saved the state
    checkpoint_events: list = field(default_factory=list)  # unusable checkpoints moved aside (fisherlab.training.checkpoint)


@dataclass
class _Kept:
    """What the run keeps for its end."""

    best: dict | None = None  # keep_best: {"epoch", "value", "model"} of the best epoch so far
    val_best: dict | None = None  # the best validation epoch's state for its test evaluation (fisherlab.training.evaluation)


@dataclass
class _State:
    """Everything a checkpoint holds, besides the config: what trains (model, optimizer,
    regularizer, the data order's generator), where the run stands, what it has
    recorded, what it keeps for its end, an epoch stopped midway, and the run's identity."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    regularizer: Any
    data_rng: torch.Generator
    progress: _Progress = field(default_factory=_Progress)
    history: _History = field(default_factory=_History)
    kept: _Kept = field(default_factory=_Kept)
    partial: dict | None = None  # an epoch stopped midway: order, position, losses, windows, seconds
    identity: dict | None = None  # the run's identity (fisherlab.runs.identity), saved with each checkpoint

    def check_divergence(self, losses: list[Tensor]) -> bool:
        """Whether the run has diverged; when running, checks (with one device sync)
        that the losses and the parameters are finite, and marks it diverged if not."""
        p = self.progress
        if not p.running:
            return p.status == "diverged"
        finite = torch.stack([torch.stack(losses).sum()] + [q.sum() for q in self.model.parameters()])
        if not torch.isfinite(finite).all():
            p.diverge(f"non-finite training loss or parameters by step {p.step} (epoch {p.epoch + 1})")
        return p.status == "diverged"

    def measured_at_this_step(self) -> bool:
        return self.history.curvature[-1]["step"] == self.progress.step

    def to_checkpoint(self, cfg: TrainConfig) -> dict[str, Any]:
        h, k = self.history, self.kept
        return {
            "config": cfg.to_dict(), "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "regularizer": self.regularizer.state_dict(), "data_rng": self.data_rng.get_state(),
            "progress": self.progress.saved(), "metrics": h.metrics, "curvature": h.curvature,
            "partial": self.partial, "stops": h.stops, "checkpoint_events": h.checkpoint_events,
            "best": k.best, "val_best": k.val_best, "identity": self.identity,
        }  # fmt: skip


@dataclass
class _Epoch:
    """The epoch under way: its order and position, the per-step losses, the window
    since the last measurement (losses and mini-batch accuracies), and its seconds of
    training and of measuring; what a stop within it saves as ``partial``."""

    order: Tensor
    position: int = 0
    losses: list[Tensor] = field(default_factory=list)
    window: list[Tensor] = field(default_factory=list)
    acc_window: list[Tensor] = field(default_factory=list)
    seconds: float = 0.0
    measure_seconds: float = 0.0

    @classmethod
    def resume(cls, partial: dict, device: torch.device) -> _Epoch:
        tensors = lambda xs: [torch.tensor(v, device=device) for v in xs]  # noqa: E731
        return cls(partial["order"], partial["position"], tensors(partial["losses"]), tensors(partial["window"]),
                   tensors(partial.get("acc_window", [])), partial["seconds"], partial.get("measure_seconds", 0.0))

    def record(self, loss: Tensor, acc: Tensor) -> None:
        self.losses.append(loss)
        self.window.append(loss)
        self.acc_window.append(acc)

    def to_partial(self, position: int) -> dict:
        floats = lambda xs: [v.item() for v in xs]  # noqa: E731
        return {"order": self.order, "position": position, "losses": floats(self.losses),
                "window": floats(self.window), "acc_window": floats(self.acc_window), "seconds": self.seconds,
                "measure_seconds": self.measure_seconds}  # fmt: skip


# --------------------------------------------------------------------------- the loop


class _Run:
    """One call of :func:`train`: the state, and what surrounds it (the config, the data,
    where the state and the snapshots are saved, where lines and rows go)."""

    def __init__(self, cfg, data, st: _State, checkpoint, snapshots, should_stop, log, emit: RowEmitter,
                 bar: StepProgress) -> None:  # fmt: skip
        self.cfg, self.data, self.st, self.checkpoint, self.snapshots = cfg, data, st, checkpoint, snapshots
        self.should_stop, self.log, self.emit, self.bar = should_stop, log, emit, bar
        self.device, self.rng = torch.device(cfg.device), RngStreams(cfg.seed)
        self.steps_per_epoch = _steps_per_epoch(cfg, data)
        self.probe = _measurement_set(cfg, data.train)  # step -> the examples Tr(F) is measured on
        self.evaluator = _evaluator(cfg, data)

    def train(self) -> TrainResult:
        """The epoch loop. A stop request, within an epoch or at its end, leaves by the
        one exit, :meth:`preempt`."""
        st, p, cfg = self.st, self.st.progress, self.cfg
        if not st.history.curvature and p.running:  # a new run: Tr(F) at the initial weights, and their snapshot
            self.record_measurement([], [])  # weights whose outputs are not finite: diverged, no exception
            self.snapshot_if_due()
        while p.running and p.epoch < cfg.epochs:
            _set_lr(st.optimizer, multistep_lr(cfg.lr, p.epoch, cfg.milestones, cfg.gamma))
            epoch = self.train_epoch()
            if st.partial is None:  # the epoch is complete
                self.end_epoch(epoch)
            if st.partial is not None or (p.running and self.stop_requested()):
                return self.preempt()
        self.save_best()
        return self.result(p.status)

    def train_epoch(self) -> _Epoch:
        """One pass over the training set (or the rest of it, after a stop). When
        ``should_stop()`` turns True it leaves the epoch's position in ``st.partial``;
        else Tr(F) is measured at its end (``fisher_epoch_end``)."""
        st, cfg, train = self.st, self.cfg, self.data.train
        st.model.train()
        epoch = _Epoch.resume(st.partial, self.device) if st.partial else _Epoch(train.epoch_order(st.data_rng))
        st.partial, stopped_at, measured_before = None, None, epoch.measure_seconds
        _sync(self.device)
        start = time.perf_counter()
        batches = train.batches(cfg.batch_size, st.data_rng, order=epoch.order, start=epoch.position)
        for position, (x, y) in enumerate(batches, start=epoch.position + 1):
            if self.step(x, y, epoch):
                break
            if self.stop_requested() and position * cfg.batch_size < len(train):
                stopped_at = position
                break
        _sync(self.device)
        epoch.seconds += time.perf_counter() - start - (epoch.measure_seconds - measured_before)
        if stopped_at is not None:
            st.partial = epoch.to_partial(stopped_at)
        elif cfg.fisher_epoch_end and not st.check_divergence(epoch.losses) and not st.measured_at_this_step():
            self.measure(epoch)
        return epoch

    def step(self, x: Tensor, y: Tensor, epoch: _Epoch) -> bool:
        """One optimizer step on the batch (x, y), then the divergence check and the Tr(F)
        measurement when due; True when the epoch ends here (divergence, or with
        ``until="crossing"`` the crossing)."""
        st, p, cfg = self.st, self.st.progress, self.cfg
        st.optimizer.zero_grad(set_to_none=True)
        try:
            out = st.regularizer.backward(st.model, x, y, step=p.step, epoch=p.epoch)
        except FloatingPointError as e:  # e.g. FP cannot sample labels from non-finite logits
            p.diverge(f"{e} at step {p.step}")
            return True
        st.optimizer.step()
        p.step += 1
        if self.bar.enabled and p.step % self.bar.every == 0:
            self.show_progress()
        epoch.record(out.loss, (out.logits.argmax(1) == y).float().mean())
        if p.step % cfg.divergence_check_every == 0 and st.check_divergence(epoch.losses):
            return True
        if not self.measurement_due():
            return False
        if st.check_divergence(epoch.losses):
            return True
        self.measure(epoch)
        if p.status == "diverged":
            return True
        epoch.window, epoch.acc_window = [], []
        return p.crossed and cfg.until == "crossing"

    def end_epoch(self, epoch: _Epoch) -> None:
        """A complete (or diverged) epoch: its metrics row, the rows to the sinks, the
        epoch count; when the run ends, the test split at the best validation epoch; then
        the snapshot and the checkpoint."""
        st, p, cfg = self.st, self.st.progress, self.cfg
        if p.running:
            self.record_epoch(epoch)
        self.emit(st.history.metrics, st.history.curvature)  # the epoch's Tr(F) rows and its metrics row
        self.show_progress()
        p.epoch += 1
        if p.running and (p.epoch == cfg.epochs or (cfg.until == "crossing" and p.crossed)):
            p.status = "ok"
        if not p.running:  # the run ends: the test split at the best validation epoch
            self.evaluator.finish(st.model, st.history.metrics, st.kept.val_best)
            st.kept.val_best = None
        self.snapshot_if_due()
        self.save()

    def preempt(self) -> TrainResult:
        """The one exit on a stop request: the state, with the position within the epoch
        when there is one, goes to the checkpoint; the run returns ``preempted``."""
        st, p = self.st, self.st.progress
        where = f"at step {p.step} (epoch {p.epoch + 1})" if st.partial is not None else f"after epoch {p.epoch}"
        st.history.stops.append(p.step)
        self.save()
        self.log(f"stop requested: state saved {where} to {self.checkpoint}")
        self.emit(st.history.metrics, st.history.curvature)
        return self.result("preempted")

    # ----------------------------------------------------------------- its parts

    def stop_requested(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def measurement_due(self) -> bool:
        """Tr(F) every ``fisher_every_early`` steps until the crossing, then every ``fisher_every``."""
        p, cfg = self.st.progress, self.cfg
        every = cfg.fisher_every_early if cfg.fisher_every_early and not p.crossed else cfg.fisher_every
        return bool(every) and p.step % every == 0

    def measure(self, epoch: _Epoch) -> None:
        """:meth:`record_measurement` of the epoch's windows, timed into ``epoch.measure_seconds``."""
        _sync(self.device)
        t0 = time.perf_counter()
        self.record_measurement(epoch.window, epoch.acc_window)
        _sync(self.device)
        epoch.measure_seconds += time.perf_counter() - t0

    def record_measurement(self, window: list[Tensor], acc_window: list[Tensor]) -> None:
        """Append :meth:`measurement` to the curvature rows and update the crossing flag
        after it, the epoch-end one included, as a resumed run derives it
        (:func:`_restore_state`), so both switch to the sparse cadence at the same step.
        A model whose outputs are no longer finite has diverged."""
        p = self.st.progress
        try:
            self.st.history.curvature.append(self.measurement(window, acc_window))
            p.crossed = p.crossed or crossed(self.st.history.curvature[-1:], self.cfg.epsilon)
        except FloatingPointError as e:
            p.diverge(f"{e}, when measuring Tr(F) at step {p.step} (epoch {p.epoch + 1})")

    def measurement(self, window: list[Tensor], acc_window: list[Tensor]) -> dict:
        """Tr(F) (Eq. 2) and Tr(F_B) (Supplement C) on the measurement examples; labels are
        drawn from a generator seeded by (seed, step), never from the training RNG. With the
        mean training loss and mini-batch accuracy since the previous measurement."""
        st, cfg, step = self.st, self.cfg, self.st.progress.step
        seed = self.rng.measurement_labels(step)
        x = self.probe(step)
        return {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            # plain floats: the rows go into checkpoints read with torch.load(weights_only=True)
            "trace_fisher": float(trace_fisher(st.model, x, generator=seed, chunk_size=cfg.fisher_chunk)),
            "trace_fisher_batch": float(trace_fisher_batch(
                st.model, x, batch_size=cfg.fisher_batch_size or cfg.batch_size, generator=seed
            )),
            "train_loss_running": torch.stack(window).mean().item() if window else float("nan"),
            "train_acc_running": torch.stack(acc_window).mean().item() if acc_window else float("nan"),
        }

    def record_epoch(self, epoch: _Epoch) -> None:
        """The epoch's metrics row (:func:`_epoch_row`), its log line, and keep_best."""
        row = _epoch_row(self.cfg, self.st, self.evaluator, epoch)
        self.st.history.metrics.append(row)
        self.log(_format_row(row))
        self.remember_if_best(row)

    def remember_if_best(self, row: dict) -> None:
        """keep_best: remember (a copy of) the weights when the epoch row's accuracy is
        strictly above the best so far (the first best epoch on ties, as
        :func:`fisherlab.training.measures.best_epoch`); non-finite values (not evaluated) never win."""
        cfg, kept = self.cfg, self.st.kept
        if cfg.keep_best is None:
            return
        value = row.get(cfg.keep_best, math.nan)
        if math.isfinite(value) and (kept.best is None or value > kept.best["value"]):
            weights = {k: v.detach().clone() for k, v in self.st.model.state_dict().items()}
            kept.best = {"epoch": row["epoch"], "value": value, "model": weights}

    def snapshot_if_due(self) -> None:
        """Save the weights as ``snapshots/epoch<E>.pt`` when E (completed epochs) is one
        of ``cfg.keep_epochs``; a diverged model's weights are not kept."""
        p = self.st.progress
        if self.snapshots is not None and p.epoch in self.cfg.keep_epochs and p.status != "diverged":
            save_atomic(self.st.model.state_dict(), Path(self.snapshots) / RunDir.snapshot_name(p.epoch))

    def save_best(self) -> None:
        """``snapshots/best.pt``: the weights of the best ``keep_best`` epoch, at the run's end."""
        if self.snapshots is not None and self.st.kept.best is not None:
            save_atomic(self.st.kept.best["model"], Path(self.snapshots) / RunDir.BEST)

    def save(self) -> None:
        """The whole state to the checkpoint (two generations, atomically: fisherlab.training.checkpoint)."""
        if self.checkpoint is not None:
            save_checkpoint(self.st.to_checkpoint(self.cfg), self.checkpoint)

    def show_progress(self) -> None:
        p = self.st.progress
        self.bar.to(p.step, epoch=p.epoch + 1, trF=f"{self.st.history.curvature[-1]['trace_fisher']:.4g}")

    def result(self, status: str) -> TrainResult:
        h = self.st.history
        return TrainResult(status, h.metrics, h.curvature, summarize(self.cfg, self.st), self.st.model)


# --------------------------------------------------------------------------- helpers


def _steps_per_epoch(cfg: TrainConfig, data: TrainData) -> int:
    return math.ceil(len(data.train) / cfg.batch_size)


def _fresh(cfg: TrainConfig, data: TrainData, init: bool = True) -> _State:
    """A new run's state. With ``cfg.init_weights`` (and ``init``) the model starts from
    that state_dict instead of its seeded initialisation (Section 5's phase 2); the data
    order, the regularizer's and the measurements' randomness still follow ``cfg.seed``."""
    rng = RngStreams(cfg.seed)
    torch.manual_seed(rng.model_init)
    model = build_model(cfg.model, num_classes=data.train.num_classes, **cfg.model_kwargs)
    if init and cfg.init_weights is not None:
        model.load_state_dict(torch.load(cfg.init_weights, map_location="cpu", weights_only=True))
    model = model.to(cfg.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    reg = build_regularizer(cfg.regularizer, seed=rng.regularizer, **cfg.regularizer_kwargs)
    st = _State(model, optimizer, reg, rng.data_order(cfg.device))
    if init and cfg.init_weights is not None and not all(torch.isfinite(q).all() for q in model.parameters()):
        st.progress.diverge(f"the initial weights {cfg.init_weights} are not finite (the run they come from diverged)")
    return st


def _restore(cfg: TrainConfig, data: TrainData, path: str | Path | None, log: Callable[[str], None],
             identity: dict | None = None) -> _State:
    """The state saved at ``path`` (or its previous generation), else a fresh one. An
    unusable checkpoint (unreadable, of another configuration, or of another
    ``identity``) is moved aside, logged and recorded in ``checkpoint_events``
    (:func:`fisherlab.training.checkpoint.load_checkpoint`)."""
    if path is None:
        st = _fresh(cfg, data)
        st.identity = identity
        return st
    loaded = load_checkpoint(path, lambda ckpt: _restore_state(cfg, data, ckpt, identity), map_location=cfg.device,
                             log=log)  # fmt: skip
    st = loaded.value if loaded.value is not None else _fresh(cfg, data)
    st.history.checkpoint_events = [*st.history.checkpoint_events, *loaded.events]
    st.identity = identity
    return st


def _restore_state(cfg: TrainConfig, data: TrainData, ckpt: dict, identity: dict | None = None) -> _State:
    """A :class:`_State` from a loaded checkpoint; :class:`CheckpointMismatch` if it lacks
    a key or belongs to another configuration, :class:`StaleCheckpoint` if ``identity`` is
    given and the checkpoint's differs."""
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
    if identity is not None and (ckpt.get("identity") or {}).get("digest") != identity["digest"]:
        from ..runs.identity import identity_difference

        raise StaleCheckpoint(f"stale: another run identity, {identity_difference(ckpt.get('identity'), identity)}")
    st = _fresh(cfg, data, init=False)  # the checkpoint's weights replace any initial ones
    st.model.load_state_dict(ckpt["model"])
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.regularizer.load_state_dict(ckpt["regularizer"])
    st.data_rng.set_state(ckpt["data_rng"].cpu())
    for k, v in ckpt["progress"].items():
        setattr(st.progress, k, v)
    st.progress.crossed = crossed(ckpt["curvature"], cfg.epsilon)
    st.history = _History(ckpt["metrics"], ckpt["curvature"], ckpt.get("stops", []), ckpt.get("checkpoint_events", []))
    st.kept = _Kept(ckpt.get("best"), ckpt.get("val_best"))
    st.partial = ckpt.get("partial")
    if st.partial is not None:
        st.partial["order"] = st.partial["order"].to(cfg.device)
    return st


def _measurement_set(cfg: TrainConfig, train: DeviceData) -> Callable[[int], Tensor]:
    """step -> the N training examples Tr(F) is measured on, normalised, never augmented:
    fixed by the seed, or with ``fisher_resample`` drawn afresh at each measurement
    (seeded by the step; Supplement D measures Tr(F) at every iteration on 128 random
    examples)."""
    n = min(cfg.fisher_examples, len(train))

    def draw(seed: int | list[int]) -> Tensor:
        return train.batch(np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False)))[0]

    rng = RngStreams(cfg.seed)
    if cfg.fisher_resample:
        return lambda step: draw(rng.measurement_set(step))
    fixed = draw(rng.measurement_set())
    return lambda step: fixed


def _evaluator(cfg: TrainConfig, data: TrainData) -> Evaluator:
    """The run's per-epoch evaluation (:mod:`fisherlab.training.evaluation`); a split whose
    accuracy ``keep_best`` follows is evaluated whole at every epoch."""
    return Evaluator(
        data, train_examples=cfg.train_eval_examples, group_examples=cfg.group_examples,
        batch_size=cfg.eval_batch_size, bn_update_batches=cfg.bn_update_batches, bn_batch_size=cfg.batch_size,
        seed=cfg.seed, test_every_epoch=cfg.test_every_epoch or cfg.keep_best == "test_acc",
        train_every_epoch=cfg.keep_best == "train_acc",
    )  # fmt: skip


def _epoch_row(cfg: TrainConfig, st: _State, evaluator: Evaluator, epoch: _Epoch) -> dict:
    """The epoch's metrics row: its evaluation, the mean training loss, the Tr(F) at its end,
    and the seconds of training (``seconds``) and of everything else (``eval_seconds``:
    the epoch's Tr(F) measurements and its evaluation)."""
    t0 = time.perf_counter()
    p, kept = st.progress, st.kept
    last = p.epoch + 1 == cfg.epochs or (cfg.until == "crossing" and p.crossed)
    measured, kept.val_best = evaluator.evaluate(st.model, p.epoch + 1, last=last, kept=kept.val_best)
    row = {"epoch": p.epoch + 1, "step": p.step, "lr": st.optimizer.param_groups[0]["lr"], **measured}
    row["train_loss_running"] = torch.stack(epoch.losses).mean().item()
    at_end = st.measured_at_this_step()  # else measured mid-epoch only (fisher_epoch_end off)
    row["trace_fisher"] = st.history.curvature[-1]["trace_fisher"] if at_end else math.nan
    row["seconds"] = epoch.seconds
    row["eval_seconds"] = time.perf_counter() - t0 + epoch.measure_seconds
    return row


def summarize(cfg: TrainConfig, st: _State) -> dict[str, Any]:
    """The run's summary: status, final and best accuracies, max Tr(F), seconds/epoch."""
    p, h, kept = st.progress, st.history, st.kept
    last = h.metrics[-1] if h.metrics else {}
    best = best_epoch(h.metrics)
    fisher_i = crossing(h.curvature, cfg.epsilon)
    return {
        "status": p.status,
        "message": p.message,
        "epochs_completed": len(h.metrics),
        "steps": p.step,
        **{f"final_{k}": last.get(k, math.nan) for k in
           ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss")},
        **{f"final_{k}": v for k, v in last.items() if k.startswith("train_acc_") and not k.endswith("_subset")},
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val_acc", math.nan),
        "test_acc_at_best_val": best.get("test_acc", math.nan),
        "best_test_acc": _max_along_path(h.metrics, "test_acc"),  # Figs. 2, 7 (test_every_epoch)
        "best_train_acc": _max_along_path(h.metrics, "train_acc"),  # whole split: NaN unless train_eval_examples: 0
        "best_train_acc_subset": _max_along_path(h.metrics, "train_acc_subset"),  # Figs. 8, 9: every epoch, subset
        "max_trace_fisher": max_trace_fisher(h.curvature),
        "kept_best_epoch": kept.best["epoch"] if kept.best else None,  # keep_best: the epoch of snapshots/best.pt
        "kept_best_value": kept.best["value"] if kept.best else math.nan,  # and its keep_best accuracy
        "epsilon": cfg.epsilon,
        "trace_fisher_i": fisher_i.trace_fisher_i,  # Tr(F_i), Section 3 (fisherlab.training.measures)
        "trace_fisher_i_status": fisher_i.status,
        "crossing_step": fisher_i.step,
        "crossing_epoch": fisher_i.epoch,
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in h.metrics])) if h.metrics else math.nan,
        "stopped_at_steps": list(h.stops),  # preemptions / time-outs survived (resumed from there)
        "checkpoint_events": list(h.checkpoint_events),  # unusable checkpoints moved aside, and what was resumed
        "seed": cfg.seed,
        "config": cfg.to_dict(),
    }  # fmt: skip


def _max_along_path(metrics: list[dict], key: str) -> float:
    """The maximum of ``key`` over the epochs, NaN unless it was measured at every epoch
    (:mod:`fisherlab.training.evaluation` evaluates some splits only at some epochs)."""
    values = [r.get(key, math.nan) for r in metrics]
    return max(values) if values and all(math.isfinite(v) for v in values) else math.nan


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _format_row(row: dict) -> str:
    whole = "" if "train_acc" not in row else f"  whole train {row['train_acc']:.3f}"
    test = "" if "test_acc" not in row else f"  test {row['test_acc']:.3f}"
    return (
        f"epoch {row['epoch']:3d}  lr {row['lr']:.4g}  train {row['train_loss_subset']:.4f}/"
        f"{row['train_acc_subset']:.3f}{whole}  val {row.get('val_acc', math.nan):.3f}{test}  "
        f"Tr(F) {row['trace_fisher']:.4g}  {row['seconds']:.1f}s + {row['eval_seconds']:.1f}s"
    )
