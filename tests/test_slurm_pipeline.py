"""The pipeline through a real SLURM cluster (tests/slurm_cluster.py): the demo's
results/table3.csv with `snakemake --profile slurm` from the repo root, as a user types
it, equals the local run; a training job whose time limit runs out gets SIGUSR1,
saves its state, and is resumed by the retry to the same metrics; and a training job
whose node is lost (all its processes SIGKILLed) is resumed by the retry from its last
checkpoint to the same metrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_faults import RUN, same_run
from test_pipeline import SNAKEMAKE, copy_workflow

from fisherlab.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# only the polling of the profile is made faster for the test (command-line flags override it)
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3"]


def slurm_workflow(dst: Path) -> None:
    copy_workflow(dst)  # profiles/ included
    os.symlink("profiles/slurm", dst / "slurm")


def run_slurm(cwd: Path, *args: str, account: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "SBATCH_ACCOUNT": account}  # the account comes from the environment
    t0 = time.perf_counter()
    proc = subprocess.run([SNAKEMAKE, "--profile", "slurm", *FAST_POLLING, *args], cwd=cwd, env=env,
                          capture_output=True, text=True)  # fmt: skip
    return proc, time.perf_counter() - t0


def test_table3_through_sbatch_equals_the_local_run(slurm_cluster, tmp_path, local_demo):
    slurm_workflow(tmp_path)
    proc, seconds = run_slurm(tmp_path, "results/table3.csv", "--configfile", "configs/demo.yaml",
                              account=slurm_cluster.account)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\ndemo results/table3.csv through SLURM: {seconds:.0f} s")
    (tmp_path / "slurm_seconds.txt").write_text(f"{seconds:.1f}\n")
    out = proc.stdout + proc.stderr
    assert "sbatch" in out or "Job" in out
    # the training jobs went through sbatch with a GPU
    jobs = slurm_cluster.run("sacct", "-n", "-P", "-X", "-o", "JobName,State,AllocTRES", check=False).stdout
    assert "gres/gpu=1" in jobs, jobs
    local = pd.read_csv(local_demo / "results/table3.csv")
    remote = pd.read_csv(tmp_path / "results/table3.csv")
    pd.testing.assert_frame_equal(remote, local, check_exact=True)
    for run in (tmp_path / "results/runs/demo_noisy/noise0.25").glob("*/*/seed0"):
        same_run(run, local_demo / run.relative_to(tmp_path), curvature_rtol=1e-5)


def test_a_job_at_its_time_limit_saves_its_state_and_the_retry_resumes_it(slurm_cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for root in (local, remote):
        root.mkdir()
        slurm_workflow(root)
        cfg = yaml.safe_load((root / "configs/demo.yaml").read_text())
        # about 2 min of training: longer than the first time limit (1 min) even on a fast machine, so that
        # its SIGTERM stops the run when SLURM's early warning is lost (sent "up to 60 s earlier than
        # specified", it may come before the training script listens: CI once finished 60 epochs unstopped)
        cfg["noisy"]["settings"]["demo_noisy"]["epochs"] = 120
        cfg["settings"]["demo_digits"]["resources"] = {"runtime": 1, "mem_mb": 2000}  # minutes; x2 per retry
        cfg["slurm"] = {"signal_seconds": 45}  # SIGUSR1 45 s (SLURM: up to 60 s) before the limit
        (root / "overlay.yaml").write_text(yaml.safe_dump(cfg))
    # the reference runs here, on the other core, while the cluster runs the same target
    reference = subprocess.Popen([SNAKEMAKE, "--configfile", "overlay.yaml", "--cores", "1", f"{RUN}/summary.json"],
                                 cwd=local, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # more retries than the profile's 2, so that a loaded machine still finishes (1, 2, 4, 8 min)
    proc, seconds = run_slurm(remote, f"{RUN}/summary.json", "--retries", "3", "--configfile", "overlay.yaml",
                              account=slurm_cluster.account)  # fmt: skip
    assert reference.wait(timeout=900) == 0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((remote / RUN / "summary.json").read_text())
    print(f"\n{seconds:.0f} s; stopped and resumed at steps {summary['stopped_at_steps']}")
    assert summary["status"] == "ok" and summary["stopped_at_steps"], summary
    same_run(remote / RUN, local / RUN, curvature_rtol=1e-5)


def _running_job_processes(slurm_cluster) -> dict[str, list[int]]:
    """Job id -> every process below that running job's slurmstepds (batch script, the
    job step's Snakemake, srun, the training script), found through /proc."""
    jobs = slurm_cluster.run("squeue", "-h", "-t", "R", "-o", "%i").stdout.split()
    parent, stepd = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, fields = int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        parent[pid] = int(fields[1])
        for job in jobs:
            if cmdline.startswith(f"slurmstepd: [{job}."):
                stepd[pid] = job
    found = {job: [] for job in jobs}
    for pid, p in parent.items():
        while p > 1 and p not in stepd:
            p = parent.get(p, 0)
        if p in stepd:
            found[stepd[p]].append(pid)
    return found


