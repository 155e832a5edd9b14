"""A run is what its inputs say (issue 21, point 1): its identity (config, data options,
digest of each input file) is saved with each checkpoint and in summary.json; a
checkpoint or kept weights of another identity are moved aside as ``*.stale-<time>``
and the run starts fresh, bit-identical to a run that never saw them; the same identity
resumes. Digests are kept beside the files (``<file>.sha256``) and never trusted once
the file changed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CrashingData, Interrupted, without_timing
from test_storage import assert_identical

from fisherlab import TrainData
from fisherlab.data import make_synthetic, save_dataset
from fisherlab.data.noise import load_noisy_labels, prepare_noisy_labels, save_noisy_labels
from fisherlab.experiment import load_data, run, run_planned
from fisherlab.runs.identity import code_digest, file_digest, run_identity, sidecar
from fisherlab.plan import RunSpec
from fisherlab.plan.core import Ref

STALE_NAME = re.compile(r"^checkpoint\.pt(\.prev)?\.stale-\d{8}T\d{6}Z(-\d+)?$")
TRAIN = dict(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=2, batch_size=32, weight_decay=1e-4,
             milestones=[1], fisher_examples=16, fisher_every=6, keep_epochs=[1])  # fmt: skip


def write_data(folder: Path, seed: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_dataset(folder / "train.npz", make_synthetic(160, num_classes=4, image_size=16, seed=seed, split="train"))
    save_dataset(folder / "test.npz", make_synthetic(64, num_classes=4, image_size=16, seed=seed, split="test"))


def write_selection(path: Path, value: float = 0.05, run_dir: str = "results/runs/a") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": "lr", "value": value, "source": "search", "run_dir": run_dir}))


def write_init(path: Path, seed: int) -> None:
    from fisherlab.models import build_model

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_model("simple_cnn", num_classes=4, image_size=16).state_dict(), path)


def setup(root: Path) -> tuple[RunSpec, dict[str, str]]:
    """A planned run reading every kind of input: data, noise file, selection, init weights."""
    write_data(root / "data")
    (root / "noise").mkdir()
    prepare_noisy_labels(root / "data/train.npz", root / "noise/frac0.25_seed0.csv", 0.25, 0)
    write_selection(root / "selection/lr.json")
    write_init(root / "init/model.pt", 0)
    inputs = {"train": root / "data/train.npz", "test": root / "data/test.npz",
              "noise": root / "noise/frac0.25_seed0.csv", "lr": root / "selection/lr.json",
              "init": root / "init/model.pt"}  # fmt: skip
    inputs = {k: str(v) for k, v in inputs.items()}
    spec = RunSpec(id="r", family="test", seed=0, train={**TRAIN, "init_weights": inputs["init"]}, lr=Ref("lr"),
                   data={"val_size": 32, "augment": False}, inputs=inputs)  # fmt: skip
    return spec, inputs


def train_planned(spec: RunSpec, inputs: dict[str, str], root: Path, lines: list | None = None):
    return run_planned(spec, inputs, device="cpu", checkpoint=root / "ckpt/checkpoint.pt", out_dir=root / "run",
                       log=(lines.append if lines is not None else lambda s: None))  # fmt: skip


def change_augment(spec, root):
    spec.data = {**spec.data, "augment": True}


def change_val_size(spec, root):
    spec.data = {**spec.data, "val_size": 48}


def change_data(spec, root):
    write_data(root / "data", seed=5)  # same paths, other content (and a noise file that fits it)
    prepare_noisy_labels(root / "data/train.npz", root / "noise/frac0.25_seed0.csv", 0.25, 0)


def change_noise(spec, root):
    """The same file name, fraction and seed, one replaced label hand-edited to another class."""
    path = root / "noise/frac0.25_seed0.csv"
    noisy = load_noisy_labels(path)
    i = int(np.flatnonzero(noisy.replaced)[0])
    noisy.label[i] = (noisy.label[i] + 1) % noisy.num_classes
    save_noisy_labels(path, noisy)


def change_init(spec, root):
    write_init(root / "init/model.pt", 1)


def change_selection(spec, root):
    write_selection(root / "selection/lr.json", run_dir="results/runs/b")  # same lr, another selection


CHANGES = [change_augment, change_val_size, change_data, change_noise, change_init, change_selection]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_a_finished_run_of_other_inputs_is_moved_aside_as_stale_and_the_run_starts_fresh(tmp_path, change):
    spec, inputs = setup(tmp_path / "a")
    before = train_planned(spec, inputs, tmp_path / "a")
    old_metrics = (tmp_path / "a/run/metrics.csv").read_bytes()
    change(spec, tmp_path / "a")

    lines = []
    result = train_planned(spec, inputs, tmp_path / "a", lines)

    # the reference: the changed run in a folder that never held another run
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("ckpt", "run"))
    spec_b, inputs_b = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()).replace("/a/", "/b/"))), {
        k: v.replace("/a/", "/b/") for k, v in inputs.items()}  # fmt: skip
    assert_identical(result, train_planned(spec_b, inputs_b, tmp_path / "b"))
    assert result.summary["identity"]["digest"] != before.summary["identity"]["digest"]
    assert (tmp_path / "a/run/metrics.csv").read_bytes() != old_metrics
    events = result.summary["checkpoint_events"]
    ckpt_events = [e for e in events if "checkpoint.pt" in e["path"]]
    assert [Path(e["path"]).name for e in ckpt_events] == ["checkpoint.pt", "checkpoint.pt.prev"]
    for e in ckpt_events:
        assert STALE_NAME.match(Path(e["moved_to"]).name) and Path(e["moved_to"]).is_file(), e
        assert e["reason"].startswith("stale: another run identity, its inputs differ") and e["resumed_from"] is None
    [snap] = [e for e in events if e["path"].endswith("snapshots")]  # the kept weights of the old run
    assert re.match(r"^snapshots\.stale-\d{8}T\d{6}Z$", Path(snap["moved_to"]).name)
    mark = json.loads((tmp_path / "a/run/snapshots.identity.json").read_text())
    assert mark["digest"] == result.summary["identity"]["digest"]
    assert (Path(snap["moved_to"]) / "epoch1.pt").is_file()
    summary = json.loads((tmp_path / "a/run/summary.json").read_text())
    assert summary["identity"] == json.loads(json.dumps(result.summary["identity"]))
    assert summary["checkpoint_events"] == events
    assert any(line.startswith(f"checkpoint {tmp_path / 'a/ckpt/checkpoint.pt'} cannot be used: stale") for line in lines)


def test_which_inputs_differ_is_named(tmp_path):
    spec, inputs = setup(tmp_path)
    train_planned(spec, inputs, tmp_path)
    change_augment(spec, tmp_path)
    change_noise(spec, tmp_path)
    reason = train_planned(spec, inputs, tmp_path).summary["checkpoint_events"][0]["reason"]
    assert reason == "stale: another run identity, its inputs differ: data ['augment']; input files ['noise']"


def test_the_same_identity_resumes_a_finished_run(tmp_path):
    spec, inputs = setup(tmp_path)
    first = train_planned(spec, inputs, tmp_path)
    metrics = (tmp_path / "run/metrics.csv").read_text()
    again = train_planned(spec, inputs, tmp_path)
    assert again.summary["checkpoint_events"] == [] and again.summary["steps"] == first.summary["steps"]
    assert without_timing(again.metrics) == without_timing(first.metrics)
    assert (tmp_path / "run/metrics.csv").read_text() == metrics  # the finished run's own rows, seconds included
    assert again.summary["identity"] == first.summary["identity"]
    assert sorted(p.name for p in tmp_path.joinpath("ckpt").iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]


def test_the_same_identity_resumes_a_crashed_run_bit_identically(tmp_path):
    write_data(tmp_path / "data")
    files = {"train": tmp_path / "data/train.npz", "test": tmp_path / "data/test.npz"}
    data = load_data(files["train"], files["test"], val_size=32)
    from test_trainer import config

    cfg = config(epochs=3)
    identity = run_identity(cfg.to_dict(), {"val_size": 32}, files)
    reference = run(cfg, data, tmp_path / "ref", log=lambda s: None)
    crashing = TrainData(CrashingData(data.train, crash_after=9), data.val, data.test)  # 4 steps/epoch: epoch 3
    with pytest.raises(Interrupted):
        run(cfg, crashing, tmp_path / "run", checkpoint=tmp_path / "ckpt.pt", identity=identity, log=lambda s: None)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["identity"] == identity
    resumed = run(cfg, data, tmp_path / "run", checkpoint=tmp_path / "ckpt.pt", identity=identity,
                  log=lambda s: None)  # fmt: skip
    assert_identical(resumed, reference)
    assert resumed.summary["checkpoint_events"] == []


def test_a_checkpoint_without_an_identity_is_stale_for_a_run_with_one(tmp_path):
    """Written before identities were recorded: its inputs are unknown, so it is not resumed."""
    write_data(tmp_path / "data")
    files = {"train": tmp_path / "data/train.npz", "test": tmp_path / "data/test.npz"}
    data = load_data(files["train"], files["test"], val_size=32)
    from test_trainer import config

    cfg = config(epochs=1)
    run(cfg, data, tmp_path / "run", checkpoint=tmp_path / "checkpoint.pt", log=lambda s: None)
    result = run(cfg, data, tmp_path / "run", checkpoint=tmp_path / "checkpoint.pt", log=lambda s: None,
                 identity=run_identity(cfg.to_dict(), {"val_size": 32}, files))  # fmt: skip
    [event] = result.summary["checkpoint_events"]
    assert event["reason"] == ("stale: another run identity, it records no run identity "
                               "(written before identities were recorded)")  # fmt: skip
    assert STALE_NAME.match(Path(event["moved_to"]).name)


# ---------------------------------------------------------------- digests beside the files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_runs_inputs_get_their_digest_beside_them(tmp_path):
    write_data(tmp_path)
    files = {"train": tmp_path / "train.npz", "test": tmp_path / "test.npz"}
    assert not any(sidecar(p).exists() for p in files.values())
    identity = run_identity({}, {}, files)
    for name, path in files.items():
        recorded = json.loads(sidecar(path).read_text())
        st = path.stat()
        assert recorded == {"sha256": sha256(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        assert identity["inputs"][name] == recorded["sha256"]


def test_a_matching_sidecar_is_reused_without_reading_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_digest(path) == sha256(path)
    recorded = json.loads(sidecar(path).read_text())
    sidecar(path).write_text(json.dumps({**recorded, "sha256": "f" * 64}))  # a marker: only a reuse returns it
    assert file_digest(path) == "f" * 64


@pytest.mark.parametrize("how", ["same size, new mtime", "replaced, same size and mtime", "other size"])
def test_a_sidecar_of_a_changed_file_is_never_trusted(tmp_path, how):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    file_digest(path)
    st = path.stat()
    if how == "same size, new mtime":
        path.write_bytes(b"xyz")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif how == "replaced, same size and mtime":
        new = tmp_path / "g.bin"
        new.write_bytes(b"xyz")
        keep = path.with_suffix(".old")
        os.rename(path, keep)  # keeps the old inode in use, so the new file gets another one
        os.rename(new, path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        path.write_bytes(b"abcd")
    assert file_digest(path) == sha256(path) != hashlib.sha256(b"abc").hexdigest()
    assert json.loads(sidecar(path).read_text())["sha256"] == sha256(path)  # rewritten


def test_a_damaged_sidecar_is_recomputed_and_an_unwritable_one_still_gives_the_digest(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    sidecar(path).write_text("{not json")
    assert file_digest(path) == sha256(path)
    assert json.loads(sidecar(path).read_text())["sha256"] == sha256(path)
    other = tmp_path / "g.bin"
    other.write_bytes(b"xyz")
    sidecar(other).mkdir()  # cannot be written (as a read-only folder, also for root)
    assert file_digest(other) == file_digest(other) == sha256(other)


def test_an_input_of_several_files_gets_a_digest_each(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"1")
    b.write_bytes(b"2")
    assert run_identity({}, {}, {"grid": [a, b]})["inputs"] == {"grid": [sha256(a), sha256(b)]}


def test_a_missing_input_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.npz"))):
        run_identity({}, {}, {"train": tmp_path / "nope.npz"})


def test_the_identity_depends_on_the_content_not_on_the_path(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert run_identity({"lr": 0.1}, {}, {"x": a}) == run_identity({"lr": 0.1}, {}, {"x": b})
    assert run_identity({"lr": 0.1}, {}, {"x": a})["digest"] != run_identity({"lr": 0.2}, {}, {"x": a})["digest"]


def test_code_digest_covers_every_py_file(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = code_digest(pkg)
    (pkg / "sub" / "b.py").write_text("y = 2\n# a comment\n")
    assert code_digest(pkg) != first
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    assert code_digest(pkg) == first
    assert re.fullmatch(r"[0-9a-f]{64}", code_digest())
