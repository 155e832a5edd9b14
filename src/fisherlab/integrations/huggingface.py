"""Tr(F) as a Hugging Face ``transformers.Trainer`` instrument.

:class:`FisherTraceCallback` measures Tr(F) (Eq. 2) and, if asked, Tr(F_B) (Supplement C,
Eq. 5) of the trained model on a FIXED probe set every ``every_n_steps`` optimizer steps
(and at step 0), with labels yhat ~ p(y|x) from the model itself, and logs them as
``trace_fisher`` and ``trace_fisher_batch`` in ``trainer.state.log_history`` (and, for the
callbacks after it, or all of them once :meth:`FisherTraceCallback.attach` put it first,
in the ``logs`` that ``report_to`` integrations such as TensorBoard or W&B receive)::

    from transformers import Trainer
    from fisherlab.integrations.huggingface import FisherTraceCallback

    probe = {k: v[:128] for k, v in tokenized_train[:128].items() if k != "labels"}  # tensors
    cb = FisherTraceCallback(probe, every_n_steps=50)      # output_fn default: output.logits
    trainer = Trainer(model=model, args=args, train_dataset=train_ds)
    cb.attach(trainer)                                     # first, so every reporter sees it
    trainer.train()
    [r for r in trainer.state.log_history if "trace_fisher" in r]

The probe is a dict of (N, ...) tensors, the model's keyword inputs (``input_ids``,
``attention_mask``, ...; a ``labels`` key is left out), or a tensor for a model called
positionally; a list of batches or a DataLoader is concatenated once. The model is called
as ``model(**probe)`` in chunks of examples and its logits taken from ``output.logits``
(or ``output_fn(output)``); token ids are integers, which the per-example machinery
handles (its gradients taken at the layer outputs; embeddings through ``torch.func``).
The value at step t equals ``trace_fisher`` on the weights after step t with the labels
of generator ``seed * 1_000_003 + t`` (:mod:`fisherlab.integrations.meter`).

A step that measures asks the Trainer to log (``control.should_log``), so the value
lands at its own step; only the main process measures.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .meter import FisherTraceMeter, OutputFn


class FisherTraceCallback(TrainerCallback):
    """Log Tr(F) [and Tr(F_B)] of the trained model on a fixed probe set every
    ``every_n_steps`` optimizer steps. Arguments: see
    :class:`fisherlab.integrations.meter.FisherTraceMeter`."""

    def __init__(self, probe: Any, every_n_steps: int = 50, *, batch_trace: bool = False,
                 batch_size: int | None = None, likelihood: Any = None, output_fn: OutputFn | None = None,
                 seed: int = 0, chunk_size: int = 128, at_start: bool = True, prefix: str = "") -> None:  # fmt: skip
        self.meter = FisherTraceMeter(probe, every_n_steps, batch_trace=batch_trace, batch_size=batch_size,
                                      likelihood=likelihood, output_fn=output_fn, seed=seed,
                                      chunk_size=chunk_size, at_start=at_start, prefix=prefix)  # fmt: skip
        self.history: list[dict[str, float]] = []  # {"step": t, "trace_fisher": ..., ...} per measurement
        self._pending: dict[str, float] | None = None  # measured, waiting for the Trainer's next log

    def attach(self, trainer) -> FisherTraceCallback:
        """Add this callback to ``trainer`` as its FIRST callback, so that the logs every
        other callback receives (the ``report_to`` integrations included) carry the values."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def _measure(self, state, model) -> dict[str, float] | None:
        step = state.global_step
        if not state.is_world_process_zero or not self.meter.due(step):
            return None
        if self.history and self.history[-1]["step"] == step:
            return None
        if model is None:
            raise ValueError("the Trainer passed no model to the callback")
        values = self.meter.measure(model, step)
        self.history.append({"step": step, **values})
        return values

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        values = self._measure(state, model)
        if values is not None:  # before the first step: no Trainer log follows, record it directly
            state.log_history.append({**values, "epoch": state.epoch or 0.0, "step": state.global_step})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        values = self._measure(state, model)
        if values is not None:
            self._pending = values
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None:
            return
        if logs is not None:
            logs.update(self._pending)
        # Trainer.log appended a copy of ``logs`` to log_history before calling on_log
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step:
            last.update(self._pending)
        else:
            state.log_history.append({**self._pending, "epoch": state.epoch, "step": state.global_step})
        self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:  # measured at a step the Trainer did not log
            state.log_history.append({**self._pending, "epoch": state.epoch, "step": state.global_step})
            self._pending = None
