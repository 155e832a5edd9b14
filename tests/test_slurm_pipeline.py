"""The pipeline through a real SLURM cluster (tests/slurm_cluster.py): the demo's
results/table3.csv with `snakemake --profile slurm` from the repo root, as a user types
it, equals the local run; and a training job whose time limit runs out gets SIGUSR1,
saves its state, and is resumed by the retry to the same metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_faults import RUN, same_run
from test_pipeline import REPO, SNAKEMAKE, copy_workflow

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# only the polling of the profile is made faster for the test (command-line flags override it)
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3"]


def slurm_workflow(dst: Path) -> None:
    copy_workflow(dst)
    shutil.copytree(REPO / "profiles", dst / "profiles")
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
        cfg["noisy"]["settings"]["demo_noisy"]["epochs"] = 25  # longer than the first time limit (1 min)
        cfg["settings"]["demo_synthetic"]["resources"] = {"runtime": 1, "mem_mb": 2000}  # minutes; x2 per retry
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
