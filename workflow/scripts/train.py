"""Adapter: one training run of the pipeline (rules train_lr_grid, train_alpha_grid,
train_final). Resolves lr, regularizer and alpha from the wildcards and the selection
files, then calls fisherlab.experiment.run."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import torch  # noqa: E402

from fisherlab.experiment import load_data, resolve_device, run  # noqa: E402
from fisherlab.runio import code_version  # noqa: E402
from fisherlab.trainer import TrainConfig  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
s, wc = sm.params.setting, sm.wildcards
role = sm.params.get("role") or wc.role


def selected(name):
    return json.loads(Path(sm.input[name]).read_text())


if role == "lrgrid":
    lr, reg, alpha = float(wc.lr), "none", None
elif role == "alphagrid":
    lr, reg, alpha = selected("lr")["lr_small"], wc.reg, float(wc.alpha)
elif role in ("eta_star", "baseline"):
    lr, reg, alpha = selected("lr")["lr_star" if role == "eta_star" else "lr_small"], "none", None
else:
    lr, reg, alpha = selected("lr")["lr_small"], role, selected("alpha")["alpha_star"]

reg_kwargs = {} if reg == "none" else {"alpha": alpha, "every": s["regularizers"][reg]["every"]}
device = resolve_device(sm.params.device)
cfg = TrainConfig(
    model=s["model"], epochs=s["epochs"], batch_size=s["batch_size"], lr=lr,
    momentum=s["momentum"], weight_decay=s["weight_decay"], milestones=s["milestones"],
    gamma=s["gamma"], regularizer=reg, regularizer_kwargs=reg_kwargs,
    fisher_examples=s["fisher_examples"], fisher_every=s["fisher_every"],
    seed=int(wc.seed), device=device,
)  # fmt: skip
data = load_data(sm.input.train, sm.input.test, val_size=s["val_size"], augment=s["augment"],
                 device=device)  # fmt: skip
run(cfg, data, Path(sm.output.summary).parent, checkpoint=sm.params.checkpoint, epsilon=s["epsilon"],
    setting=wc.setting, role=role, regularizer=reg, lr=lr, alpha=alpha, code_version=code_version())  # fmt: skip
