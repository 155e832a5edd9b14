# Validation, the run plan, wildcard constraints and input functions. Wiring only: which
# runs exist, what each trains and reads, is decided by the plan (fisherlab.plan).
import os
import re
import signal
import sys

from snakemake.exceptions import WorkflowError


sys.path.insert(0, os.path.join(workflow.basedir, "src"))  # this checkout's fisherlab (torch-free import)
from fisherlab.config_guard import ConfigError, plain_text_notes, validate_config  # noqa: E402
from fisherlab.plan import RUNS, SELECTIONS, build_plan, data_files, fisher_penalty, noisy, summaries, sweeps  # noqa: E402
from fisherlab.plan import miniature  # noqa: E402
from fisherlab.report import registry  # noqa: E402  (the figures: one entry each)
from fisherlab.runs.rundir import RunDir  # noqa: E402  (the files of a run: one owner)

try:  # the schema, and what it cannot say: NaN and infinity pass its minimum and maximum
    validate_config(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
except ConfigError as e:
    raise WorkflowError(f"Error validating config file (workflow/schemas/config.schema.yaml): {e}") from None
config.update(miniature.shrink(config))  # configs/miniature.yaml: the same DAG at toy size, before any consumer reads it
# The notes are spliced into the reST captions of --report (workflow/report/*.rst): escaped,
# they are plain text there, never directives (include, raw), roles or targets.
config["report_notes"] = plain_text_notes(config["report_notes"])

PLAN = build_plan(config)  # every run and selection of every family, by id
ADOPTED = [r.id for r in PLAN.adopted()]  # runs copied from a selected grid run


wildcard_constraints:
    run=r"[a-z0-9_][a-z0-9_.+-]*(/[a-z0-9_.+-]+)*",
    selection=r"[a-z0-9_][a-z0-9_.+-]*(/[a-z0-9_.+-]+)*",
    dataset="cifar10|cifar100|synthetic|digits|tinyimagenet|imagenet",
    ndataset="[a-z0-9_]+",
    noise=r"[0-9.]+",
    seed=r"\d+",


RUN = RunDir.of("{run}")  # the files of the run of a job's {run} wildcard


def runs_of(family=None, file=RunDir.SUMMARY, **fields):
    """The ``file`` of every run of ``family`` whose summary fields match (fisherlab.plan)."""
    return summaries(PLAN.select(family, **fields), file)


def caption_of(fig):
    """A figure's report caption, workflow/report/<fig>.rst (figure.rst adds its note)."""
    with open(os.path.join(workflow.basedir, "workflow/report", f"{fig}.rst")) as f:
        return f.read()


def table_outputs(names):
    """The CSV and Markdown files of each table, with their report captions."""
    return {
        f"{t}_{ext}": report(f"results/{t}.{ext}", caption=f"../report/{t}.rst", category="Tables")
        for t in names
        for ext in ["csv", "md"]
    }


def job_cost(attempt_scale=2):
    """runtime (minutes) and mem_mb of a run's job: the plan's first-attempt cost, times
    attempt_scale at each retry."""

    def runtime(wc, attempt):
        return PLAN.run(wc.run).cost[0] * attempt_scale ** (attempt - 1)

    def mem_mb(wc, attempt):
        return PLAN.run(wc.run).cost[1] * attempt_scale ** (attempt - 1)

    return runtime, mem_mb


def _slurm_resources(gpus, shared=False):
    """Account, partition (config, else SBATCH_ACCOUNT / SBATCH_PARTITION), the GPUs and
    the pre-time-out signal, as resources the SLURM plugin turns into sbatch flags; on one
    machine they are ignored. ``shared``: the GPUs as the string resource gres, which a
    group job keeps as it is instead of summing it over its jobs (several runs, one GPU)."""
    slurm = config["slurm"]
    out = {}
    account = slurm["account"] or os.environ.get("SBATCH_ACCOUNT")
    partition = slurm["partition"] or os.environ.get("SBATCH_PARTITION")
    if account:
        out["slurm_account"] = account
    if partition:
        out["slurm_partition"] = partition
    if gpus and slurm["gpus"]:
        if shared:
            out["gres"] = f"gpu:{slurm['gpus']}"
        else:
            out["gpu"] = slurm["gpus"]
    if gpus and slurm["signal_seconds"]:
        out["slurm_extra"] = f"'--signal=USR1@{slurm['signal_seconds']}'"
    return out


# In the SLURM job step that runs one rule, this snakemake ignores SIGUSR1 and SIGTERM
# (its children inherit that, and the training script installs its own handlers): SLURM's
# warning before a time limit, or a preemption, then reaches the training script, which
# saves its state and exits non-zero, instead of killing the step around it; the retry
# resumes the run (fisherlab.training.preemption). SIGKILL after KillWait still ends everything.
if os.environ.get("SLURM_STEP_ID", "").isdigit():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


SLURM_GPU = _slurm_resources(gpus=True)  # training and measurement jobs (the rest are localrules)
# Several training runs on one GPU (slurm.runs_per_gpu > 1): the runs that read nothing
# other runs make (sweeps, lr grids, ...) join the job group gpu_share, and Snakemake's job
# grouping puts that many of them into one SLURM job when it is told how many
# (--group-components gpu_share=N: the slurm profile says 4). Runs downstream of a
# selection stay alone: a group spanning both would wait on itself.
SHARE_GPU = config["slurm"]["runs_per_gpu"] > 1
SLURM_TRAIN = _slurm_resources(gpus=True, shared=SHARE_GPU)


def gpu_share(wc):
    return "gpu_share" if SHARE_GPU and PLAN.run(wc.run).independent() else None
RUN_RUNTIME, RUN_MEM = job_cost(2)
