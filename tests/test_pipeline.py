"""The Snakemake pipeline: the DAG of the paper's config, config validation, lint, and
(slow) the offline demo end to end."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def snakemake(*args, cwd=REPO, check=True):
    proc = subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def job_counts(output: str) -> dict[str, int]:
    stats = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in stats:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def paper_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_dry_run_of_the_paper_config():
    """The DAG of the paper's config lists exactly the plan's runs and selections (what
    each family holds is tested fast, per family, in test_plan.py and its neighbours)."""
    from fisherlab.plan import build_plan
    from test_plan import PAPER

    t0 = time.perf_counter()
    proc = snakemake("-n", "--cores", "2")
    seconds = time.perf_counter() - t0
    counts = job_counts(proc.stdout)
    plan = build_plan(PAPER)
    adopted = len(plan.adopted())
    assert counts["train"] == len(plan.runs) - adopted
    assert counts["adopt"] == adopted
    assert counts["select"] == len(plan.selections)
    assert counts["trace_hessian"] == sum(r.hessian for r in plan.runs.values())
    cfg = paper_config()
    assert counts["noisy_labels"] == len(cfg["noisy"]["fractions"]) * len(cfg["seeds"])
    for rule in ("tables", "tables2", "noisy_tables", "early_phase", "all"):
        assert counts[rule] == 1, rule
    assert counts["figure"] == 21  # Figs. 1-21, one job each of the one figure rule (fisherlab.report.registry)
    for target in ("table1.csv", "table4.csv", "table5.csv", "table6.csv", "table2.csv", "table7.csv",
                   "table3.csv", "table8.csv", "table9.csv", "early_phase.csv",
                   *(f"fig{i}.{ext}" for i in range(1, 22) for ext in ("png", "csv"))):  # fmt: skip
        assert f"results/{target}" in proc.stdout, target
    print(f"dry run of the paper config: {seconds:.2f} s, {sum(counts.values())} jobs: {counts}")
    assert seconds < 120  # the target (time per job) is reported in the README, not timed here


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_a_fixed_lr_star_and_alpha_skip_the_searches(tmp_path):
    cfg = paper_config()
    for s in cfg["settings"].values():
        s["lr_star"] = 0.1
        for r in s["regularizers"].values():
            r["alpha"] = 0.01
    for ns in cfg["noisy"]["settings"].values():  # one-value grids: no noisy search either
        ns["regularizers"] = {reg: grid[:1] for reg, grid in ns["regularizers"].items()}
    overlay = tmp_path / "fixed.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "2", "--configfile", str(overlay))
    assert "/lrgrid/" not in proc.stdout and "/alphagrid/" not in proc.stdout
    counts = job_counts(proc.stdout)
    ran = [n for n, s in cfg["settings"].items() if s.get("table", 1) != 0]
    noisy = cfg["noisy"]["settings"]
    regs = sum(len(ns["regularizers"]) for ns in noisy.values()) * len(cfg["noisy"]["fractions"])
    bases = {ns["base"] for ns in noisy.values()}
    lr_selections = len(set(ran) | bases)
    alpha_selections = sum(len(cfg["settings"][n]["regularizers"]) for n in ran)
    assert counts["select"] == lr_selections + alpha_selections + regs
    assert counts["adopt"] == regs


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_runs_per_gpu_groups_training_runs_into_one_slurm_job(tmp_path):
    """slurm.runs_per_gpu: Snakemake's job grouping puts N independent training runs into
    one SLURM job that asks for the GPU once (gres, kept by a group job) instead of N."""
    from fisherlab.plan import build_plan
    from test_plan import load

    (tmp_path / "share.yaml").write_text("slurm: {runs_per_gpu: 2}\n")
    args = ("-n", "--executor", "slurm", "--jobs", "10", "--configfile", "configs/demo.yaml", str(tmp_path / "share.yaml"))
    out = snakemake(*args, "--group-components", "gpu_share=2").stdout
    trains = job_counts(out)["train"]
    plan = build_plan(load("configs/demo.yaml"))
    independent = sum(r.independent() for r in plan.runs.values() if r.adopt is None)
    assert 8 <= independent < trains  # the sweeps and the lr grid; not the runs after a selection
    assert out.count("Group job gpu_share") == math.ceil(independent / 2)
    train_resources = [line for line in out.splitlines() if "gres=gpu:1" in line]
    assert len(train_resources) == trains and not any("gpu=" in line for line in train_resources)
    plain = snakemake("-n", "--executor", "slurm", "--jobs", "10", "--configfile", "configs/demo.yaml").stdout
    assert "Group job" not in plain and plain.count(" gpu=1") >= trains


def valid() -> dict:
    return yaml.safe_load((REPO / "configs/demo.yaml").read_text())


def setting(cfg):
    return cfg["settings"]["demo_digits"]


def noisy(cfg):
    return cfg["noisy"]["settings"]["demo_noisy"]


INVALID = {
    "unknown model": lambda c: setting(c).update(model="resnet9000"),
    "malformed dataset name": lambda c: setting(c).update(dataset="MNIST!"),
    "local dataset without a test split": lambda c: c["data"].update(local={"mine": {"train": "a.npz"}}),
    "negative lr in the grid": lambda c: setting(c).update(lr_grid=[-0.1, 0.1]),
    "empty lr grid": lambda c: setting(c).update(lr_grid=[]),
    "unknown top-level key": lambda c: c.update(sedes=[0]),
    "unknown setting key (typo)": lambda c: setting(c).update(epoch=3),
    "unknown regularizer": lambda c: setting(c)["regularizers"].update(fpx={"v": 0.1}),
    "negative alpha": lambda c: setting(c)["regularizers"]["fp"].update(alpha=-1.0),
    "zero v (empty alpha grid)": lambda c: setting(c)["regularizers"]["fp"].update(v=0),
    "every = 0": lambda c: setting(c)["regularizers"]["fp"].update(every=0),
    "zero epochs": lambda c: setting(c).update(epochs=0),
    "momentum >= 1": lambda c: setting(c).update(momentum=1.0),
    "string batch size": lambda c: setting(c).update(batch_size="128"),
    "empty seeds": lambda c: c.update(seeds=[]),
    "bad setting name": lambda c: c["settings"].update({"Bad-Name": setting(c)}),
    "small-lr factor < 1": lambda c: setting(c).update(small_lr_factor=0.5),
    "unknown device": lambda c: c.update(device="tpu"),
    "noise fraction > 1": lambda c: c["noisy"].update(fractions=[1.5]),
    "zero noise fraction": lambda c: c["noisy"].update(fractions=[0.0]),
    "unknown noisy regularizer": lambda c: noisy(c)["regularizers"].update(gp=[0.1]),
    "empty strength grid": lambda c: noisy(c)["regularizers"].update(fp=[]),
    "negative mixup beta": lambda c: noisy(c)["regularizers"].update(mixup=[-0.4]),
    "noisy setting without a base": lambda c: noisy(c).pop("base"),
    "unknown noisy setting key (typo)": lambda c: noisy(c).update(wieght_decay=0.0),
    "unknown figure": lambda c: c["noisy"]["figures"].update(fig7="demo_noisy"),
}


def test_the_demo_config_is_valid():
    validate(valid(), SCHEMA)


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_configs_are_schema_errors(name):
    cfg = copy.deepcopy(valid())
    INVALID[name](cfg)
    with pytest.raises(Exception, match="(?i)validat|schema"):
        validate(cfg, SCHEMA)


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
@pytest.mark.parametrize("name", ["unknown model", "unknown setting key (typo)"])
def test_the_snakefile_refuses_invalid_configs_before_any_job(tmp_path, name):
    cfg = copy.deepcopy(valid())
    INVALID[name](cfg)
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(overlay), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert re.search("(?i)validat", out) and "Job stats" not in out


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_an_unknown_dataset_is_refused_before_any_job(tmp_path):
    cfg = copy.deepcopy(valid())
    setting(cfg)["dataset"] = "mnist"
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(overlay), check=False)
    assert proc.returncode != 0 and "data.local" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: noisy(c).update(base="nope"), "its base 'nope' is not under settings"),
        (lambda c: c["noisy"].update(run_settings=["nope"]), "not under noisy.settings"),
        (lambda c: c["noisy"]["figures"].update(fig5="nope"), "not under noisy.settings"),
        (lambda c: c["noisy"]["figures"].update(noise=0.5), "not one of noisy.fractions"),
    ],
)
@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_inconsistent_noisy_configs_are_refused_before_any_job(tmp_path, edit, message):
    cfg = copy.deepcopy(valid())
    edit(cfg)
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(overlay), check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_lint_is_clean():
    proc = snakemake("--lint")
    assert "Congratulations" in proc.stdout + proc.stderr


#: What a clone holds of the workflow: its files, and its folders (profiles/ too: Snakemake
#: applies profiles/default, the greedy scheduler, to every run).
WORKFLOW_FILES = ("Snakefile", "config.yaml")
WORKFLOW_DIRS = ("workflow", "configs", "envs", "profiles")


def copy_workflow(dst: Path, *, ignore=None) -> None:
    """A copy of the workflow in ``dst`` (:data:`WORKFLOW_FILES`, :data:`WORKFLOW_DIRS`)."""
    for name in WORKFLOW_FILES:
        shutil.copy(REPO / name, dst / name)
    for name in WORKFLOW_DIRS:
        shutil.copytree(REPO / name, dst / name, ignore=ignore)


@pytest.mark.slow
def test_demo_end_to_end(local_demo):
    tmp_path = local_demo
    results = tmp_path / "results"
    demo = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    columns = ["eta_star", "baseline", "gpx", "gp", "fp", "gpr", "sam"]
    tables = {name: pd.read_csv(results / f"{name}.csv") for name in ("table1", "table4", "table5", "table6")}
    for name, table in tables.items():
        assert list(table["setting"]) == demo["run_settings"]
        for c in columns:
            assert table[f"{c}_status"].iloc[0] == "ok", (name, c)
            assert math.isfinite(table[c].iloc[0])
        assert (results / f"{name}.md").read_text().count("|") > 10
    # the demo tells the paper's story (issue 13), in its own tables:
    t1, t4 = tables["table1"].iloc[0], tables["table4"].iloc[0]
    final = results / "runs/demo_digits/final"
    fisher_i = {c: json.loads((final / c / "seed0/summary.json").read_text())["trace_fisher_i"]
                for c in ("eta_star", "baseline")}  # fmt: skip
    # (a) Baseline (the small lr) has a higher max Tr(F) and a higher Tr(F_i) than eta*
    assert t4["baseline"] > t4["eta_star"] and fisher_i["baseline"] > fisher_i["eta_star"], (t4, fisher_i)
    # (b) FP at the small lr has a lower max Tr(F) than Baseline, and a test accuracy at least Baseline's
    assert t4["fp"] < t4["baseline"] and t1["fp"] >= t1["baseline"], (t1, t4)
    # (c) no column of Table 1 or Table 3 collapses to chance (10 classes: 10%)
    t3 = pd.read_csv(results / "table3.csv").iloc[0]
    assert min(t1[c] for c in columns) > 30 and min(t3[c] for c in ("baseline", "mixup", "gpx", "fp", "gpr", "sam")) > 30
    assert (results / "fig4.png").stat().st_size > 10_000
    hessian = pd.read_csv(results / "hessian.csv")
    assert len(hessian) == len(columns)
    # the noisy-label targets: Tables 3, 8, 9 and Figs. 5, 12
    for name in ("table3", "table8", "table9"):
        table = pd.read_csv(results / f"{name}.csv")
        assert list(table["label_noise"]) == demo["noisy"]["fractions"]
        for c in ("baseline", "mixup", "gpx", "fp", "gpr", "sam"):
            assert table[f"{c}_status"].iloc[0] == "ok", (name, c)
    for fig in ("fig2", "fig3", "fig5", "fig6", "fig7", "fig8", "fig9", "fig12"):
        assert (results / f"{fig}.png").stat().st_size > 10_000, fig
    # Fig. 6's phase 1 runs past the small lr's explosion: high regularization ends it with the lower Tr(F)
    fig6 = pd.read_csv(results / "fig6.csv")
    end = fig6[fig6["phase"] == 1].set_index("level")["trace_fisher_end"]
    assert end["high"] < end["low"], end
    # Section 3 in miniature: Tr(F_i) per sweep point, with the best test accuracy
    early = pd.read_csv(results / "early_phase.csv")
    assert len(early) == 4 and early["trace_fisher_i"].notna().all() and early["best_test_acc"].notna().all()
    assert early["best_train_acc_subset"].notna().all()  # Figs. 8, 9: the training accuracy of every epoch
    # snakemake --report: every table and figure, with its caption
    snakemake("--configfile", "configs/demo.yaml", "--report", "report.html", cwd=tmp_path)
    html = (tmp_path / "report.html").read_text(errors="replace")
    for caption in ("Table 1: test accuracy", "Table 4: the maximum of Tr(F)", "Figure 4: validation",
                    "Table 3: test accuracy", "Fig. 5: FP slows", "Supplement Fig. 12", "Figure 2:",
                    "The early phase", "only exercise the pipeline"):  # fmt: skip
        assert caption in html, caption
    # nothing to do on a second call: every output is up to date
    again = snakemake("--configfile", "configs/demo.yaml", "--cores", "2", "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
