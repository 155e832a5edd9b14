"""Storage faults (issue 16): an unusable checkpoint is moved aside and the run resumes
from the previous generation (bit-identical to an uninterrupted run) or starts fresh; at
every instant of a save a complete generation exists; a full disk or a refused write is
one clear error naming the path and the cause, with the previous file intact and no
temporary file left; foreign files in the results tree are refused with their name."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CrashingData, Interrupted, without_timing
from test_trainer import config

from fisherlab import REGULARIZERS, TrainConfig, TrainData, atomic, train
from fisherlab.atomic import StorageError, atomic_write, write_text_atomic
from fisherlab.training.checkpoint import drop_checkpoint, load_checkpoint, previous, save_atomic, save_checkpoint
from fisherlab.data import (
    DatasetFormatError,
    ImageDataset,
    load_dataset,
    prepare_synthetic,
    save_dataset,
)
from fisherlab.data.noise import (
    make_noisy_labels,
    prepare_noisy_labels,
    save_noisy_labels,
)
from fisherlab.experiment import load_data, run
from fisherlab.report import write_table

CORRUPT_NAME = re.compile(r"^ckpt\.pt(\.prev)?\.corrupt-\d{8}T\d{6}Z(-\d+)?$")


@pytest.fixture(scope="module")
def reference() -> dict:
    """Uninterrupted runs, by config: the results every resumed run must equal."""
    return {}


def uninterrupted(reference: dict, data: TrainData, cfg: TrainConfig):
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in reference:
        reference[key] = train(cfg, data)
    return reference[key]


def assert_identical(result, ref) -> None:
    """Same status, metrics, curvature (timings aside) and weights, bit for bit."""
    assert result.status == ref.status == "ok"
    assert without_timing(result.metrics) == without_timing(ref.metrics)
    assert without_timing(result.curvature) == without_timing(ref.curvature)
    for (name, a), b in zip(ref.model.state_dict().items(), result.model.state_dict().values()):
        assert torch.equal(a, b), name


def crash_after_two_epochs(cfg: TrainConfig, data: TrainData, ckpt: Path) -> None:
    """A run killed in epoch 3: ``ckpt`` holds epoch 2, ``ckpt.prev`` epoch 1."""
    crashing = TrainData(CrashingData(data.train, crash_after=15), data.val, data.test)  # 6 steps/epoch
    with pytest.raises(Interrupted):
        train(cfg, crashing, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["progress"]["epoch"] == 2
    assert torch.load(previous(ckpt), weights_only=True)["progress"]["epoch"] == 1


def checkpoint_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("checkpoint ")]


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).rglob("*.tmp"))


class FromAnotherVersion:
    """A class that a checkpoint of another code version might have pickled."""


def truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # a copy cut short by a quota or a disk fault


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def unpicklable(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "regularizer": FromAnotherVersion()}, path)


def missing_key(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, path)


def other_layout(path: Path) -> None:
    ckpt = torch.load(path, weights_only=True)  # as if a later code version renamed a layer
    torch.save({**ckpt, "model": {f"renamed.{k}": v for k, v in ckpt["model"].items()}}, path)


def empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage, reason", [
    (truncate, "truncated or corrupt"),
    (random_bytes, "truncated or corrupt"),
    (unpicklable, "truncated or corrupt"),  # weights_only refuses a foreign class
    (missing_key, "missing keys ['optimizer']"),
    (other_layout, "does not fit this run (RuntimeError: Error(s) in loading state_dict for SimpleCNN: Missing key(s)"),
    (empty, "empty file"),
])  # fmt: skip
def test_an_unusable_checkpoint_is_moved_aside_and_the_previous_generation_resumes_bit_identically(
    tmp_path, data, reference, damage, reason
):
    cfg = config()
    ckpt = tmp_path / "ckpt.pt"
    crash_after_two_epochs(cfg, data, ckpt)
    damage(ckpt)
    damaged = ckpt.read_bytes()

    lines = []
    result = train(cfg, data, checkpoint=ckpt, log=lines.append)

    assert_identical(result, uninterrupted(reference, data, cfg))
    [line] = checkpoint_lines(lines)  # one line: the path, the reason, where it went, what resumed
    [moved] = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert CORRUPT_NAME.match(moved.name), moved.name
    assert moved.read_bytes() == damaged  # moved aside, never deleted
    assert line.startswith(f"checkpoint {ckpt} cannot be used: ") and reason in line, line
    assert f"moved to {moved}" in line and line.endswith(f"resuming from {previous(ckpt)}"), line
    assert "\n" not in line
    assert result.summary["checkpoint_events"] == [
        {"path": str(ckpt), "reason": line.split("cannot be used: ")[1].split("; moved to")[0],
         "moved_to": str(moved), "resumed_from": str(previous(ckpt))}
    ]  # fmt: skip
    # the run then saved on: both generations are good again, no temporary file
    assert torch.load(ckpt, weights_only=True)["progress"]["status"] == "ok"
    assert torch.load(previous(ckpt), weights_only=True)["progress"]["epoch"] == 2
    assert temporaries(tmp_path) == []


def test_checkpoints_of_another_config_are_moved_aside_and_the_run_starts_fresh(tmp_path, data, reference):
    ckpt = tmp_path / "ckpt.pt"
    crash_after_two_epochs(config(), data, ckpt)  # two generations, both of lr 0.05
    other = config(lr=0.1)

    lines = []
    result = train(other, data, checkpoint=ckpt, log=lines.append)

    assert_identical(result, uninterrupted(reference, data, other))
    assert len(checkpoint_lines(lines)) == 2
    for line, path in zip(checkpoint_lines(lines), (ckpt, previous(ckpt))):
        assert line.startswith(f"checkpoint {path} cannot be used: belongs to another configuration "
                               "(differs in ['lr'])") and line.endswith("starting fresh"), line  # fmt: skip
    events = result.summary["checkpoint_events"]
    assert [e["path"] for e in events] == [str(ckpt), str(previous(ckpt))]
    assert all(e["resumed_from"] is None and Path(e["moved_to"]).is_file() for e in events)
    assert all(CORRUPT_NAME.match(Path(e["moved_to"]).name) for e in events)


def test_both_generations_unreadable_start_fresh_and_the_summary_file_records_it(tmp_path, data, reference):
    cfg = config()
    ckpt = tmp_path / "ckpt" / "ckpt.pt"
    ckpt.parent.mkdir()
    crash_after_two_epochs(cfg, data, ckpt)
    truncate(ckpt)
    random_bytes(previous(ckpt))

    lines = []
    result = run(cfg, data, tmp_path / "run", checkpoint=ckpt, log=lines.append)

    assert_identical(result, uninterrupted(reference, data, cfg))
    assert len(checkpoint_lines(lines)) == 2
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert [e["path"] for e in summary["checkpoint_events"]] == [str(ckpt), str(previous(ckpt))]
    assert [e["resumed_from"] for e in summary["checkpoint_events"]] == [None, None]


def test_an_event_survives_later_resumes(tmp_path, data, reference):
    """Resumed from the previous generation, then stopped and resumed again: the final
    summary still records the checkpoint that was moved aside."""
    cfg = config()
    ckpt = tmp_path / "ckpt.pt"
    crash_after_two_epochs(cfg, data, ckpt)
    truncate(ckpt)
    polls = []
    first = train(cfg, data, checkpoint=ckpt, should_stop=lambda: polls.append(0) or len(polls) >= 3)
    assert first.status == "preempted" and len(first.summary["checkpoint_events"]) == 1
    result = train(cfg, data, checkpoint=ckpt)
    assert_identical(result, uninterrupted(reference, data, cfg))
    assert result.summary["checkpoint_events"] == first.summary["checkpoint_events"]


def test_at_every_instant_of_a_save_a_complete_generation_exists(tmp_path, data, reference, monkeypatch):
    """Snapshot the checkpoint directory just before and after each rename of every save
    (a crash can only happen between such steps) and load each snapshot: a complete,
    usable generation is always there, of the epoch just saved or the one before."""
    cfg = config()
    ckpt = tmp_path / "run" / "ckpt.pt"
    snapshots, real_replace = [], os.replace

    def snapshot():
        dst = tmp_path / f"snap{len(snapshots)}"
        shutil.copytree(ckpt.parent, dst)
        snapshots.append(dst)

    def replace(src, dst):
        snapshot()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    train(cfg, data, checkpoint=ckpt)
    monkeypatch.setattr(os, "replace", real_replace)
    snapshot()

    # saves after epochs 1, 2, 3: the first has one rename (nothing to keep), the others two
    assert len(snapshots) == 1 + 2 + 2 + 1
    usable = []
    for snap in snapshots:
        copy = shutil.copytree(snap, snap.with_name(snap.name + "-loaded"))  # loading removes temporaries
        loaded = load_checkpoint(copy / "ckpt.pt", lambda c: c["progress"]["epoch"])
        assert loaded.events == [], snap  # never a half-written checkpoint
        usable.append(loaded.value)
    assert usable == [None, 1, 1, 2, 2, 3]
    # between the two renames of a save: only the previous generation and the complete
    # new file under its temporary name; a run started there resumes from the former
    between = snapshots[2]
    assert sorted(p.name for p in between.iterdir() if not p.name.endswith(".tmp")) == ["ckpt.pt.prev"]
    assert len(temporaries(between)) == 1
    lines = []
    result = train(cfg, data, checkpoint=between / "ckpt.pt", log=lines.append)
    assert_identical(result, uninterrupted(reference, data, cfg))
    assert checkpoint_lines(lines) == [(f"checkpoint {between / 'ckpt.pt'} is missing (a write was interrupted); "
                                        f"resuming from {previous(between / 'ckpt.pt')}")]
    assert temporaries(between) == [] and result.summary["checkpoint_events"] == []


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_every_regularizer_state_loads_safely(tmp_path, data, name):
    """Checkpoints are read with weights_only=True: every regularizer's state, mid-epoch
    position included, must be plain tensors and containers, or its runs would never
    resume."""
    kwargs = {"fp": {"alpha": 0.01, "every": 4}, "gp": {"alpha": 0.01, "every": 4}, "gpx": {"alpha": 0.01},
              "gpr": {"alpha": 0.01}, "fp_exact": {"alpha": 0.01}, "mixup": {"beta": 0.4},
              "sam": {"rho": 0.05}}.get(name, {})  # fmt: skip
    cfg, ckpt, polls = config(regularizer=name, regularizer_kwargs=kwargs, epochs=2), tmp_path / "c.pt", []
    first = train(cfg, data, checkpoint=ckpt, should_stop=lambda: polls.append(0) or len(polls) >= 9)
    assert first.status == "preempted"
    loaded = load_checkpoint(ckpt)
    assert loaded.events == [] and loaded.value["partial"] is not None


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs mounted at tmp_path/disk (the tests run as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root and CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system is full; return it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as f:
        while True:
            f.write(b"\0")
    return filler


def files_of(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_job_on_a_full_disk_stops_with_one_clear_error_and_resumes_once_there_is_space(
    small_disk, data, reference
):
    cfg = config()
    ckpt, out = small_disk / "checkpoints/run/checkpoint.pt", small_disk / "runs/run"
    crashing = TrainData(CrashingData(data.train, crash_after=9), data.val, data.test)  # epoch 2
    with pytest.raises(Interrupted):
        run(cfg, crashing, out, checkpoint=ckpt, log=lambda s: None)
    before = ckpt.read_bytes()
    filler = fill(small_disk)

    with pytest.raises(StorageError) as info:
        run(cfg, data, out, checkpoint=ckpt, log=lambda s: None)  # the save after epoch 2 finds no space

    message = str(info.value)
    assert f"cannot write {ckpt}: no space left on device (ENOSPC)" in message and "\n" not in message
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpt)
    assert ckpt.read_bytes() == before and not previous(ckpt).exists()
    assert temporaries(small_disk) == [] and not out.exists()

    filler.unlink()  # space again: the rerun resumes from the intact checkpoint
    result = run(cfg, data, out, checkpoint=ckpt, log=lambda s: None)
    assert_identical(result, uninterrupted(reference, data, cfg))
    assert result.summary["checkpoint_events"] == []
    assert sorted(p.name for p in out.iterdir()) == ["curvature.csv", "metrics.csv", "model.pt", "summary.json"]


def save_figure(path: Path, version: int) -> None:
    """A PNG written as fisherlab.report's figures are: savefig into atomic_write."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1, 2], [0, version, 1])
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=60 + 100 * version)


