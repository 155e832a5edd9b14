"""`snakemake all` of config.yaml in miniature (configs/miniature.yaml, issue 20 item 3):
the paper's whole DAG at toy size, run end to end, then every artifact checked: every
table of `rule all` with a number or an explicit status in every cell, the best training
accuracy of every early-phase run finite, every figure's PNG non-empty, every figure CSV
that exists with a finite point per panel and series, and the report built."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from test_pipeline import copy_workflow, snakemake

MINI = "configs/miniature.yaml"
TABLES = [f"table{i}" for i in range(1, 10)] + ["early_phase", "paper_comparison"]
FIGURES = [f"fig{i}" for i in range(1, 22)]  # every figure of the paper, Fig. 10 included
#: What a cell must never be: empty, NaN, or the dash of a value that is missing without a reason.
EMPTY = {"", "nan", "NaN", "None", "–", "-", "—"}


def dash_cells(lines: list[str]) -> list[tuple[int, str]]:
    """(row, text) of every cell of a Markdown table (its lines) that is empty or a dash."""
    rows = [line for line in lines if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line)]
    return [(n, c.strip()) for n, line in enumerate(rows) for c in line.strip().strip("|").split("|")
            if c.strip() in EMPTY]  # fmt: skip


def check_table(path: Path) -> None:
    """A table of rule all, its .md and .csv: rows; no empty or dash cell in the .md
    (what a reader sees: a number or a status in every cell); in the .csv every status
    column (``status``, ``<column>_status``) names one, and every "ok" value is finite."""
    md = path.with_suffix(".md").read_text().splitlines()
    assert sum(line.startswith("|") for line in md) >= 3, f"{path.with_suffix('.md')}: no table"
    bad = dash_cells(md)
    assert not bad, f"{path.with_suffix('.md')}: cells with neither a number nor a status (row, text): {bad[:10]}"
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert len(csv), f"{path.with_suffix('.csv')}: no rows"
    for col in [c for c in csv.columns if c == "status" or c.endswith("_status")]:
        assert csv[col].notna().all() and (csv[col].astype(str).str.strip() != "").all(), (path, col)
        value = col.removesuffix("_status")
        if value in csv and value != col:
            ok = csv[csv[col] == "ok"][value].astype(float)
            assert ok.map(math.isfinite).all(), f"{path.with_suffix('.csv')}: {value} not finite where ok"


def _why_empty(g: pd.DataFrame, root: Path) -> str | None:
    """The reason the CSV itself records for a series without a drawn point: its runs
    all diverged (``ok`` 0, a ``status`` other than ok, or the summary of its ``run_dir``),
    or Tr(F_i)'s loss threshold was not reached (``reached`` 0); None when it records none."""
    if "ok" in g and (g["ok"] == 0).all():
        return "diverged"
    if "reached" in g and (g["reached"] == 0).all():
        return "not reached"
    if "status" in g and (g["status"] != "ok").all():
        return "status"
    if "run_dir" in g:
        runs = [root / d / "summary.json" for d in g["run_dir"].dropna().unique()]
        if runs and all(p.exists() and json.loads(p.read_text())["status"] == "diverged" for p in runs):
            return "diverged"
    return None


def check_figure_csv(path: Path, root: Path) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """A figure's data (results/<fig>.csv, one row per plotted point): the columns
    ``panel``, ``series``, ``x`` and ``y``; finite points; every panel x series either
    draws a point with a finite x and y (or a finite y without any x: a reference line
    such as Fig. 3's Baseline) or records why it draws none (:func:`_why_empty`); a per-epoch series
    (rows of ``source`` "metrics") one point per epoch: distinct, consecutive whole
    epochs. Returns the frame and the (panel, series, reason) left empty."""
    frame = pd.read_csv(path)
    missing = {"panel", "series", "x", "y"} - set(frame.columns)
    assert not missing, f"{path}: no column(s) {sorted(missing)}"
    assert len(frame), f"{path}: no points"
    empty, drawn = [], 0
    for (panel, series), g in frame.groupby(["panel", "series"], dropna=False):
        x, y = g["x"].astype(float).map(math.isfinite), g["y"].astype(float).map(math.isfinite)
        reference_line = not x.any() and y.any() and "reached" not in g  # a level without an x (Fig. 3's Baseline)
        drawn += bool((x & y).any() or reference_line)
        if not (x & y).any() and not reference_line:
            why = _why_empty(g, root)
            assert why, f"{path}: panel {panel!r}, series {series!r} has no finite point and records no reason"
            empty.append((panel, series, why))
        if "source" in g and "epoch" in g:
            epochs = g.loc[g["source"] == "metrics", "epoch"].dropna().astype(float).tolist()
            if epochs:
                assert all(e == int(e) for e in epochs) and len(set(epochs)) == len(epochs), (path, panel, series)
                assert sorted(epochs) == list(range(int(min(epochs)), int(max(epochs)) + 1)), \
                    f"{path}: panel {panel!r}, series {series!r}: epochs {epochs} (one point per epoch)"
    assert drawn, f"{path}: not one point drawn"
    return frame, empty


@pytest.mark.slow
@pytest.mark.miniature  # the whole DAG of config.yaml in miniature: `make test-miniature` runs it alone
def test_all_of_config_yaml_in_miniature(tmp_path):
    copy_workflow(tmp_path)
    start = time.monotonic()
    out = snakemake("all", "--configfile", MINI, "--cores", "2", "--keep-going", "--quiet", cwd=tmp_path)
    seconds = time.monotonic() - start
    print(f"snakemake all, config.yaml in miniature: {seconds:.0f} s")  # the README reports the time measured
    results = tmp_path / "results"
    assert "Nothing to be done" not in out.stdout + out.stderr
    # keep_checkpoints: false: no run's state left behind (20 GB of it when kept)
    left = sorted((results / "checkpoints").rglob("checkpoint.pt*"))
    assert not left, f"{len(left)} checkpoints left, e.g. {left[:3]}"
    for name in TABLES:
        check_table(results / f"{name}.md")
    hessian = pd.read_csv(results / "hessian.csv")
    assert len(hessian) and hessian["trace_hessian"][hessian["status"] == "ok"].map(math.isfinite).all(), hessian
    early = pd.read_csv(results / "early_phase.csv")  # one row per sweep point; `ok`: its runs that did not diverge
    assert len(early) and (early["ok"] == early["runs"]).all(), early  # no batch size the lrs diverge at
    assert early["best_train_acc_subset"].map(math.isfinite).all(), early  # Figs. 8, 9: every run, every epoch
    for fig in FIGURES:  # the image and the points it draws (fisherlab.report.registry)
        png = results / f"{fig}.png"
        assert png.exists() and png.stat().st_size > 1000, png
        _, empty = check_figure_csv(results / f"{fig}.csv", tmp_path)
        print(fig, "series without a point:", empty)  # 2 epochs: Tr(F_i) not reached, diverged runs
    snakemake("--configfile", MINI, "--report", "report.html", cwd=tmp_path)
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "Miniature" in html and "Table 1" in html
    again = snakemake("all", "--configfile", MINI, "--cores", "2", "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
