"""A run's files on disk, and the demo entry point end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fisherlab import TrainConfig, TrainData, train
from fisherlab.__main__ import main
from fisherlab.data import DeviceData, make_synthetic
from fisherlab.runs.runio import write_run


@pytest.fixture(scope="module")
def result():
    ds = make_synthetic(64, num_classes=3, image_size=16, seed=1)
    cfg = TrainConfig(model_kwargs={"image_size": 16}, epochs=2, batch_size=16, lr=0.01,
                      fisher_examples=16, fisher_every=3)  # fmt: skip
    return train(cfg, TrainData(DeviceData(ds)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_write_run_files(tmp_path, result):
    out = write_run(result, tmp_path / "run", code_version="abc123")
    metrics, curvature = read_csv(out / "metrics.csv"), read_csv(out / "curvature.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2]
    assert list(curvature[0]) == ["step", "epoch", "trace_fisher", "trace_fisher_batch",
                                  "train_loss_running", "train_acc_running"]  # fmt: skip
    assert [int(r["step"]) for r in curvature] == [s["step"] for s in result.curvature]
    assert float(curvature[-1]["trace_fisher"]) == pytest.approx(result.curvature[-1]["trace_fisher"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["code_version"] == "abc123"
    assert summary["best_val_acc"] is None  # no validation split: NaN is written as null
    assert not list(out.glob("*.tmp"))


def test_rewriting_replaces_files_whole(tmp_path, result):
    out = tmp_path / "run"
    write_run(result, out)
    write_run(result, out, note="second")
    assert json.loads((out / "summary.json").read_text())["note"] == "second"
    assert len(read_csv(out / "metrics.csv")) == 2


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "256", "--device", "cpu"])
    printed = capsys.readouterr().out
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["lr0.001", "lr0.001-fp0.01", "lr0.01"]
    for run in runs:
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["status"] == "ok" and math.isfinite(summary["max_trace_fisher"])
        assert run in printed


def test_demo_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])


def test_experiment_load_data_and_run(tmp_path):
    from fisherlab import save_dataset
    from fisherlab.experiment import load_data, run

    save_dataset(tmp_path / "train.npz", make_synthetic(80, num_classes=3, image_size=16, seed=2))
    save_dataset(tmp_path / "test.npz", make_synthetic(20, num_classes=3, image_size=16, seed=2, split="test"))
    data = load_data(tmp_path / "train.npz", tmp_path / "test.npz", val_size=16, split_seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (64, 16, 20)
    assert abs(data.train.normalise(data.train.x).mean().item()) < 1e-4  # train-split statistics
    cfg = TrainConfig(model_kwargs={"image_size": 16}, epochs=2, batch_size=16, lr=0.01,
                      fisher_examples=16, fisher_every=2, epsilon=5.0)  # fmt: skip
    result = run(cfg, data, tmp_path / "run", log=lambda s: None, role="baseline")
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    first_below = next(r["trace_fisher"] for r in result.curvature if r["train_loss_running"] < 5.0)
    assert summary["trace_fisher_i"] == pytest.approx(first_below) and summary["role"] == "baseline"
    assert summary["trace_fisher_i_status"] == "at first measurement" and summary["epsilon"] == 5.0
    assert (tmp_path / "run/model.pt").exists()
