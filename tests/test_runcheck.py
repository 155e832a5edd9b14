"""The report reads run files through checks (fisherlab.report.runcheck, issue 21 point 6):
a hand-edited or damaged summary.json, metrics.csv or curvature.csv is an error naming the
file and the key, never a number in a table next to ``ok``; real runs' files pass."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from fisherlab import TrainConfig, TrainData, train
from fisherlab.data import DeviceData, make_synthetic
from fisherlab.report import RunFileError, load_summaries, read_curvature, read_hessian, read_metrics, read_run
from fisherlab.report.runcheck import check_summary, rule_of
from fisherlab.runs.runio import write_run


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Run directories written by the trainer: ok with a validation split, ok without one,
    diverged (an absurd lr), and one with the clean/noisy groups of Section 4.1."""
    root = tmp_path_factory.mktemp("runs")
    ds = make_synthetic(80, num_classes=3, image_size=16, seed=1)
    train_ds, val_ds = ds.subset(np.arange(48)), ds.subset(np.arange(48, 80))
    cfg = dict(model_kwargs={"image_size": 16}, epochs=1, batch_size=16, fisher_examples=8, fisher_every=2)
    groups = {"clean": torch.arange(0, 32), "noisy": torch.arange(32, 48)}
    dirs = {}
    for name, lr, val, grp in [("ok", 0.01, True, None), ("noval", 0.01, False, None),
                               ("diverged", 1e6, True, None), ("groups", 0.01, True, groups)]:  # fmt: skip
        data = TrainData(DeviceData(train_ds), val=DeviceData(val_ds) if val else None, test=DeviceData(val_ds),
                         groups=grp)  # fmt: skip
        result = train(TrainConfig(lr=lr, **cfg), data)
        dirs[name] = write_run(result, root / name, setting="s", role="eta_star", lr=lr, alpha=None, seed=0)
    assert json.loads((dirs["diverged"] / "summary.json").read_text())["status"] == "diverged"
    return dirs


def test_the_trainers_run_files_pass(real_runs):
    for name, d in real_runs.items():
        s = read_run(d)
        assert s["status"] == ("diverged" if name == "diverged" else "ok")
        m, c = read_metrics(d), read_curvature(d)
        assert len(m) >= (name != "diverged") and len(c) >= 1 and all(dt.kind in "fi" for dt in m.dtypes)
    assert "train_acc_clean" in read_metrics(real_runs["groups"]).columns
    assert len(load_summaries([d / "summary.json" for d in real_runs.values()])) == 4


def edited(d, tmp_path, **changes):
    """A copy of run ``d``'s summary.json with ``changes`` (a value of ... deletes the key)."""
    summary = json.loads((d / "summary.json").read_text())
    for k, v in changes.items():
        summary.pop(k) if v is ... else summary.__setitem__(k, v)
    out = tmp_path / "edited"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_a_run_stopped_within_its_first_epoch_has_no_max_trace_fisher_and_is_read(real_runs, tmp_path):
    """max Tr(F) counts from epoch 1 (Supplement A.2): a Section 3 sweep run stopped at a
    crossing inside epoch 1 has none, and its summary is valid."""
    d = edited(real_runs["ok"], tmp_path, max_trace_fisher=None)
    assert read_run(d)["max_trace_fisher"] is None or math.isnan(read_run(d)["max_trace_fisher"])


