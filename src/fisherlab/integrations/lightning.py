"""Tr(F) as a PyTorch Lightning instrument, and the Fisher penalty in a LightningModule.

:class:`FisherTraceCallback` measures Tr(F) (Eq. 2) and, if asked, Tr(F_B) (Supplement C,
Eq. 5) of the LightningModule on a FIXED probe set every ``every_n_steps`` optimizer steps
(and at step 0), and logs them with the trainer's loggers under the names
``trace_fisher`` and ``trace_fisher_batch``, at ``step = trainer.global_step``::

    import lightning as L
    from fisherlab.integrations.lightning import FisherTraceCallback

    probe = next(iter(train_loader))[0][:256]          # fixed examples, inputs only
    trainer = L.Trainer(max_epochs=10, callbacks=[FisherTraceCallback(probe, every_n_steps=50)])
    trainer.fit(model, train_loader)                  # TensorBoard/CSV/W&B get trace_fisher

The value at step t is ``fisherlab.trace_fisher(model, probe, generator=seed * 1_000_003 + t)``
on the weights after step t (see :mod:`fisherlab.integrations.meter`); the values also go
to ``trainer.callback_metrics`` (so ``ModelCheckpoint``/``EarlyStopping`` may monitor
them) and to the callback's ``history`` (saved in Lightning checkpoints). A dict probe
(keyword inputs) and ``output_fn`` work as in the Hugging Face callback. Under
distributed training only global rank 0 measures (on its own replica).

The Fisher penalty (Eq. 3, alpha * Tr(F_B) of the mini-batch with labels sampled from the
model) is a term added to the loss in ``training_step``; with ``fisherlab.fisher_penalty``
(a differentiable alpha * ||(1/B) sum_i g(x_i, yhat_i)||^2)::

    from fisherlab import fisher_penalty

    class Classifier(L.LightningModule):
        def __init__(self, net, alpha=0.01):
            super().__init__()
            self.net, self.alpha = net, alpha

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            penalty = fisher_penalty(self.net, x, alpha=self.alpha)   # differentiable
            self.log_dict({"loss": loss, "fisher_penalty": penalty})
            return loss + penalty

``FisherPenaltyTerm(alpha, every=10)`` is its cached form (the penalty recomputed every
10 steps, as the paper's FP does to save time): call it in the same place.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from lightning.pytorch import Callback
except ImportError:  # the older standalone package
    from pytorch_lightning import Callback

from .meter import FisherTraceMeter, OutputFn


class FisherTraceCallback(Callback):
    """Log Tr(F) [and Tr(F_B)] of the LightningModule on a fixed probe set every
    ``every_n_steps`` optimizer steps. Arguments: see
    :class:`fisherlab.integrations.meter.FisherTraceMeter`; ``at_start`` also measures
    at step 0 (the initialisation, before the first step)."""

    def __init__(self, probe: Any, every_n_steps: int = 50, *, batch_trace: bool = False,
                 batch_size: int | None = None, likelihood: Any = None, output_fn: OutputFn | None = None,
                 seed: int = 0, chunk_size: int = 128, at_start: bool = True, prefix: str = "") -> None:  # fmt: skip
        super().__init__()
        self.meter = FisherTraceMeter(probe, every_n_steps, batch_trace=batch_trace, batch_size=batch_size,
                                      likelihood=likelihood, output_fn=output_fn, seed=seed,
                                      chunk_size=chunk_size, at_start=at_start, prefix=prefix)  # fmt: skip
        self.history: list[dict[str, float]] = []  # {"step": t, "trace_fisher": ..., ...} per measurement

    def _measure(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not self.meter.due(step):
            return
        if self.history and self.history[-1]["step"] == step:  # gradient accumulation: one per optimizer step
            return
        values = self.meter.measure(pl_module, step)
        self.history.append({"step": step, **values})
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