# each writer, called with (path, version): version 0 is small, version 1 too big for the full disk
WRITERS = {
    "checkpoint": lambda p, v: save_checkpoint({"w": torch.full((10 + 1_000 * v,), float(v))}, p),
    "model.pt": lambda p, v: save_atomic({"w": torch.full((10 + 1_000 * v,), float(v))}, p),
    "summary.json": lambda p, v: write_text_atomic(p, json.dumps({"v": v, "pad": "x" * 1_000 * v})),
    "table": lambda p, v: write_table(pd.DataFrame({"setting": [f"s{v}"] * (1 + 1_000 * v)}), p, p.with_suffix(".md")),
    "figure": lambda p, v: save_figure(p, v),
    "dataset": lambda p, v: save_dataset(p, ImageDataset(np.full((10 + 1_000 * v, 8, 8, 3), v, np.uint8),
                                                         np.arange(10 + 1_000 * v) % 4, list("abcd"))),
    "noisy labels": lambda p, v: save_noisy_labels(p, make_noisy_labels(np.arange(10 + 1_000 * v) % 4, 4, 0.5, v)),
}
SUFFIX = {"checkpoint": ".pt", "model.pt": ".pt", "summary.json": ".json", "table": ".csv", "figure": ".png",
          "dataset": ".npz", "noisy labels": ".csv"}  # fmt: skip


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_full_disk_leaves_the_previous_file_intact_and_no_temporary_file(small_disk, kind):
    path = small_disk / "out" / f"file{SUFFIX[kind]}"
    WRITERS[kind](path, 0)
    before = files_of(small_disk)
    fill(small_disk)
    with pytest.raises(StorageError) as info:
        WRITERS[kind](path, 1)
    assert str(info.value).startswith(f"cannot write {path}: no space left on device (ENOSPC)"), str(info.value)
    assert info.value.errno == errno.ENOSPC
    after = files_of(small_disk)
    after.pop("filler")
    assert after == before  # the old files, byte for byte, and nothing else (no temporary file)


