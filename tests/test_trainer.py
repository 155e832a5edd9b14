"""The training loop: resume is bit-identical, divergence is a status, measurement does
not perturb training, the lr schedule, and the shape of what a run records."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import CrashingData, Interrupted, without_timing

from fisherlab import TrainConfig, TrainData, every_n_epochs, multistep_lr, train
from fisherlab.data import DeviceData, make_synthetic


def config(**kw) -> TrainConfig:
    base = dict(
        model="simple_cnn", model_kwargs={"image_size": 16}, epochs=3, batch_size=32, lr=0.05,
        weight_decay=1e-4, milestones=[2], regularizer="fp",
        regularizer_kwargs={"alpha": 0.01, "every": 4}, fisher_examples=32, fisher_every=5,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("regularizer,kwargs", [("fp", {"alpha": 0.01, "every": 4}),
                                                 ("mixup", {"beta": 0.4}), ("gpr", {"alpha": 0.01})])
def test_resume_after_a_crash_is_bit_identical(tmp_path, data, regularizer, kwargs):
    cfg = config(regularizer=regularizer, regularizer_kwargs=kwargs)
    ref = train(cfg, data)

    ckpt = tmp_path / "ckpt.pt"
    crashing = TrainData(CrashingData(data.train, crash_after=9), data.val, data.test)  # epoch 2, step 3
    with pytest.raises(Interrupted):
        train(cfg, crashing, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["progress"]["epoch"] == 1
    resumed = train(cfg, data, checkpoint=ckpt)

    assert resumed.status == ref.status == "ok"
    assert without_timing(resumed.metrics) == without_timing(ref.metrics)
    assert without_timing(resumed.curvature) == without_timing(ref.curvature)
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


# (poll at which the flag turns on, the step the run stops at): polled after each step and
# once more at each epoch's end; within epochs 1 and 2, and at the ends of epochs 1 and 2
@pytest.mark.parametrize("stop_at, step", [(3, 3), (6, 6), (9, 8), (11, 10), (13, 12)])
def test_a_stop_request_saves_the_position_within_the_epoch_and_resumes_bit_identically(tmp_path, data, stop_at, step):
    # 192 examples / 32 = 6 steps per epoch; FP refreshes every 4 steps, so stops fall
    # between refreshes (the cached penalty gradient must survive) and at epoch ends
    cfg = config(fisher_every=5)
    ref = train(cfg, data)
    ckpt, steps = tmp_path / "ckpt.pt", []

    def stop():
        steps.append(None)
        return len(steps) >= stop_at  # sticky, like a received signal

    first = train(cfg, data, checkpoint=ckpt, should_stop=stop)
    assert first.status == "preempted"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["progress"]["step"] == step
    assert (saved["partial"] is None) == (step % 6 == 0)
    resumed = train(cfg, data, checkpoint=ckpt, should_stop=lambda: False)
    assert resumed.status == ref.status == "ok"
    assert without_timing(resumed.metrics) == without_timing(ref.metrics)
    assert without_timing(resumed.curvature) == without_timing(ref.curvature)
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_slurm_signals_set_the_stop_flag():
    import os
    import signal

    from fisherlab.training.preemption import StopFlag

    before = signal.getsignal(signal.SIGUSR1)
    flag = StopFlag()
    try:
        assert not flag()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag() and flag.name == "SIGUSR1"
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_finished_run_is_not_retrained(tmp_path, data):
    cfg, ckpt = config(epochs=1), tmp_path / "c.pt"
    first = train(cfg, data, checkpoint=ckpt)
    again = train(cfg, data, checkpoint=ckpt)
    assert again.metrics == first.metrics and again.status == "ok"


def test_absurd_lr_gives_status_diverged(tmp_path, data):
    ckpt = tmp_path / "c.pt"
    result = train(config(lr=1e5, regularizer="none", regularizer_kwargs={}), data, checkpoint=ckpt)
    assert result.status == "diverged"
    assert "non-finite" in result.summary["message"]
    assert result.summary["status"] == "diverged"
    assert all(math.isfinite(r["trace_fisher"]) for r in result.curvature)
    again = train(config(lr=1e5, regularizer="none", regularizer_kwargs={}), data, checkpoint=ckpt)
    assert again.status == "diverged" and again.metrics == result.metrics


def test_measurement_does_not_perturb_training(data):
    quiet = train(config(fisher_every=0), data)
    busy = train(config(fisher_every=2), data)
    assert without_timing(quiet.metrics) == [
        {**r, "trace_fisher": q["trace_fisher"]} for r, q in zip(without_timing(busy.metrics), quiet.metrics)
    ]
    for a, b in zip(quiet.model.parameters(), busy.model.parameters()):
        assert torch.equal(a, b)


def test_the_measurements_sizes_do_not_perturb_training(data):
    """Tr(F)'s examples and the noisy groups' gradient samples draw from their own random
    streams: how many there are changes no training number (tests/test_science_noisy.py
    takes 16 of each for speed)."""
    groups = {"clean": torch.arange(0, 192, 2), "noisy": torch.arange(1, 192, 2)}
    gdata = TrainData(data.train, data.val, data.test, groups)
    small = train(config(fisher_examples=4, group_examples=2), gdata)
    large = train(config(fisher_examples=64, group_examples=48), gdata)
    keep = ("train_loss", "train_acc", "val_acc", "train_acc_clean", "train_acc_noisy", "train_loss_running")
    assert [{k: r[k] for k in keep} for r in small.metrics] == [{k: r[k] for k in keep} for r in large.metrics]
    for a, b in zip(small.model.parameters(), large.model.parameters()):
        assert torch.equal(a, b)


def test_what_a_run_records(data):
    cfg = config()
    result = train(cfg, data)
    steps_per_epoch = math.ceil(192 / cfg.batch_size)
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
    assert [r["lr"] for r in result.metrics] == pytest.approx([0.05, 0.05, 0.005])
    expected_steps = sorted({0, *range(5, 3 * steps_per_epoch + 1, 5),
                             *(steps_per_epoch * e for e in (1, 2, 3))})  # fmt: skip
    assert [r["step"] for r in result.curvature] == expected_steps
    for row in result.metrics:
        assert all(math.isfinite(v) for v in row.values())
        assert 0 <= row["train_acc"] <= 1 and row["seconds"] > 0
    for row in result.curvature[1:]:
        assert row["trace_fisher"] > 0 and row["trace_fisher_batch"] > 0
        assert math.isfinite(row["train_loss_running"])
    s = result.summary
    assert s["status"] == "ok" and s["epochs_completed"] == 3 and s["seed"] == cfg.seed
    assert s["max_trace_fisher"] == max(r["trace_fisher"] for r in result.curvature if r["epoch"] >= 1)
    assert s["best_val_acc"] == max(r["val_acc"] for r in result.metrics)
    assert s["config"] == cfg.to_dict()


def test_it_learns():
    ds = make_synthetic(1024, num_classes=4, image_size=16, seed=3)
    cfg = config(epochs=6, milestones=[], regularizer="none", regularizer_kwargs={}, fisher_every=0)
    result = train(cfg, TrainData(DeviceData(ds)))
    assert result.metrics[-1]["train_acc"] > 0.45  # 4 classes: chance is 0.25


def test_bad_config_values_are_refused():
    for bad in ({"lr": -1.0}, {"epochs": 0}, {"batch_size": 0}, {"weight_decay": -1e-4}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            config(**bad)


def test_multistep_schedule():
    assert multistep_lr(0.1, 0, [150, 225]) == 0.1
    assert multistep_lr(0.1, 149, [150, 225]) == 0.1
    assert multistep_lr(0.1, 150, [150, 225]) == pytest.approx(0.01)
    assert multistep_lr(0.1, 299, [150, 225]) == pytest.approx(0.001)
    assert every_n_epochs(80, 40, 300) == [80, 120, 160, 200, 240, 280]
    with pytest.raises(ValueError):
        multistep_lr(0.1, 0, [225, 150])