@pytest.mark.parametrize("key, value, message", [
    ("test_acc_at_best_val", "97%", r"'97%' is not a number \(a fraction in \[0, 1\]\)"),
    ("max_trace_fisher", -5, r"-5 is out of range \(a trace of the Fisher, >= 0\)"),
    ("final_test_acc", 1.5, r"1.5 is out of range"),
    ("best_val_acc", True, r"True is not a number"),
    ("status", "done", r"'done' is not one of \['ok', 'diverged'\]"),
    ("status", ..., r"None is not one of"),
    ("trace_fisher_i_status", "crossed", r"'crossed' is not one of"),
    ("lr", 0, r"0 is out of range \(a positive number\)"),
    ("seed", -1, r"-1 is out of range \(a count"),
    ("test_acc_at_best_val", None, r"missing or null in a run whose status is ok \(with a validation split\)"),
    ("final_train_acc", ..., r"missing or null in a run whose status is ok"),
    ("epochs_completed", "2", r"'2' is not a number"),
])  # fmt: skip
def test_a_bad_summary_value_is_an_error_naming_the_file_and_the_key(real_runs, tmp_path, key, value, message):
    d = edited(real_runs["ok"], tmp_path, **{key: value})
    with pytest.raises(RunFileError, match=rf"{re.escape(str(d / 'summary.json'))}: {key}: {message}"):
        read_run(d)
    with pytest.raises(RunFileError, match=re.escape(key)):
        load_summaries([d / "summary.json"])  # the tables' and the selections' way in


def test_nan_and_infinity_literals_in_summary_json_are_refused(real_runs, tmp_path):
    d = edited(real_runs["ok"], tmp_path)
    text = (d / "summary.json").read_text()
    for literal in ("NaN", "Infinity", "-Infinity"):
        (d / "summary.json").write_text(re.sub(r'"max_trace_fisher": [^,]+', f'"max_trace_fisher": {literal}', text))
        with pytest.raises(RunFileError, match=r"max_trace_fisher: -?(nan|inf) is not a finite number"):
            read_run(d)


def test_a_reached_fisher_i_needs_its_value_and_a_diverged_run_may_hold_nulls(real_runs, tmp_path):
    d = edited(real_runs["ok"], tmp_path, trace_fisher_i_status="ok", trace_fisher_i=None)
    with pytest.raises(RunFileError, match=r"trace_fisher_i: missing or null while trace_fisher_i_status is 'ok'"):
        read_run(d)
    s = read_run(real_runs["diverged"])
    assert math.isnan(s["test_acc_at_best_val"]) or s["test_acc_at_best_val"] >= 0
    check_summary({"status": "diverged", "final_train_acc": None, "max_trace_fisher": None}, "x")


def damaged(d, tmp_path, name, edit):
    out = tmp_path / "damaged"
    out.mkdir(exist_ok=True)
    (out / name).write_text(edit((d / name).read_text()))
    return out


def _set_cell(column, value, row=0):
    def edit(text):
        lines = text.splitlines()
        header = lines[0].split(",")
        cells = lines[1 + row].split(",")
        cells[header.index(column)] = value
        lines[1 + row] = ",".join(cells)
        return "\n".join(lines) + "\n"

    return edit


@pytest.mark.parametrize("name, edit, message", [
    ("metrics.csv", _set_cell("val_acc", "97%"), r"column 'val_acc', row 1: '97%' is not a number"),
    ("metrics.csv", _set_cell("test_acc", "1.2"), r"column 'test_acc', row 1: 1.2 is out of range \(a fraction"),
    ("metrics.csv", _set_cell("train_acc", "inf"), r"column 'train_acc', row 1: inf is out of range"),
    ("metrics.csv", _set_cell("epoch", "-1"), r"column 'epoch', row 1: -1.0 is out of range \(a count"),
    ("metrics.csv", lambda t: t.replace("epoch,", "epoc,", 1), r"missing column\(s\) \['epoch'\]"),
    ("metrics.csv", lambda t: "epoch,step\n1,10\n2,20,7,8\n", r": Error tokenizing"),
    ("curvature.csv", _set_cell("trace_fisher", "-5", row=1), r"column 'trace_fisher', row 2: -5.0 is out of range"),
    ("curvature.csv", _set_cell("trace_fisher", "-inf"), r"column 'trace_fisher', row 1: -inf is out of range"),
    ("curvature.csv", _set_cell("trace_fisher_batch", "abc"), r"column 'trace_fisher_batch', row 1: 'abc'"),
    ("curvature.csv", lambda t: "\n".join(line.split(",", 1)[1] for line in t.splitlines()),
     r"missing column\(s\) \['step'\]"),
])  # fmt: skip
def test_a_damaged_csv_is_an_error_naming_the_file_and_the_column(real_runs, tmp_path, name, edit, message):
    d = damaged(real_runs["ok"], tmp_path, name, edit)
    reader = read_metrics if name == "metrics.csv" else read_curvature
    with pytest.raises(RunFileError, match=re.escape(str(d / name)) + r".*" + message):
        reader(d)


