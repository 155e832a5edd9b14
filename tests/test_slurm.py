"""Through a real single-node SLURM cluster (tests/slurm_cluster.py, fixture in conftest):
sbatch/sacct with a (fake) GPU, and Snakemake with the SLURM executor plugin driven by a
profile. Needs root (apt-get, daemons); deselect with -m 'not slurm'."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _sacct(cluster, jobid: str, fields: str, timeout: float = 30) -> list[list[str]]:
    """sacct rows of one job (with its steps); polls: slurmdbd learns of the end a bit late."""
    t0 = time.monotonic()
    while True:
        p = cluster.run("sacct", "-j", jobid, "-n", "-P", "-o", fields, check=False)
        rows = [line.split("|") for line in p.stdout.splitlines() if line.strip()]
        if rows and rows[0][1] not in ("PENDING", "RUNNING") or time.monotonic() - t0 > timeout:
            return rows
        time.sleep(0.5)


def test_cluster_is_up(slurm_cluster):
    print(f"\napt-get install: {slurm_cluster.install_seconds:.1f}s, daemon start: "
          f"{slurm_cluster.start_seconds:.1f}s (reused={slurm_cluster.reused})")
    assert slurm_cluster.run("sinfo", "-h", "-N", "-o", "%t").stdout.split() == ["idle"]
    gres = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%G").stdout.strip()
    assert gres.startswith("gpu:2"), gres
    assocs = slurm_cluster.run("sacctmgr", "-n", "-P", "show", "assoc", "where", "user=root",
                               "format=account").stdout.split()
    assert slurm_cluster.account in assocs


def test_sbatch_wait_gpu_job(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    t0 = time.monotonic()
    p = slurm_cluster.run(
        "sbatch", "--wait", "--parsable", "-A", slurm_cluster.account, "--gpus=1",
        "-t", "1", "--mem=100", "-J", "trivial", "-D", str(tmp_path), "-o", str(out),
        "--wrap", "echo hello from $SLURM_JOB_ID gpus=$CUDA_VISIBLE_DEVICES",
        timeout=120,
    )
    jobid = p.stdout.strip().split(";")[0]
    print(f"\nsbatch --wait: {time.monotonic() - t0:.1f}s")
    assert jobid.isdigit(), p.stdout
    assert out.read_text().strip() == f"hello from {jobid} gpus=0"
    rows = _sacct(slurm_cluster, jobid, "JobID,State,ExitCode,Account,AllocTRES")
    job = rows[0]
    assert job[:4] == [jobid, "COMPLETED", "0:0", slurm_cluster.account], rows
    assert "gres/gpu=1" in job[4], rows


SNAKEFILE = """\
localrules: aggregate

rule all:
    input: "result.txt"

rule gpu_part:
    output: "parts/{i}.txt"
    resources: gpu=1, runtime=1, mem_mb=100
    shell: "echo part {wildcards.i} job=$SLURM_JOB_ID gpus=$CUDA_VISIBLE_DEVICES > {output}"

rule aggregate:
    input: expand("parts/{i}.txt", i=[1, 2])
    output: "result.txt"
    shell: "cat {input} > {output}; echo local=${{SLURM_JOB_ID:-none}} >> {output}"
"""

# Keys exactly as in a Snakemake 9 profile; plugin options without the leading "--".
# Unknown keys are an error ("unrecognized arguments"), so this profile being accepted
# also checks the key names (underscore spellings are rejected).
PROFILE = """\
executor: slurm
jobs: 2
rerun-incomplete: true
latency-wait: 5
seconds-between-status-checks: 2
slurm-init-seconds-before-status-checks: 2
default-resources:
  slurm_account: proj
"""


def test_snakemake_through_slurm(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(PROFILE)

    t0 = time.monotonic()
    p = subprocess.run([SNAKEMAKE, "--profile", "profile"], cwd=tmp_path, check=False,
                       capture_output=True, text=True, timeout=300, env=slurm_cluster.env)
    wall = time.monotonic() - t0
    log = p.stdout + p.stderr
    print(f"\nsnakemake --executor slurm (2 GPU jobs + 1 local): {wall:.1f}s")
    assert p.returncode == 0, log[-4000:]

    lines = (tmp_path / "result.txt").read_text().splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["part", "1"], ["part", "2"]], lines
    jobids = [line.split()[2].removeprefix("job=") for line in lines[:2]]
    assert all(j.isdigit() for j in jobids) and jobids[0] != jobids[1], lines
    gpus = [line.rsplit("gpus=", 1)[1] for line in lines[:2]]
    assert set(gpus) <= {"0", "1"}, lines  # one of the node's two fake GPUs each
    assert lines[2] == "local=none", lines  # the localrule ran outside SLURM

    rows = {}
    for j in jobids:
        r = _sacct(slurm_cluster, j, "JobID,State,Account,AllocTRES,Start,End")[0]
        assert r[1:3] == ["COMPLETED", "proj"], r
        assert "gres/gpu=1" in r[3] and "mem=100M" in r[3], r
        rows[j] = r
    # two fake GPUs on the node: jobs that overlap in time hold different GPUs
    (_, first_end), (second_start, _) = sorted(
        (datetime.fromisoformat(r[4]), datetime.fromisoformat(r[5])) for r in rows.values())
    if second_start < first_end:
        assert gpus[0] != gpus[1], (rows, lines)
    # The profile key took effect. The plugin polls after seconds-between-status-checks (2),
    # adds 10 s after each poll that finds nothing finished, and falls back to
    # slurm-init-seconds-before-status-checks after one that does. With the default (40)
    # the second job could be seen at t = 2 + 12 + 40 = 54 s at the earliest.
    assert wall < 50, f"{wall:.1f}s: slurm-init-seconds-before-status-checks ignored?"

    # nothing left to do; --rerun-incomplete from the profile is accepted on a rerun
    p = subprocess.run([SNAKEMAKE, "--profile", "profile", "-n"], cwd=tmp_path, check=False,
                       capture_output=True, text=True, timeout=120, env=slurm_cluster.env)
    assert p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr, p.stderr[-2000:]


def test_profile_rejects_unknown_and_underscore_keys(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "profile").mkdir()
    bad = PROFILE.replace("slurm-init-seconds-before-status-checks",
                          "slurm_init_seconds_before_status_checks")
    (tmp_path / "profile" / "config.yaml").write_text(bad)
    p = subprocess.run([SNAKEMAKE, "--profile", "profile", "-n"], cwd=tmp_path, check=False,
                       capture_output=True, text=True, timeout=120, env=slurm_cluster.env)
    assert p.returncode != 0
    assert "unrecognized arguments: --slurm_init_seconds_before_status_checks" in p.stderr


def test_snakemake_without_jobs_is_refused(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(PROFILE.replace("jobs: 2\n", ""))
    p = subprocess.run([SNAKEMAKE, "--profile", "profile"], cwd=tmp_path, check=False,
                       capture_output=True, text=True, timeout=120, env=slurm_cluster.env)
    assert p.returncode != 0
    assert "has to be specified for remote execution" in p.stdout + p.stderr
    assert not (tmp_path / "result.txt").exists()