def test_a_lost_node_kills_a_training_job_and_the_retry_resumes_from_its_checkpoint(
    slurm_cluster, tmp_path, local_demo
):
    """The node of a training job is lost: every process of the job dies at once by
    SIGKILL (no signal it could catch, no state saved), after the run's first checkpoint.
    SLURM marks the job failed, the profile's retry resubmits it, and the run resumes from
    its last checkpoint (its log shows epoch 1 once) to the metrics of the local run."""
    # one training run of the demo, chosen from the local run's outputs (the pipeline's paths
    # are not spelled out here): a noisy baseline (fixed lr, no selection to wait for)
    runs = sorted(p.parent.relative_to(local_demo) for p in local_demo.glob("results/runs/**/summary.json")
                  if (p.parent / "train.log").exists())  # fmt: skip
    run = next((r for r in runs if "baseline" in r.parts and any("noise" in part for part in r.parts)), runs[0])
    slurm_workflow(tmp_path)
    env = {**os.environ, "SBATCH_ACCOUNT": slurm_cluster.account}
    t0 = time.perf_counter()
    log_path = tmp_path / "snakemake.out"
    with open(log_path, "w") as out:  # the target before --configfile, which takes several values
        proc = subprocess.Popen([SNAKEMAKE, "--profile", "slurm", *FAST_POLLING, str(run / "summary.json"),
                                 "--configfile", "configs/demo.yaml"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 600
        while not (ckpts := list((tmp_path / "results").rglob("checkpoint.pt"))):  # after the first epoch
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-5000:]
            time.sleep(0.2)
        victims = {job: pids for job, pids in _running_job_processes(slurm_cluster).items() if pids}
        assert victims, "no running training job to kill"
        for pids in victims.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        killed_at = time.perf_counter() - t0
        # what the dead job left: its log so far, and its checkpoint (a copy: loading tidies up)
        first_log = (tmp_path / run / "train.log").read_text()
        left = shutil.copytree(ckpts[0].parent, tmp_path / "left_by_the_killed_job")
        saved_epoch = load_checkpoint(left / "checkpoint.pt").value["progress"]["epoch"]
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, log_path.read_text()[-5000:]
    states = dict(line.split("|") for line in slurm_cluster.run(
        "sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(victims)).stdout.split())  # fmt: skip
    print(f"\nkilled jobs {sorted(victims)} ({sum(map(len, victims.values()))} processes) {killed_at:.0f} s in, "
          f"checkpoint at epoch {saved_epoch}; their states {states}; {seconds:.0f} s in all")  # fmt: skip
    assert all(s in ("FAILED", "NODE_FAIL") for s in states.values()), states
    summary = json.loads((tmp_path / run / "summary.json").read_text())
    # resumed, not restarted: the retry's log (after the killed attempt's, if Snakemake kept
    # that) starts at the epoch after the checkpoint's
    log = (tmp_path / run / "train.log").read_text()
    retry_log = log.removeprefix(first_log)
    epochs = [int(m) for m in re.findall(r"^epoch\s+(\d+) ", retry_log, flags=re.MULTILINE)]
    assert saved_epoch >= 1 and epochs == list(range(saved_epoch + 1, summary["epochs_completed"] + 1)), log
    assert summary["status"] == "ok" and summary["checkpoint_events"] == [], summary
    same_run(tmp_path / run, local_demo / run, curvature_rtol=1e-5)
