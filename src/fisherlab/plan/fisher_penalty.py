"""Section 4's search-then-compare (Tables 1, 2, 4-7, Fig. 4 and Tr(H) of the final runs).

For every setting with ``table: 1`` or ``2`` (Supplement I.2):

1. η*: the lr search of :func:`~fisherlab.plan.settings.lr_search`.
2. α*: each regularizer at lr = η* / ``small_lr_factor`` (Table 1) or η* (Table 2) over
   10 log-spaced α from 0.1 v to 10 v, search seed; the α with the best validation
   accuracy (a number in ``alpha`` skips it).
3. The final runs at every seed: ``eta_star`` (plain, η*), ``baseline`` (plain, the
   small lr; Table 1 only) and each regularizer at the small lr with its α*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .core import FamilyPlan, Ref, SelectionSpec, family, fmt
from .settings import base_run, lr_input, lr_search, search_seed, setting

#: The Table 1 columns after η* and Baseline, in the paper's order.
REGULARIZERS = ("gpx", "gp", "fp", "gpr")


def settings_of(config: Mapping[str, Any], table: int | None = None) -> list[str]:
    """The settings that run (``run_settings``, else every one with ``table`` != 0),
    of Table ``table`` only when given."""
    names = config["run_settings"] or [n for n, s in config["settings"].items() if s["table"] != 0]
    return [n for n in names if table is None or setting(config, n)["table"] == table]


def alpha_grid(v: float) -> list[float]:
    """10 log-spaced values from 0.1 v to 10 v (Section 4, Supplement I.2)."""
    lo, hi = math.log10(0.1 * v), math.log10(10 * v)
    return [float(fmt(10 ** (lo + i * (hi - lo) / 9))) for i in range(10)]


def roles(s: Mapping[str, Any]) -> list[str]:
    """A setting's columns: η*, Baseline (Table 1 only), then its regularizers."""
    head = ["eta_star", "baseline"] if s["table"] == 1 else ["eta_star"]
    return head + [r for r in REGULARIZERS if r in s["regularizers"]]


@family("fisher_penalty")
def fisher_penalty(config: Mapping[str, Any]) -> FamilyPlan:
    plan = FamilyPlan()
    seed0 = search_seed(config)
    for name in settings_of(config):
        s = setting(config, name)
        plan.extend(lr_search(config, name))
        factor = s["small_lr_factor"] if s["table"] == 1 else 1.0
        small = Ref("lr", 1.0 / factor)
        alpha_inputs = {}
        for reg in (r for r in REGULARIZERS if r in s["regularizers"]):
            r = s["regularizers"][reg]
            grid = [] if r["alpha"] is not None else alpha_grid(r["v"])
            runs = [base_run(config, name, f"{name}/alphagrid/{reg}/alpha{fmt(a)}/seed{seed0}", "fisher_penalty",
                             seed0, small, regularizer=reg, strength=a, reg_kwargs={"every": r["every"]},
                             inputs=lr_input(name), fields={"role": "alphagrid"}) for a in grid]  # fmt: skip
            sel = SelectionSpec(f"{name}/{reg}/alpha_star", "alpha", [x.id for x in runs], r["alpha"])
            plan.extend(FamilyPlan(runs, [sel]))
            alpha_inputs[reg] = sel.path
        for role in roles(s):
            for seed in config["seeds"]:
                rid = f"{name}/final/{role}/seed{seed}"
                common = dict(inputs=lr_input(name), fields={"role": role, "table": s["table"]}, hessian=True)
                if role == "eta_star":
                    run = base_run(config, name, rid, "fisher_penalty", seed, Ref("lr"), **common)
                elif role == "baseline":
                    run = base_run(config, name, rid, "fisher_penalty", seed, small, **common)
                else:
                    common["inputs"] = {**common["inputs"], "alpha": alpha_inputs[role]}
                    run = base_run(config, name, rid, "fisher_penalty", seed, small, regularizer=role,
                                   strength=Ref("alpha"), reg_kwargs={"every": s["regularizers"][role]["every"]},
                                   **common)  # fmt: skip
                plan.runs.append(run)
    return plan
