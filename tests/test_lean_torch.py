"""fisherlab.training.lean_torch.skip_dynamo_import: an SGD run without torch._dynamo is the same
run, bit for bit, as with it (each in a fresh process, since the import is per process)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys, torch
if sys.argv[1] == "lean":
    from fisherlab.training.lean_torch import skip_dynamo_import
    changed = skip_dynamo_import()
else:
    changed = []
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
for step in range(5):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if step == 2:  # a checkpoint's round trip, as the trainer's resume does
        opt.load_state_dict(opt.state_dict())
grad_on = torch.is_grad_enabled()
if sys.argv[1] == "plain":  # torch._dynamo is imported now: nothing is changed
    from fisherlab.training.lean_torch import skip_dynamo_import
    changed = skip_dynamo_import()
print(json.dumps({"changed": changed, "dynamo": "torch._dynamo" in sys.modules, "grad_on": grad_on,
                  "params": [p.detach().double().flatten().tolist() for p in model.parameters()]}))
"""


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sgd_without_dynamo_is_the_same_run():
    plain, lean = run("plain"), run("lean")
    assert plain["dynamo"] and not lean["dynamo"]  # the import it saves, and that it saves it
    assert set(lean["changed"]) >= {"Optimizer.zero_grad", "Optimizer.state_dict", "Optimizer.load_state_dict",
                                    "Optimizer.add_param_group", "SGD.step"}  # fmt: skip
    assert lean["params"] == plain["params"]  # the same step, bit for bit
    assert lean["grad_on"] and plain["grad_on"]  # autograd back on after each step
    assert plain["changed"] == []  # once torch._dynamo is imported, nothing is changed

