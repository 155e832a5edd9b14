"""The Tr(H) jobs of the pipeline (rules ``trace_hessian`` and ``trace_hessian_snapshots``):
Tr(H) (Supplement B) of a planned run's weights, its model rebuilt from the run's own spec.

- :func:`trace_hessian_of_weights`: any weights files of one run, the same examples and
  probes for each;
- :func:`trace_hessian_of_run`: the final weights (``<run>/hessian.json``; NaN for a
  diverged run);
- :func:`trace_hessian_of_snapshots`: the weights kept along training (Section 5,
  Supplement I.4, Figs. 6, 13, 14, 21; ``<run>/hessian_snapshots.csv``).

Each takes a :class:`~fisherlab.hessian.HessianSpec` (default: the paper's M = 30) and
records its fields beside the value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..curvature import trace_hessian
from ..experiment import planned_data, resolve_device
from ..models import build_model
from ..plan import RunSpec, read_selection
from ..runs.rundir import RunDir, json_safe
from .spec import HessianSpec

_PAPER = HessianSpec()


def _spec(hessian: HessianSpec) -> HessianSpec:
    if not isinstance(hessian, HessianSpec):
        raise TypeError(f"hessian must be a HessianSpec (HessianSpec.from_config(block) for a config block), "
                        f"got {type(hessian).__name__}")  # fmt: skip
    return hessian


def trace_hessian_of_weights(
    spec: RunSpec,
    inputs: Mapping[str, str],
    weights: Mapping[str, str | os.PathLike | None],
    hessian: HessianSpec = _PAPER,
    *,
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Tr(H) (:func:`fisherlab.trace_hessian`, ``hessian``'s estimator, probes and method)
    of each weights file of a planned run (label -> state_dict path; None: not measured,
    NaN), on ``hessian.examples`` training examples (fewer if the training split is
    smaller) drawn once with ``numpy.random.default_rng(0)``, with their labels; the model
    is rebuilt from the run's own spec (model and ``model_kwargs``). The data are loaded
    once; every file gets the same examples and the same probes (generator 0), so values
    along a trajectory differ by the weights only.

    Returns label -> {trace_hessian, stderr, num_probes, distribution, method, examples}
    (``examples``: the number used)."""
    hessian = _spec(hessian)
    device = resolve_device(device)
    cfg, _ = spec.resolve(lambda name: read_selection(inputs[name]))
    data = planned_data(spec, inputs, device)
    model = build_model(cfg.model, num_classes=data.train.num_classes, **cfg.model_kwargs).to(device)
    n = min(hessian.examples, len(data.train))
    idx = np.sort(np.random.default_rng(0).choice(len(data.train), n, replace=False))
    x, y = data.train.batch(idx)
    out = {}
    for label, path in weights.items():
        est, err = float("nan"), float("nan")
        if path is not None:
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            est, err = trace_hessian(model, x, y, num_probes=hessian.num_probes, generator=0,
                                     distribution=hessian.distribution, method=hessian.method)  # fmt: skip
        out[label] = {"trace_hessian": est, "stderr": err, **hessian.to_dict(), "examples": n}
    return out


def trace_hessian_of_run(
    spec: RunSpec,
    inputs: Mapping[str, str],
    model_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    hessian: HessianSpec = _PAPER,
    *,
    device: str = "auto",
) -> dict[str, Any]:
    """Tr(H) of a finished run's weights ``model_path`` (:func:`trace_hessian_of_weights`)
    and the run's status (the record of :data:`~fisherlab.hessian.HESSIAN_JSON`). A
    diverged run gets NaN (written as null): its curvature means nothing."""
    summary = json.loads(Path(summary_path).read_text())
    ok = summary["status"] == "ok"
    out = trace_hessian_of_weights(spec, inputs, {"final": model_path if ok else None}, hessian, device=device)
    return json_safe({**out["final"], "status": summary["status"]})


def trace_hessian_of_snapshots(
    spec: RunSpec,
    inputs: Mapping[str, str],
    run_dir: str | os.PathLike,
    hessian: HessianSpec = _PAPER,
    *,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Tr(H) along training (Section 5, Supplement I.4, Fig. 14): one row per weights
    file the run kept in ``run_dir/snapshots`` (:func:`fisherlab.experiment.run`),
    ``epoch<E>.pt`` for each E of its ``keep_epochs`` and ``best.pt`` (``keep_best``:
    Tr(H_f) at the best-test-accuracy epoch, Fig. 6). Rows: snapshot, epoch, then the
    fields of :func:`trace_hessian_of_weights`, and status ("ok", or "missing" when the
    run never reached that epoch, e.g. it diverged before); the rows of
    :data:`~fisherlab.hessian.SNAPSHOT_HESSIAN`."""
    cfg, _ = spec.resolve(lambda name: read_selection(inputs[name]))
    run = RunDir(run_dir)
    summary = run.read_summary()
    kept = {RunDir.snapshot_key(e): e for e in sorted(set(cfg.keep_epochs))}
    if cfg.keep_best:
        kept[RunDir.BEST_KEY] = summary.get("kept_best_epoch")
    files = {k: Path(run.snapshot(k)) for k in kept}
    found = {k: (p if p.exists() else None) for k, p in files.items()}
    values = trace_hessian_of_weights(spec, inputs, found, hessian, device=device)
    return [json_safe({"snapshot": k, "epoch": kept[k], **values[k], "status": "ok" if found[k] else "missing"})
            for k in kept]  # fmt: skip


def hessian_job(spec: Mapping[str, Any], inputs: Mapping[str, str], hessian: Mapping[str, Any],
                output: str | os.PathLike, *, snapshots: bool, device: str = "auto", threads: int = 1) -> Any:
    """The Tr(H) rules' job (workflow/scripts/trace_hessian*.py): with ``threads`` CPU
    threads, the run ``spec`` (:meth:`RunSpec.to_dict`) and its ``inputs`` (name -> path:
    ``summary``, ``model``, the selections, ...), the config's ``hessian`` block; Tr(H) of
    the final weights (:func:`trace_hessian_of_run`, written as the run's ``hessian.json``)
    or with ``snapshots`` of each kept weights file (:func:`trace_hessian_of_snapshots`).
    ``output``: the file the rule declares, in the run's directory. Returns what it wrote."""
    torch.set_num_threads(threads)
    run, cfg, out = RunSpec.from_dict(spec), HessianSpec.from_config(hessian), RunDir(Path(output).parent)
    if snapshots:
        rows = trace_hessian_of_snapshots(run, inputs, Path(inputs["summary"]).parent, cfg, device=device)
        out.write_hessian_snapshots(rows)
        return rows
    record = trace_hessian_of_run(run, inputs, inputs["model"], inputs["summary"], cfg, device=device)
    out.write_hessian(record)
    return record
