"""Your own model, loss, data loader and loop: the Fisher penalty (Eq. 3) as a term of
your loss, and Tr(F) (Eq. 2) of a DataLoader measured along the way.

    python examples/own_loop.py            # a few seconds on a CPU
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fisherlab import FisherPenaltyTerm, trace_fisher

torch.manual_seed(0)
x, y = torch.randn(1024, 20), torch.randint(0, 5, (1024,))
train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
probe = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=128)  # a fixed set to measure Tr(F) on

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
fp = FisherPenaltyTerm(alpha=0.01, every=10)  # recomputed every 10 steps (Eq. 3), cached in between

step = 0
for epoch in range(3):
    for xb, yb in train:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # AMP works as with any loss term
            logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=0.1)  # your own loss
        penalty = fp(model, outputs=logits.float(), step=step)
        opt.zero_grad()
        (loss + penalty).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
    tr = trace_fisher(model, probe, generator=epoch)  # the (x, y) batches' labels are not used: yhat ~ p(y|x)
    print(f"epoch {epoch}: loss {loss.item():.3f}  FP {fp.last_penalty:.4f}  Tr(F) {tr.describe()}")
