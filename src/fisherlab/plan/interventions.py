"""Early phase II: when and how Tr(F) is penalised (Sections 4-5, Supplements A.4, C, E,
F, I.4). Four families, one per kind of experiment, each drawn by the figures of
config.yaml's ``interventions`` block (a figure's block set to null is left out):

- ``late_fp`` (Fig. 3): FP switched on at epoch E, at the small lr (η* /
  ``small_lr_factor``) with the Table 1 α* of the same setting (both Refs to the
  ``fisher_penalty`` family's selections). E = 0 is that family's final FP run itself,
  so it is not trained twice; the figure's lines are its η* and Baseline runs.
- ``two_phase`` (Figs. 6, 13): phase 1 trains one model per configuration (``high`` and
  ``low`` regularization) for ``phase1_epochs``; phase 2 starts one run per seed from
  each phase-1 model's final weights (input ``init``) under the low configuration for the
  rest of ``epochs`` (the count of the whole run, I.4: 20 + 230 = 250, one lr schedule
  over both phases), tests every epoch and keeps the weights of its best test accuracy
  (``keep_best``) for Tr(H_f).
- ``hessian_along`` (Figs. 14, 21): runs that keep their weights every
  ``hessian_every`` epochs (``keep_epochs``, 0 = the initial weights), whose Tr(H) the
  pipeline measures afterwards (one Tr(H) job per run, not inside training).
- ``alpha_sweep`` (Figs. 16, 17, 20): an α grid of one FP variant (f = ``every``,
  FP-exact of Eq. 6, the penalty on the first ``examples`` of the batch) at lr =
  ``lr_scale`` x η*, with plain reference runs.

Every family honours ``run_settings``: a figure (or a panel of one) runs only when its
settings are among them (all when null), so an overlay restricted to its own settings
plans none of the paper's runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..hessian.spec import SNAPSHOT_HESSIAN  # noqa: F401  (old import path; RunDir.HESSIAN_SNAPSHOTS)
from .core import SELECTIONS, FamilyPlan, PlanError, Ref, RunSpec, family, fmt
from .fisher_penalty import settings_of
from .settings import base_run, lr_input, lr_search, search_seed, setting

#: Each figure of the block and the family that runs it.
FIGURES = {"fig3": "late_fp", "fig6": "two_phase", "fig13": "two_phase", "fig14": "hessian_along",
           "fig16": "alpha_sweep", "fig17": "alpha_sweep", "fig20": "alpha_sweep", "fig21": "hessian_along"}  # fmt: skip


def block(config: Mapping[str, Any], fig: str) -> Mapping[str, Any] | None:
    return config.get("interventions", {}).get(fig)


def selected(config: Mapping[str, Any], name: str) -> bool:
    """Whether setting ``name`` runs: it is in ``run_settings`` (every setting when null)."""
    return config["run_settings"] is None or name in config["run_settings"]


def log_grid(low: float, high: float, count: int) -> list[float]:
    """``count`` values log-spaced from ``low`` to ``high`` (Supplement C's α grids),
    rounded as in paths (:func:`~fisherlab.plan.core.fmt`)."""
    if count == 1:
        return [float(fmt(low))]
    a, b = math.log10(low), math.log10(high)
    return [float(fmt(10 ** (a + i * (b - a) / (count - 1)))) for i in range(count)]


def tag(lr: float, batch_size: int) -> str:
    return f"lr{fmt(lr)}_bs{batch_size}"


# --------------------------------------------------------------------------- Fig. 3


def late_fp_settings(config: Mapping[str, Any]) -> list[str]:
    """Fig. 3's settings that run: those of its block among Table 1's running settings."""
    b = block(config, "fig3")
    if b is None:
        return []
    running = settings_of(config, 1)
    for name in b["settings"]:
        if "fp" not in setting(config, name, where="interventions.fig3.settings")["regularizers"]:
            raise PlanError(f"interventions.fig3: setting {name!r} has no fp regularizer (Fig. 3 uses its α*)")
    return [n for n in b["settings"] if n in running]


def late_fp_seeds(config: Mapping[str, Any]) -> list[int]:
    seeds = block(config, "fig3")["seeds"] or config["seeds"]
    if not set(seeds) <= set(config["seeds"]):
        raise PlanError(f"interventions.fig3.seeds {seeds} must be among seeds {config['seeds']} "
                        "(E = 0, η* and Baseline are the final runs at those seeds)")  # fmt: skip
    return seeds


def late_fp_plan(config: Mapping[str, Any]) -> FamilyPlan:
    plan = FamilyPlan()
    for name in late_fp_settings(config):
        s = config["settings"][name]
        for e in block(config, "fig3")["start_epochs"]:
            if e >= s["epochs"]:
                raise PlanError(f"interventions.fig3: start epoch {e} is not below {name}'s {s['epochs']} epochs")
            if e == 0:
                continue  # the Table 1 FP run (fisher_penalty family)
            for seed in late_fp_seeds(config):
                plan.runs.append(base_run(
                    config, name, f"{name}/late_fp/start{e}/seed{seed}", "late_fp", seed,
                    Ref("lr", 1.0 / s["small_lr_factor"]), regularizer="fp", strength=Ref("alpha"),
                    reg_kwargs={"every": s["regularizers"]["fp"]["every"], "start_epoch": e},
                    inputs={**lr_input(name), "alpha": f"{SELECTIONS}/{name}/fp/alpha_star.json"},
                    fields={"role": "late_fp", "start_epoch": e}))  # fmt: skip
    return plan


@family("late_fp")
def late_fp(config: Mapping[str, Any]) -> FamilyPlan:
    return late_fp_plan(config)


def late_fp_figure_runs(plan, config: Mapping[str, Any]) -> list[RunSpec]:
    """Fig. 3's runs: its late-FP runs and the Table 1 final η*, Baseline and FP runs
    (FP from epoch 0) of its settings and seeds."""
    names, seeds = late_fp_settings(config), late_fp_seeds(config)
    runs = plan.select("late_fp", setting=names, seed=seeds)
    return runs + plan.select("fisher_penalty", setting=names, seed=seeds, role=["eta_star", "baseline", "fp"])


# --------------------------------------------------------------------------- Figs. 6, 13

TWO_PHASE = ("fig6", "fig13")


def _hyper(s: Mapping[str, Any], h: Mapping[str, Any]) -> tuple[float, int]:
    return h["lr"], h.get("batch_size") or s["batch_size"]


def two_phase_plan(config: Mapping[str, Any], fig: str) -> dict[str, list[RunSpec]]:
    """``{"high": [phase-1 run, *its phase-2 runs], "low": [...]}`` of figure ``fig``
    (empty when the figure does not run)."""
    b = block(config, fig)
    if b is None or not selected(config, b["setting"]):
        return {}
    name = b["setting"]
    s = setting(config, name, where=f"interventions.{fig}")
    lr2, bs2 = _hyper(s, b["low"])
    e1, total = b["phase1_epochs"], b["epochs"]
    if total <= e1:
        raise PlanError(f"interventions.{fig}: epochs ({total}) counts phase 1 too and must exceed "
                        f"phase1_epochs ({e1})")  # fmt: skip
    # one schedule over the whole run (I.4: the lr drops at 80, 150, 200, training ends at 250):
    # phase 1 takes its first e1 epochs, phase 2 the rest, its milestones shifted to its own count
    milestones2 = [m - e1 for m in b["milestones"] if m > e1]
    out = {}
    for level in ("high", "low"):
        lr1, bs1 = _hyper(s, b[level])
        seed1 = b["phase1_seed"]
        p1 = base_run(config, name, f"{name}/two_phase/{tag(lr1, bs1)}_e{b['phase1_epochs']}/seed{seed1}", "two_phase",
                      seed1, lr1, train={"epochs": e1, "batch_size": bs1, "milestones": [m for m in b["milestones"] if m < e1]},
                      fields={"role": "phase1", "batch_size": bs1})  # fmt: skip
        init = p1.dir.model  # its final weights: those of epoch phase1_epochs
        prefix = f"{name}/two_phase/from_{tag(lr1, bs1)}_e{b['phase1_epochs']}_seed{seed1}/{tag(lr2, bs2)}_e{b['epochs']}"
        phase2 = []
        for seed in b["seeds"]:
            if seed == seed1:
                raise PlanError(f"interventions.{fig}: phase 2 needs other seeds than phase 1's ({seed1})")
            phase2.append(base_run(
                config, name, f"{prefix}/seed{seed}", "two_phase", seed, lr2,
                train={"epochs": total - e1, "batch_size": bs2, "milestones": milestones2, "init_weights": init,
                       "keep_best": "test_acc", "test_every_epoch": True},
                inputs={"init": init}, fields={"role": "phase2", "batch_size": bs2, "phase1": p1.id}))  # fmt: skip
        out[level] = [p1, *phase2]
    return out


@family("two_phase")
def two_phase(config: Mapping[str, Any]) -> FamilyPlan:
    return FamilyPlan([r for fig in TWO_PHASE for runs in two_phase_plan(config, fig).values() for r in runs])


# --------------------------------------------------------------------------- Figs. 14, 21


def _hessian_epochs(epochs: int, every: int) -> list[int]:
    """0 (the initial weights), every, 2 every, ... up to ``epochs``."""
    return list(range(0, epochs + 1, every))


def hessian_along_plan(config: Mapping[str, Any], fig: str) -> list[RunSpec]:
    """The runs of Fig. 14 or 21 (:func:`hessian_along_labelled`)."""
    return [run for run, _ in hessian_along_labelled(config, fig)]


def hessian_along_labelled(config: Mapping[str, Any], fig: str) -> list[tuple[RunSpec, dict[str, str]]]:
    """Fig. 14: per panel (a setting), every value of its sets A and B of ``vary`` (lr or
    batch size), the other hyperparameter fixed, at every seed, for ``epochs`` with the
    block's milestones. Fig. 21: per panel, every lr of its list at the setting's batch
    size and schedule (``epochs``: null keeps the setting's), at the search seed. Both
    keep the weights every ``hessian_every`` epochs. Each run comes with its label:
    {"set": its set's name} (Fig. 14) or {} (Fig. 21)."""
    b = block(config, fig)
    if b is None:
        return []
    runs = []
    for name, panel in b["panels"].items():
        if not selected(config, name):
            continue
        s = setting(config, name, where=f"interventions.{fig}.panels")
        epochs = b["epochs"] or s["epochs"]
        train = {"epochs": epochs, "keep_epochs": _hessian_epochs(epochs, b["hessian_every"])}
        if fig == "fig14":  # TA: the maximum test accuracy along the trajectory
            train.update(milestones=b["milestones"], test_every_epoch=True)
            vary, seeds = panel["vary"], b["seeds"] or config["seeds"]
            if vary == "batch_size" and panel["lr"] is None:
                raise PlanError(f"interventions.fig14.panels.{name}: varying the batch size needs an lr")
            points = [((v, panel["batch_size"] or s["batch_size"]) if vary == "lr" else (panel["lr"], v),
                       {"set": set_name}) for set_name, values in panel["sets"].items() for v in values]  # fmt: skip
        else:
            seeds, points = [search_seed(config)], [((lr, s["batch_size"]), {}) for lr in panel]
        for (lr, bs), label in points:
            for seed in seeds:
                run = base_run(config, name, f"{name}/hessian_along/{tag(lr, bs)}_e{epochs}/seed{seed}",
                               "hessian_along", seed, float(fmt(lr)), train={**train, "batch_size": bs},
                               fields={"role": "hessian_along", "batch_size": bs})  # fmt: skip
                runs.append((run, label))
    return runs


@family("hessian_along")
def hessian_along(config: Mapping[str, Any]) -> FamilyPlan:
    return FamilyPlan([r for fig in ("fig14", "fig21") for r in hessian_along_plan(config, fig)])


# --------------------------------------------------------------------------- Figs. 16, 17, 20

ALPHA_SWEEPS = ("fig16", "fig17", "fig20")


def alpha_sweep_plan(config: Mapping[str, Any], fig: str) -> FamilyPlan:
    """Figure ``fig``'s α grid, one per ``every`` (f, FP only), and its plain reference
    runs, at the search seed; lr = ``lr_scale`` x η* (null: 1 / ``small_lr_factor``),
    ``batch_size`` (null: the setting's). Includes the setting's lr search."""
    b = block(config, fig)
    if b is None or not selected(config, b["setting"]):
        return FamilyPlan()
    name = b["setting"]
    s = setting(config, name, where=f"interventions.{fig}")
    plan = lr_search(config, name)
    seed = search_seed(config)
    scale = b["lr_scale"] if b["lr_scale"] is not None else 1.0 / s["small_lr_factor"]
    bs, reg, m = b["batch_size"] or s["batch_size"], b["regularizer"], b["examples"]
    if m is not None and reg != "fp":
        raise PlanError(f"interventions.{fig}: examples (the penalty on part of the batch) is an fp option")
    common = dict(train={"batch_size": bs}, inputs=lr_input(name))
    for every in b["every"] if reg == "fp" else [None]:
        variant = reg + (f"_f{every}" if every else "") + (f"_m{m}" if m else "")
        kwargs = {**({"every": every} if every else {}), **({"examples": m} if m else {})}
        for a in log_grid(**b["alphas"]):
            plan.runs.append(base_run(
                config, name, f"{name}/alpha_sweep/{variant}_bs{bs}_eta{fmt(scale)}/alpha{fmt(a)}/seed{seed}",
                "alpha_sweep", seed, Ref("lr", scale), regularizer=reg, strength=a, reg_kwargs=kwargs,
                fields={"role": "alpha_sweep", "variant": variant, "every": every, "examples": m, "batch_size": bs,
                        "lr_scale": scale}, **common))  # fmt: skip
    for r in b["references"]:
        plan.runs.append(base_run(config, name, f"{name}/alpha_sweep/none_bs{bs}_eta{fmt(r)}/seed{seed}", "alpha_sweep",
                                  seed, Ref("lr", r), fields={"role": "reference", "variant": "none", "batch_size": bs,
                                                              "lr_scale": r}, **common))  # fmt: skip
    return plan


@family("alpha_sweep")
def alpha_sweep(config: Mapping[str, Any]) -> FamilyPlan:
    plan = FamilyPlan()
    for fig in ALPHA_SWEEPS:
        plan.extend(alpha_sweep_plan(config, fig))
    return plan


# --------------------------------------------------------------------------- figures


def figure_runs(config: Mapping[str, Any], fig: str, plan=None) -> list[RunSpec]:
    """The runs figure ``fig`` draws (``plan``: the built plan, needed by Fig. 3 for the
    ``fisher_penalty`` family's runs)."""
    kind = FIGURES[fig]
    if kind == "late_fp":
        return late_fp_figure_runs(plan, config) if late_fp_settings(config) else []
    if kind == "two_phase":
        return [r for runs in two_phase_plan(config, fig).values() for r in runs]
    if kind == "hessian_along":
        return hessian_along_plan(config, fig)
    return [r for r in alpha_sweep_plan(config, fig).runs if r.family == "alpha_sweep"]


def figure_labels(config: Mapping[str, Any], fig: str) -> dict[str, dict[str, Any]]:
    """What a figure needs to know of its runs beyond their summaries, by run directory:
    two-phase runs {"level": "high" | "low", "phase": 1 | 2}, Fig. 14's {"set": name}."""
    kind = FIGURES[fig]
    if kind == "two_phase":
        return {r.path: {"level": level, "phase": 1 if i == 0 else 2}
                for level, runs in two_phase_plan(config, fig).items() for i, r in enumerate(runs)}  # fmt: skip
    if kind == "hessian_along":
        return {r.path: label for r, label in hessian_along_labelled(config, fig) if label}
    return {}


def snapshot_runs(runs: list[RunSpec]) -> list[RunSpec]:
    """The runs that keep weights (keep_epochs or keep_best): each gets a Tr(H) job."""
    return [r for r in runs if r.train.get("keep_epochs") or r.train.get("keep_best")]


def figure_inputs(config: Mapping[str, Any], fig: str, plan=None) -> list[str]:
    """What figure ``fig``'s rule reads: each run's summary, and the Tr(H) of its kept
    weights (:data:`fisherlab.hessian.SNAPSHOT_HESSIAN`) where it keeps any."""
    runs = figure_runs(config, fig, plan)
    return [r.summary() for r in runs] + [r.dir.hessian_snapshots for r in snapshot_runs(runs)]


def figures(config: Mapping[str, Any], plan=None) -> list[str]:
    """The figures of the block that are drawn: configured (not null) and with runs."""
    return [fig for fig in FIGURES if block(config, fig) is not None and figure_runs(config, fig, plan)]
