"""The pipeline's guards end to end, on one tiny run (slow: spawns Snakemake and trains):
report notes are plain text in a real ``snakemake --report`` (issue 21 point 3), and a
hand-edited or damaged run file, declared as an input of the rule that reads it, makes
that rule run again and fail naming the file and the key (point 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_config_guard import PAYLOAD_INCLUDE, PAYLOAD_RAW
from test_pipeline import copy_workflow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
RUN = "results/runs/sweeps/demo_lr/lr0.01/seed0"


def smk(root, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([SNAKEMAKE, "--configfile", "configs/demo.yaml", "tiny.yaml", "--cores", "2", *args],
                          cwd=root, capture_output=True, text=True, env=env, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The demo's lr sweep cut to 2 lrs, 1 seed, 1 epoch, with its table and Fig. 15 (which
    reads each run's metrics.csv and curvature.csv), and both report_notes payloads in the
    table's caption. About 50 s on 2 cores."""
    root = tmp_path_factory.mktemp("tiny")
    copy_workflow(root)
    secret = root / "secret.txt"
    secret.write_text("TOPSECRET-1234\n")
    overlay = {
        "sweeps": {"run_sweeps": ["demo_lr"], "settings": {"demo_lr": {"lr": [0.01, 0.03], "seeds": 1, "epochs": 1}},
                   "figures": {"fig2": None, "fig7": None, "fig15": "demo_lr"}},
        "report_notes": {"early_phase": PAYLOAD_INCLUDE.format(path=secret) + "\n" + PAYLOAD_RAW},
    }  # fmt: skip
    (root / "tiny.yaml").write_text(yaml.safe_dump(overlay))
    proc = smk(root, "results/early_phase.csv", "results/fig15.png")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.mark.slow  # spawns Snakemake, trains
def test_snakemake_report_shows_the_notes_as_text(tiny):
    """Neither the included file's contents nor the raw <img onerror> markup reaches
    report.html; the note's text does, escaped."""
    proc = smk(tiny, "--report", "report.html", "results/early_phase.csv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = (tiny / "report.html").read_text()
    assert "TOPSECRET" not in html
    assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and f".. include:: {tiny / 'secret.txt'}" in html


@pytest.mark.slow  # spawns Snakemake, trains
def test_a_damaged_run_file_reruns_its_reader_which_fails_naming_it(tiny):
    """metrics.csv is an input of fig15 now: damaged, the figure is drawn again and fails
    naming the file and the column. A hand-edited summary.json fails the table so."""
    metrics = tiny / RUN / "metrics.csv"
    lines = metrics.read_text().splitlines()
    col = lines[0].split(",").index("val_acc")
    cells = lines[1].split(",")
    cells[col] = "97%"
    metrics.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    proc = smk(tiny, "results/fig15.png")
    assert proc.returncode != 0 and "Nothing to be done" not in proc.stdout + proc.stderr
    log = (tiny / "results/logs/report/fig15.log").read_text()
    assert f"{RUN}/metrics.csv: column 'val_acc', row 1: '97%' is not a number" in log

    summary = tiny / RUN / "summary.json"
    data = json.loads(summary.read_text())
    data["test_acc_at_best_val"] = "97%"
    summary.write_text(json.dumps(data))
    proc = smk(tiny, "results/early_phase.csv")
    assert proc.returncode != 0
    log = (tiny / "results/logs/report/early_phase.log").read_text()
    assert f"{RUN}/summary.json: test_acc_at_best_val: '97%' is not a number (a fraction in [0, 1])" in log
