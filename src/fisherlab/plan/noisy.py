"""Section 4.1's noisy-label family (Table 3, Tables 8-9, Figs. 5, 11, 12).

Each noisy setting reuses the recipe of its ``base`` setting, with its own lr (``null``:
the base's η*), weight decay (Supplement I.3 removes it), epochs, ``every`` and
``group_examples``. Per noise fraction:

1. the baseline at every seed;
2. per regularizer, its grid at the search seed (α, or β for mixup);
3. the strength with the best (noisy) validation accuracy at its best epoch;
4. the selected strength at the other seeds; the search seed's selected run is its
   grid run, copied (an *adopted* run, not retrained).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .core import FamilyPlan, PlanError, Ref, RunSpec, SelectionSpec, family, fmt, strength_name
from .settings import base_run, lr_input, lr_search, noise_file, search_seed, setting

#: The Table 3 columns after the baseline, in the paper's order (SAM, beyond the paper, last).
REGULARIZERS = ("mixup", "gpx", "fp", "gpr", "sam")
FIGURE_REGULARIZERS = {"fig5": ("fp",), "fig11": ("fp",), "fig12": ("fp", "gpr")}


def noisy_settings(config: Mapping[str, Any]) -> list[str]:
    noisy = config["noisy"]
    names = noisy["run_settings"] or list(noisy["settings"])
    for name in names:
        if name not in noisy["settings"]:
            raise PlanError(f"noisy.run_settings names {name!r}, which is not under noisy.settings:")
    return names


def check(config: Mapping[str, Any]) -> None:
    """Refuse an inconsistent noisy block before any job."""
    noisy = config["noisy"]
    for name, ns in noisy["settings"].items():
        if ns["base"] not in config["settings"]:
            raise PlanError(f"noisy setting {name!r}: its base {ns['base']!r} is not under settings:")
        setting(config, ns["base"], where=f"noisy setting {name!r}")
    for fig in FIGURE_REGULARIZERS:
        if noisy["figures"][fig] is not None and noisy["figures"][fig] not in noisy["settings"]:
            raise PlanError(f"noisy.figures.{fig} names {noisy['figures'][fig]!r}, not under noisy.settings:")
    if figures(config) and noisy["figures"]["noise"] not in noisy["fractions"]:
        raise PlanError(f"noisy.figures.noise {noisy['figures']['noise']} is not one of noisy.fractions")


def figures(config: Mapping[str, Any]) -> dict[str, str]:
    """The figures that are drawn: configured, and of a noisy setting that runs."""
    chosen = config["noisy"]["figures"]
    running = set(noisy_settings(config))
    return {fig: chosen[fig] for fig in FIGURE_REGULARIZERS if chosen[fig] in running}


def grids(config: Mapping[str, Any], ns: Mapping[str, Any]) -> dict[str, list[float]]:
    """A noisy setting's regularizer columns and their grids, SAM's (``sam.rho_grid``)
    included when ``sam.enabled``."""
    out = dict(ns["regularizers"])
    if config["sam"]["enabled"]:
        out["sam"] = [config["sam"]["rho"]] if config["sam"]["rho"] is not None else config["sam"]["rho_grid"]
    return {r: out[r] for r in REGULARIZERS if r in out}


def prefix(name: str, noise: float) -> str:
    return f"{name}/noise{fmt(noise)}"


def grid_id(name: str, noise: float, reg: str, value: float, seed: int) -> str:
    return f"{prefix(name, noise)}/{reg}/{strength_name(reg)}{fmt(value)}/seed{seed}"


@family("noisy")
def noisy(config: Mapping[str, Any]) -> FamilyPlan:
    check(config)
    plan = FamilyPlan()
    seed0 = search_seed(config)
    for name in noisy_settings(config):
        ns = config["noisy"]["settings"][name]
        base = ns["base"]
        s = config["settings"][base]
        train = {"weight_decay": ns["weight_decay"], "epochs": ns["epochs"] or s["epochs"],
                 "group_examples": ns["group_examples"]}  # fmt: skip
        lr, lr_files = ns["lr"], {}
        if lr is None:  # the base setting's eta*
            plan.extend(lr_search(config, base))
            lr, lr_files = Ref("lr"), lr_input(base)
        for noise in config["noisy"]["fractions"]:

            def run(rid: str, seed: int, stage: str, reg: str = "none", strength=None, inputs=(), **kw) -> RunSpec:
                files = {"noise": noise_file(config, s["dataset"], noise, seed), **lr_files, **dict(inputs)}
                return base_run(config, base, rid, "noisy", seed, lr, regularizer=reg, strength=strength,
                                reg_kwargs={} if reg in ("none", "mixup", "sam") else {"every": ns["every"]},
                                train=train, inputs=files,
                                fields={"setting": name, "base": base, "label_noise": float(fmt(noise)),
                                        "role": "baseline" if reg == "none" else reg, "stage": stage},
                                **kw)  # fmt: skip

            plan.runs += [run(f"{prefix(name, noise)}/baseline/seed{seed}", seed, "final")
                          for seed in config["seeds"]]  # fmt: skip
            for reg, values in grids(config, ns).items():
                grid = [run(grid_id(name, noise, reg, v, seed0), seed0, "grid", reg, float(fmt(v)))
                        for v in values]  # fmt: skip
                sel = SelectionSpec(f"{prefix(name, noise)}/{reg}", strength_name(reg), [g.id for g in grid])
                plan.extend(FamilyPlan(grid, [sel]))
                for seed in config["seeds"]:
                    rid = f"{prefix(name, noise)}/{reg}/selected/seed{seed}"
                    choice = {"choice": sel.path}
                    plan.runs.append(run(rid, seed, "final", reg, Ref("choice"), choice,
                                         adopt="choice" if seed == seed0 else None))  # fmt: skip
    return plan


def figure_runs(plan, config: Mapping[str, Any], fig: str) -> list[str]:
    """The summaries a noisy figure draws: its setting's baseline and every grid run of
    the figure's regularizers (search seed), at ``noisy.figures.noise``."""
    name, noise = figures(config)[fig], config["noisy"]["figures"]["noise"]
    seed0 = search_seed(config)
    runs = plan.select("noisy", setting=name, label_noise=float(fmt(noise)), seed=seed0, role="baseline")
    runs += plan.select("noisy", setting=name, label_noise=float(fmt(noise)), stage="grid",
                        role=list(FIGURE_REGULARIZERS[fig]))  # fmt: skip
    return [r.summary() for r in runs]
