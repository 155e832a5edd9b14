"""Section 3's sweeps (Figs. 2, 7-9, 15, 18, 19; results/early_phase.csv).

A sweep trains one recipe (a setting, usually ``table: 0``) at every value of its axis,
a list of learning rates at one batch size or a list of batch sizes at one lr
(Supplement I.1), with ``seeds`` runs per value: ``results/runs/sweeps/<sweep>/
lr<v>/seed<s>`` (or ``bs<v>``). Each run measures Tr(F) densely until its running
training loss crosses ε, so that its summary holds Tr(F_i) (:mod:`fisherlab.training.measures`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .core import FamilyPlan, PlanError, RunSpec, family, fmt
from .settings import base_run, setting

#: The keys of a sweep that override its recipe's TrainConfig fields when set.
OVERRIDES = ("epochs", "epsilon", "fisher_examples", "fisher_every_early", "fisher_every", "fisher_epoch_end")


def sweep_names(config: Mapping[str, Any]) -> list[str]:
    """The sweeps that run: ``run_sweeps``, else every one with ``in_all``."""
    sweeps = config["sweeps"]
    names = sweeps["run_sweeps"] or [n for n, s in sweeps["settings"].items() if s["in_all"]]
    for name in names:
        if name not in sweeps["settings"]:
            raise PlanError(f"sweeps.run_sweeps names {name!r}, which is not under sweeps.settings:")
    return names


def axis(sw: Mapping[str, Any]) -> tuple[str, list]:
    """("lr" or "batch_size", its values): the key given as a list (lr when neither is)."""
    if isinstance(sw["batch_size"], list):
        if isinstance(sw["lr"], list):
            raise PlanError("a sweep varies one of lr and batch_size: give the other as one number")
        return "batch_size", sw["batch_size"]
    return "lr", sw["lr"] if isinstance(sw["lr"], list) else [sw["lr"]]


def run_id(name: str, key: str, value: float, seed: int) -> str:
    return f"sweeps/{name}/{'lr' if key == 'lr' else 'bs'}{fmt(value)}/seed{seed}"


def figures(config: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that are drawn, with what each draws (sweeps that run, or a setting)."""
    figs, running = config["sweeps"]["figures"], set(sweep_names(config))
    out: dict[str, Any] = {}
    for fig in ("fig2", "fig7"):
        names = [n for n in figs[fig] or [] if n in running]
        if names:
            out[fig] = out["fig8" if fig == "fig2" else "fig9"] = names
    for fig in ("fig15", "fig18", "fig19"):
        if figs[fig] in running:
            out[fig] = figs[fig]
    return out


def check(config: Mapping[str, Any]) -> None:
    sweeps = config["sweeps"]
    for name, sw in sweeps["settings"].items():
        setting(config, sw["recipe"], where=f"sweep {name!r}")
        axis(sw)
    for fig, value in sweeps["figures"].items():
        names = value if isinstance(value, list) else [value] if value else []
        if fig == "fig1":
            continue
        unknown = [n for n in names if n not in sweeps["settings"]]
        if unknown:
            raise PlanError(f"sweeps.figures.{fig} names {unknown}, not under sweeps.settings:")


@family("sweeps")
def sweeps(config: Mapping[str, Any]) -> FamilyPlan:
    check(config)
    plan = FamilyPlan()
    for name in sweep_names(config):
        sw = config["sweeps"]["settings"][name]
        key, values = axis(sw)
        train = {k: sw[k] for k in OVERRIDES if sw[k] is not None}
        # Figs. 2, 7: the best test accuracy along the path needs the test split every epoch
        train.update(until=sw["until"], fisher_resample=sw["fisher_resample"], test_every_epoch=True)
        if sw["batch_size"] is not None and key == "lr":
            train["batch_size"] = sw["batch_size"]
        for value in values:
            for seed in range(sw["seeds"]):
                point = {**train, "batch_size": int(value)} if key == "batch_size" else train
                lr = float(fmt(value)) if key == "lr" else float(sw["lr"])
                run: RunSpec = base_run(config, sw["recipe"], run_id(name, key, value, seed), "sweeps", seed, lr,
                                        train=point, fields={"sweep": name, "axis": key,
                                                             "value": float(fmt(value)), "role": "sweep"})  # fmt: skip
                run.fields["epsilon"] = run.train["epsilon"]
                plan.runs.append(run)
    return plan
