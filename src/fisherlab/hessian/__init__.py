"""Tr(H), the trace of the loss Hessian (Supplement B; Section 5, Figs. 6, 13, 14, 21),
as the pipeline measures it: one spec, one place for its defaults, and its jobs.

- :mod:`fisherlab.hessian.spec` (pure Python): :class:`HessianSpec` (num_probes,
  distribution, method, examples; the defaults), the renamed config keys
  (:data:`RENAMED`, refused by :func:`fisherlab.config_guard.validate_config`) and the
  names of the result files, :data:`HESSIAN_JSON` and :data:`SNAPSHOT_HESSIAN`;
- :mod:`fisherlab.hessian.jobs` (torch): :func:`trace_hessian_of_weights`,
  :func:`trace_hessian_of_run` and :func:`trace_hessian_of_snapshots`, the model rebuilt
  from a planned run's spec (the rules ``trace_hessian`` and ``trace_hessian_snapshots``).

The job functions are imported on first use, so that the plan (which names the files)
imports this package without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .spec import DISTRIBUTIONS, HESSIAN_JSON, METHODS, RENAMED, SNAPSHOT_HESSIAN, HessianSpec, refuse_renamed

_JOBS = ("trace_hessian_of_weights", "trace_hessian_of_run", "trace_hessian_of_snapshots", "hessian_job")

__all__ = ["DISTRIBUTIONS", "HESSIAN_JSON", "METHODS", "RENAMED", "SNAPSHOT_HESSIAN", "HessianSpec",
           "refuse_renamed", *_JOBS]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _JOBS:
        raise AttributeError(f"module 'fisherlab.hessian' has no attribute {name!r}")
    value = getattr(importlib.import_module(".jobs", __name__), name)
    globals()[name] = value
    return value
