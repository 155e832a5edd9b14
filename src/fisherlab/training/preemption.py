"""Stopping a training run cleanly when the scheduler asks (SLURM time-outs, preemption).

SLURM sends SIGTERM when a job reaches its time limit or is preempted (then SIGKILL after
``KillWait``, 30 s by default), and, with ``sbatch --signal=USR1@<seconds>``, SIGUSR1 that
many seconds before the limit. :class:`StopFlag` turns these signals into a flag that
:func:`fisherlab.training.trainer.train` polls after each step: the run saves its whole state,
its position within the epoch included, and stops; the next attempt resumes there.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable


class Preempted(RuntimeError):
    """A run stopped on request with its state saved; running it again resumes it."""


class StopFlag:
    """Callable flag, True once one of ``signals`` has arrived (SIGTERM and SIGUSR1 by
    default). Installing it replaces the signals' handlers in this (main) thread;
    :meth:`restore` puts the previous ones back."""

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGUSR1)):
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.received = signum

    def __call__(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
