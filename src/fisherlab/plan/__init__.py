"""The run plan: the paper's experimental design as data.

``build_plan(config)`` turns the validated pipeline config (config.yaml plus overlays,
with the schema's defaults filled in) into a :class:`Plan`: every run of every
registered family, with its path, its full training spec and the files it reads, and
every selection (η*, α*, ...) with the runs it chooses among. The Snakemake rules, the
scripts, the tables and the figures all read this one object, so one function names
every path. Pure Python: no torch, no Snakemake.

>>> plan = build_plan(config)                       # doctest: +SKIP
>>> spec = plan.run("simplecnn_c10/final/fp/seed0")  # doctest: +SKIP
>>> cfg, fields = spec.resolve()                     # TrainConfig + summary labels
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import fisher_penalty, interventions, noisy, sweeps  # noqa: F401  (each module registers its family)
from .core import (
    CHECKPOINTS,
    FAMILIES,
    RUNS,
    SELECTIONS,
    FamilyPlan,
    PlanError,
    Ref,
    RunSpec,
    SelectionSpec,
    family,
    fmt,
    read_selection,
)
from ..runs.rundir import RunDir
from ..runs.selection import SelectionError
from .settings import MODEL_COST, data_files

__all__ = [
    "CHECKPOINTS",
    "FAMILIES",
    "MODEL_COST",
    "RUNS",
    "SELECTIONS",
    "FamilyPlan",
    "Plan",
    "PlanError",
    "Ref",
    "RunSpec",
    "SelectionError",
    "SelectionSpec",
    "build_plan",
    "data_files",
    "family",
    "fmt",
    "read_selection",
    "summaries",
]


@dataclass
class Plan:
    """Every run and selection of a config, by id (see :func:`build_plan`)."""

    config: Mapping[str, Any]
    runs: dict[str, RunSpec] = field(default_factory=dict)
    selections: dict[str, SelectionSpec] = field(default_factory=dict)

    def run(self, run_id: str) -> RunSpec:
        try:
            return self.runs[run_id]
        except KeyError:
            raise PlanError(f"{RUNS}/{run_id} is not a run of this config's plan") from None

    def selection(self, sel_id: str) -> SelectionSpec:
        try:
            return self.selections[sel_id]
        except KeyError:
            raise PlanError(f"{SELECTIONS}/{sel_id}.json is not a selection of this config's plan") from None

    def selection_at(self, path: str) -> SelectionSpec:
        return self.selection(path.removeprefix(SELECTIONS + "/").removesuffix(".json"))

    def select(self, family: str | None = None, **fields: Any) -> list[RunSpec]:
        """The runs of ``family`` (any, when None) whose summary fields equal ``fields``
        (a list or tuple value matches any of its items), in plan order."""

        def match(run: RunSpec) -> bool:
            for k, want in fields.items():
                have = run.fields.get(k, run.seed if k == "seed" else None)
                if not (have in want if isinstance(want, (list, tuple, set)) else have == want):
                    return False
            return True

        return [r for r in self.runs.values() if (family is None or r.family == family) and match(r)]

    def adopted(self) -> list[RunSpec]:
        return [r for r in self.runs.values() if r.adopt is not None]

    def inputs(self, run_id: str) -> dict[str, str]:
        """The files a run's job reads: its data, selections, noise file, ..."""
        return dict(self.run(run_id).inputs)

    def adoption_inputs(self, run_id: str) -> dict[str, Any]:
        """An adopted run's job reads its selection and the grid runs it chose among."""
        spec = self.run(run_id)
        path = spec.inputs[spec.adopt]
        return {"choice": path, "grid": self.selection_at(path).inputs()}


def summaries(runs: Iterable[RunSpec], file: str = RunDir.SUMMARY) -> list[str]:
    """The paths of ``file`` (a name of :class:`~fisherlab.runs.rundir.RunDir`) in each run's directory."""
    return [r.dir.file(file) for r in runs]


def build_plan(config: Mapping[str, Any], families: Iterable[str] | None = None) -> Plan:
    """The plan of ``config`` (validated, defaults filled in): the runs and selections of
    every registered family (or of ``families``). Raises :class:`PlanError` when the
    config names something that does not exist, or when two families define the same
    run or selection differently."""
    plan = Plan(config)
    for name in FAMILIES if families is None else families:
        part = FAMILIES[name](config)
        for run in part.runs:
            _add(plan.runs, run.id, run, "run")
        for sel in part.selections:
            _add(plan.selections, sel.id, sel, "selection")
    _check_inputs(plan)
    return plan


def _check_inputs(plan: Plan) -> None:
    """Every selection a run reads is one the plan makes."""
    for run in plan.runs.values():
        for name, path in run.inputs.items():
            if path.startswith(SELECTIONS + "/") and path.removeprefix(SELECTIONS + "/").removesuffix(".json") not in plan.selections:
                raise PlanError(f"run {run.id}: its input {name!r} ({path}) is no selection of the plan")


def _add(table: dict, key: str, item: Any, what: str) -> None:
    if key in table and table[key] != item:
        raise PlanError(f"two families define the {what} {key!r} differently")
    table[key] = item
