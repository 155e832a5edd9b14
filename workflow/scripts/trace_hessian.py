"""Adapter: Tr(H) of a final run's model by Hutchinson's estimator (Supplement B)."""

import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))  # noqa: F821  (this checkout's fisherlab)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fisherlab import build_model, trace_hessian  # noqa: E402
from fisherlab.experiment import load_data, resolve_device  # noqa: E402
from fisherlab.runio import json_safe, write_text_atomic  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
s, p = sm.params.setting, sm.params
device = resolve_device(p.device)
summary = json.loads(open(sm.input.summary).read())
data = load_data(sm.input.train, sm.input.test, val_size=s["val_size"], device=device)
model = build_model(s["model"], num_classes=data.train.num_classes).to(device)
model.load_state_dict(torch.load(sm.input.model, map_location=device))
n = min(p.examples, len(data.train))
idx = np.sort(np.random.default_rng(0).choice(len(data.train), n, replace=False))
x, y = data.train.batch(idx)
if summary["status"] == "ok":
    est, err = trace_hessian(model, x, y, num_probes=p.probes, generator=0)
else:  # a diverged model has no meaningful curvature
    est, err = float("nan"), float("nan")
out = {"trace_hessian": est, "stderr": err, "probes": p.probes, "examples": n,
       "status": summary["status"]}  # fmt: skip
print(out)
write_text_atomic(sm.output[0], json.dumps(json_safe(out), indent=2) + "\n")
