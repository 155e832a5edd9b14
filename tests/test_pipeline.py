"""The Snakemake pipeline: the DAG of the paper's config, config validation, lint, and
(slow) the offline demo end to end."""

from __future__ import annotations

import copy
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


def test_dry_run_of_the_paper_config():
    """The DAG of the paper's config, rule by rule; which runs exist is tested fast, per
    family, in test_plan.py (the plan is what the rules read)."""
    t0 = time.perf_counter()
    proc = snakemake("-n", "--cores", "2")
    seconds = time.perf_counter() - t0
    counts = job_counts(proc.stdout)
    cfg = paper_config()
    seeds = len(cfg["seeds"])
    expected_train, expected_final, selections = 0, 0, 0
    noisy_bases = {ns["base"] for ns in cfg["noisy"]["settings"].values() if ns.get("lr") is None}
    for name, s in cfg["settings"].items():
        regs, table = len(s["regularizers"]), s.get("table", 1)
        if table == 0:  # a recipe: only the lr search a noisy setting needs
            expected_train += len(s["lr_grid"]) if name in noisy_bases else 0
            selections += name in noisy_bases
            continue
        final = ((2 if table == 1 else 1) + regs) * seeds  # Table 2 has no Baseline column
        expected_train += len(s["lr_grid"]) + 10 * regs + final
        expected_final += final
        selections += 1 + regs
    # noisy labels: per setting and fraction, the grids at the search seed, the baseline
    # at every seed, the selected strength at the other seeds (the search seed's is adopted)
    noisy, fractions = cfg["noisy"]["settings"], len(cfg["noisy"]["fractions"])
    grids = sum(len(g) for ns in noisy.values() for g in ns["regularizers"].values())
    regs = sum(len(ns["regularizers"]) for ns in noisy.values())
    expected_train += fractions * (grids + len(noisy) * seeds + regs * (seeds - 1))
    selections += fractions * regs
    assert counts["train"] == expected_train
    assert counts["trace_hessian"] == expected_final
    assert counts["select"] == selections
    assert counts["adopt"] == fractions * regs
    assert counts["noisy_labels"] == fractions * seeds
    assert counts["tables"] == counts["tables2"] == counts["fig4"] == counts["all"] == 1
    assert counts["noisy_tables"] == counts["fig5"] == counts["fig11"] == counts["fig12"] == 1
    for target in ("results/table1.csv", "results/table4.csv", "results/table5.csv", "results/table6.csv",
                   "results/fig4.png", "results/table2.csv", "results/table7.csv", "results/table3.csv",
                   "results/table8.csv", "results/table9.csv", "results/fig5.png", "results/fig11.png",
                   "results/fig12.png"):  # fmt: skip
        assert target in proc.stdout
    print(f"dry run of the paper config: {seconds:.2f} s, {sum(counts.values())} jobs")
    assert seconds < 60  # the target is reported (README), not timed, here


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


def valid() -> dict:
    return yaml.safe_load((REPO / "configs/demo.yaml").read_text())


def setting(cfg):
    return cfg["settings"]["demo_synthetic"]


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
def test_inconsistent_noisy_configs_are_refused_before_any_job(tmp_path, edit, message):
    cfg = copy.deepcopy(valid())
    edit(cfg)
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(overlay), check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


def test_lint_is_clean():
    proc = snakemake("--lint")
    assert "Congratulations" in proc.stdout + proc.stderr


def copy_workflow(dst: Path) -> None:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dst / name)
    for name in ("workflow", "configs", "envs"):
        shutil.copytree(REPO / name, dst / name)


@pytest.mark.slow
def test_demo_end_to_end(local_demo):
    tmp_path = local_demo
    results = tmp_path / "results"
    demo = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    columns = ["eta_star", "baseline", "gpx", "gp", "fp", "gpr"]
    for name in ("table1", "table4", "table5", "table6"):
        table = pd.read_csv(results / f"{name}.csv")
        assert list(table["setting"]) == demo["run_settings"]
        for c in columns:
            assert table[f"{c}_status"].iloc[0] in ("ok", "diverged")
            if table[f"{c}_status"].iloc[0] == "ok":
                assert math.isfinite(table[c].iloc[0])
        assert (results / f"{name}.md").read_text().count("|") > 10
    assert (results / "fig4.png").stat().st_size > 10_000
    hessian = pd.read_csv(results / "hessian.csv")
    assert len(hessian) == len(columns)
    # the noisy-label targets: Tables 3, 8, 9 and Figs. 5, 12
    for name in ("table3", "table8", "table9"):
        table = pd.read_csv(results / f"{name}.csv")
        assert list(table["label_noise"]) == demo["noisy"]["fractions"]
        for c in ("baseline", "mixup", "gpx", "fp", "gpr"):
            assert table[f"{c}_status"].iloc[0] in ("ok", "diverged")
            assert table[f"{c}_n"].iloc[0] + (table[f"{c}_status"].iloc[0] == "diverged") >= 1
    fp = yaml.safe_load((REPO / "configs/demo.yaml").read_text())["noisy"]["settings"]["demo_noisy"]
    assert pd.read_csv(results / "table3.csv")["fp_alpha"].iloc[0] in fp["regularizers"]["fp"]
    for fig in ("fig5", "fig12"):
        assert (results / f"{fig}.png").stat().st_size > 10_000
    # snakemake --report: every table and figure, with its caption
    snakemake("--configfile", "configs/demo.yaml", "--report", "report.html", cwd=tmp_path)
    html = (tmp_path / "report.html").read_text(errors="replace")
    for caption in ("Table 1: test accuracy", "Table 4: the maximum of Tr(F)", "Figure 4: validation",
                    "Table 3: test accuracy", "Fig. 5: FP slows", "Supplement Fig. 12"):  # fmt: skip
        assert caption in html
    # nothing to do on a second call: every output is up to date
    again = snakemake("--configfile", "configs/demo.yaml", "--cores", "2", "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
