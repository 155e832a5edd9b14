"""Fisher penalty and Tr(F) in PyTorch Lightning: FP (Eq. 3) added to the loss of a
LightningModule, Tr(F) (Eq. 2) logged by a callback on a fixed probe set.

    python examples/lightning_fp.py        # a few seconds on a CPU
"""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fisherlab import FisherPenaltyTerm
from fisherlab.integrations.lightning import FisherTraceCallback


class Classifier(L.LightningModule):
    def __init__(self, alpha: float = 0.01):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
        self.fp = FisherPenaltyTerm(alpha, every=10)  # recomputed every 10 steps, as in the paper

    def forward(self, x):  # what the callback measures
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)  # your own loss
        penalty = self.fp(self.net, outputs=logits, step=self.global_step)
        self.log_dict({"loss": loss, "fisher_penalty": penalty.detach()})
        return loss + penalty  # automatic optimization, clipping, AMP: as with any loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


if __name__ == "__main__":
    torch.manual_seed(0)
    x, y = torch.randn(512, 1, 8, 8), torch.randint(0, 4, (512,))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    callback = FisherTraceCallback(x[:128], every_n_steps=8, batch_trace=True, batch_size=64)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger("lightning_logs"), callbacks=[callback],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Classifier(), loader)
    for row in callback.history:
        print(f"step {row['step']:3d}  Tr(F) {row['trace_fisher']:.4g}  Tr(F_B) {row['trace_fisher_batch']:.4g}")
