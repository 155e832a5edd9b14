"""The run plan's vocabulary: a run, a selection, a deferred value, and the registry of
experiment families.

A *family* (Table 1's search-then-compare, the noisy-label grids, an lr sweep, ...) is a
function from the validated pipeline config to a :class:`FamilyPlan`: the runs it trains
and the selections it makes. It is registered by name with :func:`family`, and
:func:`fisherlab.plan.build_plan` calls every registered family. Adding a family is one
function here plus a config block and its schema; no new Snakemake rule.

Everything is pure Python (no torch, no Snakemake), so the plan can be built and tested
in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..runs.rundir import CHECKPOINTS, RUNS, RunDir  # noqa: F401  (RUNS, CHECKPOINTS: the pipeline's folders)
from ..runs.selection import SELECTIONS, read_selection
from ..training.train_config import TrainConfig


def strength_name(regularizer: str) -> str:
    """What a regularizer's strength is called: beta (mixup's Beta(beta, beta)), rho (SAM's
    radius) or alpha (the penalties' coefficient)."""
    return {"mixup": "beta", "sam": "rho"}.get(regularizer, "alpha")


def fmt(x: float) -> str:
    """A number as it appears in a path: 4 significant digits, the shortest form."""
    return f"{x:.4g}"


@dataclass(frozen=True)
class Ref:
    """A number known only once a selection has been made: ``value * scale`` of the
    selection file that the run's input ``name`` points to (e.g. the small lr is the
    ``lr`` selection's η* times 1/10)."""

    name: str
    scale: float = 1.0

    def resolve(self, read: Callable[[str], Mapping[str, Any]]) -> float:
        return float(read(self.name)["value"]) * self.scale


Number = float | Ref


@dataclass
class RunSpec:
    """One training run of the pipeline: where its files go, what it trains, and what it
    reads. ``train`` holds the :class:`TrainConfig` fields of its recipe (model, epochs,
    schedule, measurement cadence, ...) besides lr, regularizer and seed; ``lr`` and
    ``strength`` may be :class:`Ref`s to selection files among ``inputs``; ``fields``
    are the labels its ``summary.json`` carries (setting, role, label_noise, ...)."""

    id: str  # the path under results/runs
    family: str
    seed: int
    train: dict[str, Any]
    lr: Number
    regularizer: str = "none"
    strength: Number | None = None  # alpha (beta for mixup, rho for SAM), None for plain training
    reg_kwargs: dict[str, Any] = field(default_factory=dict)  # every, start_epoch, ...
    data: dict[str, Any] = field(default_factory=dict)  # val_size, augment
    inputs: dict[str, str] = field(default_factory=dict)  # train, test, noise, selections, init
    fields: dict[str, Any] = field(default_factory=dict)
    adopt: str | None = None  # input name of the selection whose chosen grid run this copies
    hessian: bool = False  # gets a Tr(H) measurement of its final weights
    cost: tuple[int, int] = (60, 8000)  # first-attempt runtime (minutes) and memory (MB)
    tensorboard: bool = False  # also write TensorBoard event files in <run>/tensorboard (config tensorboard)

    @property
    def path(self) -> str:
        return self.dir.path

    @property
    def dir(self) -> RunDir:
        """The run's files (:class:`fisherlab.runs.rundir.RunDir`)."""
        return RunDir.of(self.id)

    @property
    def checkpoint(self) -> str:
        return self.dir.checkpoint

    def summary(self) -> str:
        return self.dir.summary

    def independent(self) -> bool:
        """Whether the run reads nothing that other runs make (no selection, no starting
        checkpoint): it can be scheduled together with any other such run."""
        return not any(p.startswith((RUNS + "/", SELECTIONS + "/")) for p in self.inputs.values())

    def strength_name(self) -> str | None:
        if self.regularizer == "none":
            return None
        return strength_name(self.regularizer)

    def resolve(self, read: Callable[[str], Mapping[str, Any]] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
        """The :class:`TrainConfig` and the summary fields of this run. ``read(name)``
        returns the parsed selection file of input ``name`` (default: read
        ``self.inputs[name]`` from disk with :func:`read_selection`)."""
        read = read or (lambda name: read_selection(self.inputs[name]))
        lr = self.lr.resolve(read) if isinstance(self.lr, Ref) else float(self.lr)
        strength = self.strength.resolve(read) if isinstance(self.strength, Ref) else self.strength
        kwargs = dict(self.reg_kwargs)
        key = self.strength_name()
        if key is not None:
            kwargs[key] = strength
        cfg = TrainConfig(**self.train, lr=lr, regularizer=self.regularizer, regularizer_kwargs=kwargs,
                          seed=self.seed)  # fmt: skip
        labels = {"family": self.family, "regularizer": self.regularizer, "lr": lr, "alpha": None,
                  **({key: strength} if key else {}), **self.fields}  # fmt: skip
        return cfg, labels

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able; Refs as {"ref": name, "scale": s}) for Snakemake's params."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: asdict's deep copy is slow
        for k in ("lr", "strength"):
            v = getattr(self, k)
            if isinstance(v, Ref):
                out[k] = {"ref": v.name, "scale": v.scale}
        out["cost"] = list(self.cost)
        if not self.tensorboard:  # absent when off: the train rule's params of existing runs stay unchanged
            del out["tensorboard"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        d = dict(d)
        for k in ("lr", "strength"):
            if isinstance(d.get(k), Mapping):
                d[k] = Ref(d[k]["ref"], d[k]["scale"])
        d["cost"] = tuple(d.get("cost", (60, 8000)))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class SelectionSpec:
    """A data-dependent choice (η* from an lr grid, α* from an α grid, ...): the value of
    ``key`` whose run has the best validation accuracy among ``candidates`` (run ids),
    or ``fixed`` (a number in config.yaml skips the search). Written to
    results/selection/<id>.json as {key, value, source, run_dir, grid}."""

    id: str
    key: str  # lr, alpha, beta or rho
    candidates: list[str] = field(default_factory=list)
    fixed: float | None = None

    @property
    def path(self) -> str:
        return f"{SELECTIONS}/{self.id}.json"

    def inputs(self) -> list[str]:
        return [] if self.fixed is not None else [RunDir.of(c).summary for c in self.candidates]


@dataclass
class FamilyPlan:
    """What one family contributes: its runs and its selections."""

    runs: list[RunSpec] = field(default_factory=list)
    selections: list[SelectionSpec] = field(default_factory=list)

    def extend(self, other: FamilyPlan) -> FamilyPlan:
        self.runs += other.runs
        self.selections += other.selections
        return self


FamilyFn = Callable[[Mapping[str, Any]], FamilyPlan]
FAMILIES: dict[str, FamilyFn] = {}


def family(name: str) -> Callable[[FamilyFn], FamilyFn]:
    """Register ``fn(config) -> FamilyPlan`` as the experiment family ``name``."""

    def deco(fn: FamilyFn) -> FamilyFn:
        if name in FAMILIES:
            raise ValueError(f"family {name!r} is registered twice")
        FAMILIES[name] = fn
        return fn

    return deco


class PlanError(ValueError):
    """The config asks for something the plan cannot build (a missing setting, ...)."""
