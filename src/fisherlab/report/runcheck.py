"""What a value read from a run's files may be, checked before it reaches a table or a
figure: a hand-edited or damaged ``summary.json``, ``metrics.csv`` or ``curvature.csv``
is an error naming the file and the key, never a number in a table next to ``ok``.

The rules go by the key's name, as :mod:`fisherlab.training.trainer`, :mod:`fisherlab.training.memorization`
and the run plan write them:

- an accuracy (``*_acc``, ``acc_*``, ``test_acc_at_best_val``, ``kept_best_value``, the
  label-noise fraction) lies in [0, 1]; a gradient cosine in [-1, 1];
- Tr(F) and Tr(F_B) (``trace_fisher*``, ``max_trace_fisher``), gradient norms, epochs,
  steps, seeds and seconds are >= 0; ``lr`` and ``epsilon`` > 0, ``alpha`` >= 0;
- a loss is only a number (a Gaussian likelihood's can be negative); so is Tr(H)
  (the Hessian is indefinite);
- ``status`` is ``ok`` or ``diverged``; ``trace_fisher_i_status`` one of
  :data:`FISHER_I_STATUSES`;
- in ``summary.json`` every number is finite (the run files write NaN as null), and a run
  whose status is ``ok`` has the final accuracies that the tables read
  (:data:`REQUIRED_IF_OK`, :data:`REQUIRED_IF_VALIDATED`); a Tr(F_i) whose status says it
  was reached is there too. Keys not named here (labels, the nested ``config``) pass.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any

import numpy as np
import pandas as pd

STATUSES = ("ok", "diverged")
FISHER_I_STATUSES = ("ok", "at first measurement", "not reached")  # fisherlab.training.measures.crossing
#: summary.json keys that a run of status ``ok`` must hold as numbers (not null); and those
#: it must hold when it had a validation split (``final_val_acc`` not null; the pipeline's
#: runs always have one, a library run may not).
#: (``max_trace_fisher`` is not among them: it counts from the end of the first epoch, so a
#: run stopped at its crossing within epoch 1, as Section 3's sweeps are, has none.)
REQUIRED_IF_OK = ("final_train_acc", "final_test_acc")
REQUIRED_IF_VALIDATED = ("best_val_acc", "test_acc_at_best_val")

_INF = math.inf
#: (pattern of the key, lowest, highest, whether the bounds are open, what it is); first match wins.
_RULES: list[tuple[re.Pattern, float, float, bool, str]] = [
    (re.compile(p), lo, hi, open_, what)
    for p, lo, hi, open_, what in [
        (r"^grad_cosine", -1.0, 1.0, False, "a cosine in [-1, 1]"),
        (r"(^|_)acc($|_)|^kept_best_value$|^label_noise$", 0.0, 1.0, False, "a fraction in [0, 1]"),
        (r"^(max_)?trace_fisher(_i|_batch)?$", 0.0, _INF, False, "a trace of the Fisher, >= 0"),
        (r"^grad_(sq_)?norm", 0.0, _INF, False, "a norm, >= 0"),
        (r"^(epoch|step|epochs_completed|steps|best_epoch|kept_best_epoch|crossing_step|crossing_epoch|seed)$",
         0.0, _INF, False, "a count, >= 0"),
        (r"(^|_)seconds($|_)|^seconds_per_epoch$", 0.0, _INF, False, "a duration, >= 0"),
        (r"^stderr$", 0.0, _INF, False, "a standard error, >= 0"),
        (r"^(num_probes|examples)$", 1.0, _INF, False, "a count, >= 1"),
        (r"^(lr|epsilon)$", 0.0, _INF, True, "a positive number"),
        (r"^alpha$", 0.0, _INF, False, "a strength, >= 0"),
        (r"(^|_)loss($|_)|^trace_hessian|^value$", -_INF, _INF, False, "a number"),
    ]
]  # fmt: skip


class RunFileError(ValueError):
    """A run file holds a value the report cannot use; the message names the file and the key."""


def rule_of(key: str) -> tuple[float, float, bool, str] | None:
    """(lowest, highest, open bounds, description) of a numeric key, or None when the key
    is not known to be a number."""
    if key.endswith("_status"):
        return None
    for pattern, lo, hi, open_, what in _RULES:
        if pattern.search(key):
            return lo, hi, open_, what
    return None


def _in_range(value: float, lo: float, hi: float, open_: bool) -> bool:
    return lo < value < hi if open_ else lo <= value <= hi


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_values(data: dict[str, Any], fail) -> str:
    """The status of ``data`` (one of :data:`STATUSES`), after checking each top-level value:
    finite, and a number in its range where the key's name says it is one."""
    status = data.get("status")
    if status not in STATUSES:
        fail("status", f"{status!r} is not one of {list(STATUSES)}")
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, f"{value} is not a finite number (a run file writes NaN as null)")
        rule = rule_of(key)
        if rule is None or value is None:
            continue
        lo, hi, open_, what = rule
        if not _is_number(value):
            fail(key, f"{value!r} is not a number ({what})")
        if not _in_range(value, lo, hi, open_):
            fail(key, f"{value!r} is out of range ({what})")
    return status


