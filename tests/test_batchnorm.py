"""Evaluation with recalibrated BatchNorm statistics (Supplement I.2): the statistics are
the plain averages over the training batches, and training state is left untouched."""

from __future__ import annotations

import torch
from torch import nn

from fisherlab import TrainConfig, TrainData, train
from fisherlab.training.batchnorm import recalibrated_batchnorm
from fisherlab.data import DeviceData, make_synthetic


def test_statistics_are_batch_averages_and_are_restored():
    ds = make_synthetic(96, num_classes=3, image_size=8, seed=0, split="train")
    data = DeviceData(ds)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(192, 3))
    bn = model[0]
    bn.running_mean.fill_(5.0)
    bn.momentum = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with recalibrated_batchnorm(model, data, num_batches=3, batch_size=32, seed=7) as m:
        assert not m.training
        # the same batches, drawn independently: mean of the batch means, mean of the
        # unbiased batch variances (BatchNorm's cumulative average, momentum None)
        gen = torch.Generator().manual_seed(7)
        xs = [x for _, (x, _) in zip(range(3), data.batches(32, gen))]
        means = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        vars_ = torch.stack([x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean, means, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, vars_, rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert bn.momentum == 0.3 and not model.training


def test_training_is_unchanged_by_recalibrated_evaluation(monkeypatch):
    class BNNet(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(self.body(x).flatten(1))

    from fisherlab.models import MODELS

    monkeypatch.setitem(MODELS, "_test_bnnet", BNNet)
    ds = make_synthetic(64, num_classes=3, image_size=8, seed=1, split="train")
    test = make_synthetic(32, num_classes=3, image_size=8, seed=1, split="test")
    data = TrainData(DeviceData(ds), DeviceData(test), DeviceData(test))
    base = dict(model="_test_bnnet", epochs=2, batch_size=16, lr=0.1, fisher_examples=8)
    plain = train(TrainConfig(**base), data)
    recal = train(TrainConfig(**base, bn_update_batches=2), data)
    assert [r["train_loss_running"] for r in plain.metrics] == [r["train_loss_running"] for r in recal.metrics]
    assert [r["trace_fisher"] for r in plain.curvature] == [r["trace_fisher"] for r in recal.curvature]
    for a, b in zip(plain.model.state_dict().values(), recal.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["val_loss"] for r in plain.metrics] != [r["val_loss"] for r in recal.metrics]
