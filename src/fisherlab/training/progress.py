"""A per-step progress bar for :func:`fisherlab.train`: steps done of the run's total, the
rate and the ETA, the epoch and the latest Tr(F), drawn by ``tqdm`` on stderr when stderr
is a terminal and ``tqdm`` is installed (the ``loggers`` extra; or when forced, which
then needs it). It never writes to the log: the text log stays one line
per epoch, and a log line printed while the bar is shown is printed above it.

The bar costs nothing on the hot path but an integer test per step: it is redrawn every
``every`` steps, from numbers already on the host (no device synchronisation).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable, TextIO


class StepProgress:
    """``enabled``: True, False, or None (on when ``file`` is a terminal and ``tqdm`` can
    be imported: the core install, torch and numpy, trains without it). ``file``:
    default ``sys.stderr`` at construction time."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool | None = None, every: int = 10,
                 file: TextIO | None = None, desc: str | None = None) -> None:  # fmt: skip
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        file = file if file is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(file, "isatty", lambda: False)()) and importlib.util.find_spec("tqdm") is not None
        if not isinstance(enabled, bool):
            raise TypeError(f"progress must be True, False or None (auto: on a terminal), got {enabled!r}")
        self.every = every
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError as err:
                raise ImportError("progress=True draws its bar with tqdm: pip install 'fisherlab[loggers]'") from err

            self.bar = tqdm(total=total, initial=initial, file=file, unit="step", desc=desc, dynamic_ncols=True,
                            mininterval=0.5, smoothing=0.1, leave=False)  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def to(self, step: int, **postfix: Any) -> None:
        """Move the bar to ``step`` (optimizer steps done), with ``postfix`` shown after it."""
        if self.bar is None:
            return
        self.bar.n = step
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` with the bar cleared before and redrawn after each line."""
        if self.bar is None:
            return log

        def wrapped(line: str) -> None:
            self.bar.clear()
            log(line)
            self.bar.refresh()

        return wrapped

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
