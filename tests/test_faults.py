"""Faults through the pipeline: a training job killed with SIGKILL resumes to identical
metrics, a diverging run is recorded and the DAG goes on, bad prepared data is a clear
error, and two concurrent invocations do not corrupt outputs. The reference is the
demo run once on this machine (``local_demo``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from test_pipeline import SNAKEMAKE, copy_workflow, snakemake

RUN = "results/runs/demo_noisy/noise0.25/baseline/seed0"
CKPT = "results/checkpoints/demo_noisy/noise0.25/baseline/seed0/checkpoint.pt"
TIMING = ["seconds", "eval_seconds"]


def same_run(a: Path, b: Path, curvature_rtol: float = 0.0) -> None:
    """Two run directories hold the same metrics and curvature (timings aside). With
    ``curvature_rtol`` > 0 the Tr(F) columns may differ by that relative amount (runs in
    different environments: a SLURM step's CPU binding changes the last float32 bits of the
    per-example kernels, not those of training)."""
    for name in ("metrics.csv", "curvature.csv"):
        fa = pd.read_csv(a / name).drop(columns=TIMING, errors="ignore")
        fb = pd.read_csv(b / name).drop(columns=TIMING, errors="ignore")
        tr = [c for c in fa.columns if c.startswith("trace_fisher")] if curvature_rtol else []
        pd.testing.assert_frame_equal(fa.drop(columns=tr), fb.drop(columns=tr), check_exact=True)
        if tr:
            pd.testing.assert_frame_equal(fa[tr], fb[tr], check_exact=False, rtol=curvature_rtol)


def overlay(tmp_path: Path, edit) -> str:
    cfg = yaml.safe_load((tmp_path / "configs/demo.yaml").read_text())
    edit(cfg)
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(cfg))
    return "overlay.yaml"


@pytest.mark.slow
def test_a_job_killed_at_a_random_step_resumes_to_identical_metrics(tmp_path, local_demo):
    copy_workflow(tmp_path)
    args = [SNAKEMAKE, "--configfile", "configs/demo.yaml", "--cores", "1", f"{RUN}/summary.json"]
    proc = subprocess.Popen(args, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (tmp_path / CKPT).exists():  # the first epoch's checkpoint
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    delay = random.uniform(0.0, 4.0)  # somewhere in the following epochs
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / RUN / "summary.json").exists(), "killed too late: the run had finished"
    print(f"killed {delay:.2f} s after the first checkpoint")
    # a SIGKILLed Snakemake leaves its lock behind: remove it, as a user would, and rerun
    snakemake("--configfile", "configs/demo.yaml", "--unlock", cwd=tmp_path)
    snakemake("--configfile", "configs/demo.yaml", "--cores", "1", "--rerun-incomplete", f"{RUN}/summary.json",
              cwd=tmp_path)  # fmt: skip
    same_run(tmp_path / RUN, local_demo / RUN)


@pytest.mark.slow
def test_a_diverging_setting_is_marked_and_the_dag_goes_on(tmp_path):
    copy_workflow(tmp_path)
    cfg = overlay(tmp_path, lambda c: c["noisy"]["settings"]["demo_noisy"].update(lr=90.0, epochs=2))
    snakemake("--configfile", cfg, "--cores", "2", "results/table3.csv", cwd=tmp_path)
    table = pd.read_csv(tmp_path / "results/table3.csv")
    for c in ("baseline", "mixup", "gpx", "fp", "gpr"):
        assert table[f"{c}_status"].iloc[0] == "diverged", c
    assert "diverged" in (tmp_path / "results/table3.md").read_text()
    choice = yaml.safe_load((tmp_path / "results/selection/demo_noisy/noise0.25/fp.json").read_text())
    assert choice["source"].startswith("fallback")


@pytest.mark.slow
def test_a_prepared_file_with_the_wrong_shape_is_a_clear_error(tmp_path):
    copy_workflow(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((40, 32, 32), np.uint8), y=np.zeros(40, np.int64), classes=np.array(["a", "b"]))

    def edit(c):
        c["data"]["local"] = {"broken": {"train": str(bad), "test": str(bad)}}
        c["settings"]["demo_digits"]["dataset"] = "broken"

    cfg = overlay(tmp_path, edit)
    target = "results/runs/demo_digits/lrgrid/lr0.03/seed0/summary.json"
    proc = snakemake("--configfile", cfg, "--cores", "1", target, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results/runs/demo_digits/lrgrid/lr0.03/seed0/train.log").read_text()
    assert "DatasetFormatError" in log and "bad.npz" in log and "shape (N, H, W, C)" in log
    assert not (tmp_path / target).exists()


@pytest.mark.slow
def test_two_concurrent_invocations_do_not_corrupt_outputs(tmp_path, local_demo):
    copy_workflow(tmp_path)
    args = [SNAKEMAKE, "--configfile", "configs/demo.yaml", "--cores", "1", f"{RUN}/summary.json"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    # Snakemake locks the working directory: one invocation runs, the other refuses
    assert codes[0] == 0, outs
    if codes[1] != 0:
        assert any("lock" in o.lower() for o in outs), outs
    same_run(tmp_path / RUN, local_demo / RUN)
    again = snakemake("--configfile", "configs/demo.yaml", "--cores", "1", "-n", f"{RUN}/summary.json", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