def check_hessian(data: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A run's parsed ``hessian.json`` (:func:`fisherlab.hessian.trace_hessian_of_run`):
    its status, and Tr(H) and its standard error as numbers (present unless the run
    diverged); raises :class:`RunFileError` naming ``path`` and the key."""

    def fail(key, message):
        raise RunFileError(f"{path}: {key}: {message}")

    if _check_values(data, fail) == "ok":
        for key in ("trace_hessian", "stderr"):
            if data.get(key) is None:
                fail(key, "missing or null in a run whose status is ok")
    return data


def check_summary(summary: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Raise :class:`RunFileError` naming ``path`` and the key when a value of the parsed
    ``summary.json`` cannot be what it says (see the module's rules); returns ``summary``."""

    def fail(key, message):
        raise RunFileError(f"run summary {path}: {key}: {message}")

    status = _check_values(summary, fail)
    fisher_i_status = summary.get("trace_fisher_i_status")
    if "trace_fisher_i_status" in summary and fisher_i_status not in FISHER_I_STATUSES:
        fail("trace_fisher_i_status", f"{fisher_i_status!r} is not one of {list(FISHER_I_STATUSES)}")
    if status == "ok":
        validated = summary.get("final_val_acc") is not None
        for key in REQUIRED_IF_OK + (REQUIRED_IF_VALIDATED if validated else ()):
            if summary.get(key) is None:
                where = " (with a validation split)" if validated else ""
                fail(key, f"missing or null in a run whose status is ok{where}")
    if fisher_i_status in ("ok", "at first measurement") and summary.get("trace_fisher_i") is None:
        fail("trace_fisher_i", f"missing or null while trace_fisher_i_status is {fisher_i_status!r}")
    return summary


def check_curves(frame: pd.DataFrame, path: str | os.PathLike, required: tuple[str, ...]) -> pd.DataFrame:
    """``frame`` (a run's ``metrics.csv`` or ``curvature.csv``) with every column numeric;
    raises :class:`RunFileError` naming ``path``, the column and the first bad row (1 is
    the first data row) when a column of ``required`` is missing, a cell is not a number,
    or a known column holds a value out of its range. Empty cells (a split not evaluated
    at that epoch) are NaN; +-inf is accepted only in a loss or a trace (a diverging run)."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RunFileError(f"{path}: missing column(s) {missing} (it has {list(frame.columns)})")
    out = {}
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise RunFileError(f"{path}: column {col!r}, row {row + 1}: {frame[col].iloc[row]!r} is not a number")
        arr = values.to_numpy(dtype=float)
        rule = rule_of(str(col))
        lo, hi, open_, what = rule if rule is not None else (-_INF, _INF, False, "a number")
        allow_inf = rule is not None and (rule[3] == "a number" or str(col).startswith("trace_fisher"))
        present = ~np.isnan(arr)
        outside = present & ~(((arr > lo) & (arr < hi)) if open_ else ((arr >= lo) & (arr <= hi)))
        outside |= present & np.isinf(arr) & (not allow_inf)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise RunFileError(f"{path}: column {col!r}, row {row + 1}: {float(arr[row])!r} is out of range ({what}"
                               f"{'' if allow_inf else ', finite'})")  # fmt: skip
        out[col] = values  # as pd.read_csv typed it (int columns stay int), now surely numeric
    return pd.DataFrame(out, index=frame.index)
