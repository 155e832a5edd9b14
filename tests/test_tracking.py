"""fisherlab.tracking against the real trackers (no mocks, no network): a tiny training
run sends its metrics and Tr(F) rows to TensorBoard event files, a W&B offline run and an
MLflow file store, each read back with the library's own reader; the text log keeps one
line per epoch. And the pipeline's ``tensorboard`` switch reaches the run."""

from __future__ import annotations

import glob
import json
import math
import struct
import subprocess
import sys
import time

import pytest
from helpers import synthetic_train_data

from fisherlab import TrainConfig, TrainData, train
from fisherlab.tracking import Sink, split_log
from test_experiment import dataset, tiny_config  # noqa: F401  (dataset: a fixture)


@pytest.fixture(scope="module")
def data() -> TrainData:
    return synthetic_train_data(96, 32)


def config(**kw) -> TrainConfig:
    base = dict(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=2, batch_size=32, lr=0.05,
                fisher_examples=16, fisher_every=2, train_eval_examples=32)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _finite(rows, key):
    return [(r["step"], r[key]) for r in rows if math.isfinite(r.get(key, math.nan))]


def _scalars(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def tracked(data, tmp_path_factory):
    """One run (2 epochs, 5 Tr(F) measurements) sent to a text log, TensorBoard and MLflow."""
    from fisherlab.tracking import MLflowSink, TensorBoardSink

    root = tmp_path_factory.mktemp("tracked")
    lines = []
    with TensorBoardSink(root / "tb") as tb, MLflowSink((root / "mlruns").as_uri(), experiment="fisherlab-test",
                                                       run_name="tiny", params={"lr": 0.05}) as ml:  # fmt: skip
        result = train(config(), data, log=[lines.append, tb, ml])
    return root, lines, ml, result


def test_tensorboard_sink_gets_every_row_and_the_text_log_one_line_per_epoch(tracked):
    root, lines, _, result = tracked
    assert len(lines) == 2 and all(line.startswith("epoch") for line in lines)
    assert glob.glob(str(root / "tb" / "events.out.tfevents.*"))
    tf = _scalars(root / "tb", "curvature/trace_fisher")
    assert [s for s, _ in tf] == [r["step"] for r in result.curvature] == [0, 2, 3, 4, 6]
    assert [v for _, v in tf] == pytest.approx([r["trace_fisher"] for r in result.curvature], rel=1e-6)
    val = _scalars(root / "tb", "epoch/val_acc")
    assert val == [(r["step"], pytest.approx(r["val_acc"])) for r in result.metrics]
    assert len(_scalars(root / "tb", "curvature/trace_fisher_batch")) == 5  # Tr(F_B) too


def test_mlflow_sink_writes_a_local_store_read_back_by_the_client(tracked):
    from mlflow.tracking import MlflowClient

    root, _, sink, result = tracked
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.05"}
    hist = sorted((m.step, m.value) for m in client.get_metric_history(sink.run_id, "curvature/trace_fisher"))
    assert hist == [(s, pytest.approx(v)) for s, v in _finite(result.curvature, "trace_fisher")]
    train_acc = sorted((m.step, m.value) for m in client.get_metric_history(sink.run_id, "epoch/train_acc_subset"))
    assert train_acc == [(s, pytest.approx(v)) for s, v in _finite(result.metrics, "train_acc_subset")]


def _wandb_records(path):
    """The records of a .wandb file (LevelDB log format: 32 KiB blocks of chunks with a
    7-byte header (crc, length, type), after a 7-byte file header ':W&B', magic, version)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, parts, out = 7, 32768, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and n == 0):  # block trailer / padding
            pos += left
            continue
        parts.append(data[pos + 7 : pos + 7 + n])
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            out.append(record)
            parts = []
    return out


def _wandb_history(run_dir, timeout=20.0):
    t0 = time.monotonic()
    while True:  # the wandb-core service may still be writing the file after finish() returns
        (path,) = glob.glob(f"{run_dir}/wandb/offline-run-*/run-*.wandb")
        rows = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                for r in _wandb_records(path) if r.WhichOneof("record_type") == "history"]  # fmt: skip
        if rows or time.monotonic() - t0 > timeout:
            return rows
        time.sleep(0.2)


def test_wandb_sink_offline_writes_its_run(tmp_path, data, monkeypatch):
    from fisherlab.tracking import WandbSink

    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(k, v)
    with WandbSink(project="fisherlab-test", dir=tmp_path, config={"lr": 0.05}) as sink:
        result = train(config(epochs=1), data, log=sink)
    rows = _wandb_history(tmp_path)
    tf = [(r["_step"], r["curvature/trace_fisher"]) for r in rows if "curvature/trace_fisher" in r]
    assert tf == [(s, pytest.approx(v)) for s, v in _finite(result.curvature, "trace_fisher")]
    val = [(r["_step"], r["epoch/val_acc"]) for r in rows if "epoch/val_acc" in r]
    assert val == [(result.metrics[0]["step"], pytest.approx(result.metrics[0]["val_acc"]))]


class Rows(Sink):
    def __init__(self):
        self.rows, self.flushes = [], 0

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def flush(self):
        self.flushes += 1


def test_a_resumed_run_sends_only_its_new_rows_and_bad_log_targets_are_type_errors(tmp_path, data):
    class StopAfterFirstEpoch:
        def __init__(self):
            self.calls = 0

        def __call__(self):
            self.calls += 1
            return self.calls == 2  # after the first epoch's last step: stop at its end

    first, second = Rows(), Rows()
    ckpt = tmp_path / "ckpt.pt"
    stopped = train(config(epochs=2), data, checkpoint=ckpt, log=first, should_stop=StopAfterFirstEpoch())
    assert stopped.status == "preempted"
    done = train(config(epochs=2), data, checkpoint=ckpt, log=second)
    steps = [s for s, m in first.rows + second.rows if "curvature/trace_fisher" in m]
    assert steps == [r["step"] for r in done.curvature]  # each measurement sent once, in order
    assert sum("epoch/val_acc" in m for _, m in first.rows + second.rows) == len(done.metrics)
    with pytest.raises(TypeError, match="log must be"):
        split_log([print, 3])


def test_importing_fisherlab_imports_no_tracker_or_framework():
    code = ("import sys, fisherlab, fisherlab.training.trainer, fisherlab.tracking, fisherlab.experiment; "
            "print(sorted(m for m in ('lightning', 'transformers', 'tensorboard', 'wandb', 'mlflow') "
            "if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_tensorboard_switch_reaches_every_run_and_stays_out_of_params_when_off():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate
    from test_plan import PAPER, SCHEMA, load

    from fisherlab.plan import RunSpec, build_plan

    assert PAPER["tensorboard"] is False  # the schema's default, as config.yaml says
    on = build_plan(load({"tensorboard": True}))
    assert all(spec.tensorboard for spec in on.runs.values())
    spec = next(iter(on.runs.values()))
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).tensorboard is True
    # off: the train rule's params are those of before the switch existed (no reruns)
    assert not any("tensorboard" in s.to_dict() for s in build_plan(PAPER).runs.values())
    with pytest.raises(WorkflowError, match="tensorboard"):
        validate({**PAPER, "tensorboard": "yes"}, SCHEMA)


def test_a_planned_run_with_the_switch_writes_event_files(tmp_path, dataset):
    from fisherlab.experiment import run_planned
    from fisherlab.plan import build_plan

    cfg = tiny_config(dataset, "simple_cnn", {})
    cfg["tensorboard"] = True
    spec = build_plan(cfg).run("tiny/final/eta_star/seed0")
    inputs = {**spec.inputs, "lr": str(tmp_path / "lr.json")}
    (tmp_path / "lr.json").write_text(json.dumps({"key": "lr", "value": 0.01, "source": "config"}))
    result = run_planned(spec, inputs, device="cpu", out_dir=tmp_path / "run", checkpoint=tmp_path / "c.pt",
                         log=lambda s: None)  # fmt: skip
    assert (tmp_path / "run" / "metrics.csv").exists()
    events = glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
    assert len(events) == 1
    assert _scalars(tmp_path / "run" / "tensorboard", "epoch/val_acc") == [
        (result.metrics[0]["step"], pytest.approx(result.metrics[0]["val_acc"]))]
