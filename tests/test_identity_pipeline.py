"""Issue 21 through Snakemake (slow: two tiny trainings, ~20 s of CPU): a job imports its
own checkout's ``src/`` even when the environment's fisherlab is another checkout's, and
records that code (code_dir, code_digest); a run whose data options and data change is
retrained, its old checkpoint moved aside as ``*.stale-*`` (point 1's reproduction)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fisherlab.runs.identity import code_digest
from test_pipeline import copy_workflow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
RUN = "results/runs/demo_digits/lrgrid/lr0.03/seed0"
CKPT = "results/checkpoints/demo_digits/lrgrid/lr0.03/seed0"
TINY = "settings:\n  demo_digits: {epochs: 2, lr_grid: [0.03]}\ninterventions: {fig3: null, fig6: null}\n"
CHANGE = "settings:\n  demo_digits: {augment: true, val_size: 100}\ndata: {digits: {seed: 5}}\n"


def checkout(dst: Path, marker: str = "") -> Path:
    """A copy of this checkout's workflow and src/, its src differing by a comment line."""
    dst.mkdir()
    copy_workflow(dst, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__"))
    if marker:
        with open(dst / "src/fisherlab/__init__.py", "a") as f:
            f.write(f"# {marker}\n")
    return dst


def snakemake(cwd: Path, *configfiles: str, env: dict) -> None:
    proc = subprocess.run([SNAKEMAKE, f"{RUN}/summary.json", "--configfile", "configs/demo.yaml", *configfiles,
                           "--cores", "1"], cwd=cwd, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_job_runs_its_own_checkouts_code_and_a_changed_run_is_retrained(tmp_path):
    first = checkout(tmp_path / "first")
    second = checkout(tmp_path / "second", marker="the second checkout")
    assert code_digest(first / "src/fisherlab") != code_digest(second / "src/fisherlab")
    # one environment for both: its fisherlab is the first checkout's (as an editable install of it)
    env = {**os.environ, "PYTHONPATH": str(first / "src"), "OMP_NUM_THREADS": "1"}
    (second / "t.yaml").write_text(TINY)
    snakemake(second, "t.yaml", env=env)
    run = second / RUN
    summary = json.loads((run / "summary.json").read_text())
    assert summary["code_dir"] == str((second / "src/fisherlab").resolve())
    assert summary["code_digest"] == code_digest(second / "src/fisherlab")
    before = md5(run / "metrics.csv"), summary["identity"]

    (second / "c.yaml").write_text(CHANGE)
    snakemake(second, "t.yaml", "c.yaml", env=env)

    summary = json.loads((run / "summary.json").read_text())
    assert md5(run / "metrics.csv") != before[0]
    assert summary["identity"]["spec"]["data"] == {"augment": True, "val_size": 100}
    assert summary["identity"]["inputs"]["train"] != before[1]["inputs"]["train"]  # the data seed 5
    stale = sorted(p.name for p in (second / CKPT).iterdir() if ".stale-" in p.name)
    assert sorted(n.split(".stale-")[0] for n in stale) == ["checkpoint.pt", "checkpoint.pt.prev"]
    assert sorted(Path(e["moved_to"]).name for e in summary["checkpoint_events"]) == stale
    assert "cannot be used: stale: another run identity" in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_trainer_stops_when_its_snakemake_is_sigkilled_and_the_rerun_resumes_it(tmp_path):
    """Issue 21, point 7: SIGKILL to Snakemake alone, --unlock, a rerun: the first trainer
    did not go on training beside the second; it saved its state and released its lock."""
    import signal
    import time

    from fisherlab.runs.runlock import LOCK_NAME
    from test_runlock import running

    work = checkout(tmp_path / "checkout")
    (work / "t.yaml").write_text(TINY.replace("epochs: 2", "epochs: 4"))
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "OMP_NUM_THREADS": "1"}
    args = [SNAKEMAKE, f"{RUN}/summary.json", "--configfile", "configs/demo.yaml", "t.yaml", "--cores", "1"]
    smk = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock, deadline = work / RUN / LOCK_NAME, time.monotonic() + 300
    while not lock.exists():
        assert smk.poll() is None and time.monotonic() < deadline, "the trainer never started"
        time.sleep(0.1)
    trainer = json.loads(lock.read_text())["pid"]
    smk.send_signal(signal.SIGKILL)  # Snakemake alone
    smk.wait()
    deadline = time.monotonic() + 60
    while running(trainer):
        assert time.monotonic() < deadline, "the trainer outlived its Snakemake"
        time.sleep(0.1)
    assert not lock.exists()  # released: it stopped through its SIGTERM handler, having saved its state
    assert (work / CKPT / "checkpoint.pt").is_file()

    subprocess.run([*args, "--unlock"], cwd=work, env=env, check=True, capture_output=True)
    snakemake(work, "t.yaml", env=env)
    summary = json.loads((work / RUN / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs_completed"] == 4
    assert summary["stopped_at_steps"] and summary["checkpoint_events"] == []  # resumed from the saved state


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "workflow/scripts").glob("*.py")))
def test_every_script_puts_its_own_checkouts_src_first(script):
    """Each adapter's ``sys.path`` line, evaluated with the ``scriptdir`` Snakemake gives a
    rule of workflow/rules/ (``<repo>/workflow/rules/../scripts``, not normalised), names
    this checkout's ``src/``. ``Path(scriptdir).parents[1]`` would name workflow/rules/src,
    which does not exist, and the job would import the environment's fisherlab."""
    import re
    from types import SimpleNamespace

    text = (REPO / "workflow/scripts" / script).read_text()
    lines = re.findall(r"^sys\.path\.insert\(0, (.+?)\)  # noqa", text, flags=re.M)
    assert len(lines) == 1, f"{script}: one sys.path.insert(0, ...) line expected, found {len(lines)}"
    scriptdir = f"{REPO}/workflow/rules/../scripts"
    path = eval(lines[0], {"Path": Path, "str": str, "snakemake": SimpleNamespace(scriptdir=scriptdir)})  # noqa: S307  (our own adapter's line)
    assert Path(path) == REPO / "src", f"{script}: {path}"
