# Validation, wildcard constraints and input functions. Wiring only.
import math
import os
import signal

import numpy as np
from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml", set_default=True)

SETTINGS = config["run_settings"] or [n for n, s in config["settings"].items() if s.get("table", 1) != 0]
BUILTIN_DATASETS = ("cifar10", "cifar100", "synthetic", "tinyimagenet", "imagenet")
LOCAL = config["data"]["local"]
for _name in SETTINGS:
    if _name not in config["settings"]:
        raise ValueError(f"run_settings names {_name!r}, which is not under settings:")
    _dataset = config["settings"][_name]["dataset"]
    if _dataset not in (*BUILTIN_DATASETS, *LOCAL):
        raise ValueError(
            f"setting {_name!r} uses dataset {_dataset!r}: not one of {', '.join(BUILTIN_DATASETS)} "
            "or a name under data.local"
        )

REGULARIZERS = ["fp", "gp", "gpx", "gpr"]  # the Table 1 columns after eta* and Baseline
ROLES = ["eta_star", "baseline"] + REGULARIZERS
TABLES = expand("results/{table}.{ext}", table=["table1", "table4", "table5", "table6"], ext=["csv", "md"])
TABLES2 = expand("results/{table}.{ext}", table=["table2", "table7"], ext=["csv", "md"])
RUN = "results/runs/{setting}"
RUN_FILES = {"summary": "summary.json", "metrics": "metrics.csv", "curvature": "curvature.csv",
             "model": "model.pt"}  # fmt: skip
SEARCH_SEED = config["seeds"][0]


wildcard_constraints:
    setting="[a-z0-9_]+",
    dataset="|".join(BUILTIN_DATASETS),
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
    """The columns of a setting: eta*, Baseline (Table 1 only), then its regularizers."""
    s = config["settings"][name]
    head = ["eta_star", "baseline"] if s["table"] == 1 else ["eta_star"]
    return head + [r for r in REGULARIZERS if r in s["regularizers"]]


def lr_factor(s):
    """The regularizers run at eta* / this: small_lr_factor in Table 1, 1 in Table 2."""
    return s["small_lr_factor"] if s["table"] == 1 else 1.0


def alpha_grid(s, reg):
    """10 log-spaced values from 0.1 v to 10 v (Section 4, Supplement I.2)."""
    v = s["regularizers"][reg]["v"]
    return [float(fmt(a)) for a in np.logspace(math.log10(0.1 * v), math.log10(10 * v), 10)]


def dataset_files(wc):
    return dataset_paths(setting(wc)["dataset"])


def dataset_paths(name):
    """The prepared train and test files of a dataset."""
    if name in LOCAL:
        return dict(LOCAL[name])
    root = config["data"]["root"]
    return {"train": f"{root}/{name}/train.npz", "test": f"{root}/{name}/test.npz"}


def train_file(name):
    return dataset_paths(name)["train"]


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


def final_runs(file="summary.json", table=None):
    """The final runs of every setting (of Table ``table`` only, when given)."""
    return [
        f"results/runs/{name}/final/{role}/seed{seed}/{file}"
        for name in SETTINGS
        if table is None or config["settings"][name]["table"] == table
        for role in roles(name)
        for seed in config["seeds"]
    ]


def table_settings(table):
    return [name for name in SETTINGS if config["settings"][name]["table"] == table]


# First-attempt cost of a model (minutes per epoch of 50k 32x32 images on one GPU, with
# the Tr(F) measurements; memory in MB): rough figures that a setting's resources
# override. Retries double both.
MODEL_COST = {
    "simple_cnn": (0.2, 8000),
    "vgg11": (0.4, 12000),
    "wrn44_3": (1.5, 16000),
    "wrn44_3_skipinit": (1.5, 16000),
    "densenet40_12": (2.0, 16000),
    "resnet26": (0.4, 8000),
    "resnet32": (0.5, 8000),
    "resnet52": (0.8, 12000),
    "resnet56": (0.8, 12000),
    "resnet18_fixup": (3.0, 48000),
}


def train_resources(attempt_scale, recipe=setting):
    """runtime (minutes) and mem_mb of a training job: the setting's, or computed from
    its model and epochs (runtime = 10 + 1.5 x epochs x minutes per epoch), multiplied by
    attempt_scale at each retry."""

    def cost(wc):
        s = recipe(wc)
        res, (per_epoch, mem) = s.get("resources", {}), MODEL_COST.get(s["model"], (1.0, 16000))
        runtime = res.get("runtime") or math.ceil(10 + 1.5 * s["epochs"] * (res.get("minutes_per_epoch") or per_epoch))
        return runtime, res.get("mem_mb") or mem

    def runtime(wc, attempt):
        return cost(wc)[0] * attempt_scale ** (attempt - 1)

    def mem_mb(wc, attempt):
        return cost(wc)[1] * attempt_scale ** (attempt - 1)

    return runtime, mem_mb


def _slurm_resources(gpus):
    """Account, partition (config, else SBATCH_ACCOUNT / SBATCH_PARTITION), the GPUs and
    the pre-time-out signal, as resources the SLURM plugin turns into sbatch flags; on one
    machine they are ignored."""
    slurm = config["slurm"]
    out = {}
    account = slurm["account"] or os.environ.get("SBATCH_ACCOUNT")
    partition = slurm["partition"] or os.environ.get("SBATCH_PARTITION")
    if account:
        out["slurm_account"] = account
    if partition:
        out["slurm_partition"] = partition
    if gpus and slurm["gpus"]:
        out["gpu"] = slurm["gpus"]
    if gpus and slurm["signal_seconds"]:
        out["slurm_extra"] = f"'--signal=USR1@{slurm['signal_seconds']}'"
    return out


