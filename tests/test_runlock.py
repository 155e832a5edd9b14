"""One trainer per run directory (issue 21, point 7): a live owner's lock is refused with
its host, pid and path; a dead owner's (SIGKILL, a reused pid, a silent other host) is
taken over; the lock goes away however the run ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer import config

from fisherlab.data import make_synthetic
from fisherlab.experiment import run, to_device
from fisherlab.training.preemption import Preempted
from fisherlab.runs.runlock import LOCK_NAME, RunLocked, acquire, owner_record, run_lock

REPO = Path(__file__).resolve().parents[1]

# a trainer that holds the run's lock for a long time: many epochs of the tiny data
TRAINER = """
import sys
from test_trainer import config
from fisherlab.data import make_synthetic
from fisherlab.experiment import run, to_device
split = lambda n, name: make_synthetic(n, num_classes=4, image_size=16, seed=3, split=name)
data = to_device(split(64, "train"), split(32, "val"), None)
run(config(epochs=100000, regularizer="none", regularizer_kwargs={}), data, sys.argv[1], log=lambda s: None)
"""


def start_trainer(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(run_dir)], env=env)
    deadline = time.monotonic() + 60
    while not (run_dir / LOCK_NAME).exists():
        assert proc.poll() is None, "the first trainer ended before taking the lock"
        assert time.monotonic() < deadline, "the first trainer never took the lock"
        time.sleep(0.05)
    return proc


def small_data():
    split = lambda n, name: make_synthetic(n, num_classes=4, image_size=16, seed=3, split=name)  # noqa: E731
    return to_device(split(64, "train"), split(32, "val"), None)


@pytest.mark.slow  # a second Python process that imports torch: ~9 s on 2 busy cores
def test_two_trainers_on_one_run_the_second_is_refused_until_the_first_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    first = start_trainer(run_dir)
    try:
        with pytest.raises(RunLocked) as info:
            run(config(epochs=1), small_data(), run_dir, log=lambda s: None)
        message = str(info.value)
        assert str(run_dir / LOCK_NAME) in message
        assert f"host {socket.gethostname()!r}, pid {first.pid}" in message
        assert not (run_dir / "summary.json").exists()
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == first.pid  # the refusal left it alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lines = []
    result = run(config(epochs=1), small_data(), run_dir, log=lines.append)  # a third trainer takes over
    assert result.status == "ok" and (run_dir / "summary.json").is_file()
    assert f"taking over from host {socket.gethostname()!r}, pid {first.pid}" in "\n".join(lines)
    assert not (run_dir / LOCK_NAME).exists()


def write_lock(path: Path, age_s: float = 0.0, **owner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**owner_record(), **owner}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_lock_of_another_host_is_refused_while_its_heartbeat_is_fresh_then_taken_over(tmp_path):
    lock = tmp_path / LOCK_NAME
    write_lock(lock, age_s=60, host="node042", pid=1234, slurm_job=None)
    with pytest.raises(RunLocked, match=r"host 'node042', pid 1234"):
        acquire(lock, stale_after=900)
    write_lock(lock, age_s=901, host="node042", pid=1234, slurm_job=None)  # no heartbeat for 15 minutes: the node is gone
    me = acquire(lock, stale_after=900)
    assert json.loads(lock.read_text()) == me and me["pid"] == os.getpid()


def fake_squeue(folder: Path, monkeypatch, stdout: str = "", stderr: str = "", rc: int = 0) -> Path:
    """An ``squeue`` on PATH that answers as told and records its arguments."""
    folder.mkdir(exist_ok=True)
    script = folder / "squeue"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder}/calls\nprintf '{stdout}'\nprintf '{stderr}' >&2\nexit {rc}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder / "calls"


@pytest.mark.parametrize("answer, alive", [
    (dict(stdout="RUNNING\\n"), True),
    (dict(stdout="NODE_FAIL\\n"), False),
    (dict(stdout=""), False),  # finished and gone from squeue's list
    (dict(stderr="slurm_load_jobs error: Invalid job id specified\\n", rc=1), False),
    (dict(stderr="slurm_load_jobs error: Unable to contact slurm controller\\n", rc=1), None),  # the heartbeat
])  # fmt: skip
def test_an_owner_in_a_slurm_job_on_another_node_is_judged_by_squeue(tmp_path, monkeypatch, answer, alive):
    calls = fake_squeue(tmp_path / "bin", monkeypatch, **answer)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock = tmp_path / LOCK_NAME
    write_lock(lock, age_s=60, host="node042", pid=1234, slurm_job="4711")  # a fresh heartbeat
    if alive is False:
        assert acquire(lock)["pid"] == os.getpid()
    else:  # running, or SLURM cannot say: the fresh heartbeat keeps it
        with pytest.raises(RunLocked, match="node042"):
            acquire(lock)
    assert calls.read_text().split() == ["-h", "-j", "4711", "-o", "%T"]
    if alive is None:
        write_lock(lock, age_s=901, host="node042", pid=1234, slurm_job="4711")
        assert acquire(lock)["pid"] == os.getpid()


def test_an_earlier_run_of_this_very_slurm_job_is_dead(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4711")  # requeued: the same job id on another node
    lock = tmp_path / LOCK_NAME
    write_lock(lock, host="node042", pid=1234, slurm_job="4711")
    assert acquire(lock)["slurm_job"] == "4711"


def test_a_reused_pid_or_a_reboot_does_not_keep_a_dead_owner_alive(tmp_path):
    lock = tmp_path / LOCK_NAME
    write_lock(lock, start_time=1)  # this process's pid, but another process's start time
    assert acquire(lock)["pid"] == os.getpid()
    write_lock(lock, boot_id="another-boot")
    assert acquire(lock)["pid"] == os.getpid()
    write_lock(lock)  # this very process: alive
    with pytest.raises(RunLocked):
        acquire(lock)


def test_an_unreadable_lock_counts_as_a_dead_owner_of_this_host(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text("{trunc")
    assert acquire(lock)["pid"] == os.getpid()


def test_the_lock_is_released_however_the_run_ends_and_refreshed_while_it_runs(tmp_path):
    lock = tmp_path / "run" / LOCK_NAME
    with pytest.raises(KeyError), run_lock(lock):
        raise KeyError("boom")
    assert not lock.exists() and not lock.parent.exists()  # the folder it made, empty again, is gone
    with run_lock(lock, heartbeat=0.05, stale_after=1):
        os.utime(lock, (0, 0))
        time.sleep(0.3)
        assert time.time() - lock.stat().st_mtime < 1  # the heartbeat
    assert not lock.exists()
    with pytest.raises(ValueError, match="heartbeat"):
        with run_lock(lock, heartbeat=5, stale_after=5):
            pass


def test_a_preempted_run_releases_its_lock(tmp_path):
    with pytest.raises(Preempted):
        run(config(epochs=2), small_data(), tmp_path / "run", checkpoint=tmp_path / "ckpt.pt",
            should_stop=lambda: True, log=lambda s: None)  # fmt: skip
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# the middle process starts a grandchild that asks to die with its parent, prints its pid, then waits
MIDDLE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
child.wait()
"""
GRANDCHILD = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])  # torch-free: no package import
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
assert runlock.die_with_parent()
print(os.getpid(), flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_process_that_asked_to_die_with_its_parent_dies_when_the_parent_is_sigkilled(tmp_path):
    out = tmp_path / "pid"
    with open(out, "w") as f:
        middle = subprocess.Popen([sys.executable, "-c", MIDDLE, GRANDCHILD, str(REPO / "src/fisherlab/runs/runlock.py")],
                                  stdout=f)  # fmt: skip
    deadline = time.monotonic() + 30
    while not out.read_text().strip():
        assert time.monotonic() < deadline and middle.poll() is None
        time.sleep(0.02)
    grandchild = int(out.read_text())
    os.kill(grandchild, 0)  # alive
    middle.send_signal(signal.SIGKILL)  # as a SIGKILLed Snakemake
    middle.wait()
    deadline = time.monotonic() + 10
    while running(grandchild):
        assert time.monotonic() < deadline, "the grandchild outlived its parent"
        time.sleep(0.02)


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (dead, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
