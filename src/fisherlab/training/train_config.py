"""Every hyperparameter of one training run, in one place: :class:`TrainConfig`.

Pure Python (no torch), so that the run plan (:mod:`fisherlab.plan`) can build the
training spec of every run of the pipeline without importing torch. Its defaults are
the paper's (Supplement I.2) and the pipeline's config schema mirrors them
(``workflow/schemas/config.schema.yaml``; a test checks that they agree).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

KEEP_BEST = ("train_acc", "val_acc", "test_acc")  # the accuracies whose best epoch's weights can be kept
# GPx's readings (fisherlab.penalties.InputGradientPenalty, its ``reduction``): the first is the default
GPX_REDUCTIONS = ("per_example", "batch_mean")


@dataclass
class TrainConfig:
    """Every hyperparameter of one run, in one place."""

    model: str = "simple_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01  # base learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=list)  # epochs at which lr *= gamma
    gamma: float = 0.1
    regularizer: str = "none"  # none, fp, fp_exact, gp, gpx, gpr, mixup
    regularizer_kwargs: dict[str, Any] = field(default_factory=dict)  # alpha, every, beta, start_epoch; gpx: reduction
    fisher_examples: int = 128  # N: fixed training examples for Tr(F) and Tr(F_B) (I.2: the batch size)
    fisher_every: int = 100  # K: measure every K steps (0: at the end of each epoch only)
    fisher_every_early: int = 0  # K before the loss first falls below epsilon (0: K); Tr(F_i) (Sec. 3)
    fisher_epoch_end: bool = True  # also measure at the end of each epoch (off: the cadence alone, Sec. 3 sweeps)
    epsilon: float | None = None  # training-loss threshold of Tr(F_i) (Sec. 3; I.1: 1.2 CIFAR-10, 3.5 CIFAR-100)
    until: str = "end"  # "end": train all epochs; "crossing": stop once the loss is below epsilon
    fisher_resample: bool = False  # draw the N examples afresh at each measurement (Supplement D), else fixed
    fisher_batch_size: int | None = None  # B of Tr(F_B); default: batch_size
    fisher_chunk: int = 128  # examples per Tr(F) pass (memory bound)
    group_examples: int = 512  # per training-set group: examples of the mean gradients (Sec. 4.1)
    bn_update_batches: int = 0  # evaluate with BN statistics from this many training batches (I.2: 100)
    init_weights: str | None = None  # a state_dict file loaded into the model once built (Sec. 5: phase 2)
    keep_epochs: list[int] = field(default_factory=list)  # weights kept at these epoch ends (0: init): snapshots/epoch<E>.pt
    keep_best: str | None = None  # keep the weights of the epoch with the best of this accuracy (Sec. 5: test_acc)
    train_eval_examples: int = 5000  # per-epoch train loss/accuracy on this fixed subset (0: the whole split)
    test_every_epoch: bool = False  # test split every epoch (else: at the best validation epoch and the last)
    eval_batch_size: int | None = None  # None: 128 on the CPU, 1024 on a GPU (fisherlab.training.evaluation)
    divergence_check_every: int = 20  # steps between (device-syncing) finiteness checks
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        positive = ("epochs", "batch_size", "lr", "fisher_examples", "fisher_chunk",
                    "group_examples", "divergence_check_every")  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("momentum", "weight_decay", "fisher_every", "fisher_every_early", "bn_update_batches",
                     "train_eval_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.eval_batch_size is not None and not self.eval_batch_size > 0:
            raise ValueError(f"TrainConfig.eval_batch_size must be > 0 or None, got {self.eval_batch_size!r}")
        if self.test_every_epoch not in (True, False):
            raise ValueError(f"TrainConfig.test_every_epoch must be true or false, got {self.test_every_epoch!r}")
        if self.fisher_epoch_end not in (True, False):
            raise ValueError(f"TrainConfig.fisher_epoch_end must be true or false, got {self.fisher_epoch_end!r}")
        if not self.fisher_epoch_end and not self.fisher_every:
            raise ValueError("TrainConfig.fisher_epoch_end=False needs fisher_every > 0 (else Tr(F) is never measured)")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"TrainConfig.epsilon must be > 0 or None, got {self.epsilon!r}")
        if self.until not in ("end", "crossing"):
            raise ValueError(f"TrainConfig.until must be 'end' or 'crossing', got {self.until!r}")
        if self.until == "crossing" and self.epsilon is None:
            raise ValueError("TrainConfig.until='crossing' needs an epsilon")
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in self.keep_epochs):
            raise ValueError(f"TrainConfig.keep_epochs must be epochs >= 0, got {self.keep_epochs!r}")
        if self.keep_best not in (None, *KEEP_BEST):
            raise ValueError(f"TrainConfig.keep_best must be None or one of {KEEP_BEST}, got {self.keep_best!r}")
        reduction = self.regularizer_kwargs.get("reduction", GPX_REDUCTIONS[0])
        if self.regularizer == "gpx" and reduction not in GPX_REDUCTIONS:
            raise ValueError(f"TrainConfig.regularizer_kwargs['reduction'] of gpx must be one of {GPX_REDUCTIONS}, "
                             f"got {reduction!r}")  # fmt: skip
        if self.keep_best == "test_acc" and not self.test_every_epoch:
            raise ValueError("TrainConfig.keep_best='test_acc' needs test_every_epoch=True (the best of every epoch)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
