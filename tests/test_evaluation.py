"""Per-epoch evaluation (fisherlab.training.evaluation): every recorded value against a
brute-force per-example loop in float64, the training subset, the test split evaluated
once at the best validation epoch (equal to evaluating it every epoch), per-group
accuracies, what each row holds, and resume with the kept state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CrashingData, Interrupted, synthetic_train_data
from torch import nn

from fisherlab import TrainConfig, TrainData, train
from fisherlab.data import DeviceData
from fisherlab.training.evaluation import (
    CPU_EVAL_BATCH,
    GPU_EVAL_BATCH,
    Evaluator,
    eval_batch_size,
    predictions,
    train_subset,
)
from fisherlab.runs.runio import rows_to_csv

TIMING = {"seconds", "eval_seconds"}


class BNNet(nn.Module):
    """A small network with BatchNorm, so that the recalibrated statistics (I.2) matter."""

    def __init__(self, num_classes, image_size=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


@pytest.fixture
def bnnet(monkeypatch):
    from fisherlab.models import MODELS

    monkeypatch.setitem(MODELS, "_test_eval_bnnet", BNNet)
    return "_test_eval_bnnet"


@pytest.fixture(scope="module")
def data() -> TrainData:
    return synthetic_train_data(160, 48, 40, image_size=8, seed=5, augment=True)


def config(model, **kw) -> TrainConfig:
    base = {"model": model, "epochs": 5, "batch_size": 32, "lr": 0.2, "momentum": 0.9, "fisher_examples": 16,
            "fisher_every": 0, "bn_update_batches": 2, "train_eval_examples": 50, "eval_batch_size": 16}
    return TrainConfig(**{**base, **kw})


def brute_force(model, split: DeviceData, idx=None):
    """Mean loss and per-example correctness, one example at a time, in float64."""
    model = model.double().eval()
    idx = range(len(split)) if idx is None else idx.tolist()
    losses, correct = [], []
    with torch.no_grad():
        for i in idx:
            x, y = split.batch([i])
            logits = model(x.double())
            losses.append(F.cross_entropy(logits, y).item())
            correct.append(bool(logits.argmax(1) == y))
    return float(np.mean(losses)), torch.tensor(correct)


def test_predictions_match_a_per_example_loop(data):
    torch.manual_seed(0)
    model = BNNet(4)
    model.train()(data.train.batch(range(32))[0])  # running statistics away from their initial values
    model = model.double()
    split = data.val
    double = DeviceData.__new__(DeviceData)
    double.__dict__.update(split.__dict__)
    double.normalise = lambda x: split.normalise(x).double()  # the whole pipeline in float64
    loss, correct = predictions(model, double, batch_size=7)
    ref_loss, ref_correct = brute_force(model, split)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert torch.equal(correct.cpu(), ref_correct)
    idx = torch.tensor([3, 0, 17, 40])
    loss, correct = predictions(model, double, batch_size=3, indices=idx)
    ref_loss, ref_correct = brute_force(model, split, idx)
    assert loss == pytest.approx(ref_loss, rel=1e-12) and torch.equal(correct, ref_correct)


def test_predictions_with_a_kept_state_leave_the_model_alone(data, bnnet):
    torch.manual_seed(0)
    model, other = BNNet(4), BNNet(4)
    model.train()(data.train.batch(range(32))[0])  # running statistics away from their initial values
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with_state = predictions(other, data.test, 16, state=state)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    direct = predictions(model, data.test, 16)
    assert with_state[0] == direct[0] and torch.equal(with_state[1], direct[1])


def test_the_training_subset():
    a = train_subset(100, 1000, seed=7)
    assert torch.equal(a, train_subset(100, 1000, seed=7))
    assert len(a) == 100 and len(set(a.tolist())) == 100 and torch.equal(a, a.sort().values)
    assert not torch.equal(a, train_subset(100, 1000, seed=8))
    assert train_subset(0, 1000, 7) is None and train_subset(1000, 1000, 7) is None and train_subset(5000, 1000, 7) is None


def test_eval_batch_size_defaults():
    assert eval_batch_size(None, "cpu") == CPU_EVAL_BATCH and eval_batch_size(None, "cuda:0") == GPU_EVAL_BATCH
    assert eval_batch_size(33, "cpu") == 33


@pytest.mark.parametrize("bad", [{"train_eval_examples": -1}, {"eval_batch_size": 0}, {"test_every_epoch": "yes"}])
def test_bad_evaluation_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_rows_hold_what_was_measured_and_each_value_is_right(data, bnnet):
    cfg = config(bnnet)
    result = train(cfg, data)
    rows, s = result.metrics, result.summary
    best = max(rows, key=lambda r: r["val_acc"])
    assert best["epoch"] < cfg.epochs  # the test split at the best epoch is a deferred evaluation here
    for r in rows:
        assert {"train_loss_subset", "train_acc_subset", "val_loss", "val_acc"} <= set(r)
        assert ("train_acc" in r) == (r["epoch"] == cfg.epochs)  # the whole training split: last epoch only
        assert ("test_acc" in r) == (r["epoch"] in (best["epoch"], cfg.epochs))
        assert r["eval_seconds"] > 0
    # the last row against a brute-force evaluation of the final model (BN statistics
    # recalibrated as the evaluation did: same seed, same batches)
    from fisherlab.training.batchnorm import recalibrated_batchnorm

    last, model = rows[-1], result.model
    subset = train_subset(cfg.train_eval_examples, len(data.train), cfg.seed + 5)
    with recalibrated_batchnorm(model, data.train, cfg.bn_update_batches, cfg.batch_size,
                                cfg.seed * 1_000_003 + cfg.epochs - 1):  # fmt: skip
        ref = {suffix: brute_force(model_copy(model), split, idx) for suffix, split, idx in
               (("train_{}", data.train, None), ("train_{}_subset", data.train, subset),
                ("val_{}", data.val, None), ("test_{}", data.test, None))}  # fmt: skip
    for name, (loss, correct) in ref.items():
        assert last[name.format("loss")] == pytest.approx(loss, rel=1e-5)
        assert last[name.format("acc")] == correct.double().mean().item()
    assert s["final_train_acc"] == last["train_acc"] and s["final_test_acc"] == last["test_acc"]
    assert s["test_acc_at_best_val"] == best["test_acc"] and s["best_epoch"] == best["epoch"]
    assert math.isnan(s["best_test_acc"]) and math.isnan(s["best_train_acc"])  # not measured along the path
    assert s["best_train_acc_subset"] == max(r["train_acc_subset"] for r in rows)
    header = rows_to_csv(rows).splitlines()[0].split(",")
    assert {"train_acc", "test_acc", "train_acc_subset"} <= set(header) and len(header) == len(set(header))


def model_copy(model):
    """A copy of ``model``, which brute_force turns to float64."""
    import copy

    return copy.deepcopy(model)


def test_test_accuracy_at_the_best_epoch_equals_evaluating_every_epoch(data, bnnet):
    deferred = train(config(bnnet), data)
    every = train(config(bnnet, test_every_epoch=True), data)
    drop = TIMING | {"test_loss", "test_acc"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in deferred.metrics] == [
        {k: v for k, v in r.items() if k not in drop} for r in every.metrics
    ]  # evaluating the test split changes nothing else
    for a, b in zip(deferred.metrics, every.metrics):
        if "test_acc" in a:
            assert (a["test_loss"], a["test_acc"]) == (b["test_loss"], b["test_acc"])
    assert deferred.summary["test_acc_at_best_val"] == every.summary["test_acc_at_best_val"]
    assert every.summary["best_test_acc"] == max(r["test_acc"] for r in every.metrics)
    whole = train(config(bnnet, train_eval_examples=0), data)
    assert all(r["train_acc"] == r["train_acc_subset"] for r in whole.metrics)
    assert whole.summary["best_train_acc"] == max(r["train_acc"] for r in whole.metrics)


def test_finish_evaluates_the_kept_state(data, bnnet):
    torch.manual_seed(0)
    model = BNNet(4)
    ev = Evaluator(data, train_examples=50, group_examples=8, batch_size=16, bn_update_batches=2,
                   bn_batch_size=32, seed=0)  # fmt: skip
    measured, kept = ev.evaluate(model, 1, last=False, kept=None)
    row = {"epoch": 1, **measured}
    assert "test_acc" not in row and kept["epoch"] == 1 and kept["state"] is not None
    from fisherlab.training.batchnorm import recalibrated_batchnorm

    with recalibrated_batchnorm(model, data.train, 2, 32, seed=0):  # epoch 1 -> seed * 1_000_003 + 0
        expected = predictions(model, data.test, 16)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-3.0)  # the model moves on; the kept state does not
    measured, kept2 = ev.evaluate(model, 2, last=False, kept={**kept, "val_acc": 2.0})  # cannot beat 2.0
    row2 = {"epoch": 2, **measured}
    assert kept2["epoch"] == 1
    ev.finish(model, [row, row2], kept)
    assert (row["test_loss"], row["test_acc"]) == (expected[0], expected[1].double().mean().item())
    assert "test_acc" not in row2


def test_groups_on_the_subset_and_whole(data, bnnet):
    groups = {"clean": torch.arange(0, 160, 3), "noisy": torch.cat([torch.arange(1, 160, 3), torch.arange(2, 160, 3)])}
    gdata = TrainData(data.train, data.val, data.test, groups)
    cfg = config(bnnet, bn_update_batches=0, group_examples=10, epochs=2)
    result = train(cfg, gdata)
    subset = train_subset(cfg.train_eval_examples, 160, cfg.seed + 5)
    last = result.metrics[-1]
    model = model_copy(result.model)
    _, correct = brute_force(model, data.train)
    for g, idx in groups.items():
        members = subset[torch.isin(subset, idx)]
        assert last[f"train_acc_{g}_subset"] == pytest.approx(correct[members].double().mean().item(), abs=1e-15)
        assert last[f"train_acc_{g}"] == pytest.approx(correct[idx].double().mean().item(), abs=1e-15)
        assert f"train_acc_{g}" not in result.metrics[0] and f"train_acc_{g}_subset" in result.metrics[0]
        assert result.summary[f"final_train_acc_{g}"] == last[f"train_acc_{g}"]
    assert not any(k.endswith("_subset") for k in result.summary if k.startswith("final_"))


def test_resume_keeps_the_kept_state(tmp_path, data, bnnet):
    cfg = config(bnnet)
    ref = train(cfg, data)
    best = max(ref.metrics, key=lambda r: r["val_acc"])["epoch"]
    assert best < cfg.epochs
    ckpt = tmp_path / "c.pt"
    # an epoch draws 5 training batches and 2 for the BN statistics of its evaluation:
    # crash at the second step of the epoch after the best one
    crashing = TrainData(CrashingData(data.train, crash_after=7 * best + 2), data.val, data.test)
    with pytest.raises(Interrupted):
        train(cfg, crashing, checkpoint=ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["val_best"]["epoch"] == best and saved["val_best"]["state"] is not None
    resumed = train(cfg, data, checkpoint=ckpt)
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in resumed.metrics] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in ref.metrics
    ]
    assert torch.load(ckpt, weights_only=True)["val_best"] is None  # dropped once used
