"""Adapter: one training run of the pipeline (rules train_lr_grid, train_alpha_grid,
train_final, train_noisy, train_noisy_selected). Resolves lr, regularizer and strength
from the wildcards and the selection files, then calls fisherlab.experiment.run."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import torch  # noqa: E402

from fisherlab.experiment import load_data, resolve_device, run, setting_config  # noqa: E402
from fisherlab.preemption import StopFlag  # noqa: E402
from fisherlab.runio import code_version  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
s, wc = sm.params.setting, sm.wildcards
role = sm.params.get("role") or wc.role
extra = {}


def selected(name):
    return json.loads(Path(sm.input[name]).read_text())


def strength_kwargs(reg, value):
    """The regularizer's arguments, and the summary fields that name its strength."""
    if reg == "none":
        return {}, {"alpha": None}
    if reg == "mixup":
        return {"beta": value}, {"alpha": None, "beta": value}
    every = s["every"] if "every" in s else s["regularizers"][reg]["every"]
    return {"alpha": value, "every": every}, {"alpha": value}


if role == "lrgrid":
    lr, reg, alpha = float(wc.lr), "none", None
elif role == "alphagrid":
    lr, reg, alpha = selected("lr")["lr_small"], wc.reg, float(wc.alpha)
elif role in ("eta_star", "baseline"):
    lr, reg, alpha = selected("lr")["lr_star" if role == "eta_star" else "lr_small"], "none", None
elif role == "noisy":  # Section 4.1: the strength comes from the path or the selection
    lr = s["lr"] if s["lr"] is not None else selected("lr")["lr_star"]
    reg = sm.params.regularizer
    if reg == "none":
        alpha = None
    elif "hyper" in wc.keys():
        alpha = float(wc.hyper.removeprefix("alpha").removeprefix("beta"))
    else:
        alpha = selected("choice")["value"]
    extra = {"label_noise": float(wc.noise), "base": s["base"]}
    role = "baseline" if reg == "none" else reg
else:
    lr, reg, alpha = selected("lr")["lr_small"], role, selected("alpha")["alpha_star"]

reg_kwargs, strength = strength_kwargs(reg, alpha)
device = resolve_device(sm.params.device)
cfg = setting_config(s, lr=lr, regularizer=reg, regularizer_kwargs=reg_kwargs, seed=int(wc.seed), device=device)
data = load_data(sm.input.train, sm.input.test, val_size=s["val_size"], augment=s["augment"],
                 device=device, noise_path=sm.input.get("noise"))  # fmt: skip
stop = StopFlag()  # SIGTERM / SIGUSR1 from SLURM before a time-out: save the state, exit 1, resume on retry
run(cfg, data, Path(sm.output.summary).parent, checkpoint=sm.params.checkpoint, epsilon=s["epsilon"], should_stop=stop,
    setting=wc.setting, role=role, regularizer=reg, lr=lr, **strength,
    code_version=code_version(), **extra)  # fmt: skip
