"""The sink protocol of :func:`fisherlab.train`'s ``log`` (standard library only): a
:class:`Sink` receives rows of numbers, :func:`split_log` tells text callables from sinks,
:class:`RowEmitter` sends a run's new rows. The concrete trackers are in
:mod:`fisherlab.tracking`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: a row's keys that are its position, not metrics
POSITION_KEYS = ("step",)


class Sink:
    """A tracker receiving numeric rows. Subclasses implement :meth:`log_metrics`."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_row(self, kind: str, row: Mapping[str, Any]) -> None:
        """``row``'s finite numbers as ``<kind>/<key>`` at ``row["step"]``."""
        metrics = {f"{kind}/{k}": float(v) for k, v in row.items()
                   if k not in POSITION_KEYS and _number(v) and math.isfinite(v)}  # fmt: skip
        if metrics:
            self.log_metrics(metrics, step=int(row["step"]))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


LogTarget = Callable[[str], None] | Sink


def split_log(log: LogTarget | Sequence[LogTarget] | None) -> tuple[Callable[[str], None], list[Sink]]:
    """``train``'s ``log`` as (a text-line function over the callables, the sinks).
    Accepts a callable, a :class:`Sink` (anything with ``log_row``), or a list/tuple of
    them; anything else is a ``TypeError``."""
    items = [] if log is None else list(log) if isinstance(log, (list, tuple)) else [log]
    texts, sinks = [], []
    for item in items:
        if hasattr(item, "log_row"):
            sinks.append(item)
        elif callable(item):
            texts.append(item)
        else:
            raise TypeError(f"log must be a callable taking a text line, a fisherlab.tracking.Sink, or a list of "
                            f"them; got {type(item).__name__}")  # fmt: skip

    def text(line: str) -> None:
        for f in texts:
            f(line)

    return text, sinks


class RowEmitter:
    """Sends the rows a run appended since the last call to every sink: the new
    curvature rows, then the new metrics rows; then flushes. Starts after the rows that
    exist when it is made (a resumed run's earlier rows went to the earlier sinks)."""

    def __init__(self, sinks: list[Sink], metrics: list[dict], curvature: list[dict]) -> None:
        self.sinks = sinks
        self.sent = {"metrics": len(metrics), "curvature": len(curvature)}

    def __call__(self, metrics: list[dict], curvature: list[dict]) -> None:
        if not self.sinks:
            return
        for kind, rows, name in (("curvature", curvature, "curvature"), ("epoch", metrics, "metrics")):
            for row in rows[self.sent[name]:]:
                for sink in self.sinks:
                    sink.log_row(kind, row)
            self.sent[name] = len(rows)
        for sink in self.sinks:
            sink.flush()
