"""fisherlab.integrations.lightning against the real Lightning (no mocks): the callback's
Tr(F) lands in the trainer's logger at the scheduled steps, with the value of a direct
trace_fisher call on the weights of that step."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import fisherlab  # noqa: E402
from fisherlab import trace_fisher, trace_fisher_batch  # noqa: E402
from fisherlab.integrations.lightning import FisherTraceCallback  # noqa: E402


class Classifier(L.LightningModule):
    def __init__(self, alpha: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.alpha = alpha

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.alpha:
            penalty = fisherlab.fisher_penalty(self.net, x, alpha=self.alpha)
            self.log("fisher_penalty", penalty, on_step=True)
            loss = loss + penalty
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)  # 8 steps


class Snapshots(L.Callback):
    """The weights after each optimizer step (and at the start), for the direct calls."""

    def __init__(self):
        self.weights = {}

    def on_train_start(self, trainer, pl_module):
        self.weights[0] = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = copy.deepcopy(pl_module.state_dict())


def _fit(tmp_path, model, callbacks):
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=CSVLogger(tmp_path, name="run"),
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=1,
                        callbacks=callbacks)  # fmt: skip
    trainer.fit(model, _loader())
    return trainer


def _csv_rows(trainer) -> list[dict]:
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def test_callback_logs_trace_fisher_at_the_scheduled_steps_with_the_direct_values(tmp_path):
    probe = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    cb = FisherTraceCallback(probe, every_n_steps=3, batch_trace=True, batch_size=10, seed=5)
    snaps = Snapshots()
    model = Classifier()
    trainer = _fit(tmp_path, model, [snaps, cb])
    rows = [r for r in _csv_rows(trainer) if r.get("trace_fisher")]
    assert [int(r["step"]) for r in rows] == [0, 3, 6]
    assert [h["step"] for h in cb.history] == [0, 3, 6]
    ref = Classifier()
    for r in rows:
        step = int(r["step"])
        ref.load_state_dict(snaps.weights[step])
        seed = 5 * 1_000_003 + step
        assert float(r["trace_fisher"]) == pytest.approx(trace_fisher(ref, probe, generator=seed), rel=1e-6)
        assert float(r["trace_fisher_batch"]) == pytest.approx(
            trace_fisher_batch(ref, probe, batch_size=10, generator=seed), rel=1e-6)
        assert float(r["trace_fisher"]) > 0
    # the weights moved, and so did Tr(F): the values are of each step's weights, not one
    assert len({r["trace_fisher"] for r in rows}) == 3
    assert float(trainer.callback_metrics["trace_fisher"]) == pytest.approx(float(rows[-1]["trace_fisher"]))
    assert model.training  # the measurement put the module back in train mode


def test_callback_takes_a_loader_as_probe_and_rejects_bad_arguments(tmp_path):
    cb = FisherTraceCallback(_loader(), every_n_steps=4, at_start=False)
    assert cb.meter.probe.shape == (64, 6)  # the inputs of every batch, targets left out
    trainer = _fit(tmp_path, Classifier(), [cb])
    assert [h["step"] for h in cb.history] == [4, 8]
    assert all(math.isfinite(h["trace_fisher"]) and h["trace_fisher"] > 0 for h in cb.history)
    assert trainer.global_step == 8
    with pytest.raises(ValueError, match="every_n_steps"):
        FisherTraceCallback(torch.zeros(2, 6), every_n_steps=0)
    with pytest.raises(TypeError, match="probe"):
        FisherTraceCallback("not a probe")


def test_fisher_penalty_in_a_lightning_module(tmp_path):
    if not hasattr(fisherlab, "fisher_penalty"):
        pytest.skip("fisherlab.fisher_penalty is not in this version")
    plain, penalised = Classifier(), Classifier(alpha=0.1)
    _fit(tmp_path / "plain", plain, [])
    trainer = _fit(tmp_path / "fp", penalised, [])
    values = [float(r["fisher_penalty"]) for r in _csv_rows(trainer) if r.get("fisher_penalty")]
    assert values and all(math.isfinite(v) and v > 0 for v in values)
    # the penalty's gradient reached the weights: the two runs ended apart
    assert not torch.allclose(plain.net[0].weight, penalised.net[0].weight)
