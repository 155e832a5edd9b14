# Validation, wildcard constraints and input functions. Wiring only.
import math

import numpy as np
from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml", set_default=True)

SETTINGS = config["run_settings"] or list(config["settings"])
LOCAL = config["data"]["local"]
for _name in SETTINGS:
    if _name not in config["settings"]:
        raise ValueError(f"run_settings names {_name!r}, which is not under settings:")
    _dataset = config["settings"][_name]["dataset"]
    if _dataset not in ("cifar10", "cifar100", "synthetic", *LOCAL):
        raise ValueError(
            f"setting {_name!r} uses dataset {_dataset!r}: not cifar10, cifar100, synthetic "
            "or a name under data.local"
        )

REGULARIZERS = ["fp", "gp", "gpx", "gpr"]  # the Table 1 columns after eta* and Baseline
ROLES = ["eta_star", "baseline"] + REGULARIZERS
TABLES = expand("results/{table}.{ext}", table=["table1", "table4", "table5", "table6"], ext=["csv", "md"])
RUN = "results/runs/{setting}"
RUN_FILES = {"summary": "summary.json", "metrics": "metrics.csv", "curvature": "curvature.csv",
             "model": "model.pt"}  # fmt: skip
SEARCH_SEED = config["seeds"][0]


wildcard_constraints:
    setting="[a-z0-9_]+",
    dataset="cifar10|cifar100|synthetic",
    reg="fp|gp|gpx|gpr",
    role="|".join(ROLES),
    seed=r"\d+",
    lr=r"[0-9.e+-]+",
    alpha=r"[0-9.e+-]+",


def fmt(x):
    """A number as it appears in a path: the shortest round-trip form."""
    return f"{x:.4g}"


def run_outputs(prefix):
    """The named outputs of a training run under ``prefix``."""
    return {name: prefix + file for name, file in RUN_FILES.items()}


def setting(wc):
    return config["settings"][wc.setting]


def roles(name):
    """The Table 1 columns of a setting: eta*, Baseline, then its regularizers."""
    regs = config["settings"][name]["regularizers"]
    return ["eta_star", "baseline"] + [r for r in REGULARIZERS if r in regs]


def alpha_grid(s, reg):
    """10 log-spaced values from 0.1 v to 10 v (Section 4, Supplement I.2)."""
    v = s["regularizers"][reg]["v"]
    return [float(fmt(a)) for a in np.logspace(math.log10(0.1 * v), math.log10(10 * v), 10)]


def dataset_files(wc):
    name = setting(wc)["dataset"]
    if name in LOCAL:
        return dict(LOCAL[name])
    root = config["data"]["root"]
    return {"train": f"{root}/{name}/train.npz", "test": f"{root}/{name}/test.npz"}


def lr_grid_summaries(wc):
    s = setting(wc)
    if s.get("lr_star") is not None:
        return []
    return expand(f"{RUN}/lrgrid/lr{{lr}}/seed{SEARCH_SEED}/summary.json",
                  setting=wc.setting, lr=[fmt(lr) for lr in s["lr_grid"]])


def alpha_grid_summaries(wc):
    s = setting(wc)
    if s["regularizers"][wc.reg]["alpha"] is not None:
        return []
    return expand(f"{RUN}/alphagrid/{{reg}}/alpha{{alpha}}/seed{SEARCH_SEED}/summary.json",
                  setting=wc.setting, reg=wc.reg, alpha=[fmt(a) for a in alpha_grid(s, wc.reg)])


def selections(wc):
    """The selection files a final run of this role needs."""
    files = {"lr": f"results/selection/{wc.setting}/lr_star.json"}
    if wc.role in REGULARIZERS:
        files["alpha"] = f"results/selection/{wc.setting}/{wc.role}/alpha_star.json"
    return files


def final_runs(file="summary.json"):
    return [
        f"results/runs/{name}/final/{role}/seed{seed}/{file}"
        for name in SETTINGS
        for role in roles(name)
        for seed in config["seeds"]
    ]


def train_resources(attempt_scale):
    def runtime(wc, attempt):
        return setting(wc).get("resources", {}).get("runtime", 60) * attempt_scale ** (attempt - 1)

    def mem_mb(wc, attempt):
        return setting(wc).get("resources", {}).get("mem_mb", 8000) * attempt_scale ** (attempt - 1)

    return runtime, mem_mb


TRAIN_RUNTIME, TRAIN_MEM = train_resources(2)