# In the SLURM job step that runs one rule, this snakemake ignores SIGUSR1 and SIGTERM
# (its children inherit that, and the training script installs its own handlers): SLURM's
# warning before a time limit, or a preemption, then reaches the training script, which
# saves its state and exits non-zero, instead of killing the step around it; the retry
# resumes the run (fisherlab.preemption). SIGKILL after KillWait still ends everything.
if os.environ.get("SLURM_STEP_ID", "").isdigit():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


SLURM_GPU = _slurm_resources(gpus=True)  # training and measurement jobs (the rest are localrules)


TRAIN_RUNTIME, TRAIN_MEM = train_resources(2)


# --- noisy labels (Section 4.1): Table 3, Tables 8-9, Figs. 5, 11, 12 -----------------

NOISY = config["noisy"]
NOISY_SETTINGS = NOISY["run_settings"] or list(NOISY["settings"])
NOISY_REGS = ["mixup", "gpx", "fp", "gpr"]  # the Table 3 columns after the baseline
NRUN = "results/runs/{setting}/noise{noise}"
for _name in NOISY_SETTINGS:
    if _name not in NOISY["settings"]:
        raise ValueError(f"noisy.run_settings names {_name!r}, which is not under noisy.settings:")
for _name, _ns in NOISY["settings"].items():
    if _ns["base"] not in config["settings"]:
        raise ValueError(f"noisy setting {_name!r}: its base {_ns['base']!r} is not under settings:")
    _dataset = config["settings"][_ns["base"]]["dataset"]
    if _dataset not in (*BUILTIN_DATASETS, *LOCAL):
        raise ValueError(f"noisy setting {_name!r}: base dataset {_dataset!r} is unknown")
for _fig in ("fig5", "fig11", "fig12"):
    if NOISY["figures"][_fig] is not None and NOISY["figures"][_fig] not in NOISY["settings"]:
        raise ValueError(f"noisy.figures.{_fig} names {NOISY['figures'][_fig]!r}, not under noisy.settings:")


wildcard_constraints:
    noise=r"[0-9.]+",
    nreg="mixup|gpx|fp|gpr",
    hyper=r"(alpha|beta)[0-9.e+-]+",
    ndataset="[a-z0-9_]+",


def noisy_setting(wc):
    """A noisy setting resolved over its base: the base's recipe, with its own lr,
    weight decay, epochs, every and group_examples."""
    ns = NOISY["settings"][wc.setting]
    merged = {**config["settings"][ns["base"]], **{k: v for k, v in ns.items() if v is not None}}
    merged["lr"] = ns["lr"]
    merged["epochs"] = ns["epochs"] or config["settings"][ns["base"]]["epochs"]
    return merged


def hyper_name(reg):
    return "beta" if reg == "mixup" else "alpha"


def noise_file(dataset, noise, seed):
    return f"{config['data']['root']}/{dataset}/noise/frac{noise}_seed{seed}.csv"


def noisy_inputs(wc):
    """Data, the noise file and, when the lr is the base's eta*, the base's lr selection."""
    ns = NOISY["settings"][wc.setting]
    dataset = config["settings"][ns["base"]]["dataset"]
    files = dataset_paths(dataset)
    files["noise"] = noise_file(dataset, wc.noise, wc.seed)
    if ns["lr"] is None:
        files["lr"] = f"results/selection/{ns['base']}/lr_star.json"
    return files


def noisy_grid(name, reg):
    return [fmt(v) for v in NOISY["settings"][name]["regularizers"][reg]]


def noisy_regs(name):
    return [r for r in NOISY_REGS if r in NOISY["settings"][name]["regularizers"]]


def noisy_grid_summaries(wc):
    return [f"{NRUN}/{wc.nreg}/{hyper_name(wc.nreg)}{v}/seed{SEARCH_SEED}/summary.json".format(
        setting=wc.setting, noise=wc.noise) for v in noisy_grid(wc.setting, wc.nreg)]  # fmt: skip


def noisy_final_runs(names=None, file="summary.json"):
    """Per noisy setting, noise and seed: the baseline and each regularizer's selected run."""
    out = []
    for name in names or NOISY_SETTINGS:
        for noise in NOISY["fractions"]:
            for seed in config["seeds"]:
                prefix = NRUN.format(setting=name, noise=fmt(noise))
                out.append(f"{prefix}/baseline/seed{seed}/{file}")
                out += [f"{prefix}/{reg}/selected/seed{seed}/{file}" for reg in noisy_regs(name)]
    return out


def noisy_figure_runs(name, regs):
    """The runs a figure draws: the baseline and every grid run of ``regs`` (search seed)."""
    prefix = NRUN.format(setting=name, noise=fmt(NOISY["figures"]["noise"]))
    out = [f"{prefix}/baseline/seed{SEARCH_SEED}/summary.json"]
    for reg in regs:
        if reg in noisy_regs(name):
            out += [f"{prefix}/{reg}/{hyper_name(reg)}{v}/seed{SEARCH_SEED}/summary.json" for v in noisy_grid(name, reg)]
    return out


NOISY_RUNTIME, NOISY_MEM = train_resources(2, noisy_setting)
NOISY_TABLES = expand("results/{table}.{ext}", table=["table3", "table8", "table9"], ext=["csv", "md"])
# a figure is drawn when its setting is configured and among the noisy settings that run
FIGURES = {fig: NOISY["figures"][fig] for fig in ("fig5", "fig11", "fig12") if NOISY["figures"][fig] in NOISY_SETTINGS}
NOISY_FIGURES = [f"results/{fig}.png" for fig in FIGURES]
if NOISY_FIGURES and NOISY["figures"]["noise"] not in NOISY["fractions"]:
    raise ValueError(f"noisy.figures.noise {NOISY['figures']['noise']} is not one of noisy.fractions")