def test_an_empty_csv_is_a_run_without_rows(real_runs, tmp_path):
    """runio writes an empty file for a run that ended before its first row."""
    d = damaged(real_runs["ok"], tmp_path, "metrics.csv", lambda t: "")
    assert read_metrics(d).empty and list(read_metrics(d).columns) == ["epoch", "step"]


def test_a_missing_csv_names_its_path(tmp_path):
    with pytest.raises(RunFileError, match=re.escape(str(tmp_path / "metrics.csv"))):
        read_metrics(tmp_path)


def test_a_diverged_curve_may_hold_inf_in_a_loss_or_a_trace_and_negative_losses_pass(real_runs, tmp_path):
    d = damaged(real_runs["ok"], tmp_path, "curvature.csv", _set_cell("trace_fisher", "inf"))
    assert read_curvature(d)["trace_fisher"].iloc[0] == math.inf
    d = damaged(real_runs["ok"], tmp_path, "metrics.csv", _set_cell("train_loss", "-0.5"))
    assert read_metrics(d)["train_loss"].iloc[0] == -0.5  # a Gaussian likelihood's NLL can be negative


def test_rules_by_key_name():
    assert rule_of("train_acc_noisy")[:2] == (0.0, 1.0) and rule_of("best_train_acc_subset")[:2] == (0.0, 1.0)
    assert rule_of("grad_cosine_clean_noisy")[:2] == (-1.0, 1.0)
    assert rule_of("trace_fisher_i_status") is None and rule_of("setting") is None
    assert rule_of("trace_hessian")[:2] == (-math.inf, math.inf)  # Tr(H) may be negative


def test_a_column_the_caller_reads_is_required(real_runs, tmp_path):
    assert "val_acc" in read_metrics(real_runs["ok"], ["val_acc"])
    path = re.escape(str(real_runs["noval"] / "metrics.csv"))
    with pytest.raises(RunFileError, match=path + r": missing column\(s\) \['val_acc'\]"):
        read_metrics(real_runs["noval"], ["val_acc"])  # a figure's KeyError, now naming the file
    with pytest.raises(RunFileError, match=r"curvature.csv: missing column\(s\) \['train_acc_noisy'\]"):
        read_curvature(real_runs["ok"], ["train_acc_noisy"])


HESSIAN = {"trace_hessian": -3.5, "stderr": 0.7, "num_probes": 30, "examples": 1000, "distribution": "rademacher",
           "method": "hutchinson", "status": "ok"}  # the keys of fisherlab.hessian.trace_hessian_of_run


@pytest.mark.parametrize("changes, message", [
    ({"trace_hessian": "12"}, r"trace_hessian: '12' is not a number"),
    ({"stderr": -1}, r"stderr: -1 is out of range"),
    ({"num_probes": 0}, r"num_probes: 0 is out of range"),
    ({"status": "fine"}, r"status: 'fine' is not one of"),
    ({"trace_hessian": None}, r"trace_hessian: missing or null in a run whose status is ok"),
])  # fmt: skip
def test_a_bad_hessian_json_is_an_error_naming_it(tmp_path, changes, message):
    path = tmp_path / "hessian.json"
    path.write_text(json.dumps(HESSIAN))
    assert read_hessian(path)["trace_hessian"] == -3.5  # Tr(H) may be negative
    path.write_text(json.dumps({**HESSIAN, **changes}))
    with pytest.raises(RunFileError, match=re.escape(str(path)) + ": " + message):
        read_hessian(path)


def test_a_diverged_runs_hessian_is_null(tmp_path):
    path = tmp_path / "hessian.json"
    path.write_text(json.dumps({**HESSIAN, "trace_hessian": None, "stderr": None, "status": "diverged"}))
    assert math.isnan(read_hessian(path)["trace_hessian"])