def test_torch_save_on_a_full_disk_is_translated(small_disk):
    """torch.save that fails within a record raises RuntimeError ("unexpected pos"); the
    StorageError names the disk, and keeps torch's error as its cause."""
    with pytest.raises(StorageError) as info:
        save_checkpoint({"w": torch.zeros(2_000_000)}, small_disk / "c.pt")  # 8 MB on a 6 MiB disk
    assert info.value.errno == errno.ENOSPC and "no space left on device" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError) and "unexpected pos" in str(info.value.__cause__)
    assert list(small_disk.iterdir()) == []


# ---------------------------------------------------------------- refused writes (injected)


class FailingFileIO(io.FileIO):
    code = errno.EDQUOT

    def write(self, b):
        raise OSError(self.code, os.strerror(self.code))


def _fail(code):
    def raise_(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return raise_


@pytest.mark.parametrize("stage, code, words", [
    ("mkstemp", errno.EACCES, "permission denied (EACCES)"),
    ("mkstemp", errno.EROFS, "read-only file system (EROFS)"),
    ("write", errno.EDQUOT, "disk quota exceeded (EDQUOT)"),
    ("fsync", errno.EIO, "input/output error (EIO)"),
    ("replace", errno.EACCES, "permission denied (EACCES)"),
])  # fmt: skip
@pytest.mark.parametrize("kind", ["checkpoint", "summary.json", "table"])
def test_a_refused_write_names_the_path_and_the_cause(tmp_path, monkeypatch, stage, code, words, kind):
    path = tmp_path / f"file{SUFFIX[kind]}"
    WRITERS[kind](path, 0)
    WRITERS[kind](path, 0)  # a checkpoint has both generations now
    before = files_of(tmp_path)
    if stage == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", _fail(code))
    elif stage == "write":
        monkeypatch.setattr(atomic.io, "FileIO", FailingFileIO)
    else:
        monkeypatch.setattr(os, stage, _fail(code))
    with pytest.raises(StorageError) as info:
        WRITERS[kind](path, 1)
    monkeypatch.undo()
    assert str(info.value).startswith(f"cannot write {path}: {words}"), str(info.value)
    assert info.value.errno == code and info.value.filename == str(path)
    assert files_of(tmp_path) == before  # old files intact (both generations), no temporary file


def test_errors_that_are_not_the_disk_pass_through(tmp_path):
    path = tmp_path / "f.pt"
    write_text_atomic(path, "old")
    with pytest.raises(ValueError, match="not ours"), atomic_write(path):
        raise ValueError("not ours")
    with pytest.raises(FileNotFoundError), atomic_write(path):
        (tmp_path / "absent").read_bytes()  # an OSError of the caller's own code, not of the write
    with pytest.raises(Exception) as info:
        save_checkpoint({"f": lambda: 0}, path)  # cannot be pickled
    assert not isinstance(info.value, StorageError)
    assert files_of(tmp_path) == {"f.pt": b"old"}


# --------------------------------------------------------------- foreign files in results/


@pytest.mark.parametrize("key, array, expected", [
    ("x", np.zeros((40, 8, 8, 3), np.float32), "x must be a uint8 numpy array, got dtype float32"),
    ("y", np.zeros(40, np.int32), "y must be an int64 numpy array, got dtype int32"),
])  # fmt: skip
def test_a_prepared_dataset_of_the_wrong_dtype_is_refused_with_its_name(tmp_path, key, array, expected):
    train_path, test_path = prepare_synthetic(tmp_path / "results/data/synthetic", 40, 20, num_classes=4,
                                              image_size=8)  # fmt: skip
    good = load_dataset(train_path)
    arrays = {"x": good.x, "y": good.y, "classes": np.asarray(good.classes), key: array}
    np.savez(train_path, **arrays)  # a user's own file, dropped into the results tree
    with pytest.raises(DatasetFormatError) as info:
        load_data(train_path, test_path, val_size=10)
    assert str(info.value) == f"{train_path}: {expected}"


def test_a_noise_file_of_another_dataset_is_refused_with_its_name(tmp_path):
    a_train, _ = prepare_synthetic(tmp_path / "a", 60, 20, num_classes=4, image_size=8, seed=0)
    b_train, b_test = prepare_synthetic(tmp_path / "b", 60, 20, num_classes=4, image_size=8, seed=1)
    c_train, c_test = prepare_synthetic(tmp_path / "c", 60, 20, num_classes=10, image_size=8, seed=0)
    noise = tmp_path / "a/noise/frac0.5_seed0.csv"
    prepare_noisy_labels(a_train, noise, 0.5, seed=0)
    with pytest.raises(DatasetFormatError) as info:  # same size and classes, other labels
        load_data(b_train, b_test, val_size=10, noise_path=noise)
    assert str(info.value).startswith(f"{noise} ")  # the file, first
    assert "the noisy-label file belongs to another dataset: its clean labels differ" in str(info.value)
    with pytest.raises(DatasetFormatError) as info:  # other classes
        load_data(c_train, c_test, val_size=10, noise_path=noise)
    assert str(info.value).startswith(f"{noise} ")
    assert ("the noisy-label file belongs to another dataset: it has 60 examples and 4 classes, the training set "
            "60 and 10") in str(info.value)  # fmt: skip


def test_drop_checkpoint_deletes_both_generations_and_nothing_else(tmp_path):
    """keep_checkpoints: false (configs/miniature.yaml): a finished run's job deletes its
    checkpoint.pt and checkpoint.pt.prev; the kept weights beside them stay."""
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    save_checkpoint({"step": 1}, ckpt)
    save_checkpoint({"step": 2}, ckpt)
    (ckpt.parent / "snapshots").mkdir()
    (ckpt.parent / "snapshots" / "epoch1.pt").write_bytes(b"weights")
    assert ckpt.exists() and previous(ckpt).exists()
    drop_checkpoint(ckpt)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["snapshots"]
    assert (ckpt.parent / "snapshots" / "epoch1.pt").read_bytes() == b"weights"
    drop_checkpoint(ckpt)  # none there: nothing to do
