"""The numbers a run's summary reports about its trajectory, each defined once:
Tr(F_i) of Section 3, the maximum Tr(F) of Supplement Table 4, and the best epoch.

They take the trainer's records: ``curvature`` rows (one per Tr(F) measurement: ``step``,
``epoch``, ``trace_fisher``, ``train_loss_running``) and ``metrics`` rows (one per epoch).
Pure Python, so tables and tests can use them on hand-made rows.

**Tr(F_i)** (Section 3: "Tr(F) during the initial phase of training ... determined by
measuring when the training loss crosses a task-specific threshold ε"). Precisely:

- *The training loss.* ``train_loss_running`` of a measurement at step s_k is the mean
  mini-batch cross-entropy (the data term, in train mode, on the augmented batches)
  over the steps since the previous measurement, (s_{k-1}, s_k]. The measurement at
  step 0 has none (NaN). Measured densely (every ``fisher_every_early`` steps) this
  window is short, so L_k lags the loss at s_k by at most half a window.
- *The crossing.* The first measurement k whose L_k < ε.
- *Interpolation.* With j = k - 1 the measurement before it (L_j >= ε):
  t = (L_j - ε) / (L_j - L_k), Tr(F_i) = Tr(F)_j + t (Tr(F)_k - Tr(F)_j), and the
  crossing step s_j + t (s_k - s_j). When no earlier measurement has a finite loss
  (ε is crossed by the first window), Tr(F_i) = Tr(F)_k at s_k.
- *Not reached.* When no measurement has L < ε, Tr(F_i) is NaN and its status says
  ``not reached``; a run that diverged before crossing says so the same way, and so does
  one whose crossing has no finite Tr(F) to give (the weights diverged while the
  running loss, averaged over the steps before, was still finite).
- *The examples.* Tr(F) is measured on the trainer's fixed set of ``fisher_examples``
  training examples (5,000 in the paper's Section 3 runs, Supplement I.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

Row = Mapping[str, Any]


class Crossing(NamedTuple):
    """Tr(F_i) and where ε was crossed (NaN and status "not reached" when it never was)."""

    trace_fisher_i: float
    step: float
    epoch: float
    status: str  # "ok", "at first measurement" or "not reached"


NOT_REACHED = Crossing(math.nan, math.nan, math.nan, "not reached")


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def crossing(curvature: Sequence[Row], epsilon: float | None) -> Crossing:
    """Tr(F_i): Tr(F) interpolated to where the running training loss first falls
    below ``epsilon`` (see the module docstring). ``epsilon`` None or NaN: not reached."""
    if epsilon is None or not _finite(epsilon):
        return NOT_REACHED
    rows = sorted(curvature, key=lambda r: r["step"])
    before: Row | None = None
    for row in rows:
        loss = row.get("train_loss_running")
        if not _finite(loss):
            continue
        if loss < epsilon:
            if before is None:
                found = Crossing(float(row["trace_fisher"]), float(row["step"]), float(row["epoch"]),
                                 "at first measurement")  # fmt: skip
            else:
                t = (before["train_loss_running"] - epsilon) / (before["train_loss_running"] - loss)
                found = Crossing(
                    _lerp(before["trace_fisher"], row["trace_fisher"], t),
                    _lerp(before["step"], row["step"], t),
                    _lerp(before["epoch"], row["epoch"], t),
                    "ok",
                )
            return found if _finite(found.trace_fisher_i) else NOT_REACHED
        before = row
    return NOT_REACHED


def _lerp(a: float, b: float, t: float) -> float:
    return float(a + t * (b - a))


def crossed(curvature: Sequence[Row], epsilon: float | None) -> bool:
    """Whether a measurement so far has a running training loss below ``epsilon``."""
    return _finite(epsilon) and any(_finite(r.get("train_loss_running")) and r["train_loss_running"] < epsilon
                                    for r in curvature)  # fmt: skip


def max_trace_fisher(curvature: Sequence[Row], from_epoch: float = 1.0) -> float:
    """The maximum Tr(F) along the trajectory (Supplement Table 4), counted from the end
    of the first epoch on (Supplement A.2: in networks with BatchNorm, Tr(F) explodes at
    initialisation). NaN when there is no finite measurement."""
    values = [r["trace_fisher"] for r in curvature if r["epoch"] >= from_epoch and _finite(r["trace_fisher"])]
    return max(values, default=math.nan)


def best_epoch(metrics: Sequence[Row], key: str = "val_acc") -> Row:
    """The epoch row with the highest ``key`` (validation accuracy: early stopping and
    the test accuracy of Tables 1-3), the first on ties; the last row when ``key`` is
    never finite; {} without rows."""
    finite = [r for r in metrics if _finite(r.get(key))]
    if not finite:
        return metrics[-1] if metrics else {}
    return max(finite, key=lambda r: r[key])


def noisy_acc_at_clean_acc(metrics: Sequence[Row], clean_acc: float) -> float:
    """The training accuracy on the noisy examples when the accuracy on the clean ones
    first reaches ``clean_acc``, interpolated linearly between epochs (Fig. 5: "training
    accuracy on noisy examples being lower for the same accuracy on clean examples").
    ``metrics``: epoch rows with ``train_acc_clean`` and ``train_acc_noisy`` (a frame's
    ``to_dict("records")``). NaN if the run never reaches ``clean_acc``."""
    rows = sorted(metrics, key=lambda r: r["epoch"])
    for i, row in enumerate(rows):
        if row["train_acc_clean"] >= clean_acc:
            before = rows[i - 1] if i else None
            if before is None or row["train_acc_clean"] == before["train_acc_clean"]:
                return float(row["train_acc_noisy"])
            t = (clean_acc - before["train_acc_clean"]) / (row["train_acc_clean"] - before["train_acc_clean"])
            return _lerp(before["train_acc_noisy"], row["train_acc_noisy"], t)
    return math.nan
