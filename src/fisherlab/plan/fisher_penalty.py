"""Section 4's search-then-compare (Tables 1, 2, 4-7, Fig. 4 and Tr(H) of the final runs).

For every setting with ``table: 1`` or ``2`` (Supplement I.2):

1. η*: the lr search of :func:`~fisherlab.plan.settings.lr_search`.
2. α*: each regularizer at lr = η* / ``small_lr_factor`` (Table 1) or η* (Table 2) over
   10 log-spaced α from 0.1 v to 10 v, search seed; the α with the best validation
   accuracy (a number in ``alpha`` skips it). With ``sam.enabled``, SAM (Foret et al.,
   ICLR 2021) is a further column of Table 1 settings, its radius ρ searched the same
   way over ``sam.rho_grid``.
3. The final runs at every seed: ``eta_star`` (plain, η*), ``baseline`` (plain, the
   small lr; Table 1 only) and each regularizer at the small lr with its α* (ρ*).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .core import FamilyPlan, Ref, SelectionSpec, family, fmt, strength_name
from .settings import base_run, lr_input, lr_search, search_seed, setting

#: The Table 1 columns after η* and Baseline, in the paper's order (SAM, beyond the
#: paper, last).
REGULARIZERS = ("gpx", "gp", "fp", "gpr", "sam")


def settings_of(config: Mapping[str, Any], table: int | None = None) -> list[str]:
    """The settings that run (``run_settings``, else every one with ``table`` != 0),
    of Table ``table`` only when given."""
    names = config["run_settings"] or [n for n, s in config["settings"].items() if s["table"] != 0]
    return [n for n in names if table is None or setting(config, n)["table"] == table]


def alpha_grid(v: float, count: int = 10) -> list[float]:
    """``count`` log-spaced values from 0.1 v to 10 v (Section 4, Supplement I.2: 10; 5 for
    TinyImageNet)."""
    lo, hi = math.log10(0.1 * v), math.log10(10 * v)
    if count == 1:
        return [float(fmt(v))]
    return [float(fmt(10 ** (lo + i * (hi - lo) / (count - 1)))) for i in range(count)]


def regularizers(config: Mapping[str, Any], s: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A setting's regularizer columns and their searches: its ``regularizers`` block,
    plus SAM on Table 1 settings when ``sam.enabled`` (a ρ grid, or a fixed ρ)."""
    regs = {r: {"grid": alpha_grid(v["v"], v["count"]), "fixed": v["alpha"], "kwargs": {"every": v["every"]}}
            for r, v in s["regularizers"].items()}  # fmt: skip
    if config["sam"]["enabled"] and s["table"] == 1:
        regs["sam"] = {"grid": [float(fmt(r)) for r in config["sam"]["rho_grid"]], "fixed": config["sam"]["rho"],
                       "kwargs": {}}  # fmt: skip
    return {r: regs[r] for r in REGULARIZERS if r in regs}


def roles(config: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
    """A setting's columns: η*, Baseline (Table 1 only), then its regularizers."""
    head = ["eta_star", "baseline"] if s["table"] == 1 else ["eta_star"]
    return head + list(regularizers(config, s))


@family("fisher_penalty")
def fisher_penalty(config: Mapping[str, Any]) -> FamilyPlan:
    plan = FamilyPlan()
    seed0 = search_seed(config)
    for name in settings_of(config):
        s = setting(config, name)
        plan.extend(lr_search(config, name))
        factor = s["small_lr_factor"] if s["table"] == 1 else 1.0
        small = Ref("lr", 1.0 / factor)
        alpha_inputs, regs = {}, regularizers(config, s)
        for reg, r in regs.items():
            key = strength_name(reg)
            grid = [] if r["fixed"] is not None else r["grid"]
            folder = f"{name}/alphagrid/{reg}" if key == "alpha" else f"{name}/{key}grid/{reg}"
            runs = [base_run(config, name, f"{folder}/{key}{fmt(a)}/seed{seed0}", "fisher_penalty", seed0, small,
                             regularizer=reg, strength=a, reg_kwargs=r["kwargs"], inputs=lr_input(name),
                             fields={"role": f"{key}grid"}) for a in grid]  # fmt: skip
            sel = SelectionSpec(f"{name}/{reg}/{key}_star", key, [x.id for x in runs], r["fixed"])
            plan.extend(FamilyPlan(runs, [sel]))
            alpha_inputs[reg] = sel.path
        for role in roles(config, s):
            for seed in config["seeds"]:
                rid = f"{name}/final/{role}/seed{seed}"
                common = dict(inputs=lr_input(name), fields={"role": role, "table": s["table"]}, hessian=True)
                if role == "eta_star":
                    run = base_run(config, name, rid, "fisher_penalty", seed, Ref("lr"), **common)
                elif role == "baseline":
                    run = base_run(config, name, rid, "fisher_penalty", seed, small, **common)
                else:
                    key = strength_name(role)  # the input holding alpha* (rho* for SAM)
                    common["inputs"] = {**common["inputs"], key: alpha_inputs[role]}
                    run = base_run(config, name, rid, "fisher_penalty", seed, small, regularizer=role,
                                   strength=Ref(key), reg_kwargs=regs[role]["kwargs"], **common)  # fmt: skip
                plan.runs.append(run)
    return plan
